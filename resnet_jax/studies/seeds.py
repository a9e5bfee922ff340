"""Seeds as a dimension: the same preset trained with several seeds, each swept, and the tables combined.

Seed 0 lives in the run directory itself (``<run>``), seed ``k`` in ``<run>-seed<k>``; every seed shares the
data split (``data.split_seed``), so the seeds differ only in initialisation and data order. The combined
table has, per mask, the mean, standard deviation, min and max over seeds of the metric and of the drop, and
how many seeds call the mask trivial, non-trivial, improves or undecided (each seed's own decision, read off
its simultaneous bounds).

Usage: ``seed_dir("runs/cifar10-resnet34", 1)`` is ``runs/cifar10-resnet34-seed1``; ``reproduce`` with ``seeds=N``
drives the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from resnet_jax.ablation import tables
from resnet_jax.ablation.statistics import DECISIONS
from resnet_jax.reporting import figures

COMBINED = ("baseline", "single", "stage-except-decomposition", "shortcut", "pairs")


def each_seed(run: str | Path, n_seeds: int) -> list[tuple[Path, list[str]]]:
    """The one seed loop: seed k's run directory (seed 0 in ``run`` itself, seed k in ``<run>-seed<k>``) and the
    config overrides that make it seed k (applied after the user's, so they win)."""
    return [(seed_dir(run, k), [f"train.seed={k}"]) for k in range(n_seeds)]


def seed_dir(run: str | Path, k: int) -> Path:
    """Seed ``k``'s directory of ``run``: ``run`` itself for seed 0, ``<run>-seed<k>`` beside it otherwise."""
    run = Path(run)
    return run if k == 0 else run.with_name(f"{run.name}-seed{k}")


def combined_dir(run: str | Path) -> Path:
    """Where the seeds' combined tables of ``run`` go: ``<run>-seeds``, beside the seeds' own directories."""
    run = Path(run)
    return run.with_name(f"{run.name}-seeds")


def combine(tables_by_seed: Sequence[dict]) -> list[dict]:
    """One row per mask of the first seed's table, over every seed's table of the same protocol."""
    by_mask = [{r["mask"]: r for r in t["rows"]} for t in tables_by_seed]
    missing = [m for m in by_mask[0] if any(m not in other for other in by_mask[1:])]
    if missing:
        raise ValueError(f"the seeds' tables differ in masks (first missing: {missing[:3]}); rerun ablate on every seed")
    rows = []
    for mask, first in by_mask[0].items():
        seeds = [t[mask] for t in by_mask]
        values = np.array([r["value"] for r in seeds])
        drops = np.array([r["baseline"] - r["value"] for r in seeds])
        row = {"mask": mask, "kind": first["kind"], "layers": first["layers"], "metric": first["metric"],
               "n_seeds": len(seeds), "baseline_mean": float(np.mean([r["baseline"] for r in seeds]))}
        for name, x in (("value", values), ("drop", drops)):
            row.update({f"{name}_mean": float(x.mean()), f"{name}_std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                        f"{name}_min": float(x.min()), f"{name}_max": float(x.max())})
        for d in DECISIONS:
            row[f"seeds_{d}"] = sum(r.get("decision") == d for r in seeds)
        if "interaction" in first:
            inter = np.array([r["interaction"] for r in seeds])
            row.update(interaction_mean=float(inter.mean()), interaction_min=float(inter.min()),
                       interaction_max=float(inter.max()))
        row["values"] = [float(v) for v in values]
        rows.append(row)
    return rows


def verdict(row: dict) -> str:
    """A mask's verdict across seeds: unanimous decisions are named, anything else is 'mixed'."""
    n = row["n_seeds"]
    if not any(row[f"seeds_{d}"] for d in DECISIONS):
        return ""  # the baseline: nothing to decide
    for d in DECISIONS:
        if row[f"seeds_{d}"] == n:
            return f"{d} ({n}/{n})"
    return "mixed (" + ", ".join(f"{row[f'seeds_{d}']} {d}" for d in DECISIONS if row[f"seeds_{d}"]) + ")"


def write_combined(runs: Sequence[Path], out: Path, *, label: str) -> list[Path]:
    """For every protocol table present in all ``runs``' ablation folders: ``<out>/<stem>.csv|json`` and, for
    ``single``, a figure of each seed's values with the mean."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem in COMBINED:
        paths = [Path(r) / "ablation" / f"{stem}.json" for r in runs]
        if not all(p.is_file() for p in paths):
            continue
        loaded = [json.loads(p.read_text()) for p in paths]
        rows = combine(loaded)
        for r in rows:
            r["verdict"] = verdict(r)
        figure = None
        if stem == "single":
            figure = figures.plot_seed_spread(rows, out / f"{stem}.png",
                                              title=f"{label}: single, {len(runs)} seeds")
        meta = {"title": f"{stem} across {len(runs)} seeds", "runs": [str(r) for r in runs],
                "statistics": loaded[0].get("statistics"), "figure": figure.name if figure else None,
                "checkpoints": [t.get("provenance", {}).get("checkpoint_choice", "") for t in loaded]}
        csv_rows = [{k: v for k, v in r.items() if k != "values"} for r in rows]
        written += list(tables.write_rows(csv_rows, out, stem, meta=meta))
        if figure:
            written.append(figure)
    return written
