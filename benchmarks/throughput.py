"""ResNet34 training and evaluation images/s at 32x32: resnet-jax's conv formulations and torchvision.

Measured side by side in one process, so the ratios hold on a noisy machine:

    python benchmarks/throughput.py --batch-sizes 128 256 [--impls auto xla] [--skip-torch] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import torch_rows  # beside this script
from resnet_jax import configs
from resnet_jax.training import classification as train
from resnet_jax.data.inputs import normalize
from resnet_jax.training import core


def _rate(fn, batch: int, repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # compile / warm up
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return batch * repeats / (time.perf_counter() - t0)


def jax_rates(impl: str, batch: int, repeats: int) -> tuple[float, float]:
    """(train, eval) images/s of the real jitted train step and eval forward."""
    config = configs.load_config("cifar10-resnet34-cpu", [f"model.conv_impl={impl}"])
    model = train.build_model(config, 10)
    state = core.create_train_state(model, core.make_optimizer(config, 100), (32, 32, 3), seed=0,
                                     mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    step = jax.jit(lambda s: train.train_step(s, images, labels, jax.random.key(0), augment_images=True,
                                              label_smoothing=0.1))
    forward = jax.jit(lambda s: s.apply_fn(s.variables, normalize(images, s.image_mean, s.image_std))[0])
    holder = {"state": state}

    def one_step():
        holder["state"], out = step(holder["state"])
        jax.block_until_ready(out)

    train_rate = _rate(one_step, batch, repeats)
    eval_rate = _rate(lambda: forward(state).block_until_ready(), batch, 2 * repeats)
    return train_rate, eval_rate


def torch_rates(batch: int, repeats: int, variant: dict) -> tuple[float, float]:
    """(train, eval) images/s of torchvision's resnet34 on CUDA when present, else the CPU, in ``variant``
    (fp32, bf16 autocast, torch.compile: see ``torch_rows``)."""
    import torch
    import torchvision

    dev = torch_rows.device()
    net, autocast = torch_rows.prepare(torchvision.models.resnet34(num_classes=10), dev, variant)
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def one_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()

    def forward():
        net.eval()
        with torch.inference_mode(), autocast():
            net(x)

    sync = lambda: torch_rows.synchronize(dev)  # noqa: E731
    return _rate(one_step, batch, repeats, sync), _rate(forward, batch, 2 * repeats, sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--impls", nargs="+", default=["auto", "xla"], choices=["auto", "xla", "patches"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-compile-on-cpu", action="store_true",
                        help="add the torch.compile row on a CPU too (on CUDA it always runs)")
    parser.add_argument("--out")
    args = parser.parse_args()

    rows, torch_device = [], None
    for batch in args.batch_sizes:
        for impl in args.impls:
            t, e = jax_rates(impl, batch, args.repeats)
            rows.append({"framework": f"jax conv_impl={impl}", "batch": batch, "train_img_s": t, "eval_img_s": e})
        if not args.skip_torch:
            dev = torch_rows.device()
            torch_device = torch_rows.describe(dev)
            for variant in torch_rows.variants(dev, compile_on_cpu=args.torch_compile_on_cpu):
                t, e = torch_rates(batch, args.repeats, variant)
                rows.append({"framework": f"torchvision {variant['name']}", "batch": batch, "train_img_s": t,
                             "eval_img_s": e})
    print(f"{'framework':<30}{'batch':>6}{'train img/s':>13}{'eval img/s':>12}{'train vs torch fp32':>21}")
    for r in rows:
        ref = next((x for x in rows if x["framework"] == "torchvision fp32" and x["batch"] == r["batch"]), None)
        ratio = f"{r['train_img_s'] / ref['train_img_s']:.2f}x" if ref else "-"
        print(f"{r['framework']:<30}{r['batch']:>6}{r['train_img_s']:>13.1f}{r['eval_img_s']:>12.1f}{ratio:>21}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rows": rows, "devices": [str(d) for d in jax.devices()],
                       "jax_device_kind": jax.devices()[0].device_kind, "torch_device": torch_device}, fh, indent=2)


if __name__ == "__main__":
    main()
