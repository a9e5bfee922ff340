"""The one JSON summary of ``scripts/accelerator_check.sh``: every step's exit status and time, the benchmarks'
own JSON, the training and sweep figures of the runs, and the ratios the speed targets are stated in.

    python benchmarks/accelerator_summary.py OUT_DIR      # writes OUT_DIR/summary.json and prints it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _last_line(path: Path):
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    return json.loads(lines[-1]) if lines else None


def _sweep_seconds(run: Path) -> dict:
    """Per protocol table: masks and the engine seconds it records (this call's evaluations)."""
    out = {}
    for table in sorted((run / "ablation").glob("*.json")):
        data = json.loads(table.read_text())
        if "rows" in data and "seconds" in data:
            out[table.stem] = {"masks": len(data["rows"]), "seconds": data["seconds"]}
    return out


def targets(throughput: dict | None, sweep: dict | None, acdc_sweep: dict) -> dict:
    """The ratios the speed issue states its targets in (None where a step did not finish)."""
    out: dict = {}
    if sweep:
        out["engine_incl_compile_vs_naive_loop"] = sweep.get("ratio_engine_vs_jax_loop")  # target <= 0.33
        jax_eval = max((r["eval_img_s"] for r in (throughput or {}).get("rows", []) if r["framework"].startswith("jax")),
                       default=None)
        if jax_eval:
            arithmetic_s = sweep["ideal_mac_ratio"] * sweep["n_masks"] * sweep["n_examples"] / jax_eval
            out["arithmetic_seconds"] = arithmetic_s
            out["engine_2nd_call_vs_arithmetic"] = sweep["seconds"]["engine, 2nd call"] / arithmetic_s  # target <= 2
    if acdc_sweep:
        out["segmentation_sweep_seconds"] = sum(v["seconds"] for v in acdc_sweep.values())  # target < 60
        out["segmentation_sweep_masks"] = sum(v["masks"] for v in acdc_sweep.values())
    return out


def summarise(out_dir: Path) -> dict:
    import jax

    steps_file = out_dir / "steps.jsonl"
    lines = steps_file.read_text().splitlines() if steps_file.is_file() else []
    steps = [json.loads(ln) for ln in lines if ln.strip()]
    throughput, sweep = _json(out_dir / "throughput.json"), _json(out_dir / "sweep.json")
    runs = {name: out_dir / "runs" / name for name in ("cifar10", "acdc")}
    summary = {
        "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__, "steps": steps, "throughput": throughput, "sweep": sweep,
        "runs": {name: {"last_epoch": _last_line(run / "metrics.jsonl"), "evaluation": _json(run / "evaluation.json"),
                        "sweeps": _sweep_seconds(run)} for name, run in runs.items() if run.is_dir()},
    }
    summary["targets"] = targets(throughput, sweep, summary["runs"].get("acdc", {}).get("sweeps", {}))
    return summary


def main() -> None:
    out_dir = Path(sys.argv[1])
    summary = summarise(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"steps": summary["steps"], "targets": summary["targets"]}, indent=2))
    print(f"wrote {out_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
