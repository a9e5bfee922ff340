"""Every local (and, after ``jax.distributed.initialize``, every remote) device as one 1-D ``data`` mesh,
and the persistent compilation cache.

Batches are split along the mesh; parameters are replicated. Training, evaluation and the ablation
engine all place data through these functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax import files


# Joining a multi-process job -------------------------------------------------------------------------

class DistributedError(RuntimeError):
    """Joining a multi-process job failed; the message names the coordinator and what to check."""


ENV = {"coordinator": "RESNET_JAX_COORDINATOR", "num_processes": "RESNET_JAX_NUM_PROCESSES",
       "process_id": "RESNET_JAX_PROCESS_ID", "distributed": "RESNET_JAX_DISTRIBUTED"}
"""Environment variables a launcher may set instead of the top-level options of the same names."""


def job_options(**flags: Any) -> dict[str, Any]:
    """The arguments of :func:`join_job` from the options (``coordinator=``, ``num_processes=``, ...; None where
    not given) and, for those left out, the launcher's variables (:data:`ENV`); an option and a variable that
    both say something must say the same."""
    job = {}
    for key, variable in ENV.items():
        flag, name, text = flags.get(key), "--" + key.replace("_", "-"), os.environ.get(variable) or None
        value = text
        if text is not None and key in ("num_processes", "process_id"):
            try:
                value = int(text)
            except ValueError:
                raise DistributedError(f"{variable}={text!r} is not a whole number ({name})") from None
        if flag is not None and value is not None and flag != value:
            raise DistributedError(f"{name} {flag} contradicts {variable}={text} (set by a launcher such as "
                                   f"scripts/launch_local.sh); give one of them, or the same value")
        job[key] = flag if flag is not None else value
    job["auto"] = job.pop("distributed") == "auto"
    return job


def join_job(*, coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
             auto: bool = False, command: str | None = None, timeout_s: int = 60, heartbeat_s: int = 20) -> bool:
    """Join a job of several processes on JAX's distributed runtime, before anything touches a device.

    ``auto`` lets JAX find the cluster itself (TPU pod slices, SLURM, Open MPI); otherwise every process names
    the coordinator (process 0's ``host:port``), the process count and its own id. What can be checked alone is
    checked first (:func:`check_job`); right after joining, the processes compare their process counts and
    ``command`` through the runtime's key-value store. Every failure to join (a coordinator that does not answer
    within ``timeout_s``, two processes with one id, a job that never forms) is a one-line DistributedError,
    never JAX's abort; a process that dies later is noticed by the others within about ``heartbeat_s``
    (``$RESNET_JAX_JOIN_TIMEOUT`` and ``$RESNET_JAX_HEARTBEAT`` override both). Returns whether a job was
    joined; afterwards only process 0 writes files."""
    if not auto and coordinator is None and num_processes is None and process_id is None:
        return False
    timeout_s = int(os.environ.get("RESNET_JAX_JOIN_TIMEOUT", timeout_s))
    heartbeat_s = int(os.environ.get("RESNET_JAX_HEARTBEAT", heartbeat_s))
    if not auto:
        check_job(coordinator, num_processes, process_id)
        if process_id != 0:  # so that a coordinator that never answers is named as such
            _wait_for(coordinator, timeout_s)
    where = "the cluster JAX detects (TPU, SLURM, MPI)" if auto else \
        f"coordinator {coordinator} as process {process_id} of {num_processes}"
    args = {} if auto else {"coordinator_address": coordinator, "num_processes": num_processes,
                             "process_id": process_id}
    _initialize(where, initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat_s, **args)
    from jax._src import distributed

    state = distributed.global_state  # not jax.process_count(): devices wait for every process the count names
    _agree({"num_processes": state.num_processes, "command": command}, timeout_s=timeout_s)
    global _JOINED
    _JOINED = True
    files.set_writer(state.process_id == 0)
    return True


def check_job(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Refuse options that cannot make a job, before joining: a DistributedError naming the option and what
    would be valid."""
    if coordinator is None:
        given = " ".join(f"--{name} {value}" for name, value in (("num-processes", num_processes),
                                                                   ("process-id", process_id)) if value is not None)
        raise DistributedError(f"{given} needs --coordinator HOST:PORT (process 0's address, the same for every "
                               f"process); to run as one process, leave out --num-processes and --process-id")
    if num_processes is None or process_id is None:
        raise DistributedError(f"--coordinator {coordinator} needs --num-processes N and --process-id I with "
                               f"0 <= I < N (got N={num_processes}, I={process_id})")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        valid = f"0..{num_processes - 1}" if num_processes > 0 else "none: --num-processes must be at least 1"
        raise DistributedError(f"--process-id {process_id} is not a process of --num-processes {num_processes} "
                               f"(valid ids: {valid})")
    _, port = _host_port(coordinator)
    if process_id == 0:
        _check_port_free(coordinator, port)


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` split (``[v6]:port`` too); a DistributedError that shows the form when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator {address!r} is not HOST:PORT with a port 1..65535 (e.g. "
                               f"10.0.0.2:12345, or localhost:12345 when every process runs here)")
    return host.strip("[]"), int(port)


def _check_port_free(address: str, port: int) -> None:
    """Process 0 serves the job on ``port`` on every interface, as JAX does: bind it once to see that it can
    (a port in use would otherwise crash JAX's server, or let two coordinators share it)."""
    import socket

    if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        return  # JAX serves elsewhere
    _claim_port(address, port)
    try:
        probe, any_host = socket.socket(socket.AF_INET6, socket.SOCK_STREAM), "::"
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families, as JAX's [::]:port
    except OSError:  # no IPv6 here
        probe, any_host = socket.socket(socket.AF_INET, socket.SOCK_STREAM), "0.0.0.0"
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server does: TIME_WAIT is free
        try:
            probe.bind((any_host, port))
        except OSError as err:
            raise _port_refused(address, port, f" ({err.strerror or err}); another program holds it, or another "
                                                f"process started as --process-id 0") from None


def _port_refused(address: str, port: int, why: str) -> DistributedError:
    """The one line for a port process 0 cannot serve, ``why`` said after the port, with what to do."""
    return DistributedError(f"--coordinator {address}: process 0 cannot serve the job on port {port}{why}: choose a "
                            f"free port, and one process 0")


_PORT_CLAIMS: dict[int, int] = {}
"""Port -> the open file whose lock says "process 0 of a job serves this port here"; held until the process exits."""


def _claim_port(address: str, port: int) -> None:
    """Claim ``port`` on this machine for this process's whole life. The bind probe alone leaves a gap: two
    processes started as process 0 at once can both probe before either serves, and JAX's server shares a port
    (SO_REUSEPORT), so both would serve it and each wait for a job that never forms."""
    import fcntl
    import tempfile

    if port in _PORT_CLAIMS:
        return
    path = Path(tempfile.gettempdir()) / f"resnet-jax-coordinator-port-{port}.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:  # no writable temporary folder: the bind probe alone guards the port, as before
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _port_refused(address, port, ": another resnet-jax process on this machine serves it (started as "
                                           "--process-id 0 too)") from None
    _PORT_CLAIMS[port] = fd


def _wait_for(address: str, timeout_s: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; a DistributedError after ``timeout_s`` seconds."""
    import socket
    import time

    host, port = _host_port(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise DistributedError(f"coordinator {address} did not answer within {timeout_s:.0f} s ({err}); "
                                       f"start process 0 there first, or check the address") from None
            time.sleep(0.5)


def _initialize(where: str, **kwargs: Any) -> None:
    """``jax.distributed.initialize(**kwargs)``; a failure to join is a DistributedError, not JAX's abort, and
    what the runtime logs meanwhile is shown only when the join succeeds (the error says what went wrong)."""
    import time

    started = time.monotonic()
    with _StderrKept() as log:
        try:
            with _join_errors_raise():
                jax.distributed.initialize(**kwargs)
        except Exception as err:  # noqa: BLE001 - the runtime raises several types; each means "not joined"
            leave_job()
            failed = err
        else:
            failed = None
    if failed is None:
        sys.stderr.write(log.text)
        return
    elapsed = time.monotonic() - started
    raise DistributedError(f"could not join {where}: {_why_not_joined(failed, log.text, elapsed, **kwargs)}")


def _why_not_joined(err: Exception, log: str, elapsed: float, *, initialization_timeout: int,
                    num_processes: int | None = None, process_id: int | None = None, **_: Any) -> str:
    """What a failed join means, read from the runtime's error and log (the error alone may not say: see
    :func:`_join_errors_raise`), as the option to fix."""
    text = f"{err}\n{log}"
    if "newer incarnation" in text or "ALREADY_EXISTS" in text:
        ids = f"0..{num_processes - 1}" if num_processes else "0..N-1"
        return f"another process joined as process {process_id} too; give every process its own --process-id {ids}"
    if "Unexpected task" in text or "INVALID_ARGUMENT" in text:
        return (f"process 0's job has no process {process_id}; process 0 was given a smaller --num-processes "
                f"than this process's {num_processes}: give every process the same --num-processes")
    if "DEADLINE_EXCEEDED" in text or elapsed >= initialization_timeout:
        count = f"{num_processes} " if num_processes else ""
        return (f"the job did not form in {elapsed:.0f} s (join timeout {initialization_timeout} s; process 0 "
                f"waits for as many processes as its --num-processes says): start exactly {count}processes, each "
                f"with the same --num-processes and its own --process-id")
    status = re.search(r"\b[A-Z][A-Z_]{3,}: [^\n]+", text)
    return (status.group(0) if status else str(err) or type(err).__name__)[:300]


class _StderrKept:
    """File descriptor 2 (where JAX's C++ runtime logs) kept in a temporary file while inside; ``text`` after."""

    def __enter__(self) -> "_StderrKept":
        import tempfile

        sys.stderr.flush()
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()


_JOINED = False
"""Whether this process has joined a job (the runtime's errors then stop the process)."""


@contextlib.contextmanager
def _join_errors_raise():
    """While inside, JAX's runtime clients report fatal errors to Python instead of aborting the process.

    ``jax.distributed.initialize`` offers no way to say this; its client does (``missed_heartbeat_callback``),
    and with it a failed connection raises from ``initialize``. jaxlib 0.10 cannot pass the status to a Python
    callback, so it raises at once (``std::bad_cast``), with the status only in the runtime's log. After the
    join, a lost process still stops the others, with C++ ``std::terminate`` in place of JAX's fatal log line
    (process 0's runtime still logs which task it lost)."""
    from jax._src import distributed

    runtime = getattr(distributed, "_jax", None)
    make = getattr(runtime, "get_distributed_runtime_client", None)
    if make is None or "missed_heartbeat_callback" not in (make.__doc__ or ""):
        yield  # another JAX: its own behaviour, after the checks above
        return

    class Runtime:
        def __getattr__(self, name: str) -> Any:
            return getattr(runtime, name)

        @staticmethod
        def get_distributed_runtime_client(*args: Any, **kwargs: Any) -> Any:
            return make(*args, missed_heartbeat_callback=_runtime_failed, **kwargs)

    distributed._jax = Runtime()
    try:
        yield
    finally:
        distributed._jax = runtime


def _runtime_failed(status: Any) -> None:
    """The runtime's fatal error, where a jaxlib passes it: while joining, ``initialize`` raises it; later the
    job cannot go on, so the process stops as JAX would stop it."""
    if _JOINED:
        print(f"resnet-jax: error: the job failed: {status}", file=sys.stderr, flush=True)
        os._exit(1)


def _agree(view: dict[str, Any], *, timeout_s: int) -> None:
    """Compare this process's ``view`` of the job (JSON) with every other process's, through the runtime's
    key-value store: process 0 gathers them all and publishes the list, so every process refuses together."""
    from jax._src import distributed

    state = distributed.global_state
    client, me, n, ms = state.client, state.process_id, state.num_processes, timeout_s * 1000
    try:
        client.key_value_set(f"resnet_jax/view/{me}", json.dumps(view))
        if me == 0:
            views = [client.blocking_key_value_get(f"resnet_jax/view/{i}", ms) for i in range(n)]
            client.key_value_set("resnet_jax/views", json.dumps(views))
        views = [json.loads(v) for v in json.loads(client.blocking_key_value_get("resnet_jax/views", ms))]
    except Exception as err:  # noqa: BLE001 - a process that left meanwhile: the job cannot start
        leave_job()
        raise DistributedError(f"the processes of the job could not compare their options within {timeout_s} s "
                               f"({str(err).splitlines()[0][:200]})") from None
    odd = [i for i, v in enumerate(views) if v != views[0]]
    if odd:
        leave_job()
        raise DistributedError(_disagreement(views, me, odd))


def _disagreement(views: list[dict[str, Any]], me: int, odd: list[int]) -> str:
    """One line naming process 0's view and the views that differ from it (this process's first)."""
    def show(i: int) -> str:
        v = views[i]
        return f"process {i}{' (this one)' if i == me else ''} has --num-processes {v['num_processes']} and " \
               f"runs `{v['command']}`"

    others = ([me] if me in odd else []) + [i for i in odd if i != me]
    more = f" (and {len(others) - 3} more)" if len(others) > 3 else ""
    return (f"the processes of the job disagree: {', '.join(show(i) for i in [0, *others[:3]])}{more}; start every "
            f"process with the same --num-processes and command")


def leave_job() -> None:
    """Leave the job, or what a failed join left of one (its client, and process 0's server), without raising:
    a process that has joined nothing leaves nothing."""
    from jax._src import distributed

    state = distributed.global_state
    with _StderrKept():  # what the runtime logs as it stops is not news: the caller says why it left
        for part in (state.preemption_sync_manager, state.client, state.service):
            if part is not None:
                try:
                    part.shutdown()
                except Exception:  # noqa: BLE001 - a runtime already in error refuses an orderly shutdown
                    pass
    state.preemption_sync_manager = state.client = state.service = None
    global _JOINED
    _JOINED = False


def is_writer() -> bool:
    """Whether this process writes the job's files (process 0; the only one when nothing was joined)."""
    return files.WRITER


def barrier(name: str) -> None:
    """Wait here until every process of the job arrives (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def rows_of_process(device_processes: Sequence[int], n_rows: int, process: int) -> slice:
    """The rows of an ``n_rows`` batch split evenly along a 1-D mesh whose devices belong to
    ``device_processes`` (in mesh order) that ``process`` holds: one contiguous block, as JAX lays it out."""
    per = n_rows // len(device_processes)
    mine = [i for i, p in enumerate(device_processes) if p == process]
    if not mine:
        return slice(0, 0)
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(f"process {process}'s devices are not contiguous in the mesh ({device_processes})")
    return slice(mine[0] * per, (mine[-1] + 1) * per)


def local_rows(mesh: Mesh, n_rows: int) -> slice:
    """This process's rows of a batch of ``n_rows`` split over ``mesh``'s ``data`` axis."""
    return rows_of_process([d.process_index for d in mesh.devices.flat], n_rows, jax.process_index())


def to_host(tree: Any) -> Any:
    """Arrays of a tree as numpy, whole on every process (gathered across processes when they are split)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(x) if getattr(x, "is_fully_replicated", True) else
                        np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)


# Meshes and placement ----------------------------------------------------------------------------------

def data_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D mesh over every device of every process (or the first ``n_devices``); batches are split along it."""
    return Mesh(np.asarray(jax.devices()[:n_devices]), ("data",))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """A global batch (every process passes the same rows) as global arrays split over the ``data`` axis; each
    process places only its own rows."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return [jax.make_array_from_process_local_data(sharding, a[local_rows(mesh, len(a))], a.shape)
            for a in arrays]


def shard_stacked(mesh: Mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """Stacks of global batches ``(n_batches, rows, ...)`` as global arrays split over the ``data`` axis along the
    rows; each process places only its own rows of every batch."""
    sharding = NamedSharding(mesh, PartitionSpec(None, "data"))
    return [jax.make_array_from_process_local_data(sharding, a[:, local_rows(mesh, a.shape[1])], a.shape)
            for a in arrays]


def replicate(mesh: Mesh, tree: Any) -> Any:
    """``tree`` on every device of ``mesh``. Across processes each one passes the same values from its host (a
    local device array cannot be placed on another process's devices directly)."""
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


FALLBACK_MEMORY_MB = 2048.0
"""A working-memory budget for devices that do not report their memory (CPUs)."""


def memory_budget_mb(device: Any = None, *, fraction: float = 0.5) -> float:
    """``fraction`` of the memory a device reports (``memory_stats()['bytes_limit']`` on GPUs and TPUs),
    or :data:`FALLBACK_MEMORY_MB` where it reports none."""
    device = device if device is not None else jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    return fraction * limit / 2**20 if limit else FALLBACK_MEMORY_MB


def batch_source(mesh: Mesh, arrays: tuple[np.ndarray, ...], *, budget_bytes: float | None = None):
    """``(fetch, resident)``: ``fetch(indices)`` gives one training batch as arrays split over the ``data`` axis.

    When the whole training set fits in ``budget_bytes`` (default: a quarter of what the device reports; 512 MB
    on CPUs) and one process runs, it is copied to every device once and each batch is gathered there, so no
    step waits on the host slicing and sending images (CIFAR-10 as uint8 is 150 MB). Otherwise batches are
    sliced on the host and sent, as before. Both give the same values."""
    budget = budget_bytes if budget_bytes is not None else memory_budget_mb(fraction=0.25) * 2**20
    if jax.process_count() > 1 or sum(a.nbytes for a in arrays) > budget:
        return (lambda idx: shard_batch(mesh, *(a[idx] for a in arrays))), False
    resident = replicate(mesh, tuple(arrays))
    gather = jax.jit(lambda data, idx: tuple(jnp.take(a, idx, axis=0) for a in data),
                     out_shardings=NamedSharding(mesh, PartitionSpec("data")))
    return (lambda idx: list(gather(resident, np.asarray(idx)))), True


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the device count that holds ``batch_size`` rows."""
    n = mesh.devices.size
    return -(-batch_size // n) * n


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` padded with zero rows to ``size`` rows, so the last batch keeps the compiled shape."""
    if len(array) == size:
        return array
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


def compilation_cache_dir() -> Path | None:
    """Where compiled programs persist across processes: ``$RESNET_JAX_COMPILE_CACHE`` (``off`` disables it),
    else ``~/.cache/resnet-jax/compiled`` (under ``$XDG_CACHE_HOME`` when set)."""
    value = os.environ.get("RESNET_JAX_COMPILE_CACHE")
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "false") else Path(value).expanduser()
    return files.user_cache_dir() / "compiled"


def enable_compilation_cache(directory: str | os.PathLike | None) -> Path | None:
    """Persist every compiled program in ``directory`` (JAX's own persistent cache), so a second process
    running the same programs on the same devices loads them instead of compiling; None turns it off, also where
    JAX's own ``JAX_COMPILATION_CACHE_DIR`` turned it on."""
    if directory is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # CPU programs compile fast but often
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
