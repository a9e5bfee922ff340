"""Segmentation: choose a CPU recipe for PSPNet-ResNet34 on ACDC on validation, then test the contradiction with
the study one factor at a time. Every run is listed here as data (overrides of ``acdc-pspnet34-cpu``) and, once
finished, exported to its own results folder, so the study grows one run at a time:

    python experiments/acdc_recipe.py list
    python experiments/acdc_recipe.py select os8-e20 --runs ../runs/acdc-recipe --data-dir ../shared/data/acdc_lv_myo
    python experiments/acdc_recipe.py chosen os8-e20 --workdir ../runs/acdc-recipe/os8-e20 --data-dir ...  # its test, once
    python experiments/acdc_recipe.py chosen os8-e20 --seed 1 --runs ... --data-dir ...  # a second seed, tested too
    python experiments/acdc_recipe.py factor os8-e20 stride16 --runs ... --data-dir ...
    python experiments/acdc_recipe.py factor os8-e20 stride16 --seed 1 --runs ... --data-dir ...  # its second seed
    python experiments/acdc_recipe.py costs os8-e20 --data-dir ...  # each factor's conv MACs, counted on shapes

``select`` trains a candidate with ``train.score_test=false`` (the test split stays unseen) into
``docs/results/acdc-recipe/<candidate>``. ``chosen`` scores the chosen candidate's test split once (seed 0: the
selection run itself, rerun with the key true; other seeds trained for it), runs the study's four protocols under
both BatchNorm readings and exports to ``docs/results/acdc-recipe/<candidate>[-seed<k>]``; then eliminates as
``resnet-jax reproduce --preset cpu`` does (search, fine-tuning, random controls, the side-by-side comparison) and
exports the slim network to the same name with ``-slim``. ``factor`` changes one
factor of the chosen recipe, runs the baseline, stage and shortcut protocols and exports to
``docs/results/acdc-factors/<candidate>-<factor>``; ``costs`` writes each factor's conv MACs per slice beside the
candidate's to ``docs/results/acdc-factors/costs.json`` (a factor too costly to train here is reported as not run,
with its size). Every step resumes: rerun the same command after an interruption.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from resnet_jax import configs, ledger
from resnet_jax.ablation import elimination
from resnet_jax.ablation.catalogue import catalogue
from resnet_jax.ablation.protocols import STUDY_PROTOCOLS
from resnet_jax.reporting import factor_results, results
from resnet_jax.studies import ablate, comparison
from resnet_jax.studies.reproduce_presets import PRESETS
from resnet_jax.training import runs, segmentation

BASE = "acdc-pspnet34-cpu"
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
CANDIDATES = {
    "os8-e20": ["model.output_stride=8", "train.epochs=20"],
    "os8-e20-light": ["model.output_stride=8", "train.epochs=20", "train.max_rotate=0", "train.max_scale=0"],
    "os8-e20-intensity": ["model.output_stride=8", "train.epochs=20", "train.max_gamma=0.3",
                          "train.max_contrast=0.1", "train.max_brightness=0.05"],
}
"""Candidate recipes: each fits about 60 minutes of training on a 2-core CPU (output stride 8: about 3 minutes an
epoch at 128 px)."""
FACTORS = {
    "stride16": ["model.output_stride=16"],
    "half-length": "half",  # the candidate's epochs, halved
    "myo-only": ["data.keep_classes=[MYO]"],  # the study's set labels the myocardium alone
    "cifar-stem": ["model.stem=cifar"],
}
"""One factor changed at a time against the chosen recipe ("half" halves its epochs)."""
FACTOR_PROTOCOLS = ("baseline", "stage-except-decomposition", "shortcut")


def candidate_overrides(name: str) -> list[str]:
    if name not in CANDIDATES:
        raise SystemExit(f"unknown candidate {name!r}; valid: {sorted(CANDIDATES)}")
    return list(CANDIDATES[name])


def factor_overrides(candidate: str, factor: str, data_dir: str) -> list[str]:
    if factor not in FACTORS:
        raise SystemExit(f"unknown factor {factor!r}; valid: {sorted(FACTORS)}")
    base = candidate_overrides(candidate)
    if FACTORS[factor] == "half":
        epochs = configs.load_config(BASE, base, data_dir=data_dir)["train"]["epochs"]
        return [*base, f"train.epochs={max(1, epochs // 2)}"]
    return [*base, *FACTORS[factor]]


def training_size(overrides: list[str], data_dir: str, reference: dict | None = None) -> dict:
    """Conv MACs per slice of one recipe, counted on the shapes alone (nothing trained or run), its epochs, the
    slice shape and, against a ``reference`` config, what it changes (as the factor table labels it)."""
    config = configs.load_config(BASE, overrides, data_dir=data_dir)
    model, shape = segmentation.build_model(config), (1, *segmentation.load_split(config, "val").images.shape[1:])
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    return {"overrides": overrides, "conv_macs": elimination.conv_macs(catalogue(model, variables, input_shape=shape)),
            "epochs": config["train"]["epochs"], "input_shape": list(shape),
            **({"changed": factor_results.changes(reference, config)} if reference is not None else {})}


def factor_costs(candidate: str, data_dir: str) -> dict:
    """Each factor's training size beside the candidate's: what decides whether a factor fits the hour of training
    per seed, so that a factor too costly to train here is stated with its size, not left out silently."""
    reference = configs.load_config(BASE, candidate_overrides(candidate), data_dir=data_dir)
    return {"candidate": candidate, "reference": training_size(candidate_overrides(candidate), data_dir),
            "factors": {name: training_size(factor_overrides(candidate, name, data_dir), data_dir, reference)
                        for name in FACTORS},
            "command": shlex.join(["python", "experiments/acdc_recipe.py", *sys.argv[1:]]),
            "code": ledger.code_version()}


def export(workdir: Path, out: Path, *, allow_dirty: bool) -> None:
    record = results.export(workdir, out, command=shlex.join(["python", "experiments/acdc_recipe.py", *sys.argv[1:]]),
                            allow_dirty=allow_dirty)
    print(f"exported {workdir} to {out} ({record})")


def eliminate_run(workdir: Path, slim: Path, data_dir: str) -> None:
    """The elimination stage of ``reproduce --preset cpu`` on one run: the slim network in ``slim``, its
    comparison (``elimination/comparison.json`` and the Pareto figure) beside it; a rerun keeps the speeds
    measured once."""
    comparison.eliminate_and_compare(workdir, slim, PRESETS["cpu"], data_dir=data_dir, keep_comparison=True)


def plan(args) -> tuple[list[str], Path, Path, dict | None]:
    """The run's overrides, its directory, its results folder and its ablation (None: train only)."""
    name = args.names[0]
    if args.action == "select":
        run, overrides, folder, ablation = name, [*candidate_overrides(name), "train.score_test=false"], "acdc-recipe", None
    elif args.action == "chosen":
        run = name if args.seed == 0 else f"{name}-seed{args.seed}"
        overrides = [*candidate_overrides(name), "train.score_test=true", f"train.seed={args.seed}"]
        folder, ablation = "acdc-recipe", {"protocols": STUDY_PROTOCOLS, "readings": ("running", "batch")}
    else:
        run = f"{name}-{args.names[1]}" + (f"-seed{args.seed}" if args.seed else "")
        overrides = [*factor_overrides(name, args.names[1], args.data_dir), f"train.seed={args.seed}"]
        folder, ablation = "acdc-factors", {"protocols": FACTOR_PROTOCOLS, "readings": ("running",)}
    return overrides, args.workdir or args.runs / run, RESULTS / folder / run, ablation


def seed_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a seed is a whole number >= 0, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list", "select", "chosen", "factor", "costs"))
    parser.add_argument("names", nargs="*", help="candidate (select, chosen), or candidate and factor (factor)")
    parser.add_argument("--runs", type=Path, help="where the runs train (checkpoints; not committed)")
    parser.add_argument("--workdir", type=Path, help="this run's directory, if not <runs>/<run name> (e.g. the "
                        "selection run of the chosen candidate, to score it: its test split once)")
    parser.add_argument("--data-dir", help="../shared/data/acdc_lv_myo")
    parser.add_argument("--seed", type=seed_number, default=0, help="chosen, factor: the training seed (k > 0: the run "
                        "is named <run>-seed<k>)")
    parser.add_argument("--allow-dirty", action="store_true", help="export from a checkout with uncommitted code "
                        "changes (refused otherwise, before any training)")
    args = parser.parse_args()
    if args.action == "list":
        print(json.dumps({"base": BASE, "candidates": CANDIDATES, "factors": FACTORS}, indent=2))
        return
    if args.action == "costs":  # counted, not trained: seconds
        if len(args.names) != 1 or args.data_dir is None:
            parser.error(f"costs needs one candidate and --data-dir (given: {args.names}, --data-dir {args.data_dir})")
        results.check_clean(allow_dirty=args.allow_dirty)
        out = RESULTS / "acdc-factors" / "costs.json"
        out.write_text(json.dumps(factor_costs(args.names[0], args.data_dir), indent=2) + "\n")
        print(f"wrote {out}")
        return
    if (args.runs is None and args.workdir is None) or args.data_dir is None or \
            len(args.names) != (2 if args.action == "factor" else 1):
        parser.error(f"{args.action} needs --runs (or --workdir), --data-dir and "
                     f"{'a candidate and a factor' if args.action == 'factor' else 'a candidate'}")
    overrides, workdir, out, ablation = plan(args)
    results.check_clean(allow_dirty=args.allow_dirty)  # refused now, not after an hour of training
    slim = workdir.with_name(f"{workdir.name}-slim") if args.action == "chosen" else None
    slim_out = out.with_name(f"{out.name}-slim")
    results.check_destination(workdir, out)
    if slim:
        results.check_destination(slim, slim_out)
    runs.train(configs.load_config(BASE, overrides, data_dir=args.data_dir), workdir)
    for reading in (ablation or {}).get("readings", ()):
        ablate.ablate_workdir(workdir, ablate.Request(protocols=ablation["protocols"], batchnorm=reading,
                                                      whole_batches=reading == "batch", batch_size=96))
    export(workdir, out, allow_dirty=args.allow_dirty)
    if slim:
        eliminate_run(workdir, slim, args.data_dir)
        export(slim, slim_out, allow_dirty=args.allow_dirty)


if __name__ == "__main__":
    main()
