"""ResNet34 training and evaluation images/s at 32x32: resnet-jax's conv formulations and torchvision.

Measured side by side in one process, so the ratios hold on a noisy machine:

    python benchmarks/throughput.py --batch-sizes 128 256 [--impls auto xla] [--skip-torch] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import configs
from resnet_jax.training import classification as train
from resnet_jax.data.inputs import normalize
from resnet_jax.training import core


def _rate(fn, batch: int, repeats: int) -> float:
    fn()  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
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


def torch_rates(batch: int, repeats: int) -> tuple[float, float]:
    import torch
    import torchvision

    net = torchvision.models.resnet34(num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def one_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1).backward()
        opt.step()

    def forward():
        net.eval()
        with torch.inference_mode():
            net(x)

    return _rate(one_step, batch, repeats), _rate(forward, batch, 2 * repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--impls", nargs="+", default=["auto", "xla"], choices=["auto", "xla", "patches"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()

    rows = []
    for batch in args.batch_sizes:
        for impl in args.impls:
            t, e = jax_rates(impl, batch, args.repeats)
            rows.append({"framework": f"jax conv_impl={impl}", "batch": batch, "train_img_s": t, "eval_img_s": e})
        if not args.skip_torch:
            t, e = torch_rates(batch, args.repeats)
            rows.append({"framework": "torchvision", "batch": batch, "train_img_s": t, "eval_img_s": e})
    print(f"{'framework':<24}{'batch':>6}{'train img/s':>13}{'eval img/s':>12}{'train vs torch':>16}")
    for r in rows:
        ref = next((x for x in rows if x["framework"] == "torchvision" and x["batch"] == r["batch"]), None)
        ratio = f"{r['train_img_s'] / ref['train_img_s']:.2f}x" if ref else "-"
        print(f"{r['framework']:<24}{r['batch']:>6}{r['train_img_s']:>13.1f}{r['eval_img_s']:>12.1f}{ratio:>16}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"rows": rows, "devices": [str(d) for d in jax.devices()]}, fh, indent=2)


if __name__ == "__main__":
    main()
