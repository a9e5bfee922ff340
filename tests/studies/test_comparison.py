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


def test_the_elimination_stage_on_a_run_keeps_a_written_comparison_only_when_asked(tmp_path, monkeypatch):
    """eliminate_and_compare with the work replaced by recorders: the preset's search settings reach the search,
    its timing rounds the comparison; controls see the elimination summary; keep_comparison skips a second timing
    of a slim network whose comparison.json exists, and without it the comparison runs again."""
    from resnet_jax.studies import eliminate

    searched, compared, written = [], [], []
    monkeypatch.setattr(eliminate, "eliminate_workdir", lambda run, slim, settings, **kw: searched.append(
        (settings.finetune_epochs, settings.random_draws, kw["data_dir"], kw["force_untrained"])) or {"units": ["u"]})
    monkeypatch.setattr(eliminate, "format_summary", lambda summary: "")
    monkeypatch.setattr(comparison, "compare", lambda run, slim, **kw: compared.append(
        (kw["trained"], kw["repeats"], kw["data_dir"])) or {"rows": []})
    monkeypatch.setattr(comparison, "format_comparison", lambda result: "")
    monkeypatch.setattr(comparison, "write_comparison", lambda slim, result: written.append(slim) or
                        (slim / "elimination").mkdir(parents=True, exist_ok=True) or (slim / "elimination" / "comparison.json").touch())
    preset = {"finetune_epochs": 2, "random_draws": 3, "timing_repeats": 6}
    slim = tmp_path / "slim"
    summary = comparison.eliminate_and_compare(tmp_path / "run", slim, preset, data_dir="d", keep_comparison=True,
                                               log=lambda s: None)
    assert summary == {"units": ["u"]} and searched == [(2, 3, "d", False)] and compared == [(None, 6, "d")]
    comparison.eliminate_and_compare(tmp_path / "run", slim, preset, data_dir="d", keep_comparison=True,
                                     log=lambda s: None)
    assert len(searched) == 2 and len(compared) == 1 and written == [slim]  # resumed search; the speeds kept
    comparison.eliminate_and_compare(tmp_path / "run", slim, {**preset, "force_untrained": True},
                                     controls=lambda s: {"resnet18": s["units"]}, log=lambda s: None)
    assert searched[-1][3] is True and compared[-1] == ({"resnet18": ["u"]}, 6, None) and len(written) == 2
