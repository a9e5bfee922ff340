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
from resnet_jax.studies import skip_study

PRESETS = {"full": "mnist-skip", "cpu": "mnist-skip-cpu", "smoke": "mnist-skip-smoke", "cifar100": "cifar100-skip"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data-dir", help="ImageFolder tree or per-split zips (default: TFDS)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = configs.load_config(PRESETS[args.preset], args.set, data_dir=args.data_dir)

    # --- CNN-1, selection, CNN-2, CNN-3 (literal and useful), timing; then the report ---
    results = skip_study.run_study(config, args.workdir)

    # --- Headline numbers ---
    rows = {r["name"]: r for r in results["useful"]["rows"]}
    routed = rows["CNN-3, depth from CNN-2 (useful reading)"]
    print(f"router held-out accuracy {results['router']['accuracy']:.4f}; "
          f"CNN-1 {rows['CNN-1 (full depth)']['accuracy']:.4f}; routed CNN-3 {routed['accuracy']:.4f} "
          f"at {routed['mean_conv_layers']:.2f} conv layers, MAC ratio {routed['mac_ratio_vs_cnn1']:.3f}, "
          f"wall ratio {results['timing']['wall_ratio_vs_cnn1']['cnn3_routed_incl_router']:.3f}")


if __name__ == "__main__":
    main()
