"""The Markdown report of one run: training summary, every ablation table with its provenance and figure.

Usage: ``markdown.write_report("runs/smoke")`` writes ``runs/smoke/report.md`` (``resnet-jax report``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import files, ledger
from resnet_jax.ablation.statistics import DECISIONS
from resnet_jax.ablation.tables import breakdown_columns
from resnet_jax.reporting import results


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows with their paired test (drop with the simultaneous bounds the decision reads off, Holm-adjusted
    p-value of any change, decision at the margin) where the table has one."""
    extra = breakdown_columns(rows)
    tested = any("decision" in r for r in rows)
    stats_head = " drop [simultaneous bounds] | p any change (Holm) | decision |" if tested else ""
    head = ("| mask | kind | value | 95 % CI | delta vs baseline | n |" + stats_head + "".join(f" {c} |" for c in extra)
            + "\n|---|---|---:|---:|---:|---:|" + ("---:|---:|---|" if tested else "") + "---:|" * len(extra))
    lines = [head]
    for r in rows:
        stats = ""
        if tested:
            stats = (f" {r['drop']:+.4f} [{r['drop_low']:+.4f}, {r['drop_high']:+.4f}] | {r['p_value_holm']:.2g} | "
                     f"{r['decision']} |" if "decision" in r else " | | |")
        lines.append(f"| `{r['mask']}` | {r['kind']} | {r['value']:.4f} | [{r['ci_low']:.4f}, {r['ci_high']:.4f}] "
                     f"| {r['delta']:+.4f} | {r['n_examples']} |" + stats
                     + "".join(f" {r[c]:.4f} |" if isinstance(r.get(c), float) else f" {r.get(c, '')} |" for c in extra))
    return "\n".join(lines)


def sensitivity_table(counts: dict[str, dict[str, int]]) -> tuple[list[str], list[list]]:
    """Header and rows: decision counts per margin (a table's ``margin_sensitivity``)."""
    return ["margin", *DECISIONS], [[m, *(c[d] for d in DECISIONS)] for m, c in counts.items()]


def interaction_lists(table: dict) -> str:
    """The most synergistic and most redundant pairs of a ``pairs`` table."""
    lines = [f"{len(table['rows'])} pairs; all of them in the CSV beside this report's figure.", ""]
    for label in ("synergistic", "redundant"):
        lines += [f"Most {label}:", "", "| pair | drop together | drop A | drop B | interaction | decision |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| `{r['mask']}` | {r['drop']:+.4f} | {r['drop_a']:+.4f} | {r['drop_b']:+.4f} | "
                  f"{r['interaction']:+.4f} | {r.get('decision', '')} |" for r in table[label]]
        lines.append("")
    return "\n".join(lines)


def statistics_line(table: dict) -> str | None:
    s = table.get("statistics")
    if not s:
        return None
    return (f"Decisions at margin {s['margin']}, family-wise error at most {s['alpha']} across the protocol's masks "
            f"({s['method']}; {s['correction']}): *non-trivial* when the lower simultaneous bound of the drop is above "
            f"the margin, *improves* when the upper bound is below minus the margin, *trivial* when the upper bound "
            f"is below the margin (and not below minus it), *undecided* otherwise.")


def _training_summary(last: dict, evaluation: dict | None) -> str:
    """The last epoch's monitored scores and, where training scored it, the chosen checkpoint's test score."""
    head = f"{last['epoch']} epochs, {last['step']} steps, {last['elapsed_s'] / 60:.1f} min; "
    speed = f"last epoch {last['images_per_second'] or float('nan'):.0f} training images/s."
    split = "val" if any(k.startswith("val_") for k in last) else "test"
    label = {"val": "validation", "test": "test (no validation split: the test split chose the checkpoint)"}[split]
    if f"{split}_accuracy" in last:
        scores = f"last epoch {label} accuracy {last[f'{split}_accuracy']:.4f}; "
    else:
        per_class = ", ".join(f"{k[len(split) + 6:].upper()} {v:.4f}" for k, v in last.items()
                              if k.startswith(f"{split}_dice_") and k != f"{split}_dice_per_image")
        scores = f"last epoch {label} Dice {last[f'{split}_dice']:.4f} pooled ({per_class}); "
    if evaluation:
        tested = {k: v for k, v in evaluation.items() if k.startswith("test_") and k != "test_loss"}
        scores += (f"the checkpoint best on validation (step {evaluation['step']}) scores "
                   + ", ".join(f"{k[5:]} {v:.4f}" for k, v in tested.items()) + " on the test split; ")
    return head + scores + speed


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
        evaluation = workdir / "evaluation.json"
        if lines:
            parts += ["## Training", "", _training_summary(lines[-1], json.loads(evaluation.read_text())
                                                           if evaluation.is_file() else None), ""]
    loaded = {path: json.loads(path.read_text()) for path in tables}
    warning = next(filter(None, map(chance_warning, loaded.values())), None)
    parts += [f"**Warning:** {warning}", ""] if warning else []
    timings = []
    for path, data in loaded.items():
        title = data.get("title", path.stem)
        parts += [f"## {title}", "", data.get("description", "")]
        if "synergistic" in data:  # pairs: hundreds of rows stay in the CSV; the report lists the extremes
            parts += ["", interaction_lists(data), ""]
        else:
            parts += ["", markdown_table(data["rows"]), ""] if "rows" in data else [""]  # no rows: a figure only
        if data.get("provenance"):
            parts += [provenance_line(data["provenance"]), ""]
        if statistics_line(data):
            parts += [statistics_line(data), ""]
        if data.get("margin_sensitivity"):
            header, rows = sensitivity_table(data["margin_sensitivity"])
            parts += ["Decision counts at other margins, from the same bounds (no mask evaluated again):", "",
                      "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
                      *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]
        if data.get("figure"):  # stored by file name (older tables: a path); the figure lies beside its table
            parts += [f"![{title}](ablation/{Path(data['figure']).name})", ""]
        if "seconds" in data:
            timings.append(f"| {path.stem} | {len(data['rows'])} | {data['seconds']:.1f} |")
    if timings:
        parts += ["## Timings", "", "| table | masks | wall s (this run's evaluations) |", "|---|---:|---:|", *timings, ""]
    config_path = workdir / "config.json"
    if config_path.is_file():
        parts += ["## Config", "", "```json", config_path.read_text().strip(), "```", ""]
    parts += ["## Environment", "", "```json", json.dumps(results.machine(), indent=2), "```", ""]
    ledger.declare(workdir, "report", ["report.md"])
    return files.write_text(workdir / "report.md", "\n".join(parts))


def chance_warning(table: dict) -> str | None:
    """A warning when a table's baseline is not shown to beat a model that learned nothing (``warning``, written by
    ``ablate``; older tables: accuracy at or below 1 / classes): then no layer can be called (non-)trivial."""
    if table.get("warning"):
        return table["warning"]
    chance, rows = table.get("chance"), table.get("rows")
    if chance is None or not rows or rows[0]["baseline"] > chance:
        return None
    return (f"the baseline {rows[0]['metric']} {rows[0]['baseline']:.4f} is at or below chance ({chance:.4f}): the "
            f"model has not learned the task, so its ablation tables say nothing about which layers matter; "
            f"train longer (a larger preset) before reading them.")


def provenance_line(p: dict) -> str:
    """Which checkpoint and which examples a table came from, in one line."""
    choice = p.get("checkpoint_choice") or f"the {p.get('checkpoint', '?')} checkpoint, step {p.get('checkpoint_step', '?')}"
    return (f"Scored on {p['n_examples']} test examples (sha {p['examples_sha']}) with {choice} "
            f"(parameter sha {p['checkpoint_sha']}), metric {p['metric'].get('name', '?')}.")
