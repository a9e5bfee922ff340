"""The workdir ledger: a stage runs once per inputs, and clearing removes exactly what stages declared."""

import json
import sys

import pytest

from resnet_jax import ledger
from resnet_jax.studies import reproduce
from resnet_jax.training import core


def _stage(workdir, calls, name="s", inputs=None, outputs=("out.txt",), fail=False, **kw):
    def run():
        calls.append(name)
        for out in outputs:
            (workdir / out).write_text(name)
        if fail:
            raise RuntimeError("stopped")
        return {"value": len(calls)}
    return ledger.Stage(name, run, outputs, inputs, **kw)


def test_a_stage_runs_once_per_inputs_and_an_always_stage_every_time(tmp_path):
    calls, log = [], []
    assert ledger.run(tmp_path, _stage(tmp_path, calls, inputs={"seeds": 1}), log.append) == {"value": 1}
    assert ledger.run(tmp_path, _stage(tmp_path, calls, inputs={"seeds": 1}), log.append) == {"value": 1}  # stored result
    assert calls == ["s"] and log[-1] == "s: done earlier, skipped"
    assert ledger.run(tmp_path, _stage(tmp_path, calls, inputs={"seeds": 2}), log.append) == {"value": 2}  # other inputs
    assert "made from other inputs, running again" in log[-2]
    ledger.run(tmp_path, _stage(tmp_path, calls, name="report", always=True), log.append)
    ledger.run(tmp_path, _stage(tmp_path, calls, name="report", always=True), log.append)
    assert calls.count("report") == 2


def test_inputs_given_as_a_function_are_read_when_the_stage_runs(tmp_path):
    """A stage that reads whatever earlier stages trained (e.g. readings over the trained tasks) runs again once
    another stage of a later call (or of the same one) has added an input."""
    calls = []
    present = lambda: {"trained": sorted(p.name for p in tmp_path.glob("*.run"))}  # noqa: E731
    readings = _stage(tmp_path, calls, name="readings", inputs=present)
    ledger.run(tmp_path, readings, lambda _: None)
    ledger.run(tmp_path, readings, lambda _: None)
    assert calls == ["readings"]
    ledger.run(tmp_path, _stage(tmp_path, calls, name="train", outputs=("acdc.run",)), lambda _: None)
    ledger.run(tmp_path, readings, lambda _: None)  # the same Stage object: its inputs are read anew
    assert calls == ["readings", "train", "readings"]
    assert ledger.done(tmp_path, "readings")["inputs_digest"] == ledger.digest({"trained": ["acdc.run"]})


def test_an_interrupted_stage_is_not_done_but_its_outputs_are_cleared(tmp_path):
    calls = []
    ledger.run(tmp_path, _stage(tmp_path, calls, name="a", outputs=("a.txt", "a.json")), lambda s: None)
    with pytest.raises(RuntimeError):
        ledger.run(tmp_path, _stage(tmp_path, calls, name="b", outputs=("b.npz",), fail=True), lambda s: None)
    assert ledger.done(tmp_path, "a") and ledger.done(tmp_path, "b") is None
    (tmp_path / "notes.txt").write_text("a user's file")
    assert ledger.clear(tmp_path) == ["a.json", "a.txt", "b.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stages.json.lock", "notes.txt", "stages.json"]
    assert json.loads((tmp_path / "stages.json").read_text())["stages"] == {}


def test_clearing_some_stages_removes_only_what_they_declared_and_forgets_only_them(tmp_path):
    calls = []
    for name in ("a", "b"):
        ledger.run(tmp_path, _stage(tmp_path, calls, name=name, outputs=(f"{name}.txt",)), lambda s: None)
    assert ledger.clear(tmp_path, stages=["a", "never-ran"]) == ["a.txt"]
    assert not (tmp_path / "a.txt").exists() and (tmp_path / "b.txt").is_file()
    assert list(json.loads((tmp_path / "stages.json").read_text())["stages"]) == ["b"]


def test_outputs_outside_the_workdir_and_a_broken_ledger_are_refused(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "keep.txt").write_text("outside")
    ledger.declare(tmp_path / "w", "s", ["../keep.txt"])
    with pytest.raises(ledger.LedgerError, match=r"declares '../keep.txt', outside the workdir"):
        ledger.clear(tmp_path / "w")
    assert (tmp_path / "keep.txt").is_file()
    (tmp_path / "w" / "stages.json").write_text("{not json")
    with pytest.raises(ledger.LedgerError, match="not valid JSON.*--force-new"):
        ledger.read(tmp_path / "w")


def test_force_new_on_a_workdir_whose_ledger_is_broken_clears_it_as_one_made_before_the_ledger(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for made in ("checkpoints", "ablation", "models"):
        (tmp_path / made).mkdir()
    (tmp_path / "notes.txt").write_text("a user's file")
    (tmp_path / "stages.json").write_text("{not json")
    core.clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stages.json.lock", "config.json", "notes.txt",
                                                            "stages.json"]
    work = tmp_path / "reproduce"
    (work / "cifar10-resnet34").mkdir(parents=True)
    (work / "stages.json").write_text("{not json")
    with pytest.raises(reproduce.StageError, match="not valid JSON"):
        reproduce._claim(work, {"preset": "smoke", "data_root": None}, force_new=False)
    reproduce._claim(work, {"preset": "smoke", "data_root": None}, force_new=True)
    assert not (work / "cifar10-resnet34").exists()
    assert ledger.read(work) == {"run": {"preset": "smoke", "data_root": None}, "stages": {}}


@pytest.mark.parametrize("argv, typed", [
    (["/venv/bin/resnet-jax", "reproduce", "--only", "cifar-train,report"], "resnet-jax reproduce --only cifar-train,report"),
    (["/repo/resnet_jax/cli.py", "ablate", "--workdir", "my runs/a"], "resnet-jax ablate --workdir 'my runs/a'"),
    (["experiments/cifar10_resnet34.py", "--seeds", "2"], "python experiments/cifar10_resnet34.py --seeds 2"),
    (["/venv/bin/pytest", "-q"], "pytest -q"),
    ([], "python"),
])
def test_the_recorded_command_is_what_a_user_would_type(monkeypatch, argv, typed):
    monkeypatch.setattr(sys, "argv", argv)
    assert ledger.command_line() == typed


def test_a_stage_that_raises_reads_as_interrupted_and_a_declared_or_finished_one_does_not(tmp_path):
    def fails():
        raise KeyboardInterrupt

    ledger.declare(tmp_path, "train", ["metrics.jsonl"])  # a run's outputs, declared for --force-new
    ledger.run(tmp_path, ledger.Stage("ablate", lambda: {"n": 1}, ("ablation",)), log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        ledger.run(tmp_path, ledger.Stage("eliminate", fails, ("slim",)), log=lambda _: None)
    assert ledger.interrupted(tmp_path) == ["eliminate"]
    ledger.run(tmp_path, ledger.Stage("eliminate", lambda: {}, ("slim",)), log=lambda _: None)  # resumed: finished
    assert ledger.interrupted(tmp_path) == []
