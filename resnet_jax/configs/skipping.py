"""Study B: per-image layer skipping chosen by strongest activations, on MNIST (and CIFAR-100 from TFDS).

Reproduce a preset with ``resnet-jax train --config <name> --workdir <dir> [--data-dir <dir>]``
(``resnet-jax skip-study`` is the same command).
"""

from __future__ import annotations

from typing import Any

from resnet_jax.configs import base

TASK = "skip"

DEFAULTS: dict[str, Any] = {
    "about": "",
    "task": TASK,
    "scale": "",
    "data": {
        "name": "mnist",  # TFDS name or "synthetic"; with data_dir just a label
        "data_dir": None,  # ImageFolder tree or per-split zips, instead of TFDS
        "max_train_examples": None,
        "max_test_examples": None,
        "val_examples": 5000,  # held out of the training split: router accuracy, operating points
        "synthetic": {"size": 28, "channels": 1, "num_classes": 10, "train_examples": 2048, "test_examples": 512},
    },
    # The study's three convs differ only in their number of feature maps (widths not given): doubling
    # widths; a skipped layer's input is zero-padded (or sliced) to the next width. Equal widths: mnist-skip-equal.
    "model": {"widths": [32, 64, 128], "router_channels": [8, 16]},
    "train": {  # CNN-1, both useful CNN-3s and the early-exit network: the study's 20 epochs, Keras' batch 32
        "epochs": 20, "batch_size": 32, "learning_rate": 1e-3, "rho": 0.9, "eps": 1e-7, "seed": 0,
    },
    "selection": {"maps_per_layer": 10, "images_per_map": 10, "site": "relu", "batch_size": 500},
    # The study's router learns ~250 labels: many epochs. Not given by the study.
    "router": {"epochs": 50, "batch_size": 32, "learning_rate": 1e-3, "holdout": 0.2},
    "literal": {"epochs": 50, "batch_size": 32, "learning_rate": 1e-3},
    "dense": {"epochs": 10, "batch_size": 32, "learning_rate": 1e-3},  # the router on every fit image's label
    "evaluation": {
        # 6 timing rounds: the fewest whose wall ratios give a 95 % interval (resnet_jax.ablation.speed)
        "batch_size": 500, "min_bucket": 32, "timing_repeats": 6,
        "exit_thresholds": [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.01],
        "router_quantiles": [0.1, 0.3, 0.5, 0.7, 0.9],
        "tolerance": 0.005,  # "equal accuracy": validation accuracy within this of CNN-1's
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "mnist-skip": {
        "about": "The study's training (20 epochs, Keras batch 32) at widths 10/20/40 (the narrowest with the study's "
                 "10 maps in every layer)",
        "scale": "full",
        "model": {"widths": [10, 20, 40]},
    },
    "mnist-skip-wide": {
        "about": "mnist-skip at widths 32/64/128 (about 10x the conv MACs: an accelerator)",
        "scale": "full (accelerator)",
    },
    "mnist-skip-equal": {
        "about": "mnist-skip with equal widths 16/16/16 (no channel adapter needed)",
        "scale": "full",
        "model": {"widths": [16, 16, 16]},
    },
    "mnist-skip-cpu": {
        "about": "For a 2-core CPU: widths 10/20/40, 3 epochs",
        "scale": "cpu",
        "model": {"widths": [10, 20, 40]},
        "train": {"epochs": 3, "batch_size": 64},
        "router": {"epochs": 40},
        "literal": {"epochs": 40},
        "dense": {"epochs": 3, "batch_size": 64},
    },
    "mnist-skip-smoke": {
        "about": "For tests and CI (--set data.name=synthetic needs no data)",
        "scale": "smoke",
        "data": {"max_train_examples": 512, "max_test_examples": 256, "val_examples": 128,
                 "synthetic": {"train_examples": 512, "test_examples": 256}},
        "model": {"widths": [4, 6, 8], "router_channels": [4]},
        "train": {"epochs": 1, "batch_size": 64},
        "selection": {"images_per_map": 5, "batch_size": 128},
        "router": {"epochs": 2, "batch_size": 16},
        "literal": {"epochs": 2, "batch_size": 16},
        "dense": {"epochs": 1, "batch_size": 64},
        "evaluation": {"batch_size": 128, "min_bucket": 128, "timing_repeats": 6,
                       "exit_thresholds": [0.0, 0.9, 1.01], "router_quantiles": [0.5]},
    },
    "cifar100-skip": {
        "about": "Study B's repeat on CIFAR-100 (TFDS, online); --set data.name=synthetic gives a 32x32x3, 100-class stand-in",
        "scale": "full (accelerator, network)",
        "data": {"name": "cifar100",
                 "synthetic": {"size": 32, "channels": 3, "num_classes": 100, "train_examples": 5000,
                               "test_examples": 1000}},
    },
}


# Config and data -----------------------------------------------------------------------------------

_RATE = base.number(low=0, low_open=True)

SCHEMA: dict[str, base.Checker] = {
    "about": base.text,
    "task": base.one_of(TASK),
    "scale": base.text,
    "data.name": base.text,
    "data.data_dir": base.optional(base.text),
    "data.max_train_examples": base.COUNT_OR_ALL,
    "data.max_test_examples": base.COUNT_OR_ALL,
    "data.synthetic.size": base.integer(low=4),
    "data.synthetic.channels": base.POSITIVE,
    "data.synthetic.num_classes": base.integer(low=2),
    "data.synthetic.train_examples": base.POSITIVE,
    "data.synthetic.test_examples": base.POSITIVE,
    "data.val_examples": base.POSITIVE,
    "model.widths": base.list_of(base.POSITIVE, length=3),
    "model.router_channels": base.list_of(base.POSITIVE, min_len=1),
    "train.epochs": base.POSITIVE,
    "train.batch_size": base.POSITIVE,
    "train.learning_rate": _RATE,
    "train.rho": base.number(low=0, high=1),
    "train.eps": _RATE,
    "train.seed": base.integer(low=0),
    "selection.maps_per_layer": base.POSITIVE,
    "selection.images_per_map": base.POSITIVE,
    "selection.site": base.one_of("relu", "pre_relu"),
    "selection.batch_size": base.POSITIVE,
    "router.epochs": base.POSITIVE,
    "router.batch_size": base.POSITIVE,
    "router.learning_rate": _RATE,
    "router.holdout": base.number(low=0, high=1, low_open=True),
    "literal.epochs": base.POSITIVE,
    "literal.batch_size": base.POSITIVE,
    "literal.learning_rate": _RATE,
    "evaluation.batch_size": base.POSITIVE,
    "evaluation.min_bucket": base.POSITIVE,
    "evaluation.timing_repeats": base.POSITIVE,
    "evaluation.exit_thresholds": base.list_of(base.number(low=0), min_len=1),
    "evaluation.router_quantiles": base.list_of(base.number(low=0, high=1, low_open=True), min_len=0),
    "evaluation.tolerance": base.number(low=0, high=1),
    "dense.epochs": base.POSITIVE,
    "dense.batch_size": base.POSITIVE,
    "dense.learning_rate": _RATE,
}


def upgrade(stored: dict) -> dict:
    """A stored config of an older resnet-jax, read under today's names (``data.validation_examples`` is now
    ``data.val_examples``, as in the classification family)."""
    data = dict(stored.get("data", {}))
    if "validation_examples" in data:
        data["val_examples"] = data.pop("validation_examples")
    return {**stored, "data": data} if "data" in stored else stored
