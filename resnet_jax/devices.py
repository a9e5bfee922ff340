"""Every local (and, after ``jax.distributed.initialize``, every remote) device as one 1-D ``data`` mesh,
and the persistent compilation cache.

Batches are split along the mesh; parameters are replicated. Training, evaluation and the ablation
engine all place data through these functions.
"""

from __future__ import annotations

import os
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


def join_job(*, coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
             auto: bool = False, timeout_s: int = 60, heartbeat_s: int = 20) -> bool:
    """Join a job of several processes on JAX's distributed runtime, before anything touches a device.

    ``auto`` lets JAX find the cluster itself (TPU pod slices, SLURM, Open MPI); otherwise every process names
    the coordinator (process 0's ``host:port``), the process count and its own id. A coordinator that does not
    answer is an error within ``timeout_s``; a process that dies is noticed by the others within about
    ``heartbeat_s`` (``$RESNET_JAX_JOIN_TIMEOUT`` and ``$RESNET_JAX_HEARTBEAT`` override both). Returns whether
    a job was joined; afterwards only process 0 writes files."""
    if not auto and coordinator is None:
        return False
    if not auto and (num_processes is None or process_id is None or not 0 <= process_id < num_processes):
        raise DistributedError(f"--coordinator {coordinator} needs --num-processes N and --process-id I with "
                               f"0 <= I < N (got N={num_processes}, I={process_id})")
    timeout_s = int(os.environ.get("RESNET_JAX_JOIN_TIMEOUT", timeout_s))
    heartbeat_s = int(os.environ.get("RESNET_JAX_HEARTBEAT", heartbeat_s))
    if not auto and process_id != 0:  # JAX aborts the process when the coordinator never answers: ask first
        _wait_for(coordinator, timeout_s)
    try:
        if auto:
            jax.distributed.initialize(initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat_s)
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s,
                                       heartbeat_timeout_seconds=heartbeat_s)
    except Exception as err:  # noqa: BLE001 - the runtime raises several types; each means "not joined"
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)[:300]
        where = "the cluster JAX detects (TPU, SLURM, MPI)" if auto else \
            f"coordinator {coordinator} as process {process_id} of {num_processes}"
        raise DistributedError(f"could not join {where} within {timeout_s} s: {reason}; check that process 0 "
                               f"runs and that its host:port is reachable from here") from None
    files.set_writer(jax.process_index() == 0)
    return True


def _wait_for(address: str, timeout_s: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; a DistributedError after ``timeout_s`` seconds."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator {address!r} is not HOST:PORT (e.g. 10.0.0.2:12345)")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise DistributedError(f"coordinator {address} did not answer within {timeout_s:.0f} s ({err}); "
                                       f"start process 0 there first, or check the address") from None
            time.sleep(0.5)


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
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnet-jax" / "compiled"


def enable_compilation_cache(directory: str | os.PathLike | None) -> Path | None:
    """Persist every compiled program in ``directory`` (JAX's own persistent cache), so a second process
    running the same programs on the same devices loads them instead of compiling; None leaves it off."""
    if directory is None:
        return None
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # CPU programs compile fast but often
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
