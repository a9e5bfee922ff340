"""Paired statistics of a mask against the baseline, on the same examples, and the decisions they support.

Every mask of a sweep is scored on exactly the images the baseline was scored on, so its drop
``baseline - masked`` is tested *paired*: for accuracy by the exact McNemar test (any change) and Tango's
score interval of a difference of paired proportions; for Dice by a paired bootstrap over patients (slices
of one patient stay together), with pooled Dice recomputed on every resample.

The decision rule (one for every table): the masks of one protocol form a family of ``m``; each mask gets a
two-sided interval of its drop at level ``1 - alpha / m`` (Bonferroni), so all ``m`` intervals hold at once
with probability at least ``1 - alpha``. ``drop_low`` and ``drop_high`` are those simultaneous bounds, and
the decision reads off them, row by row, at the margin ``delta``:

* ``non-trivial`` exactly when ``drop_low > delta`` (removing it costs more than the margin);
* ``improves`` exactly when ``drop_high < -delta`` (removing it helps by more than the margin);
* ``trivial`` exactly when ``-delta <= drop_high < delta`` (it costs less than the margin: non-inferiority,
  one-sided; a mask that may also help is still trivial);
* ``undecided`` otherwise.

For Dice the bootstrap's deviations are stretched to Student's t width for the number of patients (see
``small_sample_stretch``). A decision is wrong only if an interval misses its true drop, so the chance of any
wrong decision in the family, in either direction, is at most ``alpha`` where every interval holds its level; the
Dice bootstrap over a few patients only approaches it, and misses masks that break patients the split lacks
(``benchmarks/decision_rule.py`` measures both). The bounds do not depend on the margin, so decisions at another
margin follow from a table without recomputing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from resnet_jax.data import segmentation as seg_data

DEFAULT_MARGIN = 0.01
DEFAULT_ALPHA = 0.05
DECISIONS = ("non-trivial", "trivial", "improves", "undecided")
"""The decision rule's four outcomes for a mask, read off its simultaneous bounds at the margin."""
SENSITIVITY_MARGINS = (0.005, 0.01, 0.02)
TAIL_DRAWS = 20
"""Sizes a Dice family's bootstrap: the smallest attainable adjusted p-value is ``alpha / TAIL_DRAWS``, so each
simultaneous bound is the ``TAIL_DRAWS - 1``-th most extreme resample and ``TAIL_DRAWS - 2`` (18) lie beyond it
(more in families small enough for the 2,000-resample floor; see :func:`beyond_bound`)."""
MAX_RESAMPLES = 2_000_000
"""Above this a Dice family is refused before any compute (memory: resamples x patients x 8 bytes)."""
_CHUNK = 1 << 16


def _stats():
    """``scipy.stats``, imported when a test first needs it: half a second that every command paid at start, most
    of them (train, evaluate, a job's joining) for nothing."""
    from scipy import stats

    return stats


@dataclasses.dataclass(frozen=True)
class Decision:
    """The rule's two numbers: the margin ``delta`` that separates trivial from non-trivial drops, and the
    family-wise error ``alpha`` of a protocol's decisions.

    Example:
        >>> from resnet_jax.ablation import Decision
        >>> rule = Decision(margin=0.02)
        >>> rule.alpha, rule.tail(10)       # each one-sided bound of a family of 10 masks spends alpha / 20
        (0.05, 0.0025)
    """

    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be in [0, 1), got {self.margin}")

    def tail(self, family_size: int) -> float:
        """The error each one-sided bound may spend: ``alpha / (2 m)``."""
        return self.alpha / (2 * max(1, family_size))


def decide(drop_low: float, drop_high: float, margin: float) -> str:
    """The decision of one row from its simultaneous bounds (see the module docstring)."""
    if drop_low > margin:
        return "non-trivial"
    if drop_high < -margin:
        return "improves"
    if drop_high < margin:
        return "trivial"
    return "undecided"


def decision_counts(rows: Sequence[Mapping], margin: float) -> dict[str, int]:
    """How many tested rows take each decision at ``margin``, from their stored bounds alone."""
    tested = [r for r in rows if "drop_low" in r]
    return {d: sum(decide(r["drop_low"], r["drop_high"], margin) == d for r in tested) for d in DECISIONS}


# Accuracy: paired binary outcomes -----------------------------------------------------------------

def discordant(baseline_correct: np.ndarray, masked_correct: np.ndarray) -> tuple[int, int, int]:
    """``(b, c, n)``: images the baseline gets right and the mask wrong, the reverse, and all images."""
    base, masked = np.asarray(baseline_correct, bool), np.asarray(masked_correct, bool)
    if base.shape != masked.shape:
        raise ValueError(f"paired outcomes differ in shape: baseline {base.shape}, mask {masked.shape}")
    return int(np.sum(base & ~masked)), int(np.sum(~base & masked)), int(base.size)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` of the ``b + c`` discordant pairs under Binomial(b + c, 1/2)."""
    return 1.0 if b + c == 0 else float(_stats().binomtest(b, b + c, 0.5).pvalue)


def _restricted_p21(b, c, n, delta):
    """Maximum-likelihood P(baseline wrong, mask right) given a drop of ``delta`` (Tango 1998, closed form)."""
    a2 = 2.0 * n
    b2 = -b - c + (2.0 * n - b + c) * delta
    c2 = -c * delta * (1.0 - delta)
    return (np.sqrt(np.maximum(b2 * b2 - 4.0 * a2 * c2, 0.0)) - b2) / (2.0 * a2)


def tango_z(b, c, n, delta):
    """Tango's score statistic for ``H0: drop = delta`` (drop = (b - c) / n); large when the drop exceeds delta,
    decreasing in delta. At ``delta = 0`` it is McNemar's ``(b - c) / sqrt(b + c)``. Takes arrays too."""
    b, c, n, delta = (np.asarray(x, np.float64) for x in (b, c, n, delta))
    variance = n * (2.0 * _restricted_p21(b, c, n, delta) + delta * (1.0 - delta))
    excess = b - c - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(variance > 0, excess / np.sqrt(np.where(variance > 0, variance, 1.0)),
                     np.where(excess == 0, 0.0, np.copysign(np.inf, excess)))
    return z if z.ndim else float(z)


def tango_bounds(b, c, n, *, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """The drop's score bounds, each missing with probability ``tail``: ``low`` is where ``tango_z`` falls to
    ``z_(1-tail)``, ``high`` where it falls to ``-z_(1-tail)`` (bisection, vectorised over arrays)."""
    b, c, n = (np.asarray(x, np.float64) for x in (b, c, n))
    z = _stats().norm.isf(tail)
    observed = (b - c) / n

    def solve(lo, hi, target):  # z(d) is decreasing: keep z(lo) > target >= z(hi)
        lo, hi = np.broadcast_to(lo, observed.shape).copy(), np.broadcast_to(hi, observed.shape).copy()
        for _ in range(64):
            mid = (lo + hi) / 2
            above = tango_z(b, c, n, mid) > target
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return hi

    eps = 1e-12
    low = np.where(tango_z(b, c, n, -1 + eps) <= z, -1.0, solve(-1 + eps, observed, z))
    high = np.where(tango_z(b, c, n, 1 - eps) >= -z, 1.0, solve(observed, 1 - eps, -z))
    return low, high


def tango_interval(b: int, c: int, n: int, *, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` score interval of the drop: the deltas the score test does not reject."""
    low, high = tango_bounds(b, c, n, tail=alpha / 2)
    return float(low), float(high)


def mcnemar_exact_many(b, c) -> np.ndarray:
    """:func:`mcnemar_exact` over arrays (the symmetric binomial's two-sided p-value is twice the smaller tail)."""
    b, c, binom = np.asarray(b), np.asarray(c), _stats().binom
    tails = np.minimum(binom.cdf(b, b + c, 0.5), binom.sf(b - 1, b + c, 0.5))
    return np.where(b + c == 0, 1.0, np.minimum(1.0, 2 * tails))


def accuracy_tests(b, c, n, *, rule: Decision = Decision(), family_size: int = 1) -> dict[str, np.ndarray]:
    """Masks given by their discordant counts (arrays ``b`` lost, ``c`` gained, of ``n`` images), each one of a
    family of ``family_size``: drop, its simultaneous bounds, the unadjusted ``1 - alpha`` interval, McNemar's
    p-value of any change and the one-sided score tests at ``+margin`` and ``-margin``."""
    b, c = np.asarray(b, np.int64), np.asarray(c, np.int64)
    low, high = tango_bounds(b, c, n, tail=rule.tail(family_size))
    low95, high95 = tango_bounds(b, c, n, tail=rule.alpha / 2)
    z_up, z_down = np.asarray(tango_z(b, c, n, rule.margin)), np.asarray(tango_z(b, c, n, -rule.margin))
    norm = _stats().norm
    return {"drop": (b - c) / n, "drop_low": low, "drop_high": high, "drop_low_unadjusted": low95,
            "drop_high_unadjusted": high95, "p_value": mcnemar_exact_many(b, c),
            "p_nontrivial": norm.sf(z_up), "p_trivial": norm.cdf(z_up),
            "p_improves": norm.cdf(z_down), "discordant_lost": b, "discordant_gained": c}


def _rows(columns: Mapping[str, np.ndarray]) -> list[dict]:
    """Dict of equal-length arrays -> list of dicts of plain Python numbers."""
    n = len(next(iter(columns.values())))
    return [{k: np.asarray(v)[i].item() for k, v in columns.items()} for i in range(n)]


def accuracy_test(baseline_correct, masked_correct, *, margin: float = DEFAULT_MARGIN,
                  alpha: float = DEFAULT_ALPHA, family_size: int = 1) -> dict[str, float]:
    """:func:`accuracy_tests` for one mask, from per-image outcomes."""
    b, c, n = discordant(baseline_correct, masked_correct)
    return _rows(accuracy_tests([b], [c], n, rule=Decision(margin, alpha), family_size=family_size))[0]


# Dice: paired bootstrap by patient ------------------------------------------------------------------

patient_of = seg_data.patient_of


def bootstrap_resamples(family_size: int, alpha: float = DEFAULT_ALPHA) -> int:
    """Resamples for a family of ``family_size`` at ``alpha`` (at least 2,000): ``N + 1 = TAIL_DRAWS / tail``,
    so the +1 rule's smallest p-value, times ``2 m``, is ``alpha / TAIL_DRAWS``."""
    # 20 / tail is an integer on paper (alpha 0.05: 800 m); rounded up past it, one more resample lies outside
    return max(2000, math.ceil(TAIL_DRAWS / Decision(alpha=alpha).tail(family_size) - 1e-6) - 1)


def beyond_bound(resamples: int, tail: float) -> int:
    """How many of ``resamples`` lie strictly beyond a bound at ``tail``: the most tail hits ``k`` whose +1-rule
    p-value ``(1 + k) / (N + 1)`` is still below ``tail``. With :func:`bootstrap_resamples` that is
    ``TAIL_DRAWS - 2`` = 18 (``(1 + 18) / (N + 1) = 19/20 tail``), whatever the family; -1 means no bound."""
    # a product that is an integer on paper (alpha 0.05: tail (N + 1) = 20) must not round up to the next one
    return math.ceil(tail * (resamples + 1) - 1e-9) - 2


def check_bootstrap(family_size: int, alpha: float = DEFAULT_ALPHA, *, n_patients: int = 1) -> int:
    """The resample count, or a ValueError that says what to change when it would exceed ``MAX_RESAMPLES``."""
    needed = bootstrap_resamples(family_size, alpha)
    if needed > MAX_RESAMPLES:
        most = int(2 * MAX_RESAMPLES * alpha / (2 * TAIL_DRAWS))
        raise ValueError(f"a Dice family of {family_size} masks at alpha {alpha} needs {needed:,} bootstrap "
                         f"resamples ({needed * n_patients * 8 / 2**30:.1f} GiB of weights); at most "
                         f"{MAX_RESAMPLES:,} are drawn: raise --alpha to {TAIL_DRAWS * family_size / MAX_RESAMPLES:.3g} "
                         f"or more, or ablate at most {most} masks at once")
    return needed


def patient_resamples(groups: Sequence[str], *, n_resamples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, index)``: ``counts[r, p]`` is how often patient ``p`` enters resample ``r`` (whole patients drawn
    with replacement), ``index[i]`` the patient of example ``i``. The same seed gives the same resamples."""
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    rng, p = np.random.default_rng(seed), len(names)
    counts = np.empty((n_resamples, p), np.float64)
    for start in range(0, n_resamples, _CHUNK):
        rows = min(_CHUNK, n_resamples - start)
        draws = rng.integers(0, p, (rows, p)) + p * np.arange(rows)[:, None]
        counts[start:start + rows] = np.bincount(draws.ravel(), minlength=rows * p).reshape(rows, p)
    return counts, index


def _chunks(weights: np.ndarray) -> list[np.ndarray]:
    return [weights[i:i + _CHUNK] for i in range(0, len(weights), _CHUNK)]


def small_sample_stretch(clusters: int | None, tail: float) -> float:
    """How far to stretch resampled deviations from the observed drop so that a bound at ``tail`` from ``clusters``
    resampled patients is as wide as Student's t interval would be: ``sqrt(P / (P - 1)) * t_(P-1) / z`` at
    ``1 - tail``. The plain percentile bootstrap of a mean over P patients is the normal interval with the plug-in
    variance, too narrow for 20 patients far in the tail (at ``alpha / 1260`` it would miss about 10x too often)."""
    if not clusters or clusters < 3:
        return 1.0
    stats = _stats()
    return math.sqrt(clusters / (clusters - 1)) * stats.t.isf(tail, clusters - 1) / stats.norm.isf(tail)


def bootstrap_summary(observed: float, drops: np.ndarray, *, rule: Decision, family_size: int,
                      clusters: int | None = None) -> dict[str, float]:
    """p-values are one-sided tail shares of the resampled ``drops`` with the +1 rule (after the small-sample
    stretch for ``clusters`` patients, at the family's tail); the simultaneous bounds are the order statistics at
    which those p-values cross ``alpha / (2 m)``, so ``drop_low > margin`` exactly when ``p_nontrivial < alpha /
    (2 m)`` (and likewise above)."""
    count, margin, alpha = len(drops), rule.margin, rule.alpha
    tail = rule.tail(family_size)
    raw = np.asarray(drops, np.float64)
    drops = observed + small_sample_stretch(clusters, tail) * (raw - observed)
    share = lambda hits: (1 + int(np.sum(hits))) / (count + 1)  # noqa: E731
    r = beyond_bound(count, tail)  # the most tail hits a rejection allows
    r95 = max(0, beyond_bound(count, alpha / 2))  # the same rule for the unadjusted interval
    ordered = np.partition(drops, sorted({max(r, 0), count - 1 - max(r, 0)}))
    low, high = (-math.inf, math.inf) if r < 0 else (float(ordered[r]), float(ordered[count - 1 - r]))
    unadjusted = observed + small_sample_stretch(clusters, alpha / 2) * (np.partition(raw, (r95, count - 1 - r95))
                                                                           [[r95, count - 1 - r95]] - observed)
    return {"drop": observed, "drop_low": low, "drop_high": high,
            "drop_low_unadjusted": float(unadjusted[0]), "drop_high_unadjusted": float(unadjusted[1]),
            "p_value": min(1.0, 2 * min(share(drops <= 0), share(drops >= 0))),
            "p_nontrivial": share(drops <= margin), "p_trivial": share(drops >= margin),
            "p_improves": share(drops >= -margin), "resamples": count}


def patient_sums(counts: Mapping[str, np.ndarray], classes: Sequence[int], index: np.ndarray | None = None) -> np.ndarray:
    """``(groups, 3 * len(classes))``: intersection, prediction and truth pixel counts of ``classes``, summed per
    patient (``index``: example -> patient; None: one group per example)."""
    cols = list(classes)
    sums = np.concatenate([np.asarray(counts[k], np.float64)[:, cols] for k in ("intersection", "pred_sum",
                                                                                 "true_sum")], 1)
    if index is None:
        return sums
    return np.stack([np.bincount(index, weights=sums[:, j], minlength=index.max() + 1) for j in range(sums.shape[1])], 1)


def pooled_dice(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pooled Dice (mean over classes) per row of resample weights, from :func:`patient_sums`."""
    k = sums.shape[1] // 3
    both = weights @ sums
    inter, total = both[:, :k], both[:, k:2 * k] + both[:, 2 * k:]
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean(-1)


def dice_tests(baseline: Mapping[str, np.ndarray], masked: Sequence[Mapping[str, np.ndarray]], classes: Sequence[int],
               groups: Sequence[str], *, rule: Decision = Decision(), seed: int = 0,
               drawn: dict | None = None, family_size: int | None = None) -> list[dict]:
    """A family of masks by the patient bootstrap: the resample count from :func:`check_bootstrap`, the baseline's
    resampled Dice computed once and every mask tested on the same resamples (``drawn`` caches them)."""
    m = family_size or len(masked)
    n = check_bootstrap(m, rule.alpha, n_patients=len(set(groups)))
    drawn = {} if drawn is None else drawn
    if n not in drawn:
        drawn.clear()  # one resample count at a time: the weights can be large
        drawn[n] = patient_resamples(groups, n_resamples=n, seed=seed)
    weights, index = drawn[n]
    base = patient_sums(baseline, classes, index)
    ones = np.ones((1, weights.shape[1]))
    base_dice = np.concatenate([pooled_dice(base, w) for w in _chunks(weights)])
    out = []
    for counts in masked:
        mask = patient_sums(counts, classes, index)
        drops = base_dice - np.concatenate([pooled_dice(mask, w) for w in _chunks(weights)])
        observed = float(pooled_dice(base, ones)[0] - pooled_dice(mask, ones)[0])
        out.append(bootstrap_summary(observed, drops, rule=rule, family_size=m, clusters=weights.shape[1]))
    return out


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


def decisions(tests: Sequence[dict], *, rule: Decision = Decision()) -> list[dict]:
    """The tests of one protocol's masks (each made with ``family_size=len(tests)``) with a decision each, read
    off the simultaneous bounds; the one-sided p-values Bonferroni-adjusted (``_adj``: times ``2 m``, so
    ``_adj < alpha`` agrees with the bounds) and the any-change p-value Holm-adjusted."""
    if not tests:
        return []
    m = len(tests)
    any_change = holm([t["p_value"] for t in tests])
    out = []
    for t, p_change in zip(tests, any_change):
        row = {**t, "p_value_holm": float(p_change)}
        row.update({f"{k}_adj": min(1.0, 2 * m * t[k]) for k in ("p_nontrivial", "p_trivial", "p_improves")})
        row["decision"] = decide(t["drop_low"], t["drop_high"], rule.margin)
        out.append(row)
    return out


# One protocol's table --------------------------------------------------------------------------

FamilyTest = Callable[..., list]
"""``test(baseline_per_example, [masked_per_example, ...], *, rule, family_size=None) -> [dict, ...]``: masks of
one family (``family_size``, default: the masks given)."""


def paired_tester(metric, *, groups: Sequence[str] | None = None, seed: int = 0) -> FamilyTest:
    """The paired test of the metric a sweep scored with, for a whole family of masks at once: the McNemar /
    score tests for accuracy (per-image ``correct``), the patient bootstrap for pooled Dice (per-image counts;
    the resamples are drawn once per resample count, so every mask of a family sees the same ones).

    Example:
        >>> import numpy as np
        >>> from resnet_jax.ablation import Decision, paired_tester
        >>> from resnet_jax.metrics import Accuracy
        >>> test = paired_tester(Accuracy())
        >>> base = {"correct": np.arange(1000) < 900}      # the baseline gets 900 of 1,000 images right
        >>> masked = {"correct": np.arange(1000) < 600}    # the mask loses 300 of them
        >>> [row] = test(base, [masked], rule=Decision())
        >>> row["drop"], row["discordant_lost"], round(row["drop_low"], 3), round(row["drop_high"], 3)
        (0.3, 300, 0.272, 0.329)
    """
    if getattr(metric, "name", "") == "accuracy":
        def accuracy(base, masked, *, rule: Decision, family_size: int | None = None):
            counts = np.array([discordant(base["correct"], m["correct"]) for m in masked]).reshape(-1, 3)
            n = counts[0, 2] if len(counts) else 1
            return _rows(accuracy_tests(counts[:, 0], counts[:, 1], n, rule=rule,
                                        family_size=family_size or len(masked)))
        return accuracy
    if hasattr(metric, "columns") and getattr(metric, "aggregate_by", "pooled") == "pooled":
        if groups is None:
            raise ValueError("a Dice sweep's paired bootstrap needs the patient of every image (groups)")
        drawn: dict = {}

        def dice(base, masked, *, rule: Decision, family_size: int | None = None):
            return dice_tests(base, masked, metric.columns(), groups, rule=rule, seed=seed, drawn=drawn,
                              family_size=family_size)
        return dice
    raise ValueError(f"no paired test for metric {metric!r}; valid: Accuracy, or Dice aggregated 'pooled'")


def method_text(metric) -> str:
    """How a metric's masks are tested, for table metadata and reports."""
    if getattr(metric, "name", "") == "accuracy":
        return "exact McNemar (any change); Tango's score interval of the paired drop"
    return (f"paired bootstrap over patients (resamples chosen per family: {TAIL_DRAWS - 2} beyond each bound, "
            f"more where the floor of 2,000 applies), seed 0")


def annotate(rows: Sequence[dict], per_example: Sequence[Mapping | None], baseline: Mapping, test: FamilyTest, *,
             rule: Decision = Decision()) -> list[dict]:
    """Table rows with their paired tests and a decision each; the family is the rows that are masks
    (``per_example`` None: the baseline row, left without a test).

    Example:
        >>> import numpy as np
        >>> from resnet_jax.ablation import annotate, paired_tester
        >>> from resnet_jax.metrics import Accuracy
        >>> base = {"correct": np.arange(1000) < 900}
        >>> rows = [{"mask": "baseline"}, {"mask": "conv1"}, {"mask": "fc"}]
        >>> per_example = [None, {"correct": np.arange(1000) < 600}, base]  # conv1 costs 30 points, fc none
        >>> [(r["mask"], r.get("decision")) for r in annotate(rows, per_example, base, paired_tester(Accuracy()))]
        [('baseline', None), ('conv1', 'non-trivial'), ('fc', 'trivial')]
    """
    masks = [i for i, pe in enumerate(per_example) if pe is not None]
    tested = decisions(test(baseline, [per_example[i] for i in masks], rule=rule) if masks else [], rule=rule)
    out = [dict(r) for r in rows]
    for i, t in zip(masks, tested):
        out[i].update(t, margin=rule.margin, alpha=rule.alpha, family_size=len(masks))
    return out


def compare_models(test: FamilyTest, pairs: Sequence[tuple[Mapping, Mapping]], *,
                   alpha: float = DEFAULT_ALPHA) -> list[dict]:
    """Paired comparisons of models on the same examples, one per ``(reference, candidate)`` of ``pairs``:
    ``difference = candidate - reference`` with its interval at ``1 - alpha / k`` for ``k`` pairs (Bonferroni:
    all hold at once with probability ``1 - alpha``), ``better`` / ``worse`` / ``no significant difference``
    read off the interval, and the two-sided p-value of the test that interval inverts (McNemar's score test for
    accuracy, the patient bootstrap for Dice), so that :func:`bonferroni_p` ``< alpha`` exactly when the verdict
    is not "no significant difference".

    Example:
        >>> import numpy as np
        >>> from resnet_jax.ablation import compare_models, paired_tester
        >>> from resnet_jax.metrics import Accuracy
        >>> full, slim = {"correct": np.arange(1000) < 900}, {"correct": np.arange(1000) < 880}
        >>> [c] = compare_models(paired_tester(Accuracy()), [(full, slim)])
        >>> round(c["difference"], 3), c["verdict"], c["p_value"] < 0.05
        (-0.02, 'worse', True)
    """
    out = []
    for reference, candidate in pairs:
        t = test(reference, [candidate], rule=Decision(0.0, alpha), family_size=len(pairs))[0]
        low, high = -t["drop_high"], -t["drop_low"]
        verdict = "better" if low > 0 else "worse" if high < 0 else "no significant difference"
        p_value = min(1.0, 2 * min(t["p_nontrivial"], t["p_improves"]))
        out.append({"difference": -t["drop"], "low": low, "high": high, "p_value": p_value,
                    "p_test": P_TEST, "comparisons": len(pairs), "alpha": alpha, "verdict": verdict})
    return out


P_TEST = "the test the interval inverts"
"""Marks a :func:`compare_models` row whose ``p_value`` agrees with its interval; rows of earlier versions lack it
(their accuracy p came from McNemar's exact test, which the interval does not invert)."""


def bonferroni_p(c: Mapping) -> float:
    """One :func:`compare_models` row's p-value adjusted for its ``comparisons`` (``m``): ``min(1, m p)``."""
    return min(1.0, c["comparisons"] * c["p_value"])


def comparison_text(c: Mapping) -> str:
    """``+0.0123 [+0.0050, +0.0196] (paired, simultaneous over 3 comparisons), Bonferroni-adjusted p over 3
    comparisons = 0.003 (unadjusted p = 0.001): better`` for one :func:`compare_models` row: the p beside the
    verdict is adjusted as the interval is."""
    m = f"{c['comparisons']} comparison" + "s" * (c["comparisons"] != 1)
    p = (f"Bonferroni-adjusted p over {m} = {bonferroni_p(c):.2g} (unadjusted p = {c['p_value']:.2g})"
         if c.get("p_test") == P_TEST else
         f"unadjusted p = {c['p_value']:.2g} (recorded by an earlier version from a test the interval does not "
         f"invert; the verdict reads the simultaneous interval)")
    return (f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] (paired, simultaneous over {m}), {p}: "
            f"{c['verdict']}")
