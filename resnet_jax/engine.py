"""Evaluate many ablations over a dataset: one compiled function per chunk of masks.

Two formulations behind one interface, chosen per ablation kind:

* ``gates``: for whole-kernel kinds (zero-kernel, zero-branch, lesion) the weights stay shared
  and unbatched; each of the K ablations in a chunk multiplies one conv output (or BN output, or
  residual branch) by 0 for its copy of the batch, so K masked models are one forward over a
  K x B batch. ``x * 0 == conv(x, 0)`` exactly for finite activations, so this is the same
  model as the weight mask, and plain convs stay plain (vmapping over kernels would turn every
  conv into a slow grouped conv). Evaluation mode only: in train mode the gated copies would
  share, and change, one set of batch statistics.
* ``weights``: the reference semantics and the only option for reinit/rerandomize: ``lax.map``
  over the chunk's masks, each applied to the variables with :func:`ablation.apply`.

Chunks are sized from a memory budget; results never depend on the chunk size.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import ablation as abl
from resnet_jax import metrics as metrics_lib
from resnet_jax import models

METHODS = ("auto", "gates", "weights")


@dataclasses.dataclass(frozen=True)
class Result:
    """One ablation's score over the evaluated examples."""

    name: str
    kind: str
    layers: tuple[str, ...]
    value: float
    ci_low: float
    ci_high: float
    loss: float
    n_examples: int
    per_example: dict[str, np.ndarray]
    seconds: float
    breakdown: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. Dice per class


def activation_bytes_per_example(layers: Sequence[abl.Layer]) -> int:
    """A conservative float32 activation footprint of one forward (conv, BN and ReLU outputs)."""
    return 4 * 3 * sum(l.output_hw[0] * l.output_hw[1] * l.out_channels for l in layers)


def chunk_size(n_ablations: int, *, batch_size: int, layers: Sequence[abl.Layer], memory_budget_mb: float) -> int:
    per_mask = batch_size * activation_bytes_per_example(layers)
    return int(max(1, min(n_ablations, memory_budget_mb * 2**20 // max(per_mask, 1))))


def method_for(kind: str, method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    if method == "gates" and kind not in abl.GATE_KINDS:
        raise ValueError(f"kind {kind!r} cannot be expressed by gates; use method 'weights' or 'auto'")
    if method == "auto":
        return "gates" if kind in abl.GATE_KINDS else "weights"
    return method


def _normalize(images, mean, std):
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def start_stage(ablation: abl.Ablation, layers: Sequence[abl.Layer]) -> int:
    """The first stage an ablation changes (0 = the stem); everything before it is shared."""
    stages = {l.name: l.stage or 0 for l in layers}
    if not ablation.layers:
        return max(stages.values())
    return min(stages[n] for n in ablation.layers)


def _supports_tiling(model: nn.Module) -> bool:
    return isinstance(model, models.ResNet)


def _gates_forward(model: nn.Module, metric, start: int) -> Callable:
    tiled_inside = _supports_tiling(model)

    @jax.jit
    def forward(variables, gates, images, targets, mean, std):
        k = next(iter(next(iter(gates.values())).values())).shape[0]
        b = images.shape[0]
        x = _normalize(images, mean, std)
        per_example_gates = jax.tree.map(lambda g: jnp.repeat(g, b), gates)
        if tiled_inside:  # the shared prefix runs once, on b examples
            logits, _ = model.apply(variables, x, gates=per_example_gates, tile=(start, k))
        else:
            x = jnp.broadcast_to(x[None], (k, *x.shape)).reshape(k * b, *x.shape[1:])
            logits, _ = model.apply(variables, x, gates=per_example_gates)
        logits = logits.reshape(k, b, *logits.shape[1:])
        return metric.per_example(logits, jnp.broadcast_to(targets[None], (k, *targets.shape)))

    return forward


def _weights_forward(model: nn.Module, metric, replacement_fn: Callable | None) -> Callable:
    @jax.jit
    def forward(variables, masks, seeds, images, targets, mean, std):
        x = _normalize(images, mean, std)

        def one(args):
            mask, seed = args
            replacement = None if replacement_fn is None else replacement_fn(seed)
            logits, _ = model.apply(abl.apply(variables, mask, replacement=replacement), x)
            return metric.per_example(logits, targets)

        return jax.lax.map(one, (masks, seeds))

    return forward


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if len(array) == size:
        return array
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


def evaluate(
    model: nn.Module,
    variables: Mapping[str, Any],
    ablations: Sequence[abl.Ablation],
    layers: Sequence[abl.Layer],
    images: np.ndarray,
    targets: np.ndarray,
    *,
    image_mean: Any,
    image_std: Any,
    metric: Any = metrics_lib.Accuracy(),
    batch_size: int = 128,
    method: str = "auto",
    memory_budget_mb: float = 2048,
    chunk: int | None = None,
    initial_params: Any = None,
    on_chunk: Callable[[list[Result]], None] | None = None,
    progress: bool = True,
) -> list[Result]:
    """Score every ablation on ``(images, targets)``; ``on_chunk`` sees results as chunks finish.

    Args:
      ablations: resolved ablations (:func:`ablation.resolve_all`); ones with no layers are the
        unablated model (a baseline).
      method: ``'auto'`` (gates where the kind allows, else weights), ``'gates'`` or ``'weights'``.
      memory_budget_mb: bound on a chunk's activation memory; sets the chunk size unless ``chunk``.
      initial_params: the run's initial parameters, needed by ``reinit``.
    """
    from tqdm import tqdm

    n_dev = jax.device_count()
    batch_size = -(-batch_size // n_dev) * n_dev
    results: list[Result] = []
    groups: dict[tuple[str, str, int], list[abl.Ablation]] = {}
    # A mask listed twice (e.g. a shortcut conv by both `single` and `shortcut`) is scored once.
    unique = list({(a.name, a.kind, a.layers): a for a in ablations}.values())
    for a in unique:
        how = method_for(a.kind, method)
        start = start_stage(a, layers) if how == "gates" and _supports_tiling(model) else 0
        groups.setdefault((a.kind, how, start), []).append(a)
    bar = tqdm(total=len(unique), desc="ablations", unit="mask", disable=not progress or None, leave=False)
    for (kind, how, start), group in sorted(groups.items()):
        size = chunk or chunk_size(len(group), batch_size=batch_size, layers=layers,
                                   memory_budget_mb=memory_budget_mb)
        run = _gate_runner if how == "gates" else _weight_runner
        for chunk_results in run(model, variables, group, layers, images, targets, image_mean, image_std,
                                 metric, batch_size, size, kind, initial_params, start):
            results += chunk_results
            bar.update(len(chunk_results))
            if on_chunk is not None:
                on_chunk(chunk_results)
    bar.close()
    by_key = {(r.name, r.kind, r.layers): r for r in results}
    return [by_key[(a.name, a.kind, a.layers)] for a in ablations]


def _collect(forward_chunk: Callable, group, images, targets, batch_size, metric):
    """Run ``forward_chunk(images, targets) -> dict of (K, B)`` over all batches; join per mask."""
    from resnet_jax import train

    mesh = train.data_mesh()  # examples are split over every device; masks ride along
    parts: list[dict[str, np.ndarray]] = []
    for start, stop in _batches(len(images), batch_size):
        x, y = train.shard_batch(mesh, _pad(images[start:stop], batch_size), _pad(targets[start:stop], batch_size))
        out = forward_chunk(x, y)
        parts.append({k: np.asarray(v)[:, : stop - start] for k, v in out.items()})
    joined = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
    out = []
    for i, a in enumerate(group):
        per_example = {k: v[i] for k, v in joined.items()}
        value, low, high = metric.aggregate(per_example)
        loss = float(np.mean(per_example["loss"])) if "loss" in per_example else float("nan")
        breakdown = metric.breakdown(per_example) if hasattr(metric, "breakdown") else {}
        out.append((a, value, low, high, loss, per_example, breakdown))
    return out


def _results(collected, seconds: float) -> list[Result]:
    return [Result(a.name, a.kind, a.layers, value, low, high, loss, len(next(iter(pe.values()))), pe,
                   seconds / len(collected), breakdown)
            for a, value, low, high, loss, pe, breakdown in collected]


def _gate_runner(model, variables, group, layers, images, targets, mean, std, metric, batch_size, size,
                 kind, initial_params, start):
    # Only baselines: an all-ones site keeps the gate structure non-empty.
    all_gates = abl.make_gates(group, layers) or {"kernel": {layers[-1].name: np.ones(len(group), np.float32)}}
    forward = _gates_forward(model, metric, start)
    for start in range(0, len(group), size):
        chunk = group[start:start + size]
        gates = jax.tree.map(lambda g: _pad_ones(g[start:start + size], size), all_gates)
        t0 = time.perf_counter()
        collected = _collect(
            lambda x, y: forward(variables, gates, x, y, mean, std), chunk, images, targets, batch_size, metric)
        yield _results(collected, time.perf_counter() - t0)


def _pad_ones(vec: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([vec, np.ones(size - len(vec), vec.dtype)]) if len(vec) < size else vec


def _weight_runner(model, variables, group, layers, images, targets, mean, std, metric, batch_size, size,
                   kind, initial_params, start):
    replacement_fn = None
    if kind == "reinit":
        if initial_params is None:
            raise ValueError("reinit needs the run's initial parameters (initial_params)")
        replacement_fn = lambda seed: initial_params  # noqa: E731
    elif kind == "rerandomize":
        sample = jnp.zeros((1, *images.shape[1:]), jnp.float32)
        replacement_fn = lambda seed: model.init(jax.random.key(seed), sample)["params"]  # noqa: E731
    forward = _weights_forward(model, metric, replacement_fn)
    masks = [abl.make_mask(variables["params"], a, layers) for a in group]
    seeds = np.asarray([a.seed for a in group], np.uint32)
    for start in range(0, len(group), size):
        chunk = group[start:start + size]
        pad = size - len(chunk)
        chunk_masks = abl.stack(masks[start:start + size] + [masks[0]] * pad)
        chunk_seeds = _pad(seeds[start:start + size], size)
        t0 = time.perf_counter()
        collected = _collect(
            lambda x, y: forward(variables, chunk_masks, chunk_seeds, x, y, mean, std), chunk, images, targets,
            batch_size, metric)
        yield _results(collected, time.perf_counter() - t0)
