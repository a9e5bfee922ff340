"""Each preset's training time as the committed results measured it (``docs/results/``), never typed by hand.

A results folder records the reproduce preset that made it (its ledger's identity) and each run's training wall
time; the caller says which training preset each reproduce preset trains in which run folder (the studies' own
tables), so this module reads results only. An installed package has no ``docs/results``: every preset is then
"not measured".

Usage: ``preset_times.text(preset_times.measured(trained_by).get("cifar10-resnet34-cpu"))`` is one preset's
measured training time in words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resnet_jax.reporting import results

NOT_MEASURED = "not measured"


def results_root() -> Path | None:
    """The checkout's ``docs/results``, or None where resnet-jax runs from an installed package."""
    root = results.ROOT / "docs" / "results"
    return root if (results.ROOT / "pyproject.toml").is_file() and root.is_dir() else None


def _per_seed(training: Mapping[str, float], run: str) -> list[float]:
    """Seconds per seed of ``run`` (``run``, ``run-seed1``, ...): its own training, or the sum over the networks
    a study trains inside it (``run/models/*``)."""
    seeds: dict[int, float] = {}
    for name, seconds in training.items():
        head = Path(name).parts[0]
        match = re.fullmatch(rf"{re.escape(run)}(?:-seed(\d+))?", head)
        if match and (name == head or name.startswith(f"{head}/models/")):
            seed = int(match.group(1) or 0)
            seeds[seed] = seeds.get(seed, 0.0) + seconds
    return [seeds[k] for k in sorted(seeds)]


def measured(trained_by: Mapping[str, Mapping[str, tuple[str, str]]],
             root: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per training preset, each committed measurement of it: the results folder, the training's seconds per
    seed, the wall time of the stage that made every seed, and the machine. ``trained_by[reproduce preset][run
    folder]`` is the training preset that run folder holds and the reproduce stage that makes it."""
    root = root if root is not None else results_root()
    out: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(root.glob(f"*/{results.PROVENANCE}")) if root is not None else ():
        p = json.loads(record.read_text())
        preset = p.get("preset") or results.run_identity(record.parent)[0]
        for run, (name, stage) in trained_by.get(preset, {}).items():
            seconds = _per_seed(p.get("training_seconds", {}), run)
            if seconds:
                out.setdefault(name, []).append({
                    "results": f"docs/results/{record.parent.name}", "run": run, "seconds": seconds,
                    "stage": stage, "stage_seconds": p["stages"].get(stage, {}).get("seconds"),
                    "machine": results.machine_text(p["machine"])})
    return out


def text(found: list[dict[str, Any]] | None) -> str:
    """One preset's measurements in words, or "not measured"."""
    if not found:
        return f"{NOT_MEASURED} (no committed run of it under docs/results)"
    return "; ".join(_one(m) for m in found)


def _one(m: dict[str, Any]) -> str:
    n = len(m["seconds"])
    stage = (f"; its stage {m['stage']} took {m['stage_seconds']:.0f} s for {n} seed{'s' if n != 1 else ''} "
             f"(last call)" if m.get("stage_seconds") else "")
    return (f"{m['results']} ({m['run']}): training {', '.join(f'{s:.0f} s' for s in m['seconds'])} per seed"
            f"{stage}, on {m['machine']}")
