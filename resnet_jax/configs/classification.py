"""Image classification: ResNets on CIFAR-10 (the study's Study A) and synthetic data for tests.

Reproduce a preset with ``resnet-jax train --config <name> --workdir <dir> [--data-dir <dir>]``.
"""

from __future__ import annotations

from typing import Any

from resnet_jax.configs import base

TASK = "classification"
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
          "resnext50_32x4d", "resnext101_32x8d", "resnet_tiny")
DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "synthetic")

DEFAULTS: dict[str, Any] = {
    "about": "",
    "task": TASK,
    "scale": "",
    "model": {
        "name": "resnet34",
        "stem": "torchvision",  # or "cifar": 3x3/1 conv, no max-pool
        "conv_impl": "auto",  # "xla" | "patches" | "auto" (per layer on CPU; see models.resnet)
        "dtype": "float32",  # "bfloat16" for mixed precision on accelerators
        "eliminated": [],  # slim models: [[unit, form], ...] replaced by relu(x + b) (`resnet-jax eliminate`)
    },
    "data": {
        "name": "cifar10",  # TFDS name, or "synthetic"; with data_dir just a label
        "data_dir": None,  # ImageFolder tree or its per-split zips; overrides TFDS
        "max_train_examples": None,
        "max_test_examples": None,
        "val_examples": 5000,  # held out of train, stratified; they choose the checkpoint (0: none)
        "split_seed": 0,  # fixes the validation holdout and any train/test subsets, the same for every seed
    },
    "train": {
        "epochs": 30,
        "batch_size": 128,
        "eval_batch_size": 256,
        "learning_rate": 0.1,  # peak, after warm-up
        "warmup_epochs": 1.0,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,  # on conv and dense kernels only
        "label_smoothing": 0.0,
        "augment": True,  # random crop (4-pixel zero padding) + horizontal flip, on device
        "seed": 0,
        "keep_checkpoints": 2,
        "score_test": True,  # false while choosing a recipe on validation: the test split stays unseen
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-resnet34": {
        "about": "The study's scale: ResNet34 on CIFAR-10, 100 epochs, bf16, label smoothing (an accelerator run; not measured here)",
        "scale": "full (accelerator)",
        "model": {"dtype": "bfloat16"},
        "train": {"epochs": 100, "batch_size": 256, "learning_rate": 0.2, "warmup_epochs": 2.0,
                  "label_smoothing": 0.1},
    },
    "cifar10-resnet34-cpu": {
        "about": "For a 2-core CPU: 6 epochs over 45k training images (5k held out to validate), 5k test images",
        "scale": "cpu",
        "train": {"epochs": 6, "batch_size": 128, "learning_rate": 0.1, "warmup_epochs": 0.5,
                  "label_smoothing": 0.1},
        "data": {"max_test_examples": 5000},
    },
    "cifar10-resnet34-paper-cpu": {
        "about": "Aims at the study's accuracy (84 %) on a 2-core CPU: 24 epochs over 45k training images (5k held "
                 "out to validate), one-cycle shape (30 % warm-up to 0.1, cosine to 0), full 10k test; what it "
                 "reached here, and in what time: docs/results/cifar10-paper-cpu",
        "scale": "paper (cpu)",
        "train": {"epochs": 24, "batch_size": 128, "learning_rate": 0.1, "warmup_epochs": 7.2,
                  "weight_decay": 5e-4, "label_smoothing": 0.0},
    },
    "cifar10-resnet34-smoke": {
        "about": "For tests and CI: 128 train / 32 validation / 64 test images, one epoch",
        "scale": "smoke",
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 64, "warmup_epochs": 0.0,
                  "learning_rate": 0.02},
        "data": {"max_train_examples": 160, "max_test_examples": 64, "val_examples": 32},
    },
    "synthetic-tiny": {
        "about": "A tiny ResNet on generated images, for tests",
        "scale": "smoke",
        "model": {"name": "resnet_tiny", "stem": "cifar"},
        "data": {"name": "synthetic", "val_examples": 128},
        "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 128, "warmup_epochs": 0.0,
                  "learning_rate": 0.05},
    },
}

SCHEMA: dict[str, base.Checker] = {
    "about": base.text,
    "task": base.one_of(TASK),
    "scale": base.text,
    "model.name": base.one_of(*MODELS),
    "model.stem": base.one_of("torchvision", "cifar"),
    "model.conv_impl": base.one_of("auto", "xla", "patches"),
    "model.dtype": base.one_of("float32", "bfloat16"),
    "model.eliminated": base.eliminated_units,
    "data.name": base.text,
    "data.data_dir": base.optional(base.text),
    "data.max_train_examples": base.COUNT_OR_ALL,
    "data.max_test_examples": base.COUNT_OR_ALL,
    "data.val_examples": base.integer(low=0),
    "data.split_seed": base.integer(low=0),
    "train.epochs": base.POSITIVE,
    "train.batch_size": base.POSITIVE,
    "train.eval_batch_size": base.POSITIVE,
    "train.learning_rate": base.number(low=0, low_open=True),
    "train.warmup_epochs": base.number(low=0),
    "train.momentum": base.number(low=0, high=1),
    "train.nesterov": base.boolean,
    "train.weight_decay": base.number(low=0),
    "train.label_smoothing": base.number(low=0, high=1),
    "train.augment": base.boolean,
    "train.seed": base.integer(low=0),
    "train.keep_checkpoints": base.POSITIVE,
    "train.score_test": base.boolean,
}


def upgrade(stored: dict) -> dict:
    """A stored config of an older resnet-jax, read as it ran: no validation split (the test split chose its
    checkpoint) and data subsets drawn by the training seed."""
    data = dict(stored.get("data", {}))
    data.setdefault("val_examples", 0)
    data.setdefault("split_seed", stored.get("train", {}).get("seed", 0))
    return {**stored, "data": data}


def check(config: dict) -> list[str]:
    """Checks across keys: without ``data.data_dir`` the dataset must be one TFDS (or the generator) provides."""
    d = config["data"]
    if d["data_dir"] is None and d["name"] not in DATASETS:
        return [f"data.name={d['name']!r} needs --data-dir (valid without it: {list(DATASETS)})"]
    return []
