"""Study B's Markdown report (``skip_report.md``) from its results (``skip_results.json``).

Usage: ``skip_report.write_report(json.loads(Path("runs/skip/skip_results.json").read_text()), "runs/skip")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from resnet_jax.ablation import speed
from resnet_jax.models import skip_cnn as nets
from resnet_jax.reporting import skip_verdict


def _acc(a: Mapping) -> str:
    return f"{a['accuracy']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}] (n={a['n']})"


def _row(p: Mapping) -> str:
    return (f"| {p['label']} | {p['setting'] or '-'} | {p['accuracy']:.4f} [{p['ci_low']:.4f}, "
            f"{p['ci_high']:.4f}] | {p['mean_conv_layers']:.3f} | {p['mac_ratio_vs_cnn1']:.3f} | "
            f"{skip_verdict.wall_ratio_text(p)} |")


TABLE_HEAD = ["| method | operating point | test accuracy [95 % CI] | mean conv layers | MAC ratio "
              "| wall ratio [interval] |",
              "|---|---|---|---:|---:|---:|"]


def _summary_lines(res: Mapping, workdir: Path) -> list[str]:
    """Warning, data, verdict and every method at its chosen operating point."""
    curves, cfg, sizes = res["curves"], res["config"], res["split_sizes"]
    return [
        f"# Study B: per-image layer skipping (`{workdir.name}`)", "",
        *([f"**Warning:** {res['warning']}", ""] if res.get("warning") else []),
        f"Data `{cfg['data']['name']}`: {sizes['fit']} fit / {sizes['validation']} validation (held out of the "
        f"training split, seeded) / {sizes['test']} test images. CNN-1/CNN-3: convs of widths "
        f"{cfg['model']['widths']} (a skipped layer's input zero-padded or sliced to the next width), "
        f"{cfg['train']['epochs']} epochs, batch {cfg['train']['batch_size']}; CNN-2 convs "
        f"{cfg['model']['router_channels']} (stride 2). Accuracies with 95 % Wilson intervals.", "",
        "## Verdict", "", *[f"- {line}" for line in res["verdict"]], "",
        "## Every method at its operating point (chosen on validation, scored on test)", "",
        f"Operating point: the cheapest (MACs) whose validation accuracy is within {curves['tolerance']} of "
        "CNN-1's, else the most accurate. Oracles need the label: bounds, not methods.", "",
        *TABLE_HEAD, *[_row(b) for b in skip_verdict.table_points(curves)], "",
        f"![tradeoff]({res['figures']['tradeoff']})", ""]


def _selection_lines(res: Mapping, workdir: Path) -> list[str]:
    """CNN-1 and the study's selection with its router and the literal CNN-3."""
    sel, rt, lit, cfg = res["selection"], res["router"], res["literal"], res["config"]
    return [
        "## CNN-1", "", f"Test accuracy {_acc(res['cnn1']['test'])}.", "",
        "## The study's selection (literal reading)", "",
        f"First {sel['n_maps']} maps per conv ({sel['site']} activations), "
        f"{cfg['selection']['images_per_map']} strongest fit images per map; "
        f"{sel['n_labelled']} distinct images labelled (deeper label wins).", "",
        "| layer | picks | distinct | labelled with this layer |", "|---|---:|---:|---:|",
        *[f"| {r['layer']} | {r['picks']} | {r['unique']} | {r['labelled_here']} |" for r in sel["per_layer"]], "",
        f"![selection]({sel['figure']})", "",
        f"Router on these labels, held-out accuracy {_acc(rt)}; majority-label rate {rt['majority_rate']:.4f} "
        f"(stratified {cfg['router']['holdout']:.0%} hold-out; train label counts {rt['train_label_counts']}, "
        f"held-out {rt['held_out_label_counts']}). Confusion (rows true, columns predicted): "
        f"`{rt['confusion_true_by_predicted']}`.", "",
        "CNN-3 predicting the layer labels of the held-out images (the study's task):", "",
        "| depth of each image | accuracy |", "|---|---|",
        f"| its true label (the study's; the depth reveals the label) | {_acc(lit['depth_true_label'])} |",
        f"| the router's prediction | {_acc(lit['depth_router'])} |",
        f"| full depth | {_acc(lit['depth_full'])} |", "",
        f"Majority-label baseline: {lit['majority_baseline']:.4f}.", ""]


def _dense_lines(res: Mapping, workdir: Path) -> list[str]:
    """The dense labelling and its router."""
    dense, drt, cfg = res["dense"], res["dense_router"], res["config"]
    return [
        "## Dense labelling", "",
        "Every image's standing at a map is its percentile rank among the fit images' scores (mean absolute "
        f"activation) for that map; its strength at a layer is its best standing over the layer's first "
        f"{dense['n_maps']} maps; its label is the strongest layer, ties to the deeper. Label counts: fit "
        f"{dense['fit_counts']}, validation {dense['validation_counts']}.", "",
        f"Router on the fit images' labels ({cfg['dense']['epochs']} epochs), accuracy on the validation images' "
        f"labels {_acc(drt)}; majority-label rate {drt['majority_rate']:.4f}. Confusion: "
        f"`{drt['confusion_true_by_predicted']}`.", "",
        f"Training depths of the two useful CNN-3s (counts for depth 0/1/2): study's selection "
        f"{res['fit_depth_counts_selection']}, dense labelling {res['fit_depth_counts_dense']}.", ""]


def _points_lines(res: Mapping, workdir: Path) -> list[str]:
    """Every operating point on test, MACs and wall time."""
    macs, curves, tm = res["macs"], res["curves"], res["timing"]
    return [
        "## Every operating point (test)", "",
        *TABLE_HEAD, *[_row(q) for q in curves["test"]], "",
        f"MACs per image: CNN-3 at depth 0/1/2 = {', '.join(format(macs['cnn'][str(d)], ',') for d in nets.DEPTHS)}; "
        f"early exit at exit 1/2/3 = {', '.join(format(macs['early_exit'][str(d)], ',') for d in nets.DEPTHS)}; "
        f"router {macs['router']:,}.", "",
        f"Wall time: each point's inference as it would run (routers and exit tests inside the timed call; "
        f"per-depth buckets {tm['bucket_sizes']}, batch {tm['batch_size']}) on the {tm['n_examples']} test images, "
        f"{_rounds(tm)}, on {tm['devices']} "
        f"({tm['cpu_count']} CPUs; load average before/after {[round(x, 2) for x in tm['loadavg_before']]} / "
        f"{[round(x, 2) for x in tm['loadavg_after']]}: on a shared machine wall ratios are noisy). The timed "
        f"paths' predictions agree with the points' on at least "
        f"{min(v['prediction_agreement'] for v in tm['paths'].values()):.2%} of the images.", ""]


def _rounds(tm: Mapping) -> str:
    """How the wall ratios were measured, as the timing recorded it."""
    if "method" not in tm:  # an earlier version: medians of a few runs, no interval
        return (f"median of {tm['repeats']} runs interleaved over all points after a warm-up (no interval: wall "
                f"time not compared)")
    return (f"{tm['repeats']} rounds after a warm-up, each timing every point once in a shuffled order; a point's "
            f"wall ratio is the median over rounds of its time over CNN-1's in the same round, in brackets the "
            f"distribution-free interval of that median (order statistics; faster or slower only where it excludes 1, "
            f"and {speed.MIN_REPEATS} rounds at least give one)")


def _setup_lines(res: Mapping, workdir: Path) -> list[str]:
    """The config and the environment."""
    cfg = res["config"]
    return [
        "## Config", "", "```json", json.dumps(cfg, indent=2), "```", "",
        "## Environment", "", "```json", json.dumps(res["environment"], indent=2), "```", ""]


def write_report(res: Mapping, workdir: str | Path) -> Path:
    """``<workdir>/skip_report.md`` from the results of :func:`resnet_jax.studies.skip.run_study`."""
    workdir = Path(workdir)
    lines = [line for part in (_summary_lines, _selection_lines, _dense_lines, _points_lines, _setup_lines)
             for line in part(res, workdir)]
    out = workdir / "skip_report.md"
    out.write_text("\n".join(lines))
    return out
