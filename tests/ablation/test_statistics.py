"""Paired statistics against hand-computed values, numerical optimisation and simulation."""

from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

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
    helps = st.accuracy_test(*_pairs(20, 400, 5000))  # the mask fixes 380 more images than it breaks
    tests = [st.accuracy_test(*_pairs(b, c, n), family_size=4) for b, c, n in
             [(0, 0, 5000), (400, 20, 5000), (0, 0, 64), (20, 400, 5000)]]
    rows = st.decisions(tests)
    assert [r["decision"] for r in rows] == ["trivial", "non-trivial", "undecided", "improves"]
    assert helps["drop_high"] < -0.01 and helps["p_improves"] < 1e-6


def test_a_literal_one_sided_case_the_old_rule_called_trivial_is_undecided():
    # b = 37 lost, c = 0 gained on 5,000 images: one-sided p_trivial 0.032 < 0.05, but the upper bound 0.01018 is
    # above the 1 % margin, so a rule whose bounds are its decision cannot call it trivial at level 0.05.
    t = st.accuracy_test(*_pairs(37, 0, 5000))
    assert t["p_trivial"] == pytest.approx(0.0323, abs=1e-3) and t["drop_high"] == pytest.approx(0.01018, abs=1e-4)
    assert st.decisions([t])[0]["decision"] == "undecided"


def test_simultaneous_bounds_widen_with_the_family_and_hold_the_tail():
    # Tango's bound at tail a solves z(low) = z_(1-a): check with the score statistic itself
    t36 = st.accuracy_test(*_pairs(120, 40, 5000), family_size=36)
    z = st.tango_z(120, 40, 5000, t36["drop_low"])
    assert z == pytest.approx(stats.norm.isf(0.05 / 72), abs=1e-6)
    assert t36["drop_low"] < t36["drop_low_unadjusted"] and t36["drop_high"] > t36["drop_high_unadjusted"]


@pytest.mark.parametrize("seed", range(4))
def test_every_decision_agrees_with_its_bounds_and_with_its_adjusted_p_values(seed):
    """Property test: random (b, c, n) and family sizes; the decision read off the bounds equals the one the
    one-sided score tests make at level alpha / (2 m), computed without any interval."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 700))
    n = int(rng.integers(50, 20000))
    lost = rng.uniform(0, 0.1, m)
    b = rng.binomial(n, lost)
    c = rng.binomial(n - b, rng.uniform(0, 0.1, m))
    margin = float(rng.choice([0.0, 0.005, 0.01, 0.02]))
    rule = st.Decision(margin, float(rng.choice([0.01, 0.05, 0.1])))
    rows = st.decisions(st._rows(st.accuracy_tests(b, c, n, rule=rule, family_size=m)), rule=rule)
    for r in rows:
        low, high, d = r["drop_low"], r["drop_high"], r["decision"]
        if min(abs(low - margin), abs(high - margin), abs(high + margin)) < 1e-9:
            continue  # a bound on the margin itself: either side is a rounding question
        assert (d == "non-trivial") == (low > margin)
        assert (d == "improves") == (high < -margin)
        assert (d == "trivial") == (-margin <= high < margin)
        by_tests = ("non-trivial" if r["p_nontrivial_adj"] < rule.alpha else
                    "improves" if r["p_improves_adj"] < rule.alpha else
                    "trivial" if r["p_trivial_adj"] < rule.alpha else "undecided")
        assert d == by_tests, r


def test_the_rules_family_wise_error_is_at_most_alpha_when_every_drop_is_the_margin():
    """Simulation: 36 masks whose true drop equals the margin (3 % lost, 2 % gained, n = 5,000); any decision
    but 'undecided' is wrong. The old rule (each direction Holm-corrected at alpha) erred in about 9 %."""
    rng = np.random.default_rng(0)
    families, m, n, rule = 2000, 36, 5000, st.Decision(0.01, 0.05)
    outcome = rng.multinomial(n, [0.03, 0.02, 0.95], size=(families, m))
    t = st.accuracy_tests(outcome[..., 0].ravel(), outcome[..., 1].ravel(), n, rule=rule, family_size=m)
    wrong = np.array([st.decide(lo, hi, rule.margin) != "undecided" for lo, hi in zip(t["drop_low"], t["drop_high"])])
    fwer = wrong.reshape(families, m).any(1).mean()
    assert fwer <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / families)


def test_holm_on_a_literal_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(st.holm([0.5, 0.9]), [1.0, 1.0])


def test_bootstrap_resamples_whole_patients_and_is_reproducible_by_seed():
    groups = ["p1", "p1", "p2", "p3", "p3", "p3"]
    counts, index = st.patient_resamples(groups, n_resamples=50, seed=3)
    again, _ = st.patient_resamples(groups, n_resamples=50, seed=3)
    assert np.array_equal(counts, again)
    assert not np.array_equal(counts, st.patient_resamples(groups, n_resamples=50, seed=4)[0])
    assert index.tolist() == [0, 0, 1, 2, 2, 2]  # slices of one patient share the patient's count
    assert np.all(counts.sum(1) == 3) and counts.min() >= 0  # three patients drawn per resample
    assert st.patient_of("patient012_frame01_slice3") == "patient012"


def test_pooled_dice_agrees_with_the_dice_summary_and_the_family_test_is_reproducible():
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
    ones = np.ones((1, 8))
    drop = st.pooled_dice(st.patient_sums(base, [1]), ones) - st.pooled_dice(st.patient_sums(masked, [1]), ones)
    assert drop[0] == pytest.approx(expected)
    groups = [f"p{i // 2}" for i in range(8)]
    first = st.dice_tests(base, [masked], [0, 1, 2], groups)[0]
    assert first["drop_low"] <= first["drop_high"] and first["resamples"] == st.bootstrap_resamples(1)
    assert first == st.dice_tests(base, [masked], [0, 1, 2], groups)[0]
    whole = np.mean([metrics.dice_summary(base, names)[f"dice_{n}"] - metrics.dice_summary(masked, names)[f"dice_{n}"]
                     for n in ("lv", "myo", "rv")])
    assert first["drop"] == pytest.approx(whole)  # the observed drop: pooled over patients, mean over classes


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
    assert [(p.name, o) for p, o in seeds.each_seed("runs/c10", 3)] == [
        ("c10", ["train.seed=0"]), ("c10-seed1", ["train.seed=1"]), ("c10-seed2", ["train.seed=2"])]
    assert seeds.combined_dir("runs/c10") == Path("runs/c10-seeds")
    with pytest.raises(ValueError, match="differ in masks"):
        seeds.combine([a, {"rows": a["rows"][:2]}])


def _dice_counts(rng, n_patients, slices, dice, spread=0.03):
    """Per-slice pixel counts of one class with pooled Dice about ``dice`` (prediction size = truth size)."""
    true = rng.integers(500, 2000, (n_patients * slices, 1)).astype(np.float64)
    patient = np.repeat(rng.normal(0, spread, n_patients), slices)[:, None]
    inter = np.clip(dice + patient + rng.normal(0, spread, true.shape), 0, 1) * true
    return {"intersection": inter, "pred_sum": true, "true_sum": true}


def test_a_630_mask_dice_family_decides_a_catastrophic_mask():
    """The old floor: 2,000 resamples and the +1 rule made every adjusted p at least 630/2001 (undecided).
    The resample count now grows with the family, so a mask that erases the class is decided non-trivial.
    Two masks of the 630-mask family are tested, as a sweep tests a family chunk by chunk (``family_size``)."""
    rng = np.random.default_rng(0)
    groups = [f"patient{i // 10:03d}_slice{i % 10}" for i in range(200)]
    base = _dice_counts(rng, 20, 10, 0.9)
    harmless = {k: v.copy() for k, v in base.items()}
    erased = {**base, "intersection": np.zeros_like(base["intersection"])}
    tests = st.dice_tests(base, [erased, harmless], [0], [st.patient_of(g) for g in groups], family_size=630)
    rows = [{**t, "decision": st.decide(t["drop_low"], t["drop_high"], st.Decision().margin)} for t in tests]
    assert rows[0]["decision"] == "non-trivial" and rows[0]["drop"] == pytest.approx(0.9, abs=0.05)
    assert 2 * 630 * rows[0]["p_nontrivial"] < 0.05 / 10  # Bonferroni over the family's 630 masks, both sides
    assert rows[0]["resamples"] >= st.bootstrap_resamples(630) >= 20 * 2 * 630 / 0.05 - 1
    assert rows[1]["decision"] == "trivial"  # identical predictions: the drop is exactly 0 in every resample


def test_the_bootstrap_bounds_are_the_order_statistics_its_p_values_cross():
    rng = np.random.default_rng(1)
    drops = rng.normal(0.012, 0.004, 5000)
    for m in (1, 3, 36):
        rule = st.Decision(0.01, 0.05)
        r = st.bootstrap_summary(0.012, drops, rule=rule, family_size=m)
        by_p = r["p_nontrivial"] * 2 * m < 0.05
        assert (r["drop_low"] > 0.01) == by_p
        # slow reference: the margins below which the +1-rule tail share stays under alpha / (2 m) end at the
        # first resampled drop where the share no longer does
        ordered = np.sort(drops)
        rejects = [(1 + np.sum(drops <= d)) / (len(drops) + 1) < 0.05 / (2 * m) for d in ordered]
        assert r["drop_low"] == ordered[rejects.index(False)]
        rejects = [(1 + np.sum(drops >= d)) / (len(drops) + 1) < 0.05 / (2 * m) for d in ordered[::-1]]
        assert r["drop_high"] == ordered[::-1][rejects.index(False)]


def test_an_impossible_dice_family_is_refused_with_what_to_change():
    with pytest.raises(ValueError, match="raise --alpha"):
        st.check_bootstrap(630, 0.001)
    assert st.check_bootstrap(36, 0.05) == st.bootstrap_resamples(36, 0.05)


def test_the_warning_says_not_significantly_better_and_gives_the_wilson_bound():
    """10 of 64 right (0.1562) beside chance 0.1250: above it, but not significantly (Wilson 95 %: 0.0871)."""
    labels = np.repeat(np.arange(8), 8)  # eight classes of 8: the majority rate is 0.125
    assert metrics.competence_warning(metrics.Accuracy(), 10 / 64, labels) == (
        "the model's accuracy 0.1562 is not significantly better than always the most frequent class (0.1250): "
        "the 95% Wilson lower bound of its accuracy on these 64 examples, 0.0871, is not above it, so as far as "
        "they show it has not learned the task and nothing it says about which layers matter can be trusted; "
        "train longer (a larger preset) first")
    masks = np.zeros((4, 10, 10), np.int32)
    masks[:, :5, :5] = 2
    assert metrics.competence_warning(metrics.Dice(num_classes=4, classes=(2,)), 0.42, masks).startswith(
        "the model's dice 0.4200 is not better than a constant prediction (no foreground, or all one class) "
        "(0.4000) by the margin of 0.05 that counts as learned:")


def test_paired_model_comparison_reads_its_verdict_off_its_interval():
    base, worse = _pairs(300, 20, 5000)
    tester = st.paired_tester(metrics.Accuracy())
    reference, candidate = {"correct": base}, {"correct": worse}
    rows = st.compare_models(tester, [(candidate, reference), (candidate, candidate), (reference, candidate)])
    assert rows[0]["verdict"] == "better" and rows[0]["difference"] == pytest.approx(280 / 5000)
    assert rows[1]["verdict"] == "no significant difference" and rows[1]["difference"] == 0
    assert rows[2]["verdict"] == "worse" and rows[2]["high"] == pytest.approx(-rows[0]["low"])
    # three comparisons: each interval at level 1 - 0.05 / 3, wider than the single comparison's
    single = st.compare_models(tester, [(candidate, reference)])[0]
    assert rows[0]["low"] < single["low"] and rows[0]["comparisons"] == 3
    assert "better" in st.comparison_text(rows[0])


def test_the_patient_bootstrap_with_the_small_sample_stretch_keeps_its_level():
    """Simulation: one mask of 20 patients whose pooled-Dice drop is exactly the margin; a bound at alpha/2 on
    either side may miss it 5 % of the time in all. Without the stretch the percentile bootstrap misses more."""
    dr, rng = _benchmark(), np.random.default_rng(0)
    groups = dr.dice_family(rng, [0.0])[2]
    tester = st.paired_tester(metrics.Dice(num_classes=2, classes=(1,)), groups=groups)
    rule, trials = st.Decision(0.01, 0.05), 800
    wrong = sum(st.decisions(tester(*dr.dice_family(rng, [0.01])[:2], rule=rule), rule=rule)[0]["decision"]
                != "undecided" for _ in range(trials))
    assert wrong / trials <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)
    assert st.small_sample_stretch(20, 0.05 / 1260) > st.small_sample_stretch(20, 0.025) > 1.0
    assert st.small_sample_stretch(None, 0.025) == 1.0


def _benchmark():
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import decision_rule

    return decision_rule


@pytest.mark.parametrize("m", [36, 630])
def test_the_small_sample_stretch_gives_students_t_bounds_at_the_tables_family_sizes(m):
    """Normal per-patient drops of 20 patients, one slice each and equal sizes, so the pooled drop is their mean:
    the stretched bootstrap's simultaneous bounds lie where Student's t puts them, mean -+ t_19(1 - alpha/(2m))
    s / sqrt(20) (on average over samples; the plain percentile bootstrap would give about 0.8 of that width at
    m = 36 and 0.7 at m = 630)."""
    rng, patients, rule = np.random.default_rng(m), 20, st.Decision(0.01, 0.05)
    tester = st.paired_tester(metrics.Dice(num_classes=2, classes=(1,)), groups=[f"p{i:02d}" for i in range(patients)])
    size = np.full((patients, 1), 1000.0)
    base = {"intersection": 0.85 * size, "pred_sum": size, "true_sum": size}
    below, above = [], []
    for _ in range(60 if m == 36 else 20):
        x = rng.normal(0.01, 0.02, patients)
        r = tester(base, [{**base, "intersection": (0.85 - x[:, None]) * size}], rule=rule, family_size=m)[0]
        half = stats.t.isf(0.05 / (2 * m), patients - 1) * x.std(ddof=1) / np.sqrt(patients)
        assert r["drop"] == pytest.approx(x.mean())
        below.append((r["drop"] - r["drop_low"]) / half)
        above.append((r["drop_high"] - r["drop"]) / half)
    assert 0.93 <= np.mean(below) <= 1.07 and 0.93 <= np.mean(above) <= 1.07


def test_a_36_mask_dice_family_errs_at_about_its_level():
    """CI-sized twin of the benchmark's normal Dice setting at the margin (its full size: 2,000 families): 36
    masks whose true pooled-Dice drop is the margin, so any decision but undecided is wrong; the share of
    families with one is alpha or less, within 3 standard errors."""
    dr, rng, rule, families = _benchmark(), np.random.default_rng(5), st.Decision(0.01, 0.05), 150
    tester = st.paired_tester(metrics.Dice(num_classes=2, classes=(1,)), groups=dr.dice_family(rng, [0.0])[2])
    wrong = sum(any(r["decision"] != "undecided" for r in st.decisions(
        tester(*dr.dice_family(rng, [0.01] * 36)[:2], rule=rule), rule=rule)) for _ in range(families))
    assert wrong / families <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / families)


@pytest.mark.parametrize("effects", ["normal", "skewed"])
def test_the_simulated_masks_true_pooled_dice_drop_is_the_drop_they_are_given(effects):
    """The benchmark's truth, checked on a large population: 40,000 patients of one slice; pooled Dice written out
    (2 * intersection / (prediction + truth), summed over slices). A skewed mask breaks about 1 patient in 10."""
    dr, rng = _benchmark(), np.random.default_rng(0)
    base, (masked,), _ = dr.dice_family(rng, [0.01], effects=effects, patients=40_000, slices=1)
    pooled = lambda c: 2 * c["intersection"].sum() / (c["pred_sum"].sum() + c["true_sum"].sum())  # noqa: E731
    assert pooled(base) - pooled(masked) == pytest.approx(0.01, abs=0.001)
    changes = (base["intersection"] - masked["intersection"]) / base["true_sum"]
    broken = np.mean(changes > 0.07)  # a broken patient's slices lose 0.1 (sd 0.02), a normal one's 0.01 (0.028)
    assert (0.08 < broken < 0.12) if effects == "skewed" else broken < 0.03


def test_the_committed_simulation_tells_005_from_008_in_every_dice_setting():
    """Every 36-mask Dice setting at the margin (normal and skewed per-patient effects) and the accuracy ones have
    enough families that the standard error at a true error of 0.05 is at most 0.005."""
    from tests.conftest import REPO

    import json

    rows = json.loads((REPO / "docs/results/benchmarks/decision_rule.json").read_text())["rows"]
    at_margin = [r for r in rows if r["true_drop"] == "margin" and r["families"] > 1]
    assert {r.get("effects") for r in at_margin if r["metric"] == "dice"} >= {"normal", "skewed", "1 skewed, 35 normal"}
    for r in at_margin:
        assert np.sqrt(0.05 * 0.95 / r["families"]) <= 0.005, r


def test_each_bound_has_18_resamples_beyond_it_whatever_the_family():
    """The +1 rule rejects with k tail hits when (1 + k) / (N + 1) < alpha / (2 m); with N + 1 = 20 * 2m / alpha
    that is k <= 18. Counted beyond real bounds, then in exact arithmetic for every family from 3 masks (below, the
    2,000-resample floor leaves more) to the most a family at alpha 0.1, 0.05 or 0.01 may hold."""
    import math
    from fractions import Fraction

    rng = np.random.default_rng(0)
    for m in (7, 36, 630):  # 7: where 20 / tail, an integer on paper, rounds up in floating point
        drops = rng.normal(0, 1, st.bootstrap_resamples(m))
        r = st.bootstrap_summary(0.0, drops, rule=st.Decision(0.01, 0.05), family_size=m)
        assert np.sum(drops < r["drop_low"]) == np.sum(drops > r["drop_high"]) == 18, m
    for alpha in ("0.05", "0.1", "0.01"):
        for m in range(1, 2000):
            n = st.bootstrap_resamples(m, float(alpha))
            if n > st.MAX_RESAMPLES:
                break
            bound = Fraction(alpha) / (2 * m) * (n + 1)  # (1 + k) / (N + 1) < tail  <=>  k < bound - 1
            exact = math.ceil(bound) - 2
            assert st.beyond_bound(n, float(alpha) / (2 * m)) == exact, (alpha, m)
            assert n == 2000 or exact == st.TAIL_DRAWS - 2, (alpha, m)


def test_every_text_says_how_many_resamples_lie_beyond_each_bound_as_it_is():
    """README, library, benchmarks and committed records: a number of resamples beyond each bound is 18."""
    import re

    from tests.conftest import REPO

    said = re.compile(r"(\d+)(?: resamples)?(?: lie)? beyond each(?: simultaneous)? bound")
    paths = [REPO / "README.md", *(REPO / "resnet_jax").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"),
             *(REPO / "docs").rglob("*.md"), *(REPO / "docs").rglob("*.json")]
    found = {(p.relative_to(REPO).as_posix(), n) for p in paths for n in said.findall(p.read_text())}
    assert found and {n for _, n in found} == {"18"}, sorted(found)
    assert "18 beyond each bound" in st.method_text(metrics.Dice(num_classes=2, classes=(1,)))


def test_a_comparison_line_prints_the_bonferroni_adjusted_p_beside_its_verdict():
    """The slim model's line as committed before issue 41: unadjusted 0.016 < 0.05, adjusted 7 x 0.016 = 0.112."""
    row = {"difference": 0.0092, "low": -0.0009, "high": 0.0194, "p_value": 0.016, "p_test": st.P_TEST,
           "comparisons": 7, "alpha": 0.05, "verdict": "no significant difference"}
    text = st.comparison_text(row)
    assert text == ("+0.0092 [-0.0009, +0.0194] (paired, simultaneous over 7 comparisons), Bonferroni-adjusted p over "
                    "7 comparisons = 0.11 (unadjusted p = 0.016): no significant difference")
    # a row of an earlier version: its p came from a test the interval does not invert, so no adjusted p is made up
    old = st.comparison_text({k: v for k, v in row.items() if k != "p_test"})
    assert old == ("+0.0092 [-0.0009, +0.0194] (paired, simultaneous over 7 comparisons), unadjusted p = 0.016 "
                   "(recorded by an earlier version from a test the interval does not invert; the verdict reads the "
                   "simultaneous interval): no significant difference")
    assert st.bonferroni_p({**row, "p_value": 0.4}) == 1.0


def test_a_comparisons_adjusted_p_agrees_with_its_verdict_at_the_border():
    """8 of 200 images lost, none gained, 8 comparisons: the score interval excludes 0 (worse), while the exact
    McNemar p times 8 is 0.0625; the p printed is the score test's, the one the interval inverts."""
    reference = {"correct": np.ones(200, bool)}
    candidate = {"correct": np.arange(200) >= 8}
    rows = st.compare_models(st.paired_tester(metrics.Accuracy()), [(reference, candidate)] * 8)
    assert rows[0]["verdict"] == "worse" and 8 * st.mcnemar_exact(8, 0) > 0.05
    expected = 8 * 2 * stats.norm.sf(8 / np.sqrt(8))  # McNemar's score statistic (b - c) / sqrt(b + c)
    assert st.bonferroni_p(rows[0]) == pytest.approx(expected) and expected < 0.05
    base, worse = _pairs(300, 20, 5000)
    for pairs in ([({"correct": base}, {"correct": worse})] * 3, [({"correct": base}, {"correct": base})] * 2):
        for row in st.compare_models(st.paired_tester(metrics.Accuracy()), pairs):
            assert (st.bonferroni_p(row) < row["alpha"]) == (row["verdict"] != "no significant difference")
