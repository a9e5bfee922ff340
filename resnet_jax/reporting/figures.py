"""Every figure of the project: ablation plots, the segmentation qualitative figure, Study B's plots.

Functions take plain rows and arrays and write a PNG; none of them computes a result. Matplotlib is
set up in one place (:func:`pyplot`, headless).

Usage: ``figures.plot_bars(rows, Path("bars.png"), title="stage ablations")`` writes and returns the PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_single(rows: Sequence[dict], decomposition: set[str], path: Path, *, title: str) -> Path:
    """Metric per layer in network order, the baseline as a line, decomposition layers marked."""
    fig = single_figure(rows, decomposition, title=title)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def single_figure(rows: Sequence[dict], decomposition: set[str], *, title: str):
    """The figure of :func:`plot_single`, unsaved; its legend sits beside the axes, so it covers no point."""
    plt = pyplot()
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
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def plot_bars(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """One bar per mask (a stage), with 95 % intervals and the baseline as a line."""
    plt = pyplot()
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




def plot_qualitative(path, images, masks, predictions, scores, titles, class_names, ids) -> None:
    """Image, ground truth and each column's prediction per row, coloured by class, slice Dice in titles."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.55), (0.2, 0.8, 0.2, 0.55), (0.2, 0.4, 1.0, 0.55)]
                             [:len(class_names)])
    n, cols = len(images), 2 + len(predictions)
    fig, axes = plt.subplots(n, cols, figsize=(3.0 * cols, 3.0 * n + 1.0), squeeze=False)
    for r in range(n):
        panels = [("image", None), ("ground truth", masks[r])] + [
            (f"{t}\nslice Dice {s[r]:.3f}" if r == 0 else f"slice Dice {s[r]:.3f}", p[r])
            for t, p, s in zip(titles, predictions, scores)]
        for c, (title, overlay) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(images[r, ..., 0], cmap="gray", vmin=0, vmax=1)
            if overlay is not None:
                ax.imshow(overlay, cmap=colours, vmin=0, vmax=len(class_names) - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if r == 0 or c >= 2 else "", fontsize=9)  # legible at the report's width
        axes[r, 0].set_ylabel(ids[r], fontsize=9)
    legend = ", ".join(f"{n}: {c}" for n, c in zip(class_names[1:], ("red", "green", "blue")))
    fig.suptitle(f"classes {legend}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Study B -------------------------------------------------------------------------------------------

def plot_selection(images: np.ndarray, chosen: np.ndarray, *, labels: dict[int, int], path: Path,
                   convs: Sequence[str] = ("conv1", "conv2", "conv3")) -> Path:
    """One mosaic per conv layer: a row per feature map, its strongest images left to right.

    A red frame marks an image whose label is a deeper layer (it was chosen there too).
    """
    plt = pyplot()
    layers, maps, per_map = chosen.shape
    h, w = images.shape[1:3]
    fig, axes = plt.subplots(1, layers, figsize=(4 * layers, 4 * maps / max(per_map, 1) + 0.6))
    for l, ax in enumerate(np.atleast_1d(axes)):
        mosaic = np.ones((maps * (h + 1), per_map * (w + 1), 3), np.float32)
        for m in range(maps):
            for j, i in enumerate(chosen[l, m]):
                tile = np.broadcast_to(images[i].astype(np.float32) / 255.0, (h, w, 3)).copy()
                if labels[int(i)] > l:
                    tile[[0, -1], :], tile[:, [0, -1]] = (1, 0, 0), (1, 0, 0)
                mosaic[m * (h + 1):m * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = tile
        ax.imshow(mosaic)
        ax.set_title(f"{convs[l]}: label {l}", fontsize=10)
        ax.set_xlabel("strongest images (left = strongest)", fontsize=8)
        ax.set_ylabel("feature map", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([(h + 1) * m + h / 2 for m in range(maps)], range(maps), fontsize=7)
    fig.suptitle("Study B selection (red frame: labelled with a deeper layer)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_skip_curves(points: Sequence[dict], names: Mapping[str, str], path: Path) -> Path:
    """Test accuracy against MAC ratio and against measured wall-time ratio (both vs CNN-1), one curve per method."""
    fig = skip_curves_figure(points, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def skip_curves_figure(points: Sequence[dict], names: Mapping[str, str]):
    """The figure of :func:`plot_skip_curves`, unsaved."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for method, label in names.items():
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["mac_ratio_vs_cnn1"])
        if not mine:
            continue
        for ax, key in zip(axes, ("mac_ratio_vs_cnn1", "wall_ratio_vs_cnn1")):
            mine_x = sorted(mine, key=lambda p: p.get(key, np.nan))
            xs = [p.get(key, np.nan) for p in mine_x]
            ys = [p["accuracy"] for p in mine_x]
            errors = [[max(0.0, p["accuracy"] - p["ci_low"]) for p in mine_x],
                      [max(0.0, p["ci_high"] - p["accuracy"]) for p in mine_x]]
            ax.errorbar(xs, ys, yerr=errors, fmt="-o" if len(mine) > 1 else "s", capsize=2, markersize=4,
                        label=label if ax is axes[0] else None)
    axes[0].set_xlabel("MACs per image / CNN-1's (router included where it runs)")
    axes[1].set_xlabel("measured wall time on the test set / CNN-1's (bucketed per-depth batches)")
    axes[0].set_ylabel("test accuracy (95 % Wilson interval)")
    fig.legend(fontsize=7, loc="lower center", ncol=3)
    fig.suptitle("Study B: per-image depth, accuracy against compute")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_interactions(rows: Sequence[dict], names: Sequence[str], path: Path, *, title: str) -> Path:
    """Heat map of pairwise interactions (rows with ``layers`` 'A B' and ``interaction``), convs in network order;
    red: the pair costs more than its parts, blue: less."""
    fig = interactions_figure(rows, names, title=title)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def interactions_figure(rows: Sequence[dict], names: Sequence[str], *, title: str):
    """The figure of :func:`plot_interactions`, unsaved."""
    plt = pyplot()
    index = {n: i for i, n in enumerate(names)}
    grid = np.full((len(names), len(names)), np.nan)
    for r in rows:
        a, b = (index[n] for n in r["layers"].split())
        grid[a, b] = grid[b, a] = r["interaction"]
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(0.22 * len(names) + 3, 0.22 * len(names) + 2))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    fig.colorbar(image, ax=ax, shrink=0.8, label=f"interaction ({rows[0]['metric'] if rows else 'metric'} drop)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_seed_spread(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """Per mask in network order: every seed's value (dots), their mean (line) and range (bar), and each seed's
    baseline mean as a dashed line."""
    fig = seed_spread_figure(rows, title=title)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def seed_spread_figure(rows: Sequence[dict], *, title: str):
    """The figure of :func:`plot_seed_spread`, unsaved."""
    plt = pyplot()
    x = np.arange(len(rows))
    values = np.array([r["values"] for r in rows])  # (masks, seeds)
    mean = values.mean(1)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(rows)), 4.5))
    ax.vlines(x, values.min(1), values.max(1), color="tab:blue", alpha=0.5, lw=3, label="range over seeds")
    for s in range(values.shape[1]):
        ax.plot(x, values[:, s], "o", ms=3, color=f"C{s + 1}", label=f"seed {s}")
    ax.plot(x, mean, "-", color="tab:blue", lw=1, label="mean")
    ax.axhline(rows[0]["baseline_mean"], color="black", ls="--", lw=1,
               label=f"baseline (mean) {rows[0]['baseline_mean']:.3f}")
    ax.set_xticks(x, [r["mask"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel(rows[0]["metric"])
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def plot_elimination_path(summary: dict, path: Path) -> Path:
    """The greedy path: the searched split's metric against units removed, the parameters kept on a second axis,
    the stopping rule as a line and the test scores of the end point, the one-shot set and random sets."""
    fig = elimination_path_figure(summary)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def elimination_path_figure(summary: dict):
    """The figure of :func:`plot_elimination_path`, unsaved; its legend sits beside the axes."""
    plt = pyplot()
    rows, split = summary["path"], summary["split_chose_units"]
    base = summary["baseline"][split]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot([0] + [r["units_removed"] for r in rows], [base] + [r["value"] for r in rows], "o-",
            label=f"greedy path ({split})")
    # End points that share an x are set apart sideways, so equal values do not hide each other.
    side = {"slim": -0.15, "tuned": -0.05, "random": 0.05, "shot": 0.15}
    ax.axhline(base - summary["max_drop"], color="grey", ls="--", lw=1, label=f"{split} baseline - max drop")
    n = len(summary["units"])
    ax.plot([n + side["slim"]], [summary["slim"]["test"]], "s", color="C2", label="slim model (test)")
    if summary["finetuned"]:
        kept = "slim, fine-tuned (test)" if summary["finetuned"]["step"] else "slim, step 0 kept after fine-tuning (test)"
        ax.plot([n + side["tuned"]], [summary["finetuned"]["test"]], "*", ms=12, color="C3", label=kept)
    if summary["random"]:
        ax.plot([n + side["random"]] * len(summary["random"]), [r["test"] for r in summary["random"]], "x", color="C4",
                label="random sets of the same size (test)")
    shot = summary["one_shot"]
    ax.plot([len(shot["choices"]) + side["shot"]], [shot["test"]], "D", color="C5",
            label="one-shot: every harmless unit (test)")
    ax.set_xlabel("units removed")
    ax.set_ylabel(summary["metric"])
    twin = ax.twinx()
    twin.plot([0] + [r["units_removed"] for r in rows], [summary["full"]["params"] / 1e6] +
              [r["params"] / 1e6 for r in rows], ":", color="black", lw=1)
    twin.set_ylabel("parameters (M), dotted")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.09, 1.0))  # beside the axes: it covers no point
    ax.set_title(f"elimination ({summary['granularity']}, {summary['form']}), chosen on {split}")
    fig.tight_layout()
    return fig


def plot_pareto(rows: Sequence[dict], path: Path, *, metric: str) -> Path:
    """Accuracy (or Dice) against measured eval images/s and against parameters, one point per model; rows with
    ``spread`` (random draws) get error bars."""
    fig = pareto_figure(rows, metric=metric)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


PARETO_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h")
"""One marker per model of :func:`pareto_figure`, in row order."""


def pareto_figure(rows: Sequence[dict], *, metric: str):
    """The figure of :func:`plot_pareto`, unsaved. Models can share a point (the slim model and its fine-tuned
    self have the same parameters and measured speed): each gets its own outlined marker, each smaller than the
    ones before it and drawn above them, so a point under another still shows around it. Rows never timed (no
    ``eval_images_per_s``) get the parameters panel only."""
    plt = pyplot()
    timed = all("eval_images_per_s" in r for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5)) if timed else plt.subplots(1, 1, figsize=(6.5, 4.5))
    axes = list(axes) if timed else [None, axes]
    for i, r in enumerate(rows):
        yerr = [[r["value"] - r["low"]], [r["high"] - r["value"]]] if "low" in r else None
        style = {"marker": PARETO_MARKERS[i % len(PARETO_MARKERS)], "ms": 14 - 8 * i / max(len(rows) - 1, 1),
                 "mfc": "none", "mew": 1.5, "ls": "none", "capsize": 3, "zorder": 2 + i, "color": f"C{i % 10}"}
        for ax, x in zip(axes, (r.get("eval_images_per_s"), r["params"] / 1e6)):
            if ax is not None:
                ax.errorbar([x], [r["value"]], yerr=yerr, label=r["name"], **style)
    if timed:
        axes[0].set_xlabel("measured eval images/s")
    axes[1].set_xlabel("parameters (M)")
    for ax in filter(None, axes):
        ax.set_ylabel(metric)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
