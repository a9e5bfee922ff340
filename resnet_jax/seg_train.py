"""Segmentation runs: configs and presets, the resumable training loop, restoring a run for ablation.

``train_and_evaluate(config, workdir)`` (``resnet-jax train-seg``) trains a :class:`segmentation.PSPNet`
and reuses the classification pieces of :mod:`resnet_jax.train` (``TrainState``, ``make_optimizer``,
the device mesh helpers, ``prepare_workdir``, the stop flag) and :mod:`resnet_jax.checkpointing`.
Per epoch it appends the validation Dice per class to ``metrics.jsonl`` and checkpoints, keeping the
checkpoint best by validation Dice; at the end it scores that checkpoint on the test split
(``evaluation.json``). Determinism is the classification loop's: the epoch's order is a function of
``(seed, epoch)``, augmentation and dropout keys of ``(seed, step)``, so resuming replays exactly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from resnet_jax import ablation as abl
from resnet_jax import checkpointing, configs, protocols, seg_data, train
from resnet_jax import segmentation as seg

Array = jax.Array
BEST_METRIC = "val_dice"

SEG_DEFAULTS: dict[str, Any] = {
    "about": "",
    "task": "segmentation",  # how `resnet-jax ablate` recognises a segmentation run
    "model": {
        "encoder": "resnet34",  # a name in models.MODELS; resnet_tiny for tests
        "output_stride": 8,  # 8 (PSPNet: stages 3-4 dilated), 16 or 32
        "bins": [1, 2, 3, 6],
        "pool_features": None,  # per pyramid branch; None = encoder channels / len(bins)
        "head_features": 512,
        "dropout": 0.1,
        "stem": "torchvision",
        "conv_impl": "auto",
        "dtype": "float32",
    },
    "data": {
        "name": "acdc",  # acdc | sunnybrook (labels for a data_dir) | oxford_iiit_pet (TFDS) | synthetic
        "data_dir": None,  # <split>.zip, <split>/{images,masks}/ or a flat {images,masks}/ folder
        "train_split": "train",
        "val_split": "val",  # selects the best checkpoint; None = use the test split
        "test_split": "test",
        "id_prefixes": None,  # {split: [id prefixes]} to split a flat folder by patient
        "class_names": list(seg.CLASS_NAMES),  # background first
        "image_size": 224,  # centre crop / zero pad (native resolution, no resampling)
        "percentiles": [0.5, 99.5],  # per-image intensity range mapped to [0, 1]
        "max_train_examples": None,
        "max_val_examples": None,
        "max_test_examples": None,
    },
    "train": {
        "epochs": 100,
        "batch_size": 16,
        "eval_batch_size": 32,
        "learning_rate": 0.01,  # peak, after warm-up (SGD + Nesterov, cosine decay: train.make_optimizer)
        "warmup_epochs": 2.0,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,  # on conv kernels only
        "dice_weight": 1.0,  # loss = cross-entropy + dice_weight * soft Dice (0 = cross-entropy only)
        "augment": True,  # on device, inside the jitted step; the same transform for image and mask
        "flip": True,  # random left-right flip
        "max_shift": 16,  # pixels
        "max_rotate": 15.0,  # degrees
        "max_scale": 0.1,  # zoom in [1 - s, 1 + s]
        "seed": 0,
        "keep_checkpoints": 2,
    },
    "metric": {
        "aggregate_by": "pooled",  # ablation tables: pooled Dice (bootstrap CI) or "image" (mean per image)
        "classes": None,  # foreground ids scored by the ablation tables; None = all (e.g. [2] = myocardium)
    },
}

SEG_PRESETS: dict[str, dict[str, Any]] = {
    "acdc-pspnet34": {
        "about": "The study's model at full scale (accelerator; aims at myocardium Dice >= 0.85): resnet-jax "
                 "train-seg --config acdc-pspnet34 --workdir runs/acdc --data-dir ../shared/data/acdc_lv_myo",
        "train": {"epochs": 200, "batch_size": 16, "learning_rate": 0.01},
    },
    "acdc-pspnet34-cpu": {
        "about": "About 45-55 minutes on a busy 2-core CPU (128 px crops, output stride 16, 28 epochs): resnet-jax "
                 "train-seg --config acdc-pspnet34-cpu --workdir runs/acdc-cpu --data-dir ../shared/data/acdc_lv_myo",
        "model": {"output_stride": 16, "head_features": 256},
        "data": {"image_size": 128},
        "train": {"epochs": 28, "batch_size": 16, "learning_rate": 0.02, "warmup_epochs": 1.0, "max_shift": 10},
    },
    "acdc-pspnet34-smoke": {
        "about": "Seconds plus compilation, for CI: resnet-jax train-seg --config acdc-pspnet34-smoke "
                 "--workdir /tmp/acdc-smoke --data-dir ../shared/data/acdc_lv_myo",
        "model": {"output_stride": 16, "head_features": 64},
        "data": {"image_size": 64, "max_train_examples": 16, "max_val_examples": 8, "max_test_examples": 8},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, "warmup_epochs": 0.0, "max_shift": 4},
    },
    "sunnybrook-pspnet34-cpu": {
        "about": "Sunnybrook (3 classes, patients 1-3 train, 4 test): resnet-jax train-seg --config "
                 "sunnybrook-pspnet34-cpu --workdir runs/sb --data-dir ../shared/data/sunnybrook_lv_myo",
        "model": {"output_stride": 16, "head_features": 256},
        "data": {"name": "sunnybrook", "val_split": None, "class_names": list(seg.CLASS_NAMES[:3]),
                 "image_size": 128, "train_split": "train", "test_split": "test",
                 "id_prefixes": {"train": ["SCD0000101", "SCD0000201", "SCD0000301"], "test": ["SCD0000401"]}},
        "train": {"epochs": 60, "batch_size": 8, "learning_rate": 0.02, "warmup_epochs": 1.0, "max_shift": 10},
    },
    "pets-pspnet34": {
        "about": "Oxford-IIIT Pet from TFDS (online; background / pet / border), accelerator scale: resnet-jax "
                 "train-seg --config pets-pspnet34 --workdir runs/pets",
        "data": {"name": "oxford_iiit_pet", "class_names": ["background", "pet", "border"], "val_split": None,
                 "image_size": 224},
        "train": {"epochs": 50, "batch_size": 16, "learning_rate": 0.01},
    },
    "synthetic-seg-tiny": {
        "about": "Tiny encoder on generated shapes; for tests: resnet-jax train-seg --config synthetic-seg-tiny "
                 "--workdir /tmp/seg-tiny",
        "model": {"encoder": "resnet_tiny", "head_features": 16, "dropout": 0.0, "conv_impl": "xla"},
        "data": {"name": "synthetic", "image_size": 32},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "warmup_epochs": 0.0,
                  "learning_rate": 0.05, "max_shift": 2, "max_rotate": 0.0, "max_scale": 0.0},
    },
}


def load_seg_config(name_or_file: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A segmentation preset or YAML/JSON file over :data:`SEG_DEFAULTS`, then ``key=value`` overrides."""
    return configs.resolve(name_or_file, overrides, defaults=SEG_DEFAULTS, presets=SEG_PRESETS, what="segmentation config")


# Data and model ---------------------------------------------------------------------------------

def synthetic_seg_split(split: str, *, n: int = 48, size: int = 32, seed: int = 0,
                        num_classes: int = 4) -> seg_data.SegSplit:
    """Learnable slices: a bright disc (1) in a mid-grey ring (2) and a second blob (3), over noise."""
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}.get(split, 2)])
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.15, 0.05, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.12, 0.2) * size
        d = np.hypot(yy - cy, xx - cx)
        masks[i][d < 1.6 * r] = 2
        masks[i][d < r] = 1
        if num_classes > 3:
            masks[i][(np.hypot(yy - cy, xx - cx + 2.2 * r) < 0.8 * r) & (masks[i] == 0)] = 3
    images += np.asarray([0.0, 0.7, 0.35, 0.55], np.float32)[masks]
    ids = tuple(f"{split}_{i:03d}" for i in range(n))
    return seg_data.SegSplit(np.clip(images, 0, 1)[..., None], masks, ids, seg.CLASS_NAMES[:num_classes])


def load_split(config: Mapping, which: str) -> seg_data.SegSplit | None:
    """The ``which`` (``train``/``val``/``test``) split of a config; None when ``data.<which>_split`` is None."""
    d = config["data"]
    name = d[f"{which}_split"]
    if name is None:
        return None
    if d["name"] == "synthetic":
        split = synthetic_seg_split(which, size=d["image_size"], seed=config["train"]["seed"],
                                    num_classes=len(d["class_names"]))
    elif d["name"] in seg_data.TFDS_SEGMENTATION and d["data_dir"] is None:
        split = seg_data.load_tfds_segmentation(d["name"], name, image_size=d["image_size"])
        if list(split.class_names) != list(d["class_names"]):
            raise configs.ConfigError(f"data.class_names {list(d['class_names'])} do not match {d['name']}'s "
                                      f"classes {list(split.class_names)}")
    else:
        if d["data_dir"] is None:
            raise seg_data.DataError(f"dataset {d['name']!r} needs --data-dir (e.g. ../shared/data/acdc_lv_myo)")
        prefixes = (d["id_prefixes"] or {}).get(name)
        split = seg_data.load_segmentation_split(d["data_dir"], name, image_size=d["image_size"],
                                                 class_names=d["class_names"], percentiles=d["percentiles"],
                                                 id_prefixes=prefixes)
    return split.take(d[f"max_{which}_examples"], seed=config["train"]["seed"])


def build_model(config: Mapping) -> seg.PSPNet:
    m = config["model"]
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if m["dtype"] not in dtypes:
        raise configs.ConfigError(f"unknown model.dtype {m['dtype']!r}; valid: {sorted(dtypes)}")
    if m["output_stride"] not in seg.OUTPUT_STRIDES:
        raise configs.ConfigError(f"unknown model.output_stride {m['output_stride']}; "
                                  f"valid: {sorted(seg.OUTPUT_STRIDES)}")
    return seg.PSPNet(num_classes=len(config["data"]["class_names"]), encoder=m["encoder"],
                      output_stride=m["output_stride"], bins=tuple(m["bins"]), pool_features=m["pool_features"],
                      head_features=m["head_features"], dropout=m["dropout"], stem=m["stem"],
                      conv_impl=m["conv_impl"], dtype=dtypes[m["dtype"]])


def build_metric(config: Mapping) -> seg.Dice:
    m = config["metric"]
    return seg.Dice(num_classes=len(config["data"]["class_names"]), aggregate_by=m["aggregate_by"],
                    classes=tuple(m["classes"]) if m["classes"] else None,
                    class_names=tuple(config["data"]["class_names"]))


def image_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the (already per-image normalised) training images, shape ``(1,)``."""
    x = images.astype(np.float64)
    return np.asarray([x.mean()], np.float32), np.asarray([max(x.std(), 1e-6)], np.float32)


def normalize(images: Array, mean: Array, std: Array) -> Array:
    return (images.astype(jnp.float32) - mean) / std


# Augmentation -----------------------------------------------------------------------------------

def augment_pair(images: Array, masks: Array, key: Array, *, flip: bool = True, max_shift: float = 0,
                 max_rotate: float = 0.0, max_scale: float = 0.0) -> tuple[Array, Array]:
    """One random affine map per example, applied to image (bilinear) and mask (nearest) alike.

    Rotation about the centre by up to ``max_rotate`` degrees, zoom in ``[1 - max_scale, 1 + max_scale]``,
    an integer shift of up to ``max_shift`` pixels and a left-right flip; outside the image is 0
    (darkest, background). With no rotation and zoom every output pixel is an input pixel exactly.
    """
    n, h, w = masks.shape
    k_rot, k_scale, k_shift, k_flip = jax.random.split(key, 4)
    angle = jnp.deg2rad(max_rotate) * jax.random.uniform(k_rot, (n,), minval=-1.0, maxval=1.0)
    scale = 1.0 + max_scale * jax.random.uniform(k_scale, (n,), minval=-1.0, maxval=1.0)
    shift = jax.random.randint(k_shift, (n, 2), -int(max_shift), int(max_shift) + 1).astype(jnp.float32)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,)) if flip else jnp.zeros((n,), bool)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    def one(image, mask, a, s, t, f):
        y, x = yy - cy - t[0], xx - cx - t[1]
        x = jnp.where(f, -x, x)
        c, si = jnp.cos(a), jnp.sin(a)
        coords = [(c * y - si * x) / s + cy, (si * y + c * x) / s + cx]
        img = jax.vmap(lambda ch: ndimage.map_coordinates(ch, coords, order=1, mode="constant", cval=0.0),
                       in_axes=-1, out_axes=-1)(image)  # every channel alike (grey MRI: one; RGB: three)
        msk = ndimage.map_coordinates(mask.astype(jnp.float32), coords, order=0, mode="constant", cval=0.0)
        return img.astype(image.dtype), msk.astype(mask.dtype)

    return jax.vmap(one)(images, masks, angle, scale, shift, flips)


# Steps ------------------------------------------------------------------------------------------

def train_step(state: train.TrainState, images: Array, masks: Array, key: Array, *,
               augment: Mapping[str, Any] | None, dice_weight: float) -> tuple[train.TrainState, dict]:
    """One SGD step; augmentation (``augment``: kwargs of :func:`augment_pair`, or None) runs here."""
    key = jax.random.fold_in(key, state.step)
    k_aug, k_drop = jax.random.split(key)
    if augment is not None:
        images, masks = augment_pair(images, masks, k_aug, **augment)
    x = normalize(images, state.image_mean, state.image_std)

    def loss_fn(params):
        (logits, _), updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                              mutable=["batch_stats"], rngs={"dropout": k_drop})
        return seg.segmentation_loss(logits, masks, dice_weight=dice_weight), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "pixel_accuracy": jnp.mean(jnp.argmax(logits, -1) == masks)}


def predict_step(model, variables, mean: Array, std: Array, images: Array, masks: Array, *,
                 metric: seg.Dice) -> dict[str, Array]:
    """The metric's per-example values (takes the variables, not the state: the step's type varies)."""
    logits, _ = model.apply(variables, normalize(images, mean, std))
    return metric.per_example(logits, masks)


def make_eval_fn(model, metric: seg.Dice) -> Callable:
    """``eval_fn(state, images, masks)``, jitted once per model and metric."""
    fn = jax.jit(functools.partial(predict_step, model, metric=metric))
    return lambda state, x, y: fn(state.variables, state.image_mean, state.image_std, x, y)


def per_example_over(state: train.TrainState, split: seg_data.SegSplit, *, batch_size: int, mesh,
                     step_fn: Callable) -> dict[str, np.ndarray]:
    """``step_fn`` over a whole split in padded batches; per-example arrays with the padding dropped."""
    n_dev = mesh.devices.size
    batch_size = -(-batch_size // n_dev) * n_dev
    parts = []
    for start in range(0, len(split), batch_size):
        images, masks = split.images[start:start + batch_size], split.masks[start:start + batch_size]
        n = len(masks)
        pad = lambda a: np.concatenate([a, np.zeros((batch_size - n, *a.shape[1:]), a.dtype)])  # noqa: E731
        out = step_fn(state, *train.shard_batch(mesh, pad(images), pad(masks)))
        parts.append({k: np.asarray(v)[:n] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate_split(state, split, *, batch_size: int, mesh, step_fn: Callable, prefix: str) -> dict[str, float]:
    """Loss and Dice (pooled per class, pooled mean, mean per image) over a split."""
    per_example = per_example_over(state, split, batch_size=batch_size, mesh=mesh, step_fn=step_fn)
    return {f"{prefix}loss": float(np.mean(per_example["loss"])),
            **seg.dice_summary(per_example, split.class_names, prefix=prefix)}


# The job ----------------------------------------------------------------------------------------

def _augment_kwargs(t: Mapping) -> dict | None:
    if not t["augment"]:
        return None
    return {"flip": t["flip"], "max_shift": t["max_shift"], "max_rotate": t["max_rotate"],
            "max_scale": t["max_scale"]}


def _create_state(config: Mapping, model, train_split: seg_data.SegSplit) -> train.TrainState:
    steps_per_epoch = max(1, len(train_split) // config["train"]["batch_size"])
    mean, std = image_stats(train_split.images)
    return train.create_train_state(model, train.make_optimizer(config, steps_per_epoch),
                                    train_split.images.shape[1:], seed=config["train"]["seed"], mean=mean, std=std)


def train_and_evaluate(config: Mapping, workdir: str | Path, *, force_new: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint; return the last metrics."""
    workdir = Path(workdir)
    t = config["train"]
    train_split, test_split = load_split(config, "train"), load_split(config, "test")
    val_split = load_split(config, "val") or test_split  # before touching the workdir
    train.prepare_workdir(config, workdir, force_new=force_new)
    mesh = train.data_mesh()
    if t["batch_size"] % mesh.devices.size:
        raise configs.ConfigError(f"train.batch_size={t['batch_size']} must be a multiple of the "
                                  f"{mesh.devices.size} devices")
    steps_per_epoch = len(train_split) // t["batch_size"]
    if steps_per_epoch == 0:
        raise configs.ConfigError(f"train.batch_size={t['batch_size']} exceeds the {len(train_split)} "
                                  f"training examples")
    model, metric = build_model(config), build_metric(config)
    mngr = checkpointing.manager(workdir, keep=t["keep_checkpoints"], best_metric=BEST_METRIC)
    if mngr.latest_step() is not None:  # restoring needs only the state's structure: skip compiling init
        state = checkpointing.restore(mngr, jax.eval_shape(lambda: _create_state(config, model, train_split)))
        log(f"resumed from step {int(state.step)} in {workdir}")
    else:
        state = _create_state(config, model, train_split)
        checkpointing.save_initial(workdir, state.params)
    state = train.replicate(mesh, state)
    augment = _augment_kwargs(t)
    step_fn = jax.jit(lambda s, x, y, k: train_step(s, x, y, k, augment=augment, dice_weight=t["dice_weight"]),
                      donate_argnums=0)
    eval_fn = make_eval_fn(model, metric)
    state, last = train.run_epochs(
        state, mngr, step_fn=step_fn, arrays=(train_split.images, train_split.masks), mesh=mesh,
        epochs=t["epochs"], batch_size=t["batch_size"], seed=t["seed"],
        evaluate=lambda s: evaluate_split(s, val_split, batch_size=t["eval_batch_size"], mesh=mesh,
                                          step_fn=eval_fn, prefix="val_"),
        best_metric=BEST_METRIC, metrics_path=workdir / "metrics.jsonl", log=log)
    if not (workdir / "evaluation.json").is_file():
        best = checkpointing.best_step(mngr, metric=BEST_METRIC)
        best_state = checkpointing.restore(mngr, state, step=best) if best is not None else state
        _write_evaluation(workdir, best_state, test_split, batch_size=t["eval_batch_size"], mesh=mesh,
                          step_fn=eval_fn, log=log)
    return last or {"step": int(state.step), "status": "already complete"}


# Restoring a finished run -----------------------------------------------------------------------

def restore_run(workdir: str | Path, *, which: str = "best", data_dir: str | None = None, split: str = "test"):
    """Rebuild ``(config, model, state, split)`` of a run; ``which`` is ``'best'`` (by val Dice) or ``'latest'``."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with `resnet-jax train-seg`")
    config = configs._merge(SEG_DEFAULTS, json.loads(path.read_text()))
    if data_dir is not None:
        config["data"]["data_dir"] = str(data_dir)
    if which not in ("best", "latest"):
        raise ValueError(f"unknown checkpoint choice {which!r}; valid: 'best', 'latest'")
    model = build_model(config)
    train_split = load_split(config, "train")
    state = jax.eval_shape(lambda: _create_state(config, model, train_split))  # a target; no init compile
    mngr = checkpointing.manager(workdir, keep=config["train"]["keep_checkpoints"], best_metric=BEST_METRIC)
    step = checkpointing.best_step(mngr, metric=BEST_METRIC) if which == "best" else None
    state = checkpointing.restore(mngr, state, step=step)
    return config, model, state, load_split(config, split)


def evaluate_run(workdir: str | Path, *, which: str = "best", data_dir: str | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Test loss and Dice of a run's best (or latest) checkpoint, written to ``evaluation.json``."""
    config, model, state, test = restore_run(workdir, which=which, data_dir=data_dir)
    mesh = train.data_mesh()
    eval_fn = make_eval_fn(model, build_metric(config))
    return _write_evaluation(workdir, train.replicate(mesh, state), test, batch_size=config["train"]["eval_batch_size"],
                             mesh=mesh, step_fn=eval_fn, which=which, log=log)


def _write_evaluation(workdir, state, test, *, batch_size, mesh, step_fn, which="best", log=print) -> dict:
    result = {"checkpoint": which, "step": int(state.step), "n_examples": len(test),
              **evaluate_split(state, test, batch_size=batch_size, mesh=mesh, step_fn=step_fn, prefix="test_")}
    (Path(workdir) / "evaluation.json").write_text(json.dumps(result, indent=2))
    log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


def ablation_subject(workdir: str | Path, *, which: str = "best", data_dir: str | None = None,
                     n_examples: int | None = None) -> protocols.Subject:
    """What ``protocols.ablate_workdir`` needs from a segmentation run, scored by :class:`segmentation.Dice`."""
    config, model, state, test = restore_run(workdir, which=which, data_dir=data_dir)
    test = test.take(n_examples, seed=0)
    # The engine normalises as (x / 255 - mean) / std; scaling both by 1/255 gives (x - mean) / std.
    mean, std = np.asarray(state.image_mean) / 255.0, np.asarray(state.image_std) / 255.0
    variables = jax.device_get(state.variables)

    def figures(directory: Path, rows: Sequence[dict], ablations: Mapping[str, abl.Ablation],
                initial_params: Any) -> list[Path]:
        return qualitative_figure(directory, rows, ablations, model=model, variables=variables, split=test,
                                  image_mean=mean, image_std=std, initial_params=initial_params)

    return protocols.Subject(model=model, variables=variables, step=int(state.step), images=test.images,
                             targets=test.masks, metric=build_metric(config), image_mean=mean, image_std=std,
                             extra_figures=figures)


# Qualitative figure -----------------------------------------------------------------------------

def _ablated_variables(model, variables, ablation: abl.Ablation, layers, sample, initial_params):
    mask = abl.make_mask(variables["params"], ablation, layers)
    replacement = None
    if ablation.kind == "reinit":
        replacement = initial_params
    elif ablation.kind == "rerandomize":
        replacement = model.init(jax.random.key(ablation.seed), sample)["params"]
    return abl.apply(variables, mask, replacement=replacement)


def pick_examples(masks: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices spread over the split, preferring slices that show every class."""
    full = [i for i, m in enumerate(masks) if len(np.unique(m)) == int(masks.max()) + 1]
    pool = np.asarray(full if len(full) >= n else range(len(masks)))
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]


def qualitative_figure(directory: Path, rows: Sequence[dict], ablations: Mapping[str, abl.Ablation], *, model,
                       variables, split: seg_data.SegSplit, image_mean, image_std, initial_params=None,
                       n_images: int = 4) -> list[Path]:
    """``qualitative.png`` (+ ``.json`` for the report): image, ground truth, baseline prediction, and the
    predictions under the most harmful and the most harmless mask among ``rows`` (lowest and highest score)."""
    from resnet_jax import reports

    scored = [r for r in rows if r["mask"] in ablations and r["kind"] != "none"]
    if not scored:
        return []
    worst, best = min(scored, key=lambda r: r["value"]), max(scored, key=lambda r: r["value"])
    idx = pick_examples(split.masks, n_images)
    images, masks = split.images[idx], split.masks[idx]
    layers = abl.catalogue(model, variables, input_shape=(1, *images.shape[1:]))
    metric = seg.Dice(num_classes=split.num_classes)
    x = (jnp.asarray(images) / 255.0 - image_mean) / image_std  # as the engine normalises
    columns = [("baseline", variables)]
    for label, row in (("most harmful", worst), ("most harmless", best)):
        ablated = _ablated_variables(model, variables, ablations[row["mask"]], layers, x[:1], initial_params)
        columns.append((f"{label}:\n{row['mask']} ({row['kind']})\n{row['metric']} {row['value']:.3f}", ablated))
    predictions, scores = [], []
    apply = jax.jit(model.apply)
    for _, v in columns:
        logits, _ = apply(v, x)
        predictions.append(np.asarray(jnp.argmax(logits, -1)))
        scores.append(np.asarray(metric.per_example(logits, jnp.asarray(masks))["score"]))
    path = directory / "qualitative.png"
    _plot_qualitative(path, images, masks, predictions, scores, [c[0] for c in columns], split.class_names,
                      [split.ids[i] for i in idx], reports._pyplot())
    meta = {"title": "qualitative", "figure": str(path),
            "description": f"Test slices: image, ground truth, and predictions of the baseline and of the most "
                           f"harmful ({worst['mask']}, {worst['kind']}) and most harmless ({best['mask']}, "
                           f"{best['kind']}) masks of this sweep; per-slice mean foreground Dice in each title.",
            "masks": {"most_harmful": worst["mask"], "most_harmless": best["mask"]}}
    meta_path = directory / "qualitative.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    return [path, meta_path]


def _plot_qualitative(path, images, masks, predictions, scores, titles, class_names, ids, plt) -> None:
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.55), (0.2, 0.8, 0.2, 0.55), (0.2, 0.4, 1.0, 0.55)]
                             [:len(class_names)])
    n, cols = len(images), 2 + len(predictions)
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.6 * n + 0.6), squeeze=False)
    for r in range(n):
        panels = [("image", None), ("ground truth", masks[r])] + [
            (f"{t}\nslice Dice {s[r]:.3f}" if r == 0 else f"slice Dice {s[r]:.3f}", p[r])
            for t, p, s in zip(titles, predictions, scores)]
        for c, (title, overlay) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(images[r, ..., 0], cmap="gray", vmin=0, vmax=1)
            if overlay is not None:
                ax.imshow(overlay, cmap=colours, vmin=0, vmax=len(class_names) - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if r == 0 or c >= 2 else "", fontsize=6.5)
        axes[r, 0].set_ylabel(ids[r], fontsize=7)
    legend = ", ".join(f"{n}: {c}" for n, c in zip(class_names[1:], ("red", "green", "blue")))
    fig.suptitle(f"classes {legend}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
