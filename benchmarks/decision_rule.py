"""The decision rule simulated end to end, through the functions the ablation tables use.

Each family of masks shares one baseline, as a protocol's masks do; every mask of a family has the same true
drop, and a decision is wrong when it contradicts that drop (``non-trivial`` needs drop > margin, ``trivial``
drop < margin, ``improves`` drop < -margin). The family-wise error is the share of families with at least one
wrong decision; power the share of masks decided ``non-trivial`` at 5x the margin.

* accuracy: n = 5,000 test images (baseline 70 % right), 2 % of images gained by each mask and 2 % + drop lost
  (a realistic discordance), families of 36 and 630 masks, via ``statistics.paired_tester(Accuracy())``;
* Dice: 20 patients of 10 slices, pooled Dice of one class around 0.85, each mask's change spread over
  patients and slices (sd 0.02 each), via ``statistics.paired_tester(Dice)`` (the patient bootstrap, resamples sized to the family); families of 36,
  and one family of 630 masks whose drops cover the five settings (126 masks each: its power, not its error).

    python benchmarks/decision_rule.py [--families 300] [--seed 0]

The last line printed is a JSON object: ``fwer`` (the largest family-wise error where the true drop equals the
margin), ``power`` (the smallest share decided non-trivial at 5x the margin) and every setting's numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from resnet_jax import metrics
from resnet_jax.ablation import statistics as st

MARGIN, ALPHA = 0.01, 0.05
DROPS = {"0": 0.0, "margin/2": MARGIN / 2, "margin": MARGIN, "2x margin": 2 * MARGIN, "5x margin": 5 * MARGIN}


def wrong(decision: str, drop: float, margin: float = MARGIN) -> bool:
    """Whether a decision contradicts a true drop."""
    return {"non-trivial": drop <= margin, "trivial": drop >= margin, "improves": drop >= -margin,
            "undecided": False}[decision]


def accuracy_family(rng, m: int, drop: float, *, n: int = 5000, gained: float = 0.02) -> tuple[dict, list[dict]]:
    """A baseline and ``m`` masks, each losing ``gained + drop`` and gaining ``gained`` of the images."""
    base = rng.random(n) < 0.7
    u = rng.random((m, n))
    lost_p, gained_p = (gained + drop) / 0.7, gained / 0.3
    masked = np.where(base, u >= lost_p, u < gained_p)
    return {"correct": base}, [{"correct": row} for row in masked]


def dice_family(rng, drops, *, patients: int = 20, slices: int = 10, dice: float = 0.85,
                spread: float = 0.03, change: float = 0.02) -> tuple[dict, list[dict], list[str]]:
    """Per-slice counts of a baseline and one mask per entry of ``drops`` (true pooled-Dice drop): the baseline's
    Dice varies by patient and slice (``spread``); a mask changes each slice's Dice by the drop plus a
    patient-level and a slice-level change (``change``), so the drop varies from patient to patient."""
    truth = rng.integers(500, 2000, (patients * slices, 1)).astype(np.float64)
    per_patient = lambda sd: np.repeat(rng.normal(0, sd, patients), slices)[:, None]  # noqa: E731
    score = dice + per_patient(spread) + rng.normal(0, spread, truth.shape)

    def counts(level):
        return {"intersection": np.clip(level, 0, 1) * truth, "pred_sum": truth, "true_sum": truth}

    groups = [f"patient{i // slices:03d}" for i in range(patients * slices)]
    masked = [counts(score - d + per_patient(change) + rng.normal(0, change, truth.shape)) for d in drops]
    return counts(score), masked, groups


def run_setting(test, make, drop: float, families: int, rule: st.Decision) -> dict:
    """Families of one setting through ``test`` and ``statistics.decisions``: error, power, decision shares.
    Where the drop equals the margin (the family-wise error that matters) three times the families run."""
    families *= 3 if drop == MARGIN else 1
    any_wrong, counts = 0, dict.fromkeys(st.DECISIONS, 0)
    for _ in range(families):
        base, masked = make()
        rows = st.decisions(test(base, masked, rule=rule), rule=rule)
        any_wrong += any(wrong(r["decision"], drop) for r in rows)
        for r in rows:
            counts[r["decision"]] += 1
    total = sum(counts.values())
    return {"families": families, "fwer": any_wrong / families,
            "fwer_se": float(np.sqrt(max(any_wrong, 1) / families * (1 - any_wrong / families) / families)),
            **{f"share_{d}": counts[d] / total for d in st.DECISIONS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", type=int, default=300,
                   help="sets the families per setting: accuracy 4x at m = 36 and 1/6 at m = 630, Dice 1/3 at m = 36; "
                        "three times as many where the drop equals the margin")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the rows and the summary as JSON here")
    args = p.parse_args()
    rng, rule = np.random.default_rng(args.seed), st.Decision(MARGIN, ALPHA)
    accuracy = st.paired_tester(metrics.Accuracy())
    dice = lambda groups: st.paired_tester(metrics.Dice(num_classes=2, classes=(1,)), groups=groups)  # noqa: E731
    rows, started = [], time.perf_counter()
    print(f"{'metric':8s} {'m':>4s} {'true drop':>10s} {'families':>8s} {'FWER':>14s} "
          + " ".join(f"{d:>11s}" for d in st.DECISIONS))

    def show(metric, m, label, r):
        rows.append({"metric": metric, "m": m, "true_drop": label, **r})
        print(f"{metric:8s} {m:4d} {label:>10s} {r['families']:8d} {r['fwer']:7.3f} +-{r['fwer_se']:.3f} "
              + " ".join(f"{r[f'share_{d}']:11.3f}" for d in st.DECISIONS), flush=True)

    for m, families in ((36, 2 * args.families), (630, max(1, args.families // 6))):
        for label, drop in DROPS.items():
            make = lambda m=m, drop=drop: accuracy_family(rng, m, drop)  # noqa: E731
            show("accuracy", m, label, run_setting(accuracy, make, drop, families, rule))
    groups = dice_family(rng, [0.0])[2]
    tester = dice(groups)
    for label, drop in DROPS.items():
        make = lambda drop=drop: dice_family(rng, [drop] * 36)[:2]  # noqa: E731
        show("dice", 36, label, run_setting(tester, make, drop, max(1, args.families // 3), rule))
    spread = [d for d in DROPS.values() for _ in range(126)]
    base, masked, _ = dice_family(rng, spread)
    tic = time.perf_counter()
    decided = st.decisions(tester(base, masked, rule=rule), rule=rule)
    seconds = time.perf_counter() - tic
    for i, (label, drop) in enumerate(DROPS.items()):
        part = decided[126 * i:126 * (i + 1)]
        show("dice", 630, label, {"families": 1, "fwer": float(any(wrong(r["decision"], drop) for r in part)),
                                  "fwer_se": float("nan"), **{f"share_{d}": sum(r["decision"] == d for r in part) / 126
                                                               for d in st.DECISIONS}})
    print(f"Dice family of 630 masks: {decided[0]['resamples']:,} resamples x 20 patients "
          f"({decided[0]['resamples'] * 20 * 8 / 2**20:.0f} MiB of weights), {seconds:.1f} s to test; "
          f"all settings {time.perf_counter() - started:.0f} s")
    at_margin = [r["fwer"] for r in rows if r["true_drop"] == "margin" and r["families"] > 1]
    power = [r["share_non-trivial"] for r in rows if r["true_drop"] == "5x margin"]
    summary = {"fwer": max(at_margin), "power": min(power), "alpha": ALPHA, "margin": MARGIN,
               "dice_630_seconds": seconds, "dice_630_resamples": decided[0]["resamples"],
               "seconds": time.perf_counter() - started, "families": args.families, "seed": args.seed, "rows": rows}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
