"""Config machinery shared by every family: merging, ``key=value`` overrides, files, and the schema check.

Configs are plain nested dicts. A family (one module of this package) gives ``DEFAULTS``, ``PRESETS``
and a ``SCHEMA``: one checker per dotted key, so every value is type- and range-checked before any
file is written, and an error names the key, the value and what is valid.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An unknown preset or key, a malformed file, or a value of the wrong type or range.

    Example:
        >>> from resnet_jax import configs
        >>> try:
        ...     configs.load_config("synthetic-tiny", ["train.epoch=3"])
        ... except configs.ConfigError as err:
        ...     print(err)
        unknown config key 'train.epoch'; valid keys: ['train.augment', 'train.batch_size', 'train.epochs', ...]
    """


RENAMED = {"data.validation_examples": "data.val_examples"}
"""Keys an older resnet-jax used, with today's name: given by a user, they are refused with that name; in a stored
``config.json`` each family's ``upgrade`` reads them under the new name."""


def merge(base: Mapping, update: Mapping, *, where: str = "", opaque: tuple[str, ...] = ()) -> dict:
    """``update`` over a deep copy of ``base``; a key ``base`` lacks is an error that lists the valid ones.

    Keys in ``opaque`` (dotted) hold data, not sections: a new value replaces the old one whole."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        full = f"{where}{key}"
        if key not in out and full in RENAMED:
            raise ConfigError(f"config key {full!r} is now {RENAMED[full]!r} (one name for the validation share "
                              f"in every family); set that instead")
        if key not in out:
            raise ConfigError(f"unknown config key {full!r}; valid keys: {sorted(flat_keys(base, where))}")
        if isinstance(out[key], dict) and full not in opaque:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {full!r} is a section; set its keys, e.g. {full}.<key>=...")
            out[key] = merge(out[key], value, where=f"{full}.", opaque=opaque)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flat_keys(config: Mapping, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config.

    Example:
        >>> from resnet_jax.configs import flat_keys
        >>> flat_keys({"task": "skip", "train": {"epochs": 2, "seed": 0}})
        ['task', 'train.epochs', 'train.seed']
    """
    keys = []
    for k, v in config.items():
        keys += flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping from a file; a malformed one is an error naming the file and line."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML/JSON ({problem})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path} holds a {type(loaded).__name__}, not a mapping of config keys")
    return dict(loaded)


def apply_override(config: dict, item: str, *, opaque: tuple[str, ...] = ()) -> dict:
    """Apply one ``section.key=value``; the value is parsed as YAML (``0.1``, ``true``, ``null``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text, and let the schema say whether text is valid there
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text; a number is meant
        try:
            value = float(value) if math.isfinite(float(value)) else value
        except ValueError:
            pass
    update: Any = value
    for part in reversed(key.strip().split(".")):
        update = {part: update}
    return merge(config, update, opaque=opaque)


def apply_overrides(config: dict, overrides: Iterable[str], *, opaque: tuple[str, ...] = ()) -> dict:
    for item in overrides:
        config = apply_override(config, item, opaque=opaque)
    return config


def diff(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two configs (for refusing a mismatched workdir)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def to_json(config: Mapping) -> str:
    """``config`` as indented JSON with sorted keys, the form of a run's ``config.json``.

    Example:
        >>> from resnet_jax.configs import to_json
        >>> print(to_json({"train": {"seed": 0, "epochs": 2}, "task": "skip"}))
        {
          "task": "skip",
          "train": {
            "epochs": 2,
            "seed": 0
          }
        }
    """
    return json.dumps(config, indent=2, sort_keys=True)


# Schema ----------------------------------------------------------------------------------------
# A checker takes a value and returns None when it is valid, else a phrase saying what is valid.

Checker = Callable[[Any], "str | None"]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(*, low: int | None = None, high: int | None = None) -> Checker:
    def check(v):
        if not _is_int(v) or (low is not None and v < low) or (high is not None and v > high):
            bounds = f" >= {low}" if high is None else f" in [{low}, {high}]"
            return f"an integer{bounds if low is not None else ''}"
        return None
    return check


def number(*, low: float | None = None, high: float | None = None, low_open: bool = False) -> Checker:
    parts = [f"{'>' if low_open else '>='} {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
    valid = " ".join(["a finite number", " and ".join(p for p in parts if p)]).strip()

    def check(v):
        if not _is_number(v):
            return valid
        if (low is not None and (v <= low if low_open else v < low)) or (high is not None and v > high):
            return valid
        return None
    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def text(v) -> str | None:
    return None if isinstance(v, str) else "a string"


def one_of(*choices) -> Checker:
    return lambda v: None if v in choices else f"one of {list(choices)}"


def optional(checker: Checker) -> Checker:
    return lambda v: None if v is None else (None if checker(v) is None else f"null or {checker(v)}")


def list_of(checker: Checker, *, min_len: int = 0, length: int | None = None) -> Checker:
    def check(v):
        ok = isinstance(v, (list, tuple)) and len(v) >= min_len and (length is None or len(v) == length)
        if not ok or any(checker(x) is not None for x in v):
            size = f"{length} " if length is not None else (f"at least {min_len} " if min_len else "")
            return f"a list of {size}items, each {checker(object()) or 'valid'}"
        return None
    return check


def split_prefixes(v) -> str | None:
    """``{split name: [id prefix, ...]}``: which ids of a flat folder belong to which split."""
    ok = isinstance(v, Mapping) and v and all(
        isinstance(k, str) and isinstance(p, (list, tuple)) and p and all(isinstance(x, str) for x in p)
        for k, p in v.items())
    return None if ok else "a mapping from split names to non-empty lists of id prefixes"


ELIMINATED_FORMS = ("channel", "position", "lesion")
"""How a slim model replaces an eliminated unit's branch (see ``resnet_jax.models.resnet``)."""


def eliminated_units(v) -> str | None:
    """``[[unit, form], ...]``: the units a slim model replaces by ``relu(x + b)`` (written by ``resnet-jax
    eliminate``); forms from ELIMINATED_FORMS."""
    ok = isinstance(v, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and p[1] in ELIMINATED_FORMS for p in v)
    return None if ok else f"a list of [unit name, form] pairs, form one of {list(ELIMINATED_FORMS)}"


POSITIVE = integer(low=1)
COUNT_OR_ALL = optional(integer(low=1))


def validate(config: Mapping, schema: Mapping[str, Checker], *, what: str) -> None:
    """Check every key of ``config`` that ``schema`` names; raise one error listing every bad value."""
    flat = flatten(config)
    problems = []
    for key, checker in schema.items():
        value = _get(config, key)
        problem = checker(value)
        if problem is not None:
            problems.append(f"{key}={value!r} (valid: {problem})")
    unchecked = sorted(k for k in flat if k not in schema and not any(k.startswith(s + ".") for s in schema))
    if unchecked:
        raise AssertionError(f"{what} schema misses keys {unchecked}")  # a bug here, not the user's
    if problems:
        raise ConfigError(f"invalid {what}: " + "; ".join(problems))


def _get(config: Mapping, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node
