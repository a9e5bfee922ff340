"""PSPNet on a torchvision-layout ResNet encoder, a Dice metric plug-in and the segmentation losses.

The encoder is :class:`models.ResNet` itself (``num_classes=None``) under the submodule name
``encoder``, so its layers are ``encoder.conv1``, ``encoder.layer3.0.downsample``...: the ablation
catalogue, specs and gates work on it unchanged. The head uses plain ``flax.linen.Conv`` on purpose:
only the encoder's convs enter the catalogue, so the protocols ablate the encoder, as the study does.

Dice conventions (used by :class:`Dice` and :func:`dice_summary`):
  * classes: the foreground ids ``1..num_classes-1`` (ACDC: 1 LV cavity, 2 myocardium, 3 RV cavity);
  * per image and class: ``2|P & T| / (|P| + |T|)``, and **1 when both P and T are empty** (nothing
    to find, nothing found); an empty image adds nothing to the pooled sums, so pooled Dice is
    unaffected by that convention;
  * pooled (over a set of images) per class: ``2 sum|P & T| / sum(|P| + |T|)``;
  * mean foreground Dice: the plain mean over the foreground classes of either of the above.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import metrics, models

Array = jax.Array

CLASS_NAMES = ("background", "LV", "MYO", "RV")
"""Mask ids of ``shared/data/acdc_lv_myo`` (sunnybrook_lv_myo uses the first three)."""

OUTPUT_STRIDES = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
"""Output stride -> ``dilate_stages`` of the encoder (stages 2..4)."""


# Pyramid pooling --------------------------------------------------------------------------------

def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """``(bins, size)`` averaging weights with PyTorch's adaptive bins ``floor(i*n/b) .. ceil((i+1)*n/b)``.

    Bins may overlap (when ``size`` is not a multiple of ``bins``) and may repeat pixels (when
    ``bins > size``), exactly as ``torch.nn.AdaptiveAvgPool2d`` does.
    """
    weights = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, stop = (i * size) // bins, -(-((i + 1) * size) // bins)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def adaptive_avg_pool(x: Array, bins: int) -> Array:
    """NHWC adaptive average pooling to ``bins x bins`` (two small matmuls, any input size)."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], bins), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], bins), x.dtype)
    return jnp.einsum("ih,jw,nhwc->nijc", ph, pw, x)


def resize_bilinear(x: Array, hw: tuple[int, int]) -> Array:
    """Bilinear resize of an NHWC map (half-pixel centres: torch's ``align_corners=False``)."""
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), method="bilinear")


class ConvBNReLU(nn.Module):
    """Head block: bias-free conv, BatchNorm (torch defaults), ReLU."""

    features: int
    kernel_size: tuple[int, int]
    norm: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.features, self.kernel_size, padding="SAME", use_bias=False, dtype=self.dtype,
                    kernel_init=models._conv_init, name="conv")(x)
        return nn.relu(self.norm(name="bn")(x))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: per bin size, pool, 1x1 conv+BN+ReLU, upsample; concat with the input."""

    bins: Sequence[int]
    features: int
    norm: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        outs = [x]
        for b in self.bins:
            y = ConvBNReLU(self.features, (1, 1), self.norm, self.dtype, name=f"bin{b}")(adaptive_avg_pool(x, b))
            outs.append(resize_bilinear(y, x.shape[1:3]))
        return jnp.concatenate(outs, axis=-1)


# PSPNet -----------------------------------------------------------------------------------------

class PSPNet(nn.Module):
    """PSPNet returning ``(logits, intermediates)``; logits are float32 at the input's size.

    Attributes:
      num_classes: output classes, background included.
      encoder: a name in :data:`models.MODELS` (``resnet34``; ``resnet_tiny`` for tests).
      output_stride: 8 (stages 3-4 dilated, PSPNet's default), 16 or 32 (the plain ResNet).
      bins: pyramid pooling grid sizes.
      pool_features: channels per pyramid branch; ``None`` = encoder channels / len(bins).
      head_features: channels of the 3x3 conv after the pyramid.
      dropout: before the 1x1 classifier (needs a ``'dropout'`` rng in training).
      stem, conv_impl, dtype: passed to the encoder (``dtype`` also to the head).

    Any input size works (also non-multiples of the output stride); ``gates`` and ``branches`` go to
    the encoder, so the ablation engine's gate formulation and shared prefixes work unchanged.
    """

    num_classes: int = 4
    encoder: str = "resnet34"
    output_stride: int = 8
    bins: Sequence[int] = (1, 2, 3, 6)
    pool_features: int | None = None
    head_features: int = 512
    dropout: float = 0.1
    stem: str = "torchvision"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, gates: models.Gates | None = None,
                 branches: Mapping[str, int | models.Copies] | None = None):
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"unknown output_stride {self.output_stride}; valid: {sorted(OUTPUT_STRIDES)}")
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, use_fast_variance=False)
        if self.encoder not in models.MODELS:
            raise ValueError(f"unknown encoder {self.encoder!r}; valid: {sorted(models.MODELS)}")
        encoder = models.MODELS[self.encoder](num_classes=None, stem=self.stem, conv_impl=self.conv_impl,
                                              dilate_stages=OUTPUT_STRIDES[self.output_stride], dtype=self.dtype,
                                              name="encoder")
        features, intermediates = encoder(x, train=train, gates=gates, branches=branches)
        pool_features = self.pool_features or features.shape[-1] // len(self.bins)
        y = PyramidPooling(self.bins, pool_features, norm, self.dtype, name="pyramid")(features)
        intermediates["pyramid"] = y
        y = ConvBNReLU(self.head_features, (3, 3), norm, self.dtype, name="head")(y)
        intermediates["head"] = y
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
        return resize_bilinear(y.astype(jnp.float32), x.shape[1:3]), intermediates


# Losses -----------------------------------------------------------------------------------------

def pixel_cross_entropy(logits: Array, masks: Array) -> Array:
    """Cross-entropy per pixel: ``(..., H, W)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, masks.astype(jnp.int32))


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
    loss = jnp.mean(pixel_cross_entropy(logits, masks))
    return loss + dice_weight * soft_dice_loss(logits, masks) if dice_weight else loss


# Dice -------------------------------------------------------------------------------------------

def dice_counts(predictions: Array, masks: Array, num_classes: int) -> dict[str, Array]:
    """Per image and foreground class: ``|P & T|``, ``|P|``, ``|T|`` as float32 ``(..., num_classes-1)``."""
    classes = jnp.arange(1, num_classes)
    p = predictions[..., None] == classes
    t = masks[..., None] == classes
    count = lambda a: jnp.sum(a, axis=(-3, -2), dtype=jnp.int32).astype(jnp.float32)  # noqa: E731
    return {"intersection": count(p & t), "pred_sum": count(p), "true_sum": count(t)}


def dice_from_counts(intersection, pred_sum, true_sum, xp=jnp):
    """Dice from counts, 1 where both sums are 0 (the empty-vs-empty convention)."""
    total = pred_sum + true_sum
    return xp.where(total > 0, 2.0 * intersection / xp.maximum(total, 1.0), 1.0)


@dataclasses.dataclass(frozen=True)
class Dice:
    """Dice plug-in for :func:`engine.evaluate`: per-image values on device, pooled on host.

    ``per_example`` returns, per image: ``score`` (mean foreground Dice of the image), ``dice``
    (per class), the counts ``intersection``/``pred_sum``/``true_sum`` that pooled Dice needs, and
    ``loss`` (mean pixel cross-entropy). ``aggregate`` returns the mean foreground Dice
    ``'pooled'`` over the images (default; a 95 % percentile bootstrap interval over images with a
    fixed seed) or the ``'image'`` mean of per-image scores (normal-approximation interval).
    ``classes`` restricts the score to some foreground ids (e.g. ``(2,)`` for myocardium only).
    ``breakdown`` adds the pooled Dice of every foreground class, named by ``class_names``.
    """

    num_classes: int = 4
    aggregate_by: str = "pooled"
    classes: tuple[int, ...] | None = None
    n_bootstrap: int = 1000
    name: str = "dice"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.aggregate_by not in ("pooled", "image"):
            raise ValueError(f"unknown aggregate_by {self.aggregate_by!r}; valid: 'pooled', 'image'")
        bad = [c for c in self.classes or () if not 0 < c < self.num_classes]
        if bad:
            raise ValueError(f"Dice classes {bad} are not foreground ids; valid: 1..{self.num_classes - 1}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names {self.class_names} for {self.num_classes} "
                             f"classes; give one name per class, background first")

    def _columns(self) -> list[int]:
        return [c - 1 for c in (self.classes or range(1, self.num_classes))]

    def per_example(self, logits: Array, masks: Array) -> dict[str, Array]:
        counts = dice_counts(jnp.argmax(logits, -1), masks, self.num_classes)
        dice = dice_from_counts(**counts)
        return {
            "score": jnp.mean(dice[..., jnp.asarray(self._columns())], axis=-1),
            "dice": dice, **counts,
            "loss": jnp.mean(pixel_cross_entropy(logits, masks), axis=(-2, -1)),
        }

    def aggregate(self, per_example: Mapping[str, np.ndarray]) -> tuple[float, float, float]:
        if self.aggregate_by == "image":
            score = np.asarray(per_example["score"], np.float64)
            low, high = metrics.mean_interval(score)
            return float(score.mean()), low, high
        cols = self._columns()
        counts = [np.asarray(per_example[k], np.float64)[:, cols] for k in ("intersection", "pred_sum", "true_sum")]
        value = _pooled(*(c.sum(0) for c in counts))
        idx = np.random.default_rng(0).integers(0, len(counts[0]), (self.n_bootstrap, len(counts[0])))
        boot = _pooled(*(c[idx].sum(1) for c in counts))
        low, high = np.percentile(boot, [2.5, 97.5])
        return float(value), float(low), float(high)


    def breakdown(self, per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Pooled Dice of each foreground class (``dice_<name>``), for the tables' per-class columns."""
        names = self.class_names or tuple(f"class{i}" for i in range(self.num_classes))
        summary = dice_summary(per_example, names)
        return {f"dice_{n.lower()}": summary[f"dice_{n.lower()}"] for n in names[1:]}


def _pooled(intersection, pred_sum, true_sum):
    return np.mean(dice_from_counts(intersection, pred_sum, true_sum, xp=np), axis=-1)


def dice_summary(per_example: Mapping[str, np.ndarray], class_names: Sequence[str], *,
                 prefix: str = "") -> dict[str, float]:
    """Pooled Dice per class and their mean, and the mean of per-image mean foreground Dice.

    Keys: ``{prefix}dice_<class>`` (lower case), ``{prefix}dice`` (pooled mean foreground) and
    ``{prefix}dice_per_image``; ``class_names`` includes the background at index 0.
    """
    sums = {k: np.asarray(per_example[k], np.float64).sum(0) for k in ("intersection", "pred_sum", "true_sum")}
    pooled = dice_from_counts(sums["intersection"], sums["pred_sum"], sums["true_sum"], xp=np)
    out = {f"{prefix}dice_{n.lower()}": float(d) for n, d in zip(class_names[1:], pooled)}
    out[f"{prefix}dice"] = float(pooled.mean())
    out[f"{prefix}dice_per_image"] = float(np.mean(per_example["dice"]))
    return out
