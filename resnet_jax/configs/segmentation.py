"""Segmentation: PSPNet-ResNet34 on ACDC cardiac MRI (the study's segmentation half), Sunnybrook, Oxford Pets.

Reproduce a preset with ``resnet-jax train --config <name> --workdir <dir> [--data-dir <dir>]``.
"""

from __future__ import annotations

from typing import Any

from resnet_jax.configs import base

TASK = "segmentation"
ACDC_CLASSES = ("background", "LV", "MYO", "RV")
"""Mask ids of ``shared/data/acdc_lv_myo`` (sunnybrook_lv_myo uses the first three)."""
DATASETS = ("acdc", "sunnybrook", "oxford_iiit_pet", "synthetic")
OPAQUE = ("data.id_prefixes",)
"""Keys that hold data, not sections: an override replaces them whole."""
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet_tiny")

DEFAULTS: dict[str, Any] = {
    "about": "",
    "task": TASK,
    "scale": "",
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
        "eliminated": [],  # slim models: [[unit, form], ...] replaced by relu(x + b) (`resnet-jax eliminate`)
    },
    "data": {
        "name": "acdc",  # acdc | sunnybrook (labels for a data_dir) | oxford_iiit_pet (TFDS) | synthetic
        "data_dir": None,  # <split>.zip, <split>/{images,masks}/ or a flat {images,masks}/ folder
        "train_split": "train",
        "val_split": "val",  # selects the best checkpoint; None = use the test split
        "test_split": "test",
        "id_prefixes": None,  # {split: [id prefixes]} to split a flat folder by patient
        "class_names": list(ACDC_CLASSES),  # background first: the dataset's mask ids
        "keep_classes": None,  # train on these foreground classes only (e.g. [MYO]); the others become background
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
        "learning_rate": 0.01,  # peak, after warm-up (SGD + Nesterov, cosine decay: training.core.make_optimizer)
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
        "max_gamma": 0.0,  # intensity (images in [0, 1]): x ** g, g in [1 / (1 + m), 1 + m]
        "max_contrast": 0.0,  # then times c in [1 - m, 1 + m]
        "max_brightness": 0.0,  # then plus b in [-m, m], clipped to [0, 1]
        "seed": 0,
        "keep_checkpoints": 2,
        "score_test": True,  # false while choosing a recipe on validation: the test split stays unseen
    },
    "metric": {
        "aggregate_by": "pooled",  # ablation tables: pooled Dice (bootstrap CI) or "image" (mean per image)
        "lead": "MYO",  # the class whose pooled Dice leads tables (the study's metric), or "mean" (foreground)
        "classes": None,  # foreground ids to average instead of lead (e.g. [1, 3]); None = use lead
        "checkpoint": "lead",  # what ranks checkpoints on validation: the tables' lead Dice, or "mean" foreground
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "acdc-pspnet34": {
        "about": "The study's model at full scale: 224 px, output stride 8, 200 epochs (an accelerator run; not measured here)",
        "scale": "full (accelerator)",
        "train": {"epochs": 200, "batch_size": 16, "learning_rate": 0.01},
    },
    "acdc-pspnet34-cpu": {
        "about": "For a 2-core CPU: 128 px crops, output stride 16, 28 epochs",
        "scale": "cpu",
        "model": {"output_stride": 16, "head_features": 256},
        "data": {"image_size": 128},
        "train": {"epochs": 28, "batch_size": 16, "learning_rate": 0.02, "warmup_epochs": 1.0, "max_shift": 10},
    },
    "acdc-pspnet34-smoke": {
        "about": "For tests and CI: 16 training slices, 48 px, one epoch",
        "scale": "smoke",
        "model": {"output_stride": 16, "head_features": 64},
        "data": {"image_size": 48, "max_train_examples": 16, "max_val_examples": 4, "max_test_examples": 8},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, "warmup_epochs": 0.0, "max_shift": 4},
    },
    "sunnybrook-pspnet34-cpu": {
        "about": "Sunnybrook (3 classes, patients 1-3 train, 4 test), 128 px, 60 epochs",
        "scale": "cpu",
        "model": {"output_stride": 16, "head_features": 256},
        "data": {"name": "sunnybrook", "val_split": None, "class_names": list(ACDC_CLASSES[:3]),
                 "image_size": 128, "train_split": "train", "test_split": "test",
                 "id_prefixes": {"train": ["SCD0000101", "SCD0000201", "SCD0000301"], "test": ["SCD0000401"]}},
        "train": {"epochs": 60, "batch_size": 8, "learning_rate": 0.02, "warmup_epochs": 1.0, "max_shift": 10},
    },
    "pets-pspnet34": {
        "about": "Oxford-IIIT Pet from TFDS (online; background / pet / border), 224 px",
        "scale": "full (accelerator, network)",
        "data": {"name": "oxford_iiit_pet", "class_names": ["background", "pet", "border"], "val_split": None,
                 "image_size": 224},
        "metric": {"lead": "mean"},
        "train": {"epochs": 50, "batch_size": 16, "learning_rate": 0.01},
    },
    "synthetic-seg-tiny": {
        "about": "A tiny encoder on generated shapes, for tests",
        "scale": "smoke",
        "model": {"encoder": "resnet_tiny", "head_features": 16, "dropout": 0.0, "conv_impl": "xla"},
        "data": {"name": "synthetic", "image_size": 32},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "warmup_epochs": 0.0,
                  "learning_rate": 0.05, "max_shift": 2, "max_rotate": 0.0, "max_scale": 0.0},
    },
}

_POSITIVE_NUMBER = base.number(low=0, low_open=True)

SCHEMA: dict[str, base.Checker] = {
    "about": base.text,
    "task": base.one_of(TASK),
    "scale": base.text,
    "model.encoder": base.one_of(*ENCODERS),
    "model.output_stride": base.one_of(8, 16, 32),
    "model.bins": base.list_of(base.POSITIVE, min_len=1),
    "model.pool_features": base.optional(base.POSITIVE),
    "model.head_features": base.POSITIVE,
    "model.dropout": base.number(low=0, high=1),
    "model.stem": base.one_of("torchvision", "cifar"),
    "model.conv_impl": base.one_of("auto", "xla", "patches"),
    "model.dtype": base.one_of("float32", "bfloat16"),
    "model.eliminated": base.eliminated_units,
    "data.name": base.one_of(*DATASETS),
    "data.data_dir": base.optional(base.text),
    "data.train_split": base.text,
    "data.val_split": base.optional(base.text),
    "data.test_split": base.text,
    "data.id_prefixes": base.optional(base.split_prefixes),
    "data.class_names": base.list_of(base.text, min_len=2),
    "data.keep_classes": base.optional(base.list_of(base.text, min_len=1)),
    "data.image_size": base.integer(low=8),
    "data.percentiles": base.list_of(base.number(low=0, high=100), length=2),
    "data.max_train_examples": base.COUNT_OR_ALL,
    "data.max_val_examples": base.COUNT_OR_ALL,
    "data.max_test_examples": base.COUNT_OR_ALL,
    "train.epochs": base.POSITIVE,
    "train.batch_size": base.POSITIVE,
    "train.eval_batch_size": base.POSITIVE,
    "train.learning_rate": _POSITIVE_NUMBER,
    "train.warmup_epochs": base.number(low=0),
    "train.momentum": base.number(low=0, high=1),
    "train.nesterov": base.boolean,
    "train.weight_decay": base.number(low=0),
    "train.dice_weight": base.number(low=0),
    "train.augment": base.boolean,
    "train.flip": base.boolean,
    "train.max_shift": base.number(low=0),
    "train.max_rotate": base.number(low=0, high=180),
    "train.max_scale": base.number(low=0, high=0.9),
    "train.max_gamma": base.number(low=0, high=4),
    "train.max_contrast": base.number(low=0, high=0.9),
    "train.max_brightness": base.number(low=0, high=0.5),
    "train.seed": base.integer(low=0),
    "train.keep_checkpoints": base.POSITIVE,
    "train.score_test": base.boolean,
    "metric.aggregate_by": base.one_of("pooled", "image"),
    "metric.classes": base.optional(base.list_of(base.POSITIVE, min_len=1)),
    "metric.lead": base.text,
    "metric.checkpoint": base.one_of("lead", "mean"),
}


def trained_classes(config: dict) -> list[str]:
    """The classes a model is trained on and scored by: ``data.class_names``, or background and
    ``data.keep_classes`` where given."""
    d = config["data"]
    if not d.get("keep_classes"):
        return list(d["class_names"])
    spelled = {c.lower(): c for c in d["class_names"]}  # the dataset's own spelling, whatever the override's
    return [d["class_names"][0], *(spelled.get(c.lower(), c) for c in d["keep_classes"])]


def upgrade(stored: dict) -> dict:
    """A stored config of an older resnet-jax, read as it ran: its tables led with mean foreground Dice, and
    mean foreground Dice ranked its checkpoints (whatever its tables led with)."""
    return {**stored, "metric": {"lead": "mean", "checkpoint": "mean", **stored.get("metric", {})}}


def check(config: dict) -> list[str]:
    """Checks across keys: Dice classes are foreground ids of the classes trained (:func:`trained_classes`);
    ``keep_classes`` names foreground classes, once each; a run that leaves the test split unseen has a validation
    split; id prefixes, where given, name every split in use (a split without prefixes would read the whole folder:
    train and test would overlap)."""
    d, kept = config["data"], [c.lower() for c in config["data"]["keep_classes"] or ()]
    unknown = [c for c in d["keep_classes"] or () if c.lower() not in [n.lower() for n in d["class_names"][1:]]]
    problems = [f"data.keep_classes names {unknown}, which are not foreground classes of data.class_names; valid: "
                f"{d['class_names'][1:]}"] if unknown else []
    if len(set(kept)) < len(kept):
        problems.append(f"data.keep_classes={d['keep_classes']} names a class twice; name each class once")
    if not config["train"]["score_test"] and d["val_split"] is None:
        problems.append("train.score_test=false needs a validation split (data.val_split): without one the test split "
                        "ranks the checkpoints every epoch, so it would not stay unseen")
    trained = trained_classes(config)
    n = len(trained)
    problems += [f"metric.classes={bad} are not foreground ids (valid: 1..{n - 1})"
                 for bad in [[c for c in config["metric"]["classes"] or () if not 0 < c < n]] if bad]
    lead, names = config["metric"]["lead"], [c.lower() for c in trained[1:]]
    if lead != "mean" and lead.lower() not in names:
        problems.append(f"metric.lead={lead!r} is not a foreground class; valid: 'mean' or one of {trained[1:]}")
    if d["id_prefixes"]:
        used = [d[f"{w}_split"] for w in ("train", "val", "test") if d[f"{w}_split"] is not None]
        missing = [s for s in used if s not in d["id_prefixes"]]
        problems += [f"data.id_prefixes has no prefixes for the split(s) {missing} in use"] if missing else []
    return problems
