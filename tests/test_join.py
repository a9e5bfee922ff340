"""Joining a multi-process job with options that cannot make one: every process exits 2 with one line that names
the option, never JAX's abort (exit 134 or 139 with a C++ stack trace) and never a silent one-process run.

Real processes on CPU, as a user starts them; the joins that time out do so in seconds
(``RESNET_JAX_JOIN_TIMEOUT``), so the file takes under a minute.
"""

import socket
import subprocess
import sys

import pytest

from resnet_jax import devices
from tests.conftest import run_cli
from tests.test_distributed import CLI, LAUNCH, _env

FAST = {"RESNET_JAX_JOIN_TIMEOUT": "3", "RESNET_JAX_HEARTBEAT": "3", "RESNET_JAX_COMPILE_CACHE": "off"}
PATIENT = {**FAST, "RESNET_JAX_JOIN_TIMEOUT": "30"}
"""For joins that succeed: the second process may start its join well before the first has imported JAX."""
LAYERS = ("layers", "--config", "synthetic-tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args: str, env: dict = FAST) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(**env))


def finish(*procs: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def job(port: int, num_processes: int, process_id: int, *command: str, env: dict = FAST) -> subprocess.Popen:
    return start("--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num_processes),
                 "--process-id", str(process_id), *command, env=env)


def refused(done: subprocess.CompletedProcess, command: str) -> str:
    """The one line a process that refused to run printed (exit 2, nothing else on stderr); returned to check."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"resnet-jax {command}: error: "), done.stderr[-2000:]
    return lines[0]


def test_two_processes_with_one_id_are_refused():
    port = free_port()
    lines = [refused(d, "presets") for d in finish(job(port, 2, 0, "presets"), job(port, 2, 0, "presets"))]
    # whichever came second: its port was taken, or the runtime saw process 0 twice; the first waited in vain
    assert all("--process-id" in line for line in lines), lines
    assert any("process 0 cannot serve" in line or "another process joined as process 0" in line for line in lines), lines


def test_a_coordinator_that_counts_more_processes_than_come_is_refused_in_seconds():
    port = free_port()
    first, second = finish(job(port, 3, 0, "presets"), job(port, 2, 1, "presets"))
    assert "as process 0 of 3: the job did not form" in refused(first, "presets")
    assert "as process 1 of 2: the job did not form" in refused(second, "presets")
    assert "--num-processes" in first.stderr and "--num-processes" in second.stderr


def test_a_count_given_beside_a_launchers_count_must_agree_with_it():
    done = subprocess.run(["bash", str(LAUNCH), "2", *CLI, "--num-processes", "3", "presets"], capture_output=True,
                          text=True, timeout=120, env=_env(**FAST))
    assert done.returncode == 2, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("[p")]
    assert said and all(line.split(" ", 1)[1].startswith("resnet-jax presets: error: --num-processes 3 contradicts "
                                                         "RESNET_JAX_NUM_PROCESSES=2") for line in said), said


@pytest.mark.parametrize("second", [(3, "presets"), (2, *LAYERS)], ids=["num-processes", "command"])
def test_processes_that_disagree_on_the_job_both_say_so(second):
    port = free_port()
    n, *command = second
    first, other = finish(job(port, 2, 0, "presets", env=PATIENT), job(port, n, 1, *command, env=PATIENT))
    views = f"process 0 has --num-processes 2 and runs `presets`", \
        f"process 1 (this one) has --num-processes {n} and runs `{command[0]}`"
    assert all(view in refused(other, command[0]) for view in views)
    assert "process 0 (this one) has --num-processes 2" in refused(first, "presets")
    assert f"process 1 has --num-processes {n} and runs `{command[0]}`" in first.stderr


@pytest.mark.parametrize("options, says", [
    (("--num-processes", "2", "--process-id", "1"), "--num-processes 2 --process-id 1 needs --coordinator HOST:PORT"),
    (("--process-id", "1"), "--process-id 1 needs --coordinator"),
    (("--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"),
     "--coordinator 'localhost' is not HOST:PORT"),
    (("--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"),
     "--process-id 2 is not a process of --num-processes 2 (valid ids: 0..1)"),
])
def test_options_that_cannot_make_a_job_are_refused_before_joining(options, says, monkeypatch):
    for variable in devices.ENV.values():  # checked before anything joins: in this process, as typed
        monkeypatch.delenv(variable, raising=False)
    assert says in refused(run_cli(*options, *LAYERS), "layers")


def test_process_0_refuses_a_coordinator_port_that_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(finish(job(port, 2, 0, "presets"))[0], "presets")
    assert f"process 0 cannot serve the job on port {port}" in line and "choose a free port" in line


def test_a_port_that_a_process_0_here_claimed_is_refused_to_another_before_either_serves():
    """The gap the bind probe leaves: nothing serves the port yet (the probe passes), but another process 0 on this
    machine has claimed it; JAX's server shares ports (SO_REUSEPORT), so both would serve and neither job form."""
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-c", f"from resnet_jax import devices; devices._claim_port('x', {port}); "
                               "print('claimed', flush=True); import time; time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env=_env(**FAST))
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(devices.DistributedError, match=f"cannot serve the job on port {port}: another resnet-jax"):
            devices._check_port_free(f"127.0.0.1:{port}", port)
    finally:
        holder.kill()
        holder.communicate()
