"""Study A's segmentation arm on ACDC: train PSPNet-ResNet34, run the three protocols scored by Dice, report.

    python experiments/acdc_pspnet34.py --preset cpu --workdir runs/acdc-cpu --data-dir ../shared/data/acdc_lv_myo
    python experiments/acdc_pspnet34.py --preset full --workdir runs/acdc --data-dir ../shared/data/acdc_lv_myo

Every stage resumes: rerunning the same command continues training from the last checkpoint and
evaluates only the masks that are not in ``<workdir>/ablation/results.jsonl`` yet. The ablations run on
the test split with the checkpoint best by validation Dice; the tables hold pooled mean foreground Dice
(LV cavity, myocardium, RV) with 95 % bootstrap intervals, and ``ablation/qualitative.png`` shows
predictions under the most harmful and the most harmless masks.
"""

import argparse
from pathlib import Path

from resnet_jax import configs
from resnet_jax.ablation.protocols import STUDY_PROTOCOLS as PROTOCOLS
from resnet_jax.reporting import markdown
from resnet_jax.studies import ablate, seeds
from resnet_jax.training import runs

PRESETS = {"full": "acdc-pspnet34", "cpu": "acdc-pspnet34-cpu", "smoke": "acdc-pspnet34-smoke"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data-dir", required=True, help="../shared/data/acdc_lv_myo (zips read in place)")
    parser.add_argument("--kind", default="zero-kernel", help="ablation kind (the study: zero-kernel)")
    parser.add_argument("--n-examples", type=int, help="ablate on a fixed random subset of the test split")
    parser.add_argument("--batch-size", type=int, default=96,
                        help="ablation batch (the 190 test slices fit 2 batches of 96 with little padding)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds (seed k > 0 in <workdir>-seed<k>); tables combined in <workdir>-seeds/")
    args = parser.parse_args()

    # --- Per seed: train (resumes), then ablate: baseline, single, stage-except-decomposition, shortcut ---
    run_dirs = []
    for run, seed_overrides in seeds.each_seed(args.workdir, args.seeds):
        config = configs.load_config(PRESETS[args.preset], [*args.set, *seed_overrides], data_dir=args.data_dir)
        run_dirs.append(run)
        runs.train(config, run)
        ablate.ablate_workdir(run, ablate.Request(protocols=PROTOCOLS, kind=args.kind, n_examples=args.n_examples,
                                                  batch_size=args.batch_size))
        print(f"report: {markdown.write_report(run)}")

    # --- Several seeds: per-mask mean, spread and decision counts ---
    if len(run_dirs) > 1:
        for path in seeds.write_combined(run_dirs, seeds.combined_dir(args.workdir), label=Path(args.workdir).name):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
