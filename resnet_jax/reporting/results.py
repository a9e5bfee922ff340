"""A run's committed results: its small tables beside a provenance record, in a folder anyone can audit.

``export`` copies the tables a workdir's stages wrote (CSV, JSON, the training logs; never checkpoints,
per-example stores or figures) into ``<out>/`` with the same relative paths, and writes ``provenance.json``:
the command, the code (resnet-jax version and git commit), date, machine, preset, seeds, the datasets'
digests and the wall time of each stage (and, for a user's model ablated with ``ablate --model``, its reference,
arguments and parameter digest). The README's results are rendered from such folders
(:mod:`resnet_jax.reporting.readme_results`), so every number there traces back to one of them.

Usage: ``results.export("runs/cpu", "docs/results/cpu", command="...")`` (``resnet-jax results``).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnet_jax import files, ledger

SUFFIXES = (".csv", ".json", ".jsonl", ".md")
LEFT_OUT_NAMES = ("results.jsonl", "stages.json.lock", "partial_epoch.json")
"""Per-example stores and bookkeeping: large, or meaningless outside the workdir."""
LEFT_OUT_DIRS = ("checkpoints", "initial_params", "figures", "report", "stages")
MAX_BYTES = 2 * 2**20
"""A larger table is left out (and listed in the provenance record); the folder stays small enough to commit."""
PROVENANCE = "provenance.json"
ROOT = Path(__file__).resolve().parents[2]
"""The repository root: recorded paths are written relative to it, as a reader types them there."""


def portable_text(text: str, root: Path | None = None) -> str:
    """``text`` with this machine's absolute paths under the repository's parent folder written relative to the
    repository root (``/work/main/docs`` -> ``docs``, ``/work/shared/data`` -> ``../shared/data``), so a recorded
    command reruns from any checkout laid out like this one (the shared data beside it)."""
    root = Path(root or ROOT).resolve()
    text = text.replace(f"{root}/", "")
    return text if root.parent == Path(root.anchor) else text.replace(f"{root.parent}/", "../")


def make_portable(folder: Path, root: Path | None = None) -> list[str]:
    """Rewrite every text file under ``folder`` with :func:`portable_text`; return the files changed."""
    changed = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES):
        text = path.read_text()
        if (fixed := portable_text(text, root)) != text:
            path.write_text(fixed)
            changed.append(str(path.relative_to(folder)))
    return changed


def recorded_path(text: str, root: Path | None = None) -> Path:
    """A path as a record holds it (absolute, or relative to the repository root), resolved on this machine."""
    return (Path(root or ROOT) / text).resolve()


def machine() -> dict[str, Any]:
    """What ran it: CPU model and cores, the devices JAX sees, and the versions of Python and the libraries that
    compute (the one record of the environment: reports and Study B's results use it too)."""
    import flax
    import jax
    import optax

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    devices = jax.devices()
    return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
            "device_kind": devices[0].device_kind, "device_count": len(devices), "processes": jax.process_count(),
            "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__}


def grid(header: Sequence[str], rows: Sequence[Sequence], right_from: int = 1) -> str:
    """A Markdown table whose columns from ``right_from`` on are right-aligned (numbers)."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def machine_text(m: dict[str, Any]) -> str:
    """A :func:`machine` record in words."""
    return f"{m['cpu']}, {m['cores']} cores, backend {m['backend']} ({m['device_count']} {m['device_kind']} device(s))"


DIRTY = "with uncommitted changes to tracked code"
NOT_RECORDED = "not recorded (made by an earlier version)"
NO_DIGEST = "no digest recorded (the run wrote no dataset.json)"


def code_text(code: dict[str, Any]) -> str:
    """A :func:`resnet_jax.ledger.code_version` record in words."""
    commit = (code.get("commit") or "unknown")[:10] + (f" ({DIRTY})" if code.get("dirty") else "")
    return f"resnet-jax {code['version']} at commit {commit}"


def stage_gaps(entry: dict[str, Any]) -> list[str]:
    """What a finished stage's record lacks of what reruns it (the command, the code's commit), in words: stages
    finished by versions before the ledger recorded them say so instead of leaving it out silently."""
    if not entry.get("finished"):
        return []
    gaps = [] if entry.get("command") else [f"command {NOT_RECORDED}"]
    code = entry.get("code")
    if not code:
        gaps.append(f"code version and commit {NOT_RECORDED}")
    elif not code.get("commit"):
        gaps.append("commit not recorded (not run from a git checkout)")
    return gaps


def run_identity(workdir: str | Path) -> tuple[str | None, int | None]:
    """The reproduce preset that made ``workdir`` (its ledger's identity) and the most training seeds any of its
    stages ran with (their results); None for what the ledger does not hold (a run trained alone)."""
    record = ledger.read(workdir)
    run = record.get("run")
    seeds = [e["result"]["seeds"] for e in record["stages"].values()
             if e.get("finished") and isinstance(e.get("result"), dict) and isinstance(e["result"].get("seeds"), int)]
    return (run.get("preset") if isinstance(run, dict) else None), max(seeds, default=None)


def _kept(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return (path.suffix in SUFFIXES and path.name not in LEFT_OUT_NAMES
            and not any(p in LEFT_OUT_DIRS for p in parts[:-1]))


def _datasets(workdir: Path) -> dict[str, dict[str, str] | str]:
    """Per run directory (a folder with a ``config.json`` or a ``dataset.json``), each split's content digest
    (``dataset.json``, written by training), or :data:`NO_DIGEST` where the run recorded none."""
    out: dict[str, dict[str, str] | str] = {}
    for run in sorted({p.parent for name in ("dataset.json", "config.json") for p in workdir.rglob(name)}):
        path = run / "dataset.json"
        splits = json.loads(path.read_text()) if path.is_file() else None
        out[str(run.relative_to(workdir)) or "."] = NO_DIGEST if splits is None else {
            name: split.get("sha256") for name, split in splits.items() if isinstance(split, dict)}
    return out


def _user_model(workdir: Path) -> dict[str, Any]:
    """``{"model": ...}`` for a user's model ablated with ``ablate --model`` (its ``model.json``: the reference,
    arguments, call keywords, normalisation, data and parameter digests); nothing for a run trained here."""
    path = workdir / "model.json"
    return {"model": json.loads(path.read_text())} if path.is_file() else {}


def _training_seconds(workdir: Path) -> dict[str, float]:
    """Per run directory, the training's wall time (the last epoch's ``elapsed_s``, which training carries over
    resumes; work lost to an interruption after the last checkpoint is not counted)."""
    out = {}
    for path in sorted(workdir.rglob("metrics.jsonl")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines and "elapsed_s" in (last := json.loads(lines[-1])):
            out[str(path.parent.relative_to(workdir)) or "."] = round(last["elapsed_s"], 1)
    return out


def _stages(workdir: Path) -> dict[str, dict[str, Any]]:
    """Each stage's wall time, finish, code and command; a finished stage's missing command or commit is written
    as null with the reason in ``gaps`` (:func:`stage_gaps`)."""
    out = {}
    for name, entry in ledger.read(workdir)["stages"].items():
        stage = {k: entry.get(k) for k in ("seconds", "finished", "code", "command")
                 if k in entry or entry.get("finished")}  # a finished stage names even what it lacks
        out[name] = {**stage, "gaps": gaps} if (gaps := stage_gaps(entry)) else stage
    return out


def _unfinished(workdir: Path) -> list[str]:
    """Stages that some ledger under ``workdir`` records as started and not finished (an interrupted run);
    stages that only declared their outputs (a run's ``train`` and ``ablate``) are not among them."""
    out = []
    for path in sorted(workdir.rglob(ledger.FILE)):
        run = path.parent.relative_to(workdir)
        out += [f"{run}/{name}" if run.parts else name for name in ledger.interrupted(path.parent)]
    return out


def provenance(workdir: Path, *, command: str, preset: str | None, seeds: int | None,
               left_out: Sequence[str], copied: Sequence[str] = (), uncommitted: Sequence[str] = ()) -> dict[str, Any]:
    """The record of an export: ``preset`` and ``seeds`` as the workdir's ledger holds them (the arguments where
    it holds none); ``uncommitted``, the changed code files an ``--allow-dirty`` export ran with."""
    unfinished = _unfinished(workdir)
    recorded_preset, recorded_seeds = run_identity(workdir)
    return {
        "command": command, "code": ledger.code_version(),
        **({"allow_dirty": True, "uncommitted": list(uncommitted)} if uncommitted else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "preset": recorded_preset or preset, "seeds": recorded_seeds or seeds,
        "workdir": str(workdir), **_user_model(workdir),
        "datasets": _datasets(workdir), "stages": _stages(workdir), "training_seconds": _training_seconds(workdir),
        "left_out": list(left_out), "files": list(copied),
        **({"warning": f"exported from an interrupted run: {len(unfinished)} stage(s) started and not finished "
                       f"({', '.join(unfinished)}); their tables may be partial or missing"} if unfinished else {}),
    }


def patient_interval_text(evaluation: Mapping, score: str) -> str:
    """`` (patients' 95 % interval: low to high)`` where ``evaluation`` holds the score's interval over patients
    (a segmentation test score, ``metrics.Dice.patient_interval``); empty otherwise."""
    low, high = evaluation.get(f"{score}_patients_low"), evaluation.get(f"{score}_patients_high")
    return "" if low is None or high is None else f" (patients' 95 % interval: {low:.4f} to {high:.4f})"


class TableError(ValueError):
    """Committed results that cannot make a table: runs that disagree on what they measured, or a value a table
    cannot be computed from. A README block that meets one fails with its message (``readme_results.render``)."""


def ablation_table(run: Path, protocol: str, reading: str = "") -> list[dict] | None:
    """A run's rows of one protocol's table (``reading``: the suffix of a BatchNorm reading); None without it."""
    path = Path(run) / "ablation" / f"{protocol}{reading}.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else None


class ExportError(OSError):
    """A results folder that cannot be written without harming what is there, or from code no commit holds;
    nothing was touched."""


def check_clean(*, allow_dirty: bool = False) -> list[str]:
    """Refuse an export from a checkout whose tracked code differs from its commit (the record could not name the
    code that made it), unless ``allow_dirty``; return the changed files (which the record then lists)."""
    changes = ledger.code_changes() or []
    if changes and not allow_dirty:
        raise ExportError(f"the checkout has uncommitted changes to tracked code ({', '.join(changes[:3])}"
                          f"{' ...' if len(changes) > 3 else ''}); commit them so the results name the code that "
                          f"made them, or pass --allow-dirty (the record and the README block then say so); "
                          f"nothing was written")
    return changes


def check_destination(workdir: str | Path, out: str | Path) -> None:
    """Refuse, before touching the disk (:func:`export` asks first; ``reproduce --results`` before hours of work), any ``out`` whose replacement could lose data: the workdir, a folder
    inside it or above it, a file, or a folder holding anything but an earlier export of this same run."""
    workdir, out = Path(workdir), Path(out)
    work, dest = workdir.resolve(), out.resolve()
    if dest == work or dest.is_relative_to(work):
        raise ExportError(f"--out {out} is {'the workdir' if dest == work else 'inside the workdir'} {workdir}; "
                          f"choose a folder outside it, e.g. docs/results/{work.name}")
    if work.is_relative_to(dest):
        raise ExportError(f"--out {out} holds the workdir {workdir}; replacing it would delete the run: choose a new "
                          f"folder outside it, e.g. docs/results/{work.name}")
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder; choose a new folder, e.g. docs/results/{work.name}")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    try:
        earlier = json.loads((dest / PROVENANCE).read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or recorded_path(str(earlier.get("workdir"))) != work:
        what = "the results of another run" if isinstance(earlier, dict) else "files that are not results of this run"
        raise ExportError(f"--out {out} already holds {what} ({_listing(dest)}); nothing was written: choose a new "
                          f"folder, or remove that one yourself if it may go")
    extra = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()
                   and str(p.relative_to(dest)) not in {PROVENANCE, *earlier.get("files", ())})
    if "files" in earlier and extra:
        raise ExportError(f"--out {out} holds this run's earlier results and files the export did not write "
                          f"({', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}); nothing was written: move "
                          f"them elsewhere, or choose a new folder")


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def export(workdir: str | Path, out: str | Path, *, command: str, preset: str | None = None,
           seeds: int | None = None, allow_dirty: bool = False) -> Path:
    """Copy ``workdir``'s tables into ``out`` and write its provenance record; return the record's path.

    The folder is written aside and renamed into place, so an interrupted export leaves the earlier one whole.
    ``out`` may be new, empty, or an earlier export of the same run (which it replaces); anything else, or a
    checkout with uncommitted code changes unless ``allow_dirty`` (:func:`check_clean`), is refused before the
    disk is touched (:class:`ExportError`)."""
    workdir, out = Path(workdir), Path(out)
    if not (workdir / ledger.FILE).is_file() and not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no {ledger.FILE} or config.json): nothing to export")
    uncommitted = check_clean(allow_dirty=allow_dirty)
    check_destination(workdir, out)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh, old = (out.with_name(f".{out.name}.{tag}-{os.getpid()}") for tag in ("new", "old"))
    moved = False
    try:
        left_out, copied = _copy_tables(workdir, fresh)
        record = provenance(workdir, command=command, preset=preset, seeds=seeds, left_out=left_out, copied=copied,
                            uncommitted=uncommitted)
        files.write_json(fresh / PROVENANCE, record)
        make_portable(fresh)
        if out.exists():
            out.rename(old)
            moved = True
        fresh.rename(out)
    except BaseException:
        if moved and not out.exists():
            old.rename(out)  # the earlier export back in place
        raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out / PROVENANCE


def _copy_tables(workdir: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Copy the kept tables into ``dest``; return what was left out (too large) and what was copied."""
    left_out, copied = [], []
    dest.mkdir(parents=True)
    for path in sorted(p for p in workdir.rglob("*") if p.is_file() and _kept(p, workdir)):
        rel = path.relative_to(workdir)
        if path.stat().st_size > MAX_BYTES:
            left_out.append(f"{rel} ({path.stat().st_size} bytes)")
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
        copied.append(str(rel))
    return left_out, copied


# Every committed form of a table says the same -----------------------------------------------------------------

TWINS = {"path.csv": ("summary.json", "path")}
"""CSVs whose rows a JSON file other than ``<stem>.json`` (under ``rows``) holds: file name and key."""


def form_mismatches(root: str | Path) -> list[str]:
    """Where a CSV under ``root`` says other than the JSON it was written beside: the README renders from the
    JSON, so a hand-edited CSV would otherwise pass. One line per differing CSV, naming its first differing row
    and column; a CSV with no JSON twin (``verify.csv``) is not compared."""
    out = []
    for path in sorted(Path(root).rglob("*.csv")):
        twin = _twin_rows(path)
        if twin is not None:
            out += _compare_rows(path, *twin)
    return out


def _twin_rows(path: Path) -> tuple[str, list[dict]] | None:
    name, key = TWINS.get(path.name, (f"{path.stem}.json", "rows"))
    twin = path.with_name(name)
    data = json.loads(twin.read_text()) if twin.is_file() else None
    rows = data.get(key) if isinstance(data, dict) else None
    return (name, rows) if isinstance(rows, list) else None


def _compare_rows(path: Path, name: str, rows: list[dict]) -> list[str]:
    with path.open(newline="") as fh:
        written = list(csv.DictReader(fh))
    if len(written) != len(rows):
        return [f"{path}: {len(written)} rows in the CSV, {len(rows)} in {name}"]
    for i, (cells, row) in enumerate(zip(written, rows), 1):
        for column, cell in cells.items():
            if column is None or not _same(cell, row.get(column)):
                label = row.get("mask", row.get("step", ""))
                return [f"{path}: row {i} ({label}), column {column}: {cell} in the CSV, {row.get(column)} in {name}"]
    return []


def _same(cell: str | None, value: Any) -> bool:
    """A CSV cell against the JSON value it was written from (``csv`` writes ``str(value)``, None as nothing):
    numbers compare as numbers, so that only their formatting may differ."""
    if cell is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return cell == ("" if value is None else str(value))
    try:
        number = float(cell)
    except ValueError:
        return False
    return math.isclose(number, value, rel_tol=1e-12) or (math.isnan(number) and math.isnan(value))
