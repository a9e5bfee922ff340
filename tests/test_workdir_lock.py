"""One command writes into a workdir at a time: a second waits, says who holds the workdir, then goes on from what
the first left; nothing is trained twice and no log holds an epoch twice."""

import json
import os
import subprocess
import sys
import time

from resnet_jax import ledger
from tests.conftest import REPO, run_cli

TRAIN = ("train", "--config", "synthetic-tiny", "--set", "train.epochs=2")


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "resnet_jax.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_two_trains_on_one_workdir_train_once(tmp_path):
    run = tmp_path / "run"
    first = _start(*TRAIN, "--workdir", str(run))
    deadline = time.monotonic() + 300
    while not ((run / ledger.HOLDER).is_file() and (run / ledger.HOLDER).read_text()):  # the first holds it
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = run_cli(*TRAIN, "--workdir", str(run))
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err, second.stderr)
    assert f"is in use by pid {first.pid} (`resnet-jax train --config synthetic-tiny" in second.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # trained once: the second found the run complete
    assert "resumed from step 12" in second.stdout and "resumed from step" not in out
    assert not (run / ledger.HOLDER).exists()  # released: the workdir holds only the run


def test_a_command_that_fails_at_once_leaves_no_folder_behind(tmp_path):
    missing = tmp_path / "nothing"
    done = run_cli("evaluate", "--workdir", str(missing))
    assert done.returncode == 2 and "holds no run" in done.stderr
    assert not missing.exists()


def test_a_run_trained_inside_a_study_waits_for_a_command_that_holds_it(tmp_path):
    """A study trains its runs through the library, not the command line: the run's own hold still applies."""
    from resnet_jax import configs
    from resnet_jax.training import runs

    run, released = tmp_path / "study" / "run", tmp_path / "released"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from resnet_jax import ledger\n"
        "with ledger.hold(sys.argv[1]):\n"
        "    print('held', flush=True); time.sleep(3)\n"
        "pathlib.Path(sys.argv[2]).touch()\n"), str(run), str(released)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    lines = []
    runs.train(configs.load_config("synthetic-tiny", ["train.epochs=1"]), run, log=lines.append)
    holder.wait(timeout=60)
    assert any("is in use by pid" in line for line in lines), lines
    assert released.exists() and (run / "metrics.jsonl").is_file()  # trained after the holder had let go
