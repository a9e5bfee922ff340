"""Atomic writes: write beside the target, then rename, so an interrupted run never leaves half a file; in a
multi-process job only process 0 writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


WRITER = True
"""Whether this process writes files: in a multi-process job only process 0 does (``devices.join_job``)."""


def set_writer(writer: bool) -> None:
    global WRITER
    WRITER = bool(writer)


def user_cache_dir() -> Path:
    """The user's cache folder for resnet-jax (compiled programs, decoded datasets): ``resnet-jax`` under
    ``$XDG_CACHE_HOME``, else under ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnet-jax"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    if not WRITER:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2))


def savez(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    path = Path(path)
    if not WRITER:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path).with_suffix(".npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path
