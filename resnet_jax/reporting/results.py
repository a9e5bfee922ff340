"""A run's committed results: its small tables beside a provenance record, in a folder anyone can audit.

``export`` copies the tables a workdir's stages wrote (CSV, JSON, the training logs; never checkpoints,
per-example stores or figures) into ``<out>/`` with the same relative paths, and writes ``provenance.json``:
the command, the code (resnet-jax version and git commit), date, machine, preset, seeds, the datasets'
digests and the wall time of each stage. The README's results are rendered from such folders
(:mod:`resnet_jax.reporting.readme_results`), so every number there traces back to one of them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
from collections.abc import Sequence
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


def code_text(code: dict[str, Any]) -> str:
    """A :func:`resnet_jax.ledger.code_version` record in words."""
    commit = (code.get("commit") or "unknown")[:10] + (" (with local changes)" if code.get("dirty") else "")
    return f"resnet-jax {code['version']} at commit {commit}"


def _kept(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return (path.suffix in SUFFIXES and path.name not in LEFT_OUT_NAMES
            and not any(p in LEFT_OUT_DIRS for p in parts[:-1]))


def _datasets(workdir: Path) -> dict[str, dict[str, str]]:
    """Per run directory, each split's content digest (``dataset.json``, written by training)."""
    out = {}
    for path in sorted(workdir.rglob("dataset.json")):
        splits = json.loads(path.read_text())
        out[str(path.parent.relative_to(workdir)) or "."] = {
            name: split.get("sha256") for name, split in splits.items() if isinstance(split, dict)}
    return out


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
    return {name: {k: entry[k] for k in ("seconds", "finished", "code", "command") if k in entry}
            for name, entry in ledger.read(workdir)["stages"].items()}


def provenance(workdir: Path, *, command: str, preset: str | None, seeds: int | None,
               left_out: Sequence[str]) -> dict[str, Any]:
    return {
        "command": command, "code": ledger.code_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "preset": preset, "seeds": seeds, "workdir": str(workdir),
        "datasets": _datasets(workdir), "stages": _stages(workdir), "training_seconds": _training_seconds(workdir),
        "left_out": list(left_out),
    }


def export(workdir: str | Path, out: str | Path, *, command: str, preset: str | None = None,
           seeds: int | None = None) -> Path:
    """Copy ``workdir``'s tables into ``out`` (replacing what an earlier export put there) and write its
    provenance record; return the record's path."""
    workdir, out = Path(workdir), Path(out)
    if not (workdir / ledger.FILE).is_file() and not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no {ledger.FILE} or config.json): nothing to export")
    if out.resolve().is_relative_to(workdir.resolve()):
        raise ValueError(f"the results folder {out} lies inside the workdir {workdir}; choose a folder outside it")
    if out.exists():
        shutil.rmtree(out)
    left_out = []
    for path in sorted(p for p in workdir.rglob("*") if p.is_file() and _kept(p, workdir)):
        rel = path.relative_to(workdir)
        if path.stat().st_size > MAX_BYTES:
            left_out.append(f"{rel} ({path.stat().st_size} bytes)")
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / rel)
    record = provenance(workdir, command=command, preset=preset, seeds=seeds, left_out=left_out)
    files.write_json(out / PROVENANCE, record)
    return out / PROVENANCE
