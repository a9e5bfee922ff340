"""Masked-model evaluations per second: resnet-jax's engine against a naive JAX loop and PyTorch.

All three evaluate the same ResNet34 weights (a trained run's, or random weights with realistic BN
statistics) on the same N test images over every mask of the three protocols, in ONE process, so
the ratios are measured side by side:

  (a) naive JAX: one jitted masked forward per mask (``ablation.apply`` + ``model.apply``);
  (b) the engine (``engine.evaluate``, gate formulation);
  (c) PyTorch/torchvision: state_dict edits per mask, ``torch.inference_mode``, channels_last; on CUDA when
      present, with bf16-autocast and ``torch.compile`` rows beside fp32 (``torch_rows``).

All three use one batch size, by default ``resnet-jax ablate``'s (128 images).

    python benchmarks/ablation_sweep.py --n-examples 1024 --out bench.json [--workdir runs/reproduce/cifar10-resnet34]

A trained run for ``--workdir``: ``resnet-jax reproduce --preset cpu --only cifar-train --workdir runs/reproduce
--data-root ../shared/data`` trains ``runs/reproduce/cifar10-resnet34`` (``benchmarks/record.py`` records which
command made the run it read).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import torch_rows  # beside this script
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, protocols
from resnet_jax.data import images as data
from resnet_jax.data.inputs import normalize
from resnet_jax.models import resnet as models


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul rate through XLA, the yardstick for achieved GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def load_weights(workdir: str | None, n: int, data_dir: str | None):
    """A trained run's model, variables and test images; or random weights with realistic BN stats."""
    if workdir:
        from resnet_jax.training import runs

        run = runs.restore(workdir, which="best", data_dir=data_dir)
        model, state, test = run.model, run.state, run.test
        test = test.take(n, seed=0)
        return model, jax.device_get(state.variables), test, np.asarray(state.image_mean), np.asarray(
            state.image_std)
    model = models.create_model("resnet34", num_classes=10)
    split = (data.load_split("cifar10", "test", data_dir=data_dir) if data_dir
             else data.synthetic_split("test", n=n))
    split = split.take(n, seed=0)
    x = (split.images[:256].astype(np.float32) / 255.0 - 0.5) / 0.25
    variables = model.init(jax.random.key(0), x[:1])
    # One train-mode pass gives BN statistics of real activations: flax keeps
    # 0.9 * old + 0.1 * batch, so the batch statistics are recovered exactly.
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, updates["batch_stats"], variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    return model, jax.device_get(variables), split, np.float32(0.5), np.float32(0.25)


def all_ablations(layers):
    """Every distinct mask of the three protocols (a shortcut conv is in `single` and `shortcut`: once)."""
    out = {}
    for p in ("single", "stage-except-decomposition", "shortcut"):
        for a in abl.resolve_all(protocols.protocol_specs(p, layers), layers):
            out.setdefault((a.kind, a.layers), a)
    return list(out.values())


def naive_jax_loop(model, variables, ablations, layers, images, labels, mean, std, batch_size):
    forward = jax.jit(lambda v, x: jnp.argmax(model.apply(v, normalize(x, mean, std))[0], -1))
    masked_forward = jax.jit(lambda v, m, x: forward(abl.apply(v, m), x))
    accs = []
    for a in ablations:
        mask = abl.make_mask(variables["params"], a, layers)
        preds = np.concatenate([np.asarray(masked_forward(variables, mask, images[i:i + batch_size]))
                                for i in range(0, len(images), batch_size)])
        accs.append(float(np.mean(preds == labels)))
    return accs


def torch_loop(variables, ablations, layers, images, labels, mean, std, batch_size, variant=None):
    """Per mask: edit the state_dict, evaluate every batch. On CUDA when present (``torch_rows``); fp32 unless
    ``variant`` says otherwise."""
    import torch

    from resnet_jax.interop import convert, verify

    dev = torch_rows.device()
    variant = variant or torch_rows.variants(dev)[0]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net, autocast = torch_rows.prepare(convert.torchvision_model("resnet34", num_classes=10, stem="torchvision").eval(),
                                       dev, variant)
    state_dict = convert.to_torch_state_dict(variables, arch="resnet34")
    x = torch.from_numpy(np.asarray(normalize(images, mean, std)).transpose(0, 3, 1, 2).copy()).to(dev)
    x = x.contiguous(memory_format=torch.channels_last)
    accs = []
    with torch.inference_mode(), autocast():
        for a in ablations:
            target = net._orig_mod if hasattr(net, "_orig_mod") else net  # a compiled module wraps the original
            target.load_state_dict(verify.ablation_in_torch(state_dict, a, layers, arch="resnet34"))
            preds = torch.cat([net(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
            accs.append(float((preds.cpu().numpy() == labels).mean()))
    torch_rows.synchronize(dev)
    return accs


def shared_prefix_mac_ratio(ablations, layers) -> float:
    """Conv MACs of one engine chunk holding every mask over the loop's, counted from the catalogue:
    the clean forward, plus each copy from where it joins (a full copy from its branch point on, one
    that cuts a unit's residual branch or shortcut from the next unit on, an input-independent one
    not at all). The parts computed on one row are left out: a 1/batch share of a copy each."""
    from_point, after_unit, total = {}, {}, 0
    for layer in reversed(layers):
        point = layer.unit or layer.name
        after_unit.setdefault(point, total)  # seen first at the unit's last layer
        total += layer.macs
        from_point[point] = total

    def copy_macs(ablation):
        where = engine.placement(ablation, layers)
        if where == "constant":
            return 0
        point, how = where
        return from_point[point] if how == "full" else after_unit[point]

    return (total + sum(copy_macs(a) for a in ablations if a.layers)) / (total * len(ablations))


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-examples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128, help="images per step, for all three")
    parser.add_argument("--workdir", help="a trained resnet34 run (default: random weights, real BN stats), e.g. "
                                          "runs/reproduce/cifar10-resnet34 as `resnet-jax reproduce --preset cpu "
                                          "--only cifar-train --workdir runs/reproduce` makes it")
    parser.add_argument("--data-dir", help="CIFAR-10 ImageFolder zips (default: synthetic images)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    model, variables, split, mean, std = load_weights(args.workdir, args.n_examples, args.data_dir)
    layers = abl.catalogue(model, variables, input_shape=(1, *split.images.shape[1:]))
    ablations = all_ablations(layers)
    macs = sum(l.macs for l in layers)
    peak = matmul_peak_gflops()
    print(f"N={len(split)} images, K={len(ablations)} masks, batch {args.batch_size}, {macs / 1e6:.1f} M MACs/image, "
          f"matmul peak {peak:.0f} GFLOP/s, devices {jax.devices()}")

    rows = {}
    acc_a, t_a = timed(naive_jax_loop, model, variables, ablations, layers, split.images, split.labels, mean, std,
                       args.batch_size)
    rows["naive JAX loop"] = (t_a, acc_a)
    results, t_b = timed(lambda: engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                                                 image_mean=mean, image_std=std, batch_size=args.batch_size,
                                                 progress=False))
    acc_b = [r.value for r in results]
    rows["resnet-jax engine"] = (t_b, acc_b)
    # The same call again: every program is compiled by now, so this is the sweep's execution alone.
    warm, t_warm = timed(lambda: engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                                                 image_mean=mean, image_std=std, batch_size=args.batch_size,
                                                 progress=False))
    rows["engine, 2nd call"] = (t_warm, [r.value for r in warm])
    torch_device = None
    if not args.skip_torch:
        dev = torch_rows.device()
        torch_device = torch_rows.describe(dev)
        for variant in torch_rows.variants(dev):  # fp32 first: the row whose accuracies must be identical
            name = "PyTorch loop" if variant["name"] == "fp32" else f"PyTorch loop, {variant['name']}"
            acc_c, t_c = timed(torch_loop, variables, ablations, layers, split.images, split.labels, mean, std,
                               args.batch_size, variant)
            rows[name] = (t_c, acc_c)

    flops = 2 * macs * len(split) * len(ablations)
    # Model FLOPs: every masked model counted as a full forward (the loops' work). The engine does
    # less (shared prefixes), and the dense/im2col convs skip padding, so it can pass the peak.
    print(f"\n{'method':<34}{'seconds':>10}{'masks/s':>10}{'model GFLOP/s':>15}{'% of peak':>10}")
    for name, (t, _) in rows.items():
        print(f"{name:<34}{t:>10.1f}{len(ablations) / t:>10.3f}{flops / t / 1e9:>15.1f}{100 * flops / t / 1e9 / peak:>9.0f}%")
    identical_a = acc_a == acc_b == rows["engine, 2nd call"][1]
    identical_c = rows.get("PyTorch loop", (None, acc_b))[1] == acc_b
    summary = {
        "n_examples": len(split), "n_masks": len(ablations), "batch_size": args.batch_size, "macs_per_image": macs,
        "matmul_peak_gflops": peak, "peak_rss_mb": _peak_rss_mb(),
        "engine_scratch_mb": max(r.temp_bytes for r in results) / 2**20,
        "ideal_mac_ratio": shared_prefix_mac_ratio(ablations, layers),
        "seconds": {k: v[0] for k, v in rows.items()},
        "ratio_engine_vs_jax_loop": t_b / t_a,
        "ratio_engine_vs_torch_loop": t_b / rows["PyTorch loop"][0] if "PyTorch loop" in rows else None,
        "ratio_engine_2nd_call_vs_jax_loop": t_warm / t_a,
        "accuracies_identical": bool(identical_a and identical_c),
        "accuracies_identical_jax": bool(identical_a), "accuracies_identical_torch": bool(identical_c),
        "devices": [str(d) for d in jax.devices()], "jax_device_kind": jax.devices()[0].device_kind,
        "torch_device": torch_device,
    }
    print(f"\nb/a (engine / naive JAX loop) = {summary['ratio_engine_vs_jax_loop']:.3f}")
    print(f"engine's 2nd call / naive JAX loop = {summary['ratio_engine_2nd_call_vs_jax_loop']:.3f} "
          f"(compilation excluded from the engine only)")
    if summary["ratio_engine_vs_torch_loop"] is not None:
        print(f"b/c (engine / PyTorch loop)   = {summary['ratio_engine_vs_torch_loop']:.3f}")
    print(f"accuracies identical: {summary['accuracies_identical']}; peak RSS {summary['peak_rss_mb']:.0f} MB; "
          f"engine's largest chunk: {summary['engine_scratch_mb']:.0f} MB of scratch memory (XLA's plan)")
    print(f"MACs the shared prefixes leave (one chunk, per conv MACs): {summary['ideal_mac_ratio']:.3f} of the loop's")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
