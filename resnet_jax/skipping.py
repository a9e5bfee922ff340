"""Study B's building blocks: a three-conv CNN whose depth is chosen per example (PROTOCOLS.md).

CNN-1 and CNN-3 are one module, :class:`SkipCNN`: ``conv1`` maps the input channels to
``channels``; ``conv2`` and ``conv3`` map ``channels -> channels``; 3x3 kernels, SAME padding,
bias, ReLU, no pooling; then one dense layer over the flattened map. Only conv2 and conv3 are ever
skipped (layer label 0 skips both, label 1 skips conv3, label 2 none), so conv1 may change the
channel count and no input projection is needed. An example's *depth* is its layer label: it runs
``conv1 .. conv{depth+1}``.

Two executions of the same parameters:
  * masked (``SkipCNN.__call__(x, depth)``): every layer runs on the whole batch and
    ``jnp.where`` keeps a skipped layer's input, so the layer is the identity for that example and
    receives exactly zero gradient from it. Training uses this; it saves no compute.
  * bucketed (:func:`predict_bucketed`): examples grouped by depth run only their layers
    (``SkipCNN.truncated``), padded to a few static batch sizes. This is where compute is saved.

CNN-2, the router, is :class:`Router`: a small strided CNN over the three layer labels.
Selection (which training images are "strongest" for which layer) is :func:`activation_scores`,
:func:`select_strongest` and :func:`layer_labels`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from resnet_jax import checkpointing

Array = jax.Array
DEPTHS = (0, 1, 2)
CONVS = ("conv1", "conv2", "conv3")
SITES = ("relu", "pre_relu")
"""Where a conv's activation is read for selection: after its ReLU (a Keras ``Conv2D(activation=
'relu')`` output, the default) or before it."""


# Models ------------------------------------------------------------------------------------------

def _conv3x3(channels: int, *, strides: int = 1, name: str | None = None) -> nn.Conv:
    return nn.Conv(channels, (3, 3), strides=strides, padding="SAME", name=name)


class SkipCNN(nn.Module):
    """CNN-1 (``depth=None``: full depth) and CNN-3 (``depth``: one of 0, 1, 2 per example).

    ``__call__`` returns ``(logits, activations)``; ``activations[name]`` is conv ``name``'s
    output after ReLU and ``activations[name + '_pre']`` before, computed for the whole batch (for
    an example that skips the layer: on the input it would have had, then discarded).
    """

    num_classes: int
    channels: int = 32

    def setup(self):
        self.conv1 = _conv3x3(self.channels)
        self.conv2 = _conv3x3(self.channels)
        self.conv3 = _conv3x3(self.channels)
        self.head = nn.Dense(self.num_classes)

    def _run(self, name: str, h: Array, acts: dict[str, Array]) -> Array:
        z = getattr(self, name)(h)
        acts[f"{name}_pre"], acts[name] = z, nn.relu(z)
        return acts[name]

    def __call__(self, x: Array, depth: Array | None = None) -> tuple[Array, dict[str, Array]]:
        acts: dict[str, Array] = {}
        h = self._run("conv1", x, acts)
        for level, name in enumerate(CONVS[1:], start=1):
            out = self._run(name, h, acts)
            # where, not a multiply: the cotangent of `out` is exactly zero where the layer is skipped.
            h = out if depth is None else jnp.where((depth >= level)[:, None, None, None], out, h)
        return self.head(h.reshape(h.shape[0], -1)), acts

    def truncated(self, x: Array, depth: int) -> Array:
        """Logits of a batch whose examples all have ``depth``: only the layers they run."""
        h = nn.relu(self.conv1(x))
        for conv in (self.conv2, self.conv3)[:depth]:
            h = nn.relu(conv(h))
        return self.head(h.reshape(h.shape[0], -1))


class Router(nn.Module):
    """CNN-2: stride-2 3x3 convs (widths ``channels``) with ReLU, then a dense layer over the labels.

    The study does not describe CNN-2; this one is deliberately small so that routing costs well
    under 1 % of CNN-1 (see :func:`router_macs`).
    """

    channels: tuple[int, ...] = (8, 16)
    num_labels: int = len(DEPTHS)

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, dict[str, Array]]:
        for i, c in enumerate(self.channels):
            x = nn.relu(_conv3x3(c, strides=2, name=f"conv{i + 1}")(x))
        return nn.Dense(self.num_labels, name="head")(x.reshape(x.shape[0], -1)), {}


def skip_cnn_macs(image_shape: Sequence[int], *, channels: int, num_classes: int) -> dict[int, int]:
    """Multiply-accumulates per image of :class:`SkipCNN` at each depth (bias adds and ReLUs not counted)."""
    h, w, c = image_shape
    conv1, conv = h * w * 9 * c * channels, h * w * 9 * channels * channels
    head = h * w * channels * num_classes
    return {d: conv1 + d * conv + head for d in DEPTHS}


def router_macs(image_shape: Sequence[int], *, channels: Sequence[int]) -> int:
    """Multiply-accumulates per image of :class:`Router`."""
    h, w, c = image_shape
    total = 0
    for out in channels:
        h, w = -(-h // 2), -(-w // 2)
        total += h * w * 9 * c * out
        c = out
    return total + h * w * c * len(DEPTHS)


# Training and prediction ---------------------------------------------------------------------------

def to_input(images: Array) -> Array:
    """uint8 images to float32 in [0, 1] (the Keras-style scaling the study's code would use)."""
    return images.astype(jnp.float32) / 255.0


def _depth_kwargs(depth: Array | None) -> dict[str, Array]:
    return {} if depth is None else {"depth": depth}


@functools.cache
def rmsprop(*, learning_rate: float, rho: float = 0.9, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras' RMSprop: ``lr * g / (sqrt(E[g^2]) + eps)`` with Keras' defaults.

    Cached, so models trained with the same settings share one optimizer object and therefore
    their compiled steps.
    """
    return optax.rmsprop(learning_rate, decay=rho, eps=eps, eps_in_sqrt=False)


def init_state(model: nn.Module, image_shape: Sequence[int], *, tx: optax.GradientTransformation,
               seed: int) -> train_state.TrainState:
    """Initial parameters and optimizer state, made by one compiled function.

    The key is XLA's ``rbg`` generator: on CPU it compiles in a fraction of threefry's time (seconds
    per model here). Its values may change between XLA versions; runs resume from checkpoints, never
    from a re-initialisation, so that costs no reproducibility of a run.
    """
    return _init_fn(model, tuple(image_shape), tx)(jax.random.key(seed, impl="rbg"))


@functools.cache
def _init_fn(model: nn.Module, image_shape: tuple[int, ...], tx: optax.GradientTransformation) -> Callable:
    def make(key):
        params = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
        return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    return jax.jit(make)


def _train_step(state: train_state.TrainState, images: Array, labels: Array, depth: Array | None):
    def loss_fn(params):
        logits, _ = state.apply_fn({"params": params}, to_input(images), **_depth_kwargs(depth))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


_jit_train_step = jax.jit(_train_step, donate_argnums=0)


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, tx: optax.GradientTransformation,
        depths: np.ndarray | None = None, epochs: int, batch_size: int, seed: int, workdir: str | Path,
        log: Callable[[str], None] = print) -> train_state.TrainState:
    """Train ``model`` (sparse categorical cross-entropy) with a checkpoint after every epoch in ``workdir``.

    A rerun resumes after the last finished epoch; when all are done it only restores (no init
    compile). Epoch ``e``'s example order is a function of ``(seed, e)``; the last partial batch is
    dropped. ``depths`` (per example) go to :class:`SkipCNN`; None for full depth or the router.
    """
    workdir = Path(workdir)
    mngr = checkpointing.manager(workdir, keep=1, best_metric="train_accuracy")
    done = mngr.latest_step() or 0
    if done >= epochs:
        abstract = jax.eval_shape(lambda: init_state(model, images.shape[1:], tx=tx, seed=seed))
        return checkpointing.restore(mngr, abstract)
    state = init_state(model, images.shape[1:], tx=tx, seed=seed)
    if done:
        state = checkpointing.restore(mngr, state)
    batch_size = min(batch_size, len(labels))
    steps = len(labels) // batch_size
    for epoch in range(done, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        sums, start = {"loss": 0.0, "accuracy": 0.0}, time.perf_counter()
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            state, out = _jit_train_step(state, images[idx], labels[idx], None if depths is None else depths[idx])
            sums = {k: sums[k] + out[k] for k in sums}
        line = {"epoch": epoch + 1, **{f"train_{k}": float(v) / steps for k, v in sums.items()},
                "seconds": time.perf_counter() - start}
        with (workdir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        checkpointing.save(mngr, epoch + 1, state, metrics={"train_accuracy": line["train_accuracy"]})
        if epoch == done or (epoch + 1) % max(1, epochs // 5) == 0:  # about five lines per model
            log(f"  {workdir.name} epoch {epoch + 1}/{epochs}: loss {line['train_loss']:.4f} "
                f"accuracy {line['train_accuracy']:.4f} ({line['seconds']:.1f} s)")
    return state


@functools.cache
def _logits_fn(model: nn.Module) -> Callable:
    return jax.jit(lambda params, x, depth: model.apply({"params": params}, to_input(x), **_depth_kwargs(depth))[0])


def predict_logits(model: nn.Module, params: Any, images: np.ndarray, depths: np.ndarray | None = None, *,
                   batch_size: int) -> np.ndarray:
    """Logits of (at least one) image, masked execution for :class:`SkipCNN` with ``depths``.

    The last batch is padded, so each model compiles once per ``batch_size``.
    """
    fn, out = _logits_fn(model), []
    for start in range(0, len(images), batch_size):
        x = _pad_to(images[start:start + batch_size], batch_size)
        d = None if depths is None else _pad_to(depths[start:start + batch_size], batch_size)
        out.append(np.asarray(fn(params, x, d))[:min(batch_size, len(images) - start)])
    return np.concatenate(out)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    return a if len(a) == size else np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])


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
        out[chunk] = np.asarray(_truncated_fn(model, d)(params, _pad_to(images[chunk], size)))[:len(chunk)]
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

    padded = _pad_to(images, -(-n // batch_size) * batch_size).reshape(-1, batch_size, *images.shape[1:])
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
