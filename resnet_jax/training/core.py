"""The one training core: state, optimizer, the resumable epoch loop, checkpoint choice, restoring a run.

A task (classification, segmentation, Study B's CNNs) plugs in what differs as a :class:`Task`:
its splits, model, train step and evaluation. ``train_and_evaluate(config, workdir, task)`` is the
whole job. Determinism: the epoch's example order is a function of ``(seed, epoch)`` and the step's
random key of ``(seed, step)``, so a run resumed from any checkpoint replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from resnet_jax import checkpointing, configs, devices, files, ledger
from resnet_jax.data import inputs

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TRAINING_OUTPUTS = ("checkpoints", "metrics.jsonl", "evaluation.json", "evaluation-best.json",
                    "evaluation-latest.json", "initial_params", "dataset.json", "partial_epoch.json")
"""What training writes into its workdir, declared in the workdir's ledger; the layers above declare theirs."""


class TrainState(train_state.TrainState):
    """Optimizer state plus BatchNorm statistics and the input normalisation of the run.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, optax
        >>> from resnet_jax.training import TrainState
        >>> model = nn.Dense(2)
        >>> params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
        >>> state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1), batch_stats={},
        ...                           image_mean=jnp.zeros(3), image_std=jnp.ones(3))
        >>> int(state.step), sorted(state.variables)     # ``variables`` is what ``model.apply`` takes
        (0, ['batch_stats', 'params'])
    """

    batch_stats: Any
    image_mean: Array
    image_std: Array

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class Splits:
    """A task's data: ``val`` (None where the task has none) chooses the best checkpoint."""

    train: Any
    val: Any
    test: Any


@dataclasses.dataclass(frozen=True)
class Task:
    """What a task plugs into the core.

    ``arrays(split)`` gives the host arrays a step consumes (images first); ``train_step(config)``
    the pure step ``(state, *arrays, key) -> (state, metrics)``; ``evaluate(config, model)`` a
    function ``(state, split, mesh, prefix) -> dict`` of summary metrics; ``best_metric(config)`` the name
    (without split prefix) of the summary metric that ranks checkpoints on validation (:func:`ranking_metric`);
    ``metric(config)`` the per-example metric plug-in (:mod:`resnet_jax.metrics`) that ablation sweeps score with.

    Example:
        >>> from resnet_jax import configs
        >>> from resnet_jax.training.classification import TASK
        >>> config = configs.load_config("synthetic-tiny")
        >>> TASK.name, TASK.best_metric(config), TASK.metric(config)
        ('classification', 'accuracy', Accuracy(name='accuracy'))
    """

    name: str
    load_splits: Callable[[Mapping], Splits]
    arrays: Callable[[Any], tuple[np.ndarray, ...]]
    build_model: Callable[[Mapping, Splits], nn.Module]
    train_step: Callable[[Mapping], Callable]
    evaluate: Callable[[Mapping, nn.Module], Callable]
    best_metric: Callable[[Mapping], str]
    metric: Callable[[Mapping], Any]
    input_stats: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] = inputs.channel_stats


def ranking_metric(task: Task, splits: Splits, config: Mapping) -> str:
    """The key that ranks checkpoints: ``val_<best_metric>``; ``test_<best_metric>`` only for runs without a
    validation split (runs of older resnet-jax, or a config that sets none), which reports mark as such."""
    return ("val_" if splits.val is not None else "test_") + task.best_metric(config)


def model_dtype(config: Mapping):
    return DTYPES[config["model"]["dtype"]]


def make_optimizer(config: Mapping, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with Nesterov momentum, linear warm-up then cosine decay, weight decay on kernels only."""
    t = config["train"]
    total = max(1, t["epochs"] * steps_per_epoch)
    warmup = min(int(t["warmup_epochs"] * steps_per_epoch), total - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, t["learning_rate"], warmup, total, end_value=0.0)
    kernels_only = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: path[-1].key == "kernel", params)
    return optax.chain(
        optax.add_decayed_weights(t["weight_decay"], mask=kernels_only),
        optax.sgd(schedule, momentum=t["momentum"], nesterov=t["nesterov"]),
    )


@functools.lru_cache(maxsize=64)
def _initializer(model: nn.Module, image_shape: tuple[int, ...]) -> Callable:
    """One traced and compiled ``init`` per model and input shape: a job builds the state of one model many times
    (each restore needs a target, and so do slim runs and timing), and tracing a ResNet34 costs seconds."""
    return jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape), jnp.float32)))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape, *, seed: int,
                       mean: np.ndarray, std: np.ndarray) -> TrainState:
    try:
        init = _initializer(model, tuple(image_shape))
    except TypeError:  # a model with an unhashable field: traced anew
        init = _initializer.__wrapped__(model, tuple(image_shape))
    variables = init(jax.random.key(seed))
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), image_mean=jnp.asarray(mean),
                             image_std=jnp.asarray(std))


def _fresh_state(config: Mapping, model: nn.Module, train_images: np.ndarray, task: Task, *,
                 stats: bool = True) -> TrainState:
    """The run's initial state; without ``stats`` the input statistics are placeholders of the right shape
    (for a restore target, whose values come from the checkpoint)."""
    steps_per_epoch = max(1, len(train_images) // config["train"]["batch_size"])
    mean, std = task.input_stats(train_images if stats else train_images[:1])
    return create_train_state(model, make_optimizer(config, steps_per_epoch), train_images.shape[1:],
                              seed=config["train"]["seed"], mean=mean, std=std)


# The workdir -----------------------------------------------------------------------------------

def prepare_workdir(config: Mapping, workdir: Path, *, force_new: bool) -> None:
    """Record the config; refuse a workdir that holds a run of a different config.

    ``force_new`` removes everything derived from the old run (every output its ledger declares), so no
    table of the old model can survive into the new one.
    """
    path = workdir / "config.json"
    if not files.WRITER:  # process 0 checks and records; the others wait for it, then read the same folder
        devices.barrier(f"prepare {workdir}")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    if force_new:
        clear_run(workdir)
    elif path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise configs.ConfigError(f"{path} is not valid JSON ({err}); pass --force-new to start over") from None
        changed = configs.diff(old, config)
        if changed:
            raise configs.ConfigError(
                f"{workdir} holds a run with a different config (keys {changed}); use another --workdir, "
                f"rerun with the same settings to resume, or pass --force-new to discard that run")
    ledger.declare(workdir, "train", TRAINING_OUTPUTS)
    files.write_text(path, configs.to_json(config))
    devices.barrier(f"prepare {workdir}")


def clear_run(workdir: Path) -> None:
    """Remove what was made from a run: training's outputs and everything its ledger says other stages wrote
    (a workdir of a resnet-jax older than the ledger: the names those versions wrote)."""
    unreadable = ledger.discard_unreadable(workdir)
    legacy = unreadable or ((workdir / "config.json").is_file() and not (workdir / ledger.FILE).is_file())
    ledger.declare(workdir, "train", TRAINING_OUTPUTS + (ledger.LEGACY_OUTPUTS if legacy else ()))
    ledger.clear(workdir)


def describe_splits(splits: Splits) -> dict[str, Any]:
    """What the run actually read, per split: size, class names and counts, image shape and a content digest."""
    out = {}
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        if split is None:
            continue
        targets = split.labels if hasattr(split, "labels") else split.masks
        digest = hashlib.sha256(np.ascontiguousarray(split.images).tobytes())
        digest.update(np.ascontiguousarray(targets).tobytes())
        counts = np.bincount(np.asarray(targets).ravel().astype(np.int64), minlength=split.num_classes)
        out[name] = {"n": len(split), "class_names": list(split.class_names), "image_shape": list(split.images.shape[1:]),
                     "class_counts" if hasattr(split, "labels") else "pixel_counts": counts.tolist(),
                     "sha256": digest.hexdigest()}
    return out


def check_batch_size(config: Mapping, n_train: int, mesh: Mesh) -> int:
    """Steps per epoch; errors name the key when the batch cannot be split or exceeds the data."""
    b = config["train"]["batch_size"]
    if b % mesh.devices.size:
        raise configs.ConfigError(f"train.batch_size={b} must be a multiple of the {mesh.devices.size} devices")
    if n_train // b == 0:
        raise configs.ConfigError(f"train.batch_size={b} exceeds the {n_train} training examples")
    return n_train // b


# The job ---------------------------------------------------------------------------------------

def train_and_evaluate(config: Mapping, workdir: str | Path, task: Task, *, force_new: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint; return the last metrics.

    Each epoch is scored on the validation split (the test split where the task has none); with a
    validation split, the checkpoint best on it is finally scored on the test split (``evaluation.json``), unless
    ``train.score_test`` is false: a run that chooses a recipe on validation leaves the test split unseen until
    the chosen run is rerun with it true. The workdir is held meanwhile (:func:`resnet_jax.ledger.hold`): a second training of
    it, from another command or a study that trains runs inside its own workdir, waits for this one.
    """
    with ledger.hold(workdir, log=log):
        return _train_and_evaluate(config, Path(workdir), task, force_new=force_new, log=log)


def _train_and_evaluate(config: Mapping, workdir: Path, task: Task, *, force_new: bool,
                        log: Callable[[str], None]) -> dict[str, Any]:
    t = config["train"]
    splits = task.load_splits(config)  # before touching the workdir: bad data leaves nothing behind
    mesh = devices.data_mesh()
    check_batch_size(config, len(splits.train), mesh)
    model = task.build_model(config, splits)
    prepare_workdir(config, workdir, force_new=force_new)
    files.write_json(workdir / "dataset.json", describe_splits(splits))
    ranking = ranking_metric(task, splits, config)
    mngr = checkpointing.manager(workdir, keep=t["keep_checkpoints"], best_metric=ranking)
    train_images = task.arrays(splits.train)[0]
    if mngr.latest_step() is not None:  # restoring needs only the state's structure: skip compiling init
        state = checkpointing.restore(mngr, jax.eval_shape(lambda: _fresh_state(config, model, train_images, task,
                                                                                stats=False)))
        log(f"resumed from step {int(state.step)} in {workdir}")
    else:
        state = _fresh_state(config, model, train_images, task)
        checkpointing.save_initial(workdir, state.params)  # from one device in one process, before any step runs
    state = devices.replicate(mesh, state)
    trim_metrics(workdir / "metrics.jsonl", int(state.step), log)
    step_fn = jax.jit(task.train_step(config), donate_argnums=0)
    evaluate = task.evaluate(config, model)
    monitor, prefix = (splits.val, "val_") if splits.val is not None else (splits.test, "test_")
    state, last = run_epochs(state, mngr, step_fn=step_fn, arrays=task.arrays(splits.train), mesh=mesh,
                             epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
                             evaluate=lambda s: evaluate(s, monitor, mesh, prefix), best_metric=ranking,
                             metrics_path=workdir / "metrics.jsonl", log=log)
    if splits.val is not None and t["score_test"] and not (workdir / "evaluation.json").is_file():
        best = checkpointing.best_step(mngr, metric=ranking)
        best_state = checkpointing.restore(mngr, state, step=best) if best is not None else state
        write_evaluation(workdir, evaluate(best_state, splits.test, mesh, "test_"), step=int(best_state.step),
                         which="best", n_examples=len(splits.test), log=log, chosen_by=ranking)
    return last or {"step": int(state.step), "status": "already complete"}


def write_evaluation(workdir: Path, result: Mapping, *, step: int, which: str, n_examples: int,
                     log: Callable[[str], None] = print, name: str = "evaluation.json",
                     show: Callable[[dict], None] | None = None, chosen_by: str | None = None) -> dict:
    """Log (and ``show``) a test score, then keep it in ``name``: a read-only run still shows its score;
    ``chosen_by`` is the validation score that chose the checkpoint, where the checkpoint is the best one."""
    result = {"checkpoint": which, "step": step, "n_examples": n_examples,
              **({"chosen_by": chosen_by} if chosen_by else {}), **result}
    log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    if show is not None:
        show(result)
    files.write_json(Path(workdir) / name, result)
    return result


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def run_epochs(state: Any, mngr, *, step_fn: Callable, arrays: tuple[np.ndarray, ...], mesh: Mesh,
               epochs: int, batch_size: int, seed: int, evaluate: Callable[[Any], dict], best_metric: str,
               metrics_path: Path, log: Callable[[str], None]) -> tuple[Any, dict | None]:
    """The epoch loop of every trainer here: resumes at the state's step, and per epoch appends one metrics line
    (``train_<k>`` for each output ``k`` of ``step_fn``, then ``evaluate(state)``) and saves one checkpoint.

    The data order depends only on ``(seed, epoch)``, so a run resumed mid-epoch sees the same batches as an
    uninterrupted one. On SIGTERM/SIGINT the current step is checkpointed before stopping.
    """
    from tqdm import tqdm

    steps_per_epoch = len(arrays[0]) // batch_size
    fetch, _ = devices.batch_source(mesh, arrays)  # the training set on the devices when it fits
    key = jax.random.key(seed)
    elapsed0, start, last = _last_elapsed(metrics_path), time.perf_counter(), None
    partial = metrics_path.with_name("partial_epoch.json")  # a stopped epoch's train sums, for its row
    with _StopFlag() as stop:
        while (step := int(state.step)) < epochs * steps_per_epoch:
            epoch, offset = divmod(step, steps_per_epoch)
            order = np.random.default_rng([seed, epoch]).permutation(len(arrays[0]))
            sums, seen = _resumed_sums(partial, step) if offset else (None, 0)
            here, t_epoch = 0, time.perf_counter()
            for i in tqdm(range(offset, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                          disable=None, leave=False):
                idx = order[i * batch_size:(i + 1) * batch_size]
                state, out = step_fn(state, *fetch(idx), key)
                sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
                seen, here = seen + 1, here + 1
                if here == 1:  # keep compilation out of the throughput figure
                    jax.block_until_ready(out)
                    t_epoch = time.perf_counter()
                if stop.signum is not None and i < steps_per_epoch - 1:  # the last step: finish the epoch first
                    _stop(mngr, state, stop.signum, partial, sums, seen, log)
            jax.block_until_ready(sums)  # dispatch is asynchronous: wait, or the throughput is fiction
            train_time = time.perf_counter() - t_epoch
            last = {
                "epoch": epoch + 1, "step": int(state.step),
                **{f"train_{k}": float(v) / seen for k, v in sums.items()},  # over the whole epoch, resumed or not
                **evaluate(state),
                "images_per_second": (here - 1) * batch_size / train_time if here > 1 else None,
                "elapsed_s": elapsed0 + time.perf_counter() - start,
                "resumed_mid_epoch": offset > 0,
            }
            if files.WRITER:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(last) + "\n")
                partial.unlink(missing_ok=True)
            # Written in the background while the next epoch trains (orbax copies the arrays off the devices
            # before it returns, so the donated state buffers are free to reuse).
            checkpointing.save(mngr, last["step"], state, metrics={best_metric: last[best_metric]}, wait=False)
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
            if stop.signum is not None:  # asked during the epoch's last step: its row and checkpoint are kept
                checkpointing.finish(mngr)
                log(f"stopped by signal {stop.signum} after epoch {epoch + 1}; rerun the same command to resume")
                raise KeyboardInterrupt(f"signal {stop.signum}")
    checkpointing.finish(mngr)
    return state, last


def trim_metrics(path: Path, step: int, log: Callable[[str], None]) -> None:
    """Keep only the metrics rows of epochs the restored checkpoint includes: a process killed while an epoch's
    checkpoint was still being written leaves that epoch's row behind, and the epoch runs again."""
    if not files.WRITER or not path.is_file():
        return
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    kept = [x for x in lines if json.loads(x)["step"] <= step]
    if len(kept) < len(lines):
        files.write_text(path, "".join(x + "\n" for x in kept))
        log(f"{len(lines) - len(kept)} metrics row(s) past the last checkpoint (step {step}) dropped: those epochs "
            f"run again")


def _stop(mngr, state, signum: int, partial: Path, sums: dict, seen: int, log) -> None:
    """Checkpoint the current step and the epoch's train sums so far, then stop."""
    checkpointing.finish(mngr)  # an epoch's checkpoint may still be writing
    checkpointing.save(mngr, int(state.step), state)
    files.write_json(partial, {"step": int(state.step), "seen": seen,
                               "sums": {k: float(v) for k, v in jax.device_get(sums).items()}})
    log(f"stopped by signal {signum}; checkpoint saved at step {int(state.step)}; rerun the same command to resume")
    raise KeyboardInterrupt(f"signal {signum}")


def _resumed_sums(partial: Path, step: int) -> tuple[dict | None, int]:
    """The train sums of the steps an interrupted epoch already ran, if they were kept for this step."""
    if not partial.is_file():
        return None, 0
    kept = json.loads(partial.read_text())
    return (kept["sums"], kept["seen"]) if kept.get("step") == step else (None, 0)


def _last_elapsed(path: Path) -> float:
    if not path.is_file():
        return 0.0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["elapsed_s"] if lines else 0.0


# Restoring a finished run ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run restored from its workdir: config, model, state, its splits, and the metric that chose
    the checkpoint (``val_...``, or ``test_...`` for a run without a validation split).

    ``runs/tiny`` is a run trained by ``resnet-jax train --config synthetic-tiny --workdir runs/tiny``.

    Example:
        >>> from resnet_jax.training import restore
        >>> run = restore("runs/tiny")  # doctest: +SKIP
        >>> run.config["model"]["name"], run.task.name, len(run.val), len(run.test), run.chosen_by  # doctest: +SKIP
        ('resnet_tiny', 'classification', 128, 256, 'val_accuracy')
        >>> logits, _ = run.model.apply(run.state.variables, run.test.images[:4] / 255.0)  # doctest: +SKIP
    """

    config: dict
    model: nn.Module
    state: TrainState
    test: Any
    task: Task
    val: Any = None
    chosen_by: str = ""
    which: str = "best"

    @property
    def choice(self) -> str:
        """Which checkpoint this is and why, for reports."""
        if self.which == "latest":
            return f"latest checkpoint (step {int(self.state.step)})"
        if self.which.isdigit():
            return f"checkpoint of step {int(self.state.step)}, chosen by hand"
        split = "validation" if self.chosen_by.startswith("val_") else "TEST"
        note = "" if split == "validation" else (" - this run has no validation split, so the test split chose "
                                                 "the checkpoint it is scored on")
        return f"best checkpoint by {split} {self.chosen_by.split('_', 1)[1]} (step {int(self.state.step)}){note}"


def restore_run(workdir: str | Path, config: Mapping, task: Task, *, which: str = "best") -> Run:
    """Rebuild a run from ``workdir`` and its (completed) ``config``; ``which`` is ``'best'`` (by the
    task's best metric), ``'latest'`` or a step number."""
    which = str(which)
    if which not in ("best", "latest") and not which.isdigit():
        raise configs.ConfigError(f"unknown checkpoint choice {which!r}; valid: 'best', 'latest' or a step number")
    splits = task.load_splits(config)
    model = task.build_model(config, splits)
    target = jax.eval_shape(lambda: _fresh_state(config, model, task.arrays(splits.train)[0], task, stats=False))
    ranking = ranking_metric(task, splits, config)
    mngr = checkpointing.manager(workdir, keep=config["train"]["keep_checkpoints"], best_metric=ranking)
    step = (checkpointing.best_step(mngr, metric=ranking) if which == "best" else
            int(which) if which.isdigit() else None)
    state = checkpointing.restore(mngr, target, step=step)
    return Run(dict(config), model, state, splits.test, task, val=splits.val, chosen_by=ranking, which=which)


def evaluate_run(run: Run, workdir: str | Path, *, which: str, log: Callable[[str], None] = print,
                 show: Callable[[dict], None] | None = None) -> dict:
    """Score a restored run on its test split; written to ``evaluation-<which>.json`` (training's own
    final score of its best checkpoint stays in ``evaluation.json``)."""
    mesh = devices.data_mesh()
    evaluate = run.task.evaluate(run.config, run.model)
    result = evaluate(devices.replicate(mesh, run.state), run.test, mesh, "test_")
    return write_evaluation(Path(workdir), result, step=int(run.state.step), which=which,
                            chosen_by=run.chosen_by if which == "best" else None,
                            n_examples=len(run.test), log=log, name=f"evaluation-{which}.json", show=show)
