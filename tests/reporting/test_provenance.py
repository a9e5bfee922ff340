"""Provenance that reruns: every stage names its command and commit (or says its record lacks them), the preset and
seeds come from the workdir's ledger, every run has a dataset digest or is named as lacking one, and an export from
uncommitted code is refused unless asked for, and then stated (issue 41 item 6)."""

import json
import subprocess

import pytest

from resnet_jax import ledger
from resnet_jax.reporting import readme_results, results
from tests.conftest import run_cli
from tests.reporting.test_results import _planted_run

EARLIER = "command not recorded (made by an earlier version)"


@pytest.fixture
def clean(monkeypatch):
    """A checkout whose tracked code matches its commit (this one may hold a colleague's edits)."""
    monkeypatch.setattr(ledger, "code_changes", lambda root=None: [])


def _old_and_new_stages(work):
    """A reproduce workdir of preset cpu: cifar-train finished by a version that recorded neither command nor code,
    cifar-ablate by this one, with code that differed from its commit."""
    _planted_run(work / "cifar10-resnet34", seed=0, stage3=0.7)
    _planted_run(work / "cifar10-resnet34-seed1", seed=1, stage3=0.8)
    (work / "mnist-skip").mkdir()
    (work / "mnist-skip" / "config.json").write_text(json.dumps({"task": "skip"}))  # Study B: no dataset.json
    ledger.update(work, lambda r: r.update(run={"preset": "cpu", "data_root": "../shared/data"}, stages={
        "cifar-train": {"outputs": ["cifar10-resnet34"], "result": {"seeds": 2}, "seconds": 600.0,
                        "finished": "2026-12-03 15:00:00"}}))
    ledger.finish(work, "cifar-ablate", {"seeds": 2}, seconds=60.0)
    ledger.update(work, lambda r: r["stages"]["cifar-ablate"].update(
        code={"version": "0.1.0", "commit": "abcdef1234567890", "dirty": True}, command="resnet-jax reproduce --x"))


def test_an_export_names_what_old_stages_lack_the_preset_seeds_and_runs_without_a_digest(tmp_path, clean):
    work = tmp_path / "work"
    _old_and_new_stages(work)
    record = json.loads(results.export(work, tmp_path / "out", command="resnet-jax results").read_text())
    old, new = record["stages"]["cifar-train"], record["stages"]["cifar-ablate"]
    assert old["command"] is None and old["code"] is None
    assert old["gaps"] == [EARLIER, "code version and commit not recorded (made by an earlier version)"]
    assert new["command"] == "resnet-jax reproduce --x" and "gaps" not in new
    assert (record["preset"], record["seeds"]) == ("cpu", 2)  # from the ledger, though the call named neither
    assert record["datasets"]["mnist-skip"] == results.NO_DIGEST
    assert record["datasets"]["cifar10-resnet34"] == {"train": "tr0", "test": "te"}
    line = readme_results.budget_line(tmp_path / "out")
    assert "preset `cpu`, 2 seeds" in line
    assert f"cifar-train 10.0 min: {EARLIER}, code version and commit not recorded" in line
    assert ("cifar-ablate 1.0 min: commit abcdef1234 with uncommitted changes to tracked code, run as "
            "`resnet-jax reproduce --x`") in line
    assert "No dataset digest recorded for mnist-skip." in line


def test_a_committed_record_of_an_earlier_version_renders_what_it_lacks():
    """docs/results/cpu as committed: preset and seeds null, Study B without digests, the training stages of an
    earlier version without a command; the block states each instead of leaving it out."""
    folder = results.ROOT / "docs" / "results" / "cpu"
    record = json.loads((folder / "provenance.json").read_text())
    assert record["preset"] is None and "mnist-skip" not in record["datasets"]  # as an earlier export wrote it
    line = readme_results.budget_line(folder, "classification")
    assert "preset `cpu`, 2 seeds" in line
    assert f"cifar-train 29.4 min, cifar-ablate 1.4 min: commit c08384106c, {EARLIER}" in line
    assert "No dataset digest recorded for mnist-skip, mnist-skip-seed1." in readme_results.budget_line(folder, "skip")


def test_an_export_from_uncommitted_code_is_refused_unless_allowed_and_then_stated(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    _old_and_new_stages(work)
    monkeypatch.setattr(ledger, "code_changes", lambda root=None: ["resnet_jax/ledger.py"])
    with pytest.raises(results.ExportError, match=r"uncommitted changes to tracked code \(resnet_jax/ledger.py\)"):
        results.export(work, tmp_path / "out", command="c")
    assert not (tmp_path / "out").exists()
    refused = run_cli("results", "--workdir", str(work), "--out", str(tmp_path / "out"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--allow-dirty" in refused.stderr and not (tmp_path / "out").exists()
    done = run_cli("results", "--workdir", str(work), "--out", str(tmp_path / "out"), "--allow-dirty")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["allow_dirty"] is True and record["uncommitted"] == ["resnet_jax/ledger.py"]
    assert "(`--allow-dirty`: uncommitted resnet_jax/ledger.py)" in readme_results.budget_line(tmp_path / "out")


def test_code_changes_are_tracked_code_only(tmp_path):
    """Uncommitted prose and committed results (docs/, *.md) leave the code clean, so one export does not make the
    next refuse; an edited source file or a staged one does not; untracked files are not the commit's code."""
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    for name in ("pkg/a.py", "pkg/b.py", "docs/results/x/provenance.json", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    for name in ("docs/results/x/provenance.json", "README.md", "untracked.py"):
        (tmp_path / name).write_text("1\n")
    assert ledger.code_changes(tmp_path) == []
    (tmp_path / "pkg" / "a.py").write_text("1\n")
    (tmp_path / "pkg" / "b.py").write_text("1\n")
    git("add", "pkg/b.py")
    assert ledger.code_changes(tmp_path) == ["pkg/a.py", "pkg/b.py"]
    assert ledger.code_changes(tmp_path / "nowhere") is None


def test_a_benchmark_that_reads_a_trained_run_names_the_command_that_made_it(tmp_path):
    """benchmarks/record.py records, beside the sweep's own command, the reproduce command whose stage declared
    the run it read; the block says it, or that no command is recorded."""
    import sys

    from resnet_jax.reporting import benchmark_results
    sys.path.insert(0, str(results.ROOT / "benchmarks"))
    import record

    work = tmp_path / "work"
    (work / "cifar10-resnet34").mkdir(parents=True)
    ledger.update(work, lambda r: r.update(stages={"cifar-train": {"outputs": ["cifar10-resnet34"]}}))
    ledger.finish(work, "cifar-train", {"seeds": 1}, seconds=1.0)
    ledger.update(work, lambda r: r["stages"]["cifar-train"].update(command="resnet-jax reproduce --only cifar-train"))
    needs = record.trained_run(str(work / "cifar10-resnet34"))
    assert needs["made_by"] == "resnet-jax reproduce --only cifar-train"
    assert record.trained_run(str(tmp_path / "alone"))["made_by"].startswith("not recorded")
    entry = {"command": "python benchmarks/ablation_sweep.py --workdir ../runs/x", "seconds": 1.0,
             "finished": "2026-12-05T05:00:00+00:00", "code": {"version": "0.1.0", "commit": "0123456789ab"},
             "machine": {"cpu": "CPU", "cores": 2, "backend": "cpu", "device_count": 1, "device_kind": "cpu"}}
    assert f"The command that made its trained run is {results.NOT_RECORDED}." in benchmark_results.measured(entry)
    said = benchmark_results.measured({**entry, "needs": needs})
    assert "was made by `resnet-jax reproduce --only cifar-train`." in said
    committed = json.loads((results.ROOT / "docs/results/benchmarks/provenance.json").read_text())["benchmarks"]
    assert committed["ablation_sweep"]["needs"]["made_by"].startswith("resnet-jax reproduce --preset cpu")
