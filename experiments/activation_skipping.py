"""Study B: per-image layer skipping chosen by strongest activations (PROTOCOLS.md).

    python experiments/activation_skipping.py --preset cpu --workdir runs/skip-cpu --data-dir ../shared/data/mnist
    python experiments/activation_skipping.py --preset full --workdir runs/skip --data-dir ../shared/data/mnist
    python experiments/activation_skipping.py --preset cifar100 --workdir runs/skip-c100   # TFDS, accelerator

Every stage resumes: rerunning the same command continues a model's training from its last epoch
and skips the stages whose results are in ``<workdir>/stages/``. The same as
``resnet-jax train --config <preset> --workdir DIR``.
"""

import argparse

from resnet_jax import configs
from resnet_jax.studies import skip as skip_study

PRESETS = {"full": "mnist-skip", "wide": "mnist-skip-wide", "equal": "mnist-skip-equal", "cpu": "mnist-skip-cpu",
           "smoke": "mnist-skip-smoke", "cifar100": "cifar100-skip"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data-dir", help="ImageFolder tree or per-split zips (default: TFDS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = configs.load_config(PRESETS[args.preset], args.set, data_dir=args.data_dir)

    # --- CNN-1, both labellings and routers, the CNN-3s, the early-exit baseline, curves, timing; the report ---
    results = skip_study.run_study(config, args.workdir)

    # --- Headline: every method at its operating point, and the verdict ---
    for point in results["curves"]["best"]:
        print(f"{skip_study.METHODS[point['method']]} ({point['setting'] or '-'}): accuracy {point['accuracy']:.4f}, "
              f"MAC ratio {point['mac_ratio_vs_cnn1']:.3f}, wall ratio {point['wall_ratio_vs_cnn1']:.3f}")
    print(*results["verdict"], sep="\n")

if __name__ == "__main__":
    main()
