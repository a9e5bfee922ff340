"""The factor table: planted reference and factor runs whose distances from the study's pattern are worked out here
by hand from PROTOCOLS.md's segmentation rows (0.87 baseline; stages 0.82, 0.86, 0.82, 0.00; shortcuts 0.00)."""

import json
import shutil
from pathlib import Path

import pytest

from resnet_jax import configs
from resnet_jax.reporting import readme_results

PAPER_STAGE = [0.82 / 0.87, 0.86 / 0.87, 0.82 / 0.87, 0.0]


def _planted(run: Path, overrides, *, stages, shortcuts, baseline=0.8):
    (run / "ablation").mkdir(parents=True)
    (run / "config.json").write_text(configs.to_json(configs.load_config("acdc-pspnet34-cpu", overrides)))
    (run / "provenance.json").write_text("{}")
    row = lambda mask, v: {"mask": mask, "value": v, "dice_myo": v}  # noqa: E731
    tables = {"baseline": [row("baseline", baseline)],
              "stage-except-decomposition": [row(f"encoder.layer{s}.except-decomposition", v)
                                             for s, v in zip((1, 2, 3, 4), stages)],
              "shortcut": [row(f"encoder.layer{s}.0.downsample", v) for s, v in zip((2, 3, 4), shortcuts)]}
    for name, rows in tables.items():
        (run / "ablation" / f"{name}.json").write_text(json.dumps({"rows": rows}))


def _stage_distance(stages, baseline=0.8):
    return sum(abs(v / baseline - p) for v, p in zip(stages, PAPER_STAGE)) / 4


@pytest.fixture
def root(tmp_path):
    recipe, factors = tmp_path / "acdc-recipe", tmp_path / "acdc-factors"
    _planted(recipe / "chosen", ["model.output_stride=8"], stages=[0, 0, 0, 0.4], shortcuts=[0.08] * 3)
    _planted(recipe / "chosen-seed1", ["model.output_stride=8", "train.seed=1"], stages=[0.08, 0, 0, 0.4],
             shortcuts=[0.16] * 3)
    _planted(factors / "os16", ["model.output_stride=16"], stages=[0.6, 0.6, 0.6, 0.0], shortcuts=[0.12] * 3)
    _planted(factors / "half", ["model.output_stride=8", "train.epochs=14"], stages=[0, 0, 0, 0.48],
             shortcuts=[0.4] * 3)
    (factors / "factors.json").write_text(json.dumps({"reference": ["acdc-recipe/chosen", "acdc-recipe/chosen-seed1"]}))
    return tmp_path


def test_each_factor_moves_a_group_of_rows_only_beyond_the_reference_seeds_spread(root):
    text = readme_results.render("<!-- results: acdc-factors/factors -->\n<!-- /results -->\n", root)
    ref = [_stage_distance([0, 0, 0, 0.4]), _stage_distance([0.08, 0, 0, 0.4])]  # shortcut distances: 0.1, 0.2
    mean, spread = sum(ref) / 2, ref[0] - ref[1]
    os16 = next(x for x in text.splitlines() if x.startswith("- `model.output_stride 8 -> 16`"))
    os16_stage = _stage_distance([0.6, 0.6, 0.6, 0])
    assert f"stage rows {mean:.3f} -> {os16_stage:.3f} ({os16_stage - mean:+.3f}): toward the study's pattern, " \
           f"beyond the range between the reference seeds, {spread:.3f}" in os16
    assert "shortcut rows 0.150 -> 0.150 (+0.000): within the range between the reference seeds, 0.100, no measured " \
           "move" in os16
    half = next(x for x in text.splitlines() if x.startswith("- `train.epochs 28 -> 14`"))
    half_stage = _stage_distance([0, 0, 0, 0.48])
    assert f"stage rows {mean:.3f} -> {half_stage:.3f} ({half_stage - mean:+.3f}): away from" in half
    assert "shortcut rows 0.150 -> 0.500 (+0.350): away from the study's pattern" in half
    assert "- In all (2 factors run), beyond the range between the reference seeds: `train.epochs 28 -> 14` away " \
           "from the study's pattern (stage rows); `train.epochs 28 -> 14` away from the study's pattern (shortcut " \
           "rows); `model.output_stride 8 -> 16` toward the study's pattern (stage rows)." in text
    row = next(x for x in text.splitlines() if x.startswith("| os16 |"))
    assert "| 0.800 | 0.600 | 0.600 | 0.600 | 0.000 | 0.120 | 0.120 | 0.120 |" in row
    assert "| the study | - | - | 0.87 | 0.82 | 0.86 | 0.82 | 0.00 | 0.00 | 0.00 | 0.00 |" in text


def test_one_reference_seed_says_the_spread_is_unmeasured_and_a_missing_table_is_named(root):
    (root / "acdc-factors" / "factors.json").write_text(json.dumps({"reference": ["acdc-recipe/chosen"]}))
    text = readme_results.TABLES["factors"](root / "acdc-factors")
    assert "shortcut rows 0.100 -> 0.500 (+0.400): not called a move toward or away from the study's pattern, " \
           "since one reference seed leaves the seed-to-seed spread unmeasured" in text and "toward" not in \
        text.replace("toward or away", "")
    assert "In all" not in text  # no range, no verdict over the factors either
    (root / "acdc-factors" / "half" / "ablation" / "shortcut.json").unlink()
    with pytest.raises(FileNotFoundError, match="half.*shortcut.json"):
        readme_results.TABLES["factors"](root / "acdc-factors")


def test_factors_within_the_reference_seeds_range_are_summed_up_as_no_measured_move(root):
    for run in ("os16", "half"):
        shutil.rmtree(root / "acdc-factors" / run)
    # seed 0's rows exactly, and midway between the seeds: both groups inside the seeds' range
    _planted(root / "acdc-factors" / "same", ["model.output_stride=8", "train.epochs=14"], stages=[0, 0, 0, 0.4],
             shortcuts=[0.08] * 3)
    _planted(root / "acdc-factors" / "mid", ["model.output_stride=16"], stages=[0.04, 0, 0, 0.4], shortcuts=[0.12] * 3)
    text = readme_results.TABLES["factor-effects"](root / "acdc-factors")
    assert text.count("no measured move") == 4
    assert text.endswith("- In all (2 factors run): no factor moved the stage or shortcut rows beyond the range "
                         "between the reference seeds, toward or away from the study's pattern; none is measured "
                         "to explain the contradiction.\n")


def test_an_empty_reference_and_a_zero_baseline_fail_the_block_with_their_reason(root):
    page = "<!-- results: acdc-factors/factors -->\n<!-- /results -->\n"
    (root / "acdc-factors" / "factors.json").write_text(json.dumps({"reference": []}))
    with pytest.raises(readme_results.ResultsError, match="acdc-factors/factors: .*names no reference run"):
        readme_results.render(page, root)
    (root / "acdc-factors" / "factors.json").write_text(json.dumps({"reference": ["acdc-recipe/chosen"]}))
    _planted(root / "acdc-factors" / "dead", ["model.output_stride=8", "train.epochs=1"], stages=[0] * 4,
             shortcuts=[0] * 3, baseline=0.0)
    with pytest.raises(readme_results.ResultsError, match="a baseline of 0.0 leaves no retention"):
        readme_results.render(page, root)


def test_the_effects_block_is_the_tables_sentences_alone_and_says_when_no_factor_ran(root):
    table = readme_results.TABLES["factors"](root / "acdc-factors")
    effects = readme_results.TABLES["factor-effects"](root / "acdc-factors")
    assert effects.count("\n- `") == 1 and effects.startswith("- `") and effects in table and "|" not in effects
    for run in ("os16", "half"):
        shutil.rmtree(root / "acdc-factors" / run)
    assert readme_results.TABLES["factor-effects"](root / "acdc-factors") == \
        "No factor run yet: only the reference seeds are measured.\n"


def test_a_factor_without_a_run_is_stated_untested_with_its_counted_cost(root):
    factors = root / "acdc-factors"
    for run, seconds in (("chosen", 3600.0), ("chosen-seed1", 4800.0)):  # 60 and 80 minutes: 70 on average
        (root / "acdc-recipe" / run / "provenance.json").write_text(json.dumps({"training_seconds": {".": seconds}}))
    shutil.move(factors / "half", factors / "chosen-short-seed1")  # measured by a second seed alone, named anyhow
    size = lambda overrides, macs, epochs, **changed: {"overrides": overrides, "conv_macs": macs,  # noqa: E731
                                                       "epochs": epochs, "input_shape": [1, 128, 128, 1], **changed}
    costs = {"candidate": "chosen", "reference": size(["a=1"], 5_000_000_000, 20),
             "factors": {"cifar-stem": size(["a=1", "model.stem=cifar"], 80_000_000_000, 20,
                                            changed="model.stem torchvision -> cifar"),
                         "short": size(["a=1", "train.epochs=14"], 5_000_000_000, 14, changed="train.epochs 28 -> 14"),
                         "os16": size(["model.output_stride=16"], 1_250_000_000, 20,
                                      changed="model.output_stride 8 -> 16")}}
    (factors / "costs.json").write_text(json.dumps(costs))
    (factors / "os16" / "provenance.json").write_text(json.dumps({"training_seconds": {".": 1800.0}}))
    effects = readme_results.TABLES["factor-effects"](factors)
    untested = [x for x in effects.splitlines() if "not run" in x]
    assert untested == ["- `model.stem torchvision -> cifar` (`cifar-stem`): not run, so its effect on the study's "
                        "pattern is untested. Its conv MACs per 128 x 128 x 1 slice are 80,000 M, 16.0x the "
                        "reference's 5,000 M, over 20 epochs against 20; if training time grew with both, the "
                        "reference's 70.0 training minutes would become about 1,120 (18.7 hours; an estimate, not a "
                        "measurement)."]  # 70 x 16
    assert effects.splitlines()[-1] == "- The same estimate for the factor runs that were trained: 17.5 minutes " \
        "estimated against 30.0 measured (`os16`)."  # 70 x 0.25; the other runs record no training time
    assert untested[0] in readme_results.TABLES["factors"](factors)
    shutil.rmtree(factors / "chosen-short-seed1")  # now unmeasured: 70 x 14 / 20 = 49 minutes, no hours
    assert "- `train.epochs 28 -> 14` (`short`): not run" in readme_results.TABLES["factor-effects"](factors)
    assert "would become about 49 (an estimate, not a measurement)." in readme_results.TABLES["factor-effects"](factors)
    page = "<!-- results: acdc-factors/factor-effects -->\n<!-- /results -->\n"
    (factors / "costs.json").write_text(json.dumps({**costs, "candidate": "os8-e20"}))
    with pytest.raises(readme_results.ResultsError, match="counts candidate 'os8-e20' but .* names 'chosen'"):
        readme_results.render(page, root)
    del costs["factors"]["short"]["epochs"]
    (factors / "costs.json").write_text(json.dumps(costs))
    with pytest.raises(readme_results.ResultsError, match=r"costs.json lacks \['short.epochs'\]"):
        readme_results.render(page, root)
