"""Speed ratios with an interval (issue 41): faster or slower only where the interval of the median ratio excludes 1."""

import math

import numpy as np
import pytest

from resnet_jax.ablation import speed


@pytest.mark.parametrize("n, expected", [
    (5, None),  # [min, max] of 5 covers the median with 1 - 2/32 = 0.9375 only
    (6, (0, 5, 1 - 2 / 64)),
    (9, (1, 7, 1 - 2 * (1 + 9) / 512)),
    (12, (2, 9, 1 - 2 * (1 + 12 + 66) / 4096)),  # dropping 3 at each end: 1 - 2 * 299 / 4096 = 0.854, too little
])
def test_median_interval_ranks_are_the_binomial_order_statistics(n, expected):
    found = speed.median_ranks(n)
    assert found == (expected if expected is None else (expected[0], expected[1], pytest.approx(expected[2])))


def test_the_interval_covers_a_skewed_noises_median_as_often_as_it_says():
    """Independent of the formula: lognormal round-to-round noise around a true ratio of 0.9, 20,000 simulated
    timings of 6 rounds; the interval holds 0.9 in 1 - 2/64 of them (standard error 0.0012)."""
    rng = np.random.default_rng(0)
    times = 0.9 * rng.lognormal(0, 0.1, (20_000, 6))
    hits = [(lambda c: c["low"] <= 0.9 <= c["high"])(speed.ratio_interval(t, np.ones(6))) for t in times]
    assert np.mean(hits) == pytest.approx(1 - 2 / 64, abs=0.005)


@pytest.mark.parametrize("seconds, word", [
    ([0.90, 0.95, 1.05, 0.92, 0.97, 1.02], "no measurable difference"),  # median 0.96, but the rounds straddle 1
    ([0.80, 0.85, 0.90, 0.82, 0.88, 0.86], "faster"),
    ([1.10, 1.04, 1.20, 1.08, 1.02, 1.06], "slower"),
    ([0.80, 0.85, 0.90, 0.82, 0.88], "not compared"),  # 5 rounds give no 95 % interval
])
def test_a_time_ratio_is_faster_or_slower_only_when_its_interval_excludes_one(seconds, word):
    interval = speed.ratio_interval(seconds, [1.0] * len(seconds))
    assert interval["ratio"] == pytest.approx(np.median(seconds)) and interval["repeats"] == len(seconds)
    assert speed.verdict(interval) == word
    if word != "not compared":
        assert (interval["low"], interval["high"]) == (min(seconds), max(seconds))
        assert interval["coverage"] == pytest.approx(1 - 2 / 64)
    rates = speed.ratio_interval([1.0] * len(seconds), seconds)  # the same rounds as speeds (images/s): 1/time
    assert speed.verdict(rates, lower_is_faster=False) == word
    assert speed.verdict(rates) == {"faster": "slower", "slower": "faster"}.get(word, word)  # misread as times


def test_the_ratio_is_taken_round_by_round():
    """A machine twice as slow in rounds 4-6 slows the reference too: the round-by-round ratio stays 0.8 exactly,
    where a ratio of the two medians would not."""
    reference = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    interval = speed.ratio_interval([0.8 * r for r in reference], reference)
    assert interval["low"] == interval["high"] == pytest.approx(0.8) and speed.verdict(interval) == "faster"
    with pytest.raises(ValueError, match="one time per round"):
        speed.ratio_interval([1.0, 2.0], [1.0])


def test_rounds_call_every_function_once_in_a_shuffled_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    seconds = speed.interleaved_seconds(fns, repeats=6, seed=0)
    assert {name: len(s) for name, s in seconds.items()} == dict.fromkeys("abcd", 6)
    rounds = [calls[i:i + 4] for i in range(0, 24, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len({tuple(r) for r in rounds}) > 1
    assert [r[0] for r in rounds] != ["a"] * 6  # the reference is not always timed first


@pytest.mark.parametrize("interval, said", [
    (None, "wall time not compared (no interval recorded by the version that made this run)"),
    ({"ratio": 0.9, "low": None, "high": None, "coverage": None, "repeats": 1},
     "wall time not compared (1 round(s) of timing: a 95% interval needs at least 6)"),
    ({"ratio": 0.96, "low": 0.9, "high": 1.05, "coverage": 1 - 2 / 64, "repeats": 6},
     "no measurable difference in wall time (ratio 0.960 [0.900, 1.050], 96.9% interval of the median over 6 "
     "rounds, which holds 1)"),
    ({"ratio": 0.85, "low": 0.8, "high": 0.9, "coverage": 1 - 2 / 64, "repeats": 6},
     "faster in wall time (ratio 0.850 [0.800, 0.900], 96.9% interval of the median over 6 rounds)"),
])
def test_the_sentence_says_what_the_interval_allows(interval, said):
    assert speed.sentence(interval, "wall time") == said
    assert math.isclose(speed.CONFIDENCE, 0.95) and speed.MIN_REPEATS == 6
