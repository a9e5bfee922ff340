"""One config registry for every task: classification, segmentation and Study B.

Every preset of every family carries ``task`` and resolves through :func:`load_config`, which merges
it over its family's defaults, applies ``key=value`` overrides and checks every value against the
family's schema before anything is written. Each family module's docstring gives the command that
reproduces its presets; :func:`listing` is what ``resnet-jax presets`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from resnet_jax.configs import classification, segmentation, skipping
from resnet_jax.configs.base import ConfigError, apply_overrides, flat_keys, merge, read_file, to_json

__all__ = ["ConfigError", "FAMILIES", "PRESETS", "TASKS", "complete", "defaults", "diff", "existing_data_dir", "family", "flat_keys",
           "listing", "load_config", "to_json", "validate"]

FAMILIES: dict[str, ModuleType] = {m.TASK: m for m in (classification, segmentation, skipping)}
"""The config module of each task: ``classification``, ``segmentation`` and Study B's ``skip``."""
TASKS = tuple(FAMILIES)
"""The tasks a config can name with ``task:``."""
PRESETS: dict[str, dict[str, Any]] = {name: preset for m in FAMILIES.values() for name, preset in m.PRESETS.items()}
"""Every preset of every family by name (``resnet-jax presets`` lists them), e.g. ``PRESETS["synthetic-tiny"]``."""
DESCRIPTIVE = ("about", "scale", "train.score_test")
"""Keys that describe a run without changing it; a workdir is not refused because they differ (a selection run
trained with ``train.score_test=false`` is scored on its test split by rerunning it with ``true``)."""
SHARED_DATA = {"cifar10": "cifar10", "mnist": "mnist", "acdc": "acdc_lv_myo", "sunnybrook": "sunnybrook_lv_myo"}


def family(task: str) -> ModuleType:
    """The config module of ``task`` (its ``DEFAULTS``, ``PRESETS`` and ``SCHEMA``), e.g. ``family("skip")``.

    Example:
        >>> from resnet_jax import configs
        >>> skip = configs.family("skip")
        >>> skip.__name__, sorted(skip.PRESETS)[:2], skip.DEFAULTS["train"]["epochs"]
        ('resnet_jax.configs.skipping', ['cifar100-skip', 'mnist-skip'], 20)
    """
    if task not in FAMILIES:
        raise ConfigError(f"unknown task {task!r}; valid: {list(TASKS)}")
    return FAMILIES[task]


def _task_of_preset(name: str) -> str:
    return next(task for task, m in FAMILIES.items() if name in m.PRESETS)


def load_config(name_or_file: str, overrides: Iterable[str] = (), *, task: str | None = None,
                data_dir: str | Path | None = None) -> dict[str, Any]:
    """A preset name (of any family) or a YAML/JSON file, merged over its family's defaults, then overrides.

    A file names its family with ``task:`` (default: ``task`` here, else classification). ``data_dir``
    (an existing folder) sets ``data.data_dir`` to its resolved path. The result is validated; errors
    name the key, the value and what is valid.

    Example:
        >>> from resnet_jax import configs
        >>> config = configs.load_config("synthetic-tiny", ["train.epochs=3", "train.learning_rate=1e-2"])
        >>> config["task"], config["model"]["name"], config["train"]["epochs"], config["train"]["learning_rate"]
        ('classification', 'resnet_tiny', 3, 0.01)
        >>> configs.load_config("synthetic-tiny", ["train.epochs=0"])
        Traceback (most recent call last):
        resnet_jax.configs.base.ConfigError: invalid classification config: train.epochs=0 (valid: an integer >= 1)
    """
    if name_or_file in PRESETS:
        chosen = _task_of_preset(name_or_file)
        update = PRESETS[name_or_file]
    elif Path(name_or_file).is_file():
        update = read_file(name_or_file)
        chosen = update.get("task", task or classification.TASK)
    else:
        raise ConfigError(f"unknown config {name_or_file!r}: neither a preset ({sorted(PRESETS)}) nor a file")
    if task is not None and chosen != task:
        raise ConfigError(f"{name_or_file!r} is a {chosen} config, not {task}; presets of the {task} task: "
                          f"{sorted(family(task).PRESETS)}")
    opaque = getattr(family(chosen), "OPAQUE", ())
    config = merge(family(chosen).DEFAULTS, {**update, "task": chosen}, opaque=opaque)
    config = apply_overrides(config, overrides, opaque=opaque)
    if data_dir is not None:  # set as given: a path is not YAML
        config["data"]["data_dir"] = str(existing_data_dir(data_dir))
    validate(config)
    return config


def existing_data_dir(path: str | Path | None) -> Path | None:
    """The resolved path of a ``--data-dir`` that exists (None stays None: read from TFDS): one spelling per
    folder, so ``../data`` and its absolute path name the same run's data.

    Example:
        >>> import pathlib, tempfile
        >>> from resnet_jax import configs
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "cifar10"
        >>> folder.mkdir()
        >>> configs.existing_data_dir(folder / ".." / "cifar10") == folder.resolve(), configs.existing_data_dir(None)
        (True, None)
        >>> configs.existing_data_dir(folder / "missing")
        Traceback (most recent call last):
        resnet_jax.configs.base.ConfigError: --data-dir ... does not exist; give a folder with ...
    """
    if path is None:
        return None
    if not Path(path).exists():
        raise ConfigError(f"--data-dir {path} does not exist; give a folder with the dataset's split zips "
                          f"or ImageFolder tree (e.g. ../shared/data/cifar10), or leave it out to use TFDS")
    return Path(path).resolve()


def defaults(task: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A family's defaults with overrides, validated (a run that starts from no preset).

    Example:
        >>> from resnet_jax import configs
        >>> config = configs.defaults("skip", ["data.name=synthetic", "train.epochs=1"])
        >>> config["task"], config["data"]["name"], config["train"]["epochs"], config["model"]["widths"]
        ('skip', 'synthetic', 1, [32, 64, 128])
    """
    config = apply_overrides(merge(family(task).DEFAULTS, {}), overrides)
    validate(config)
    return config


def validate(config: Mapping) -> None:
    """Check every value of a config against its family's schema (and the family's cross-key checks).

    Example:
        >>> from resnet_jax import configs
        >>> config = configs.load_config("synthetic-tiny")
        >>> configs.validate(config)                          # valid: returns None
        >>> config["model"]["stem"] = "resnet"
        >>> configs.validate(config)
        Traceback (most recent call last):
        resnet_jax.configs.base.ConfigError: ... model.stem='resnet' ...
    """
    from resnet_jax.configs.base import validate as check_schema

    fam = family(config.get("task", classification.TASK))
    check_schema(config, fam.SCHEMA, what=f"{fam.TASK} config")
    problems = fam.check(dict(config)) if hasattr(fam, "check") else []
    if problems:
        raise ConfigError(f"invalid {fam.TASK} config: " + "; ".join(problems))


def complete(stored: Mapping) -> dict[str, Any]:
    """A run's stored ``config.json`` over its family's current defaults (older runs lack newer keys).

    A stored config without ``task`` comes from an older resnet-jax: Study B configs are recognised by
    their ``selection`` section, segmentation ones by ``metric``; the rest are classification runs.

    Example:
        >>> from resnet_jax import configs
        >>> stored = {"model": {"name": "resnet18"}, "train": {"epochs": 5}}   # an older run's config.json
        >>> config = configs.complete(stored)
        >>> config["task"], config["model"]["name"], config["train"]["epochs"], config["train"]["batch_size"]
        ('classification', 'resnet18', 5, 128)
    """
    task = stored.get("task") or ("skip" if "selection" in stored else "segmentation" if "metric" in stored
                                  else classification.TASK)
    fam = family(task)
    stored = fam.upgrade(dict(stored)) if hasattr(fam, "upgrade") else stored
    return merge(fam.DEFAULTS, {**stored, "task": task})


def diff(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two configs, descriptive keys aside; data folders are compared
    resolved (against the current directory: older runs stored ``--data-dir`` as typed).

    Example:
        >>> from resnet_jax import configs
        >>> a = configs.load_config("synthetic-tiny")
        >>> b = configs.load_config("synthetic-tiny", ["train.epochs=4", "about=a longer run"])
        >>> configs.diff(a, b)                               # 'about' describes, it changes nothing
        ['train.epochs']
    """
    from resnet_jax.configs.base import diff as raw_diff

    return [k for k in raw_diff(_resolved_data_dir(complete(a)), _resolved_data_dir(complete(b)))
            if k not in DESCRIPTIVE]


def _resolved_data_dir(config: dict[str, Any]) -> dict[str, Any]:
    folder = config.get("data", {}).get("data_dir")
    if not folder:
        return config
    return {**config, "data": {**config["data"], "data_dir": str(Path(folder).expanduser().resolve())}}


def command(name: str) -> str:
    """The command that trains a preset, with the offline data it reads where there is one."""
    preset = PRESETS[name]
    data = merge(family(_task_of_preset(name)).DEFAULTS, preset)["data"]["name"]
    data_dir = f" --data-dir ../shared/data/{SHARED_DATA[data]}" if data in SHARED_DATA else ""
    return f"resnet-jax train --config {name} --workdir runs/{name}{data_dir}"


def listing() -> list[dict[str, str]]:
    """Every preset with its task, scale, description and command.

    Example:
        >>> from resnet_jax import configs
        >>> tiny = next(p for p in configs.listing() if p["name"] == "synthetic-tiny")
        >>> tiny["task"], tiny["scale"], tiny["command"]
        ('classification', 'smoke', 'resnet-jax train --config synthetic-tiny --workdir runs/synthetic-tiny')
    """
    return [{"name": name, "task": _task_of_preset(name), "scale": preset.get("scale", ""),
             "about": preset.get("about", ""), "command": command(name)} for name, preset in PRESETS.items()]
