"""A healthy checkpoint is read whatever devices wrote it and whatever devices read it, and is never called damaged;
a full disk is one line and costs no kept checkpoint.

Runs are written by one process with 1 or 2 devices and read by one process with 1, 2 or 4 devices and by a job of
two processes; the reference for every score is the writer's own score of the same checkpoint (``evaluation.json``,
written at the end of training)."""

import json
import logging
import shutil

import jax
import numpy as np

import pytest

from tests.conftest import run_cli
from tests.test_distributed import launch, one_process

TINY = ("--config", "synthetic-tiny", "--set", "train.epochs=1")


def _score(stdout: str) -> float:
    """The score `evaluate` printed (process 0's, where a launcher prefixed each process's lines with ``[pN]``)."""
    lines = stdout.splitlines()
    if any(line.startswith("[p0] ") for line in lines):
        lines = [line[5:] for line in lines if line.startswith("[p0] ")]
    text = "\n".join(lines)
    return json.loads(text[text.index("{"):])["test_accuracy"]


def _trained_score(run) -> float:
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["checkpoint"] == "best"
    return evaluation["test_accuracy"]


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("two-devices") / "run"
    done = one_process(2, "train", *TINY, "--workdir", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_a_run_written_on_two_devices_is_read_trained_ablated_and_eliminated_on_one(two_device_run, tmp_path):
    assert jax.device_count() == 1  # this process is the laptop
    run = tmp_path / "run"
    shutil.copytree(two_device_run, run)
    scored = run_cli("evaluate", "--workdir", str(run), "--checkpoint", "best")
    assert scored.returncode == 0, scored.stderr
    assert _score(scored.stdout) == pytest.approx(_trained_score(run), abs=1e-6)
    resumed = run_cli("train", *TINY, "--workdir", str(run))
    assert resumed.returncode == 0 and "resumed from step" in resumed.stdout, resumed.stderr
    swept = run_cli("ablate", "--workdir", str(run), "--protocol", "shortcut", "--n-examples", "32")
    assert swept.returncode == 0 and (run / "ablation" / "shortcut.csv").is_file(), swept.stderr
    slim = run_cli("eliminate", "--workdir", str(run), "--out", str(tmp_path / "slim"), "--max-drop", "0.2",
                   "--random-draws", "1", "--force-untrained")
    assert slim.returncode == 0 and (tmp_path / "slim" / "elimination" / "summary.json").is_file(), slim.stderr


def test_a_run_written_on_two_devices_is_read_on_four_and_by_two_processes(two_device_run):
    four = one_process(4, "evaluate", "--workdir", str(two_device_run), "--checkpoint", "best")
    assert four.returncode == 0, four.stderr[-3000:]
    assert _score(four.stdout) == pytest.approx(_trained_score(two_device_run), abs=1e-6)
    job = launch(2, "evaluate", "--workdir", str(two_device_run), "--checkpoint", "best", timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert _score(job.stdout) == pytest.approx(_trained_score(two_device_run), abs=1e-6)


def test_a_run_written_on_one_device_is_read_on_two(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", *TINY, "--workdir", str(run)).returncode == 0
    two = one_process(2, "evaluate", "--workdir", str(run), "--checkpoint", "best")
    assert two.returncode == 0, two.stderr[-3000:]
    assert _score(two.stdout) == pytest.approx(_trained_score(run), abs=1e-6)


def _image_folder(root, classes, n=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(root / split / c / f"{i}.png")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reads left by the failure
def test_a_model_for_other_data_is_named_as_such_not_called_damaged(tmp_path):
    """A run trained on 11 classes, read with data of 10: the message names the head's two class counts and the
    fix, and never advises discarding the run."""
    eleven, ten = tmp_path / "eleven", tmp_path / "ten"
    _image_folder(eleven, [f"c{i:02d}" for i in range(11)])
    _image_folder(ten, [f"c{i:02d}" for i in range(10)])
    trained = run_cli("train", "--config", "synthetic-tiny", "--set", "data.name=animals", "--set",
                      "data.val_examples=0", "--set", "train.batch_size=32", "--set", "train.epochs=1",
                      "--data-dir", str(eleven), "--workdir", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    read = run_cli("evaluate", "--workdir", str(tmp_path / "run"), "--data-dir", str(ten))
    assert read.returncode == 2, read.stderr
    error = [line for line in read.stderr.splitlines() if line.startswith("resnet-jax")]
    assert len(error) == 1, read.stderr
    assert "11 classes in the checkpoint, 10 in this data" in error[0], error[0]
    assert "damaged" not in error[0] and "--force-new" not in error[0], error[0]


FULL_DISK = r"""
set -u
mount -t tmpfs -o size=64M tmpfs "$DISK" || exit 77
# The disk fills once the first epoch's checkpoint is in place, leaving 100 KB: far less than a checkpoint
# (about 0.5 MB), whose size varies by a few hundred KB from run to run, so sizing the room beforehand is a race.
( until [ -d "$DISK/run/checkpoints/6" ]; do sleep 0.02; done
  fallocate -l $(( ($(df -k --output=avail "$DISK" | tail -1) - 100) * 1024 )) "$DISK/filler" ) &
filler=$!
"$PYTHON" -m resnet_jax.cli train --config synthetic-tiny --set train.epochs=3 --workdir "$DISK/run" \
  >"$OUT/train.out" 2>"$OUT/train.err"; echo $? >"$OUT/train.rc"
kill "$filler" 2>/dev/null; wait "$filler" 2>/dev/null
ls "$DISK/run/checkpoints" >"$OUT/kept"
rm -f "$DISK/filler"
"$PYTHON" -m resnet_jax.cli evaluate --workdir "$DISK/run" >"$OUT/eval.out" 2>&1; echo $? >"$OUT/eval.rc"
"""


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A disk with room for the first epoch's checkpoint and not the second's (a private tmpfs): training stops
    with one line naming the folder and the room, exit 2, and the first checkpoint still scores."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISK": str(disk), "OUT": str(tmp_path), "PYTHON": sys.executable}
    try:
        done = subprocess.run(["unshare", "-m", "bash", "-c", FULL_DISK], env=env, capture_output=True, text=True,
                              timeout=600)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if done.returncode in (1, 77) and not (tmp_path / "train.rc").exists():
        pytest.skip(f"no private tmpfs here (needs root or user namespaces): {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    err = (tmp_path / "train.err").read_text()
    assert (tmp_path / "train.rc").read_text().strip() == "2", err[-3000:]
    assert err.count("\n") == 1 and "Traceback" not in err, err[-3000:]
    assert err.startswith(f"resnet-jax train: error: no space left in {disk}/run/checkpoints for checkpoint 12"), err
    assert "rerun the same command to resume from step 6" in err
    assert (tmp_path / "kept").read_text().split() == ["6"]  # the first epoch's, and no unfinished one
    assert (tmp_path / "eval.rc").read_text().strip() == "0", (tmp_path / "eval.out").read_text()[-2000:]


def test_room_running_out_while_writing_is_one_line_and_the_unfinished_folder_goes(tmp_path):
    """The fallback when the room runs out after the check (another writer on the disk): orbax's error, however
    deep, becomes the same one line, and its half-written folder is removed."""
    from resnet_jax import checkpointing

    mngr = checkpointing.manager(tmp_path / "run", best_metric="val_accuracy")
    unfinished = tmp_path / "run" / "checkpoints" / "12.orbax-checkpoint-tmp" / "default"
    unfinished.mkdir(parents=True)
    deep = ValueError(f'RESOURCE_EXHAUSTED: Error writing "params.fc.kernel" at local file "{unfinished.parent}/": '
                      f"Failed to write 3874 bytes to file 4: No space left on device [os_error_code='28']")
    with pytest.raises(checkpointing.CheckpointError, match=r"^no space left in .*/run/checkpoints for checkpoint 12: "
                                                            r"[\d.]+ MB are free there; .*rerun the same command"):
        checkpointing._raise_if_full(deep, mngr, None)
    assert not unfinished.parent.exists()
    checkpointing._raise_if_full(ValueError("another failure"), mngr, None)  # not ours to rename: left to the caller


def test_orbax_logs_of_a_failure_we_report_ourselves_are_dropped_and_others_kept(caplog):
    """A failed background save is raised again when awaited and reported in one line; orbax's own log of it, with
    the traceback of its thread, would print first (seen on a full disk). Other absl logs still show."""
    from absl import logging as absl_logging

    import resnet_jax.checkpointing  # noqa: F401  (installs the filter)

    def log_from(filename: str) -> None:
        code = compile("try:\n    raise OSError('disk full')\nexcept OSError:\n    log.exception('save failed')\n",
                       filename, "exec")
        exec(code, {"log": absl_logging})

    with caplog.at_level("ERROR"):
        log_from("/site-packages/orbax/checkpoint/_src/futures/future.py")
        assert not [r for r in caplog.records if "save failed" in r.getMessage()]
        log_from("/site-packages/other/module.py")
        assert [r for r in caplog.records if "save failed" in r.getMessage()]
        caplog.clear()
        raising = compile("def run():\n    raise RuntimeError('Event loop is closed')\n",
                          "/site-packages/orbax/checkpoint/_src/asyncio_utils.py", "exec")
        scope = {}
        exec(raising, scope)
        try:  # asyncio logs a failed callback of orbax's loop from its own file: the traceback runs through orbax
            scope["run"]()
        except RuntimeError:
            logging.getLogger("asyncio").error("Exception in callback", exc_info=True)
        assert not caplog.records
