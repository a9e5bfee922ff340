"""The recipe-search table: planted runs, whose best epochs and test scores are known, rendered through a README block."""

import json
from pathlib import Path

import pytest

from resnet_jax import configs
from resnet_jax.reporting import readme_results, results


def _planted(run: Path, overrides, val_myo, *, test=None, elapsed=600.0):
    """A trained-run export: config, one metrics line per epoch (validation myocardium Dice as given), provenance."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(configs.to_json(configs.load_config("acdc-pspnet34-cpu", overrides)))
    lines = [{"epoch": e + 1, "step": 41 * (e + 1), "val_dice_myo": v, "val_dice": v + 0.1,
              "elapsed_s": elapsed * (e + 1) / len(val_myo)} for e, v in enumerate(val_myo)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if test is not None:
        (run / "evaluation.json").write_text(json.dumps({"checkpoint": "best", "test_dice_myo": test}))
    (run / "provenance.json").write_text(json.dumps({"command": "planted"}))


def _cells(table: str, run: str) -> list[str]:
    line = next(x for x in table.splitlines() if x.startswith(f"| {run} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_each_run_shows_its_recipe_its_best_validation_epoch_and_a_test_score_only_where_scored(tmp_path):
    folder = tmp_path / "acdc-recipe"
    _planted(folder / "os8", ["model.output_stride=8", "train.epochs=3", "train.score_test=false"],
             [0.50, 0.81, 0.79], elapsed=3000.0)
    _planted(folder / "os16-mean", ["train.epochs=4", "train.dice_weight=0", "train.augment=false"],
             [0.40, 0.60, 0.70], test=0.6543)  # 3 of 4 epochs: unfinished
    table = readme_results.TABLES["recipe"](folder)
    os8 = _cells(table, "os8")
    assert os8[1:3] == ["8", "128"] and os8[5] == "cross-entropy + 1 x Dice"
    assert os8[6] == "flip, shift 10 px, rotate 15 deg, scale 0.1" and os8[7] == "3"
    assert os8[-4:] == ["**0.8100** (epoch 2)", "0.9100", "50.0", "not scored"]
    os16 = _cells(table, "os16-mean")
    assert os16[1] == "16" and os16[5] == "cross-entropy" and os16[6] == "none"
    assert os16[7] == "3 of 4 (unfinished)" and os16[-4] == "**0.7000** (epoch 3)" and os16[-1] == "0.6543"
    assert "Best on validation so far: `os8` (dice_myo 0.8100, 50.0 minutes of training)." in table
    _planted(folder / "os8-seed1", ["model.output_stride=8", "train.epochs=3", "train.seed=1"], [0.5, 0.9, 0.9],
             test=0.8)  # a further seed of the chosen recipe: not a candidate, reported with the chosen recipe
    assert table == readme_results.TABLES["recipe"](folder) and "os8-seed1" not in table
    _planted(tmp_path / "elsewhere" / "preset", ["train.epochs=2"], [0.70, 0.85], test=0.8)  # another folder's run
    (folder / "compare-with.json").write_text(json.dumps({"runs": ["elsewhere/preset"]}))
    table = readme_results.TABLES["recipe"](folder)
    assert _cells(table, "elsewhere/preset")[-4:] == ["**0.8500** (epoch 2)", "0.9500", "10.0", "0.8000"]
    assert "Best on validation so far: `elsewhere/preset` (dice_myo 0.8500, 10.0 minutes of training; test 0.8000)" in table
    scored = {"checkpoint": "best", "test_dice_myo": 0.8, "test_dice_myo_patients_low": 0.75,
              "test_dice_myo_patients_high": 0.84}
    (tmp_path / "elsewhere" / "preset" / "evaluation.json").write_text(json.dumps(scored))
    assert _cells(readme_results.TABLES["recipe"](folder), "elsewhere/preset")[-1] == \
        "0.8000 (patients' 95 % interval: 0.7500 to 0.8400)"
    (folder / "compare-with.json").write_text(json.dumps({"runs": ["elsewhere/gone"]}))
    with pytest.raises(FileNotFoundError, match="elsewhere/gone"):
        readme_results.TABLES["recipe"](folder)


def test_a_block_renders_a_folder_of_exported_runs_and_refuses_one_without_provenance(tmp_path):
    _planted(tmp_path / "acdc-recipe" / "a", ["train.epochs=1"], [0.3])
    page = "<!-- results: acdc-recipe/recipe -->\n<!-- /results -->\n"
    assert "| a | 16 | 128 |" in readme_results.render(page, tmp_path)
    (tmp_path / "acdc-recipe" / "a" / "provenance.json").unlink()
    with pytest.raises(readme_results.ResultsError, match="no provenance.json"):
        readme_results.render(page, tmp_path)


def test_runs_ranked_by_different_validation_scores_do_not_share_a_table(tmp_path):
    folder = tmp_path / "acdc-recipe"
    _planted(folder / "myo", ["train.epochs=1"], [0.3])
    _planted(folder / "mean", ["train.epochs=1", "metric.checkpoint=mean"], [0.3])
    with pytest.raises(results.TableError, match=r"ranked by different validation scores.*'mean': 'val_dice', 'myo': 'val_dice_myo'"):
        readme_results.TABLES["recipe"](folder)


def test_a_slim_network_made_from_a_run_is_not_a_recipe_row(tmp_path):
    folder = tmp_path / "acdc-recipe"
    _planted(folder / "os8", ["model.output_stride=8", "train.epochs=1"], [0.5])
    _planted(folder / "os8-slim", ["model.output_stride=8", "train.epochs=1",
                                   'model.eliminated=[["encoder.layer1.1", "channel"]]'], [0.9])
    _planted(folder / "os8-slim-none", ["model.output_stride=8", "train.epochs=1"], [0.9])  # no unit removed
    (folder / "os8-slim-none" / "elimination").mkdir()
    table = readme_results.TABLES["recipe"](folder)
    assert "| os8 |" in table and "os8-slim" not in table and "`os8` (dice_myo 0.5000" in table


def test_the_chosen_recipe_states_its_test_score_its_interval_and_the_target(tmp_path):
    folder = tmp_path / "acdc-recipe"
    _planted(folder / "unscored", ["train.epochs=1"], [0.5])
    with pytest.raises(results.TableError, match="no run of .* is scored on test yet"):
        readme_results.TABLES["recipe-chosen"](folder)
    for name, seed, test, high in (("chosen", 0, 0.75, 0.79), ("chosen-seed1", 1, 0.80, 0.83)):
        _planted(folder / name, ["train.epochs=1", f"train.seed={seed}"], [0.8])
        (folder / name / "evaluation.json").write_text(json.dumps({
            "test_dice_myo": test, "test_dice_myo_patients_low": test - 0.04, "test_dice_myo_patients_high": high,
            "n_examples": 190}))
    text = readme_results.TABLES["recipe-chosen"](folder)
    assert "- `chosen` (seed 0): test dice_myo **0.7500** (patients' 95 % interval: 0.7100 to 0.7900), pooled " \
           "over the 190 test slices, checkpoint chosen on validation; the target, at least 0.82, is not reached " \
           "(the interval's upper end, 0.7900, is below it too)." in text
    assert "`chosen-seed1` (seed 1)" in text and "is not reached (the interval reaches it)." in text
    assert "unscored" not in text
    (folder / "chosen-seed1" / "evaluation.json").write_text(json.dumps({
        "test_dice_myo": 0.83, "test_dice_myo_patients_low": 0.79, "test_dice_myo_patients_high": 0.86,
        "n_examples": 190, "chosen_by": "test_dice_myo"}))
    text = readme_results.TABLES["recipe-chosen"](folder)
    assert "checkpoint chosen on TEST (no validation split); the target, at least 0.82, is reached by the point " \
           "estimate; the interval's lower end, 0.7900, is below it." in text
    (folder / "chosen-seed1" / "evaluation.json").write_text(json.dumps({"test_dice": 0.9, "n_examples": 190}))
    with pytest.raises(results.TableError, match="has no test_dice_myo, the score that ranked its checkpoints"):
        readme_results.TABLES["recipe-chosen"](folder)


def test_the_training_table_shows_the_score_the_patients_interval_was_computed_for(tmp_path):
    """A run leading with mean Dice stores its interval under test_dice; the table shows that score, not the
    myocardium column beside it, so the interval sits beside the number it belongs to."""
    run = tmp_path / "runs" / "mean-led"
    _planted(run, ["train.epochs=2", "metric.lead=mean"], [0.70, 0.80])
    (run / "ablation").mkdir()
    (run / "ablation" / "baseline.json").write_text(json.dumps({"rows": []}))
    (run / "evaluation.json").write_text(json.dumps({
        "step": 82, "n_examples": 30, "chosen_by": "val_dice", "test_dice_myo": 0.7, "test_dice": 0.85,
        "test_dice_patients_low": 0.81, "test_dice_patients_high": 0.88}))
    cells = _cells(readme_results.TABLES["training"](tmp_path / "runs"), "mean-led")
    assert cells[5:7] == ["dice", "**0.8500** (patients' 95 % interval: 0.8100 to 0.8800)"]
    assert cells[3:5] == ["dice 0.9000", "0.9000"]  # chosen on validation mean Dice (0.80 + 0.1 planted)


def test_a_runs_seed_is_its_configs_and_each_runs_seeds_sort_together_wherever_the_name_holds_the_seed(tmp_path):
    """A slim network of seed 1 named ``<run>-seed1-slim`` (experiments/acdc_recipe.py's naming) sorts after seed
    0's ``<run>-slim``, not before it, and reports seed 1 from its config, whatever its name says."""
    for name, seed in (("chosen-seed1-slim", 1), ("chosen-slim", 0), ("other", 3), ("renamed-seed1", 2)):
        _planted(tmp_path / name, ["train.epochs=1", f"train.seed={seed}"], [0.5])
    (tmp_path / "unconfigured-seed2").mkdir()
    found = [tmp_path / n for n in ("other", "chosen-seed1-slim", "unconfigured-seed2", "chosen-slim", "renamed-seed1")]
    assert [p.name for p in readme_results._by_seed(found)] == \
        ["chosen-slim", "chosen-seed1-slim", "other", "renamed-seed1", "unconfigured-seed2"]
    assert [readme_results.seed_of(p) for p in found] == [3, 1, 2, 0, 2]  # renamed-seed1: its config says 2


def test_a_run_without_a_test_score_names_its_file_and_what_it_holds(tmp_path):
    with pytest.raises(results.TableError, match=r"runs/x/evaluation.json holds no test score: none of .*'test_dice'"
                                                 r"\] \(it holds \['step', 'test_loss'\]\)"):
        readme_results.lead_test_score({"step": 1, "test_loss": 0.3}, "runs/x/evaluation.json")
