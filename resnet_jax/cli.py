"""``resnet-jax``: the command line. Each subcommand parses, then calls one library function.

Every choice a flag offers (presets, tasks, protocols, kinds, methods, stages) is read from the
library, so help text and validation cannot drift from the code. A user's mistake is one line on
stderr and exit status 2; an interrupted command says how to resume and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from resnet_jax import __version__, configs, devices, ledger
from resnet_jax.ablation import catalogue, engine
from resnet_jax.ablation.protocols import PROTOCOLS, READINGS, STUDY_PROTOCOLS
from resnet_jax.interop.convert import TORCHVISION_ARCHS
from resnet_jax.studies.reproduce import PRESETS as REPRODUCE_PRESETS
from resnet_jax.studies.reproduce import STAGES

RESUME_HINTS = {
    "train": "rerun the same command to resume from the last checkpoint",
    "train-seg": "rerun the same command to resume from the last checkpoint",
    "skip-study": "rerun the same command: finished models and stages are kept",
    "ablate": "rerun the same command: finished masks are kept and skipped",
    "eliminate": "rerun the same command: scored sets are kept and fine-tuning resumes from its last checkpoint",
    "reproduce": "rerun the same command: finished stages are skipped and the current one resumes",
}


def _resume_hint(command: str) -> str:
    return RESUME_HINTS.get(command, "nothing was lost that a rerun cannot redo")


def _workdir(path: str) -> Path:
    """A run directory, resolved once so a relative and an absolute spelling name the same run."""
    return Path(path).absolute()


def _train(args) -> int:
    config = configs.load_config(args.config, args.set, task=args.task, data_dir=args.data_dir)
    if config["task"] == "skip":
        from resnet_jax.studies import skip as skip_study

        if _processes() > 1:
            raise configs.ConfigError("Study B presets train in one process (their networks are tiny); launch "
                                      "them without --coordinator")
        skip_study.run_study(config, _workdir(args.workdir), force_new=args.force_new)
    else:
        from resnet_jax.training import runs

        runs.train(config, _workdir(args.workdir), force_new=args.force_new)
    return 0


def _processes() -> int:
    import jax

    return jax.process_count()


def _evaluate(args) -> int:
    from resnet_jax.training import core, runs

    run = runs.restore(_workdir(args.workdir), which=args.checkpoint, data_dir=configs.existing_data_dir(args.data_dir))
    try:
        core.evaluate_run(run, _workdir(args.workdir), which=args.checkpoint, log=lambda line: None,
                          show=lambda result: print(json.dumps(result, indent=2), flush=True))
    except OSError as err:
        raise OSError(f"the score above could not be kept in {args.workdir}: {err}") from None
    return 0


def _layers(args) -> int:
    import jax
    import jax.numpy as jnp

    if (args.config is None) == (args.workdir is None):
        raise configs.ConfigError("give --config PRESET (a model of that config) or --workdir RUN (a trained run's model)")
    if args.workdir:
        from resnet_jax.training import runs

        run = runs.restore(_workdir(args.workdir), which="latest", command="layers")
        model, variables = run.model, jax.device_get(run.state.variables)
        shape = (1, *run.task.arrays(run.test)[0].shape[1:])
    else:
        from resnet_jax.training import classification, segmentation

        config = configs.load_config(args.config, args.set)
        if config["task"] == "skip":
            raise configs.ConfigError(f"{args.config!r} is a Study B config: its plain CNNs have no residual layer "
                                      f"catalogue; `layers` lists ResNet and PSPNet convs")
        model = (classification.build_model(config, args.num_classes) if config["task"] == "classification"
                 else segmentation.build_model(config))
        channels = 3 if config["task"] == "classification" or config["data"]["name"] == "oxford_iiit_pet" else 1
        size = args.image_size or config["data"].get("image_size", 32)  # CIFAR-10 presets: 32 px
        shape = (1, size, size, channels)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    print(catalogue.format_catalogue(catalogue.catalogue(model, variables, input_shape=shape)))
    return 0


def _ablate(args) -> int:
    from resnet_jax.studies import ablate

    protocol = args.protocol or ("" if args.spec else "all")  # a spec file alone runs alone
    chosen = {"all": list(STUDY_PROTOCOLS), "readings": list(READINGS), "": []}.get(protocol, [protocol])
    request = ablate.Request(protocols=chosen, kind=args.kind, spec_file=args.spec, n_examples=args.n_examples,
                             method=args.method, batch_size=args.batch_size, memory_budget_mb=args.memory_budget_mb,
                             checkpoint=args.checkpoint or "best", margin=args.margin, alpha=args.alpha,
                             batchnorm=args.batchnorm, only_supported=protocol == "all")
    if args.model:
        return _ablate_model(args, request)
    given = _model_flags_given(args)
    if given:
        raise catalogue.SpecError(f"{', '.join(given)} describe(s) a user's model: give --model PACKAGE.MODULE:FUNCTION "
                                  f"with them, or leave them out to ablate the trained run in --workdir")
    ablate.ablate_workdir(_workdir(args.workdir), request, data_dir=configs.existing_data_dir(args.data_dir))
    return 0


def _model_flags_given(args) -> list[str]:
    """The flags given that only ``--model`` reads."""
    flags = {"--model-arg": args.model_arg, "--data": args.data, "--split": args.split, "--metric": args.metric,
             "--num-classes": args.num_classes, "--image-size": args.image_size, "--image-mean": args.image_mean,
             "--image-std": args.image_std}
    return [flag for flag, value in flags.items() if value is not None]


def _ablate_model(args, request) -> int:
    from resnet_jax.studies import user_model

    if args.checkpoint is not None:
        raise catalogue.SpecError(f"--checkpoint {args.checkpoint} picks a trained run's checkpoint; with --model "
                                  f"your function loads the weights: pass their file as --model-arg, e.g. "
                                  f"--model-arg checkpoint=PATH")
    user = user_model.UserModel(args.model, user_model.parse_model_args(args.model_arg or []))
    data = user_model.UserData(data_dir=configs.existing_data_dir(args.data_dir), tfds=args.data,
                               split=args.split or "test", metric=args.metric or "accuracy",
                               num_classes=args.num_classes, image_size=args.image_size or 224,
                               image_mean=tuple(args.image_mean or (0.0,)), image_std=tuple(args.image_std or (1.0,)))
    user_model.ablate_model(_workdir(args.workdir), request, user, data)
    return 0


def _eliminate(args) -> int:
    from resnet_jax.studies import eliminate

    settings = eliminate.Settings(granularity=args.granularity, form=args.form, max_drop=args.max_drop,
                                  metric_split=args.metric_split, random_draws=args.random_draws,
                                  finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr)
    summary = eliminate.eliminate_workdir(
        _workdir(args.workdir), _workdir(args.out), settings, batch_size=args.batch_size,
        data_dir=configs.existing_data_dir(args.data_dir), force_new=args.force_new,
        force_untrained=args.force_untrained)
    print(eliminate.format_summary(summary))
    return 0


def _export_torch(args) -> int:
    from resnet_jax.interop import export

    export.export_run(_workdir(args.workdir), Path(args.out), checkpoint=args.checkpoint)
    return 0


def _verify(args) -> int:
    from resnet_jax.interop import verify

    chosen = list(STUDY_PROTOCOLS) if args.protocol == "all" else [args.protocol]
    result = verify.verify_workdir(
        _workdir(args.workdir), protocols=chosen, n_examples=args.n_examples, kinds=args.kind or ["zero-kernel"],
        data_dir=configs.existing_data_dir(args.data_dir), checkpoint=args.checkpoint, method=args.method)
    print(verify.verdict(result))
    print(verify.format_table(result["rows"]))
    print(f"wrote {result['csv']}")
    return 0 if result["ok"] else 1


def _import_torch(args) -> int:
    from resnet_jax.interop import import_torch

    import_torch.import_torch_run(
        args.file, _workdir(args.workdir), arch=args.arch, stem=args.stem, num_classes=args.num_classes,
        data_name=args.data_name, data_dir=configs.existing_data_dir(args.data_dir),
        config=args.config, overrides=args.set, normalization=args.normalization, image_mean=args.image_mean,
        image_std=args.image_std)
    return 0


def _report(args) -> int:
    from resnet_jax.reporting import markdown

    print(f"wrote {markdown.write_report(_workdir(args.workdir))}")
    return 0


def _reproduce(args) -> int:
    from resnet_jax.studies import reproduce

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    workdir = _workdir(args.workdir)
    if args.results:  # refused now, not after hours of work
        from resnet_jax.reporting import results

        results.check_clean(allow_dirty=args.allow_dirty)
        results.check_destination(workdir, args.results)
    reproduce.reproduce(args.preset, workdir, data_root=args.data_root, only=only,
                        force_new=args.force_new, seeds=args.seeds)
    if args.results:
        _export(workdir, args.results, args, preset=args.preset, seeds=args.seeds)
    return 0


def _export(workdir: Path, out: str, args, **about) -> None:
    import shlex

    from resnet_jax.reporting import results

    record = results.export(workdir, out, command=shlex.join(["resnet-jax", *args.argv]),
                            allow_dirty=args.allow_dirty, **about)
    print(f"wrote the results of {workdir} to {Path(out)} (provenance: {record})")


def _results(args) -> int:
    _export(_workdir(args.workdir), args.out, args)
    return 0


def _presets(args) -> int:
    from resnet_jax.reporting import preset_times
    from resnet_jax.studies.reproduce import RUN_DIRS

    stage = {key: "skip-study" if key == "skip" else f"{key}-train" for key in RUN_DIRS}
    trained_by = {name: {RUN_DIRS[key]: (preset[key], stage[key]) for key in RUN_DIRS}
                  for name, preset in REPRODUCE_PRESETS.items()}
    times = preset_times.measured(trained_by)
    rows = configs.listing()
    for task in configs.TASKS:
        print(f"{task}:")
        for r in (r for r in rows if r["task"] == task):
            print(f"  {r['name']}  [{r['scale']}]\n      {r['about']}\n"
                  f"      training time measured: {preset_times.text(times.get(r['name']))}\n      $ {r['command']}")
    return 0


def _add_config_flags(p, *, task: str | None) -> None:
    presets = sorted(configs.family(task).PRESETS if task else configs.PRESETS)
    p.add_argument("--config", required=True, help=f"a preset ({', '.join(presets)}) or a YAML/JSON file")
    p.add_argument("--workdir", required=True, help="run directory: config, metrics.jsonl, checkpoints")
    p.add_argument("--data-dir", help="ImageFolder tree, segmentation folders or per-split zips, instead of TFDS")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--force-new", action="store_true", help="discard the run found in the workdir and start over")
    p.set_defaults(func=_train, task=task)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _checkpoint(value: str) -> str:
    if value in ("best", "latest") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(f"invalid checkpoint {value!r}; valid: 'best', 'latest' or a step number")


def _checkpoint_flag(p, default: str) -> None:
    p.add_argument("--checkpoint", type=_checkpoint, default=default,
                   help=f"'best' (by the validation metric), 'latest', or a step number (default: {default}; "
                        f"`evaluate` scores where training stopped, the other commands the checkpoint the study "
                        f"reports)")


def _run_flags(p, *, checkpoint_default: str) -> None:
    p.add_argument("--workdir", required=True, help="a trained run's directory (config.json, checkpoints/)")
    p.add_argument("--data-dir", help="where the run's dataset is now, if not where it was trained from")
    _checkpoint_flag(p, checkpoint_default)


def _training_parsers(sub) -> None:
    _add_config_flags(sub.add_parser("train", help="train any preset: classification, segmentation or Study B "
                                                   "(resumes from the workdir's latest checkpoint)"), task=None)
    _add_config_flags(sub.add_parser("train-seg", help="alias of `train` for segmentation presets"),
                      task="segmentation")
    _add_config_flags(sub.add_parser("skip-study", help="alias of `train` for Study B presets"), task="skip")
    p = sub.add_parser("evaluate", help="score a run's checkpoint on its test split (accuracy or Dice)")
    _run_flags(p, checkpoint_default="latest")
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("layers", help="the conv catalogue of a config's or a run's model: names, shapes, MACs, roles")
    p.add_argument("--config", help="a classification or segmentation preset or file")
    p.add_argument("--workdir", help="a trained run (instead of --config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--num-classes", type=_positive_int, default=10,
                   help="classes of the classification head (with --config; default 10)")
    p.add_argument("--image-size", type=_positive_int,
                   help="input side in pixels for shapes and MACs (with --config; default: the preset's "
                        "data.image_size, 32 for CIFAR-10)")
    p.set_defaults(func=_layers)
    p = sub.add_parser("presets", help="list every preset of every task and the command that reproduces it")
    p.set_defaults(func=_presets)


def _ablation_parsers(sub) -> None:
    _ablate_parser(sub)
    _eliminate_parser(sub)
    _export_and_verify_parsers(sub)


def _ablate_parser(sub) -> None:
    p = sub.add_parser("ablate", help="run ablation protocols on a trained run, or on your own Flax model with "
                                      "--model (resumes unfinished sweeps)",
                       description="Ablate a trained run (--workdir RUN), or any Flax model (--model "
                                   "PACKAGE.MODULE:FUNCTION --workdir OUT --data-dir DIR). FUNCTION, called with the "
                                   "--model-arg keywords (strings), returns (model, variables) for a linen module, "
                                   "(nnx_module, None) or the NNX module alone, optionally with a third element: the "
                                   "call's keywords, e.g. {'train': False}. The model takes a batch of images "
                                   "normalised as (x/255 - mean)/std and returns logits (or (logits, ...)); loading "
                                   "its weights is FUNCTION's business.")
    p.add_argument("--workdir", required=True, help="a trained run's directory (config.json, checkpoints/); with "
                                                    "--model, the folder that receives ablation/ (store, tables, "
                                                    "figures), model.json and dataset.json")
    p.add_argument("--data-dir", help="where the run's dataset is now, if not where it was trained from; with "
                                      "--model, the examples: an ImageFolder tree or per-split zips (image and mask "
                                      "folders with --metric dice)")
    _checkpoint_flag(p, "best")
    p.set_defaults(checkpoint=None)  # None: not given (refused with --model), 'best' for a trained run
    _user_model_flags(p)
    p.add_argument("--protocol", choices=(*PROTOCOLS, "all", "readings"),
                   help="'all' (the default without --spec) runs the study's four; 'readings' the open readings of "
                        "the study (stage 1's adjacency, identity cuts); 'pairs' (every pair of convs) runs only when "
                        "named; with --spec, a protocol named here runs beside the spec file")
    p.add_argument("--kind", choices=catalogue.KINDS,
                   help="the ablation kind: for protocols, default zero-kernel (the study's); for --spec, each spec "
                        "keeps its own kind unless --kind is given, which overrides them all")
    p.add_argument("--spec", help="JSON/YAML file of ablation specs; its table is "
                                  "spec-<file stem>-<content digest>[.<kind>], one per file content and kind")
    p.add_argument("--n-examples", type=_positive_int, help="evaluate a fixed random subset of the test split")
    p.add_argument("--method", default="auto", choices=engine.METHODS,
                   help="how masked models are formed: 'gates' (one forward pass, masks as per-copy gates), "
                        "'weights' (masked kernels stacked), 'auto' (gates where the kind allows; default)")
    p.add_argument("--batch-size", type=_positive_int, default=128,
                   help="test images per batch on the devices (default 128)")
    p.add_argument("--memory-budget-mb", type=_positive_float,
                   help="working memory a chunk of masks may use (default: half of what the device reports; "
                        "2048 on CPUs)")
    p.add_argument("--margin", type=float, default=0.01,
                   help="drop that separates trivial from non-trivial masks (default 0.01, i.e. 1 point of accuracy); "
                        "on a finished sweep a new margin rewrites the tables from the stored results, nothing "
                        "evaluated again")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise error of a protocol's decisions, both directions counted (default 0.05): each "
                        "mask's bounds are at level 1 - alpha/m for a protocol of m masks")
    p.add_argument("--batchnorm", default="running", choices=engine.BATCHNORM,
                   help="'batch': every masked model normalised by its own batch's statistics (the study's "
                        "BN(0) = beta reading; --batch-size must divide the images); tables get '.bn-batch'")
    p.set_defaults(func=_ablate)


def _user_model_flags(p) -> None:
    """``ablate --model``'s own flags: a user's model, its arguments, data, metric and input normalisation."""
    m = p.add_argument_group("a user's own Flax model (see the description above)")
    m.add_argument("--model", metavar="PACKAGE.MODULE:FUNCTION",
                   help="a function returning your model (imported with the current directory on sys.path), or "
                        "path/to/file.py:FUNCTION; e.g. examples.flax_resnet18:load")
    m.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="a keyword for FUNCTION, as a string (repeatable), e.g. checkpoint=params.msgpack")
    m.add_argument("--data", metavar="TFDS_NAME", help="score on a TFDS dataset instead of --data-dir")
    m.add_argument("--split", help="the split scored (default test)")
    m.add_argument("--metric", help="accuracy (default; labels from class folders) or dice (masks)")
    m.add_argument("--num-classes", type=_positive_int, help="with --metric dice: the masks' classes, background "
                                                               "included")
    m.add_argument("--image-size", type=_positive_int, help="with --metric dice: slices are centre-cropped or "
                                                              "padded to this side (default 224)")
    m.add_argument("--image-mean", type=float, nargs="+", metavar="V",
                   help="the input mean in [0, 1] units, one value or one per channel (default 0)")
    m.add_argument("--image-std", type=float, nargs="+", metavar="V",
                   help="the input std in [0, 1] units, one value or one per channel (default 1)")


def _eliminate_parser(sub) -> None:
    p = sub.add_parser("eliminate", help="remove residual units into a slim run: greedy search on the validation "
                                         "split with the batched engine, exact slim model, optional fine-tuning")
    p.add_argument("--workdir", required=True, help="the trained run to slim")
    p.add_argument("--out", required=True, help="the slim run's directory (a normal run: evaluate, ablate, report)")
    p.add_argument("--data-dir", help="override the run's data directory")
    p.add_argument("--granularity", default="unit", choices=("unit", "conv"),
                   help="unit: zero each unit's last conv (per-channel bias); conv: any conv of the branch")
    p.add_argument("--form", default="bias", choices=("bias", "lesion"),
                   help="bias: relu(x + b), exact; lesion: relu(x)")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest drop of the searched split's metric")
    p.add_argument("--metric-split", default="val", choices=("val", "test"),
                   help="the split the search scores (test only for runs without a validation split)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="train the slim model this many epochs")
    p.add_argument("--finetune-lr", type=_positive_float,
                   help="peak learning rate of fine-tuning (default: the run's / 10, no warm-up)")
    p.add_argument("--random-draws", type=int, default=5, help="random sets of the same size, scored on test")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="images per batch (default 128)")
    p.add_argument("--force-new", action="store_true", help="discard what --out holds and start over")
    p.add_argument("--force-untrained", action="store_true",
                   help="eliminate even from a run not significantly better than a model that learned "
                        "nothing (refused otherwise)")
    p.set_defaults(func=_eliminate)


def _export_and_verify_parsers(sub) -> None:
    p = sub.add_parser("export-torch", help="write a run's ResNet (slim or full) as model.pt (a dict: state_dict, "
                                            "architecture, normalisation, source, step) and a TorchScript file")
    p.add_argument("--workdir", required=True, help="a trained run (full or slim ResNet)")
    p.add_argument("--out", required=True, help="folder for model.pt, model.torchscript.pt, architecture.json")
    _checkpoint_flag(p, "best")
    p.set_defaults(func=_export_torch)

    p = sub.add_parser("verify", help="recompute the ablation tables in PyTorch (torchvision) and compare; "
                                      "writes <workdir>/verify.csv, exits 1 when a tolerance fails")
    _run_flags(p, checkpoint_default="best")
    p.add_argument("--protocol", default="all", choices=(*PROTOCOLS, "all"),
                   help="protocols to recompute in PyTorch ('all': the study's four; default)")
    p.add_argument("--kind", action="append", metavar="KIND",
                   choices=[k for k in catalogue.KINDS if k not in catalogue.GATE_ONLY_KINDS],
                   help="an ablation kind (repeatable; default zero-kernel)")
    p.add_argument("--n-examples", type=_positive_int, default=1000, help="test images to compare on (default 1000)")
    p.add_argument("--method", default="auto", choices=engine.METHODS,
                   help="the JAX engine's formulation (auto: as `ablate` uses)")
    p.set_defaults(func=_verify)


def _interop_and_study_parsers(sub) -> None:
    p = sub.add_parser("import-torch", help="turn a torchvision ResNet checkpoint into a run directory "
                                            "for evaluate/ablate/verify")
    p.add_argument("file", help="a .pt/.pth state_dict (or a dict holding one under 'state_dict' or 'model')")
    p.add_argument("--workdir", required=True, help="a new (or empty) run directory")
    p.add_argument("--arch", required=True, metavar="ARCH",  # checked by import-torch: one line, exit 2
                   help=f"the torchvision architecture of the file: {', '.join(TORCHVISION_ARCHS)}")
    p.add_argument("--stem", choices=("torchvision", "cifar"), help="default: read from conv1 (3x3 = cifar)")
    p.add_argument("--num-classes", type=_positive_int, help="default: read from fc")
    p.add_argument("--data-name", default="cifar10", help="the dataset it is evaluated on (TFDS name, synthetic)")
    p.add_argument("--data-dir", help="ImageFolder tree or per-split zips of that dataset")
    p.add_argument("--config", help="base classification preset or file for config.json (default: the "
                                    "classification defaults: float32, the whole test split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--normalization", choices=("train", "imagenet"), default="train",
                   help="input mean/std: the training split's channel statistics (as `train` uses; default) "
                        "or torchvision's ImageNet constants")
    p.add_argument("--image-mean", type=float, nargs=3, metavar=("R", "G", "B"), help="explicit mean, [0, 1] units")
    p.add_argument("--image-std", type=float, nargs=3, metavar=("R", "G", "B"), help="explicit std, [0, 1] units")
    p.set_defaults(func=_import_torch)
    p = sub.add_parser("report", help="write <workdir>/report.md from the ablation tables")
    p.add_argument("--workdir", required=True, help="a run whose ablation/ holds tables")
    p.set_defaults(func=_report)
    p = sub.add_parser("reproduce", help="the main job: both studies end to end, resumable, one report")
    p.add_argument("--preset", choices=tuple(REPRODUCE_PRESETS), default="cpu",
                   help="'cpu' (default: the CPU presets, hours on 2 cores), 'smoke' (tiny data, minutes, for "
                        "checking the plumbing), 'paper-cpu' (classification aiming at the study's accuracy on a CPU), "
                        "'full' (the studies' scale, for an accelerator); what each stage took here is in the README's "
                        "compute lines")
    p.add_argument("--workdir", default="runs/reproduce", help="where every run and the report go "
                                                               "(default runs/reproduce)")
    p.add_argument("--data-root", help="folder with cifar10/, mnist/, acdc_lv_myo/ laid out as in shared/data "
                                       "(default: TFDS where it can download)")
    p.add_argument("--only", help=f"comma-separated stages: {', '.join(STAGES)}")
    p.add_argument("--force-new", action="store_true",
                   help="discard the reproduce run found in the workdir (its runs and report) and start over; with "
                        "--only, discard only what the chosen stages declared (and what the stages made from the "
                        "runs they train and the report declared) and run the chosen stages again")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="training seeds per task (default 1); tables combine them with spreads and decision counts")
    p.add_argument("--results", help="also write the run's tables and a provenance record (command, commit, "
                                     "machine, data digests, stage times) to this folder, e.g. docs/results/NAME")
    _add_allow_dirty(p)
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("results", help="write a workdir's tables and a provenance record to a folder (what the "
                                       "README's results are rendered from)")
    p.add_argument("--workdir", required=True, help="a run, or a reproduce workdir")
    p.add_argument("--out", required=True, help="the results folder, e.g. docs/results/NAME: new, empty, or an "
                                                "earlier export of the same run (replaced); anything else is refused")
    _add_allow_dirty(p)
    p.set_defaults(func=_results)


def _add_allow_dirty(p) -> None:
    p.add_argument("--allow-dirty", action="store_true",
                   help="export even from a checkout with uncommitted changes to tracked code (refused otherwise: "
                        "the record could not name the code); the record and the README block then say so")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-jax", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"resnet-jax {__version__}")
    job = parser.add_argument_group("multi-process jobs (JAX's distributed runtime; or set RESNET_JAX_COORDINATOR, "
                                    "RESNET_JAX_NUM_PROCESSES, RESNET_JAX_PROCESS_ID, RESNET_JAX_DISTRIBUTED)")
    job.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same for every process")
    job.add_argument("--num-processes", type=_positive_int, metavar="N", help="processes in the job")
    job.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0..N-1")
    job.add_argument("--distributed", choices=("auto",),
                     help="'auto': let JAX find the cluster (TPU pod slices, SLURM, Open MPI) on every worker")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile everything afresh instead of reusing programs compiled by earlier runs "
                             "(kept in $RESNET_JAX_COMPILE_CACHE, default ~/.cache/resnet-jax/compiled)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_training_parsers, _ablation_parsers, _interop_and_study_parsers):
        add(sub)
    return parser


def _silence_stderr() -> None:
    """Send what is left of this process's stderr to /dev/null (its error has been printed)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _settle() -> None:
    """Wait for the programs still running on the devices: an interrupt leaves them in flight (dispatch is
    asynchronous), and a process that ends under a running XLA program can crash as it exits (SIGSEGV)."""
    import jax

    for array in jax.live_arrays():
        try:
            array.block_until_ready()
        except Exception:  # noqa: BLE001 - a failed or deleted buffer has nothing left to wait for
            pass


class _Termination:
    """SIGTERM and Ctrl-C (SIGINT) as an interrupt that cannot be lost and cannot crash the process: it is not
    raised where Python would drop it or where JAX cannot be left half-way (`_unsafe_to_raise`), and until `_run`
    has caught one the signal is delivered again: every 50 ms while it is held (a compile-bound command spends
    most of its time where it must wait), each second once raised (a raise that Python dropped comes again,
    and a cleanup that is under way is seldom interrupted twice)."""

    HELD_RETRY_S, RAISED_RETRY_S = 0.05, 1.0

    def __init__(self):
        self.pending = 0  # the signal that came and is not yet caught; 0: none
        self.raised = False  # whether it has been raised since it came
        self.delivering = threading.Lock()  # no delivery again once `handled` has returned

    def __call__(self, signum, frame):
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):  # one is being caught: this delivery (perhaps sent
            return  # before it was) would escape the code that catches it, as Python's own exit on SIGINT (-2)
        if not self.pending:
            self.pending, self.raised = signum, False
            threading.Thread(target=self._again, args=(signum,), daemon=True).start()
        if _unsafe_to_raise(frame):  # the next delivery raises it
            return
        self.raised = True
        raise KeyboardInterrupt(f"signal {signum}")

    def _again(self, signum: int) -> None:
        import time

        main = threading.main_thread().ident
        while True:
            time.sleep(self.RAISED_RETRY_S if self.raised else self.HELD_RETRY_S)
            with self.delivering:  # else a caller that restored the default handler could be killed by it
                if not self.pending:
                    return
                signal.pthread_kill(main, signum)  # delivered as the first was: this handler runs again

    def handled(self) -> int:
        """Mark the interrupt caught; the signal that had come (0: none)."""
        with self.delivering:
            came, self.pending, self.raised = self.pending, 0, False
        return came


def _interrupts() -> list[int]:
    """The signals `_Termination` takes: SIGTERM, and SIGINT unless the process was started with it ignored (a
    job in the background of a shell, or under nohup)."""
    return [signal.SIGTERM] + [signal.SIGINT] * (signal.getsignal(signal.SIGINT) is signal.default_int_handler)


JAX_COMPILER = os.path.join("jax", "_src", "compiler.py")


def _unsafe_to_raise(frame) -> bool:
    """Whether ``frame`` runs where an interrupt must wait: inside a garbage-collector callback or a ``__del__``
    (Python prints the exception and drops it; JAX's ``_xla_gc_callback`` runs at every collection), inside
    JAX's compiler (an executable dropped as it is made crashes the process as it exits, SIGSEGV), or inside code
    that ``eval`` or ``exec`` runs from a string (dataclasses and annotations use them): an interrupt out of one
    marks the interpreter to end as killed by SIGINT even when the command catches it (exit -2, not 143)."""
    import gc

    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    from_string = False  # eval() or exec() of a string runs between here and the command's catch (`_run`)
    while frame is not None:
        code = frame.f_code
        if code in callbacks or code.co_name == "__del__" or code.co_filename.endswith(JAX_COMPILER):
            return True
        if code is _run.__code__ and from_string:
            return True
        from_string |= code.co_filename == "<string>" and code.co_name == "<module>"
        frame = frame.f_back
    return False


_terminated = _Termination()


MULTI_PROCESS = ("train", "train-seg", "evaluate", "ablate", "eliminate", "layers", "presets")
"""Commands that run as one job over several processes (JAX's distributed runtime); the others refuse."""


def _join(args) -> bool:
    """Join a multi-process job when the options (or a launcher's environment variables) ask for one."""
    job = devices.job_options(**{key: getattr(args, key) for key in devices.ENV})
    alone = devices.DistributedError(f"`{args.command}` runs in one process; launch it without --coordinator or "
                                     f"--distributed (commands that run as a multi-process job: "
                                     f"{', '.join(MULTI_PROCESS)})")
    if (job["num_processes"] or 1) > 1 and args.command not in MULTI_PROCESS:
        raise alone
    if not devices.join_job(**job, command=args.command):
        return False
    import jax

    if jax.process_count() > 1 and args.command not in MULTI_PROCESS:  # a cluster that JAX found itself
        devices.leave_job()
        raise alone
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, for provenance records
    try:
        joined = _join(args)
    except (devices.DistributedError, ValueError) as err:
        print(f"resnet-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    previous = {signum: signal.signal(signum, _terminated) for signum in _interrupts()}  # stores stay whole
    try:
        rc = _run(args)
    except Exception as err:
        if joined and _is_collective_failure(err):
            _job_stopped(args.command, err)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if joined and rc == 0:  # every process leaves together, after process 0 has written everything
        import jax

        jax.distributed.shutdown()
    return rc


COLLECTIVE_FAILURES = ("Gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "heartbeat")
"""What a failed collective's error says where JAX raises it as another type (a ``ValueError`` from a program
that an Orbax barrier ran)."""


def _is_collective_failure(err: Exception) -> bool:
    """Whether ``err`` is JAX's runtime failing, or names a failed collective where JAX raised another type."""
    import jax

    return isinstance(err, getattr(jax.errors, "JaxRuntimeError", ())) or \
        any(words in str(err) for words in COLLECTIVE_FAILURES)


def _job_stopped(command: str, err: Exception) -> None:
    """End this process of a job whose collectives failed (most often: another process stopped) with a line that
    says so, in place of a traceback and the C++ abort that JAX's runtime adds as the process exits."""
    cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    print(f"resnet-jax {command}: error: the job stopped: JAX's runtime failed ({cause}); in a job this most "
          f"often means another of its processes stopped (see its log); on every process, {_resume_hint(command)}",
          file=sys.stderr, flush=True)
    os._exit(1)


WRITES_WORKDIR = ("train", "train-seg", "skip-study", "evaluate", "ablate", "eliminate", "verify", "import-torch",
                  "report", "reproduce")
"""Commands that write into their --workdir (eliminate into --out too): each holds it while it runs."""


def _written(args) -> list[Path]:
    if args.command not in WRITES_WORKDIR:
        return []
    return [_workdir(args.workdir)] + ([_workdir(args.out)] if args.command == "eliminate" else [])


def _run(args) -> int:
    from resnet_jax.ablation.networks import ModelError
    from resnet_jax.checkpointing import CheckpointError
    from resnet_jax.data.images import DataError
    from resnet_jax.studies.reproduce import StageError

    try:
        devices.enable_compilation_cache(None if args.no_compile_cache else devices.compilation_cache_dir())
    except OSError as err:
        print(f"resnet-jax: warning: compiling without the cache ({err})", file=sys.stderr)
    try:
        try:
            with contextlib.ExitStack() as held:
                for workdir in _written(args):
                    held.enter_context(ledger.hold(workdir, log=lambda line: print(line, file=sys.stderr, flush=True)))
                rc = args.func(args)
        finally:
            dropped = _terminated.handled()  # an interrupt that came and was dropped, or is being raised now
        if dropped:  # dropped where Python ignores exceptions, and the work finished first
            print(f"resnet-jax {args.command}: terminated (signal {dropped}) as it finished; its results "
                  f"are complete", file=sys.stderr)
            return 128 + dropped
        return rc
    except (configs.ConfigError, DataError, catalogue.SpecError, ModelError, OSError, StageError) as err:
        print(f"resnet-jax {args.command}: error: {err}", file=sys.stderr, flush=True)
        if isinstance(err, CheckpointError):
            _silence_stderr()  # reads the failed restore left in flight fail again as the process ends
        return 2
    except KeyboardInterrupt as stop:
        _terminated.handled()  # in case the interrupt came again while the first was being caught
        _settle()
        print(f"resnet-jax {args.command}: interrupted; {_resume_hint(args.command)}", file=sys.stderr)
        return 143 if str(stop) == f"signal {signal.SIGTERM}" else 130


if __name__ == "__main__":
    sys.exit(main())
