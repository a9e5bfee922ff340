"""The main job: both studies end to end, resumable stage by stage, and one report.

Stages, each in its own sub-workdir of ``<workdir>`` and recorded in ``<workdir>/stages.json`` when
finished (a rerun skips them; an unfinished stage resumes from its own checkpoints or results):

  cifar-train, cifar-ablate   Study A, classification (ResNet34 on CIFAR-10)
  acdc-train,  acdc-ablate    Study A, segmentation (PSPNet-ResNet34 on ACDC), scored by Dice
  skip-study                  Study B on MNIST
  verify                      the classification ablations re-run in PyTorch (needs the torch extra)
  report                      report/report.md and report/index.html
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STAGES = ("cifar-train", "cifar-ablate", "acdc-train", "acdc-ablate", "skip-study", "verify", "report")

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"cifar": "cifar10-resnet34-smoke", "acdc": "acdc-pspnet34-smoke", "skip": "mnist-skip-smoke",
              "ablate_examples": 64, "verify_examples": 64},
    "cpu": {"cifar": "cifar10-resnet34-cpu", "acdc": "acdc-pspnet34-cpu", "skip": "mnist-skip-cpu",
            "ablate_examples": None, "verify_examples": 1000},
    "full": {"cifar": "cifar10-resnet34", "acdc": "acdc-pspnet34", "skip": "mnist-skip",
             "ablate_examples": None, "verify_examples": None},
}

DATASETS = {"cifar": "cifar10", "acdc": "acdc_lv_myo", "skip": "mnist"}


class StageError(ValueError):
    """An unknown preset or stage name."""


def _data_dir(data_root: Path | None, key: str) -> str | None:
    if data_root is None:
        return None
    path = data_root / DATASETS[key]
    return str(path.absolute()) if path.exists() else None


def _record(workdir: Path) -> dict[str, Any]:
    path = workdir / "stages.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _mark_done(workdir: Path, stage: str, seconds: float, info: dict | None = None) -> None:
    record = _record(workdir)
    record[stage] = {"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(info or {})}
    tmp = workdir / "stages.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(workdir / "stages.json")


def stage_runners(preset: dict, workdir: Path, data_root: Path | None, log) -> dict[str, Callable[[], dict]]:
    """One zero-argument function per stage; each resumes its own work when rerun."""
    from resnet_jax import configs, protocols, seg_train, skip_study, train

    cifar, acdc, skip = workdir / "cifar10-resnet34", workdir / "acdc-pspnet34", workdir / "mnist-skip"

    def overrides(key):
        d = _data_dir(data_root, key)
        return [f"data.data_dir={d}"] if d else []

    def cifar_train():
        return train.train_and_evaluate(configs.load_config(preset["cifar"], overrides("cifar")), cifar, log=log)

    def acdc_train():
        return seg_train.train_and_evaluate(seg_train.load_seg_config(preset["acdc"], overrides("acdc")), acdc,
                                            log=log)

    def ablate(run):
        return lambda: {"tables": [str(p) for p in protocols.ablate_workdir(
            run, n_examples=preset["ablate_examples"], log=log)]}

    def skip_run():
        skip_study.run_study(skip_study.load_skip_config(preset["skip"], overrides("skip")), skip, log=log)
        return {}

    def verify():
        try:
            import torch  # noqa: F401
        except ImportError:
            log("NOTICE: torch is not installed, so the PyTorch cross-check is skipped "
                "(pip install 'resnet-jax[torch]' to run it)")
            return {"skipped": "torch not installed"}
        from resnet_jax import verify as verify_lib

        result = verify_lib.verify_workdir(cifar, protocols=list(protocols.PROTOCOLS),
                                           n_examples=preset["verify_examples"])
        return {"ok": bool(result["ok"])}

    def report():
        from resnet_jax import study_report

        return {"report": str(study_report.write_study_report(workdir))}

    return {"cifar-train": cifar_train, "cifar-ablate": ablate(cifar), "acdc-train": acdc_train,
            "acdc-ablate": ablate(acdc), "skip-study": skip_run, "verify": verify, "report": report}


def reproduce(preset_name: str, workdir: str | Path, *, data_root: str | Path | None = None,
              only: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) every stage of a preset; return ``stages.json``'s record."""
    if preset_name not in PRESETS:
        raise StageError(f"unknown preset {preset_name!r}; valid: {list(PRESETS)}")
    chosen = list(only) if only else list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; valid: {list(STAGES)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(data_root) if data_root else None
    runners = stage_runners(PRESETS[preset_name], workdir, root, log)
    started = time.perf_counter()
    for i, stage in enumerate(chosen):
        if stage in _record(workdir) and stage != "report":
            log(f"[{i + 1}/{len(chosen)}] {stage}: done earlier, skipped")
            continue
        log(f"[{i + 1}/{len(chosen)}] {stage} ... (elapsed {time.perf_counter() - started:.0f}s)")
        t0 = time.perf_counter()
        info = runners[stage]() or {}
        info = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, list))}
        _mark_done(workdir, stage, time.perf_counter() - t0, info)
        log(f"[{i + 1}/{len(chosen)}] {stage}: finished in {time.perf_counter() - t0:.0f}s")
    return _record(workdir)
