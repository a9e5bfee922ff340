"""Per-layer timing of the three conv formulations, the evidence behind ``conv_impl='auto'``.

For every conv of ResNet34 at the given input size (forward only, float32, one batch) it times
XLA's convolution, im2col (strided slices + one matmul) and the dense-operator matmul, checks each
against XLA's convolution, and prints which one ``auto`` picks on this backend:

    python benchmarks/conv_kernels.py --batch-size 256 [--image-size 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from resnet_jax.ablation import catalogue as abl
from resnet_jax.models import resnet as models

FORMS = {
    "xla": lambda x, w, s, pad: jax.lax.conv_general_dilated(x, w, (s, s), pad,
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")),
    "patches": lambda x, w, s, pad: models.conv_patches(x, w, strides=s, padding=pad),
    "dense": lambda x, w, s, pad: models.conv_dense(x, w, strides=s, padding=pad),
}


def seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-dense-mb", type=float, default=64, help="skip dense operators larger than this")
    parser.add_argument("--out", help="write the per-layer timings as JSON here")
    args = parser.parse_args()

    model = models.create_model("resnet34", num_classes=10)
    shape = (1, args.image_size, args.image_size, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    seen, rows = {}, []
    print(f"{'layer':<22}{'in':>7}{'out':>7}{'xla ms':>9}{'patches':>9}{'dense':>9}  auto     best")
    totals = dict.fromkeys([*FORMS, "auto"], 0.0)
    for path, x_shape, y_shape in abl._record_convs(model, variables, shape):
        kh, kw, cin = (*abl._lookup(variables["params"], path)["kernel"].shape[:3],)
        cout, stride = y_shape[-1], round(x_shape[1] / y_shape[1])
        key = (x_shape[1:], y_shape[1:], kh, stride)
        if key not in seen:  # identical convs (most of a stage) are timed once
            x = jax.random.normal(jax.random.key(0), (args.batch_size, *x_shape[1:]))
            w = jax.random.normal(jax.random.key(1), (kh, kw, cin, cout)) * 0.05
            pad = ((kh // 2,) * 2, (kw // 2,) * 2)
            ref = FORMS["xla"](x, w, stride, pad)
            times = {}
            dense_mb = 4 * x_shape[1] * x_shape[2] * cin * y_shape[1] * y_shape[2] * cout / 2**20
            for name, form in FORMS.items():
                if name == "dense" and dense_mb > args.max_dense_mb:
                    times[name] = float("nan")
                    continue
                fn = jax.jit(lambda x, w, form=form: form(x, w, stride, pad))
                err = float(jnp.max(jnp.abs(fn(x, w) - ref)))
                assert err < 1e-3, f"{name} differs from XLA's conv by {err} at {models.canonical_name(path)}"
                times[name] = 1e3 * seconds(fn, x, w, repeats=args.repeats)
            seen[key] = times
        times = seen[key]
        auto = models._formulation("auto", x_shape[1:3], y_shape[1:3], kh * kw)
        best = min((t, n) for n, t in times.items() if t == t)[1]
        for name in FORMS:
            totals[name] += times[name] if times[name] == times[name] else 0.0
        totals["auto"] += times[auto]
        name = models.canonical_name(path)
        rows.append({"layer": name, "in": list(x_shape[1:3]), "out": list(y_shape[1:3]), "kernel": kh,
                     "stride": stride, "channels": [cin, cout], "ms": times,
                     "auto": auto, "best": best})
        hw = lambda s: f"{s[1]}x{s[2]}"  # noqa: E731
        print(f"{name:<22}{hw(x_shape):>7}{hw(y_shape):>7}" + "".join(f"{times[n]:>9.2f}" for n in FORMS)
              + f"  {auto:<9}{best}")
    print(f"\nsum over layers (ms, batch {args.batch_size}): "
          + ", ".join(f"{n} {t:.1f}" for n, t in totals.items() if n != "dense")
          + f"; auto / xla = {totals['auto'] / totals['xla']:.3f}, auto / patches = {totals['auto'] / totals['patches']:.3f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"backend": jax.default_backend(), "batch_size": args.batch_size, "layers": rows,
                       "totals_ms": totals}, fh, indent=2)


if __name__ == "__main__":
    main()
