"""``resnet-jax``: the command line. Each subcommand parses, then calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resnet_jax import configs


def _train(args) -> int:
    from resnet_jax import train

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={Path(args.data_dir).absolute()}")
    config = configs.load_config(args.config, overrides)
    train.train_and_evaluate(config, args.workdir, force_new=args.force_new)
    return 0


def _train_seg(args) -> int:
    from resnet_jax import seg_train

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={Path(args.data_dir).absolute()}")
    config = seg_train.load_seg_config(args.config, overrides)
    seg_train.train_and_evaluate(config, args.workdir, force_new=args.force_new)
    return 0


def _evaluate(args) -> int:
    from resnet_jax import train

    data_dir = Path(args.data_dir).absolute() if args.data_dir else None
    config, _, state, test = train.restore_run(args.workdir, which=args.checkpoint, data_dir=data_dir)
    mesh = train.data_mesh()
    result = train.evaluate_split(train.replicate(mesh, state), test,
                                  batch_size=config["train"]["eval_batch_size"], mesh=mesh)
    result = {"checkpoint": args.checkpoint, "step": int(state.step), "n_examples": len(test), **result}
    (Path(args.workdir) / "evaluation.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def _layers(args) -> int:
    import jax
    import jax.numpy as jnp

    from resnet_jax import ablation, train

    config = configs.load_config(args.config, args.set)
    model = train.build_model(config, args.num_classes)
    shape = (1, args.image_size, args.image_size, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    print(ablation.format_catalogue(ablation.catalogue(model, variables, input_shape=shape)))
    return 0


def _ablate(args) -> int:
    from resnet_jax import protocols

    chosen = list(protocols.PROTOCOLS) if args.protocol == "all" else [args.protocol]
    protocols.ablate_workdir(
        args.workdir, protocols=chosen, kind=args.kind, spec_file=args.spec,
        data_dir=Path(args.data_dir).absolute() if args.data_dir else None, n_examples=args.n_examples,
        method=args.method, batch_size=args.batch_size, memory_budget_mb=args.memory_budget_mb,
        checkpoint=args.checkpoint)
    return 0


def _verify(args) -> int:
    from resnet_jax import protocols, verify

    chosen = list(protocols.PROTOCOLS) if args.protocol == "all" else [args.protocol]
    result = verify.verify_workdir(
        args.workdir, protocols=chosen, n_examples=args.n_examples, kinds=args.kind or ["zero-kernel"],
        data_dir=Path(args.data_dir).absolute() if args.data_dir else None, checkpoint=args.checkpoint,
        method=args.method)
    print(verify.format_table(result["rows"]))
    print(f"wrote {result['csv']}")
    return 0 if result["ok"] else 1


def _import_torch(args) -> int:
    from resnet_jax import verify

    verify.import_torch_run(
        args.file, args.workdir, arch=args.arch, stem=args.stem, num_classes=args.num_classes,
        data_name=args.data_name, data_dir=Path(args.data_dir).absolute() if args.data_dir else None,
        config=args.config, overrides=args.set, normalization=args.normalization, image_mean=args.image_mean,
        image_std=args.image_std)
    return 0


def _report(args) -> int:
    from resnet_jax import reports

    print(f"wrote {reports.write_report(args.workdir)}")
    return 0


def _skip_study(args) -> int:
    from resnet_jax import skip_study

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={Path(args.data_dir).absolute()}")
    skip_study.run_study(skip_study.load_skip_config(args.config, overrides), args.workdir)
    return 0


def _reproduce(args) -> int:
    from resnet_jax import reproduce

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    reproduce.reproduce(args.preset, args.workdir, data_root=args.data_root, only=only)
    return 0


def _presets(args) -> int:
    for name, preset in configs.PRESETS.items():
        print(f"{name}\n    {preset.get('about', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (resumes from the workdir's latest checkpoint)")
    p.add_argument("--config", required=True, help=f"a preset ({', '.join(configs.PRESETS)}) or a YAML/JSON file")
    p.add_argument("--workdir", required=True, help="run directory: config, metrics.jsonl, checkpoints")
    p.add_argument("--data-dir", help="ImageFolder tree or per-split zips, instead of downloading from TFDS")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--force-new", action="store_true", help="discard a different run found in the workdir")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-seg", help="train a PSPNet segmentation model (resumes; `ablate` then scores it by "
                                         "Dice); writes metrics.jsonl per epoch and evaluation.json at the end")
    p.add_argument("--config", required=True, help="a segmentation preset (acdc-pspnet34, acdc-pspnet34-cpu, "
                                                   "acdc-pspnet34-smoke, sunnybrook-pspnet34-cpu, "
                                                   "synthetic-seg-tiny) or a YAML/JSON file")
    p.add_argument("--workdir", required=True, help="run directory: config, metrics.jsonl, checkpoints")
    p.add_argument("--data-dir", help="e.g. ../shared/data/acdc_lv_myo (split zips, split folders or images/+masks/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--force-new", action="store_true", help="discard a different run found in the workdir")
    p.set_defaults(func=_train_seg)

    p = sub.add_parser("evaluate", help="test accuracy of a run's best or latest checkpoint")
    p.add_argument("--workdir", required=True)
    p.add_argument("--data-dir", help="override the run's data directory")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="latest")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("layers", help="the conv catalogue of a preset's model: names, shapes, MACs, roles")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.set_defaults(func=_layers)

    p = sub.add_parser("ablate", help="run ablation protocols on a trained run (resumes unfinished sweeps)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--protocol", default="all",
                   help="baseline, single, stage-except-decomposition, shortcut, or all")
    p.add_argument("--kind", default="zero-kernel",
                   help="zero-kernel (the study), zero-branch, lesion, reinit, rerandomize")
    p.add_argument("--spec", help="JSON/YAML file of ablation specs to run instead of the protocols")
    p.add_argument("--data-dir", help="override the run's data directory")
    p.add_argument("--n-examples", type=int, help="evaluate a fixed random subset of the test split")
    p.add_argument("--method", default="auto", choices=("auto", "gates", "weights"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--memory-budget-mb", type=float, default=2048)
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.set_defaults(func=_ablate)

    p = sub.add_parser("verify", help="recompute the ablation tables in PyTorch (torchvision) and compare; "
                                      "writes <workdir>/verify.csv, exits 1 when a tolerance fails")
    p.add_argument("--workdir", required=True)
    p.add_argument("--protocol", default="all",
                   help="baseline, single, stage-except-decomposition, shortcut, or all")
    p.add_argument("--kind", action="append", metavar="KIND",
                   help="zero-kernel (default), zero-branch, lesion, reinit, rerandomize (repeatable)")
    p.add_argument("--n-examples", type=int, default=1000, help="test images to compare on (default 1000)")
    p.add_argument("--data-dir", help="override the run's data directory")
    p.add_argument("--method", default="auto", choices=("auto", "gates", "weights"),
                   help="the JAX engine's formulation (auto: as `ablate` uses)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.set_defaults(func=_verify)

    p = sub.add_parser("import-torch", help="turn a torchvision ResNet checkpoint into a run directory "
                                            "for evaluate/ablate/verify")
    p.add_argument("file", help="a .pt/.pth state_dict (or a dict holding one under 'state_dict' or 'model')")
    p.add_argument("--workdir", required=True, help="a new (or empty) run directory")
    p.add_argument("--arch", required=True, help="resnet18, resnet34 or resnet50")
    p.add_argument("--stem", choices=("torchvision", "cifar"), help="default: read from conv1 (3x3 = cifar)")
    p.add_argument("--num-classes", type=int, help="default: read from fc")
    p.add_argument("--data-name", default="cifar10", help="the dataset it is evaluated on (TFDS name, synthetic)")
    p.add_argument("--data-dir", help="ImageFolder tree or per-split zips of that dataset")
    p.add_argument("--config", default="cifar10-resnet34-cpu",
                   help="base preset or file for config.json (default cifar10-resnet34-cpu: float32, "
                        "5000 test images)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--normalization", choices=("train", "imagenet"), default="train",
                   help="input mean/std: the training split's channel statistics (as `train` uses; default) "
                        "or torchvision's ImageNet constants")
    p.add_argument("--image-mean", type=float, nargs=3, metavar=("R", "G", "B"), help="explicit mean, [0, 1] units")
    p.add_argument("--image-std", type=float, nargs=3, metavar=("R", "G", "B"), help="explicit std, [0, 1] units")
    p.set_defaults(func=_import_torch)

    p = sub.add_parser("report", help="write <workdir>/report.md from the ablation tables")
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=_report)

    p = sub.add_parser("skip-study", help="Study B: per-image layer skipping chosen by strongest activations "
                                          "(resumes; writes skip_report.md and skip_results.json)")
    p.add_argument("--config", required=True, help="a Study B preset (mnist-skip, mnist-skip-cpu, "
                                                   "mnist-skip-smoke, cifar100-skip) or a YAML/JSON file")
    p.add_argument("--workdir", required=True, help="run directory: models, stages, figures, report")
    p.add_argument("--data-dir", help="ImageFolder tree or per-split zips, instead of downloading from TFDS")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.set_defaults(func=_skip_study)

    p = sub.add_parser("reproduce", help="the main job: both studies end to end, resumable, one report")
    p.add_argument("--preset", choices=("smoke", "cpu", "full"), default="cpu")
    p.add_argument("--workdir", default="runs/reproduce")
    p.add_argument("--data-root", help="folder with cifar10/, mnist/, acdc_lv_myo/ laid out as in shared/data "
                                       "(default: TFDS where it can download)")
    p.add_argument("--only", help="comma-separated stages: cifar-train, cifar-ablate, acdc-train, acdc-ablate, "
                                  "skip-study, verify, report")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("presets", help="list the config presets and the commands that reproduce them")
    p.set_defaults(func=_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    from resnet_jax.ablation import SpecError
    from resnet_jax.data import DataError
    from resnet_jax.reproduce import StageError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (configs.ConfigError, DataError, SpecError, FileNotFoundError, StageError) as err:
        print(f"resnet-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
