"""Measured speed ratios with an interval, and the only words a report may use for them.

The same computation timed twice on a shared CPU can differ by 10 % (Study B's CNN-3 at depth 2 runs exactly
CNN-1's computation and measured 1.040 and 0.919 of it on two seeds), so a ratio of two medians says nothing by
itself. Every timed function is therefore called once per *round*, in an order shuffled afresh each round; each
round gives one ratio to the reference timed in the same round, and the median ratio over rounds gets a
distribution-free interval from the order statistics (the number of rounds below the median is binomial with
p = 1/2, whatever the noise's distribution, if the rounds are independent). A report says faster or slower only
when that interval excludes 1, "no measurable difference" otherwise, and "not compared" where a record holds no
interval (too few rounds, or written by a version that made none).

Example::

    seconds = interleaved_seconds({"full": full, "slim": slim}, repeats=6)
    interval = ratio_interval(seconds["slim"], seconds["full"])  # time ratio: below 1 is faster
    sentence(interval, "wall time")  # 'faster in wall time (ratio 0.81 [0.78, 0.85], ...)' or 'no measurable ...'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

CONFIDENCE = 0.95
MIN_REPEATS = 6
"""The fewest rounds that give a 95 % interval for a median: [min, max] of 6 covers it with 1 - 2 / 2**6 = 0.969
(of 5, only 0.9375)."""

NO_INTERVAL = "no interval recorded by the version that made this run"
NOT_TIMED = "not timed"
"""What a report prints for a speed that was never measured (a comparison asked for 0 rounds of timing)."""


def images_per_s(row: Mapping, key: str, spec: str = ".1f") -> str:
    """``row[key]`` (a measured images/s or a ratio of two) formatted with ``spec``; :data:`NOT_TIMED` where the
    row holds none."""
    return format(row[key], spec) if key in row else NOT_TIMED


def median_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int, float] | None:
    """``(low, high, coverage)``: the 0-based ranks among ``n`` sorted values whose span covers the median with
    at least ``confidence`` (the narrowest such symmetric pair) and its exact coverage; None when even the
    smallest and largest value fall short.

    Dropping ``k`` values at each end leaves coverage ``1 - 2 P(Binomial(n, 1/2) <= k)``.
    """
    found = None
    for k in range(n // 2 + 1):
        coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        if coverage < confidence:
            break
        found = (k, n - 1 - k, coverage)
    return found


def ratio_interval(seconds: Sequence[float], reference: Sequence[float], *,
                   confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The median over rounds of ``seconds / reference`` (round by round) with its distribution-free interval.

    Returns ``{"ratio", "low", "high", "coverage", "repeats"}``; ``low``, ``high`` and ``coverage`` are None when
    the rounds are too few for ``confidence`` (fewer than :data:`MIN_REPEATS` at 95 %). Pass rates instead of
    seconds, or swap the two, for a ratio of speeds.
    """
    if len(seconds) != len(reference) or not len(seconds):
        raise ValueError(f"one time per round for both: got {len(seconds)} and {len(reference)}")
    ratios = np.asarray(seconds, np.float64) / np.asarray(reference, np.float64)
    ranks, ordered = median_ranks(len(ratios), confidence), np.sort(ratios)
    low, high, coverage = ((float(ordered[ranks[0]]), float(ordered[ranks[1]]), ranks[2]) if ranks
                           else (None, None, None))
    return {"ratio": float(np.median(ratios)), "low": low, "high": high, "coverage": coverage,
            "repeats": len(ratios)}


def interleaved_seconds(fns: Mapping[Any, Callable[[], Any]], *, repeats: int, seed: int = 0) -> dict[Any, list[float]]:
    """Wall seconds of every call, ``repeats`` rounds of each function once, in a seeded order shuffled every round
    (no function always runs right after another, or last when the machine has warmed). Warm up before."""
    names, rng = list(fns), np.random.default_rng(seed)
    out: dict[Any, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            start = time.perf_counter()
            jax.block_until_ready(fns[names[i]]())
            out[names[i]].append(time.perf_counter() - start)
    return out


def verdict(interval: Mapping | None, *, lower_is_faster: bool = True) -> str:
    """``"faster"``, ``"slower"``, ``"no measurable difference"`` (the interval holds 1) or ``"not compared"``
    (no interval). ``lower_is_faster``: the ratio is of times (True) or of speeds, such as images/s (False)."""
    if not interval or interval.get("low") is None:
        return "not compared"
    if interval["low"] <= 1 <= interval["high"]:
        return "no measurable difference"
    return "faster" if (interval["high"] < 1) == lower_is_faster else "slower"


def interval_text(interval: Mapping) -> str:
    """``'0.892 [0.851, 0.934]'``, or the ratio alone where there is no interval."""
    if interval.get("low") is None:
        return f"{interval['ratio']:.3f}"
    return f"{interval['ratio']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def why_not_compared(interval: Mapping | None) -> str:
    if not interval:
        return NO_INTERVAL
    return f"{interval['repeats']} round(s) of timing: a {CONFIDENCE:.0%} interval needs at least {MIN_REPEATS}"


def sentence(interval: Mapping | None, what: str, *, lower_is_faster: bool = True) -> str:
    """What a report may say about a measured ratio: ``'faster in wall time (ratio 0.81 [0.78, 0.85], 96.9 %
    interval of the median over 6 rounds)'``, ``'no measurable difference in wall time (...)'`` or ``'wall time
    not compared (no interval recorded by the version that made this run)'``."""
    word = verdict(interval, lower_is_faster=lower_is_faster)
    if word == "not compared":
        return f"{what} not compared ({why_not_compared(interval)})"
    detail = (f"ratio {interval_text(interval)}, {interval['coverage']:.1%} interval of the median over "
              f"{interval['repeats']} rounds")
    if word == "no measurable difference":
        return f"no measurable difference in {what} ({detail}, which holds 1)"
    return f"{word} in {what} ({detail})"


def speeds_text(row: Mapping) -> str:
    """An elimination comparison row's eval and train speed against the full model's (``row["speed_vs_full"]``,
    ratios of images/s: above 1 is faster) in words: ``'eval 1.182 [1.150, 1.210] faster; train 0.992 [0.950,
    1.030] no measurable difference'``; a row of an earlier version, with no interval, is not compared, and a row
    never timed says so."""
    found = row.get("speed_vs_full")
    if not found and "eval_images_per_s" not in row:
        return NOT_TIMED
    if not found:
        return f"not compared ({NO_INTERVAL})"
    parts = []
    for kind in ("eval", "train"):
        c = found[f"{kind}_images_per_s"]
        word = verdict(c, lower_is_faster=False)
        parts.append(f"{kind} {interval_text(c)} " + (word if word != "not compared" else
                                                       f"not compared ({why_not_compared(c)})"))
    return "; ".join(parts)
