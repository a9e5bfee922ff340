"""The only module that talks to orbax: save, keep the last N and the best, restore.

Checkpoints live in ``<workdir>/checkpoints/<step>``. Saves are atomic (orbax writes to a temporary
directory and renames), so a run killed at any moment leaves only whole checkpoints behind. The training
loop saves asynchronously: ``save(..., wait=False)`` returns once the arrays are copied off the devices
and the files are written in the background while training goes on; :func:`finish` waits for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from resnet_jax import devices

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
    files are written in the background (call :func:`finish` before reading them back or exiting)."""
    if step in mngr.all_steps():
        return
    mngr.save(step, args=ocp.args.StandardSave(_global(state)), metrics=metrics, force=True)
    if wait:
        finish(mngr)


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait until every checkpoint saved in the background is on disk."""
    mngr.wait_until_finished()


class CheckpointError(OSError):
    """A checkpoint that cannot be read; the message names it and the intact ones."""


def restore(mngr: ocp.CheckpointManager, target: Any, *, step: int | None = None) -> Any:
    """Restore into the structure, dtypes and shardings of ``target`` (latest step by default). A damaged or
    foreign checkpoint is one :class:`CheckpointError` line that names it and the steps that do restore."""
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
        reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)[:200]
        intact = [s for s in steps if s != step and _readable(mngr, s, abstract)]
        _quiet_unfinished_reads()
        use = (f"intact: steps {intact}; score one with --checkpoint {intact[-1]}, or move "
               f"{mngr.directory / str(step)} aside and rerun `train` to resume from step {intact[-1]}"
               if intact else "no other checkpoint restores; retrain with --force-new")
        raise CheckpointError(f"checkpoint {step} in {mngr.directory} cannot be read (damaged, or written for "
                              f"another model): {reason}; {use}") from None


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
    """Shapes, dtypes and shardings to restore into. In a job of several processes, a leaf held by this process
    alone (host arrays, one local device) is restored replicated over every device of the job: orbax would
    otherwise look for the device layout the checkpoint was written from, which a run trained by one process
    and read by a job of several does not have."""
    if jax.process_count() == 1:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(devices.data_mesh(), PartitionSpec())

    return jax.tree.map(lambda x: ocp.utils.to_shape_dtype_struct(x) if _spans_job(x) else
                        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), target)


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
