"""Training and prediction of Study B's networks (RMSprop, sparse categorical cross-entropy).

:func:`fit` runs on the one epoch loop of :mod:`resnet_jax.training.core`: a checkpoint per epoch,
resumable, the epoch's order a function of ``(seed, epoch)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import checkpointing, devices
from resnet_jax.devices import pad_rows
from resnet_jax.models.skip_cnn import depth_kwargs, to_input
from resnet_jax.training import core

Array = jax.Array


@functools.cache
def rmsprop(*, learning_rate: float, rho: float = 0.9, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras' RMSprop: ``lr * g / (sqrt(E[g^2]) + eps)`` with Keras' defaults.

    Cached, so models trained with the same settings share one optimizer object and therefore
    their compiled steps.
    """
    return optax.rmsprop(learning_rate, decay=rho, eps=eps, eps_in_sqrt=False)


def init_state(model: nn.Module, image_shape: Sequence[int], *, tx: optax.GradientTransformation,
               seed: int) -> core.TrainState:
    """Initial parameters and optimizer state, made by one compiled function.

    The key is XLA's ``rbg`` generator: on CPU it compiles in a fraction of threefry's time (seconds
    per model here). Its values may change between XLA versions; runs resume from checkpoints, never
    from a re-initialisation, so that costs no reproducibility of a run. The state's input statistics are
    mean 0 and std 1: the models see images scaled to [0, 1] (``to_input``), the Keras-style scaling of the study.
    """
    return _init_fn(model, tuple(image_shape), tx)(jax.random.key(seed, impl="rbg"))


@functools.cache
def _init_fn(model: nn.Module, image_shape: tuple[int, ...], tx: optax.GradientTransformation) -> Callable:
    channels = image_shape[-1]

    def make(key):
        params = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
        return core.TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats={},
                                      image_mean=jnp.zeros(channels), image_std=jnp.ones(channels))

    return jax.jit(make)


def _train_step(state: core.TrainState, images: Array, labels: Array, *depth_and_key: Array):
    """One RMSprop step; ``depth_and_key`` is ``(depth, key)`` for CNN-3 and ``(key,)`` otherwise."""
    depth = depth_and_key[0] if len(depth_and_key) == 2 else None

    def loss_fn(params):
        logits, _ = state.apply_fn({"params": params}, to_input(images), **depth_kwargs(depth))
        # An early-exit model's logits are (exits, batch, classes): every exit learns the labels, weighted alike.
        targets = jnp.broadcast_to(labels, logits.shape[:-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), (logits, targets)

    (loss, (logits, targets)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == targets)}


_jit_train_step = jax.jit(_train_step, donate_argnums=0)


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, tx: optax.GradientTransformation,
        depths: np.ndarray | None = None, epochs: int, batch_size: int, seed: int, workdir: str | Path,
        log: Callable[[str], None] = print) -> core.TrainState:
    """Train ``model`` (sparse categorical cross-entropy) on the core's epoch loop, a checkpoint per epoch
    in ``workdir``.

    A rerun resumes where it stopped; when all epochs are done it only restores (no init compile).
    ``depths`` (per example) go to :class:`SkipCNN`; None for full depth or the router.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    batch_size = min(batch_size, len(labels))
    total = epochs * (len(labels) // batch_size)
    mngr = checkpointing.manager(workdir, keep=1, best_metric="train_accuracy")
    done = mngr.latest_step() or 0
    if done >= total:
        return checkpointing.restore(mngr, jax.eval_shape(lambda: init_state(model, images.shape[1:], tx=tx,
                                                                             seed=seed)))
    state = init_state(model, images.shape[1:], tx=tx, seed=seed)
    if done:
        state = checkpointing.restore(mngr, state)
    arrays = (images, labels) if depths is None else (images, labels, depths)
    # Study B's CNNs are small and their batches (Keras' 32) need not divide by the device count: one device.
    state, _ = core.run_epochs(state, mngr, step_fn=_jit_train_step, arrays=arrays, mesh=devices.data_mesh(1),
                               epochs=epochs, batch_size=batch_size, seed=seed, evaluate=lambda s: {},
                               best_metric="train_accuracy", metrics_path=workdir / "metrics.jsonl",
                               log=lambda line: log(f"  {workdir.name}: {line}"))
    return state


@functools.cache
def _logits_fn(model: nn.Module) -> Callable:
    return jax.jit(lambda params, x, depth: model.apply({"params": params}, to_input(x), **depth_kwargs(depth))[0])


def predict_logits(model: nn.Module, params: Any, images: np.ndarray, depths: np.ndarray | None = None, *,
                   batch_size: int) -> np.ndarray:
    """Logits of (at least one) image, masked execution for :class:`SkipCNN` with ``depths``;
    ``(exits, images, classes)`` for an early-exit model.

    The last batch is padded, so each model compiles once per ``batch_size``.
    """
    fn, out = _logits_fn(model), []
    for start in range(0, len(images), batch_size):
        x = pad_rows(images[start:start + batch_size], batch_size)
        d = None if depths is None else pad_rows(depths[start:start + batch_size], batch_size)
        out.append(np.asarray(fn(params, x, d))[..., :min(batch_size, len(images) - start), :])
    return np.concatenate(out, axis=-2)

