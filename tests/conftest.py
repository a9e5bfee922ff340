"""Shared fixtures: paths to ../shared/data when present, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RESNET_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """The shared offline copy of a dataset, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} not present")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env_extra: dict | None = None):
    """Run ``python -m resnet_jax.cli ARGS`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "resnet_jax.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-dataset caches of generated test data out of the user's cache."""
    if "RESNET_JAX_CACHE" not in os.environ:
        monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
