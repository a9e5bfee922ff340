"""The elimination's side-by-side speeds (issue 41, item 3): every model timed once per round, each speed ratio to
the full model taken round by round, with the interval that decides whether a report may call it faster."""

import pytest

from resnet_jax.ablation import speed
from resnet_jax.studies import comparison


def test_measure_times_every_model_once_per_round_and_keeps_every_rounds_speed():
    calls = []
    programs = {name: (lambda name=name: calls.append((name, "eval")), lambda name=name: calls.append((name, "train")))
                for name in ("full", "slim")}
    out = comparison.measure(programs, batch=8, repeats=6, steps=2)
    assert len(calls) == 2 * 2 + 6 * 2 * 2 * 2  # a warm-up call each, then 6 rounds of 2 steps of each program
    for name in programs:
        assert [len(out[name]["rounds"][k]) for k in ("eval", "train")] == [6, 6]
        ranked = sorted(out[name]["rounds"]["eval"])
        assert out[name]["eval_images_per_s"] == pytest.approx((ranked[2] + ranked[3]) / 2)  # the median of 6


def _sizes(eval_rounds: list[float]) -> dict:
    return {"params": 1e6, "conv_macs": 5e7, "eval_images_per_s": sorted(eval_rounds)[3],
            "train_images_per_s": 100.0, "rounds": {"eval": eval_rounds, "train": [100.0] * 6}}


def test_speed_ratios_are_taken_round_by_round_with_an_interval():
    """Full model at 100 images/s but 50 in rounds 4-6 (the machine got busy); the slim model is 1.2x as fast in
    every round, so its ratio is 1.2 exactly and faster; a random draw at 0.9x and one at 1.3x average to 1.1x per
    round; train speeds are equal: no measurable difference."""
    config = {"model": {"name": "resnet34"}}
    summary = {"units": ["layer4.1"], "full": {"test": 0.70}, "slim": {"test": 0.71}, "finetuned": None,
               "random": [{"test": 0.6}, {"test": 0.65}]}
    full = [100.0, 100.0, 100.0, 50.0, 50.0, 50.0]
    sizes = {"full": _sizes(full), "slim": _sizes([1.2 * x for x in full]),
             "random-0": _sizes([0.9 * x for x in full]), "random-1": _sizes([1.3 * x for x in full])}
    rows = comparison._rows(config, summary, sizes, trained={})
    slim, random = rows[1], rows[2]
    assert slim["speed_vs_full"]["eval_images_per_s"]["low"] == pytest.approx(1.2)
    assert slim["ratios_vs_full"]["eval_images_per_s"] == pytest.approx(1.2)  # a median of medians: 1.2 too, here
    assert random["rounds"]["eval"] == pytest.approx([1.1 * x for x in full])
    assert random["speed_vs_full"]["eval_images_per_s"]["high"] == pytest.approx(1.1)
    assert speed.speeds_text(slim) == "eval 1.200 [1.200, 1.200] faster; train 1.000 [1.000, 1.000] no measurable " \
                                      "difference"
    text = comparison.format_comparison({"metric": "accuracy", "rows": rows})
    assert "speed of slim, 1 units removed vs full: eval 1.200 [1.200, 1.200] faster" in text
