"""Never a silently wrong table: content-keyed results, validated configs, every mistake a clear error.

Each probe below was once a traceback or, worse, a wrong result with exit status 0.
"""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax import __version__, configs, ledger
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine
from resnet_jax.ablation.store import ResultStore, ablation_key, context
from resnet_jax.reporting import figures, markdown, results, study_report
from resnet_jax.studies import ablate, reproduce
from resnet_jax.training import runs
from tests.conftest import REPO, run_cli


# Probes through the CLI -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--set", "train.batch_size=-3"], "train.batch_size=-3 (valid: an integer >= 1)"),
    (["--set", "train.batch_size=0"], "train.batch_size=0 (valid: an integer >= 1)"),
    (["--set", "train.epochs=abc"], "train.epochs='abc' (valid: an integer >= 1)"),
    (["--set", "train.learning_rate=fast"], "train.learning_rate='fast' (valid: a finite number > 0)"),
    (["--set", "model.name=resnet99"], "model.name='resnet99' (valid: one of ['resnet18', 'resnet34'"),
    (["--set", "train.batch_size=100000"], "train.batch_size=100000 exceeds the 384 training examples"),
    (["--data-dir", "/no/such/folder"], "--data-dir /no/such/folder does not exist"),
    (["--set", "data.val_examples=512"], "data.val_examples=512 must be between 1 and 511"),
])
def test_a_bad_training_request_is_exit_2_and_leaves_no_workdir(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(workdir), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (workdir / "config.json").exists()


def test_a_failed_start_does_not_poison_the_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", workdir, "--set", "model.name=resnet99",
                   "--set", "train.epochs=1").returncode == 2
    fixed = run_cli("train", "--config", "synthetic-tiny", "--workdir", workdir, "--set", "train.epochs=1")
    assert fixed.returncode == 0, fixed.stderr  # no --force-new needed


def test_malformed_files_name_the_file_and_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  name: [resnet34\n")
    result = run_cli("train", "--config", str(config), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and f"{config}: line 3, column 1 is not valid YAML" in result.stderr
    with pytest.raises(abl.SpecError, match=r"spec.yaml: line 3, column 1 is not valid YAML"):
        spec = tmp_path / "spec.yaml"
        spec.write_text("- name: foo\n  select: {names: [conv1]\n")
        abl.load_specs(spec)


def test_a_truncated_zip_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.zip").write_bytes(b"PK\x03\x04 truncated")
    result = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path / "w"),
                     "--set", "data.name=cifar10", "--data-dir", str(data))
    assert result.returncode == 2 and f"{data / 'train.zip'} is not a readable zip archive" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train-seg", "--config", "synthetic-tiny", "--workdir", "w"], "'synthetic-tiny' is a classification config, "
                                                                    "not segmentation; presets of the segmentation"),
    (["ablate", "--workdir", "w", "--batch-size", "0"], "argument --batch-size: 0 is not positive"),
    (["ablate", "--workdir", "w", "--kind", "zero"], "argument --kind: invalid choice: 'zero'"),
    (["evaluate", "--workdir", "w"], "holds no run (no config.json)"),
    (["reproduce", "--preset", "smoke", "--workdir", "w", "--data-root", "/no/such"], "--data-root /no/such is not"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # the workdir "w" as a user types it, relative to where they are
    result = run_cli(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_evaluate_refuses_a_study_b_run_naming_the_task(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(configs.load_config("mnist-skip-smoke")))
    result = run_cli("evaluate", "--workdir", str(tmp_path))
    assert result.returncode == 2 and "this is a 'skip' run" in result.stderr


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"resnet-jax {__version__}"


def test_every_config_key_of_every_family_is_in_its_schema():
    for task in configs.TASKS:
        fam = configs.family(task)
        assert set(configs.flat_keys(fam.DEFAULTS)) == set(fam.SCHEMA), task
        for name in fam.PRESETS:
            assert configs.load_config(name)["task"] == task


# Results keyed by what produced them -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    result = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(workdir), "--set", "train.epochs=1")
    assert result.returncode == 0, result.stderr
    return workdir


def _table(workdir, stem):
    with (workdir / "ablation" / f"{stem}.csv").open() as fh:
        return list(csv.DictReader(fh))


def _spec_stem(spec, kind="zero-kernel"):
    """The table a spec file gets, from ``sha256sum``'s digest of the file (not from the code under test)."""
    name = f"spec-{spec.stem}-{hashlib.sha256(spec.read_bytes()).hexdigest()[:8]}"
    return name if kind == "zero-kernel" else f"{name}.{kind}"


def test_a_spec_that_changes_its_layers_is_recomputed_not_reused(tiny_run, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("- name: foo\n  select: {names: [conv1]}\n")
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=spec, n_examples=64), log=lambda s: None)
    first = _table(tiny_run, _spec_stem(spec))[0]
    spec.write_text("- name: foo\n  select: {patterns: ['layer4.*']}\n")
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=spec, n_examples=64), log=lambda s: None)
    second = _table(tiny_run, _spec_stem(spec))[0]
    assert first["layers"] == "conv1" and second["layers"].split() == [
        "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample", "layer4.1.conv1", "layer4.1.conv2"]
    # The independent truth: the weight-mask path of the engine on the same 64 images.
    run = runs.restore(tiny_run)
    test = run.test.take(64, seed=0)
    variables = jax.device_get(run.state.variables)
    layers = abl.catalogue(run.model, variables, input_shape=(1, *test.images.shape[1:]))
    truth = engine.evaluate(run.model, variables, [abl.Ablation("foo", "zero-kernel", tuple(second["layers"].split()))],
                            layers, test.images, test.labels, image_mean=run.state.image_mean,
                            image_std=run.state.image_std, method="weights", progress=False)[0]
    assert float(second["value"]) == truth.value


def test_a_store_reuses_rows_only_for_the_same_checkpoint_data_and_content(tmp_path):
    images, targets = np.zeros((4, 8, 8, 3), np.uint8), np.arange(4)

    class Metric:
        name = "accuracy"

    variables = {"params": {"w": np.ones(3, np.float32)}}
    one = context(variables, images, targets, Metric())
    assert one == context({"params": {"w": np.ones(3, np.float32)}}, images, targets, Metric())
    assert one["id"] != context({"params": {"w": np.full(3, 1.5, np.float32)}}, images, targets, Metric())["id"]
    assert one["id"] != context(variables, images[:3], targets[:3], Metric())["id"]
    a, b = abl.Ablation("foo", "zero-kernel", ("conv1",)), abl.Ablation("foo", "zero-kernel", ("layer4.0.conv1",))
    assert ablation_key(a) != ablation_key(b)
    assert ablation_key(a) == ablation_key(abl.Ablation("renamed", "zero-kernel", ("conv1",)))
    assert ablation_key(abl.Ablation("r", "rerandomize", ("conv1",), seed=1)) != \
           ablation_key(abl.Ablation("r", "rerandomize", ("conv1",), seed=2))
    (tmp_path / "results.jsonl").write_text(json.dumps({"key": ablation_key(a), "context": "other", "value": 1}) + "\n")
    assert ResultStore(tmp_path, one).load() == {}


def test_force_new_clears_everything_derived_from_the_old_run(tiny_run, tmp_path):
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir)
    ablate.ablate_workdir(workdir, ablate.Request(protocols=("baseline",), n_examples=16), log=lambda s: None)
    assert (workdir / "ablation" / "results.jsonl").is_file()
    result = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(workdir), "--set", "train.epochs=1",
                     "--force-new")
    assert result.returncode == 0, result.stderr
    assert not (workdir / "ablation").exists()
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1


def test_tables_state_their_checkpoint_and_data(tiny_run):
    ablate.ablate_workdir(tiny_run, ablate.Request(protocols=("baseline",), n_examples=32), log=lambda s: None)
    table = json.loads((tiny_run / "ablation" / "baseline.json").read_text())
    p = table["provenance"]
    assert p["n_examples"] == 32 and p["checkpoint"] == "best" and len(p["checkpoint_sha"]) == 16
    report = run_cli("report", "--workdir", str(tiny_run))
    assert report.returncode == 0, report.stderr
    assert f"parameter sha {p['checkpoint_sha']}" in (tiny_run / "report.md").read_text()


def test_batch_statistics_results_are_keyed_apart_from_running_ones(tiny_run):
    ablate.ablate_workdir(tiny_run, ablate.Request(protocols=("baseline",), n_examples=32), log=lambda s: None)
    ablate.ablate_workdir(tiny_run, ablate.Request(protocols=("baseline",), n_examples=32, batch_size=16,
                                                   batchnorm="batch"), log=lambda s: None)
    running = json.loads((tiny_run / "ablation" / "baseline.json").read_text())
    batch = json.loads((tiny_run / "ablation" / "baseline.bn-batch.json").read_text())
    assert batch["provenance"]["evaluation"] == {"batchnorm": "batch", "batch_size": 16, "batch_order_seed": 0}
    assert batch["provenance"]["id"] != running["provenance"]["id"] and "evaluation" not in running["provenance"]
    with pytest.raises(ValueError, match="divides the 32 examples"):
        ablate.ablate_workdir(tiny_run, ablate.Request(protocols=("baseline",), n_examples=32, batch_size=24,
                                                       batchnorm="batch"), log=lambda s: None)


# reproduce records what made it -----------------------------------------------------------------

def test_reproduce_refuses_a_workdir_of_another_preset(tmp_path):
    (tmp_path / "stages.json").write_text(json.dumps({"run": {"preset": "smoke", "data_root": None},
                                                      "stages": {"cifar-train": {}}}))
    with pytest.raises(reproduce.StageError, match="preset 'smoke'.*not preset 'cpu'.*--force-new"):
        reproduce.reproduce("cpu", tmp_path, only=["report"], log=lambda s: None)
    (tmp_path / "cifar10-resnet34").mkdir()
    record = reproduce.reproduce("cpu", tmp_path, only=["report"], force_new=True, log=lambda s: None)
    assert record["run"]["preset"] == "cpu" and set(record["stages"]) == {"report"}
    assert not (tmp_path / "cifar10-resnet34").exists()


def test_a_verify_stage_that_finds_a_mismatch_is_not_marked_done(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from resnet_jax.interop import verify

    monkeypatch.setattr(verify, "verify_workdir", lambda *a, **k: {"ok": False, "csv": "verify.csv", "rows": []})
    with pytest.raises(reproduce.StageError, match="disagree"):
        reproduce.reproduce("smoke", tmp_path, only=["verify"], log=lambda s: None)
    record = json.loads((tmp_path / "stages.json").read_text())["stages"]
    assert "finished" not in record.get("verify", {}) and ledger.interrupted(tmp_path) == ["verify"]


# Reports --------------------------------------------------------------------------------------

def test_a_baseline_at_or_below_chance_is_a_warning(tiny_run):
    table = {"chance": 0.1, "rows": [{"metric": "accuracy", "value": 0.3, "baseline": 0.0625}]}
    assert "baseline accuracy 0.0625 is at or below chance (0.1000)" in markdown.chance_warning(table)
    table["rows"][0]["baseline"] = 0.74
    assert markdown.chance_warning(table) is None
    assert markdown.chance_warning({"rows": table["rows"]}) is None  # Dice: no chance level
    ablate.ablate_workdir(tiny_run, ablate.Request(protocols=("shortcut",), n_examples=32), log=lambda s: None)
    written = json.loads((tiny_run / "ablation" / "shortcut.json").read_text())
    labels = runs.restore(tiny_run).test.take(32, seed=0).labels
    majority = np.bincount(labels).max() / len(labels)  # the model that learned nothing, counted by hand
    accuracy = written["rows"][0]["baseline"]
    p, z = accuracy, 1.959963984540054  # Wilson lower bound of the baseline's accuracy on 32 images
    low = (p + z * z / 64 - z * np.sqrt(p * (1 - p) / 32 + z * z / (4 * 32 * 32))) / (1 + z * z / 32)
    assert (written["warning"] is None) == (low > majority)
    assert markdown.chance_warning(written) == written["warning"]


def test_the_report_of_a_run_below_chance_opens_with_the_warning(tmp_path):
    row = {"mask": "conv1", "kind": "zero-kernel", "metric": "accuracy", "value": 0.05, "baseline": 0.0625,
           "delta": -0.0125, "n_examples": 64, "ci_low": 0.01, "ci_high": 0.1}
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "single.json").write_text(json.dumps({"rows": [row], "chance": 0.1}))
    text = markdown.write_report(tmp_path).read_text()
    assert text.splitlines()[2].startswith("**Warning:** the baseline accuracy 0.0625 is at or below chance")


def test_the_single_figure_legend_covers_no_point():
    rows = [{"mask": f"l{i}", "value": v, "ci_low": v - 0.01, "ci_high": v + 0.01, "baseline": 0.7, "metric": "accuracy"}
            for i, v in enumerate([0.1, 0.05, 0.3, 0.69, 0.7, 0.02])]
    fig = figures.single_figure(rows, {"l0"}, title="t")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    points = ax.transData.transform([(i, r["value"]) for i, r in enumerate(rows)])
    assert not any(legend.contains(x, y) for x, y in points)
    figures.pyplot().close(fig)


def test_the_elimination_path_legend_covers_no_point_and_equal_end_points_stay_apart():
    path = [{"units_removed": i + 1, "value": 0.70 - 0.001 * i, "params": 20e6 - 4e6 * i} for i in range(3)]
    summary = {"path": path, "split_chose_units": "val", "baseline": {"val": 0.70}, "max_drop": 0.01,
               "units": ["a", "b", "c"], "slim": {"test": 0.69}, "finetuned": {"test": 0.69, "step": 0},
               "random": [{"test": 0.69}] * 2, "one_shot": {"choices": ["a", "b", "c"], "test": 0.69},
               "metric": "accuracy", "full": {"params": 21e6}, "granularity": "unit", "form": "bias"}
    fig = figures.elimination_path_figure(summary)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    points = [xy for line in ax.get_lines() for xy in ax.transData.transform(line.get_xydata())]
    assert points and not any(legend.contains(x, y) for x, y in points)
    ends = [line.get_xydata()[0][0] for line in ax.get_lines()[2:]]  # slim, step 0 kept, random, one-shot at x = 3
    assert len(set(ends)) == len(ends) == 4 and all(abs(x - 3) < 0.5 for x in ends)
    figures.pyplot().close(fig)


def test_the_cross_check_section_opens_with_a_verdict_and_fits_the_page(tmp_path):
    path = tmp_path / "verify.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["protocol", "mask", "kind", "n_examples", "jax_value", "torch_value", "abs_delta",
                         "max_logit_deviation", "disagreements", "low_margin_examples", "ok"])
        writer.writerow(["single", "conv1", "zero-kernel", "1000", "0.1", "0.1", "0", "0.000274658203125", "0", "0",
                         "True"])
        writer.writerow(["single", "layer1.0.conv1", "zero-kernel", "1000", "0.5", "0.6", "0.1", "0.5", "3", "0",
                         "False"])
    (kind, verdict), (_, header, rows) = study_report._cross_check(path)
    assert kind == "p" and verdict.startswith("Verdict: PyTorch DISAGREES on 1 masks (2 masks on 1000 images; 3 ")
    assert header == ["protocol", "mask", "kind", "JAX", "PyTorch", "max |d logit|", "disagree", "ok"]
    assert rows[0][5] == "0.000275"


def test_reproduce_removes_nothing_from_a_workdir_that_records_no_run(tmp_path):
    (tmp_path / "cifar10-resnet34").mkdir()
    (tmp_path / "cifar10-resnet34" / "keep.txt").write_text("a user's file")
    record = reproduce.reproduce("cpu", tmp_path, only=["report"], log=lambda s: None)
    assert record["run"]["preset"] == "cpu"
    assert (tmp_path / "cifar10-resnet34" / "keep.txt").is_file()
    (tmp_path / "stages.json").write_text("{not json")
    with pytest.raises(reproduce.StageError, match="stages.json is not valid JSON"):
        reproduce.reproduce("cpu", tmp_path, only=["report"], log=lambda s: None)


@pytest.mark.parametrize("override, key, value", [
    ("train.learning_rate=1e-3", ("train", "learning_rate"), 0.001),  # YAML 1.1 alone reads this as text
    ("train.epochs=3", ("train", "epochs"), 3),
    ("data.max_test_examples=null", ("data", "max_test_examples"), None),
])
def test_overrides_are_typed(override, key, value):
    config = configs.load_config("cifar10-resnet34-cpu", [override])
    assert config[key[0]][key[1]] == value


def test_id_prefixes_must_name_every_split_in_use():
    with pytest.raises(configs.ConfigError, match=r"no prefixes for the split\(s\) \['test'\]"):
        configs.load_config("sunnybrook-pspnet34-cpu", ["data.id_prefixes={train: [SCD0000101]}"])
    with pytest.raises(configs.ConfigError, match="data.id_prefixes='SCD' .*lists of id prefixes"):
        configs.load_config("sunnybrook-pspnet34-cpu", ["data.id_prefixes=SCD"])


def test_stored_configs_of_older_runs_are_read_as_their_task():
    skip = configs.load_config("mnist-skip-smoke")
    seg = configs.load_config("acdc-pspnet34-smoke")
    for config, task in ((skip, "skip"), (seg, "segmentation"), (configs.load_config("synthetic-tiny"), "classification")):
        old = {k: v for k, v in config.items() if k not in ("task", "scale")}
        assert configs.complete(old)["task"] == task
        assert configs.diff(old, config) == []


@pytest.mark.parametrize("command, hint", [("ablate", "finished masks are kept and skipped"),
                                           ("train", "resume from the last checkpoint")])
def test_an_interrupted_command_says_how_to_resume(monkeypatch, capsys, tmp_path, command, hint):
    from resnet_jax import cli

    def interrupted(args):
        raise KeyboardInterrupt

    parser = cli.build_parser()
    args = ["--config", "synthetic-tiny"] if command == "train" else []
    namespace = parser.parse_args([command, *args, "--workdir", str(tmp_path)])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: namespace})())
    namespace.func = interrupted
    assert cli.main([]) == 130
    err = capsys.readouterr().err
    assert f"resnet-jax {command}: interrupted; " in err and hint in err


# Lost or unreadable data ---------------------------------------------------------------------------

def _results(names):
    """Engine results of the shape the store keeps (a literal stand-in for a sweep's chunk)."""
    return [engine.Result(name=n, kind="zero-kernel", layers=(n,), value=0.5, ci_low=0.4, ci_high=0.6, loss=1.0,
                          n_examples=4, per_example={"correct": np.array([1, 0, 1, 1], bool)}, seconds=0.1)
            for n in names]


def test_a_torn_last_line_is_set_aside_and_its_row_recomputed_not_lost(tmp_path):
    store = ResultStore(tmp_path, {"id": "ctx"})
    ablations = {(n, "zero-kernel", (n,)): abl.Ablation(n, "zero-kernel", (n,)) for n in ("conv1", "fc")}
    store.append("single", _results(["conv1", "fc"]), ablations, metric="accuracy")
    whole = store.path.read_bytes()
    store.path.write_bytes(whole[:-300])  # `truncate -s -300`: the last row lost its tail and its newline
    with pytest.warns(RuntimeWarning, match=r"line\(s\) 2 did not parse.*results.jsonl.torn-1"):
        done = store.load()
    assert set(done) == {ablation_key(ablations[("conv1", "zero-kernel", ("conv1",))])}
    aside = tmp_path / "results.jsonl.torn-1"
    assert store.path.read_bytes() + aside.read_bytes() == whole[:-300]  # nothing deleted, only moved
    store.append("single", _results(["fc"]), ablations, metric="accuracy")  # the mask, recomputed
    assert len(store.load()) == 2 and store.path.read_bytes().count(b"\n") == 2


def test_ablate_resumes_after_a_torn_store_line(tmp_path):
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path)).returncode == 0
    args = ("ablate", "--workdir", str(tmp_path), "--protocol", "shortcut", "--n-examples", "32")
    assert run_cli(*args).returncode == 0
    path = tmp_path / "ablation" / "results.jsonl"
    path.write_bytes(path.read_bytes()[:-300])
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "did not parse" in again.stderr and "Traceback" not in again.stderr
    table = json.loads((tmp_path / "ablation" / "shortcut.json").read_text())
    assert len(table["rows"]) == 3 and all("decision" in r for r in table["rows"])
    # Two processes on one run: the second waits for the store, then reads what the first stored.
    single = ("ablate", "--workdir", str(tmp_path), "--protocol", "single", "--n-examples", "32")
    first = subprocess.Popen([sys.executable, "-m", "resnet_jax.cli", *single], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    second = run_cli(*single)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err, second.stderr)
    computed = [line for line in (out + second.stdout).splitlines() if "masks already done; evaluating" in line]
    assert len(computed) == 1, computed  # one of them scored the masks, the other read them


def test_a_damaged_checkpoint_is_one_line_naming_the_intact_ones(tmp_path):
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path),
                   "--set", "train.epochs=2").returncode == 0
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2
    latest = tmp_path / "checkpoints" / str(steps[-1])
    data = max((p for p in latest.rglob("*") if p.is_file() and "d" == p.parent.name), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # `truncate` one data file
    for command in (("evaluate", "--checkpoint", "latest"), ("ablate", "--checkpoint", "latest", "--protocol",
                                                                 "shortcut", "--n-examples", "16")):
        result = run_cli(*command[:1], "--workdir", str(tmp_path), *command[1:])
        assert result.returncode == 2 and "resnet_jax/" not in result.stderr, result.stderr  # none of our frames
        error = [line for line in result.stderr.splitlines() if line.startswith("resnet-jax")]
        assert len(error) == 1 and len(error[0]) < 1000, result.stderr  # one line, not a TensorStore dump
        assert f"checkpoint {steps[-1]}" in error[0] and f"--checkpoint {steps[0]}" in error[0]
    earlier = run_cli("evaluate", "--workdir", str(tmp_path), "--checkpoint", str(steps[0]))
    assert earlier.returncode == 0, earlier.stderr
    wrong = run_cli("evaluate", "--workdir", str(tmp_path), "--checkpoint", "7")
    assert wrong.returncode == 2 and f"kept steps: {steps}" in wrong.stderr


# Misleading output ---------------------------------------------------------------------------------

def test_layers_of_a_segmentation_preset_use_its_image_size():
    small = run_cli("layers", "--config", "acdc-pspnet34-smoke")
    large = run_cli("layers", "--config", "acdc-pspnet34-cpu")
    assert small.returncode == 0 and large.returncode == 0, small.stderr + large.stderr
    total = lambda out: int(re.search(r"([\d,]+) MACs per image", out).group(1).replace(",", ""))  # noqa: E731
    assert 9 * total(large.stdout) == 64 * total(small.stdout)  # 128 px against 48 px: every conv map (128/48)^2 larger
    explicit = run_cli("layers", "--config", "acdc-pspnet34-cpu", "--image-size", "48")
    assert total(explicit.stdout) == total(small.stdout)


def test_without_network_a_tfds_load_fails_at_once_and_names_data_dir(monkeypatch):
    import time

    from resnet_jax.data import images

    monkeypatch.setattr(images, "network_reachable", lambda *a, **k: False)
    monkeypatch.setattr(images, "_prepared", lambda builder: False)
    start = time.monotonic()
    with pytest.raises(images.DataError, match="--data-dir"):
        images.load_tfds("cifar10", "test")
    assert time.monotonic() - start < 60  # it used to retry downloads for 213 s


def test_sigterm_stops_ablate_with_the_resume_hint_and_a_rerun_finishes(tmp_path):
    import signal
    import time

    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path)).returncode == 0
    # 190 pairs on 128 images: a sweep of many seconds, so an interrupt held back (see the next test) and delivered
    # again a second later still lands mid-sweep (on 32 images a warm sweep finished within that second). An empty
    # compilation cache: the signal often lands as a program is compiled (it crashed the process as it exited)
    args = ["ablate", "--workdir", str(tmp_path), "--protocol", "pairs", "--n-examples", "128", "--batch-size", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESNET_JAX_COMPILE_CACHE": str(tmp_path / "compiled")}
    proc = subprocess.Popen([sys.executable, "-m", "resnet_jax.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    store = tmp_path / "ablation" / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (store.is_file() and store.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)  # the baseline and a first chunk are stored: the sweep is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "interrupted; rerun the same command" in err, err
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((tmp_path / "ablation" / "pairs.json").read_text())["rows"]) == 190


def test_an_interrupt_waits_outside_garbage_collection_and_the_jax_compiler():
    """Python drops an exception raised in a garbage-collector callback, and an interrupt raised as JAX's compiler
    returns an executable crashes the process as it exits; anywhere else it is raised at once."""
    import gc

    from resnet_jax import cli

    seen = []
    callback = lambda phase, info: seen.append(cli._unsafe_to_raise(sys._getframe()))  # noqa: E731
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert seen and all(seen)
    compiler = os.path.join("site-packages", cli.JAX_COMPILER)  # where JAX's compiler module lies in any install
    scope = {"check": lambda: cli._unsafe_to_raise(sys._getframe())}
    exec(compile("def compile_and_load():\n    return check()\n", compiler, "exec"), scope)
    assert scope["compile_and_load"]() is True
    assert cli._unsafe_to_raise(sys._getframe()) is False


def test_evaluate_that_cannot_keep_its_score_prints_it_first(tmp_path):
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path)).returncode == 0
    (tmp_path / "evaluation-latest.json").mkdir()  # unwritable for any user, root included (a read-only run)
    result = run_cli("evaluate", "--workdir", str(tmp_path))
    assert result.returncode == 2 and "could not be kept" in result.stderr, result.stderr
    assert json.loads(result.stdout)["test_accuracy"] >= 0


def test_spec_tables_say_the_kind_they_computed_and_never_replace_each_other(tiny_run, tmp_path):
    first, second = tmp_path / "foo_conv1.yaml", tmp_path / "bar.yaml"
    first.write_text("- name: foo\n  select: {names: [layer1.0.conv2]}\n")  # zero-kernel, the default kind
    second.write_text("- name: bar\n  kind: zero-branch\n  select: {roles: [shortcut]}\n")
    quiet = lambda s: None  # noqa: E731
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=second, n_examples=64), log=quiet)  # the spec's own kind
    meta = json.loads((tiny_run / "ablation" / f"{_spec_stem(second, 'zero-branch')}.json").read_text())
    assert meta["title"] == f"{_spec_stem(second)} (zero-branch)"
    assert {r["kind"] for r in meta["rows"]} == {"zero-branch"}
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=first, kind="zero-branch", n_examples=64),
                          log=quiet)  # --kind overrides
    overridden = json.loads((tiny_run / "ablation" / f"{_spec_stem(first, 'zero-branch')}.json").read_text())
    assert overridden["title"] == f"{_spec_stem(first)} (zero-branch)"
    assert overridden["rows"][0]["kind"] == "zero-branch"
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=first, n_examples=64), log=quiet)
    own = json.loads((tiny_run / "ablation" / f"{_spec_stem(first)}.json").read_text())
    assert own["rows"][0]["kind"] == "zero-kernel" and own["rows"][0]["key"] != overridden["rows"][0]["key"]
    assert (tiny_run / "ablation" / f"{_spec_stem(second, 'zero-branch')}.json").is_file()  # the other file's table
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=first, protocols=["shortcut"], n_examples=64), log=quiet)
    assert (tiny_run / "ablation" / "shortcut.csv").is_file()  # --protocol with --spec: both run


def test_spec_tables_of_two_files_or_two_kinds_never_replace_each_other(tiny_run, tmp_path):
    """Two files of one name, and one file under another --kind, each keep their own table (files, report section,
    exported copy); the same file and kind again resume the same table."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "specs.yaml", tmp_path / "b" / "specs.yaml"
    first.write_text("- name: first\n  select: {names: [layer1.0.conv2]}\n")
    second.write_text("- name: second\n  select: {roles: [shortcut]}\n")
    adir, quiet = tiny_run / "ablation", lambda s: None  # noqa: E731
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=first, n_examples=64), log=quiet)
    kept = {s: (adir / f"{_spec_stem(first)}{s}").read_bytes() for s in (".csv", ".json")}
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=second, n_examples=64), log=quiet)
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=first, kind="zero-branch", n_examples=64), log=quiet)
    assert {s: (adir / f"{_spec_stem(first)}{s}").read_bytes() for s in (".csv", ".json")} == kept
    tables = {stem: _table(tiny_run, stem) for stem in (_spec_stem(first), _spec_stem(second),
                                                        _spec_stem(first, "zero-branch"))}
    assert [[r["mask"] for r in rows] for rows in tables.values()] == [["first"], ["second"], ["first"]]
    assert tables[_spec_stem(first, "zero-branch")][0]["kind"] == "zero-branch"
    lines = []
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=first, kind="zero-branch", n_examples=64),
                          log=lines.append)  # the same file and kind: the same table, nothing evaluated again
    assert f"wrote {adir / _spec_stem(first, 'zero-branch')}.csv" in lines
    assert not any("evaluating" in line for line in lines), lines
    report = markdown.write_report(tiny_run).read_text()
    headings = [f"## {_spec_stem(first)} (zero-kernel)", f"## {_spec_stem(second)} (zero-kernel)",
                f"## {_spec_stem(first)} (zero-branch)"]
    assert all(heading in report for heading in headings), report
    results.export(tiny_run, tmp_path / "exported", command="test")
    assert all((tmp_path / "exported" / "ablation" / f"{stem}.csv").is_file() for stem in tables)


# A model that learned nothing ------------------------------------------------------------------------

def test_competence_against_literal_trivial_models():
    from resnet_jax import metrics

    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)  # the majority class is 60 %
    assert metrics.trivial_reference(metrics.Accuracy(), labels)[0] == 0.6
    assert metrics.competence_warning(metrics.Accuracy(), 0.62, labels) is not None  # not clearly above 0.6
    assert metrics.competence_warning(metrics.Accuracy(), 0.9, labels) is None
    masks = np.zeros((4, 10, 10), np.int32)
    masks[:, :5, :5] = 2  # class 2 covers a quarter of the pixels: calling every pixel 2 scores 2*25/(25+100)
    dice = metrics.Dice(num_classes=4, classes=(2,))
    assert metrics.trivial_reference(dice, masks)[0] == pytest.approx(0.4)
    assert metrics.competence_warning(dice, 0.42, masks) is not None
    assert metrics.competence_warning(dice, 0.8, masks) is None


def test_a_model_that_learned_nothing_is_flagged_and_not_eliminated_unless_forced(tmp_path):
    run = tmp_path / "untrained"
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(run), "--set", "train.epochs=1",
                   "--set", "train.learning_rate=1e-9").returncode == 0
    refused = run_cli("eliminate", "--workdir", str(run), "--out", str(tmp_path / "slim"))
    assert refused.returncode == 2 and "has not learned the task" in refused.stderr
    assert "--force-untrained" in refused.stderr and not (tmp_path / "slim" / "config.json").exists()
    forced = run_cli("eliminate", "--workdir", str(run), "--out", str(tmp_path / "slim"), "--force-untrained",
                     "--random-draws", "0")
    assert forced.returncode == 0, forced.stderr
    assert "has not learned" in json.loads((tmp_path / "slim" / "elimination" / "summary.json").read_text())["warning"]
    swept = run_cli("ablate", "--workdir", str(run), "--protocol", "shortcut", "--n-examples", "64")
    assert swept.returncode == 0 and "WARNING" in swept.stdout
    assert "has not learned" in json.loads((run / "ablation" / "shortcut.json").read_text())["warning"]


# Data that does not fit the preset ---------------------------------------------------------------------

def test_data_that_is_not_the_presets_dataset_is_refused_before_anything_is_written(tmp_path):
    from tests.conftest import shared_dataset

    mnist = shared_dataset("mnist")
    workdir = tmp_path / "n14"
    wrong = run_cli("train", "--config", "cifar10-resnet34-smoke", "--workdir", str(workdir), "--data-dir", str(mnist))
    assert wrong.returncode == 2 and "not 'cifar10'" in wrong.stderr and "images (28, 28, 1)" in wrong.stderr
    assert "--set data.name=" in wrong.stderr and not workdir.exists()
    meant = run_cli("train", "--config", "cifar10-resnet34-smoke", "--workdir", str(workdir), "--data-dir", str(mnist),
                    "--set", "data.name=my-digits", "--set", "data.val_examples=32",
                    "--set", "model.name=resnet_tiny", "--set", "model.stem=cifar")  # the data is the point: a small model
    assert meant.returncode == 0, meant.stderr
    read = json.loads((workdir / "dataset.json").read_text())
    assert read["train"]["class_names"] == list("0123456789") and read["train"]["image_shape"] == [28, 28, 1]
    assert len(read["test"]["sha256"]) == 64 and sum(read["test"]["class_counts"]) == read["test"]["n"]


def test_an_eleventh_class_folder_is_not_read_as_cifar10(tmp_path):
    from PIL import Image

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "zebra"]
    for split in ("train", "test"):
        for c in classes:
            folder = tmp_path / "data" / split / c
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((32, 32, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    from resnet_jax.data import images

    with pytest.raises(images.DataError, match=r"11 classes .* not 'cifar10' \(10 classes"):
        images.load_split("cifar10", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert images.load_split("my-animals", "test", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache").num_classes == 11


def test_reinit_masks_load_the_runs_initial_parameters_from_protocols_and_spec_files(tiny_run, tmp_path):
    """Without the initial parameters a reinit mask cannot be built, so both ways of asking for one must load them."""
    spec = tmp_path / "again.yaml"
    spec.write_text("- name: again\n  kind: reinit\n  select: {names: [layer1.0.conv2]}\n")
    quiet = lambda s: None  # noqa: E731
    ablate.ablate_workdir(tiny_run, ablate.Request(protocols=["shortcut"], kind="reinit", n_examples=32), log=quiet)
    ablate.ablate_workdir(tiny_run, ablate.Request(spec_file=spec, n_examples=32), log=quiet)
    for table in ("shortcut.reinit", _spec_stem(spec, "reinit")):
        rows = json.loads((tiny_run / "ablation" / f"{table}.json").read_text())["rows"]
        assert rows and all(r["kind"] == "reinit" and 0 <= r["value"] <= 1 for r in rows), table


class _InterruptsWhileCollected:
    """Sends ``signum`` to this process from ``__del__``, where Python prints and drops an exception, as it does
    in a garbage-collector callback."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the first, dropped interrupt
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_an_interrupt_dropped_where_python_ignores_exceptions_comes_again(name):
    import signal
    import time

    from resnet_jax.cli import _Termination

    signum = getattr(signal, name)
    terminate = _Termination()
    previous = signal.signal(signum, terminate)
    try:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt, match=f"signal {signum}"):
            _InterruptsWhileCollected(signum)
            time.sleep(60)
        assert time.monotonic() - start < 50
    finally:
        assert terminate.handled() == signum
        signal.signal(signum, previous)
    assert not terminate.handled()


def test_a_held_interrupt_is_raised_in_one_of_the_short_gaps_between_long_waits():
    """A command that compiles programs one after another spends most of its time where an interrupt must wait
    (here 120 to 240 ms in, 20 ms out). Delivered again once a second, it missed every gap of these ten seconds
    (as it missed a sweep's, which then ended 143 without "interrupted"); every 50 ms, within the first few."""
    import random
    import signal
    import time

    from resnet_jax.cli import _Termination

    sizes = random.Random(0)

    def waiting(first, seconds):  # as JAX's compiler: the interrupt is held in here
        if first:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(seconds)

    waiting.__code__ = waiting.__code__.replace(co_name="__del__")
    terminate = _Termination()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(KeyboardInterrupt, match=f"signal {signal.SIGTERM}"):  # not: fifty gaps missed
            for gaps in range(1, 51):  # ten seconds
                waiting(gaps == 1, seconds=sizes.uniform(0.12, 0.24))  # programs of varied sizes
                end = time.monotonic() + 0.02
                while time.monotonic() < end:  # the gap: Python code, where it may be raised
                    pass
    finally:
        terminate.handled()
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the first, dropped interrupt
def test_ctrl_c_is_held_and_delivered_again_as_sigterm_is_and_ends_with_130(monkeypatch, capsys, tmp_path):
    """With Python's own SIGINT handler a Ctrl-C that lands in a ``__del__`` is dropped and the command runs on
    (here: a minute's sleep, then exit 0); the command line holds it and raises it a second later."""
    import signal
    import time

    from resnet_jax import cli

    def interrupted(args):
        _InterruptsWhileCollected(signal.SIGINT)
        time.sleep(60)
        return 0

    namespace = cli.build_parser().parse_args(["ablate", "--workdir", str(tmp_path)])
    namespace.func = interrupted
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: namespace})())
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive shell starts it
    try:
        start = time.monotonic()
        assert cli.main([]) == 130
        assert time.monotonic() - start < 50
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back as it was
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "resnet-jax ablate: interrupted; " in capsys.readouterr().err


def test_an_interrupt_delivered_again_while_the_first_is_caught_does_not_escape_the_catch():
    """A delivery sent just before the interrupt was caught reaches the handler inside the code that catches it;
    raised there, it escaped the command, and Python ended the process as killed by SIGINT (-2) after it had
    printed its resume hint (seen once in a CI run of the SIGTERM test: exit -2, not 143)."""
    import signal
    import time

    from resnet_jax.cli import _Termination

    terminate = _Termination()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # raised in here
        try:
            raise KeyboardInterrupt(f"signal {signal.SIGTERM}")
        except KeyboardInterrupt:  # as the command line catches it: the late delivery lands in here
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                end = time.monotonic() + 0.2
                while time.monotonic() < end:  # Python code, where a signal's handler runs
                    pass
            except KeyboardInterrupt:
                pytest.fail("the late delivery was raised inside the code that catches the first interrupt")
            assert terminate.handled() == signal.SIGTERM
    finally:
        terminate.handled()
        signal.signal(signal.SIGTERM, previous)


def test_an_interrupt_is_not_raised_inside_code_run_from_a_string_and_the_command_ends_143(tmp_path):
    """Raised inside ``exec`` or ``eval`` of a string (dataclasses and annotations run them), an interrupt marks
    the interpreter to end as killed by SIGINT even when the command catches it: the SIGTERM test's exit -2, not
    143, in 5 of 24 runs under load. Held there and raised just after, it ends the command as it says."""
    program = "\n".join([
        "import sys, time",
        "from resnet_jax import cli",
        "def work(args):  # a command whose work runs code from a string when the interrupt comes",
        "    exec('import os, signal, time\\nos.kill(os.getpid(), signal.SIGTERM)\\nend = time.monotonic() + 0.3\\n'",
        "         'while time.monotonic() < end: pass')",
        "    end = time.monotonic() + 30",
        "    while time.monotonic() < end:  # raised here, after the exec",
        "        pass",
        "    return 0",
        "cli._presets = work",
        "sys.exit(cli.main(['presets']))",
    ])
    (tmp_path / "interrupted_in_exec.py").write_text(program)  # run with -m, as `python -m resnet_jax.cli` runs
    done = subprocess.run([sys.executable, "-m", "interrupted_in_exec"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "resnet-jax presets: interrupted" in done.stderr, done.stderr[-2000:]
    assert done.returncode == 143, (done.returncode, done.stderr[-2000:])  # -2: ended as killed by SIGINT
