"""Shared fixtures: paths to ../shared/data when present, the CLI runner, and the suite's caches."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.cpu_report import (pytest_addoption, pytest_runtest_logreport,  # noqa: F401 (pytest --cpu-report)
                               pytest_runtest_makereport, pytest_runtest_setup, pytest_terminal_summary)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RESNET_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def in_ci() -> bool:
    """Whether the suite runs in continuous integration (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def shared_dataset(name: str) -> Path:
    """The shared offline copy of a dataset. Where it is absent the test skips on a workstation, but fails under
    ``CI=true``: a CI run without the data would otherwise pass without its end-to-end runs."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"shared dataset {path} not present (set RESNET_JAX_SHARED_DATA to its folder)"
        if in_ci():
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env_extra: dict | None = None,
            own_process: bool = False):
    """Run the command line tool as a user would type ``resnet-jax ARGS``; return its exit status and output.

    It runs in this process (a subprocess would pay JAX's import and the in-memory compile caches again) unless
    it needs its own working directory or environment, or ``own_process`` asks for one (a long job that a hang
    guard, ``timeout``, must be able to stop); then ``python -m resnet_jax.cli ARGS`` runs in a subprocess."""
    if cwd is None and env_extra is None and not own_process:
        return _run_in_process(args)
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "resnet_jax.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env)


def _run_in_process(args: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``resnet_jax.cli.main(args)`` with what a process would show: its stdout and stderr (warnings included,
    each printed as Python prints them), its exit status (argparse's exits and tracebacks as status 2 and 1),
    and ``sys.argv`` as typed (provenance records read it)."""
    import contextlib
    import io
    import traceback
    import warnings

    from resnet_jax import cli

    out, err = io.StringIO(), io.StringIO()

    def show(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    argv = sys.argv
    sys.argv = ["resnet-jax", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            silence, cli._silence_stderr = cli._silence_stderr, lambda: None  # it closes fd 2 of the process
            try:
                rc = cli.main(list(args))
            except SystemExit as stop:
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
                rc = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            except Exception:  # what Python prints for an uncaught exception, with its status
                traceback.print_exc()
                rc = 1
            finally:
                cli._silence_stderr = silence
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(["resnet-jax", *args], rc, out.getvalue(), err.getvalue())


def render_results(*args: str) -> subprocess.CompletedProcess:
    """``python scripts/render_results.py ARGS`` in this process, with its exit status and output: the check's
    imports (JAX and matplotlib among them) are already paid here. The script itself runs as a command in
    ``test_the_readme_matches_the_committed_results`` and in ``test_the_check_fails_when_a_figure_is_edited_by_hand``."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = _render_results_main()(list(args))
        except SystemExit as stop:  # argparse
            rc = stop.code if isinstance(stop.code, int) else 2
    return subprocess.CompletedProcess(["render_results.py", *args], rc, out.getvalue(), err.getvalue())


@functools.cache
def _render_results_main():
    """The script's ``main``, its module run once per process (it puts the repository first on ``sys.path``)."""
    import runpy

    return runpy.run_path(str(REPO / "scripts" / "render_results.py"))["main"]


SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"
"""XLA's CPU backend without LLVM's optimisation passes, for the suite and every process it starts: its programs are
tiny and run a few times each, so compiling them is most of their cost (a tiny ResNet's training run: 13.6 s cold
against 8.4 s without the passes, 5.5 s against 5.8 s from the cache). Users' runs keep XLA's default."""


def xla_flags(*flags: str) -> str:
    """``XLA_FLAGS`` for a process the suite starts with ``flags`` of its own: the suite's flags come too."""
    return " ".join((SUITE_XLA_FLAGS, *flags))


if SUITE_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):  # read when JAX first uses a device, after this import
    os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", "")).strip()

TEST_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnet-jax" / "tests"
"""Decoded test datasets and compiled test programs, kept across test runs (both are keyed by content: JAX's
cache by the program, compiler and devices; the dataset cache by the files' bytes), apart from the user's."""
COMPILE_CACHE_MAX_BYTES = 2 * 2**30  # beyond this the suite's compiled programs are cleared before a run


def _clear_when_larger(directory: Path, max_bytes: int) -> None:
    """Bound the suite's compilation cache. JAX's own bound (``jax_compilation_cache_max_size``) keeps a side file
    per program and stops storing any program once one lacks its side file, which a process that runs without
    that bound (a user's run sharing the folder, a killed process) leaves behind; so the suite runs JAX's cache
    unbounded and clears the folder whole when it outgrows ``max_bytes``."""
    def size(f: Path) -> int:
        try:
            return f.stat().st_size
        except FileNotFoundError:  # removed by another process meanwhile
            return 0

    if directory.is_dir() and sum(size(f) for f in directory.iterdir()) > max_bytes:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_configure(config):
    """Every CLI run of the suite, and the suite's own process, reuse programs compiled by an earlier test or
    test run instead of compiling them again (most of a tiny model's run is compilation)."""
    os.environ.setdefault("RESNET_JAX_CACHE", str(TEST_CACHE))
    os.environ.setdefault("RESNET_JAX_COMPILE_CACHE", str(TEST_CACHE / "compiled"))
    from resnet_jax import devices

    cache = devices.compilation_cache_dir()
    if cache is not None:  # JAX reads these in any process the suite starts, a tutorial's kernel too
        os.environ.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                          JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    # only the suite's own folder, and only in the controlling process (pytest-xdist's workers share it)
    if cache == TEST_CACHE / "compiled" and not hasattr(config, "workerinput"):
        _clear_when_larger(cache, COMPILE_CACHE_MAX_BYTES)
    devices.enable_compilation_cache(cache)


LONGEST_FIRST = ("studies/test_reproduce.py", "test_distributed.py", "test_tutorials.py", "test_integrity.py",
                 "training/test_train.py", "ablation/test_ablation.py", "models/test_models.py",
                 "test_checkpoint_layouts.py", "ablation/test_any_model.py", "ablation/test_elimination.py",
                 "test_segmentation.py", "interop/test_verify.py", "test_devices.py",
                 "interop/test_torchvision_family.py", "test_docs.py", "interop/test_convert.py", "test_join.py",
                 "studies/test_skip.py", "ablation/test_statistics.py")
"""The test files by their measured time on 2 cores with empty caches, longest first (the rest take seconds):
pytest-xdist gives each worker whole files in collection order (``--dist loadfile --no-loadscope-reorder``), so the
two longest run beside each other and shorter and shorter files fill in, and no long file starts when the other
worker is done."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    here = Path(__file__).parent
    gone = [name for name in LONGEST_FIRST if not (here / name).is_file()]
    if gone:  # a renamed file would silently lose its place (and the suite its balance)
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names {gone}, which are not test files")
    items.sort(key=lambda item: rank.get(item.path.relative_to(here).as_posix(), len(rank)))  # stable per file


def count_shifted_crops(originals: np.ndarray, augmented: np.ndarray, *, pad: int) -> int:
    """Assert each augmented image is a window of its zero-padded original, maybe mirrored; return how many
    were mirrored only (an independent check of random crop + flip)."""
    h, w = originals.shape[1:3]
    padded = np.pad(originals, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    flips = 0
    for img, aug in zip(padded, augmented):
        windows = [img[i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
        plain = any(np.array_equal(aug, win) for win in windows)
        flipped = any(np.array_equal(aug, win[:, ::-1]) for win in windows)
        assert plain or flipped
        flips += flipped and not plain
    return flips


def perturb_norms(variables, *, seed: int = 0, head: str = "fc"):
    """Random BatchNorm statistics and affine parameters (not the init's zeros and ones), so zeroed kernels
    leave visible constants; the classifier ``head`` keeps its values."""
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda kp, v: (rng.uniform(0.5, 2.0, v.shape) if kp[-1].key == "var" else rng.normal(0, 0.3, v.shape))
        .astype(np.float32), variables["batch_stats"])
    params = jax.tree_util.tree_map_with_path(
        lambda kp, v: (rng.normal(1.0 if kp[-1].key == "scale" else 0.0, 0.2, v.shape).astype(np.float32)
                       if kp[-1].key in ("scale", "bias") and len(kp) > 1 and kp[-2].key != head else v),
        variables["params"])
    return {"params": params, "batch_stats": stats}
