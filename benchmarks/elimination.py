"""The slim model against the full one, ResNet18 trained with the same recipe and budget, and random elimination.

Test accuracy (or Dice) comes from the runs' own evaluations and ``resnet-jax eliminate``'s summary (random sets
are scored there as masked models, which their slim models equal exactly); parameters and conv MACs from the
models; eval and train images/s are measured here, side by side in one process, the models interleaved per
repeat so the ratios hold on a noisy machine:

    python benchmarks/elimination.py --full RUN --slim SLIM_RUN [--resnet18 RUN] [--batch 128] [--repeats 6]
        [--out FILE.json] [--figure FILE.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnet_jax.reporting import figures
from resnet_jax.studies import comparison


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", required=True, help="the trained run that was slimmed")
    p.add_argument("--slim", required=True, help="the output of `resnet-jax eliminate`")
    p.add_argument("--resnet18", help="a ResNet18 run trained with the same recipe and budget")
    p.add_argument("--scratch", help="the slim architecture trained from scratch with the same recipe and budget")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=6)  # the fewest giving speed ratios a 95 % interval
    p.add_argument("--steps", type=int, default=3, help="timed calls per model per repeat")
    p.add_argument("--data-dir", help="where the full run's data is now, if it moved")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--figure", help="write the Pareto figure here")
    args = p.parse_args()
    trained = {k: v for k, v in (("resnet18", args.resnet18), ("scratch", args.scratch)) if v}
    result = comparison.compare(args.full, args.slim, trained=trained, batch=args.batch,
                               repeats=args.repeats, steps=args.steps,
                               data_dir=args.data_dir)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(comparison.format_comparison(result))
    if args.figure:
        figures.plot_pareto(result["rows"], Path(args.figure), metric=result["metric"])


if __name__ == "__main__":
    main()
