"""Study A on CIFAR-10: train ResNet34, run the three zero-kernel protocols, write the report.

    python experiments/cifar10_resnet34.py --preset cpu --workdir runs/cifar10-cpu --data-dir ../shared/data/cifar10
    python experiments/cifar10_resnet34.py --preset full --workdir runs/cifar10      # accelerator, TFDS

Every stage resumes: rerunning the same command continues training from the last checkpoint and
evaluates only the masks that are not in ``<workdir>/ablation/results.jsonl`` yet.
"""

import argparse
from pathlib import Path

from resnet_jax import configs
from resnet_jax.ablation.protocols import STUDY_PROTOCOLS as PROTOCOLS
from resnet_jax.reporting import markdown
from resnet_jax.studies import ablate, seeds
from resnet_jax.training import runs

PRESETS = {"full": "cifar10-resnet34", "cpu": "cifar10-resnet34-cpu", "smoke": "cifar10-resnet34-smoke"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data-dir", help="CIFAR-10 ImageFolder tree or per-split zips (default: TFDS)")
    parser.add_argument("--kind", default="zero-kernel", help="ablation kind (the study: zero-kernel)")
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
        ablate.ablate_workdir(run, ablate.Request(protocols=PROTOCOLS, kind=args.kind))
        print(f"report: {markdown.write_report(run)}")

    # --- Several seeds: per-mask mean, spread and decision counts ---
    if len(run_dirs) > 1:
        for path in seeds.write_combined(run_dirs, seeds.combined_dir(args.workdir), label=Path(args.workdir).name):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
