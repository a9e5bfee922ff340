"""The study's published numbers (PROTOCOLS.md, "Published results"), to print beside ours, row for row.

Study A's table captions are swapped in the paper relative to its text; these are the rows as the text
describes them (stage 1 has no projection shortcut, so the table with four stages is the first experiment).

Usage: ``published.beside_ours("classification", tables)`` gives the rows that print the paper's numbers beside
ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

PUBLISHED = {
    "classification": {
        "what": "ResNet34 on CIFAR-10, test accuracy", "baseline": 0.84, "column": "value",
        "stage-except-decomposition": {1: 0.51, 2: 0.61, 3: 0.83, 4: 0.84},
        "shortcut": {2: 0.28, 3: 0.33, 4: 0.16},
    },
    "segmentation": {
        "what": "PSPNet-ResNet34, myocardium Dice (the study: a private T1-mapping set; ours: ACDC)",
        "baseline": 0.87, "column": "dice_myo",
        "stage-except-decomposition": {1: 0.82, 2: 0.86, 3: 0.82, 4: 0.00},
        "shortcut": {2: 0.00, 3: 0.00, 4: 0.00},
    },
}
"""Per task: what was measured, the baseline, which column of our tables holds the same metric, and per
protocol the value after ablation by stage."""


def stage_of(mask: str) -> int | None:
    found = re.search(r"layer(\d+)", mask)
    return int(found.group(1)) if found else None


def _as_runs(rows):
    return [] if not rows else (rows if isinstance(rows[0], (list, tuple)) else [rows])


def stage_values(task: str, tables: Mapping[str, Sequence[dict] | Sequence[Sequence[dict]]]
                 ) -> dict[tuple[str, int | None], list[float]]:
    """Ours for each published row: ``(protocol, stage)`` (``("baseline", None)`` for the baseline) to the
    values of the runs that have it (one per seed), in the column that holds the study's metric."""
    column = PUBLISHED[task]["column"]
    value = lambda r: r.get(column, r["value"])  # noqa: E731 - older tables lack per-class columns
    out = {("baseline", None): [value(rows[0]) for rows in _as_runs(tables.get("baseline")) if rows]}
    for protocol in ("stage-except-decomposition", "shortcut"):
        for stage in PUBLISHED[task][protocol]:
            picked = (next((value(r) for r in rows if stage_of(r["mask"]) == stage), None)
                      for rows in _as_runs(tables.get(protocol)))
            out[(protocol, stage)] = [v for v in picked if v is not None]
    return out


def beside_ours(task: str, tables: Mapping[str, Sequence[dict] | Sequence[Sequence[dict]]]) -> list[list[str]]:
    """Rows ``[experiment, stage, paper, ours]`` for the baseline and each published stage value. ``tables`` maps a
    protocol to its rows (one run) or to a list of row lists (one per seed: ours is then the mean and the range over
    seeds, written out so that it does not read as a confidence interval)."""
    paper = PUBLISHED[task]

    def ours(values: Sequence[float]) -> str:
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return (f"{sum(values) / len(values):.3f} (range over {len(values)} seeds: {min(values):.3f} to "
                f"{max(values):.3f})")

    rows = []
    for (protocol, stage), values in stage_values(task, tables).items():
        published = paper["baseline"] if stage is None else paper[protocol][stage]
        rows.append([protocol, "-" if stage is None else str(stage), f"{published:.2f}", ours(values)])
    return rows
