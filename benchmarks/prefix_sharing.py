"""One compiled sweep against the work it needs and against a loop: FLOPs and time, for declared and any models.

For every single-conv zero-kernel mask of a model (``single``, plus the unablated model), on the same images in
ONE process, side by side:

* the engine's sweep (``engine.evaluate``): XLA's cost analysis of every chunk program it ran
  (``Result.flops``), its wall time (compiling included) and its execution time (``Result.seconds``);
* the minimum a sweep needs: one clean forward, then per mask the work from its first touched module on
  (``Layer.macs`` per image, in XLA's units: times XLA's FLOPs of one clean forward over its MACs,
  ``xla_flops_per_mac``, which also counts what the catalogue does not: normalisation, activations, pooling);
* a loop of single masked forwards (one jitted forward, the masked variables passed in, every mask after one
  warm-up): XLA's FLOPs of that forward times the masks, and its time.

Models: our ResNet34 (declares its residual structure: copies join the clean forward at a unit), the same
ResNet34 scored as any model is (gates on its modules' outputs, vmapped: copies join at the first gated module),
and a VGG-11 with BatchNorm written as a user would write it (no declared structure). Weights are random (FLOPs
and time do not depend on them); images are CIFAR-10 test images with ``--data-dir``, else random.

    python benchmarks/prefix_sharing.py --n-examples 256 --batch-size 128 --out prefix_sharing.json \\
        [--data-dir ../shared/data/cifar10] [--models resnet34 resnet34-hooked vgg11-bn]
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, networks
from resnet_jax.ablation.protocols import BASELINE
from resnet_jax.data import images as data
from resnet_jax.data.inputs import normalize
from resnet_jax.models import resnet

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11BN(nn.Module):
    """VGG-11 with BatchNorm for 32x32 images, as a user writes it: no declared structure, no gates."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        for width in VGG11:
            if width == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(width, (3, 3))(x)))
        return nn.Dense(self.num_classes)(x.reshape(len(x), -1))


class HookedResNet(resnet.ResNet):
    """Our ResNet with its gates switched off: the engine scores it as it scores any model."""

    ablation_gates = False


def build(name: str):
    if name == "vgg11-bn":
        return VGG11BN()
    model = resnet.create_model("resnet34", num_classes=10)  # torchvision's stem, as ablation_sweep.py
    return model if name == "resnet34" else HookedResNet(**{f: getattr(model, f) for f in model.__dataclass_fields__
                                                             if f not in ("parent", "name")})


def minimum_macs(layers, n_images: int) -> float:
    """One clean forward plus, per single-module mask, the kernel modules from it on."""
    suffix = engine.suffix_macs(layers)
    return float(n_images * (suffix[0] + suffix.sum()))


def loop(model, variables, ablations, layers, images, mean, std, batch_size):
    """A jitted single forward per mask and batch (masked variables passed in): its FLOPs per call and seconds."""
    forward = jax.jit(lambda v, x: jnp.argmax(networks.logits_of(model.apply(v, normalize(x, mean, std))), -1))
    flops = engine.program_flops(forward.lower(variables, images[:batch_size]).compile())
    masked = [abl.apply(variables, abl.make_mask(variables["params"], a, layers)) if a.layers else variables
              for a in ablations]
    forward(masked[0], images[:batch_size]).block_until_ready()  # compiled once; every mask reuses it
    t0 = time.perf_counter()
    for v in masked:
        for i in range(0, len(images), batch_size):
            forward(v, images[i:i + batch_size]).block_until_ready()
    n_batches = -(-len(images) // batch_size)
    return flops * n_batches * len(ablations), time.perf_counter() - t0


def measure(name: str, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    model = build(name)
    mean, std = np.float32(0.5), np.float32(0.25)
    x = normalize(images[:batch_size], mean, std)
    variables = jax.device_get(model.init(jax.random.key(0), x[:1]))
    layers = abl.catalogue(model, variables, images[:1])
    masks = [abl.Ablation(l.name, "zero-kernel", (l.name,)) for l in layers]
    t0 = time.perf_counter()
    results = engine.evaluate(model, variables, [BASELINE, *masks], layers, images, labels, image_mean=mean,
                              image_std=std, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - t0
    sweep_flops = sum(r.flops for r in results)
    loop_flops, loop_seconds = loop(model, variables, [BASELINE, *masks], layers, images, mean, std, batch_size)
    per_mac = loop_flops / len(results) / (len(images) * sum(l.macs for l in layers))
    minimum = per_mac * minimum_macs(layers, len(images))
    row = {"model": name, "declares_structure": abl.declares_structure(layers), "masks": len(masks),
           "images": len(images), "batch_size": batch_size,
           "sweep_gflops": sweep_flops / 1e9, "minimum_gflops": minimum / 1e9, "loop_gflops": loop_flops / 1e9,
           "sweep_over_minimum": sweep_flops / minimum, "loop_over_minimum": loop_flops / minimum,
           "xla_flops_per_mac": per_mac,
           "sweep_seconds": float(sum(r.seconds for r in results)), "sweep_wall_seconds": wall,
           "loop_seconds": loop_seconds}
    row["loop_over_sweep_time"] = loop_seconds / row["sweep_seconds"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", help="CIFAR-10 as an ImageFolder tree or zips (default: random images)")
    parser.add_argument("--models", nargs="+", default=["resnet34", "resnet34-hooked", "vgg11-bn"],
                        choices=("resnet34", "resnet34-hooked", "vgg11-bn"))
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    split = (data.load_split("cifar10", "test", data_dir=args.data_dir) if args.data_dir
             else data.synthetic_split("test", n=args.n_examples)).take(args.n_examples, seed=0)
    rows = []
    for name in args.models:
        rows.append(measure(name, split.images, split.labels, args.batch_size))
        r = rows[-1]
        print(f"{name}: {r['masks']} masks on {r['images']} images; FLOPs sweep/minimum {r['sweep_over_minimum']:.2f}, "
              f"loop/minimum {r['loop_over_minimum']:.2f}; time loop/sweep {r['loop_over_sweep_time']:.2f} "
              f"(sweep {r['sweep_seconds']:.1f} s, {r['sweep_wall_seconds']:.1f} s with compiling; "
              f"loop {r['loop_seconds']:.1f} s)", flush=True)
    record = {"benchmark": "prefix_sharing", "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
              "data": "cifar10 test" if args.data_dir else "random images", "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
