"""Figures and the Markdown report of a run's ablation tables."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_single(rows: Sequence[dict], decomposition: set[str], path: Path, *, title: str) -> Path:
    """Metric per layer in network order, the baseline as a line, decomposition layers marked."""
    plt = _pyplot()
    names = [r["mask"] for r in rows]
    values = np.array([r["value"] for r in rows])
    low = values - np.array([r["ci_low"] for r in rows])
    high = np.array([r["ci_high"] for r in rows]) - values
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(rows)), 4.5))
    x = np.arange(len(rows))
    ax.errorbar(x, values, yerr=[low, high], fmt="-o", color="tab:blue", ms=4, lw=1, capsize=2,
                label="kernel ablated")
    marked = [i for i, n in enumerate(names) if n in decomposition]
    ax.scatter(x[marked], values[marked], s=80, facecolors="none", edgecolors="tab:red", lw=1.5, zorder=3,
               label="decomposition layer")
    ax.axhline(rows[0]["baseline"], color="black", ls="--", lw=1, label=f"baseline {rows[0]['baseline']:.3f}")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel(rows[0]["metric"])
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bars(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """One bar per mask (a stage), with 95 % intervals and the baseline as a line."""
    plt = _pyplot()
    values = np.array([r["value"] for r in rows])
    err = [values - np.array([r["ci_low"] for r in rows]), np.array([r["ci_high"] for r in rows]) - values]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    ax.bar(range(len(rows)), values, yerr=err, color="tab:blue", capsize=4)
    ax.axhline(rows[0]["baseline"], color="black", ls="--", lw=1, label=f"baseline {rows[0]['baseline']:.3f}")
    ax.set_xticks(range(len(rows)), [r["mask"] for r in rows], fontsize=8)
    ax.set_ylabel(rows[0]["metric"])
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(rows: Sequence[dict]) -> str:
    from resnet_jax.protocols import breakdown_columns

    extra = breakdown_columns(rows)
    head = ("| mask | kind | value | 95 % CI | delta vs baseline | n |" + "".join(f" {c} |" for c in extra)
            + "\n|---|---|---:|---:|---:|---:|" + "---:|" * len(extra))
    lines = [head]
    for r in rows:
        lines.append(f"| `{r['mask']}` | {r['kind']} | {r['value']:.4f} | [{r['ci_low']:.4f}, {r['ci_high']:.4f}] "
                     f"| {r['delta']:+.4f} | {r['n_examples']} |" + "".join(f" {r[c]:.4f} |" for c in extra))
    return "\n".join(lines)


def environment() -> dict:
    """Versions and devices, for the record."""
    import flax
    import jax
    import optax

    return {
        "python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }


def _training_summary(last: dict) -> str:
    """One line on the last epoch: test accuracy (classification) or validation Dice (segmentation)."""
    head = f"{last['epoch']} epochs, {last['step']} steps, {last['elapsed_s'] / 60:.1f} min; "
    speed = f"last epoch {last['images_per_second'] or float('nan'):.0f} training images/s."
    if "test_accuracy" in last:
        return head + f"final test accuracy {last['test_accuracy']:.4f} (loss {last['test_loss']:.4f}); " + speed
    per_class = ", ".join(f"{k[len('val_dice_'):].upper()} {v:.4f}" for k, v in last.items()
                          if k.startswith("val_dice_") and k != "val_dice_per_image")
    return head + (f"final validation Dice {last['val_dice']:.4f} pooled ({per_class}), "
                   f"{last['val_dice_per_image']:.4f} mean per image; ") + speed


def write_report(workdir: str | Path) -> Path:
    """``<workdir>/report.md``: training summary, every ablation table and figure, config, versions."""
    workdir = Path(workdir)
    adir = workdir / "ablation"
    tables = sorted(adir.glob("*.json")) if adir.is_dir() else []
    if not tables:
        raise FileNotFoundError(f"no ablation tables in {adir}; run `resnet-jax ablate --workdir {workdir}` first")
    parts = [f"# Ablation report: `{workdir.name}`", ""]
    metrics_path = workdir / "metrics.jsonl"
    if metrics_path.is_file():
        lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        if lines:
            parts += ["## Training", "", _training_summary(lines[-1]), ""]
    timings = []
    for path in tables:
        data = json.loads(path.read_text())
        title = data.get("title", path.stem)
        parts += [f"## {title}", "", data.get("description", "")]
        parts += ["", markdown_table(data["rows"]), ""] if "rows" in data else [""]  # no rows: a figure only
        if data.get("figure"):
            parts += [f"![{title}]({Path(data['figure']).relative_to(workdir)})", ""]
        if "seconds" in data:
            timings.append(f"| {path.stem} | {len(data['rows'])} | {data['seconds']:.1f} |")
    if timings:
        parts += ["## Timings", "", "| table | masks | wall s (this run's evaluations) |", "|---|---:|---:|", *timings, ""]
    config_path = workdir / "config.json"
    if config_path.is_file():
        parts += ["## Config", "", "```json", config_path.read_text().strip(), "```", ""]
    parts += ["## Environment", "", "```json", json.dumps(environment(), indent=2), "```", ""]
    out = workdir / "report.md"
    out.write_text("\n".join(parts))
    return out
