"""The main job: both studies end to end, resumable stage by stage, and one report.

Stages, each in its own sub-workdir of ``<workdir>`` and recorded in ``<workdir>/stages.json`` when
finished (a rerun skips them; an unfinished stage resumes from its own checkpoints or results):

  cifar-train, cifar-ablate   Study A, classification (ResNet34 on CIFAR-10)
  cifar-pairs                 every pair of convs of the classification run(s), with interactions
  cifar-eliminate             act on the findings: a slim ResNet34 (greedy elimination on validation, fine-tuned),
                              compared with ResNet18 trained with the same recipe and random elimination
  readings                    the study's open readings on seed 0 of both tasks: BatchNorm on batch statistics,
                              stage 1's adjacency as layer1.0.conv1 alone, identity-shortcut cuts
  acdc-train,  acdc-ablate    Study A, segmentation (PSPNet-ResNet34 on ACDC), scored by Dice
  acdc-eliminate              the slim PSPNet-ResNet34, scored by Dice (compared with random elimination)
  skip-study                  Study B on MNIST
  verify                      the classification ablations re-run in PyTorch (needs the torch extra)
  report                      report/report.md and report/index.html, with the seeds' combined tables

With ``seeds=N`` the train and ablate stages run seeds 0..N-1 (seed k > 0 in ``<run>-seed<k>``, see
:mod:`resnet_jax.studies.seeds`); a rerun with more seeds adds the missing ones.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from resnet_jax import files

STAGES = ("cifar-train", "cifar-ablate", "cifar-pairs", "cifar-eliminate", "acdc-train", "acdc-ablate", "acdc-eliminate",
          "readings", "skip-study", "verify", "report")
SEEDED = ("cifar-train", "cifar-ablate", "cifar-pairs", "acdc-train", "acdc-ablate")
"""Stages that run once per seed."""

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"cifar": "cifar10-resnet34-smoke", "acdc": "acdc-pspnet34-smoke", "skip": "mnist-skip-smoke",
              "ablate_examples": 64, "verify_examples": 64, "pairs_seeds": 1, "finetune_epochs": 1,
              "random_draws": 2, "timing_repeats": 1, "force_untrained": True},  # tiny models learn little
    "cpu": {"cifar": "cifar10-resnet34-cpu", "acdc": "acdc-pspnet34-cpu", "skip": "mnist-skip-cpu",
            "ablate_examples": None, "verify_examples": 1000, "pairs_seeds": 1, "finetune_epochs": 2,
            "random_draws": 5, "timing_repeats": 3},
    "full": {"cifar": "cifar10-resnet34", "acdc": "acdc-pspnet34", "skip": "mnist-skip",
             "ablate_examples": None, "verify_examples": None, "pairs_seeds": 1, "finetune_epochs": 10,
             "random_draws": 5, "timing_repeats": 3},
}

DATASETS = {"cifar": "cifar10", "acdc": "acdc_lv_myo", "skip": "mnist"}
NEEDS = {"cifar-train": ("cifar",), "cifar-ablate": ("cifar",), "cifar-pairs": ("cifar",), "cifar-eliminate": ("cifar",),
         "acdc-train": ("acdc",), "acdc-ablate": ("acdc",), "acdc-eliminate": ("acdc",), "skip-study": ("skip",),
         "verify": ("cifar",)}
"""The datasets (keys of DATASETS) each stage reads."""


class StageError(ValueError):
    """An unknown preset or stage, a workdir made by another preset or data, or a stage that failed its check."""


def _data_dir(data_root: Path | None, key: str) -> str | None:
    if data_root is None:
        return None
    path = data_root / DATASETS[key]
    return str(path.absolute()) if path.exists() else None


def _record(workdir: Path) -> dict[str, Any]:
    path = workdir / "stages.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise StageError(f"{path} is not valid JSON ({err}); pass --force-new to start over") from None


def _write_record(workdir: Path, record: dict[str, Any]) -> None:
    files.write_json(workdir / "stages.json", record)


def _mark_done(workdir: Path, stage: str, seconds: float, info: dict | None = None) -> None:
    record = _record(workdir)
    record.setdefault("stages", {})[stage] = {"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              **(info or {})}
    _write_record(workdir, record)


def _claim(workdir: Path, identity: dict[str, Any], *, force_new: bool) -> None:
    """Record which preset and data root make this workdir. A workdir recorded as made by another (or by an
    older resnet-jax that recorded none) is refused, unless ``force_new``: then its runs and report are
    removed first. Nothing is removed from a workdir that records no run."""
    path = workdir / "stages.json"
    record = _record(workdir) if not (force_new and path.is_file()) else {"run": "discarded"}
    old = record.get("run")
    if isinstance(old, dict) and old.get("data_root"):  # recorded as typed by older versions
        old = {**old, "data_root": str(Path(old["data_root"]).resolve())}
    if not path.is_file() or old == identity:
        if not path.is_file():
            _write_record(workdir, {"run": identity, "stages": {}})
        return
    if not force_new:
        made_by = (f"preset {old['preset']!r} with data root {old['data_root']}" if isinstance(old, dict)
                   else "an older resnet-jax that did not record its preset")
        raise StageError(f"{workdir} holds a reproduce run of {made_by}, not preset {identity['preset']!r} with data "
                         f"root {identity['data_root']}; rerun with those settings to resume, use another --workdir, "
                         f"or pass --force-new to discard that run")
    for sub in (*RUN_DIRS.values(), *SLIM_DIRS.values(), RESNET18_DIR, "report", "seeds"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
        for extra in workdir.glob(f"{sub}-seed*"):
            shutil.rmtree(extra, ignore_errors=True)
    _write_record(workdir, {"run": identity, "stages": {}})


RUN_DIRS = {"cifar": "cifar10-resnet34", "acdc": "acdc-pspnet34", "skip": "mnist-skip"}
SLIM_DIRS = {"cifar": "cifar10-resnet34-slim", "acdc": "acdc-pspnet34-slim"}
RESNET18_DIR = "cifar10-resnet18"


def stage_runners(preset: dict, workdir: Path, data_root: Path | None, log, *,
                  n_seeds: int = 1) -> dict[str, Callable[[], dict]]:
    """One zero-argument function per stage; each resumes its own work when rerun."""
    from resnet_jax import configs
    from resnet_jax.studies import ablate, seeds, skip_study
    from resnet_jax.training import runs

    cifar, acdc, skip = (workdir / RUN_DIRS[k] for k in ("cifar", "acdc", "skip"))

    def overrides(key):
        d = _data_dir(data_root, key)
        return [f"data.data_dir={d}"] if d else []

    def train(key, run):
        def every_seed():
            for seed, path in enumerate(seeds.seed_dirs(run, n_seeds)):
                log(f"  {key} seed {seed}: {path}")
                runs.train(configs.load_config(preset[key], overrides(key) + seeds.seed_overrides(seed)), path, log=log)
            return {"seeds": n_seeds}
        return every_seed

    def ablate_run(run, protocols=None):
        chosen = {"protocols": protocols} if protocols else {}

        def every_seed():
            written = []
            for path in seeds.seed_dirs(run, n_seeds)[:preset["pairs_seeds"] if protocols else None]:
                written += ablate.ablate_workdir(path, n_examples=preset["ablate_examples"], log=log, **chosen)
            return {"tables": [str(p) for p in written], "seeds": n_seeds}
        return every_seed

    def readings():
        from resnet_jax.ablation.protocols import READINGS, STUDY_PROTOCOLS

        written, present = [], [r for r in (cifar, acdc) if (r / "config.json").is_file()]
        if not present:
            raise StageError("readings: neither task has a trained run yet; run cifar-train or acdc-train first")
        for run in (cifar, acdc):
            if run not in present:
                log(f"NOTICE: readings: {run.name} has no trained run (stage not run yet); its readings are skipped")
                continue
            written += ablate.ablate_workdir(run, protocols=READINGS, n_examples=preset["ablate_examples"], log=log)
            written += ablate.ablate_workdir(run, protocols=STUDY_PROTOCOLS, n_examples=preset["ablate_examples"],
                                             batchnorm="batch", whole_batches=True, log=log)
        return {"tables": [str(p) for p in written]}

    def eliminate_run(key, run):
        from resnet_jax.studies import eliminate

        def stage():
            if not (run / "config.json").is_file():
                raise StageError(f"{key}-eliminate: {run.name} has no trained run; run {key}-train first")
            other = None
            if key == "cifar":  # the comparison a user asks for: a smaller standard network, same recipe and budget
                other = workdir / RESNET18_DIR
                runs.train(configs.load_config(preset[key], overrides(key) + ["model.name=resnet18"]), other, log=log)
            slim = workdir / SLIM_DIRS[key]
            summary = eliminate.eliminate_workdir(run, slim, finetune_epochs=preset["finetune_epochs"],
                                                  random_draws=preset["random_draws"], log=log,
                                                  force_untrained=preset.get("force_untrained", False))
            log(eliminate.format_summary(summary))
            result = eliminate.compare(run, slim, resnet18_dir=other, repeats=preset["timing_repeats"], log=log)
            log(eliminate.format_comparison(result))
            eliminate.write_comparison(slim, result)
            return {"units": summary["units"]}
        return stage

    def skip_run():
        skip_study.run_study(configs.load_config(preset["skip"], overrides("skip")), skip, log=log)
        return {}

    def verify():
        if importlib.util.find_spec("torch") is None:
            log("NOTICE: torch is not installed, so the PyTorch cross-check is skipped "
                "(pip install 'resnet-jax[torch]' to run it)")
            return {"skipped": "torch not installed"}
        from resnet_jax.ablation.protocols import STUDY_PROTOCOLS
        from resnet_jax.interop import verify as verify_lib

        result = verify_lib.verify_workdir(cifar, protocols=list(STUDY_PROTOCOLS), n_examples=preset["verify_examples"])
        if not result["ok"]:
            raise StageError(f"verify: JAX and PyTorch disagree beyond tolerance (see {result['csv']}); "
                             f"the stage stays unfinished")
        return {"ok": True}

    def report():
        from resnet_jax.reporting import study_report

        for run in (cifar, acdc):
            present = [p for p in seeds.seed_dirs(run, n_seeds) if (p / "ablation").is_dir()]
            if len(present) > 1:
                seeds.write_combined(present, workdir / "seeds" / run.name, label=run.name)
        return {"report": str(study_report.write_study_report(workdir))}

    return {"cifar-train": train("cifar", cifar), "cifar-ablate": ablate_run(cifar),
            "cifar-pairs": ablate_run(cifar, ["pairs"]), "cifar-eliminate": eliminate_run("cifar", cifar),
            "acdc-train": train("acdc", acdc), "acdc-ablate": ablate_run(acdc),
            "acdc-eliminate": eliminate_run("acdc", acdc), "readings": readings, "skip-study": skip_run, "verify": verify,
            "report": report}


def reproduce(preset_name: str, workdir: str | Path, *, data_root: str | Path | None = None,
              only: Sequence[str] | None = None, force_new: bool = False, seeds: int = 1,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) every stage of a preset with ``seeds`` training seeds; return ``stages.json``'s record.

    The workdir records the preset and data root that made it; another preset or data root is refused
    (``force_new`` starts over). A stage that raises is not marked done.
    """
    if seeds < 1:
        raise StageError(f"--seeds must be a positive number of training seeds, got {seeds}")
    if preset_name not in PRESETS:
        raise StageError(f"unknown preset {preset_name!r}; valid: {list(PRESETS)}")
    chosen = list(dict.fromkeys(only)) if only else list(STAGES)  # a stage named twice runs once
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; valid: {list(STAGES)}")
    root = Path(data_root).resolve() if data_root else None  # one spelling per folder
    if root is not None and not root.is_dir():
        raise StageError(f"--data-root {data_root} is not a directory; give the folder that holds "
                         f"{', '.join(DATASETS.values())} (e.g. ../shared/data), or leave it out to use TFDS")
    missing = sorted({DATASETS[key] for stage in chosen for key in NEEDS.get(stage, ())
                      if root is not None and not (root / DATASETS[key]).is_dir()})
    if missing:
        raise StageError(f"--data-root {root} lacks {', '.join(f'{m}/' for m in missing)}, which the chosen stages "
                         f"read; add them (laid out as in ../shared/data), choose other stages with --only, or "
                         f"leave --data-root out to download them with TFDS")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _claim(workdir, {"preset": preset_name, "data_root": str(root) if root else None}, force_new=force_new)
    runners = stage_runners(PRESETS[preset_name], workdir, root, log, n_seeds=seeds)
    started = time.perf_counter()
    for i, stage in enumerate(chosen):
        done = _record(workdir)["stages"].get(stage)
        if done is not None and stage != "report" and (stage not in SEEDED or done.get("seeds", 1) >= seeds):
            log(f"[{i + 1}/{len(chosen)}] {stage}: done earlier, skipped (preset {preset_name})")
            continue
        log(f"[{i + 1}/{len(chosen)}] {stage} ... (elapsed {time.perf_counter() - started:.0f}s)")
        t0 = time.perf_counter()
        info = runners[stage]() or {}
        info = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, list))}
        _mark_done(workdir, stage, time.perf_counter() - t0, info)
        log(f"[{i + 1}/{len(chosen)}] {stage}: finished in {time.perf_counter() - t0:.0f}s")
    return _record(workdir)
