"""Training and evaluation: jit-compiled steps, data parallel over a device mesh, resumable.

``train_and_evaluate(config, workdir)`` is the whole job. Everything it needs is a small
function here (optimizer, augmentation, steps) so tests and studies can reuse the pieces.
Determinism: the epoch's example order is a function of ``(seed, epoch)`` and the augmentation
key of ``(seed, step)``, so a run resumed from any checkpoint replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import json
import shutil
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax import checkpointing, configs, data, models

Array = jax.Array


class TrainState(train_state.TrainState):
    """Optimizer state plus BatchNorm statistics and the input normalisation of the run."""

    batch_stats: Any
    image_mean: Array
    image_std: Array

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


# Pieces ----------------------------------------------------------------------------------------

def build_model(config: Mapping, num_classes: int) -> nn.Module:
    m = config["model"]
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if m["dtype"] not in dtypes:
        raise configs.ConfigError(f"unknown model.dtype {m['dtype']!r}; valid: {sorted(dtypes)}")
    return models.create_model(m["name"], num_classes=num_classes, stem=m["stem"],
                               conv_impl=m["conv_impl"], dtype=dtypes[m["dtype"]])


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


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).astype(np.float32), x.std(0).astype(np.float32)


def normalize(images: Array, mean: Array, std: Array) -> Array:
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(images: Array, key: Array, *, pad: int = 4) -> Array:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip (uint8 in/out)."""
    n, h, w, _ = images.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))  # noqa: E731
    images = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def cross_entropy(logits: Array, labels: Array, *, smoothing: float = 0.0) -> Array:
    onehot = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing) if smoothing else \
        jax.nn.one_hot(labels, logits.shape[-1])
    return optax.softmax_cross_entropy(logits, onehot)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape, *, seed: int,
                       mean: np.ndarray, std: np.ndarray) -> TrainState:
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape), jnp.float32)))(
        jax.random.key(seed))
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"], image_mean=jnp.asarray(mean),
                             image_std=jnp.asarray(std))


def train_step(state: TrainState, images: Array, labels: Array, key: Array, *, augment_images: bool,
               label_smoothing: float) -> tuple[TrainState, dict[str, Array]]:
    """One SGD step on a uint8 batch; augmentation happens here, on device."""
    key = jax.random.fold_in(key, state.step)
    if augment_images:
        images = augment(images, key)
    x = normalize(images, state.image_mean, state.image_std)

    def loss_fn(params):
        (logits, _), updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                                              train=True, mutable=["batch_stats"])
        loss = cross_entropy(logits, labels, smoothing=label_smoothing).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def eval_step(state: TrainState, images: Array, labels: Array, weights: Array) -> dict[str, Array]:
    """Sums (not means) of loss and correct predictions, so padded batches add up exactly."""
    logits, _ = state.apply_fn(state.variables, normalize(images, state.image_mean, state.image_std))
    correct = (jnp.argmax(logits, -1) == labels) * weights
    return {"loss": jnp.sum(cross_entropy(logits, labels) * weights), "correct": jnp.sum(correct),
            "count": jnp.sum(weights)}


# Devices ---------------------------------------------------------------------------------------

def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every process; batches are split along it."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> list[Array]:
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return [jax.make_array_from_process_local_data(sharding, a) for a in arrays]


def replicate(mesh: Mesh, tree: Any) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def evaluate_split(state: TrainState, split: data.Split, *, batch_size: int, mesh: Mesh,
                   step_fn: Callable | None = None) -> dict[str, float]:
    """Test loss and accuracy over a whole split (the last batch padded and weighted out)."""
    step_fn = step_fn or jax.jit(eval_step)
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for start in range(0, len(split), batch_size):
        images, labels = split.images[start:start + batch_size], split.labels[start:start + batch_size]
        pad = batch_size - len(labels)
        weights = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        out = step_fn(state, *shard_batch(mesh, images, labels, weights))
        for k in totals:
            totals[k] += float(out[k])
    return {"test_loss": totals["loss"] / totals["count"], "test_accuracy": totals["correct"] / totals["count"]}


# The job ---------------------------------------------------------------------------------------

def prepare_workdir(config: Mapping, workdir: Path, *, force_new: bool) -> None:
    """Record the config; refuse a workdir that holds a run of a different config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changed = configs.diff(old, config)
        if changed and not force_new:
            raise configs.ConfigError(
                f"{workdir} holds a run with a different config (keys {changed}); use another --workdir, "
                f"rerun with the same settings to resume, or pass --force-new to discard that run")
        if changed:
            shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
            (workdir / "metrics.jsonl").unlink(missing_ok=True)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(configs.to_json(config))
    tmp.replace(path)


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


def load_data(config: Mapping) -> tuple[data.Split, data.Split]:
    d = config["data"]
    return data.load_train_test(d["name"], data_dir=d["data_dir"], seed=config["train"]["seed"],
                                max_train_examples=d["max_train_examples"],
                                max_test_examples=d["max_test_examples"])


def train_and_evaluate(config: Mapping, workdir: str | Path, *, force_new: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint; return the last metrics."""
    workdir = Path(workdir)
    t = config["train"]
    train, test = load_data(config)  # before touching the workdir: bad data leaves nothing behind
    prepare_workdir(config, workdir, force_new=force_new)
    mesh = data_mesh()
    if t["batch_size"] % mesh.devices.size:
        raise configs.ConfigError(f"train.batch_size={t['batch_size']} must be a multiple of the "
                                  f"{mesh.devices.size} devices")
    steps_per_epoch = len(train) // t["batch_size"]
    if steps_per_epoch == 0:
        raise configs.ConfigError(f"train.batch_size={t['batch_size']} exceeds the {len(train)} training examples")
    model = build_model(config, train.num_classes)
    mean, std = channel_stats(train.images)
    state = create_train_state(model, make_optimizer(config, steps_per_epoch), train.images.shape[1:],
                               seed=t["seed"], mean=mean, std=std)
    mngr = checkpointing.manager(workdir, keep=t["keep_checkpoints"])
    checkpointing.save_initial(workdir, state.params)
    if mngr.latest_step() is not None:
        state = checkpointing.restore(mngr, state)
        log(f"resumed from step {int(state.step)} in {workdir}")
    state = replicate(mesh, state)
    step_fn = jax.jit(
        lambda s, x, y, k: train_step(s, x, y, k, augment_images=t["augment"],
                                      label_smoothing=t["label_smoothing"]), donate_argnums=0)
    eval_fn = jax.jit(eval_step)
    state, last = run_epochs(state, mngr, step_fn=step_fn, arrays=(train.images, train.labels), mesh=mesh,
                             epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
                             evaluate=lambda s: evaluate_split(s, test, batch_size=t["eval_batch_size"],
                                                               mesh=mesh, step_fn=eval_fn),
                             best_metric="test_accuracy", metrics_path=workdir / "metrics.jsonl", log=log)
    return last or {"step": int(state.step), "status": "already complete"}


def run_epochs(state: TrainState, mngr, *, step_fn: Callable, arrays: tuple[np.ndarray, ...], mesh: Mesh,
               epochs: int, batch_size: int, seed: int, evaluate: Callable[[TrainState], dict], best_metric: str,
               metrics_path: Path, log: Callable[[str], None]) -> tuple[TrainState, dict | None]:
    """The epoch loop of every trainer here: resumes at the state's step, and per epoch appends one metrics line
    (``train_<k>`` for each output ``k`` of ``step_fn``, then ``evaluate(state)``) and saves one checkpoint.

    The data order depends only on ``(seed, epoch)``, so a run resumed mid-epoch sees the same batches as an
    uninterrupted one. On SIGTERM/SIGINT the current step is checkpointed before stopping.
    """
    from tqdm import tqdm

    steps_per_epoch = len(arrays[0]) // batch_size
    key = jax.random.key(seed)
    elapsed0, start, last = _last_elapsed(metrics_path), time.perf_counter(), None
    with _StopFlag() as stop:
        while (step := int(state.step)) < epochs * steps_per_epoch:
            epoch, offset = divmod(step, steps_per_epoch)
            order = np.random.default_rng([seed, epoch]).permutation(len(arrays[0]))
            sums, seen, t_epoch = None, 0, time.perf_counter()
            for i in tqdm(range(offset, steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                          disable=None, leave=False):
                idx = order[i * batch_size:(i + 1) * batch_size]
                state, out = step_fn(state, *shard_batch(mesh, *(a[idx] for a in arrays)), key)
                sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
                seen += 1
                if seen == 1:  # keep compilation out of the throughput figure
                    jax.block_until_ready(out)
                    t_epoch = time.perf_counter()
                if stop.signum is not None:
                    checkpointing.save(mngr, int(state.step), state)
                    log(f"stopped by signal {stop.signum}; checkpoint saved at step {int(state.step)}; "
                        f"rerun the same command to resume")
                    raise KeyboardInterrupt
            jax.block_until_ready(sums)  # dispatch is asynchronous: wait, or the throughput is fiction
            train_time = time.perf_counter() - t_epoch
            last = {
                "epoch": epoch + 1, "step": int(state.step),
                **{f"train_{k}": float(v) / seen for k, v in sums.items()},
                **evaluate(state),
                "images_per_second": (seen - 1) * batch_size / train_time if seen > 1 else None,
                "elapsed_s": elapsed0 + time.perf_counter() - start,
                "resumed_mid_epoch": offset > 0,
            }
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(last) + "\n")
            checkpointing.save(mngr, last["step"], state, metrics={best_metric: last[best_metric]})
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    return state, last


def _last_elapsed(path: Path) -> float:
    if not path.is_file():
        return 0.0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["elapsed_s"] if lines else 0.0


# Restoring a finished run ---------------------------------------------------------------------

def restore_run(workdir: str | Path, *, which: str = "best", data_dir: str | None = None):
    """Rebuild ``(config, model, state, test_split)`` of a run from its workdir.

    ``which`` is ``'best'`` (highest test accuracy among kept checkpoints) or ``'latest'``.
    """
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with `resnet-jax train`")
    config = json.loads(path.read_text())
    if data_dir is not None:
        config["data"]["data_dir"] = str(data_dir)
    train, test = load_data(config)
    model = build_model(config, train.num_classes)
    mean, std = channel_stats(train.images)
    state = create_train_state(model, make_optimizer(config, max(1, len(train) // config["train"]["batch_size"])),
                               train.images.shape[1:], seed=config["train"]["seed"], mean=mean, std=std)
    mngr = checkpointing.manager(workdir, keep=config["train"]["keep_checkpoints"])
    if which not in ("best", "latest"):
        raise ValueError(f"unknown checkpoint choice {which!r}; valid: 'best', 'latest'")
    step = checkpointing.best_step(mngr) if which == "best" else None
    state = checkpointing.restore(mngr, state, step=step)
    return config, model, state, test
