"""Classification on the training core: cross-entropy, random crop + flip on device, top-1 accuracy.

``TASK`` is what :mod:`resnet_jax.training.core` needs; :mod:`resnet_jax.training.runs` trains and
restores runs of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from resnet_jax import devices, metrics
from resnet_jax.data import images as image_data
from resnet_jax.data.inputs import normalize
from resnet_jax.models import resnet
from resnet_jax.training import core

Array = jax.Array


def build_model(config: Mapping, num_classes: int) -> nn.Module:
    m = config["model"]
    return resnet.create_model(m["name"], num_classes=num_classes, stem=m["stem"], conv_impl=m["conv_impl"],
                               dtype=core.model_dtype(config), eliminated=tuple(map(tuple, m["eliminated"])))


def augment(images: Array, key: Array, *, pad: int = 4) -> Array:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip (uint8 in/out)."""
    n, h, w, _ = images.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))  # noqa: E731
    images = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def cross_entropy(logits: Array, labels: Array, *, smoothing: float = 0.0) -> Array:
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, smoothing) if smoothing else onehot)


def train_step(state: core.TrainState, images: Array, labels: Array, key: Array, *, augment_images: bool,
               label_smoothing: float) -> tuple[core.TrainState, dict[str, Array]]:
    """One SGD step on a uint8 batch; augmentation happens here, on device."""
    key = jax.random.fold_in(key, state.step)
    if augment_images:
        images = augment(images, key)
    x = normalize(images, state.image_mean, state.image_std)

    def loss_fn(params):
        (logits, _), updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                              train=True, mutable=["batch_stats"])
        loss = cross_entropy(logits, labels, smoothing=label_smoothing).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def eval_step(state: core.TrainState, images: Array, labels: Array, weights: Array) -> dict[str, Array]:
    """Sums (not means) of loss and correct predictions, so padded batches add up exactly."""
    logits, _ = state.apply_fn(state.variables, normalize(images, state.image_mean, state.image_std))
    correct = (jnp.argmax(logits, -1) == labels) * weights
    return {"loss": jnp.sum(cross_entropy(logits, labels) * weights), "correct": jnp.sum(correct),
            "count": jnp.sum(weights)}


def evaluate_split(state: core.TrainState, split: image_data.Split, *, batch_size: int, mesh: Mesh,
                   step_fn: Callable | None = None, prefix: str = "test_") -> dict[str, float]:
    """Loss and accuracy over a whole split (the last batch padded and weighted out)."""
    step_fn = step_fn or jax.jit(eval_step)
    batch_size = devices.round_up_to_devices(batch_size, mesh)
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for start in range(0, len(split), batch_size):
        labels = split.labels[start:start + batch_size]
        weights = devices.pad_rows(np.ones(len(labels), np.float32), batch_size)
        images = devices.pad_rows(split.images[start:start + batch_size], batch_size)
        out = step_fn(state, *devices.shard_batch(mesh, images, devices.pad_rows(labels, batch_size), weights))
        for k in totals:
            totals[k] += float(out[k])
    return {f"{prefix}loss": totals["loss"] / totals["count"], f"{prefix}accuracy": totals["correct"] / totals["count"]}


def load_splits(config: Mapping) -> core.Splits:
    """Train, validation (``data.val_examples`` held out of the training images, stratified by class) and test
    splits; every subset is fixed by ``data.split_seed``, so seeds of a study share their data."""
    d = config["data"]
    train, test = image_data.load_train_test(d["name"], data_dir=d["data_dir"], seed=d["split_seed"],
                                             max_train_examples=d["max_train_examples"],
                                             max_test_examples=d["max_test_examples"])
    if not d["val_examples"]:
        return core.Splits(train=train, val=None, test=test)
    kept, held = image_data.stratified_holdout(train.labels, d["val_examples"], seed=d["split_seed"])
    return core.Splits(train=train.select(kept), val=train.select(held), test=test)


def _train_step(config: Mapping) -> Callable:
    t = config["train"]
    return lambda s, x, y, k: train_step(s, x, y, k, augment_images=t["augment"],
                                         label_smoothing=t["label_smoothing"])


def _evaluate(config: Mapping, model: nn.Module) -> Callable:
    step_fn = jax.jit(eval_step)
    return lambda state, split, mesh, prefix: evaluate_split(
        state, split, batch_size=config["train"]["eval_batch_size"], mesh=mesh, step_fn=step_fn, prefix=prefix)


# A deliberate mirror of segmentation.TASK: every task fills the same record of the core, field by field.
TASK = core.Task(
    name="classification",
    load_splits=load_splits,
    arrays=lambda split: (split.images, split.labels),
    build_model=lambda config, splits: build_model(config, splits.train.num_classes),
    train_step=_train_step,
    evaluate=_evaluate,
    best_metric=lambda config: "accuracy",
    metric=lambda config: metrics.Accuracy(),
)
