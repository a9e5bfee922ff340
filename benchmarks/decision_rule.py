"""The decision rule simulated end to end, through the functions the ablation tables use.

Each family of masks shares one baseline, as a protocol's masks do; every mask of a family has the same true
drop, and a decision is wrong when it contradicts that drop (``non-trivial`` needs drop > margin, ``trivial``
drop < margin, ``improves`` drop < -margin). The family-wise error is the share of families with at least one
wrong decision (where the true drop equals the margin, any decision but undecided is wrong: there it is the
rule's error rate); ``misses`` the share with at least one simultaneous interval that misses the true drop (at a
true drop of 0: a false significant change). Both come with their standard error over the families.

* accuracy: n = 5,000 test images (baseline 70 % right), 2 % of images gained by each mask and 2 % + drop lost
  (a realistic discordance), families of 36 and 630 masks, via ``statistics.paired_tester(Accuracy())``;
* Dice: 20 patients of 10 slices, pooled Dice of one class around 0.85, via ``statistics.paired_tester(Dice)``
  (the patient bootstrap, resamples sized to the family), families of 36 masks whose per-patient effects are
  ``normal`` (each patient's change sd 0.02 around the drop), ``skewed`` (every mask breaks a few patients: each
  patient, with probability 0.1, loses 0.1 more Dice than the rest; at the margin, 1 patient in 10 drops by 0.1
  and the others not at all) or one skewed mask among 35 normal ones; every slice adds sd 0.02.
  One family of 630 normal masks whose drops cover the five settings (126 masks each: its power, not its error).

    python benchmarks/decision_rule.py [--families 2000] [--others 200] [--seed 0]

The last line printed is a JSON object with every setting's numbers (``rows``) and the run's parameters.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the bootstrap's products are small: threads only contend

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from resnet_jax import metrics  # noqa: E402
from resnet_jax.ablation import statistics as st  # noqa: E402

MARGIN, ALPHA = 0.01, 0.05
DROPS = {"0": 0.0, "margin/2": MARGIN / 2, "margin": MARGIN, "2x margin": 2 * MARGIN, "5x margin": 5 * MARGIN}
BREAK_SHARE, BREAK_DROP = 0.1, 0.1
"""A skewed mask breaks each patient with probability ``BREAK_SHARE``: a broken patient loses ``BREAK_DROP``
more Dice than the others, who lose ``BREAK_SHARE * BREAK_DROP`` less than the true drop (so its mean is the
drop)."""
ONE_SKEWED = "1 skewed, 35 normal"


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


def patient_effects(rng, effects: str, patients: int, change: float) -> np.ndarray:
    """Each patient's deviation from a mask's true drop, mean 0: ``normal`` (sd ``change``) or ``skewed`` (a few
    patients broken, see ``BREAK_SHARE``)."""
    if effects == "normal":
        return rng.normal(0, change, patients)
    if effects == "skewed":
        return BREAK_DROP * ((rng.random(patients) < BREAK_SHARE) - BREAK_SHARE)
    raise ValueError(f"unknown effects {effects!r}; valid: normal, skewed")


def dice_family(rng, drops: Sequence[float], *, effects: str | Sequence[str] = "normal", patients: int = 20,
                slices: int = 10, dice: float = 0.85, spread: float = 0.03,
                change: float = 0.02) -> tuple[dict, list[dict], list[str]]:
    """Per-slice counts of a baseline and one mask per entry of ``drops`` (true pooled-Dice drop): the baseline's
    Dice varies by patient and slice (``spread``); a mask changes each slice's Dice by the drop, its patient's
    effect (``effects``, one kind or one per mask) and a slice-level change (sd ``change``). The truth of a slice
    does not depend on the changes, so the population's pooled-Dice drop is the drop."""
    kinds = [effects] * len(drops) if isinstance(effects, str) else list(effects)
    truth = rng.integers(500, 2000, (patients * slices, 1)).astype(np.float64)
    per_patient = lambda values: np.repeat(values, slices)[:, None]  # noqa: E731
    score = dice + per_patient(rng.normal(0, spread, patients)) + rng.normal(0, spread, truth.shape)

    def counts(level):
        return {"intersection": np.clip(level, 0, 1) * truth, "pred_sum": truth, "true_sum": truth}

    groups = [f"patient{i // slices:03d}" for i in range(patients * slices)]
    masked = [counts(score - d - per_patient(patient_effects(rng, kind, patients, change))
                     + rng.normal(0, change, truth.shape)) for d, kind in zip(drops, kinds)]
    return counts(score), masked, groups


def share_se(hits: int, families: int) -> float:
    """Standard error of a share of families, never 0 (a share of 0 or 1 counts as 1 family off it)."""
    p = min(max(hits, 1), max(families - 1, 1)) / families
    return float(np.sqrt(p * (1 - p) / families))


def run_setting(test, make, drop: float, families: int, rule: st.Decision) -> dict:
    """Families of one setting through ``test`` and ``statistics.decisions``: the share of families with a
    wrong decision and with an interval that misses the drop (each with its standard error), decision shares."""
    any_wrong, any_miss, counts = 0, 0, dict.fromkeys(st.DECISIONS, 0)
    for _ in range(families):
        base, masked = make()
        rows = st.decisions(test(base, masked, rule=rule), rule=rule)
        any_wrong += any(wrong(r["decision"], drop) for r in rows)
        any_miss += any(r["drop_low"] > drop or r["drop_high"] < drop for r in rows)
        for r in rows:
            counts[r["decision"]] += 1
    total = sum(counts.values())
    return {"families": families, "fwer": any_wrong / families, "fwer_se": share_se(any_wrong, families),
            "misses": any_miss / families, "misses_se": share_se(any_miss, families),
            **{f"share_{d}": counts[d] / total for d in st.DECISIONS}}


def plan(families: int, others: int) -> list[tuple[str, int, str, str, int]]:
    """``(metric, m, effects, true drop, families)`` of every setting, in table order: ``families`` where the
    error is the claim (the drop at the margin; at 0 too, a false significant change, for the 36-mask families
    of independent images and normal effects), ``others`` elsewhere (half at m = 630)."""
    out = []
    for metric, m, effects in (("accuracy", 36, "-"), ("accuracy", 630, "-"), ("dice", 36, "normal"),
                               ("dice", 36, "skewed")):
        for label in DROPS:
            full = label == "margin" or (label == "0" and m == 36 and effects != "skewed")
            out.append((metric, m, effects, label, families if full else others // (1 if m == 36 else 2)))
    return out + [("dice", 36, ONE_SKEWED, "margin", families)]


def dice_630(rng, tester, rule: st.Decision) -> tuple[list[dict], float, int]:
    """One family of 630 normal masks, 126 per setting: rows of its decision shares, its test time, resamples."""
    spread = [d for d in DROPS.values() for _ in range(126)]
    base, masked, _ = dice_family(rng, spread)
    tic = time.perf_counter()
    decided = st.decisions(tester(base, masked, rule=rule), rule=rule)
    seconds = time.perf_counter() - tic
    rows = []
    for i, (label, drop) in enumerate(DROPS.items()):
        part = decided[126 * i:126 * (i + 1)]
        rows.append({"metric": "dice", "m": 630, "effects": "normal", "true_drop": label, "families": 1,
                     "fwer": float(any(wrong(r["decision"], drop) for r in part)), "fwer_se": float("nan"),
                     "misses": float(any(r["drop_low"] > drop or r["drop_high"] < drop for r in part)),
                     "misses_se": float("nan"),
                     **{f"share_{d}": sum(r["decision"] == d for r in part) / 126 for d in st.DECISIONS}})
    return rows, seconds, decided[0]["resamples"]


def show(row: dict) -> None:
    print(f"{row['metric']:8s} {row['m']:4d} {row['effects']:>19s} {row['true_drop']:>10s} {row['families']:8d} "
          f"{row['fwer']:6.3f} +-{row['fwer_se']:.3f} {row['misses']:6.3f} +-{row['misses_se']:.3f} "
          + " ".join(f"{row[f'share_{d}']:11.3f}" for d in st.DECISIONS), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", type=int, default=2000,
                   help="families where the error is the claim (true drop at the margin; see plan()): 2,000 "
                        "give a standard error of 0.005 at 0.05")
    p.add_argument("--others", type=int, default=200, help="families at the other drops (half at m = 630)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the rows and the parameters as JSON here")
    args = p.parse_args()
    rng, rule = np.random.default_rng(args.seed), st.Decision(MARGIN, ALPHA)
    accuracy = st.paired_tester(metrics.Accuracy())
    dice = st.paired_tester(metrics.Dice(num_classes=2, classes=(1,)), groups=dice_family(rng, [0.0])[2])
    rows, started = [], time.perf_counter()
    print(f"{'metric':8s} {'m':>4s} {'effects':>19s} {'true drop':>10s} {'families':>8s} {'FWER':>14s} "
          f"{'misses':>14s} " + " ".join(f"{d:>11s}" for d in st.DECISIONS))
    for metric, m, effects, label, families in plan(args.families, args.others):
        drop = DROPS[label]
        if metric == "accuracy":
            test, make = accuracy, lambda m=m, drop=drop: accuracy_family(rng, m, drop)  # noqa: E731
        else:
            kinds = ["skewed"] + ["normal"] * (m - 1) if effects == ONE_SKEWED else effects
            test, make = dice, lambda drop=drop, kinds=kinds: dice_family(rng, [drop] * 36, effects=kinds)[:2]  # noqa: E731
        rows.append({"metric": metric, "m": m, "effects": effects, "true_drop": label,
                     **run_setting(test, make, drop, families, rule)})
        show(rows[-1])
    last, seconds, resamples = dice_630(rng, dice, rule)
    for row in last:
        rows.append(row)
        show(row)
    summary = {"alpha": ALPHA, "margin": MARGIN, "break_share": BREAK_SHARE, "break_drop": BREAK_DROP,
               "dice_630_seconds": seconds, "dice_630_resamples": resamples,
               "seconds": time.perf_counter() - started, "families": args.families, "others": args.others,
               "seed": args.seed, "rows": rows}
    print(f"Dice family of 630 masks: {resamples:,} resamples x 20 patients, {seconds:.1f} s to test; "
          f"all settings {summary['seconds']:.0f} s")
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
