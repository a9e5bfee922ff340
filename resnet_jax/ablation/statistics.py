"""Paired statistics of a mask against the baseline, on the same examples, and the decisions they support.

Every mask of a sweep is scored on exactly the images the baseline was scored on, so its drop
``baseline - masked`` is tested *paired*:

* accuracy: the exact McNemar test of "any change" (``p_value``), and for the margin ``delta`` Tango's
  score test of a difference of paired proportions, whose inversion gives the drop's interval;
* Dice: a paired bootstrap over the images, resampled by patient (slices of one patient stay together),
  reproducible by seed; pooled Dice is recomputed on every resample.

Two one-sided tests per mask, each Holm-corrected across the masks of one protocol, give the decision:
*non-trivial* when ``H0: drop <= delta`` is rejected (the drop is significantly greater than the margin),
*trivial* when ``H0: drop >= delta`` is rejected (equivalence: the drop's upper confidence bound is below
the margin), *undecided* otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

DEFAULT_MARGIN = 0.01
DEFAULT_ALPHA = 0.05
DEFAULT_BOOTSTRAP = 2000
DECISIONS = ("non-trivial", "trivial", "undecided")


# Accuracy: paired binary outcomes -----------------------------------------------------------------

def discordant(baseline_correct: np.ndarray, masked_correct: np.ndarray) -> tuple[int, int, int]:
    """``(b, c, n)``: images the baseline gets right and the mask wrong, the reverse, and all images."""
    base, masked = np.asarray(baseline_correct, bool), np.asarray(masked_correct, bool)
    if base.shape != masked.shape:
        raise ValueError(f"paired outcomes differ in shape: baseline {base.shape}, mask {masked.shape}")
    return int(np.sum(base & ~masked)), int(np.sum(~base & masked)), int(base.size)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` of the ``b + c`` discordant pairs under Binomial(b + c, 1/2)."""
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


def _restricted_p21(b: int, c: int, n: int, delta: float) -> float:
    """Maximum-likelihood P(baseline wrong, mask right) given a drop of ``delta`` (Tango 1998, closed form)."""
    a2 = 2.0 * n
    b2 = -b - c + (2.0 * n - b + c) * delta
    c2 = -c * delta * (1.0 - delta)
    return (math.sqrt(max(b2 * b2 - 4.0 * a2 * c2, 0.0)) - b2) / (2.0 * a2)


def tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for ``H0: drop = delta`` (drop = (b - c) / n); large when the drop exceeds delta.
    At ``delta = 0`` it is McNemar's ``(b - c) / sqrt(b + c)``."""
    variance = n * (2.0 * _restricted_p21(b, c, n, delta) + delta * (1.0 - delta))
    if variance <= 0:
        return 0.0 if b - c == n * delta else math.copysign(math.inf, b - c - n * delta)
    return (b - c - n * delta) / math.sqrt(variance)


def tango_interval(b: int, c: int, n: int, *, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` score interval of the drop: the deltas the score test does not reject."""
    z = stats.norm.ppf(1 - alpha / 2)
    f = lambda d, target: tango_z(b, c, n, d) - target  # noqa: E731 - decreasing in d
    eps = 1e-12
    low = -1.0 + eps if f(-1.0 + eps, z) <= 0 else optimize.brentq(f, -1.0 + eps, (b - c) / n, args=(z,))
    high = 1.0 - eps if f(1.0 - eps, -z) >= 0 else optimize.brentq(f, (b - c) / n, 1.0 - eps, args=(-z,))
    return float(low), float(high)


def accuracy_test(baseline_correct, masked_correct, *, margin: float = DEFAULT_MARGIN,
                  alpha: float = DEFAULT_ALPHA) -> dict[str, float]:
    """Drop, its score interval, the McNemar p-value and the two one-sided margin p-values of one mask."""
    b, c, n = discordant(baseline_correct, masked_correct)
    z = tango_z(b, c, n, margin)
    low, high = tango_interval(b, c, n, alpha=alpha)
    return {"drop": (b - c) / n, "drop_low": low, "drop_high": high, "p_value": mcnemar_exact(b, c),
            "p_nontrivial": float(stats.norm.sf(z)), "p_trivial": float(stats.norm.cdf(z)),
            "discordant_lost": b, "discordant_gained": c}


# Dice: paired bootstrap by patient ------------------------------------------------------------------

def patient_of(slice_id: str) -> str:
    """The patient a slice belongs to: the id's first ``_``- or ``/``-separated part (``patient012_...``)."""
    return slice_id.replace("/", "_").split("_", 1)[0]


def bootstrap_weights(groups: Sequence[str], *, n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``(n_resamples, n_examples)`` counts: how often each example enters each resample when whole groups
    (patients) are drawn with replacement. The same seed gives the same resamples."""
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(names), (n_resamples, len(names)))
    per_group = np.stack([np.bincount(d, minlength=len(names)) for d in draws])
    return per_group[:, index].astype(np.float64)


def bootstrap_test(statistic: Callable[[np.ndarray], np.ndarray], weights: np.ndarray, *,
                   margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA) -> dict[str, float]:
    """One mask's paired bootstrap: ``statistic(weights) -> (n_resamples,)`` drops, computed from the baseline's
    and the mask's per-example counts under the same resample weights (``weights[0]`` all ones: the observed
    drop is ``statistic(ones)``). p-values are the bootstrap's one-sided tail shares, with the +1 rule."""
    observed = float(statistic(np.ones((1, weights.shape[1])))[0])
    drops = statistic(weights)
    share = lambda hits: (1 + int(np.sum(hits))) / (len(drops) + 1)  # noqa: E731
    return {"drop": observed, "drop_low": float(np.quantile(drops, alpha / 2)),
            "drop_high": float(np.quantile(drops, 1 - alpha / 2)),
            "p_value": min(1.0, 2 * min(share(drops <= 0), share(drops >= 0))),
            "p_nontrivial": share(drops <= margin), "p_trivial": share(drops >= margin)}


def pooled_dice_drop(baseline: Mapping[str, np.ndarray], masked: Mapping[str, np.ndarray],
                     classes: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """``statistic(weights)``: pooled Dice (mean over ``classes``, 0-based columns of the per-image counts) of
    the baseline minus that of the mask, per row of resample weights."""
    cols = list(classes)

    def pooled(counts, w):
        inter = w @ np.asarray(counts["intersection"], np.float64)[:, cols]
        total = w @ (np.asarray(counts["pred_sum"], np.float64)[:, cols] + np.asarray(counts["true_sum"],
                                                                                         np.float64)[:, cols])
        return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean(-1)

    return lambda w: pooled(baseline, w) - pooled(masked, w)


# Multiplicity and decisions ----------------------------------------------------------------------

def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control across one protocol's masks)."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def decide(p_nontrivial_holm: float, p_trivial_holm: float, *, alpha: float = DEFAULT_ALPHA) -> str:
    if p_nontrivial_holm < alpha:
        return "non-trivial"
    if p_trivial_holm < alpha:
        return "trivial"
    return "undecided"


def decisions(tests: Sequence[dict], *, alpha: float = DEFAULT_ALPHA) -> list[dict]:
    """The tests of one protocol's masks with Holm-adjusted p-values and a decision each."""
    if not tests:
        return []
    adjusted = {k: holm([t[k] for t in tests]) for k in ("p_value", "p_nontrivial", "p_trivial")}
    out = []
    for i, t in enumerate(tests):
        row = {**t, **{f"{k}_holm": float(v[i]) for k, v in adjusted.items()}}
        row["decision"] = decide(row["p_nontrivial_holm"], row["p_trivial_holm"], alpha=alpha)
        out.append(row)
    return out


# One protocol's table --------------------------------------------------------------------------

def paired_tester(metric, *, groups: Sequence[str] | None = None, margin: float = DEFAULT_MARGIN,
                  alpha: float = DEFAULT_ALPHA, n_resamples: int = DEFAULT_BOOTSTRAP,
                  seed: int = 0) -> Callable[[Mapping, Mapping], dict[str, float]]:
    """``test(baseline_per_example, masked_per_example)`` for the metric a sweep scored with: the McNemar /
    score tests for accuracy (per-image ``correct``), the patient bootstrap for pooled Dice (per-image counts;
    the resamples are drawn once, so every mask of a sweep sees the same ones)."""
    if getattr(metric, "name", "") == "accuracy":
        return lambda base, masked: accuracy_test(base["correct"], masked["correct"], margin=margin, alpha=alpha)
    if hasattr(metric, "columns") and getattr(metric, "aggregate_by", "pooled") == "pooled":
        if groups is None:
            raise ValueError("a Dice sweep's paired bootstrap needs the patient of every image (groups)")
        weights = bootstrap_weights(groups, n_resamples=n_resamples, seed=seed)
        return lambda base, masked: bootstrap_test(pooled_dice_drop(base, masked, metric.columns()), weights,
                                                   margin=margin, alpha=alpha)
    raise ValueError(f"no paired test for metric {metric!r}; valid: Accuracy, or Dice aggregated 'pooled'")


def annotate(rows: Sequence[dict], per_example: Sequence[Mapping | None], baseline: Mapping,
             test: Callable[[Mapping, Mapping], dict], *, margin: float = DEFAULT_MARGIN,
             alpha: float = DEFAULT_ALPHA) -> list[dict]:
    """Table rows with their paired tests, Holm-adjusted across the rows that are masks (``per_example`` None:
    the baseline row, left without a test), a decision each, and the margin and level used."""
    masks = [i for i, pe in enumerate(per_example) if pe is not None]
    tested = decisions([test(baseline, per_example[i]) for i in masks], alpha=alpha)
    out = [dict(r) for r in rows]
    for i, t in zip(masks, tested):
        out[i].update(t, margin=margin, alpha=alpha)
    return out
