"""Committed results: the export keeps exactly the small tables and records what produced them; the README's
results blocks are rendered from those folders and the check catches a hand-edited number."""

import json
import re
import subprocess
import sys
from pathlib import Path

import flax
import jax
import pytest

from resnet_jax import ledger
from resnet_jax.ablation import tables as tables_io
from resnet_jax.ablation.statistics import P_TEST
from resnet_jax.reporting import readme_results, results
from tests.conftest import render_results, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _rows(protocol, values, decisions, *, baseline=0.8, task_column=None):
    rows = []
    for (mask, value), decision in zip(values, decisions):
        row = {"mask": mask, "value": value, "baseline": baseline, "decision": decision, "margin": 0.01, "alpha": 0.05}
        if task_column:
            row[task_column] = value
        rows.append(row)
    return {"rows": rows, "title": protocol}


def _planted_run(run: Path, *, seed: int, stage3: float, bn_batch: bool = False) -> None:
    """A trained classification run's files as training and ``ablate`` write them, with chosen values."""
    (run / "ablation").mkdir(parents=True)
    (run / "checkpoints" / "351").mkdir(parents=True)
    (run / "checkpoints" / "351" / "params.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"task": "classification", "train": {"seed": seed}}))
    (run / "dataset.json").write_text(json.dumps({"train": {"n": 9, "sha256": f"tr{seed}"},
                                                  "test": {"n": 4, "sha256": "te"}}))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in (
        {"epoch": 1, "step": 10, "val_accuracy": 0.5, "elapsed_s": 60.0},
        {"epoch": 2, "step": 20, "val_accuracy": 0.7, "elapsed_s": 150.0})) + "\n")
    (run / "evaluation.json").write_text(json.dumps({"checkpoint": "best", "step": 20, "n_examples": 4,
                                                     "test_accuracy": 0.75}))
    (run / "ablation" / "results.jsonl").write_text("{}\n")  # the per-mask store: never exported
    for reading in ("", ".bn-batch") if bn_batch else ("",):
        tables = {
            "baseline": _rows("baseline", [("baseline", 0.8)], [None]),
            "stage-except-decomposition": _rows("stage", [("layer1.1-2", 0.5), ("layer3.1-5", stage3)],
                                                ["non-trivial", "trivial"]),
            "shortcut": _rows("shortcut", [("layer2.0.downsample", 0.3)], ["non-trivial"]),
            "single": _rows("single", [("conv1", 0.1), ("layer4.1.conv1", 0.8), ("layer4.2.conv1", 0.79)],
                            ["non-trivial", "trivial", "undecided"]),
        }
        for protocol, table in tables.items():
            tables_io.write_rows(table["rows"], run / "ablation", f"{protocol}{reading}", meta={"title": protocol})


@pytest.fixture(autouse=True)
def clean_checkout(monkeypatch):
    """Exports here run as from a committed checkout (this one may hold uncommitted edits; test_provenance.py
    tests the refusal)."""
    monkeypatch.setattr(ledger, "code_changes", lambda root=None: [])


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    _planted_run(work / "cifar10-resnet34", seed=0, stage3=0.70, bn_batch=True)
    _planted_run(work / "cifar10-resnet34-seed1", seed=1, stage3=0.80)
    ledger.run(work, ledger.Stage("cifar-train", lambda: {"seeds": 2}, ("cifar10-resnet34",)), log=lambda _: None)
    return work


def test_export_keeps_exactly_the_tables_and_records_what_produced_them(workdir, tmp_path):
    out = tmp_path / "docs" / "results" / "planted"
    earlier = json.loads(results.export(workdir, out, command="earlier").read_text())
    (out / "stale.csv").write_text("from an earlier export\n")  # a table that run had and this one has not
    (out / "provenance.json").write_text(json.dumps({**earlier, "files": [*earlier["files"], "stale.csv"]}))
    record = json.loads(results.export(workdir, out, command="resnet-jax reproduce --x", preset="cpu", seeds=2)
                        .read_text())
    copied = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    expected = {"provenance.json", "stages.json"} | {
        f"{run}/{name}" for run in ("cifar10-resnet34", "cifar10-resnet34-seed1")
        for name in ("config.json", "dataset.json", "metrics.jsonl", "evaluation.json")} | {
        f"{run}/ablation/{p}{reading}.{ext}" for run, readings in (("cifar10-resnet34", ("", ".bn-batch")),
                                                                   ("cifar10-resnet34-seed1", ("",)))
        for reading in readings for ext in ("csv", "json")
        for p in ("baseline", "stage-except-decomposition", "shortcut", "single")}
    assert copied == expected  # no checkpoint, no per-example store, nothing left of the earlier export
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["code"]["commit"] == head and record["command"] == "resnet-jax reproduce --x"
    assert record["preset"] == "cpu" and record["seeds"] == 2 and record["machine"]["cores"] >= 1
    assert (record["machine"]["jax"], record["machine"]["flax"]) == (jax.__version__, flax.__version__)
    assert record["datasets"]["cifar10-resnet34-seed1"] == {"train": "tr1", "test": "te"}
    assert record["training_seconds"] == {"cifar10-resnet34": 150.0, "cifar10-resnet34-seed1": 150.0}
    assert record["stages"]["cifar-train"]["seconds"] == ledger.read(workdir)["stages"]["cifar-train"]["seconds"]
    assert record["stages"]["cifar-train"]["code"]["commit"] == head  # the ledger keys each stage by its code
    assert record["stages"]["cifar-train"]["command"] == ledger.command_line()  # and by the command that ran it


def test_export_refuses_an_empty_workdir_and_a_folder_inside_it(workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no run"):
        results.export(tmp_path / "nothing", tmp_path / "out", command="c")
    with pytest.raises(results.ExportError, match="inside the workdir"):
        results.export(workdir, workdir / "results", command="c")


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_results_never_deletes_what_it_did_not_write(workdir, tmp_path, monkeypatch):
    """A user's folder, the folder holding the run, the workdir itself and a folder inside it: each refused with
    one line and exit 2, every byte on disk as it was."""
    thesis = tmp_path / "X"
    (thesis / "sub").mkdir(parents=True)
    (thesis / "thesis.txt").write_text("x\n")
    (thesis / "sub" / "draft.md").write_text("my notes\n")
    before = _snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative spellings, as a user types them
    for out, says in (("X", "not results of this run"), (".", "holds the workdir"),
                      ("work", "is the workdir"), ("work/cifar10-resnet34/tables", "inside the workdir"),
                      ("work/stages.json", "inside the workdir"), ("X/thesis.txt", "is a file")):
        done = run_cli("results", "--workdir", "work", "--out", out)
        assert done.returncode == 2, (out, done.stderr)
        assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert _snapshot(tmp_path) == before, out


def test_results_replaces_only_an_earlier_export_of_the_same_run(workdir, tmp_path):
    out = tmp_path / "docs" / "results" / "run"
    results.export(workdir, out, command="first")
    (workdir / "cifar10-resnet34" / "ablation" / "shortcut.csv").write_text("mask,value\nnew,1\n")
    results.export(workdir, out, command="second")  # the same run: replaced, with the new table
    assert (out / "cifar10-resnet34" / "ablation" / "shortcut.csv").read_text() == "mask,value\nnew,1\n"
    assert json.loads((out / "provenance.json").read_text())["command"] == "second"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # nothing left aside
    other = tmp_path / "other"
    _planted_run(other / "cifar10-resnet34", seed=3, stage3=0.1)
    ledger.run(other, ledger.Stage("cifar-train", lambda: {}, ("cifar10-resnet34",)), log=lambda _: None)
    before = _snapshot(out)
    with pytest.raises(results.ExportError, match="results of another run"):
        results.export(other, out, command="c")
    assert _snapshot(out) == before
    (out / "notes.txt").write_text("mine\n")  # a file the export did not write, beside this run's results
    with pytest.raises(results.ExportError, match="notes.txt"):
        results.export(workdir, out, command="c")
    assert (out / "notes.txt").read_text() == "mine\n"


def test_an_interrupted_export_leaves_the_earlier_one_whole(workdir, tmp_path, monkeypatch):
    out = tmp_path / "results" / "run"
    results.export(workdir, out, command="first")
    before = _snapshot(out)
    copy, calls = results.shutil.copyfile, []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return copy(src, dst)
    monkeypatch.setattr(results.shutil, "copyfile", failing)
    with pytest.raises(OSError, match="No space left"):
        results.export(workdir, out, command="second")
    assert _snapshot(out) == before and sorted(p.name for p in out.parent.iterdir()) == ["run"]


def test_an_interrupted_run_is_exported_with_a_warning_in_provenance_and_every_block(workdir, tmp_path):
    root, block = tmp_path / "results", "<!-- results: planted/decisions -->\n<!-- /results -->\n"
    assert "warning" not in json.loads(results.export(workdir, root / "planted", command="c").read_text())
    assert "Warning" not in readme_results.render(block, root)
    ledger.declare(workdir / "cifar10-resnet34", "ablate", ["ablation"])  # a run's declared outputs: not a stage
    assert "warning" not in json.loads(results.export(workdir, root / "planted", command="c").read_text())
    ledger.start(workdir / "cifar10-resnet34", "ablate", ["ablation"])  # started in a run's ledger, never finished
    record = json.loads(results.export(workdir, root / "planted", command="c").read_text())
    assert "interrupted" in record["warning"] and "cifar10-resnet34/ablate" in record["warning"]
    text = readme_results.render(block, root)
    assert text.count("**Warning: exported from an interrupted run") == 1 and "cifar10-resnet34/ablate" in text


def test_large_tables_are_left_out_and_listed(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "MAX_BYTES", 100)
    record = json.loads(results.export(workdir, tmp_path / "out", command="c").read_text())
    assert "cifar10-resnet34/ablation/single.json" in " ".join(record["left_out"])
    assert not (tmp_path / "out" / "cifar10-resnet34" / "ablation" / "single.json").exists()


README = """# Results
<!-- results: planted/paper -->
<!-- /results -->
text between
<!-- results: planted/decisions -->
old numbers
<!-- /results -->
<!-- results: planted/training -->
<!-- /results -->
"""


def test_rendered_tables_hold_the_planted_numbers_and_the_check_sees_an_edit(workdir, tmp_path):
    root = tmp_path / "results"
    results.export(workdir, root / "planted", command="c")
    text = readme_results.render(README, root)
    assert "text between" in text and "old numbers" not in text
    # paper: stage 3 is 0.83 in the study; ours 0.70 and 0.80 -> mean 0.750, range [0.700, 0.800]; batch: seed 0 only
    assert "| stage-except-decomposition | 3 | 0.83 | 0.750 (range over 2 seeds: 0.700 to 0.800) | 0.700 |" in text
    assert "| baseline | - | 0.84 | 0.800 (range over 2 seeds: 0.800 to 0.800) | 0.800 |" in text
    # decisions: single has 1 / 1 / 0 / 1 of non-trivial / trivial / improves / undecided in each seed
    assert "| cifar10-resnet34-seed1 | single | 3 | 1 | 1 | 0 | 1 | 0.01 | 0.05 |" in text
    # the chosen checkpoint's criterion: a run of an earlier version recorded none; classification ranks by accuracy
    assert "| cifar10-resnet34 | 2 | 2 | accuracy 0.7000 | 0.7000 | accuracy | **0.7500** | 4 | 2.5 |" in text
    assert readme_results.differing_blocks(text, root) == []
    edited = text.replace("| 0.83 | 0.750", "| 0.83 | 0.760")
    assert readme_results.differing_blocks(edited, root) == ["planted/paper"]
    assert readme_results.differing_blocks(README, root) == ["planted/paper", "planted/decisions", "planted/training"]


def test_agreement_sentences_measure_each_reading_against_the_paper(workdir, tmp_path):
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.agreement(tmp_path / "planted")
    # rows with a value: stage 1 (0.50 vs 0.51), stage 3 (seed mean 0.75 / seed 0 alone 0.70 vs 0.83), shortcut 2
    # (0.30 vs 0.28): mean distances (0.01 + 0.08 + 0.02) / 3 and (0.01 + 0.13 + 0.02) / 3
    assert ("- classification, running statistics (seeds 0, 1): baseline 0.800 against the paper's 0.84; over the 3 "
            "stage and shortcut rows ours lies 0.037 from the paper on average; within 0.05 (agrees): "
            "stage-except-decomposition 1, shortcut 2; more than 0.1 away (contradicts): none.") in text
    assert ("- classification, batch statistics (seed 0): baseline 0.800 against the paper's 0.84; over the 3 stage "
            "and shortcut rows ours lies 0.053 from the paper on average") in text
    assert "more than 0.1 away (contradicts): stage-except-decomposition 3 (0.70 against 0.83)." in text
    # compared on seed 0, the only seed both readings have, they tie (0.053 each); seed 1 lies 0.020 away:
    # a 0.000 gap is within the 0.033 the running reading moves between seeds
    assert ("- classification, over seed 0 (the seeds both readings have; per row, running statistics 0.053 against "
            "batch statistics 0.053 from the paper): within seed variation (a gap of 0.000, where one reading's "
            "distance differs by up to 0.033 between seeds); neither reading is the closer.") in text
    assert "closer to the paper, by" not in text


def test_readings_compared_on_shared_seeds_name_a_winner_only_beyond_seed_variation(workdir, tmp_path):
    for run, stage3 in (("cifar10-resnet34", 0.70), ("cifar10-resnet34-seed1", 0.80)):  # both seeds get batch tables
        ablation = workdir / run / "ablation"
        for protocol in ("baseline", "stage-except-decomposition", "shortcut"):
            table = json.loads((ablation / f"{protocol}.json").read_text())
            for row in table["rows"]:  # batch statistics: stage 3 far from the paper's 0.83 in both seeds
                row["value"] = 0.10 if round(row["value"], 2) == stage3 and protocol != "baseline" else row["value"]
            (ablation / f"{protocol}.bn-batch.json").write_text(json.dumps(table))
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.agreement(tmp_path / "planted")
    # per row over seeds 0, 1: running (0.053 + 0.020) / 2 = 0.037; batch (0.01 + 0.73 + 0.02) / 3 = 0.253 in each
    # seed; the 0.217 gap is more than the 0.033 the running reading moves between seeds
    assert ("- classification, over seeds 0, 1 (the seeds both readings have; per row, running statistics 0.037 "
            "against batch statistics 0.253 from the paper): the running statistics reading is the closer to the "
            "paper, by 0.217, more than the 0.033 its distance varies between seeds.") in text
    assert "ours, batch statistics (seeds 0, 1)" in readme_results.paper_table(tmp_path / "planted")


def test_layers_group_single_decisions_over_seeds(workdir, tmp_path):
    single = workdir / "cifar10-resnet34-seed1" / "ablation" / "single.json"
    table = json.loads(single.read_text())
    table["rows"][2]["decision"] = "trivial"  # layer4.2.conv1: undecided in seed 0, trivial in seed 1
    single.write_text(json.dumps(table))
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.layers(tmp_path / "planted")
    assert "- classification, `single` over 2 seed(s), 3 convs:" in text
    assert "  - non-trivial in every seed (1): `conv1`\n  - trivial in every seed (1): `layer4.1.conv1`\n" in text
    assert "  - split between seeds (1): `layer4.2.conv1` (undecided / trivial)" in text


def test_readings_compare_each_open_reading_with_the_standard_one(workdir, tmp_path):
    ablation = workdir / "cifar10-resnet34" / "ablation"
    first = _rows("first", [("layer1.1-2", 0.2), ("layer3.1-5", 0.7)], ["non-trivial", "trivial"])
    (ablation / "stage-except-decomposition-first-conv.json").write_text(json.dumps(first))
    cuts = _rows("cuts", [("layer1.0.identity", 0.12), ("layer4.2.identity", 0.6)], ["non-trivial", "undecided"])
    (ablation / "identity-shortcut.cut-identity.json").write_text(json.dumps(cuts))
    batch = json.loads((ablation / "single.bn-batch.json").read_text())
    batch["rows"][1]["decision"] = "non-trivial"  # layer4.1.conv1: trivial on running statistics
    (ablation / "single.bn-batch.json").write_text(json.dumps(batch))
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.readings(tmp_path / "planted")
    assert text.startswith("- `cifar10-resnet34`:\n") and "cifar10-resnet34-seed1" not in text  # seed 1 has none
    assert "alone: 0.200 (non-trivial) instead of 0.500 (non-trivial)" in text
    assert "identity shortcuts cut one at a time (2): value 0.120-0.600; non-trivial 1, undecided 1" in text
    assert "1 of 3 `single` decisions change" in text


def test_a_block_naming_an_unknown_table_or_folder_is_an_error_that_lists_the_valid_ones(workdir, tmp_path):
    root = tmp_path / "results"
    results.export(workdir, root / "planted", command="c")
    with pytest.raises(readme_results.ResultsError, match="known: .*'paper'"):
        readme_results.render("<!-- results: planted/nope -->\n<!-- /results -->", root)
    with pytest.raises(readme_results.ResultsError, match="folders there: \\['planted'\\]"):
        readme_results.render("<!-- results: missing/paper -->\n<!-- /results -->", root)


def _planted_segmentation(run: Path) -> None:
    _planted_run(run, seed=0, stage3=0.02)
    (run / "config.json").write_text(json.dumps({"task": "segmentation", "train": {"seed": 0}}))


def test_a_task_suffix_narrows_a_block_to_that_tasks_runs_and_stages(workdir, tmp_path):
    _planted_segmentation(workdir / "acdc-pspnet34")
    for stage in ("acdc-train", "readings"):
        ledger.run(workdir, ledger.Stage(stage, lambda: {}), log=lambda _: None)
    root = tmp_path / "results"
    results.export(workdir, root / "planted", command="c")
    both = readme_results.render("<!-- results: planted/decisions -->\n<!-- /results -->", root)
    seg = readme_results.render("<!-- results: planted/decisions:segmentation -->\n<!-- /results -->", root)
    assert "| acdc-pspnet34 | single |" in both and "| cifar10-resnet34 | single |" in both
    assert "| acdc-pspnet34 | single |" in seg and "cifar10" not in seg
    budget = readme_results.budget_line(root / "planted", "segmentation")
    assert "acdc-train" in budget and "readings" in budget and "cifar-train" not in budget
    assert f"run as `{ledger.command_line()}`" in budget
    assert "training 0.04 h" in budget  # the planted segmentation run's 150 s alone, not the two cifar runs'
    two = readme_results.render("<!-- results: planted/decisions:segmentation -->\n<!-- /results -->\n"
                                "<!-- results: planted/decisions:classification -->\n<!-- /results -->", root)
    assert readme_results.differing_blocks(two, root) == []  # blocks differing only in their task are told apart
    assert readme_results.differing_blocks(two.replace("| acdc-pspnet34 | single | 3 |", "| acdc-pspnet34 | single | 4 |"),
                                           root) == ["planted/decisions:segmentation"]
    with pytest.raises(readme_results.ResultsError, match="unknown task 'segmentaton'; known: .*'segmentation'"):
        readme_results.render("<!-- results: planted/paper:segmentaton -->\n<!-- /results -->", root)


def _planted_skip(run: Path, *, cnn1: float, router: float) -> None:
    def acc(a, n=100):
        return {"accuracy": a, "ci_low": a - 0.01, "ci_high": a + 0.01, "n": n}
    paired = {"difference": round(0.97 - cnn1, 4), "low": -0.05, "high": 0.002, "p_value": 0.03, "p_test": P_TEST, "comparisons": 8,
              "alpha": 0.05, "verdict": "no significant difference"}
    point = {"method": "early_exit", "label": "early exit", "setting": "threshold 0.9", **acc(0.97),
             "mean_conv_layers": 1.25, "mac_ratio_vs_cnn1": 0.05, "wall_ratio_vs_cnn1": 0.2,
             "meets_validation_target": True, "vs_cnn1": paired}
    full = {"method": "full", "label": "CNN-1", "setting": None, **acc(cnn1), "mean_conv_layers": 3.0,
            "mac_ratio_vs_cnn1": 1.0, "meets_validation_target": True}
    result = {"cnn1": {"test": acc(cnn1)}, "router": {**acc(router, 44), "majority_rate": 0.45},
              "literal": {"depth_true_label": acc(1.0), "depth_router": acc(0.6), "depth_full": acc(0.45)},
              "selection": {"n_labelled": 9, "per_layer": [{"labelled_here": k} for k in (2, 3, 4)]},
              "dense_router": {**acc(0.66), "majority_rate": 0.55}, "split_sizes": {"test": 100},
              "curves": {"tolerance": 0.05, "best": [full, point], "test": []},
              "verdict": ["stored before issue 41: p = 0.03: no significant difference"]}
    run.mkdir(parents=True)
    (run / "skip_results.json").write_text(json.dumps(result))


def test_study_b_tables_put_each_seed_beside_the_studys_numbers(workdir, tmp_path):
    _planted_skip(workdir / "mnist-skip-seed1", cnn1=0.95, router=0.7)
    _planted_skip(workdir / "mnist-skip", cnn1=0.9881, router=0.6136)
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.skip_study(tmp_path / "planted")
    assert "| the study | ours, `mnist-skip` [95 % CI] | ours, `mnist-skip-seed1` [95 % CI] |" in text  # seed 0 first
    assert "| CNN-1 test accuracy | 98 % | 0.9881 [0.9781, 0.9981] | 0.9500 [0.9400, 0.9600] |" in text
    assert "| 62 % | 0.6136 [0.6036, 0.6236] (n = 44; majority 0.4500) |" in text
    assert "| - | 9 (2 / 3 / 4) | 9 (2 / 3 / 4) |" in text
    points = readme_results.skip_points(tmp_path / "planted")
    assert "| early exit | threshold 0.9 | 0.9700 [0.9600, 0.9800] | 1.250 | 0.050 | 0.200 (no interval) |" in points
    # the verdict is written from the stored points by today's code: the p beside each paired verdict is adjusted
    # as its interval is (8 comparisons: 8 x 0.03 = 0.24), and named
    assert "stored before issue 41" not in points
    assert points.count("(paired difference -0.0181 [-0.0500, +0.0020] (paired, simultaneous over 8 comparisons), "
                        "Bonferroni-adjusted p over 8 comparisons = 0.24 (unadjusted p = 0.03): no significant "
                        "difference)") == 1
    for table in (readme_results.skip_study, readme_results.skip_points):
        assert table(tmp_path / "planted", "skip") == table(tmp_path / "planted")
        with pytest.raises(readme_results.ResultsError, match="task 'skip' only, not 'segmentation'"):
            table(tmp_path / "planted", "segmentation")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(readme_results.ResultsError, match="no Study B results"):
        readme_results.skip_study(empty)


def test_the_elimination_block_shows_the_path_the_comparison_and_the_paired_tests(workdir, tmp_path):
    slim = workdir / "cifar10-resnet34-slim"
    (slim / "elimination").mkdir(parents=True)
    (slim / "config.json").write_text(json.dumps({"task": "classification"}))
    step = {"params": 1_000_000, "conv_macs": 5e6}
    summary = {"metric_split": "val", "metric": "accuracy", "baseline": {"val": 0.70}, "max_drop": 0.01,
               "units": ["layer4.1"], "path": [
                   {"step": 1, "added": "layer4.1.conv2", "units_removed": 1, "value": 0.705, "drop": -0.005,
                    "accepted": True, **step},
                   {"step": 2, "added": "layer3.5.conv2", "units_removed": 2, "value": 0.68, "drop": 0.02,
                    "accepted": False, **step}],
               "choices": [["layer4.1", "layer4.1.conv2"]], "full": {"test": 0.72}, "slim": {"test": 0.715},
               "one_shot": {"choices": ["layer4.1.conv2", "layer3.5.conv2"], "test": 0.6},
               "k_smallest": {"choices": [["layer4.2", "layer4.2.conv2"]], "test": 0.7},
               "random": [{"test": 0.5}, {"test": 0.6}]}
    (slim / "elimination" / "summary.json").write_text(json.dumps(summary))
    ratios = {"params": 0.5, "conv_macs": 0.8, "eval_images_per_s": 1.25, "train_images_per_s": 1.1}
    row = {"params": 2e6, "conv_macs": 6e7, "eval_images_per_s": 1000.4, "train_images_per_s": 300.0,
           "ratios_vs_full": ratios}
    comparison = {"metric": "accuracy", "device": "cpu", "batch": 128, "repeats": 3, "rows": [
        {"name": "slim, 1 unit removed", "value": 0.71, **row},
        {"name": "random 1 units (3 draws, mean)", "value": 0.6, "low": 0.55, "high": 0.65, **row}],
        "paired_vs_slim": {"resnet18": {"difference": -0.02, "low": -0.041, "high": 0.001, "p_value": 0.02,
                                        "p_test": P_TEST, "comparisons": 4, "verdict": "no significant difference"}}}
    (slim / "elimination" / "comparison.json").write_text(json.dumps(comparison))
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.elimination(tmp_path / "planted", "classification")
    assert "baseline 0.7000), stopping before a drop above 0.01; removed 1: `layer4.1`." in text
    assert "| 2 | `layer3.5.conv2` (rejected) | 2 | 0.6800 | +0.0200 | 1,000,000 | 5.0 M |" in text
    assert ("removed at once with no training: the full network 0.7200; the search's 1 units 0.7150; the one-shot "
            "set (2 units harmless alone, at once) 0.6000; the 1 smallest single drops 0.7000 (other units than the "
            "search); 2 random sets of 1 units 0.5500 (range over draws: 0.5000 to 0.6000)." in text)
    assert "| random 1 units (3 draws, mean) | 0.6000 (range over draws: 0.5500 to 0.6500) | 2.00 M | 60.0 M | 1,000 | 300 |" in text
    # unadjusted 0.02 < 0.05, but the verdict reads an interval simultaneous over 4 comparisons: 4 x 0.02 = 0.08
    assert ("- slim minus resnet18: -0.0200 [-0.0410, +0.0010] (paired, simultaneous over 4 comparisons), "
            "Bonferroni-adjusted p over 4 comparisons = 0.08 (unadjusted p = 0.02): no significant difference" in text)
    with pytest.raises(readme_results.ResultsError, match="no elimination results .* of task segmentation"):
        readme_results.elimination(tmp_path / "planted", "segmentation")


def test_the_verify_block_counts_agreement_and_the_largest_deviations(workdir, tmp_path):
    head = "protocol,mask,kind,n_examples,jax_value,torch_value,abs_delta,max_logit_deviation,disagreements,ok\n"
    rows = ["baseline,baseline,none,1000,0.686,0.686,0.0,4e-05,0,True",
            "single,conv1,zero-kernel,1000,0.099,0.099,0.0,3e-05,0,True",
            "shortcut,layer2.0.downsample,zero-kernel,1000,0.25,0.251,0.001,2.5e-3,1,False"]
    (workdir / "cifar10-resnet34" / "verify.csv").write_text(head + "\n".join(rows) + "\n")
    results.export(workdir, tmp_path / "planted", command="c")
    text = readme_results.verify(tmp_path / "planted")
    assert text == ("- `cifar10-resnet34`: the baseline and 2 masks (single, shortcut) on 1000 test images: 2 of 3 agree "
                    "within tolerance, 1 prediction disagreements in all, largest metric difference 0.0010, largest "
                    "logit deviation 2.5e-03.\n")
    assert readme_results.verify(tmp_path / "planted", "classification") == text
    with pytest.raises(readme_results.ResultsError, match="no PyTorch cross-check .* of task segmentation"):
        readme_results.verify(tmp_path / "planted", "segmentation")


def test_the_readme_matches_the_committed_results():
    """README command 2 fails when a results table of the README was edited by hand or the results changed."""
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_results.py"), "--check"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr


def test_the_pairs_block_computes_interactions_from_the_single_drops_and_checks_the_unit_identity(tmp_path):
    run = tmp_path / "r" / "cifar10-resnet34"
    _planted_run(run, seed=0, stage3=0.7)
    single = _rows("single", [("layer1.0.conv1", 0.78), ("layer1.0.conv2", 0.70), ("layer2.0.conv1", 0.75),
                              ("layer2.0.conv2", 0.60)], ["trivial", "non-trivial", "undecided", "non-trivial"])
    pairs = _rows("pairs", [("layer1.0.conv1+layer1.0.conv2", 0.70),  # conv2 alone: 0.70, the identity holds
                            ("layer1.0.conv2+layer2.0.conv2", 0.20),  # 0.60 together against 0.10 + 0.20
                            ("layer2.0.conv1+layer2.0.conv2", 0.58)],  # 0.58, not conv2's 0.60
                  ["non-trivial", "non-trivial", "non-trivial"])
    pairs["seconds"] = 120.0
    for row in pairs["rows"]:
        row["n_examples"] = 4
    (run / "ablation" / "single.json").write_text(json.dumps(single))
    (run / "ablation" / "pairs.json").write_text(json.dumps(pairs))
    text = readme_results.pairs(tmp_path / "r")
    assert "3 pairs on 4 test examples (2.0 min of engine time): 3 non-trivial, 0 trivial" in text
    assert "1 pairs interact by more than 0.05" in text  # +0.30 only; the others -0.02 and -0.03
    assert "exactly as its conv2 alone in 1 of 2 units" in text
    synergy = text.split("The most synergistic pairs:")[1].splitlines()[4]
    assert synergy.startswith("| `layer1.0.conv2 + layer2.0.conv2` | +0.6000 | +0.1000 | +0.2000 | +0.3000 |")
    with pytest.raises(readme_results.ResultsError, match="no pairs table"):
        readme_results.pairs(tmp_path / "r", "segmentation")


def test_the_check_fails_when_a_committed_csv_says_other_than_its_json_twin(workdir, tmp_path):
    """The README renders from the JSON; a hand-edited CSV beside it must fail the check too, naming file and row."""
    root = tmp_path / "results"
    results.export(workdir, root / "planted", command="c")
    readme = tmp_path / "README.md"
    readme.write_text(readme_results.render("<!-- results: planted/paper -->\n<!-- /results -->\n", root))
    check = ["--check", "--readme", str(readme), "--results", str(root)]
    assert render_results(*check).returncode == 0
    shortcut = root / "planted" / "cifar10-resnet34" / "ablation" / "shortcut.csv"
    shortcut.write_text(shortcut.read_text().replace("layer2.0.downsample,0.3,", "layer2.0.downsample,0.35,"))
    failed = render_results(*check)
    assert failed.returncode == 1
    assert (f"{shortcut}: row 1 (layer2.0.downsample), column value: 0.35 in the CSV, 0.3 in shortcut.json"
            in failed.stderr)
    assert results.form_mismatches(root) == failed.stderr.strip().splitlines()


def test_a_csv_matches_its_twin_up_to_float_formatting_and_a_missing_row_is_named(tmp_path):
    rows = [{"mask": "a", "value": 0.1 + 0.2, "n": 3, "ok": True, "note": None}, {"mask": "b", "value": float("nan"),
                                                                                 "n": 4, "ok": False, "note": "x"}]
    csv_path, _ = tables_io.write_rows(rows, tmp_path, "single")
    assert results.form_mismatches(tmp_path) == []
    csv_path.write_text(csv_path.read_text().replace("0.30000000000000004", "0.3000000000000000"))
    assert results.form_mismatches(tmp_path) == []  # the same float, written otherwise
    csv_path.write_text(csv_path.read_text().rsplit("b,", 1)[0])
    assert results.form_mismatches(tmp_path) == [f"{csv_path}: 1 rows in the CSV, 2 in single.json"]


def test_study_b_tables_show_the_control_the_verdict_reads_under_its_own_name():
    """Seed 1 as committed: the dense router chose quantile 0.7 while random depth's own operating point is its
    histogram at quantile 0.9 (0.9877); the verdict compares with random depth at quantile 0.7 (0.9793), so that
    row is shown too, named as the matched control."""
    from resnet_jax.reporting import skip_verdict

    def point(method, setting, accuracy, label):
        return {"method": method, "setting": setting, "accuracy": accuracy, "label": label}
    router = point("dense_router", "quantile 0.7", 0.9851, "activation-chosen depth, dense labelling")
    own = point("random", "as quantile 0.9", 0.9877, "random depth, the dense router's histogram")
    matched = point("random", "as quantile 0.7", 0.9793, "random depth, the dense router's histogram")
    full = point("full", "", 0.9892, "CNN-1")
    curves = {"best": [full, router, own], "test": [own, matched, point("random", "as quantile 0.5", 0.96, "r")]}
    rows = skip_verdict.table_points(curves)
    assert [(r["setting"], r["accuracy"]) for r in rows] == [("", 0.9892), ("quantile 0.7", 0.9851),
                                                             ("as quantile 0.7", 0.9793), ("as quantile 0.9", 0.9877)]
    assert rows[2]["label"].startswith("random depth matched to the dense router") and rows[3]["label"] == own["label"]
    same = {"best": [full, router, matched], "test": [matched]}  # its own point is the matched one: no second row
    assert skip_verdict.table_points(same) == [full, router, matched]


def test_recorded_paths_read_from_the_repository_root(tmp_path):
    """A record names paths as a reader types them in the repository: the checkout's own files relative to it,
    the folders beside it (shared data, runs) through '..'; committed results and the README hold no absolute
    path of the machine that made them."""
    root = tmp_path / "main"
    text = f'--workdir {tmp_path}/runs/cpu --data-root {tmp_path}/shared/data --out {root}/docs/results/x /opt/x'
    assert results.portable_text(text, root) == "--workdir ../runs/cpu --data-root ../shared/data --out docs/results/x /opt/x"
    assert results.recorded_path("../runs/cpu", root) == (tmp_path / "runs" / "cpu").resolve()
    absolute = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users)/")
    found = [str(p.relative_to(ROOT)) for p in [*readme_results.pages(ROOT), *sorted((ROOT / "docs" / "results").rglob("*"))]
             if p.is_file() and p.suffix in results.SUFFIXES and absolute.search(p.read_text())]
    assert found == []


def test_an_export_writes_the_runs_paths_relative_to_the_repository_root(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "ROOT", tmp_path / "main")
    (workdir / "cifar10-resnet34" / "config.json").write_text(json.dumps(
        {"task": "classification", "train": {"seed": 0}, "data": {"data_dir": f"{tmp_path}/shared/data/cifar10"}}))
    out = tmp_path / "main" / "docs" / "results" / "run"
    record = json.loads(results.export(workdir, out, command=f"resnet-jax results --workdir {workdir}").read_text())
    assert record["command"] == "resnet-jax results --workdir ../work" and record["workdir"] == "../work"
    assert json.loads((out / "cifar10-resnet34" / "config.json").read_text())["data"]["data_dir"] == \
        "../shared/data/cifar10"
    results.export(workdir, out, command="again")  # the same run, named relative to the root: replaced
