"""Metrics as plug-ins: per-example values on device, aggregation with a 95 % interval on host.

A metric is an object with ``name``, ``per_example(logits, targets) -> dict of (N,) arrays`` (jitted
with the model) and ``aggregate(per_example) -> (value, ci_low, ci_high)``, and optionally
``breakdown(per_example) -> dict of named values`` (extra table columns, e.g. Dice per class). The
ablation engine only ever calls these, so segmentation plugs in a Dice metric without touching it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray, *, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval of a mean over examples."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    half = z * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy; keeps per-example correctness, loss, prediction and top-2 margin."""

    name: str = "accuracy"

    def per_example(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        top2 = jax.lax.top_k(logits, 2)[0]
        return {
            "correct": jnp.argmax(logits, -1) == labels,
            "loss": -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0],
            "prediction": jnp.argmax(logits, -1).astype(jnp.int32),
            "margin": top2[..., 0] - top2[..., 1],
        }

    def aggregate(self, per_example: dict[str, np.ndarray]) -> tuple[float, float, float]:
        correct = np.asarray(per_example["correct"], bool)
        low, high = wilson_interval(int(correct.sum()), correct.size)
        return float(correct.mean()), low, high


# Dice -------------------------------------------------------------------------------------------
# Conventions (used by :class:`Dice` and :func:`dice_summary`):
#   * classes: the foreground ids ``1..num_classes-1`` (ACDC: 1 LV cavity, 2 myocardium, 3 RV cavity);
#   * per image and class: ``2|P & T| / (|P| + |T|)``, and 1 when both P and T are empty (nothing to
#     find, nothing found); an empty image adds nothing to the pooled sums, so pooled Dice is
#     unaffected by that convention;
#   * pooled (over a set of images) per class: ``2 sum|P & T| / sum(|P| + |T|)``;
#   * mean foreground Dice: the plain mean over the foreground classes of either of the above.

def pixel_cross_entropy(logits: jax.Array, masks: jax.Array) -> jax.Array:
    """Cross-entropy per pixel: ``(..., H, W)``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, masks.astype(jnp.int32))


def dice_counts(predictions: jax.Array, masks: jax.Array, num_classes: int) -> dict[str, jax.Array]:
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

    def columns(self) -> list[int]:
        """0-based columns of the per-image counts that the score averages (foreground id - 1)."""
        return [c - 1 for c in (self.classes or range(1, self.num_classes))]

    def per_example(self, logits: jax.Array, masks: jax.Array) -> dict[str, jax.Array]:
        counts = dice_counts(jnp.argmax(logits, -1), masks, self.num_classes)
        dice = dice_from_counts(**counts)
        return {
            "score": jnp.mean(dice[..., jnp.asarray(self.columns())], axis=-1),
            "dice": dice, **counts,
            "loss": jnp.mean(pixel_cross_entropy(logits, masks), axis=(-2, -1)),
        }

    def aggregate(self, per_example: Mapping[str, np.ndarray]) -> tuple[float, float, float]:
        if self.aggregate_by == "image":
            score = np.asarray(per_example["score"], np.float64)
            low, high = mean_interval(score)
            return float(score.mean()), low, high
        cols = self.columns()
        counts = [np.asarray(per_example[k], np.float64)[:, cols] for k in ("intersection", "pred_sum", "true_sum")]
        value = _pooled(*(c.sum(0) for c in counts))
        idx = np.random.default_rng(0).integers(0, len(counts[0]), (self.n_bootstrap, len(counts[0])))
        boot = _pooled(*(c[idx].sum(1) for c in counts))
        low, high = np.percentile(boot, [2.5, 97.5])
        return float(value), float(low), float(high)

    def patient_interval(self, per_example: Mapping[str, np.ndarray], groups: Sequence[str]) -> tuple[float, float]:
        """A 95 % percentile bootstrap interval of the pooled score that draws whole patients (``groups``: the
        patient of each image) with replacement, ``n_bootstrap`` times with a fixed seed. Slices of one patient
        are not independent, so this is the interval a test set of a few patients supports; the image bootstrap
        of :meth:`aggregate` is narrower than it should be. A plain percentile interval: unlike the decisions'
        bootstrap (``statistics.small_sample_stretch``) it is not widened for few patients."""
        names, index = np.unique(np.asarray(groups), return_inverse=True)
        if len(index) != len(per_example["intersection"]):
            raise ValueError(f"{len(index)} groups for {len(per_example['intersection'])} images; give the patient "
                             f"of every image")
        cols = self.columns()
        per_patient = [np.stack([np.bincount(index, weights=c, minlength=len(names)) for c in
                                 np.asarray(per_example[k], np.float64)[:, cols].T], 1)
                       for k in ("intersection", "pred_sum", "true_sum")]
        draws = np.random.default_rng(0).integers(0, len(names), (self.n_bootstrap, len(names)))
        weights = np.stack([np.bincount(row, minlength=len(names)) for row in draws]).astype(np.float64)
        boot = _pooled(*(weights @ s for s in per_patient))
        low, high = np.percentile(boot, [2.5, 97.5])
        return float(low), float(high)

    def breakdown(self, per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Pooled Dice of each foreground class (``dice_<name>``), for the tables' per-class columns."""
        names = self.class_names or tuple(f"class{i}" for i in range(self.num_classes))
        summary = dice_summary(per_example, names)
        return {"dice_mean": summary["dice"], **{f"dice_{n.lower()}": summary[f"dice_{n.lower()}"] for n in names[1:]}}


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


# Has the model learned anything? ----------------------------------------------------------------

DICE_COMPETENCE_MARGIN = 0.05
"""Pooled Dice must exceed the best constant prediction's by this much to count as learned."""


def trivial_reference(metric: Any, targets: np.ndarray) -> tuple[float, str]:
    """The score a model that learned nothing reaches on ``targets``, and what that model does: accuracy of
    always predicting the most frequent class; for Dice, the better of predicting no foreground (0) and
    predicting every pixel as one scored class (``2 T_c / (T_c + N)``), averaged over the scored classes."""
    targets = np.asarray(targets)
    if getattr(metric, "name", "") == "accuracy":
        counts = np.bincount(targets.ravel().astype(np.int64))
        return float(counts.max() / max(1, targets.size)), "always the most frequent class"
    columns = metric.columns() if hasattr(metric, "columns") else []
    scores = []
    for col in columns:
        truth = float(np.sum(targets == col + 1))
        scores.append(max(0.0, 2 * truth / (truth + targets.size)) if truth else 1.0)
    return float(np.mean(scores)) if scores else 0.0, "a constant prediction (no foreground, or all one class)"


def competence_warning(metric: Any, value: float, targets: np.ndarray) -> str | None:
    """A warning when ``value`` (the unablated model's score on ``targets``) is not shown to beat a model that learned
    nothing: for accuracy, its 95 % Wilson lower bound is not above the majority rate (not significantly better);
    for Dice, it is not above the best constant prediction by ``DICE_COMPETENCE_MARGIN``. None when the model has
    learned something."""
    reference, what = trivial_reference(metric, targets)
    name = getattr(metric, "name", "score")
    advice = "nothing it says about which layers matter can be trusted; train longer (a larger preset) first"
    if name == "accuracy":
        n = int(np.asarray(targets).shape[0])
        low, _ = wilson_interval(int(round(value * n)), n)
        if low > reference:
            return None
        return (f"the model's {name} {value:.4f} is not significantly better than {what} ({reference:.4f}): the 95% "
                f"Wilson lower bound of its accuracy on these {n} examples, {low:.4f}, is not above it, so as far as "
                f"they show it has not learned the task and {advice}")
    if value > reference + DICE_COMPETENCE_MARGIN:
        return None
    return (f"the model's {name} {value:.4f} is not better than {what} ({reference:.4f}) by the margin of "
            f"{DICE_COMPETENCE_MARGIN} that counts as learned: it has not learned the task, so {advice}")
