"""Several processes as one JAX job, for real: local processes on CPU devices, collectives over gloo.

The reference for every multi-process run is one process with as many devices
(``--xla_force_host_platform_device_count``): the same global batches split the same way over the same number of
devices, so the numbers must agree.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from resnet_jax import devices
from tests.conftest import REPO, xla_flags

LAUNCH = REPO / "scripts" / "launch_local.sh"
CLI = [sys.executable, "-m", "resnet_jax.cli"]


def _env(**extra):
    """The suite's environment for a job's process: no job of the caller's, and the suite's XLA flags alone (one CPU
    device) unless ``extra`` sets ``XLA_FLAGS``."""
    env = {k: v for k, v in os.environ.items() if k not in devices.ENV.values()}  # no job of the caller's leaks in
    return {**env, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(), **extra}


def launch(n, *args, timeout=900):
    """``scripts/launch_local.sh n resnet-jax ARGS``: n processes, one CPU device each."""
    return subprocess.run(["bash", str(LAUNCH), str(n), *CLI, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def one_process(devices_count, *args, timeout=900):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=_env(XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices_count}")))


@pytest.mark.parametrize("layout", [[0, 1], [0, 0, 1, 1], [0, 1, 2, 3], [0, 0, 0, 1, 1, 1]])
def test_every_row_of_a_global_batch_is_placed_by_exactly_one_process(layout):
    n_rows = 12 * len(layout)
    held = [devices.rows_of_process(layout, n_rows, p) for p in sorted(set(layout))]
    rows = [r for s in held for r in range(s.start, s.stop)]
    assert sorted(rows) == list(range(n_rows)) and len(rows) == n_rows
    assert all(s.stop - s.start == n_rows * layout.count(p) // len(layout) for p, s in enumerate(held))
    with pytest.raises(ValueError, match="not contiguous"):
        devices.rows_of_process([0, 1, 0, 1], 8, 0)


TINY_TRAIN = ("train", "--config", "synthetic-tiny", "--set", "train.epochs=3", "--set", "train.batch_size=32")
"""Three epochs of 12 steps: long enough that a process can be lost mid-job (the last test), and one reference."""


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """A run trained by one process with two devices: the reference for training (uninterrupted, and lost and
    resumed), the source for eliminate."""
    ref = tmp_path_factory.mktemp("one-process") / "run"
    assert one_process(2, *TINY_TRAIN, "--workdir", str(ref)).returncode == 0
    return ref


def test_two_processes_train_and_ablate_exactly_as_one_process_with_two_devices(tmp_path, one_process_run):
    job, ref = tmp_path / "job", one_process_run
    trained = launch(2, *TINY_TRAIN, "--workdir", str(job))
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = lambda w: [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    drop = ("images_per_second", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows(job)] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rows(ref)]  # one copy, the same numbers
    assert json.loads((job / "evaluation.json").read_text()) == json.loads((ref / "evaluation.json").read_text())
    swept = launch(2, "ablate", "--workdir", str(job), "--protocol", "all")
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert one_process(2, "ablate", "--workdir", str(ref), "--protocol", "all").returncode == 0
    for stem in ("baseline", "single", "stage-except-decomposition", "shortcut"):
        assert (job / "ablation" / f"{stem}.csv").read_bytes() == (ref / "ablation" / f"{stem}.csv").read_bytes()
    stored = (job / "ablation" / "results.jsonl").read_text().splitlines()
    assert len(stored) == len((ref / "ablation" / "results.jsonl").read_text().splitlines())  # written once
    assert not list(job.glob("**/*.torn-*"))


def test_two_processes_eliminate_from_a_one_process_run_exactly_as_one_process(tmp_path, one_process_run):
    """The job restores a checkpoint written by one process (another device layout), searches, saves the slim
    run collectively and fine-tunes it; every table equals the one-process elimination's."""
    job, ref = tmp_path / "job", tmp_path / "reference"
    # a drop of 0.9 is more than this three-epoch model's whole accuracy, so units are removed whatever it learned
    # (with 0.2, a model trained on another CPU lost 0.29 at the first unit, and nothing was fine-tuned)
    eliminate = ("eliminate", "--workdir", str(one_process_run), "--max-drop", "0.9", "--finetune-epochs", "1",
                 "--random-draws", "1", "--force-untrained")
    done = launch(2, *eliminate, "--out", str(job))
    assert done.returncode == 0, done.stderr[-3000:]
    assert one_process(2, *eliminate, "--out", str(ref)).returncode == 0
    for name in ("elimination/summary.json", "elimination/path.csv", "evaluation.json"):
        assert (job / name).read_bytes() == (ref / name).read_bytes(), name
    assert len((job / "metrics.jsonl").read_text().splitlines()) == 1  # fine-tuned once, written once


def test_a_command_that_runs_in_one_process_refuses_a_job_and_a_silent_coordinator_is_exit_2(tmp_path):
    refused = launch(2, "verify", "--workdir", str(tmp_path))
    assert refused.returncode == 2 and "runs in one process" in refused.stderr
    start = time.monotonic()
    lost = subprocess.run([*CLI, "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1",
                           "train", "--config", "synthetic-tiny", "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120, env=_env(RESNET_JAX_JOIN_TIMEOUT="3"))
    assert lost.returncode == 2 and "coordinator 127.0.0.1:1 did not answer within 3 s" in lost.stderr
    assert time.monotonic() - start < 60 and not (tmp_path / "w").exists()


def test_a_lost_process_stops_the_job_and_a_relaunch_resumes_to_the_same_end(tmp_path, one_process_run):
    job, ref, train = tmp_path / "job", one_process_run, TINY_TRAIN
    port = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                           "print(s.getsockname()[1])"], capture_output=True, text=True).stdout.strip()
    procs = [subprocess.Popen([*CLI, *train, "--workdir", str(job)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(RESNET_JAX_COORDINATOR=f"127.0.0.1:{port}",
                                                  RESNET_JAX_NUM_PROCESSES="2", RESNET_JAX_PROCESS_ID=str(i),
                                                  RESNET_JAX_HEARTBEAT="10"))
             for i in range(2)]
    deadline = time.monotonic() + 600
    while not (job / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)  # an epoch is done and checkpointing: the job is under way
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=180)
    procs[1].communicate()
    assert procs[0].returncode != 0 and time.monotonic() - killed < 60, err[-2000:]  # heartbeat 10 s
    # the failed collective, said in a line (a traceback and an abort before), or JAX's health check naming the
    # lost process where that came first
    assert "resnet-jax train: error: the job stopped: JAX's runtime failed" in err or "task:1" in err \
           or "unhealthy" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert len((job / "metrics.jsonl").read_text().splitlines()) < 3, "the job finished before the kill"
    resumed = launch(2, *train, "--workdir", str(job))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = lambda w: [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["epoch"] for r in epochs(job)] == [1, 2, 3]
    assert [r["val_loss"] for r in epochs(job)] == pytest.approx([r["val_loss"] for r in epochs(ref)], rel=1e-6)
    assert json.loads((job / "evaluation.json").read_text())["test_accuracy"] == \
           json.loads((ref / "evaluation.json").read_text())["test_accuracy"]
