"""The main job: both studies end to end, resumable stage by stage, and one report.

Stages, each in its own sub-workdir of ``<workdir>`` and recorded in the workdir's ledger
(``<workdir>/stages.json``, :mod:`resnet_jax.ledger`) with what it wrote; a rerun skips finished stages, an
unfinished stage resumes from its own checkpoints or results::

  cifar-train, cifar-ablate   Study A, classification (ResNet34 on CIFAR-10)
  cifar-pairs                 every pair of convs of the classification run(s), with interactions
  cifar-eliminate             a slim ResNet34 (greedy elimination on validation, fine-tuned) against the k smallest
                              single drops, random sets, and ResNet18 and the slim architecture from scratch
  readings                    open readings: BatchNorm on batch statistics (every seed), layer1.0.conv1 alone, cuts
  acdc-train,  acdc-ablate    Study A, segmentation (PSPNet-ResNet34 on ACDC), scored by Dice
  acdc-eliminate              the slim PSPNet-ResNet34, scored by Dice (compared with random elimination)
  skip-study                  Study B on MNIST
  verify                      the classification ablations re-run in PyTorch (needs the torch extra)
  report                      report/report.md and report/index.html, with the seeds' combined tables

With ``seeds=N`` every stage but verify and report runs seeds 0..N-1 (seed k > 0 in ``<run>-seed<k>``, combined
tables in ``<run>-seeds``; :mod:`resnet_jax.studies.seeds`); a rerun with more seeds adds the missing.
Usage: ``reproduce("smoke", "runs/smoke", data_root="../shared/data")``, as ``resnet-jax reproduce`` calls it."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_jax import ledger
from resnet_jax.studies.reproduce_presets import PRESETS

STAGES = ("cifar-train", "cifar-ablate", "cifar-pairs", "cifar-eliminate", "acdc-train", "acdc-ablate", "acdc-eliminate",
          "readings", "skip-study", "verify", "report")

DATASETS = {"cifar": "cifar10", "acdc": "acdc_lv_myo", "skip": "mnist"}
NEEDS = {"cifar-train": ("cifar",), "cifar-ablate": ("cifar",), "cifar-pairs": ("cifar",), "cifar-eliminate": ("cifar",),
         "acdc-train": ("acdc",), "acdc-ablate": ("acdc",), "acdc-eliminate": ("acdc",), "skip-study": ("skip",),
         "verify": ("cifar",)}
"""The datasets (keys of DATASETS) each stage reads."""


class StageError(ValueError):
    """An unknown preset or stage, a workdir made by another preset or data, or a stage that failed its check."""


RUN_DIRS = {"cifar": "cifar10-resnet34", "acdc": "acdc-pspnet34", "skip": "mnist-skip"}
SLIM_DIRS = {"cifar": "cifar10-resnet34-slim", "acdc": "acdc-pspnet34-slim"}
RESNET18_DIR = "cifar10-resnet18"
SCRATCH_DIR = "cifar10-resnet34-slim-scratch"


@dataclass(frozen=True)
class Job:
    """What every stage of one ``reproduce`` call reads: the preset's settings, where, from which data."""

    preset: dict[str, Any]
    workdir: Path
    data_root: Path | None
    n_seeds: int
    log: Callable[[str], None]

    def run_dir(self, key: str) -> Path:
        return self.workdir / RUN_DIRS[key]

    def config(self, key: str, overrides: Sequence[str] = ()) -> dict:
        from resnet_jax import configs

        path = self.data_root / DATASETS[key] if self.data_root else None
        data = [f"data.data_dir={path.absolute()}"] if path is not None and path.exists() else []
        return configs.load_config(self.preset[key], [*data, *overrides])


def _train(job: Job, key: str) -> dict:
    """Every seed of one task: a training run, or for Study B ("skip") its whole study."""
    from resnet_jax.studies import seeds
    from resnet_jax.studies import skip as skip_study
    from resnet_jax.training import runs

    for seed, (path, overrides) in enumerate(seeds.each_seed(job.run_dir(key), job.n_seeds)):
        job.log(f"  {key} seed {seed}: {path}")
        train = skip_study.run_study if key == "skip" else runs.train
        train(job.config(key, overrides), path, log=job.log)
    return {"seeds": job.n_seeds}


def _ablate(job: Job, key: str, protocols: Sequence[str] | None = None) -> dict:
    from resnet_jax.studies import ablate, seeds

    request = ablate.Request(protocols=list(protocols) if protocols else None, n_examples=job.preset["ablate_examples"])
    paths = [p for p, _ in seeds.each_seed(job.run_dir(key), job.n_seeds)]
    written = []
    for path in paths[:job.preset["pairs_seeds"] if protocols else None]:
        written += ablate.ablate_workdir(path, request, log=job.log)
    return {"tables": [str(p) for p in written], "seeds": job.n_seeds}


def _readings(job: Job) -> dict:
    """Batch statistics on every seed (the readings are compared over the same seeds); other variants on seed 0."""
    from resnet_jax.ablation.protocols import READINGS, STUDY_PROTOCOLS
    from resnet_jax.studies import ablate, seeds

    trained = lambda run: (run / "config.json").is_file()  # noqa: E731
    if not any(trained(job.run_dir(k)) for k in ("cifar", "acdc")):
        raise StageError("readings: neither task has a trained run yet; run cifar-train or acdc-train first")
    written, n = [], job.preset["ablate_examples"]
    batch = ablate.Request(protocols=STUDY_PROTOCOLS, n_examples=n, batchnorm="batch", whole_batches=True)
    for run in (job.run_dir("cifar"), job.run_dir("acdc")):
        if not trained(run):
            job.log(f"NOTICE: readings: {run.name} has no trained run (stage not run yet); its readings are skipped")
            continue
        written += ablate.ablate_workdir(run, ablate.Request(protocols=READINGS, n_examples=n), log=job.log)
        for path in filter(trained, (p for p, _ in seeds.each_seed(run, job.n_seeds))):
            written += ablate.ablate_workdir(path, batch, log=job.log)
    return {"tables": [str(p) for p in written]}


def _eliminate(job: Job, key: str) -> dict:
    """Per seed: the slim network from that seed's run, its controls (classification), and the comparison."""
    from resnet_jax.studies import comparison, seeds

    units, n = [], job.n_seeds
    for seed, (run, overrides) in enumerate(seeds.each_seed(job.run_dir(key), n)):
        slim = seeds.seed_dir(job.workdir / SLIM_DIRS[key], seed)
        if not (run / "config.json").is_file():
            raise StageError(f"{key}-eliminate: {run.name} has no trained run; run {key}-train first")
        job.log(f"  {key} seed {seed}: {run} -> {slim}")
        controls = functools.partial(_controls, job, key, slim, seed, overrides) if key == "cifar" else None
        summary = comparison.eliminate_and_compare(run, slim, job.preset, controls=controls, log=job.log)
        units.append(summary["units"])
    return {"units_per_seed": units}


def _controls(job: Job, key: str, slim: Path, seed: int, overrides: Sequence[str], summary: dict) -> dict[str, Path]:
    """Seed ``seed``'s separately trained controls, each with that seed for the slim model's whole budget (the run's
    epochs plus fine-tuning): ResNet18 and, when units were removed, the slim architecture from scratch (Liu et
    al. 2019's control for structured pruning)."""
    from resnet_jax.studies import seeds
    from resnet_jax.training import runs

    budget = [f"train.epochs={job.config(key)['train']['epochs'] + job.preset['finetune_epochs']}", *overrides]
    out = {"resnet18": seeds.seed_dir(job.workdir / RESNET18_DIR, seed)}
    runs.train(job.config(key, ["model.name=resnet18", *budget]), out["resnet18"], log=job.log)
    if summary["units"]:
        eliminated = json.dumps(runs.read_config(slim)["model"]["eliminated"])
        out["scratch"] = seeds.seed_dir(job.workdir / SCRATCH_DIR, seed)
        runs.train(job.config(key, [f"model.eliminated={eliminated}", *budget]), out["scratch"], log=job.log)
    return out


def _verify(job: Job) -> dict:
    if importlib.util.find_spec("torch") is None:
        job.log("NOTICE: torch is not installed, so the PyTorch cross-check is skipped "
                "(pip install 'resnet-jax[torch]' to run it)")
        return {"skipped": "torch not installed"}
    from resnet_jax.ablation.protocols import STUDY_PROTOCOLS
    from resnet_jax.interop import verify as verify_lib

    result = verify_lib.verify_workdir(job.run_dir("cifar"), protocols=list(STUDY_PROTOCOLS),
                                       n_examples=job.preset["verify_examples"])
    if not result["ok"]:
        raise StageError(f"verify: JAX and PyTorch disagree beyond tolerance (see {result['csv']}); "
                         f"the stage stays unfinished")
    return {"ok": True}


def _report(job: Job) -> dict:
    from resnet_jax.reporting import study_report
    from resnet_jax.studies import seeds

    for key in ("cifar", "acdc"):
        run = job.run_dir(key)
        present = [p for p, _ in seeds.each_seed(run, job.n_seeds) if (p / "ablation").is_dir()]
        if len(present) > 1:
            seeds.write_combined(present, seeds.combined_dir(run), label=run.name)
    return {"report": str(study_report.write_study_report(job.workdir))}


def stages(job: Job) -> dict[str, ledger.Stage]:
    """Every stage of the main job with the outputs it writes into the workdir and the inputs it depends on."""
    from resnet_jax.studies import seeds

    def per_seed_dirs(name: str) -> list[str]:
        return [seeds.seed_dir(job.workdir / name, k).name for k in range(job.n_seeds)]

    runs = {k: per_seed_dirs(RUN_DIRS[k]) for k in RUN_DIRS}
    per_seed = {"seeds": job.n_seeds}
    # the trained tasks, read when readings starts: a training stage of the same call may add one
    trained = lambda: {"trained": [k for k in ("cifar", "acdc")  # noqa: E731
                                   if (job.run_dir(k) / "config.json").is_file()]}
    return {s.name: s for s in (
        ledger.Stage("cifar-train", lambda: _train(job, "cifar"), runs["cifar"], per_seed),
        ledger.Stage("cifar-ablate", lambda: _ablate(job, "cifar"), (), per_seed),
        ledger.Stage("cifar-pairs", lambda: _ablate(job, "cifar", ["pairs"]), (), per_seed),
        ledger.Stage("cifar-eliminate", lambda: _eliminate(job, "cifar"),
                     [*per_seed_dirs(SLIM_DIRS["cifar"]), *per_seed_dirs(RESNET18_DIR), *per_seed_dirs(SCRATCH_DIR)],
                     per_seed),
        ledger.Stage("acdc-train", lambda: _train(job, "acdc"), runs["acdc"], per_seed),
        ledger.Stage("acdc-ablate", lambda: _ablate(job, "acdc"), (), per_seed),
        ledger.Stage("acdc-eliminate", lambda: _eliminate(job, "acdc"), per_seed_dirs(SLIM_DIRS["acdc"]), per_seed),
        ledger.Stage("readings", lambda: _readings(job), (), trained),
        ledger.Stage("skip-study", lambda: _train(job, "skip"), runs["skip"], per_seed),
        ledger.Stage("verify", lambda: _verify(job)),
        ledger.Stage("report", lambda: _report(job), ("report", *(f"{RUN_DIRS[k]}-seeds" for k in ("cifar", "acdc"))),
                     always=True),
    )}


def _claim(workdir: Path, identity: dict[str, Any], *, force_new: bool, chosen: Sequence[str] = STAGES,
           log: Callable[[str], None] = print) -> None:
    """Record which preset and data root make this workdir. One made by another (or an older resnet-jax) is refused
    unless ``force_new``: then every stage's declared outputs go (on this run the ``chosen`` ones, :func:`_discard`)."""
    try:
        record = ledger.read(workdir)
    except ledger.LedgerError as err:
        if not force_new:
            raise StageError(str(err)) from None
        ledger.discard_unreadable(workdir)
        record = {"run": "discarded", "stages": {"unreadable": {}}}  # cleared as a workdir made before the ledger
    recorded = (workdir / ledger.FILE).is_file()
    old = record.get("run", "unrecorded" if recorded else None)
    if isinstance(old, dict) and old.get("data_root"):  # recorded as typed by older versions
        old = {**old, "data_root": str(Path(old["data_root"]).resolve())}
    if old is None or old == identity:
        if force_new and old is not None:
            _discard(workdir, chosen, log)
        ledger.update(workdir, lambda r: r.update(run=identity))
        return
    if not force_new:
        made_by = (f"preset {old['preset']!r} with data root {old['data_root']}" if isinstance(old, dict)
                   else "an older resnet-jax that did not record its preset")
        raise StageError(f"{workdir} holds a reproduce run of {made_by}, not preset {identity['preset']!r} with data "
                         f"root {identity['data_root']}; rerun with those settings to resume, use another --workdir, "
                         f"or pass --force-new to discard that run")
    if any("outputs" not in entry for entry in record["stages"].values()):  # recorded before stages declared outputs
        legacy = [*RUN_DIRS.values(), *SLIM_DIRS.values(), RESNET18_DIR, "report", "seeds"]
        legacy += [p.name for sub in RUN_DIRS.values() for p in workdir.glob(f"{sub}-seed*")]
        ledger.update(workdir, lambda r: r.update(stages={"legacy": {"outputs": legacy}}))
    ledger.clear(workdir)
    ledger.update(workdir, lambda r: r.update(run=identity))


def _discard(workdir: Path, chosen: Sequence[str], log: Callable[[str], None]) -> None:
    """``--force-new`` on the run the workdir holds: the chosen stages, those that read a run they train, and the
    report lose their declared outputs and records (nothing undeclared goes); each runs again when chosen."""
    retrained = {key for name in chosen if name.endswith("-train") for key in NEEDS[name]}
    doomed = [s for s in STAGES if s in chosen or s == "report" or retrained & set(NEEDS.get(s, ()))
              or (retrained and s == "readings")]  # readings reads every trained run
    removed = ledger.clear(workdir, stages=doomed)
    log(f"--force-new: discarded {', '.join(removed) or 'no files'}; starting over: {', '.join(doomed)}")


def _check_data_root(data_root: str | Path | None, chosen: Sequence[str]) -> Path | None:
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
    return root


def reproduce(preset_name: str, workdir: str | Path, *, data_root: str | Path | None = None,
              only: Sequence[str] | None = None, force_new: bool = False, seeds: int = 1,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) every stage of a preset with ``seeds`` training seeds; return the workdir's ledger.

    The workdir records the preset and data root that made it; another is refused unless ``force_new``, which
    discards that run (on this run: what the chosen stages made, :func:`_discard`). A stage that raises is not done.
    """
    if seeds < 1:
        raise StageError(f"--seeds must be a positive number of training seeds, got {seeds}")
    if preset_name not in PRESETS:
        raise StageError(f"unknown preset {preset_name!r}; valid: {list(PRESETS)}")
    chosen = list(dict.fromkeys(only)) if only else list(STAGES)  # a stage named twice runs once
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; valid: {list(STAGES)}")
    root = _check_data_root(data_root, chosen)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _claim(workdir, {"preset": preset_name, "data_root": str(root) if root else None}, force_new=force_new,
           chosen=chosen, log=log)
    declared = stages(Job(PRESETS[preset_name], workdir, root, seeds, log))
    for i, name in enumerate(chosen):
        ledger.run(workdir, declared[name], log, label=f"[{i + 1}/{len(chosen)}] ")
    return ledger.read(workdir)
