"""Segmentation on the training core: PSPNet, cross-entropy + soft Dice, paired augmentation, Dice.

``TASK`` is what :mod:`resnet_jax.training.core` needs. Per epoch the validation Dice per class goes to
``metrics.jsonl``; the tables' lead Dice (:func:`checkpoint_metric`) ranks the checkpoints, and at the end
the checkpoint best by it on validation is scored on the test split (``evaluation.json``). Determinism is
the core's: the epoch's order is a function of ``(seed, epoch)``, augmentation and dropout keys of ``(seed, step)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from resnet_jax import configs, devices, metrics
from resnet_jax.configs import segmentation as seg_config
from resnet_jax.data import segmentation as seg_data
from resnet_jax.data.inputs import image_stats, normalize
from resnet_jax.models import pspnet
from resnet_jax.training import core

Array = jax.Array


# Data, model and metric -------------------------------------------------------------------------

def load_split(config: Mapping, which: str) -> seg_data.SegSplit | None:
    """The ``which`` (``train``/``val``/``test``) split of a config; None when ``data.<which>_split`` is None."""
    d = config["data"]
    name = d[f"{which}_split"]
    if name is None:
        return None
    if d["name"] == "synthetic":
        split = seg_data.synthetic_split(which, size=d["image_size"], seed=config["train"]["seed"],
                                    num_classes=len(d["class_names"]))
    elif d["name"] in seg_data.TFDS_SEGMENTATION and d["data_dir"] is None:
        split = seg_data.load_tfds_segmentation(d["name"], name, image_size=d["image_size"])
        if list(split.class_names) != list(d["class_names"]):
            raise configs.ConfigError(f"data.class_names {list(d['class_names'])} do not match {d['name']}'s "
                                      f"classes {list(split.class_names)}")
    else:
        if d["data_dir"] is None:
            raise seg_data.DataError(f"dataset {d['name']!r} needs --data-dir (e.g. ../shared/data/acdc_lv_myo)")
        prefixes = (d["id_prefixes"] or {}).get(name)
        split = seg_data.load_segmentation_split(d["data_dir"], name, image_size=d["image_size"],
                                                 class_names=d["class_names"], percentiles=d["percentiles"],
                                                 id_prefixes=prefixes)
    return split.take(d[f"max_{which}_examples"], seed=config["train"]["seed"]).keep_classes(d["keep_classes"])


def build_model(config: Mapping) -> pspnet.PSPNet:
    m = config["model"]
    return pspnet.PSPNet(num_classes=len(seg_config.trained_classes(config)), encoder=m["encoder"],
                      output_stride=m["output_stride"], bins=tuple(m["bins"]), pool_features=m["pool_features"],
                      head_features=m["head_features"], dropout=m["dropout"], stem=m["stem"],
                      conv_impl=m["conv_impl"], dtype=core.model_dtype(config),
                      eliminated=tuple(map(tuple, m["eliminated"])))


def build_metric(config: Mapping) -> metrics.Dice:
    """The tables' Dice: pooled Dice of ``metric.lead`` (myocardium by default, the study's metric), of the
    explicit ``metric.classes``, or mean foreground Dice (``lead: mean``); the other classes are columns beside it."""
    m, names = config["metric"], seg_config.trained_classes(config)
    if m["classes"]:
        classes, name = tuple(m["classes"]), "dice_" + "_".join(names[c].lower() for c in m["classes"])
    elif m["lead"] == "mean":
        classes, name = None, "dice"
    else:
        classes = ([n.lower() for n in names].index(m["lead"].lower()),)
        name = f"dice_{m['lead'].lower()}"
    return metrics.Dice(num_classes=len(names), aggregate_by=m["aggregate_by"], classes=classes,
                        class_names=tuple(names), name=name)



def checkpoint_metric(config: Mapping) -> str:
    """The validation score that ranks checkpoints: the tables' lead Dice (``metric.checkpoint: lead``, so the
    checkpoint is chosen by what the tables report), or mean foreground Dice (``mean``: runs of earlier versions)."""
    return build_metric(config).name if config["metric"]["checkpoint"] == "lead" else "dice"


# Losses and augmentation ---------------------------------------------------------------------

def soft_dice_loss(logits: Array, masks: Array, *, smooth: float = 1.0) -> Array:
    """``1 - mean_c (2 sum p t + s) / (sum p + sum t + s)`` over foreground classes, pooled over the batch.

    Pooling over the batch (not per image) keeps slices without a class from dominating the loss.
    """
    probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
    onehot = jax.nn.one_hot(masks, logits.shape[-1], dtype=probs.dtype)[..., 1:]
    axes = tuple(range(probs.ndim - 1))
    inter = jnp.sum(probs * onehot, axis=axes)
    total = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    return 1.0 - jnp.mean((2.0 * inter + smooth) / (total + smooth))


def segmentation_loss(logits: Array, masks: Array, *, dice_weight: float = 0.0) -> Array:
    """Mean pixel cross-entropy, plus ``dice_weight`` times the soft Dice loss."""
    loss = jnp.mean(metrics.pixel_cross_entropy(logits, masks))
    return loss + dice_weight * soft_dice_loss(logits, masks) if dice_weight else loss




def augment_pair(images: Array, masks: Array, key: Array, *, flip: bool = True, max_shift: float = 0,
                 max_rotate: float = 0.0, max_scale: float = 0.0) -> tuple[Array, Array]:
    """One random affine map per example, applied to image (bilinear) and mask (nearest) alike.

    Rotation about the centre by up to ``max_rotate`` degrees, zoom in ``[1 - max_scale, 1 + max_scale]``,
    an integer shift of up to ``max_shift`` pixels and a left-right flip; outside the image is 0
    (darkest, background). With no rotation and zoom every output pixel is an input pixel exactly.
    """
    n, h, w = masks.shape
    k_rot, k_scale, k_shift, k_flip = jax.random.split(key, 4)
    angle = jnp.deg2rad(max_rotate) * jax.random.uniform(k_rot, (n,), minval=-1.0, maxval=1.0)
    scale = 1.0 + max_scale * jax.random.uniform(k_scale, (n,), minval=-1.0, maxval=1.0)
    shift = jax.random.randint(k_shift, (n, 2), -int(max_shift), int(max_shift) + 1).astype(jnp.float32)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,)) if flip else jnp.zeros((n,), bool)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    def one(image, mask, a, s, t, f):
        y, x = yy - cy - t[0], xx - cx - t[1]
        x = jnp.where(f, -x, x)
        c, si = jnp.cos(a), jnp.sin(a)
        coords = [(c * y - si * x) / s + cy, (si * y + c * x) / s + cx]
        img = jax.vmap(lambda ch: ndimage.map_coordinates(ch, coords, order=1, mode="constant", cval=0.0),
                       in_axes=-1, out_axes=-1)(image)  # every channel alike (grey MRI: one; RGB: three)
        msk = ndimage.map_coordinates(mask.astype(jnp.float32), coords, order=0, mode="constant", cval=0.0)
        return img.astype(image.dtype), msk.astype(mask.dtype)

    return jax.vmap(one)(images, masks, angle, scale, shift, flips)


def augment_intensity(images: Array, key: Array, *, max_gamma: float = 0.0, max_contrast: float = 0.0,
                      max_brightness: float = 0.0) -> Array:
    """Per example, ``clip(c * x ** g + b, 0, 1)`` on images in [0, 1]: gamma ``g = (1 + max_gamma) ** u``,
    contrast ``c`` in ``[1 - max_contrast, 1 + max_contrast]`` and brightness ``b`` in ``[-max_brightness,
    max_brightness]``, ``u`` and the others uniform. MRI intensities have no absolute scale; zeros leave every
    pixel as it was."""
    n = images.shape[0]
    k_gamma, k_contrast, k_bright = jax.random.split(key, 3)
    uniform = lambda k, m: m * jax.random.uniform(k, (n, 1, 1, 1), minval=-1.0, maxval=1.0)  # noqa: E731
    gamma = (1.0 + max_gamma) ** uniform(k_gamma, 1.0)
    x = jnp.clip(images, 0.0, 1.0) ** gamma
    return jnp.clip((1.0 + uniform(k_contrast, max_contrast)) * x + uniform(k_bright, max_brightness), 0.0, 1.0
                    ).astype(images.dtype)


INTENSITY = ("max_gamma", "max_contrast", "max_brightness")
"""The intensity keys of ``train``: applied after the geometric map, with a key of their own, and only when one is
above 0, so that runs without them draw exactly the transforms they drew before these keys existed."""


# Steps ------------------------------------------------------------------------------------------

def train_step(state: core.TrainState, images: Array, masks: Array, key: Array, *,
               augment: Mapping[str, Any] | None, dice_weight: float) -> tuple[core.TrainState, dict]:
    """One SGD step; augmentation (``augment``: kwargs of :func:`augment_pair` and of :func:`augment_intensity`,
    or None) runs here."""
    key = jax.random.fold_in(key, state.step)
    k_aug, k_drop = jax.random.split(key)
    if augment is not None:
        geometric = {k: v for k, v in augment.items() if k not in INTENSITY}
        images, masks = augment_pair(images, masks, k_aug, **geometric)
        if any(augment.get(k, 0) for k in INTENSITY):
            images = augment_intensity(images, jax.random.fold_in(k_aug, 1),
                                       **{k: augment.get(k, 0.0) for k in INTENSITY})
    x = normalize(images, state.image_mean, state.image_std)

    def loss_fn(params):
        (logits, _), updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                              mutable=["batch_stats"], rngs={"dropout": k_drop})
        return segmentation_loss(logits, masks, dice_weight=dice_weight), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "pixel_accuracy": jnp.mean(jnp.argmax(logits, -1) == masks)}


def predict_step(model, variables, mean: Array, std: Array, images: Array, masks: Array, *,
                 metric: metrics.Dice) -> dict[str, Array]:
    """The metric's per-example values (takes the variables, not the state: the step's type varies)."""
    logits, _ = model.apply(variables, normalize(images, mean, std))
    return metric.per_example(logits, masks)


def make_eval_fn(model, metric: metrics.Dice) -> Callable:
    """``eval_fn(state, images, masks)``, jitted once per model and metric."""
    fn = jax.jit(functools.partial(predict_step, model, metric=metric))
    return lambda state, x, y: fn(state.variables, state.image_mean, state.image_std, x, y)


def per_example_over(state: core.TrainState, split: seg_data.SegSplit, *, batch_size: int, mesh,
                     step_fn: Callable) -> dict[str, np.ndarray]:
    """``step_fn`` over a whole split in padded batches; per-example arrays with the padding dropped."""
    batch_size = devices.round_up_to_devices(batch_size, mesh)
    parts = []
    for start in range(0, len(split), batch_size):
        images, masks = split.images[start:start + batch_size], split.masks[start:start + batch_size]
        n = len(masks)
        out = step_fn(state, *devices.shard_batch(mesh, devices.pad_rows(images, batch_size),
                                                  devices.pad_rows(masks, batch_size)))
        parts.append({k: v[:n] for k, v in devices.to_host(out).items()})  # whole on every process
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def split_scores(per_example: Mapping[str, np.ndarray], class_names, *, prefix: str) -> dict[str, float]:
    """Loss and Dice (pooled per class, pooled mean, mean per image) from a split's per-example values."""
    return {f"{prefix}loss": float(np.mean(per_example["loss"])),
            **metrics.dice_summary(per_example, class_names, prefix=prefix)}



def load_splits(config: Mapping) -> core.Splits:
    """Train, validation and test splits; without a validation split (``data.val_split: null``) the test split
    ranks checkpoints, as the study did, and reports say so."""
    return core.Splits(train=load_split(config, "train"), val=load_split(config, "val"), test=load_split(config, "test"))


def _augment_kwargs(t: Mapping) -> dict | None:
    if not t["augment"]:
        return None
    return {"flip": t["flip"], "max_shift": t["max_shift"], "max_rotate": t["max_rotate"],
            "max_scale": t["max_scale"], **{k: t[k] for k in INTENSITY}}


def _train_step(config: Mapping) -> Callable:
    t = config["train"]
    augment = _augment_kwargs(t)
    return lambda s, x, y, k: train_step(s, x, y, k, augment=augment, dice_weight=t["dice_weight"])


MIN_PATIENTS = 5
"""The fewest patients (ids' first parts, :func:`seg_data.patient_of`) a test split needs for an interval over
patients: a resample of one or two patients says nothing about other hearts."""


def _evaluate(config: Mapping, model) -> Callable:
    """Scores of a split; on a test split of at least :data:`MIN_PATIENTS` patients also the lead score's interval
    over patients (``test_<lead>_patients_low`` / ``_high``, :meth:`metrics.Dice.patient_interval`)."""
    metric = build_metric(config)
    eval_fn = make_eval_fn(model, metric)

    def evaluate(state, split, mesh, prefix):
        per_example = per_example_over(state, split, batch_size=config["train"]["eval_batch_size"], mesh=mesh,
                                       step_fn=eval_fn)
        scores = split_scores(per_example, split.class_names, prefix=prefix)
        lead = [scores[f"{prefix}dice_{split.class_names[c].lower()}"] for c in metric.classes or ()]
        if lead:  # explicit classes
            scores = {f"{prefix}{metric.name}": float(np.mean(lead)), **scores}
        patients = [seg_data.patient_of(i) for i in split.ids]
        if prefix == "test_" and len(set(patients)) >= MIN_PATIENTS:
            low, high = metric.patient_interval(per_example, patients)
            scores.update({f"{prefix}{metric.name}_patients_low": low, f"{prefix}{metric.name}_patients_high": high})
        return scores
    return evaluate


# A deliberate mirror of classification.TASK: every task fills the same record of the core, field by field.
TASK = core.Task(
    name="segmentation",
    load_splits=load_splits,
    arrays=lambda split: (split.images, split.masks),
    build_model=lambda config, splits: build_model(config),
    train_step=_train_step,
    evaluate=_evaluate,
    best_metric=checkpoint_metric,
    metric=build_metric,
    input_stats=image_stats,
)
