"""Study B's analysis tools: bucketed per-depth inference, early exits, side-by-side timing, layer labels.

Selection (which training images are "strongest" for which layer) is :func:`activation_scores`,
:func:`select_strongest` and :func:`layer_labels` (the study's 10 x 10 images per layer);
:func:`dense_labels` labels every image by the same idea (the rule is in its docstring).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.ablation import speed
from resnet_jax.devices import pad_rows
from resnet_jax.models.skip_cnn import CONVS, DEPTHS, SITES, EarlyExitCNN, SkipCNN, to_input

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


@functools.cache
def _stage_fn(model: EarlyExitCNN, level: int) -> Callable:
    def run(params, h):
        h, logits = model.apply({"params": params}, to_input(h) if level == 0 else h, level, method=EarlyExitCNN.stage)
        return h, logits, jax.nn.softmax(logits).max(-1)

    return jax.jit(run)


def predict_early_exit(model: EarlyExitCNN, params: Any, images: np.ndarray, threshold: float | None = None, *,
                       exits: np.ndarray | None = None, batch_size: int, min_bucket: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, exit index)`` per image: each stops at the first exit whose top softmax probability is
    at least ``threshold`` (the last exit always answers), or at its given exit in ``exits``.

    Level by level, only the images still running are computed, packed into padded buckets as in
    :func:`predict_bucketed`; feature maps stay on the device, only logits and confidences come back.
    Threshold 0 stops every image at the first exit, a threshold above 1 runs every image to the last
    (CNN-1's head).
    """
    if (threshold is None) == (exits is None):
        raise ValueError("predict_early_exit takes a threshold or the exits, exactly one of them")
    n, last = len(images), len(DEPTHS) - 1
    logits, taken = np.zeros((n, model.num_classes), np.float32), np.full(n, last, np.int64)
    running, hidden = np.arange(n), None  # hidden: the running images' last feature maps, on the device
    for level in DEPTHS:
        if not len(running):
            break
        fn, maps, chunks = _stage_fn(model, level), [], []
        for _, chunk, size in bucket_plan(np.zeros(len(running), np.int64), batch_size=batch_size,
                                          min_bucket=min_bucket):
            x = pad_rows(images[running[chunk]], size) if hidden is None else _pad_device(hidden[chunk], size)
            h, lg, conf = fn(params, x)
            maps.append(h[:len(chunk)])
            chunks.append((chunk, np.asarray(lg)[:len(chunk)], np.asarray(conf)[:len(chunk)]))
        order = np.concatenate([c for c, _, _ in chunks])
        lg, conf = np.concatenate([g for _, g, _ in chunks]), np.concatenate([f for _, _, f in chunks])
        if level == last:
            stop = np.ones(len(order), bool)
        else:
            stop = conf >= threshold if exits is None else exits[running[order]] == level
        logits[running[order[stop]]], taken[running[order[stop]]] = lg[stop], level
        keep = np.flatnonzero(~stop)
        hidden = jnp.concatenate(maps)[keep] if len(keep) else None
        running = running[order[keep]]
    return logits, taken


def _pad_device(x: jax.Array, size: int) -> jax.Array:
    return x if len(x) == size else jnp.pad(x, ((0, size - len(x)),) + ((0, 0),) * (x.ndim - 1))


def exit_at_threshold(exit_logits: np.ndarray, threshold: float) -> np.ndarray:
    """The exit each image leaves at, from all exits' logits ``(exits, N, classes)``: the reference rule
    (first exit with top softmax probability >= ``threshold``, else the last), computed densely."""
    z = exit_logits - exit_logits.max(-1, keepdims=True)
    confident = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).max(-1) >= threshold
    confident[-1] = True
    return confident.argmax(0)


def quantile_depths(router_logits: np.ndarray, quantile: float) -> np.ndarray:
    """Per image, the shallowest depth whose cumulative router probability reaches ``quantile``.

    A knob over one trained router: small quantiles choose shallower depths, 1 the deepest it deems
    possible; the argmax (the study's rule) is another operating point.
    """
    z = router_logits - router_logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    reached = np.cumsum(p, -1) >= quantile - 1e-6
    reached[:, -1] = True
    return reached.argmax(-1)


def time_paths(paths: Mapping[str, Callable[[], Any]], *, repeats: int, seed: int = 0
               ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Wall seconds of each path in ``repeats`` rounds (each round calls every path once, in a freshly shuffled
    order: :func:`resnet_jax.ablation.speed.interleaved_seconds`) after one warm-up call each (it compiles), and
    the warm-up calls' outputs (so that checking what a path computes costs no extra call)."""
    outputs = {name: jax.block_until_ready(fn()) for name, fn in paths.items()}
    return speed.interleaved_seconds(paths, repeats=repeats, seed=seed), outputs


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


def percentile_ranks(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per (layer, map), the fraction of ``reference`` images that score strictly below each image."""
    ranked = np.sort(reference, axis=0)
    out = np.empty(scores.shape, np.float64)
    for layer in range(scores.shape[1]):
        for m in range(scores.shape[2]):
            out[:, layer, m] = np.searchsorted(ranked[:, layer, m], scores[:, layer, m], side="left")
    return out / len(reference)


def dense_labels(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A layer label for every image: the layer at which its activations are strongest relative to that layer.

    The rule: an image's standing at a map is its percentile rank among the reference (training)
    images' scores for that map; its strength at a layer is its best standing over the layer's maps
    (the literal selection marks an image when it is in the top 10 of *any* map, i.e. a standing
    above ``1 - 10/N``); its label is the layer of highest strength, a tie going to the deeper layer
    as in the literal rule. Every layer contributes the same number of maps. Deterministic given
    the scores: the seed enters through CNN-1's training.
    """
    strength = percentile_ranks(reference, scores).max(-1)  # (N, layers)
    layers = strength.shape[1]
    return (layers - 1 - strength[:, ::-1].argmax(-1)).astype(np.int32)
