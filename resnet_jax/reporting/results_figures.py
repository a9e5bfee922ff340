"""The documentation's figures, drawn from the committed results under ``docs/results/`` and nothing else.

Each figure is a pure function of a results folder, written as SVG with fixed metadata (no date, a fixed hash
salt for element ids, glyphs as paths), so the same files give the same bytes: ``scripts/render_results.py``
writes them to ``docs/figures/`` and ``--check`` draws them again and compares, as it does for the tables.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from resnet_jax.reporting import figures, published, readme_results

FIGURE_DIR = Path("docs") / "figures"
STAGE_ROWS = (("baseline", None), *(("stage-except-decomposition", s) for s in (1, 2, 3, 4)),
              *(("shortcut", s) for s in (2, 3, 4)))
"""The rows the study publishes, in its order."""


def _row_label(protocol: str, stage: int | None) -> str:
    return "baseline" if stage is None else f"{'all but decomp.' if protocol != 'shortcut' else 'shortcut'} {stage}"


def headline(root: Path):
    """The study's published values against ours, stage by stage, for both BatchNorm readings: ResNet34 on
    CIFAR-10 (the paper-length CPU run) and PSPNet-ResNet34 myocardium Dice (ACDC, two seeds); a bar spans the
    seeds' range."""
    plt = figures.pyplot()
    panels = [("classification", root / "cifar10-paper-cpu", "ResNet34, CIFAR-10: test accuracy"),
              ("segmentation", root / "cpu-acdc", "PSPNet-ResNet34: myocardium Dice (study: private T1 maps; ours: ACDC)")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    x = np.arange(len(STAGE_ROWS))
    for ax, (task, folder, title) in zip(axes, panels):
        group = readme_results.runs(folder, task)
        paper = published.PUBLISHED[task]
        ax.plot(x, [paper["baseline"] if s is None else paper[p][s] for p, s in STAGE_ROWS], "k_", ms=18, mew=2.5,
                label="published")
        for i, (label, reading) in enumerate(readme_results.READINGS):
            values = published.stage_values(task, readme_results.reading_tables(group, reading))
            rows = [values.get(key, []) for key in STAGE_ROWS]
            shift = -0.15 + 0.3 * i
            have = [j for j, v in enumerate(rows) if v]
            if not have:
                continue
            seeds = readme_results.seeds_label(readme_results.reading_seeds(group, reading))
            ax.vlines(x[have] + shift, [min(rows[j]) for j in have], [max(rows[j]) for j in have], color=f"C{i}",
                      lw=3, alpha=0.5)
            ax.plot(x[have] + shift, [np.mean(rows[j]) for j in have], "o", color=f"C{i}", label=f"{label} ({seeds})")
        ax.set_xticks(x, [_row_label(p, s) for p, s in STAGE_ROWS], rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.02, 1.0)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    axes[0].set_ylabel("test metric with the rows' convs zeroed")
    fig.tight_layout()
    return fig


def seed_spread(root: Path):
    """Every single-conv mask of the CPU preset's ResNet34, each seed's test accuracy and their range."""
    group = readme_results.runs(root / "cpu", "classification")
    tables = [readme_results.run_table(run, "single") for run in group]
    baselines = [readme_results.run_table(run, "baseline")[0]["value"] for run in group]
    rows = [{"mask": r["mask"], "values": [t[i]["value"] for t in tables], "metric": r["metric"],
             "baseline_mean": float(np.mean(baselines))} for i, r in enumerate(tables[0])]
    return figures.seed_spread_figure(rows, title=f"ResNet34, CIFAR-10, CPU preset: each conv zeroed alone "
                                                  f"({readme_results.seeds_label([readme_results.seed_of(g) for g in group])})")


def pairs(root: Path):
    """The interaction of every pair of convs of the elimination run's ResNet34 (seed 0)."""
    run = readme_results.runs(root / "cpu-elimination", "classification")[0]
    names = [r["mask"] for r in readme_results.run_table(run, "single")]
    return figures.interactions_figure(readme_results.run_table(run, "pairs"), names,
                                       title="ResNet34, CIFAR-10: interaction of each pair of zeroed convs")


SLIM_ELIMINATION = Path("cpu-elimination") / "cifar10-resnet34-slim" / "elimination"
"""The CPU preset's elimination of ResNet34 (seed 0), under the results folder."""


def elimination(root: Path):
    """The greedy elimination path of the CPU preset's ResNet34, with the slim model, one-shot and random sets."""
    summary = readme_results.read_json(root / SLIM_ELIMINATION / "summary.json")
    return figures.elimination_path_figure(summary)


def slim_controls(root: Path):
    """The slim ResNet34 against its controls (the full network, random sets, the k smallest drops, ResNet18 and
    the slim architecture from scratch): test accuracy against measured eval speed and against parameters."""
    comparison = readme_results.read_json(root / SLIM_ELIMINATION / "comparison.json")
    return figures.pareto_figure(comparison["rows"], metric=comparison["metric"])


def skip(root: Path):
    """Study B: accuracy against MACs and against measured wall time, per method (MNIST, CPU preset, seed 0)."""
    points = readme_results.read_json(root / "cpu" / "mnist-skip" / "skip_results.json")["curves"]["test"]
    return figures.skip_curves_figure(points, {p["method"]: p["label"] for p in points})


FIGURES: dict[str, Callable[[Path], object]] = {"headline": headline, "seed-spread": seed_spread, "pairs": pairs,
                                                "elimination": elimination, "slim-controls": slim_controls,
                                                "study-b": skip}
"""Every figure of the documentation, by file stem under ``docs/figures/``."""


def svg_bytes(fig) -> bytes:
    """The figure as SVG bytes that depend only on what it draws."""
    import matplotlib

    out = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "resnet-jax", "svg.fonttype": "path"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    figures.pyplot().close(fig)
    return out.getvalue()


def drawn(root: Path, names: Sequence[str] | None = None) -> dict[str, bytes]:
    """Each figure's SVG bytes, drawn from the results under ``root``."""
    return {name: svg_bytes(FIGURES[name](root)) for name in (names or FIGURES)}


def differing(root: Path, folder: Path) -> list[str]:
    """The figures under ``folder`` that are missing or differ from what ``root``'s results draw."""
    return [name for name, data in drawn(root).items()
            if not (folder / f"{name}.svg").is_file() or (folder / f"{name}.svg").read_bytes() != data]


def write(root: Path, folder: Path) -> list[Path]:
    """Draw every figure into ``folder``; a file whose bytes would not change is left alone."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in drawn(root).items():
        path = folder / f"{name}.svg"
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written
