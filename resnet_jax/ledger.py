"""One ledger per workdir (``stages.json``): which stages ran there, what each read and wrote, and its result.

A stage claims its declared outputs before it runs and is marked done with its result after; a rerun skips a
done stage whose inputs digest is unchanged and recomputes one made from other inputs (never reusing a stale
result). ``clear`` removes exactly the outputs that the ledger's stages claimed, done or not, so ``--force-new``
leaves nothing of an old run behind and touches nothing else. Every layer that writes into a workdir (training,
ablation, verification, elimination, Study B, the main job) declares its outputs here, so no layer needs to
know the file names of the layers above it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_jax import files

FILE = "stages.json"
LEGACY_OUTPUTS = ("ablation", "report.md", "verify.csv", "import.json", "elimination",
                  "evaluation-before-finetune.json", "stages", "models", "selection.npz", "figures",
                  "skip_results.json", "skip_report.md", "dense_labels.npz", "operating_points.npz")
"""What versions before the ledger wrote into a run's workdir beside training's outputs: cleared from a workdir
that has a config and no ledger."""


class LedgerError(ValueError):
    """A ledger that cannot be read, or a workdir whose outputs were never declared."""


@dataclass(frozen=True)
class Stage:
    """A named step of a study: ``run()`` writes ``outputs`` (paths relative to the workdir; outputs that
    keep their own ledger, like a run's workdir, are listed whole) and returns a JSON result; ``inputs`` is the
    JSON data the result depends on beyond the workdir's own config (or a function returning it, read when the
    stage is about to run, for inputs an earlier stage of the same call may change)."""

    name: str
    run: Callable[[], dict]
    outputs: Sequence[str] = ()
    inputs: Any = None
    always: bool = False
    """Run even when done earlier (a cheap stage that reads every other stage's outputs, e.g. a report)."""


def digest(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def read(workdir: str | Path) -> dict[str, Any]:
    """The ledger of ``workdir`` (``{"stages": {}}`` when none was written yet)."""
    path = Path(workdir) / FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise LedgerError(f"{path} is not valid JSON ({err}); pass --force-new to start over") from None
    record.setdefault("stages", {})
    return record


@contextlib.contextmanager
def _locked(workdir: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write of the ledger under a file lock (two commands may write one workdir at once)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f".{FILE}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            record = read(workdir)
            yield record
            files.write_json(workdir / FILE, record)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


HOLDER = ".resnet-jax.lock"
"""The workdir's lock file: held by the one command writing there, and naming it for the others."""
_held: dict[Path, int] = {}
"""Workdirs this process holds, with how many nested holds (a command holds the run its library call holds too)."""


@contextlib.contextmanager
def hold(workdir: str | Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Be the one command writing into ``workdir`` while the block runs: a second command on the same workdir
    waits here, saying which command holds it, then goes on from what the first left (a finished run resumes as
    complete; stored results are read, not computed again). A hold this process has already passes through; in a
    multi-process job, process 0 holds the workdir for the job."""
    workdir = Path(workdir).absolute()
    if workdir in _held or not files.WRITER:
        _held[workdir] = _held.get(workdir, 0) + 1
        try:
            yield
        finally:
            _held[workdir] -= 1
            if not _held[workdir]:
                del _held[workdir]
        return
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    fh = _lock_file(workdir / HOLDER, log)
    try:
        fh.write(f"pid {os.getpid()} (`{command_line()}`, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        fh.flush()
        _held[workdir] = 1
        yield
    finally:
        _held.pop(workdir, None)
        (workdir / HOLDER).unlink(missing_ok=True)  # still held: a waiting command then locks a fresh file
        if created and not any(workdir.iterdir()):  # a command that failed at once leaves no folder
            with contextlib.suppress(OSError):  # unless a waiting command has just made it its own
                workdir.rmdir()
        fh.close()  # releases the lock


def _lock_file(path: Path, log: Callable[[str], None]):
    """``path`` opened and locked by this process alone; a holder that is there is named in ``log`` and waited for.
    A file its holder removed as it let go is opened again (the lock must be on the file the path names now)."""
    said = False
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # a holder that made the folder and left it empty removed it
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            if not said:
                log(f"{path.parent} is in use by {fh.read().strip() or 'another command'}; waiting for it to "
                    f"finish (Ctrl-C stops waiting)")
                said = True
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fh.fileno()).st_ino:
            fh.seek(0)
            fh.truncate()
            return fh
        fh.close()


def discard_unreadable(workdir: str | Path) -> bool:
    """Remove a ledger that is not valid JSON (``--force-new`` on such a workdir); return whether one was
    removed, in which case the caller clears the workdir as one made before the ledger."""
    try:
        read(workdir)
        return False
    except LedgerError:
        if files.WRITER:
            (Path(workdir) / FILE).unlink()
        return True


def update(workdir: str | Path, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to the ledger's record and write it back (process 0 only in a multi-process job)."""
    if files.WRITER:
        with _locked(Path(workdir)) as record:
            change(record)


def declare(workdir: str | Path, stage: str, outputs: Sequence[str]) -> None:
    """Record that ``stage`` writes ``outputs`` in ``workdir`` (before writing them, so an interrupted stage's
    partial outputs are still cleared by ``--force-new``)."""
    if outputs:
        update(workdir, lambda record: _add_outputs(record, stage, outputs))


def _add_outputs(record: dict, stage: str, outputs: Sequence[str]) -> dict:
    """``stage``'s entry in ``record``, with ``outputs`` added to those it declared before."""
    entry = record["stages"].setdefault(stage, {})
    entry["outputs"] = sorted({*entry.get("outputs", ()), *outputs})
    return entry


def start(workdir: str | Path, stage: str, outputs: Sequence[str]) -> None:
    """Record that ``stage`` starts now: its outputs (:func:`declare`) and a start time, its earlier finish
    dropped, so a stage that never finishes reads as interrupted (a merely declared one does not)."""
    def change(record):
        entry = _add_outputs(record, stage, outputs)
        entry["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        entry.pop("finished", None)
    update(workdir, change)


def interrupted(workdir: str | Path) -> list[str]:
    """The stages of ``workdir``'s ledger that started and never finished."""
    return [name for name, entry in read(workdir)["stages"].items()
            if entry.get("started") and not entry.get("finished")]


def done(workdir: str | Path, stage: str) -> dict | None:
    """The finished record of ``stage``, or None."""
    entry = read(workdir)["stages"].get(stage)
    return entry if entry and entry.get("finished") else None


def run(workdir: str | Path, stage: Stage, log: Callable[[str], None], *, label: str = "") -> dict:
    """``stage``'s result: the stored one when it finished earlier from the same inputs, else computed now
    (``label`` prefixes its log lines)."""
    workdir = Path(workdir)
    key = digest(stage.inputs() if callable(stage.inputs) else stage.inputs)
    stored = done(workdir, stage.name)
    name = f"{label}{stage.name}"
    if stored is not None and stored.get("inputs_digest") == key and not stage.always:
        log(f"{name}: done earlier, skipped")
        return stored.get("result", {})
    log(f"{name}: {'made from other inputs, running again' if stored and not stage.always else 'running'}")
    start(workdir, stage.name, stage.outputs)
    began = time.perf_counter()
    result = stage.run() or {}
    seconds = time.perf_counter() - began
    finish(workdir, stage.name, result, seconds=seconds, inputs_digest=key)
    log(f"{name}: finished in {seconds:.0f}s")
    return result


NOT_CODE = ("docs", "*.md")
"""Tracked paths that compute nothing (the committed results, prose): changes there leave a checkout's code clean,
so an export into ``docs/results`` does not make the next one refuse."""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def _checkout() -> Path:
    import resnet_jax

    return Path(resnet_jax.__file__).resolve().parents[1]


def code_changes(root: str | Path | None = None) -> list[str] | None:
    """The tracked code files of the checkout (``root``, default resnet-jax's own) that differ from its commit
    (untracked files and :data:`NOT_CODE` left aside); None where there is no git checkout (an installed wheel)."""
    exclude = [f":(exclude){p}" for p in NOT_CODE]
    try:
        lines = _git(Path(root or _checkout()), "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in lines.splitlines() if line.strip()]


@functools.cache
def code_version() -> dict[str, Any]:
    """resnet-jax's version and, in a git checkout, its commit and whether tracked code differs from it
    (:func:`code_changes`): what produced a stage's outputs, recorded with them."""
    import resnet_jax

    out: dict[str, Any] = {"version": resnet_jax.__version__, "commit": None, "dirty": None}
    try:
        out["commit"] = _git(_checkout(), "rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return out  # not a checkout (an installed wheel) or no git: the version alone
    changes = code_changes()
    out["dirty"] = None if changes is None else bool(changes)
    return out


def command_line() -> str:
    """This process's command line, as a user would type it (``resnet-jax ...`` for the command line tool)."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    program = Path(sys.argv[0]).name
    head = (["resnet-jax"] if program in ("resnet-jax", "cli.py")
            else ["python", sys.argv[0]] if program.endswith(".py") else [program])
    return shlex.join([*head, *sys.argv[1:]])


def finish(workdir: str | Path, stage: str, result: dict, *, seconds: float, **extra: Any) -> None:
    def change(record):
        entry = record["stages"].setdefault(stage, {})
        entry.update(result=result, seconds=seconds, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                     code=code_version(), command=command_line(), **extra)
    update(workdir, change)


def made_by(run: str | Path) -> dict[str, Any] | None:
    """The finished stage of the enclosing workdir's ledger that declared ``run`` among its outputs (how a
    reproduce job made one of its runs): ``{"workdir", "stage", "command"}``, the command None where an earlier
    version recorded none; None when no ledger above ``run`` declares it (a run trained on its own)."""
    run = Path(run).absolute()
    for workdir in run.parents:
        if not (workdir / FILE).is_file():
            continue
        name = str(run.relative_to(workdir))
        for stage, entry in read(workdir)["stages"].items():
            if entry.get("finished") and name in entry.get("outputs", ()):
                return {"workdir": str(workdir), "stage": stage, "command": entry.get("command")}
    return None


def outputs(workdir: str | Path, *, stages: Sequence[str] | None = None) -> list[str]:
    """Every output that ``stages`` (default: the ledger's stages) declared, done or not."""
    record = read(workdir)["stages"]
    entries = [record.get(name, {}) for name in (record if stages is None else stages)]
    return sorted({o for entry in entries for o in entry.get("outputs", ())})


def clear(workdir: str | Path, *, stages: Sequence[str] | None = None) -> list[str]:
    """Remove the outputs that ``stages`` declared (default: every stage) and their records, so they run again
    (the ledger keeps its other stages and keys); return what was removed. Nothing undeclared is touched, and
    outputs that escape the workdir are refused."""
    workdir = Path(workdir)
    removed = []
    for name in outputs(workdir, stages=stages):
        target = workdir / name
        if not target.resolve().is_relative_to(workdir.resolve()):
            raise LedgerError(f"{workdir / FILE} declares {name!r}, outside the workdir; not removed")
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)

    def forget(record):
        record["stages"] = {k: v for k, v in record["stages"].items() if stages is not None and k not in stages}
    update(workdir, forget)
    return removed
