"""Configs are plain nested dicts: defaults, named presets, and dotted ``key=value`` overrides.

A preset's docstring-like ``about`` holds the command that reproduces it. Unknown keys and presets
fail early with the valid choices listed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "about": "",
    "model": {
        "name": "resnet34",
        "stem": "torchvision",  # or "cifar": 3x3/1 conv, no max-pool
        "conv_impl": "auto",  # "xla" | "patches" | "auto" (per layer on CPU; see models._formulation)
        "dtype": "float32",  # "bfloat16" for mixed precision on accelerators
    },
    "data": {
        "name": "cifar10",  # TFDS name, or "synthetic"; with data_dir just a label
        "data_dir": None,  # ImageFolder tree or its per-split zips; overrides TFDS
        "max_train_examples": None,
        "max_test_examples": None,
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
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10-resnet34": {
        "about": "The study's scale (accelerator): resnet-jax train --config cifar10-resnet34 --workdir runs/c10",
        "model": {"dtype": "bfloat16"},
        "train": {"epochs": 100, "batch_size": 256, "learning_rate": 0.2, "warmup_epochs": 2.0,
                  "label_smoothing": 0.1},
    },
    "cifar10-resnet34-cpu": {
        "about": "Under an hour on a 2-core CPU: resnet-jax train --config cifar10-resnet34-cpu "
                 "--workdir runs/c10-cpu --data-dir ../shared/data/cifar10",
        "train": {"epochs": 6, "batch_size": 128, "learning_rate": 0.1, "warmup_epochs": 0.5,
                  "label_smoothing": 0.1},
        "data": {"max_test_examples": 5000},
    },
    "cifar10-resnet34-smoke": {
        "about": "Seconds, for tests and CI: resnet-jax train --config cifar10-resnet34-smoke --workdir /tmp/smoke",
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 64, "warmup_epochs": 0.0,
                  "learning_rate": 0.02},
        "data": {"max_train_examples": 128, "max_test_examples": 64},
    },
    "synthetic-tiny": {
        "about": "Tiny model on synthetic data; for tests: resnet-jax train --config synthetic-tiny --workdir /tmp/t",
        "model": {"name": "resnet_tiny", "stem": "cifar"},
        "data": {"name": "synthetic"},
        "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 128, "warmup_epochs": 0.0,
                  "learning_rate": 0.05},
    },
}


class ConfigError(ValueError):
    """An unknown preset or key, or a value of the wrong type."""


def _merge(base: dict, update: Mapping, *, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        full = f"{where}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {full!r}; valid keys: {sorted(flat_keys(base, where))}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {full!r} is a section; set its keys, e.g. {full}.<key>=...")
            out[key] = _merge(out[key], value, where=f"{full}.")
        else:
            out[key] = value
    return out


def flat_keys(config: Mapping, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config."""
    keys = []
    for k, v in config.items():
        keys += flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def load_config(name_or_file: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Resolve a preset name or a YAML/JSON file, then apply ``key=value`` overrides."""
    return resolve(name_or_file, overrides, defaults=DEFAULTS, presets=PRESETS)


def resolve(name_or_file: str, overrides: Iterable[str] = (), *, defaults: Mapping[str, Any],
            presets: Mapping[str, Mapping[str, Any]], what: str = "config") -> dict[str, Any]:
    """A preset of ``presets`` or a YAML/JSON file merged over ``defaults``, then ``key=value`` overrides.

    Every config family (training, segmentation, Study B) resolves through here, so unknown presets
    and keys fail the same way, with the valid choices listed.
    """
    if name_or_file in presets:
        update = presets[name_or_file]
    elif Path(name_or_file).is_file():
        update = yaml.safe_load(Path(name_or_file).read_text()) or {}
    else:
        raise ConfigError(f"unknown {what} {name_or_file!r}: neither a preset ({sorted(presets)}) nor a file")
    config = _merge(dict(defaults), update)
    for item in overrides:
        config = apply_override(config, item)
    return config


def apply_override(config: dict, item: str) -> dict:
    """Apply one ``section.key=value``; the value is parsed as YAML (``0.1``, ``true``, ``null``)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
    value = yaml.safe_load(raw) if raw.strip() else None
    update: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        update = {part: update}
    return _merge(config, update)


def diff(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two configs (for refusing a mismatched workdir)."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def to_json(config: Mapping) -> str:
    return json.dumps(config, indent=2, sort_keys=True)
