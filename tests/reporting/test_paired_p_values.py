"""Every rendered paired comparison prints the p-value its verdict reads: adjusted as its interval is (issue 41)."""

import json
from pathlib import Path

from resnet_jax.ablation.statistics import P_TEST
from resnet_jax.reporting import study_report


def test_the_study_reports_slim_comparison_prints_the_bonferroni_adjusted_p(tmp_path: Path):
    """Unadjusted 0.016 < 0.05, but the interval is simultaneous over 7 comparisons: 7 x 0.016 = 0.112."""
    slim = tmp_path / "cifar10-resnet34-slim"
    (slim / "elimination").mkdir(parents=True)
    summary = {"split_chose_units": "val", "metric": "accuracy", "max_drop": 0.01, "form": "bias", "units": [],
               "path": [], "one_shot": {"choices": [], "test": 0.9}}
    row = {"name": "full", "value": 0.9, "params": 1.0, "conv_macs": 1.0, "eval_images_per_s": 1.0,
           "train_images_per_s": 1.0, "ratios_vs_full": {"params": 1.0, "eval_images_per_s": 1.0}}
    comparison = {"metric": "accuracy", "device": "cpu", "batch": 8, "repeats": 3, "rows": [row],
                  "paired_vs_slim": {"full": {"difference": 0.0092, "low": -0.0009, "high": 0.0194, "p_value": 0.016,
                                              "p_test": P_TEST, "comparisons": 7, "alpha": 0.05,
                                              "verdict": "no significant difference"}}}
    (slim / "elimination" / "summary.json").write_text(json.dumps(summary))
    (slim / "elimination" / "comparison.json").write_text(json.dumps(comparison))
    header, rows = [b for b in study_report._elimination_section(slim, "A") if b[0] == "table"][-1][1:]
    assert header[3:] == ["Bonferroni-adjusted p over 7 comparisons", "unadjusted p", "slim is"]
    assert rows == [["full", "+0.0092", "[-0.0009, +0.0194]", "0.11", "0.016", "no significant difference"]]
