"""'Faster' only beyond timing noise (issue 41, item 3): Study B's verdict and the elimination's speeds say faster
or slower only where the interval of the measured ratio excludes 1; a record with no interval is not compared."""

import json

import pytest

from resnet_jax.ablation.statistics import P_TEST
from resnet_jax.reporting import readme_results, skip_verdict, study_report
from tests.conftest import REPO

RESULTS = REPO / "docs" / "results"
NOT_COMPARED = "wall time not compared (no interval recorded by the version that made this run)"


def _curves(wall_ratio: float, interval: dict | None) -> dict:
    """CNN-1 and a router saving 20 % of the MACs at an accuracy not distinguishable from CNN-1's."""
    full = {"method": "full", "label": "CNN-1", "setting": "", "accuracy": 0.98, "ci_low": 0.97, "ci_high": 0.99,
            "mac_ratio_vs_cnn1": 1.0, "wall_ratio_vs_cnn1": 1.0, "meets_validation_target": True}
    router = {**full, "method": "selection_router", "label": "activation-chosen depth", "setting": "quantile 0.5",
              "mac_ratio_vs_cnn1": 0.8, "wall_ratio_vs_cnn1": wall_ratio,
              "vs_cnn1": {"difference": -0.001, "low": -0.003, "high": 0.001, "p_value": 0.3, "p_test": P_TEST,
                          "comparisons": 8, "alpha": 0.05, "verdict": "no significant difference"}}
    if interval is not None:
        router["wall_ratio_interval"] = {"ratio": wall_ratio, "coverage": 1 - 2 / 64, "repeats": 6, **interval}
    return {"best": [full, router], "test": [], "tolerance": 0.005}


def test_a_point_whose_rounds_straddle_one_is_not_called_faster():
    """Median ratio 0.96, below 1, but the rounds run from 0.90 to 1.05: no measurable difference."""
    (line,) = skip_verdict.verdict(_curves(0.96, {"low": 0.90, "high": 1.05}))
    assert "faster" not in line and "slower" not in line
    assert line.endswith("it saves 20.0% of the MACs; no measurable difference in wall time (ratio 0.960 [0.900, "
                         "1.050], 96.9% interval of the median over 6 rounds, which holds 1).")
    assert "wall-time ratio 0.960 [0.900, 1.050]" in line


@pytest.mark.parametrize("low, high, word", [(0.80, 0.90, "faster"), (1.02, 1.10, "slower")])
def test_a_point_whose_interval_excludes_one_is_faster_or_slower(low, high, word):
    (line,) = skip_verdict.verdict(_curves((low + high) / 2, {"low": low, "high": high}))
    assert f"; {word} in wall time (ratio" in line


def test_a_point_timed_by_an_earlier_version_is_not_compared():
    """Records made before intervals existed: a median of 3 runs, 0.855 of CNN-1's, and no interval."""
    (line,) = skip_verdict.verdict(_curves(0.855, None))
    assert line.endswith(f"it saves 20.0% of the MACs; {NOT_COMPARED}.") and "faster" not in line
    assert "wall-time ratio 0.855 (no interval)" in line


def test_the_committed_study_b_results_render_their_wall_time_as_not_compared():
    text = readme_results.skip_points(RESULTS / "cpu", "skip")
    assert "faster" not in text and "slower" not in text
    assert text.count(NOT_COMPARED) == 6  # every line of the verdict that saves MACs, both seeds
    assert "| 1.000 | 1.040 (no interval) |" in text  # CNN-3 at depth 2: CNN-1's very computation, 1.040 of its time
    html_lines = study_report._findings({}, {}, json.loads((RESULTS / "cpu" / "mnist-skip" / "skip_results.json")
                                                          .read_text()))
    study_b = [line for line in html_lines if line.startswith("Study B:")]
    assert study_b and not any("faster" in line for line in study_b)


def _comparison(rows: list[dict]) -> dict:
    return {"metric": "accuracy", "device": "cpu", "batch": 8, "repeats": 6, "rows": rows, "paired_vs_slim": {}}


def _row(name: str, speeds: dict | None) -> dict:
    row = {"name": name, "value": 0.7, "params": 1e6, "conv_macs": 5e7, "eval_images_per_s": 900.0,
           "train_images_per_s": 200.0, "ratios_vs_full": {"params": 0.5, "conv_macs": 0.8, "eval_images_per_s": 1.2,
                                                          "train_images_per_s": 1.01}}
    if speeds:
        row["speed_vs_full"] = {f"{kind}_images_per_s": {"ratio": (low + high) / 2, "low": low, "high": high,
                                                         "coverage": 1 - 2 / 64, "repeats": 6}
                                for kind, (low, high) in speeds.items()}
    return row


def test_the_eliminations_speeds_are_faster_only_where_the_interval_excludes_one(tmp_path):
    slim = tmp_path / "cifar10-resnet34-slim"
    (slim / "elimination").mkdir(parents=True)
    (slim / "elimination" / "comparison.json").write_text(json.dumps(_comparison([
        _row("full", {"eval": (1.0, 1.0), "train": (1.0, 1.0)}),
        _row("slim", {"eval": (1.15, 1.25), "train": (0.96, 1.06)})])))
    text = readme_results._comparison(slim)
    assert "| reference |" in text
    assert "| eval 1.200 [1.150, 1.250] faster; train 1.010 [0.960, 1.060] no measurable difference |" in text
    (slim / "elimination" / "comparison.json").write_text(json.dumps(_comparison([_row("full", None),
                                                                                  _row("slim", None)])))
    old = readme_results._comparison(slim)
    assert "eval and train speed not compared: no interval recorded by the version that made this run" in old
    assert "faster" not in old


def test_the_committed_eliminations_render_their_speeds_as_not_compared():
    """These runs timed 3 rounds each (their comparison.json says so): too few for an interval, and the block says
    why in those words, not that the version recorded none."""
    for folder, task in (("cpu-elimination", "classification"), ("cpu", "segmentation")):
        text = readme_results.elimination(RESULTS / folder, task)
        assert text.count("speed not compared: 3 round(s) of timing: a 95% interval needs at least 6") == 2
        assert "no interval recorded" not in text
        assert "faster" not in text and "slower" not in text


def test_a_row_never_timed_says_not_timed_and_a_timed_row_without_interval_is_not_compared():
    from resnet_jax.ablation import speed

    assert speed.images_per_s({"params": 3}, "eval_images_per_s") == "not timed"
    assert speed.images_per_s({"eval_images_per_s": 1234.5}, "eval_images_per_s", ",.0f") == "1,234"
    assert speed.speeds_text({"params": 3}) == "not timed"
    assert speed.speeds_text({"eval_images_per_s": 9.0}).startswith("not compared (no interval recorded")
