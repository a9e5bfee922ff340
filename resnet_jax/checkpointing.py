"""The only module that talks to orbax: save, keep the last N and the best, restore.

Checkpoints live in ``<workdir>/checkpoints/<step>``. Saves are atomic (orbax writes to a temporary
directory and renames), so a run killed at any moment leaves only whole checkpoints behind. The training
loop saves asynchronously: ``save(..., wait=False)`` returns once the arrays are copied off the devices
and the files are written in the background while training goes on; :func:`finish` waits for them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from resnet_jax import devices, files


class _ReportedByUs(logging.Filter):
    """Drops orbax's logs of a failed background save with its traceback: the failure is raised again when the
    save is awaited and reported in one line (:class:`CheckpointError`), so a user sees it once, without a stack
    of orbax's internals printed first by whichever thread failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[2] is None:
            return True
        frames = [frame.filename for frame in traceback.extract_tb(record.exc_info[2])] + [record.pathname]
        return not any(f"{os.sep}orbax{os.sep}" in name for name in frames)


for _name in ("absl", "asyncio"):  # orbax logs through absl; its event loops' failed callbacks through asyncio
    logging.getLogger(_name).addFilter(_ReportedByUs())


class CheckpointError(OSError):
    """A checkpoint that cannot be written or read; the message says why and names the intact ones."""


def manager(workdir: str | Path, *, best_metric: str, keep: int = 2) -> ocp.CheckpointManager:
    """A manager that keeps the ``keep`` latest checkpoints and the one best by ``best_metric``."""
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=True, create=True,
        best_fn=lambda m: m[best_metric], best_mode="max",  # also makes orbax store the metrics
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, metrics: dict | None = None,
         wait: bool = True) -> None:
    """Save ``state`` (any pytree) at ``step``; metrics (if any) rank it for "best". With ``wait=False`` the
    files are written in the background (call :func:`finish` before reading them back or exiting). A disk
    without room for it is a :class:`CheckpointError` before anything is written (or, when the room runs out
    while writing, once the write fails); the kept checkpoints stay as they were."""
    if step in mngr.all_steps():
        return
    tree = _global(state)
    _check_room(mngr, step, sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))
    try:
        mngr.save(step, args=ocp.args.StandardSave(tree), metrics=metrics, force=True)
    except Exception as err:
        _raise_if_full(err, mngr, step)
        raise
    if wait:
        finish(mngr)


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait until every checkpoint saved in the background is on disk."""
    try:
        mngr.wait_until_finished()
    except Exception as err:
        _raise_if_full(err, mngr, None)
        raise


ROOM_MARGIN = 1.1
"""A checkpoint's bytes on disk against its arrays' bytes, with some to spare (metadata, the metrics)."""


def _full_disk(mngr: ocp.CheckpointManager, step: int | None, *, needed: float | None, free: float) -> CheckpointError:
    kept = mngr.latest_step()
    which = f"checkpoint {step}" if step is not None else "a checkpoint"
    need = f"it needs about {needed / 2**20:.1f} MB and " if needed else ""
    resume = f"resume from step {kept} (intact)" if kept is not None else "start again"
    return CheckpointError(f"no space left in {mngr.directory} for {which}: {need}{free / 2**20:.1f} MB are free "
                           f"there; free some space (or move the workdir), then rerun the same command to {resume}")


def _check_room(mngr: ocp.CheckpointManager, step: int, nbytes: int) -> None:
    if jax.process_count() > 1:  # every process writes its part; a refusal in one would leave the others waiting
        return
    directory = Path(mngr.directory)
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < nbytes * ROOM_MARGIN:
        raise _full_disk(mngr, step, needed=nbytes * ROOM_MARGIN, free=free)


def _raise_if_full(err: Exception, mngr: ocp.CheckpointManager, step: int | None) -> None:
    """``err`` as one :class:`CheckpointError` line when the disk ran out of room (the unfinished checkpoint's
    temporary folder removed); any other error is left to the caller."""
    text = str(err)
    if getattr(err, "errno", None) != errno.ENOSPC and "No space left on device" not in text:
        return
    _quiet_unfinished_reads()
    if files.WRITER:
        for unfinished in Path(mngr.directory).glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(unfinished, ignore_errors=True)
    written = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
    raise _full_disk(mngr, step if step is not None else (int(written.group(1)) if written else None),
                     needed=None, free=shutil.disk_usage(mngr.directory).free) from None


def restore(mngr: ocp.CheckpointManager, target: Any, *, step: int | None = None) -> Any:
    """Restore into the structure and dtypes of ``target`` (latest step by default), on the devices this process
    has, whatever devices wrote it. A checkpoint of another model is one :class:`CheckpointError` line that names
    the first differing array; a damaged one, one line that names it and the steps that do restore."""
    steps = sorted(mngr.all_steps())
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    if step not in steps:
        raise CheckpointError(f"no checkpoint at step {step} in {mngr.directory}; kept steps: {steps}")
    abstract = _abstract(target)
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax and TensorStore raise many types for a cut or foreign file
        _quiet_unfinished_reads()
        mismatch = _mismatch(mngr, step, abstract)
        if mismatch:
            raise CheckpointError(f"checkpoint {step} in {mngr.directory} holds another model than the one this "
                                  f"config and data build: {mismatch}; read it with the config and data it was "
                                  f"trained with (--data-dir), or train this model in another --workdir") from None
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)[:200]
        intact = [s for s in steps if s != step and _readable(mngr, s, abstract)]
        use = (f"intact: steps {intact}; score one with --checkpoint {intact[-1]}, or move "
               f"{mngr.directory / str(step)} aside and rerun `train` to resume from step {intact[-1]}"
               if intact else "no other checkpoint restores; retrain with --force-new")
        raise CheckpointError(f"checkpoint {step} in {mngr.directory} cannot be read (damaged): {reason}; "
                              f"{use}") from None


def _names(tree: Any) -> dict[str, Any]:
    """Leaves by their path written as ``a.b.0.c``, whatever containers (dicts, dataclasses, tuples) hold them."""
    def part(key):
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {".".join(part(k) for k in path): leaf for path, leaf in leaves}


def _mismatch(mngr: ocp.CheckpointManager, step: int, abstract: Any) -> str:
    """What differs between the arrays stored at ``step`` and those asked for: shapes or dtypes of the arrays both
    name, else the arrays only one of them has; empty when they agree (then the bytes are at fault)."""
    try:
        stored = _names(mngr.item_metadata(step).tree)
    except Exception:  # noqa: BLE001 - unreadable metadata: damaged, said by the caller
        return ""
    wanted = _names(abstract)
    for name in sorted(stored.keys() & wanted.keys(), key=lambda n: (not n.startswith("params"), n)):
        have, want = stored[name], wanted[name]
        if tuple(have.shape) != tuple(want.shape):
            return (f"{name} has shape {tuple(have.shape)} there and {tuple(want.shape)} here"
                    + _classes_hint(tuple(have.shape), tuple(want.shape)))
        if getattr(have, "dtype", None) is not None and jax.numpy.dtype(have.dtype) != jax.numpy.dtype(want.dtype):
            return f"{name} is {jax.numpy.dtype(have.dtype)} there and {jax.numpy.dtype(want.dtype)} here"
    missing, extra = sorted(wanted.keys() - stored.keys()), sorted(stored.keys() - wanted.keys())
    if missing or extra:
        return (f"arrays only here: {missing[:3]}{' ...' if len(missing) > 3 else ''}; only there: "
                f"{extra[:3]}{' ...' if len(extra) > 3 else ''}")
    return ""


def _classes_hint(stored: Sequence[int], wanted: Sequence[int]) -> str:
    """For an output layer whose last axis alone differs: the class counts in words."""
    if len(stored) == len(wanted) and stored[:-1] == wanted[:-1] and len(stored) <= 2:
        return f" (the output layer: {stored[-1]} classes in the checkpoint, {wanted[-1]} in this data)"
    return ""


def _spans_job(x: Any) -> bool:
    """Whether ``x`` is an array laid out over devices of several processes (a job's global array)."""
    return isinstance(x, jax.Array) and not x.sharding.is_fully_addressable


def _global(tree: Any) -> Any:
    """``tree`` as arrays a multi-process save can write: in a job of several processes every leaf this process
    holds alone (host arrays, one local device) is replicated over the job's devices (each process has the same
    values); in one process the tree is saved as it is."""
    if jax.process_count() == 1:
        return tree
    held_here = not all(_spans_job(x) for x in jax.tree.leaves(tree))
    return devices.replicate(devices.data_mesh(), tree) if held_here else tree


def _abstract(target: Any) -> Any:
    """Shapes, dtypes and shardings to restore into. A leaf with no placement of its own (a shape from
    ``jax.eval_shape``, a host array) or, in a job of several processes, one held by this process alone is restored
    replicated over every device of the job: orbax would otherwise look for the devices the checkpoint was written
    from, which a reader with another device or process count does not have."""
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(devices.data_mesh(), PartitionSpec())

    def leaf(x):
        placed = isinstance(x, jax.Array) and (jax.process_count() == 1 or _spans_job(x))
        if placed or not hasattr(x, "shape"):  # placed arrays keep their layout; Python scalars stay scalars
            return ocp.utils.to_shape_dtype_struct(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
    return jax.tree.map(leaf, target)


def _quiet_unfinished_reads() -> None:
    """A failed restore leaves orbax's other read coroutines unfinished; Python would print each one's traceback
    when it is collected. Those belong to the error already reported, so they are dropped (others still print)."""
    import sys

    previous = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if code is None or "orbax" not in code.co_filename:
            previous(unraisable)

    sys.unraisablehook = hook


def _readable(mngr: ocp.CheckpointManager, step: int, abstract: Any) -> bool:
    try:
        mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not intact"
        return False


def best_step(mngr: ocp.CheckpointManager, *, metric: str) -> int | None:
    """The kept step with the highest ``metric``; None if no kept step has metrics."""
    scored = []
    for step in mngr.all_steps():
        m = mngr.metrics(step)
        if m and metric in m:
            scored.append((m[metric], step))
    return max(scored)[1] if scored else None


def save_initial(workdir: str | Path, params: Any) -> None:
    """Keep the run's initial parameters once (``reinit`` ablations restore kernels to them)."""
    path = Path(workdir).absolute() / "initial_params"
    exists = path.exists()
    devices.barrier("initial params: every process has looked")  # the save below is collective
    if not exists:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(path, _global(params))


def load_initial(workdir: str | Path, target: Any) -> Any:
    path = Path(workdir).absolute() / "initial_params"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this run kept no initial parameters, so 'reinit' cannot run")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, _abstract(target))
