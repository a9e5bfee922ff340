"""Study B's analysis tools: bucketed per-depth inference, side-by-side timing, strongest-activation selection.

Selection (which training images are "strongest" for which layer) is :func:`activation_scores`,
:func:`select_strongest` and :func:`layer_labels`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.devices import pad_rows
from resnet_jax.models.skip_cnn import CONVS, DEPTHS, SITES, SkipCNN, to_input

# Bucketed inference --------------------------------------------------------------------------------

def bucket_sizes(batch_size: int, min_bucket: int) -> tuple[int, ...]:
    """Static batch sizes a group is padded to: ``min_bucket`` doubled while below ``batch_size``, then it."""
    sizes, s = [], max(1, min(min_bucket, batch_size))
    while s < batch_size:
        sizes.append(s)
        s *= 2
    return (*sizes, batch_size)


def bucket_plan(depths: np.ndarray, *, batch_size: int, min_bucket: int) -> list[tuple[int, np.ndarray, int]]:
    """``(depth, example indices, padded size)`` for every chunk: at most ``3 * len(bucket_sizes)`` shapes."""
    sizes, plan = bucket_sizes(batch_size, min_bucket), []
    for d in DEPTHS:
        idx = np.flatnonzero(depths == d)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            plan.append((d, chunk, next(s for s in sizes if s >= len(chunk))))
    return plan


@functools.cache
def _truncated_fn(model: SkipCNN, depth: int) -> Callable:
    return jax.jit(lambda params, x: model.apply({"params": params}, to_input(x), depth, method=SkipCNN.truncated))


def predict_bucketed(model: SkipCNN, params: Any, images: np.ndarray, depths: np.ndarray, *, batch_size: int,
                     min_bucket: int) -> np.ndarray:
    """Logits with each example run only through its layers; same values as the masked model.

    Example::

        logits = predict_bucketed(model, params, test.images, router_depths, batch_size=256, min_bucket=32)
    """
    out = np.zeros((len(images), model.num_classes), np.float32)
    for d, chunk, size in bucket_plan(np.asarray(depths), batch_size=batch_size, min_bucket=min_bucket):
        out[chunk] = np.asarray(_truncated_fn(model, d)(params, pad_rows(images[chunk], size)))[:len(chunk)]
    return out


def time_paths(paths: Mapping[str, Callable[[], Any]], *, repeats: int) -> dict[str, dict[str, Any]]:
    """Wall seconds of each path: one warm-up call (compiles), then ``repeats`` interleaved calls.

    Interleaving spreads a busy machine's noise over all paths alike; the median is reported.
    """
    for fn in paths.values():
        jax.block_until_ready(fn())
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            runs[name].append(time.perf_counter() - start)
    return {name: {"median_s": float(np.median(r)), "runs_s": r} for name, r in runs.items()}


# Selection -----------------------------------------------------------------------------------------

def activation_scores(model: SkipCNN, params: Any, images: np.ndarray, *, n_maps: int, batch_size: int,
                      site: str = "relu") -> np.ndarray:
    """``(N, 3, n_maps)``: mean absolute activation of the first ``n_maps`` maps of each conv, per image.

    One jitted pass: the images are padded to whole batches and ``lax.map`` runs the full-depth
    model over them.
    """
    if site not in SITES:
        raise ValueError(f"unknown activation site {site!r}; valid: {list(SITES)}")
    n = len(images)
    suffix = "" if site == "relu" else "_pre"

    def batch_scores(params, x):
        _, acts = model.apply({"params": params}, to_input(x))
        return jnp.stack([jnp.abs(acts[c + suffix][..., :n_maps]).mean(axis=(1, 2)) for c in CONVS], axis=1)

    padded = pad_rows(images, -(-n // batch_size) * batch_size).reshape(-1, batch_size, *images.shape[1:])
    scores = jax.jit(lambda p, xs: jax.lax.map(lambda x: batch_scores(p, x), xs))(params, padded)
    return np.asarray(scores).reshape(-1, len(CONVS), scores.shape[-1])[:n]


def select_strongest(scores: np.ndarray, *, per_map: int) -> np.ndarray:
    """``(layers, maps, per_map)`` dataset indices of the highest-scoring images, best first.

    Ties go to the lower index (a stable sort of the negated scores), so the choice is deterministic.
    """
    n, layers, maps = scores.shape
    order = np.argsort(-scores.reshape(n, layers * maps), axis=0, kind="stable")[:per_map]
    return order.T.reshape(layers, maps, per_map)


def layer_labels(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, labels)`` of every chosen image, sorted by index; the deepest layer that chose it wins."""
    size = int(chosen.max()) + 1 if chosen.size else 0
    labels = np.full(size, -1, np.int32)
    for layer in range(chosen.shape[0]):  # ascending, so a deeper layer overwrites a shallower one
        labels[chosen[layer].ravel()] = layer
    indices = np.flatnonzero(labels >= 0)
    return indices, labels[indices]
