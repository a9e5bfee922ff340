"""Paired statistics against hand-computed values, numerical optimisation and simulation."""

import numpy as np
import pytest
from scipy import optimize

from resnet_jax import metrics
from resnet_jax.ablation import statistics as st


def _pairs(b, c, n):
    """Outcomes with ``b`` images lost by the mask, ``c`` gained, the rest right under both."""
    base = np.ones(n, bool)
    masked = np.ones(n, bool)
    masked[:b] = False
    base[b:b + c] = False
    return base, masked


def test_mcnemar_exact_matches_a_hand_computed_table():
    # 2x2 table: 10 lost, 2 gained: p = 2 * P(Bin(12, 1/2) <= 2) = 2 * (1 + 12 + 66) / 4096
    base, masked = _pairs(10, 2, 100)
    assert st.discordant(base, masked) == (10, 2, 100)
    assert st.mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert st.mcnemar_exact(0, 0) == 1.0
    assert st.accuracy_test(base, masked)["drop"] == pytest.approx(0.08)


@pytest.mark.parametrize("b, c, n, delta", [(10, 2, 100, 0.01), (3, 7, 500, -0.02), (0, 0, 64, 0.01), (40, 1, 80, 0.3)])
def test_tango_restricted_estimate_maximises_the_restricted_likelihood(b, c, n, delta):
    def neg_loglik(p21):
        p12 = p21 + delta
        return -(b * np.log(max(p12, 1e-300)) + c * np.log(max(p21, 1e-300)) + (n - b - c) * np.log(1 - p12 - p21))

    lo, hi = max(0.0, -delta), (1 - delta) / 2
    numeric = optimize.minimize_scalar(neg_loglik, bounds=(lo + 1e-12, hi - 1e-12), method="bounded",
                                       options={"xatol": 1e-12}).x
    assert st._restricted_p21(b, c, n, delta) == pytest.approx(numeric, abs=1e-6)


def test_tango_at_zero_margin_is_mcnemars_z():
    assert st.tango_z(10, 2, 100, 0.0) == pytest.approx(8 / np.sqrt(12))


def test_tango_interval_covers_the_true_drop_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p_lost, p_gained, n, hits, trials = 0.06, 0.02, 300, 0, 600
    for _ in range(trials):
        b, c, _ = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained])
        low, high = st.tango_interval(int(b), int(c), n)
        hits += low <= p_lost - p_gained <= high
    assert 0.92 <= hits / trials <= 0.98


def test_margin_decisions():
    same = st.accuracy_test(*_pairs(0, 0, 5000))  # nothing changed on 5,000 images
    assert same["p_trivial"] < 1e-6 and same["drop_high"] < 0.01
    harmful = st.accuracy_test(*_pairs(400, 20, 5000))
    assert harmful["p_nontrivial"] < 1e-6
    few = st.accuracy_test(*_pairs(0, 0, 64))  # 64 images cannot show a drop below 1 %
    assert few["p_trivial"] > 0.05 and few["p_nontrivial"] > 0.05
    rows = st.decisions([same, harmful, few])
    assert [r["decision"] for r in rows] == ["trivial", "non-trivial", "undecided"]


def test_holm_on_a_literal_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(st.holm([0.5, 0.9]), [1.0, 1.0])


def test_bootstrap_resamples_whole_patients_and_is_reproducible_by_seed():
    groups = ["p1", "p1", "p2", "p3", "p3", "p3"]
    w = st.bootstrap_weights(groups, n_resamples=50, seed=3)
    assert np.array_equal(w, st.bootstrap_weights(groups, n_resamples=50, seed=3))
    assert not np.array_equal(w, st.bootstrap_weights(groups, n_resamples=50, seed=4))
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 4]) and np.all(w[:, 4] == w[:, 5])
    assert np.all(w[:, [0, 2, 3]].sum(1) == 3)  # three patients drawn per resample
    assert st.patient_of("patient012_frame01_slice3") == "patient012"


def test_pooled_dice_drop_agrees_with_the_dice_summary():
    rng = np.random.default_rng(0)
    counts = lambda: {k: rng.integers(0, 50, (8, 3)).astype(np.float32)  # noqa: E731
                      for k in ("intersection", "pred_sum", "true_sum")}
    base, masked = counts(), counts()
    for c in (base, masked):
        c["pred_sum"] += c["intersection"]
        c["true_sum"] += c["intersection"]
        c["dice"] = np.zeros(8)
    names = ("bg", "lv", "myo", "rv")
    expected = metrics.dice_summary(base, names)["dice_myo"] - metrics.dice_summary(masked, names)["dice_myo"]
    drop = st.pooled_dice_drop(base, masked, [1])(np.ones((1, 8)))
    assert drop[0] == pytest.approx(expected)
    result = st.bootstrap_test(st.pooled_dice_drop(base, masked, [0, 1, 2]),
                               st.bootstrap_weights([f"p{i // 2}" for i in range(8)], n_resamples=200, seed=0))
    assert result["drop_low"] <= result["drop"] <= result["drop_high"]
    assert result == st.bootstrap_test(st.pooled_dice_drop(base, masked, [0, 1, 2]),
                                       st.bootstrap_weights([f"p{i // 2}" for i in range(8)], n_resamples=200, seed=0))


def test_stored_per_example_arrays_round_trip_with_their_shape():
    from resnet_jax.ablation import store

    counts = np.arange(12, dtype=np.float32).reshape(4, 3)
    correct = np.array([True, False, True, True, False, False, True, False, True])
    assert np.array_equal(store.decode(store._encode(counts)), counts)
    assert np.array_equal(store.decode(store._encode(correct)), correct)


def test_seed_tables_combine_per_mask_with_spread_and_decision_counts():
    from resnet_jax.studies import seeds

    def table(baseline, values, decisions):
        rows = [{"mask": "baseline", "kind": "none", "layers": "", "metric": "accuracy", "value": baseline,
                 "baseline": baseline}]
        rows += [{"mask": m, "kind": "zero-kernel", "layers": m, "metric": "accuracy", "value": v, "baseline": baseline,
                  "decision": d} for (m, v), d in zip(values.items(), decisions)]
        return {"rows": rows}

    a = table(0.8, {"x": 0.5, "y": 0.79}, ["non-trivial", "trivial"])
    b = table(0.7, {"x": 0.6, "y": 0.66}, ["non-trivial", "undecided"])
    rows = {r["mask"]: r for r in seeds.combine([a, b])}
    x = rows["x"]
    assert x["value_mean"] == pytest.approx(0.55) and x["value_std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert (x["drop_min"], x["drop_max"]) == (pytest.approx(0.1), pytest.approx(0.3))
    assert seeds.verdict(x) == "non-trivial (2/2)" and x["seeds_non-trivial"] == 2
    assert seeds.verdict(rows["y"]) == "mixed (1 trivial, 1 undecided)"
    assert seeds.verdict(rows["baseline"]) == ""
    assert [p.name for p in seeds.seed_dirs("runs/c10", 3)] == ["c10", "c10-seed1", "c10-seed2"]
    with pytest.raises(ValueError, match="differ in masks"):
        seeds.combine([a, {"rows": a["rows"][:2]}])
