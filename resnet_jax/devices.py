"""Every local (and, after ``jax.distributed.initialize``, every remote) device as one 1-D ``data`` mesh,
and the persistent compilation cache.

Batches are split along the mesh; parameters are replicated. Training, evaluation and the ablation
engine all place data through these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D mesh over every device of every process (or the first ``n_devices``); batches are split along it."""
    return Mesh(np.asarray(jax.devices()[:n_devices]), ("data",))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """Each process's local rows of a batch, as global arrays split over the ``data`` axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return [jax.make_array_from_process_local_data(sharding, a) for a in arrays]


def shard_stacked(mesh: Mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """Stacks of batches ``(n_batches, rows, ...)`` as global arrays split over the ``data`` axis along the rows
    (each process holds its local rows of every batch)."""
    sharding = NamedSharding(mesh, PartitionSpec(None, "data"))
    return [jax.make_array_from_process_local_data(sharding, a) for a in arrays]


def replicate(mesh: Mesh, tree: Any) -> Any:
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
