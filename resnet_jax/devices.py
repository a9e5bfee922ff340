"""Every local (and, after ``jax.distributed.initialize``, every remote) device as one 1-D ``data`` mesh.

Batches are split along the mesh; parameters are replicated. Training, evaluation and the ablation
engine all place data through these three functions.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every process; batches are split along it."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """Each process's local rows of a batch, as global arrays split over the ``data`` axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return [jax.make_array_from_process_local_data(sharding, a) for a in arrays]


def replicate(mesh: Mesh, tree: Any) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the device count that holds ``batch_size`` rows."""
    n = mesh.devices.size
    return -(-batch_size // n) * n


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` padded with zero rows to ``size`` rows, so the last batch keeps the compiled shape."""
    if len(array) == size:
        return array
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])
