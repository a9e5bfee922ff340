"""Ablation tables: rows from stored results, CSV and JSON written atomically, stating their provenance."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from resnet_jax import files

CSV_COLUMNS = ("mask", "kind", "layers", "metric", "value", "baseline", "delta", "n_examples", "ci_low", "ci_high",
               "drop", "drop_low", "drop_high", "decision", "drop_low_unadjusted", "drop_high_unadjusted",
               "p_value", "p_value_holm", "p_nontrivial_adj", "p_trivial_adj", "p_improves_adj", "margin", "alpha",
               "family_size")
"""``drop = baseline - value``; ``drop_low``/``drop_high``: its simultaneous bounds across the protocol's
``family_size`` masks, from which ``decision`` is read at ``margin``; ``_unadjusted``: the mask's own ``1 - alpha``
interval; ``p_value``: any change (McNemar / bootstrap), ``_holm`` across the masks; ``p_*_adj``: the one-sided
tests at the margin (non-trivial: drop > margin; trivial: drop < margin; improves: drop < -margin), times ``2 m``."""
HIDDEN = ("seconds", "key", "p_nontrivial", "p_trivial", "p_improves", "discordant_lost", "discordant_gained",
          "resamples")


def table_row(row: dict, baseline: dict, *, mask: str) -> dict:
    """A table row from a stored result, named by the mask that asked for it (results are keyed by content)."""
    return {
        "mask": mask, "kind": row["kind"], "layers": " ".join(row["layers"]), "metric": row["metric"],
        "value": row["value"], "baseline": baseline["value"], "delta": row["value"] - baseline["value"],
        "n_examples": row["n_examples"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
        "seconds": row.get("seconds", float("nan")), "key": row["key"], **row.get("breakdown", {}),
    }


def breakdown_columns(rows: Sequence[dict]) -> list[str]:
    """The metric's extra columns present in ``rows`` (e.g. ``dice_lv``), in first-seen order."""
    fixed = set(CSV_COLUMNS) | set(HIDDEN)
    return list(dict.fromkeys(k for r in rows for k in r if k not in fixed))


def write_table(rows: Sequence[dict], directory: Path, stem: str, *, meta: dict | None = None) -> tuple[Path, Path]:
    """``<stem>.csv`` and ``<stem>.json`` (rows plus metadata: title, checkpoint, data), each written atomically."""
    return write_rows(rows, directory, stem, meta=meta, columns=[*CSV_COLUMNS, *breakdown_columns(rows)])


def table_stem(protocol: str, kind: str) -> str:
    return protocol if kind == "zero-kernel" or protocol == "baseline" else f"{protocol}.{kind}"


def write_rows(rows: Sequence[dict], directory: Path, stem: str, *, meta: dict | None = None,
               columns: Sequence[str] | None = None) -> tuple[Path, Path]:
    """``<stem>.csv`` (``columns``; default every key of the first row) and ``<stem>.json`` (all of every row,
    plus ``meta``), each written atomically."""
    buffer = io.StringIO()
    fields = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = files.write_text(directory / f"{stem}.csv", buffer.getvalue())
    json_path = files.write_text(directory / f"{stem}.json", json.dumps({"rows": list(rows), **(meta or {})}, indent=2))
    return csv_path, json_path
