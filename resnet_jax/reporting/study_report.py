"""The main job's report: ``report/report.md`` and a self-contained ``report/index.html``.

Both are rendered from one list of blocks, so they never disagree. Findings are derived from the
tables with stated thresholds, not written by hand.

Usage: ``study_report.write_study_report("runs/reproduce")`` (the ``report`` stage of ``resnet-jax reproduce``).
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_jax.ablation import speed
from resnet_jax.ablation.statistics import DECISIONS, P_TEST, bonferroni_p
from resnet_jax.ablation.tables import breakdown_columns
from resnet_jax.reporting import markdown, published, results, skip_verdict

PROTOCOL_TEXT = {
    "A": ("Study A (Wang et al., arXiv 2009.09938): after training, conv kernels are replaced by zeros (their "
          "BatchNorm kept) and the masked model is evaluated on the test set without retraining. `single` "
          "ablates one kernel at a time; `stage-except-decomposition` ablates, per stage, every conv except the "
          "decomposition and adjacent ones (residual units 1..n-1); `shortcut` ablates each projection shortcut. "
          "Classification is scored by accuracy (Wilson 95 % intervals), segmentation by Dice."),
    "B": ("Study B (Gadepally et al., 2023): for each of CNN-1's three conv layers, the 10 training images with "
          "the strongest mean absolute activation of each of its first 10 maps are labelled with that layer "
          "(deeper wins); a router (CNN-2) learns those labels, and CNN-3 runs each image only to the depth the "
          "router chooses. Reported: the study's literal reading (predicting the layer labels), the useful one "
          "(classifying with routed depth) for the study's labels and for a dense labelling of every image, "
          "against early exit, random depth with the same histogram, the oracle depth and the full network, "
          "by accuracy, MACs and measured wall time."),
}


# Blocks and renderers ------------------------------------------------------------------------

def _md(blocks: Sequence[tuple], base: Path) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + args[0], ""]
        elif kind == "p":
            out += [args[0], ""]
        elif kind == "list":
            out += [f"- {item}" for item in args[0]] + [""]
        elif kind == "table":
            header, rows = args
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
        elif kind == "img":
            out += [f"![{args[1]}]({Path(args[0]).relative_to(base)})", ""]
        elif kind == "pre":
            out += ["```", args[0], "```", ""]
    return "\n".join(out)


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\[([^\]]+)\]\((https?://[^\s)]+|[^:\s)]+)\)")
"""The inline Markdown the blocks use: `code`, **bold** and [links](...) to the web or to relative paths."""


def _inline(text: str) -> str:
    """One block's text as HTML: its inline Markdown rendered, everything else escaped."""
    out, last = [], 0
    for found in _INLINE.finditer(text):
        code, bold, label, href = found.groups()
        out.append(html.escape(text[last:found.start()]))
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{_inline(bold)}</strong>")
        else:
            out.append(f'<a href="{html.escape(href)}">{_inline(label)}</a>')
        last = found.end()
    return "".join(out) + html.escape(text[last:])


_STYLE = ("body{font-family:sans-serif;font-size:16px;max-width:1100px;margin:2em auto;padding:0 1em;"
          "line-height:1.45;overflow-wrap:anywhere}.scroll{overflow-x:auto;margin:1em 0}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;"
          "overflow-wrap:normal}img{max-width:100%;height:auto}pre{background:#f6f6f6;padding:1em;overflow:auto}")
"""Wide tables scroll inside their own box and long words break, so a phone's page is no wider than its screen."""


def _html(blocks: Sequence[tuple], title: str) -> str:
    body = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(args[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(args[0])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(str(i))}</li>" for i in args[0]) + "</ul>")
        elif kind == "table":
            header, rows = args
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table></div>')
        elif kind == "img":
            data = base64.b64encode(Path(args[0]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(args[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline(args[1])}</figcaption></figure>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(args[0])}</pre>")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")


# Reading results -----------------------------------------------------------------------------

def _short(cell: str) -> str:
    """A float cell with 3 significant digits (``0.000274658203125`` -> ``0.000275``); others as they are."""
    try:
        value = float(cell)
    except ValueError:
        return cell
    return cell if cell.lstrip("-").isdigit() else f"{value:.3g}"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _portable(value: Any, workdir: Path) -> Any:
    """A record with this machine's absolute paths left out: a path inside the workdir relative to it, any other
    by its last folder's name (the dataset's, for a data directory)."""
    if isinstance(value, dict):
        return {k: _portable(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, workdir) for v in value]
    if not (isinstance(value, str) and os.path.isabs(value)):
        return value
    path = Path(value)
    inside = next((base for base in (workdir.absolute(), workdir.resolve()) if path.is_relative_to(base)), None)
    return str(path.relative_to(inside)) if inside else path.name


def _table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of an ablation table: value, interval, the drop with the simultaneous bounds its decision
    reads off, the Holm p-value of any change and the decision, then a metric's per-class columns (Dice)."""
    extra = [c for c in breakdown_columns(rows) if c not in ("drop_a", "drop_b", "interaction")]

    def tested(r):
        if "decision" not in r:
            return ["", "", ""]
        return [f"{r['drop']:+.4f} [{r['drop_low']:+.4f}, {r['drop_high']:+.4f}]", f"{r['p_value_holm']:.2g}",
                r["decision"]]

    header = ["mask", rows[0]["metric"], "95 % CI", "delta", "n", "drop [simultaneous bounds]",
              "p any change (Holm)", "decision", *extra]
    return header, [[r["mask"], f"{r['value']:.4f}", f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
                     f"{r['delta']:+.4f}", r["n_examples"], *tested(r), *(f"{r[c]:.4f}" for c in extra)] for r in rows]


def classify_layers(rows: Sequence[dict]) -> dict[str, list[str]]:
    """The masks of a table by their decision (simultaneous bounds at the table's margin)."""
    return {d: [r["mask"] for r in rows if r.get("decision") == d] for d in DECISIONS}


def stage_means(rows: Sequence[dict]) -> dict[str, float]:
    """Mean change of the metric per stage over the single-kernel masks (stem counted as stage 0)."""
    by_stage: dict[str, list[float]] = {}
    for r in rows:
        stage = next((p for p in r["mask"].split(".") if p.startswith("layer")), "stem")
        by_stage.setdefault(stage, []).append(r["delta"])
    return {s: sum(v) / len(v) for s, v in by_stage.items()}


def _ablation_section(run: Path, label: str) -> tuple[list[tuple], dict]:
    blocks: list[tuple] = [("h2", label)]
    facts: dict[str, Any] = {}
    metrics_path = run / "metrics.jsonl"
    if metrics_path.is_file():
        lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        if lines:
            last = lines[-1]
            shown = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            blocks.append(("p", "Training, last epoch: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())))
    adir = run / "ablation"
    for stem in ("baseline", "single", "stage-except-decomposition", "shortcut"):
        table = _json(adir / f"{stem}.json")
        if not table:
            continue
        rows = table["rows"]
        blocks += [("h3", table.get("title", stem)), ("p", table.get("description", "")),
                   ("table", *_table(rows))]
        line = markdown.statistics_line(table)
        if line:
            blocks.append(("p", line))
        if table.get("margin_sensitivity"):
            blocks += [("p", "Decisions at other margins, from the same bounds (no mask evaluated again):"),
                       ("table", *markdown.sensitivity_table(table["margin_sensitivity"]))]
        figure = adir / Path(table["figure"]).name if table.get("figure") else None  # beside its table
        if figure is not None and figure.is_file():
            blocks.append(("img", str(figure), f"{label}: {table.get('title', stem)}"))
        facts[stem] = rows
        if not facts.get("warning") and markdown.chance_warning(table):
            facts["warning"] = markdown.chance_warning(table)
            blocks.insert(1, ("p", f"WARNING: {facts['warning']}"))  # at the top of the section
    pairs = _json(adir / "pairs.json")
    if pairs:
        blocks += [("h3", "Pairwise interactions"), ("p", pairs.get("description", "")),
                   ("p", f"{len(pairs['rows'])} pair masks evaluated in {pairs.get('seconds', float('nan')):.0f} s of "
                         f"engine time (this run's evaluations; rows reused from an earlier run count 0).")]
        if (adir / "pairs.png").is_file():
            blocks.append(("img", str(adir / "pairs.png"), f"{label}: pairwise interactions"))
        for kind in ("synergistic", "redundant"):
            blocks += [("p", f"Most {kind} pairs:"), ("table", ["pair", "drop together", "drop A", "drop B",
                                                               "interaction", "decision"],
                       [[r["mask"], f"{r['drop']:+.4f}", f"{r['drop_a']:+.4f}", f"{r['drop_b']:+.4f}",
                         f"{r['interaction']:+.4f}", r.get("decision", "")] for r in pairs[kind]])]
    for extra in sorted(adir.glob("*qualitative*.png")) if adir.is_dir() else []:
        blocks.append(("img", str(extra), f"{label}: qualitative"))
    return blocks, facts


VERIFY_COLUMNS = {"protocol": "protocol", "mask": "mask", "kind": "kind", "jax_value": "JAX", "torch_value": "PyTorch",
                  "max_logit_deviation": "max |d logit|", "disagreements": "disagree", "ok": "ok"}
"""The columns of verify.csv the report shows (it fits a 1,280-px page), with their headings."""


def _cross_check(path: Path) -> list[tuple]:
    """A one-line verdict, then the compact table of verify.csv."""
    import csv

    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["ok"] != "True"]
    worst = max((float(r["max_logit_deviation"]) for r in rows), default=0.0)
    verdict = (f"Verdict: {'PyTorch agrees on every mask' if not failed else f'PyTorch DISAGREES on {len(failed)} masks'} "
               f"({len(rows)} masks on {rows[0]['n_examples'] if rows else 0} images; "
               f"{sum(int(r['disagreements']) for r in rows)} prediction disagreements; max logit deviation {worst:.2g}).")
    table = [[_short(r[c]) for c in VERIFY_COLUMNS] for r in rows]
    return [("p", verdict), ("table", list(VERIFY_COLUMNS.values()), table)]


def _findings(cls: dict, seg: dict, skip: dict | None) -> list[str]:
    out = [f"WARNING ({name}): {facts['warning']}" for name, facts in (("classification", cls), ("segmentation", seg))
           if facts.get("warning")]
    for name, facts in (("classification", cls), ("segmentation", seg)):
        if "single" in facts:
            c = classify_layers(facts["single"])
            margin = next((r["margin"] for r in facts["single"] if "margin" in r), None)
            out.append(f"{name} (seed 0), paired tests at margin {margin}: {len(c['non-trivial'])} of "
                       f"{len(facts['single'])} convs non-trivial ({', '.join(c['non-trivial']) or 'none'}); "
                       f"{len(c['trivial'])} trivial ({', '.join(c['trivial']) or 'none'}); "
                       f"{len(c['improves'])} improve ({', '.join(c['improves']) or 'none'}); "
                       f"{len(c['undecided'])} undecided.")
    if "single" in cls and "single" in seg:
        a, b = stage_means(cls["single"]), stage_means(seg["single"])
        parts = [f"{s.split('.')[-1]}: {a[s]:+.3f} vs {b[s]:+.3f}" for s in a if s in b]
        out.append("Mean change per stage, classification vs segmentation (single-kernel masks; different "
                   "metrics): " + "; ".join(parts) + ".")
    if skip:  # worded by today's code from the stored points (wall time compared only where an interval was kept)
        out += [f"Study B: {line}" for line in skip_verdict.verdict_lines(skip)]
    return out


def _seeds_section(folder: Path, label: str) -> list[tuple]:
    """The tables combined over seeds (``<workdir>/seeds/<run>/``), when there are several."""
    blocks: list[tuple] = []
    for stem in ("single", "stage-except-decomposition", "shortcut"):
        table = _json(folder / f"{stem}.json")
        if not table:
            continue
        rows = table["rows"]
        if not blocks:
            blocks += [("h3", f"{label}: {rows[0]['n_seeds']} seeds"),
                       ("p", "Per mask over the seeds: the metric's mean, standard deviation and range, the mean "
                             "drop, and how many seeds' paired tests call it trivial / non-trivial / improves / undecided "
                             "(each seed's own simultaneous bounds). Checkpoints: "
                             + "; ".join(table.get("checkpoints", [])) + ".")]
        blocks += [("p", f"{stem}:"), ("table", ["mask", "mean", "sd", "min", "max", "drop (mean)", "verdict"],
                   [[r["mask"], f"{r['value_mean']:.4f}", f"{r['value_std']:.4f}", f"{r['value_min']:.4f}",
                     f"{r['value_max']:.4f}", f"{r['drop_mean']:+.4f}", r["verdict"]] for r in rows])]
        if table.get("figure") and (folder / table["figure"]).is_file():
            blocks.append(("img", str(folder / table["figure"]), f"{label}: {stem} over seeds"))
    return blocks


def _readings_section(run: Path, label: str) -> list[tuple]:
    """How much each open reading of the study changes its tables (seed 0)."""
    adir = run / "ablation"
    blocks: list[tuple] = []

    def compare(title, stem_a, stem_b, head_a, head_b):
        a, b = _json(adir / f"{stem_a}.json"), _json(adir / f"{stem_b}.json")
        if not (a and b):
            return []
        other = {r["mask"]: r for r in b["rows"]}
        rows = [[r["mask"], f"{r['value']:.4f}", r.get("decision", ""), f"{other[r['mask']]['value']:.4f}",
                 other[r["mask"]].get("decision", ""), f"{other[r['mask']]['value'] - r['value']:+.4f}"]
                for r in a["rows"] if r["mask"] in other]
        changed = sum(1 for r in rows if r[2] != r[4])
        return [("p", f"{title}: {changed} of {len(rows)} decisions change."),
                ("table", ["mask", head_a, "decision", head_b, "decision", "difference"], rows)]

    blocks += compare("Stage 1's adjacent conv read as layer1.0.conv1 alone", "stage-except-decomposition",
                      "stage-except-decomposition-first-conv", "whole first unit kept", "only conv1 kept")
    for stem in ("baseline", "single", "stage-except-decomposition", "shortcut"):
        blocks += compare(f"BatchNorm on batch statistics, {stem}", stem, f"{stem}.bn-batch", "running statistics",
                          "batch statistics")
    cut = _json(adir / "identity-shortcut.cut-identity.json")
    if cut:
        blocks += [("p", "Identity shortcuts cut, one unit at a time (the unit outputs relu(branch(x))):"),
                   ("table", *_table(cut["rows"]))]
    return [("h3", f"{label}: the study's open readings"), *blocks] if blocks else []


def _elimination_section(slim: Path, label: str) -> list[tuple]:
    """Acting on the findings: the greedy path, the slim model beside the full one, ResNet18 and random sets."""
    summary = _json(slim / "elimination" / "summary.json")
    if not summary:
        return []
    split = summary["split_chose_units"]
    blocks: list[tuple] = [
        ("h3", f"{label}: a slim network from the trivial units"),
        *([("p", f"WARNING: {summary['warning']}")] if summary.get("warning") else []),
        ("p", f"Greedy backward elimination on the {'validation' if split == 'val' else 'TEST'} split: each "
              f"step scores every remaining identity-shortcut unit jointly with those already removed and removes "
              f"the best, while the {summary['metric']} drop stays within {summary['max_drop']}. Eliminated units "
              f"compute relu(x + b) exactly ({summary['form']} form); the test split is scored once, at the end. "
              f"Removed: {', '.join(summary['units']) or 'none'}."),
        ("table", ["step", "tried", "units removed", summary["metric"], "drop", "kept", "params", "conv MACs"],
         [[r["step"], r["added"], r["units_removed"], f"{r['value']:.4f}", f"{r['drop']:+.4f}",
           "yes" if r["accepted"] else "no (stop)", f"{r['params']:,}", f"{r['conv_macs']:,}"]
          for r in summary["path"]]),
    ]
    comparison = _json(slim / "elimination" / "comparison.json")
    if comparison:
        timed = any("speed_vs_full" in r for r in comparison["rows"])
        blocks.append(("table", ["model", comparison["metric"], "params", "conv MMACs", "eval img/s", "train img/s",
                                 "params / full", "eval speed / full", *(["speed vs full [interval]"] if timed else [])],
                       [[r["name"] + (f" (range over draws: {r['low']:.4f} to {r['high']:.4f})" if "low" in r else ""),
                         f"{r['value']:.4f}", f"{round(r['params']):,}", f"{r['conv_macs'] / 1e6:.1f}",
                         speed.images_per_s(r, "eval_images_per_s"), speed.images_per_s(r, "train_images_per_s"),
                         f"{r['ratios_vs_full']['params']:.3f}",
                         speed.images_per_s(r["ratios_vs_full"], "eval_images_per_s", ".3f"),
                         *([("reference" if i == 0 else speed.speeds_text(r))] if timed else [])]
                        for i, r in enumerate(comparison["rows"])]))
        said = ("faster or slower only where the interval of a speed ratio, round by round, excludes 1" if timed
                else "speeds not compared: " + (speed.why_not_compared({"repeats": comparison["repeats"]})
                                           if comparison["repeats"] < speed.MIN_REPEATS else speed.NO_INTERVAL))
        measured = (f"Speeds measured side by side on {comparison['device']} (batch {comparison['batch']}, median of "
                    f"{comparison['repeats']} rounds; {said})" if comparison["repeats"] else
                    "Speeds not timed (the run asked for 0 rounds of timing)")
        blocks.append(("p", f"{measured}. One-shot choice (every unit harmless alone, "
                            f"{len(summary['one_shot']['choices'])} units): test {summary['one_shot']['test']:.4f}."))
        paired = comparison.get("paired_vs_slim") or {}
        if paired:
            blocks += [("p", "The final slim model against each other model on the same test images (paired; "
                             "intervals simultaneous over the comparisons):"),
                       ("table", ["slim minus", "difference", "interval",
                                  f"Bonferroni-adjusted p over {next(iter(paired.values()))['comparisons']} "
                                  "comparisons", "unadjusted p", "slim is"],
                        [[name, f"{c['difference']:+.4f}", f"[{c['low']:+.4f}, {c['high']:+.4f}]",
                          f"{bonferroni_p(c):.2g}" if c.get("p_test") == P_TEST else "- (earlier version)",
                          f"{c['p_value']:.2g}", c["verdict"]]
                         for name, c in paired.items()])]
    for name in ("path.png", "pareto.png"):
        if (slim / "elimination" / name).is_file():
            blocks.append(("img", str(slim / "elimination" / name), f"{label}: {name[:-4]}"))
    return blocks


def _paper_section(workdir: Path, runs: dict[str, str]) -> list[tuple]:
    """The study's published tables beside ours (every seed present: mean and range)."""
    blocks: list[tuple] = [("h2", "The paper beside ours"),
                           ("p", "Published values (PROTOCOLS.md) and ours for the same rows: the metric after "
                                 "ablating each stage's convs except decomposition/adjacent ones, and after ablating "
                                 "each projection shortcut.")]
    for task, run in runs.items():
        base = workdir / run
        seed_runs = [base] + sorted(p for p in workdir.glob(f"{run}-seed*") if p.is_dir())
        tables = {}
        for stem in ("baseline", "stage-except-decomposition", "shortcut"):
            found = [t["rows"] for t in (_json(r / "ablation" / f"{stem}.json") for r in seed_runs) if t]
            tables[stem] = found
        if not any(tables.values()):
            continue
        blocks += [("h3", f"{task}: {published.PUBLISHED[task]['what']}"),
                   ("table", ["experiment", "stage", "paper", "ours"], published.beside_ours(task, tables))]
    return blocks


def _study_b_section(run: Path, skip: dict | None) -> list[tuple]:
    """Study B's operating points, its two routers and its figures (from ``skip_results.json``), when it ran."""
    blocks: list[tuple] = [("h2", "Study B: per-image layer skipping"), ("p", PROTOCOL_TEXT["B"])]
    if skip and "curves" in skip:
        blocks.append(("p", "Every method at its operating point (chosen on validation: the cheapest within "
                            f"{skip['curves']['tolerance']} of CNN-1's validation accuracy), scored on the test set."))
        blocks.append(("table", ["method", "operating point", "accuracy", "95 % CI", "mean conv layers", "MAC ratio",
                                 "wall ratio [interval]"],
                       [[r["label"], r["setting"] or "-", f"{r['accuracy']:.4f}",
                         f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]", f"{r['mean_conv_layers']:.3f}",
                         f"{r['mac_ratio_vs_cnn1']:.3f}", skip_verdict.wall_ratio_text(r)]
                        for r in skip_verdict.table_points(skip["curves"])]))
        for name, router in (("the study's selection", skip["router"]), ("dense labelling", skip["dense_router"])):
            blocks.append(("p", f"Router on {name}: held-out accuracy {router['accuracy']:.4f} "
                                f"[{router['ci_low']:.4f}, {router['ci_high']:.4f}] (n={router['n']}; majority-label "
                                f"rate {router['majority_rate']:.4f})."))
        for name, rel in skip.get("figures", {}).items():
            path = run / rel
            if path.is_file():
                blocks.append(("img", str(path), f"Study B: {name}"))
    return blocks


def write_study_report(workdir: str | Path) -> Path:
    """Assemble the report of a ``reproduce`` workdir; returns the HTML path."""
    workdir = Path(workdir)
    out = workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[tuple] = [("h1", "resnet-jax: layer-ablation studies"), ("p", PROTOCOL_TEXT["A"])]
    cls_blocks, cls = _ablation_section(workdir / "cifar10-resnet34", "Classification: ResNet34 on CIFAR-10")
    seg_blocks, seg = _ablation_section(workdir / "acdc-pspnet34", "Segmentation: PSPNet-ResNet34 on ACDC")
    skip = _json(workdir / "mnist-skip" / "skip_results.json")
    blocks += [("h2", "Findings"), ("list", _findings(cls, seg, skip) or ["no results yet"])]
    blocks += _paper_section(workdir, {"classification": "cifar10-resnet34", "segmentation": "acdc-pspnet34"})
    blocks += cls_blocks + _seeds_section(workdir / "cifar10-resnet34-seeds", "Classification")
    blocks += _readings_section(workdir / "cifar10-resnet34", "Classification")
    blocks += _elimination_section(workdir / "cifar10-resnet34-slim", "Classification")
    blocks += seg_blocks + _seeds_section(workdir / "acdc-pspnet34-seeds", "Segmentation")
    blocks += _readings_section(workdir / "acdc-pspnet34", "Segmentation")
    blocks += _elimination_section(workdir / "acdc-pspnet34-slim", "Segmentation")
    blocks += _study_b_section(workdir / "mnist-skip", skip)
    verify_csv = workdir / "cifar10-resnet34" / "verify.csv"
    if verify_csv.is_file():
        blocks += [("h2", "Cross-check in PyTorch"), *_cross_check(verify_csv)]
    record = _json(workdir / "stages.json") or {}
    stages = record.get("stages", {})
    made_by = record.get("run") or {}
    root = made_by.get("data_root")
    blocks.insert(2, ("p", f"Made by `resnet-jax reproduce --preset {made_by.get('preset', '?')}` with data from "
                           + (f"`{_portable(root, workdir)}/` (its --data-root)." if root else "TFDS.")))
    blocks += [("h2", "Timings"), ("table", ["stage", "seconds", "finished"],
                                   [[s, f"{v['seconds']:.1f}", v["finished"]] for s, v in stages.items()
                                    if v.get("finished")])]
    for run in ("cifar10-resnet34", "acdc-pspnet34", "mnist-skip"):
        config = workdir / run / "config.json"
        if config.is_file():
            blocks += [("h3", f"Config: {run}"), ("pre", json.dumps(_portable(_json(config), workdir), indent=2))]
    blocks += [("h2", "Environment"), ("pre", json.dumps(results.machine(), indent=2))]
    # Figures are copied beside report.md so the Markdown works when the folder is moved.
    md_blocks = []
    for block in blocks:
        if block[0] == "img":
            target = out / "figures" / (Path(block[1]).parent.parent.name + "-" + Path(block[1]).name)
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(block[1], target)
            block = ("img", str(target), block[2])
        md_blocks.append(block)
    (out / "report.md").write_text(_md(md_blocks, out))
    (out / "index.html").write_text(_html(blocks, "resnet-jax report"))
    return out / "index.html"
