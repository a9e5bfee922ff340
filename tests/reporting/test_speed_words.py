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
