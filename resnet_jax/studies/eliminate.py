"""``resnet-jax eliminate``: act on an ablation study by removing residual units, and keep the slimmer network.

A greedy backward search (:func:`resnet_jax.ablation.elimination.greedy`) scores, at each step, every remaining
unit jointly with those already removed, all in one engine call on the *validation* split; it stops at the largest
set whose drop stays within ``max_drop``. The slim model (those units as ``relu(x + b)``, exact) becomes a normal
run directory (``evaluate``, ``ablate``, ``export-torch`` and ``report`` work on it); the test split is scored
once, on the result, beside the study's one-shot choice (every individually harmless unit at once), the k units
with the smallest drops alone (k the slim set's size: what the search must beat) and random sets of that size. Optionally the slim model is fine-tuned with the run's recipe.

Every score is kept in ``<out>/elimination/results.jsonl``, keyed by checkpoint, examples and mask, so an
interrupted search resumes where it stopped. The slim run itself (config, exact step 0, fine-tuning) is built by
:mod:`resnet_jax.studies.slim`; its side-by-side comparison with other models is :mod:`resnet_jax.studies.comparison`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import configs, devices, files, ledger, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import elimination as elim
from resnet_jax.ablation import engine, store
from resnet_jax.studies import slim as slim_run
from resnet_jax.training import core, runs

SPLITS = ("val", "test")
def set_scorer(inputs: engine.Inputs, *, results: store.ResultStore, protocol: str,
               chunk: int | None = None) -> elim.Score:
    """Scores of sets of choices on fixed examples: masked models in one engine call, every result stored and
    reused (keyed by content), so a rerun recomputes nothing it finished.

    Masks go through the engine's weights path in padded chunks whose size is a power of two up to ``chunk``, so a
    search compiles a handful of programs (the gate path would compile anew for each step's placement of copies)
    and pads at most half a chunk."""
    layers, metric = inputs.layers, inputs.metric
    size = chunk or engine.chunk_size(len(elim.eliminable_units(layers)), batch_size=inputs.batch_size,
                                      layers=layers, memory_budget_mb=devices.memory_budget_mb())

    def score(sets: Sequence[tuple[elim.Choice, ...]]) -> list[float]:
        ablations = [elim.as_ablation(s, layers) for s in sets]
        done = results.load()
        todo = list({store.ablation_key(a): a for a in ablations
                     if store.ablation_key(a) not in done}.values())
        if todo:
            by_id = {(a.name, a.kind, a.layers): a for a in todo}
            bucket = min(size, 1 << (len(todo) - 1).bit_length())
            engine.evaluate(inputs.model, inputs.variables, todo, layers, inputs.images, inputs.targets,
                            image_mean=inputs.image_mean, image_std=inputs.image_std, metric=metric,
                            batch_size=inputs.batch_size, method="weights", chunk=bucket,
                            on_chunk=lambda rs: results.append(protocol, rs, by_id, metric=metric.name))
            done = results.load()
        return [float(done[store.ablation_key(a)]["value"]) for a in ablations]

    return score


@dataclass(frozen=True)
class Settings:
    """What an elimination is asked to do: kept in ``elimination/request.json`` beside its source, and compared
    with the stored one when a rerun resumes."""

    granularity: str = "unit"
    form: str = "bias"
    max_drop: float = 0.01
    metric_split: str = "val"
    random_draws: int = 5
    finetune_epochs: int = 0
    finetune_lr: float | None = None

    def check(self) -> None:
        if self.metric_split not in SPLITS:
            raise abl.SpecError(f"unknown --metric-split {self.metric_split!r}; valid: {list(SPLITS)}")
        if not 0 <= self.max_drop < 1:
            raise abl.SpecError(f"--max-drop must be in [0, 1), got {self.max_drop}")
        if self.random_draws < 0 or self.finetune_epochs < 0:
            raise abl.SpecError("--random-draws and --finetune-epochs must be >= 0")


def _request(run: core.Run, variables, workdir: Path, settings: Settings) -> dict[str, Any]:
    return {"source": str(Path(workdir).resolve()), "source_checkpoint_sha": store.tree_hash(variables),
            "source_step": int(run.state.step), **dataclasses.asdict(settings)}


def _check_out(out: Path, request: dict, *, force_new: bool) -> None:
    summary = out / "elimination" / "request.json"
    if force_new:
        if files.WRITER:
            core.clear_run(out)
            (out / "config.json").unlink(missing_ok=True)
        devices.barrier("eliminate: --out cleared")
        return
    if (out / "config.json").is_file() and not summary.is_file():
        raise configs.ConfigError(f"{out} holds another run (it has a config.json and no elimination); use another "
                                  f"--out, or pass --force-new to discard that run")
    if summary.is_file():
        old = json.loads(summary.read_text())
        changed = sorted(k for k in set(old) | set(request) if old.get(k) != request.get(k))
        if changed:
            raise configs.ConfigError(f"{out} holds an elimination made with other settings ({changed}); use another "
                                      f"--out, rerun with the same settings to resume, or pass --force-new")


def eliminate_workdir(workdir, out, settings: Settings = Settings(), *, batch_size: int = 128, data_dir=None,
                      force_new: bool = False, force_untrained: bool = False, log=print) -> dict[str, Any]:
    """Search, build, score (and fine-tune) a slim model of the run in ``workdir``; write it as a run in ``out``.
    A run that has learned nothing (:func:`metrics.competence_warning` on the search split) is refused unless
    ``force_untrained``: every unit of such a model looks removable."""
    settings.check()
    if batch_size < 1:
        raise abl.SpecError(f"--batch-size must be >= 1, got {batch_size}")
    workdir, out = Path(workdir), Path(out)
    if workdir.resolve() == out.resolve():
        raise abl.SpecError("--out must be a new directory, not the source run's")
    run = runs.restore(workdir, which="best", data_dir=data_dir, command="eliminate")
    split = _search_split(run, workdir, settings.metric_split)
    variables = jax.device_get(run.state.variables)
    images, targets = run.task.arrays(split)
    layers = abl.catalogue(run.model, variables, input_shape=(1, *images.shape[1:]))
    try:
        options = elim.candidates(layers, granularity=settings.granularity, form=settings.form)
    except ValueError as err:
        raise abl.SpecError(str(err)) from None
    warning = metrics.competence_warning(run.task.metric(run.config),
                                         slim_run.engine_score(run, batch_size=batch_size, split=split)["value"], targets)
    if warning and not force_untrained:  # refused before --out is touched
        raise abl.SpecError(f"{workdir} on its {settings.metric_split} split: {warning}. Pass --force-untrained to "
                            f"eliminate anyway")
    request = _request(run, variables, workdir, settings)
    _check_out(out, request, force_new=force_new)
    ledger.declare(out, "eliminate", ["elimination", "evaluation-before-finetune.json", RANDOM_RUNS])
    files.write_json(out / "elimination" / "request.json", request)
    if warning:
        log(f"WARNING: {warning}")
    found = _search(run, layers, options, settings, source=workdir, out=out, batch_size=batch_size, log=log)
    slim = slim_run.build(run, workdir, out, found, finetune_epochs=settings.finetune_epochs,
                          finetune_lr=settings.finetune_lr, batch_size=batch_size, log=log)
    summary = {**request, "metric": metric_label(run.task.metric(run.config)),
               "split_chose_units": settings.metric_split, **_summary(run, layers, variables, found, slim),
               "checkpoint_choice": run.choice, "warning": warning}
    if settings.finetune_epochs and found["slim_set"]:  # the random sets get the slim model's budget too
        for record, tuned in zip(summary["random"], _finetune_draws(run, workdir, out, found, settings,
                                                                      batch_size=batch_size, log=log)):
            record["finetuned"] = tuned
    files.write_json(out / "elimination" / "summary.json", summary)
    write_path_table(out / "elimination", summary)
    return summary


RANDOM_RUNS = "random"
"""Where the fine-tuned random sets live inside the slim run: ``<out>/random/draw-<i>``, each a normal run."""


def _finetune_draws(run: core.Run, source: Path, out: Path, found: dict, settings: Settings, *, batch_size: int,
                    log) -> list[float]:
    """Each random set built into its own slim run (exact step 0, checked) and fine-tuned like the slim model, so
    that the comparison spends the same budget on both; their test scores."""
    tuned = []
    for i, (draw, value) in enumerate(zip(found["draws"], found["test_draws"])):
        log(f"random set {i + 1} of {len(found['draws'])}: fine-tuning {settings.finetune_epochs} epoch(s)")
        built = slim_run.build(run, source, out / RANDOM_RUNS / f"draw-{i}", {**found, "slim_set": draw,
                               "test_slim": value}, finetune_epochs=settings.finetune_epochs,
                               finetune_lr=settings.finetune_lr, batch_size=batch_size, log=log)
        tuned.append(built["tuned"]["value"])
    return tuned


def _search_split(run: core.Run, workdir: Path, metric_split: str):
    split = run.val if metric_split == "val" else run.test
    if split is None:
        raise abl.SpecError(f"{workdir} has no validation split to search on; retrain with one "
                            f"(data.val_examples) or pass --metric-split test (the test split then chooses "
                            f"the units it scores, and the summary says so)")
    if metric_split == "test" and run.val is not None:
        raise abl.SpecError(f"{workdir} has a validation split: the search scores it (--metric-split val), so that "
                            f"the test split is scored once, at the end")
    return split


def _search(run: core.Run, layers, options, settings: Settings, *, source: Path, out: Path, batch_size: int,
            log) -> dict[str, Any]:
    """The greedy path on the search split, the one-shot set, the k units with the smallest drops alone and
    random sets of the same size; each scored once on the test split (every score stored in ``<out>/elimination/results.jsonl``)."""
    variables, model, metric = jax.device_get(run.state.variables), run.model, run.task.metric(run.config)
    chunk = engine.chunk_size(len(options), batch_size=batch_size, layers=layers,
                              memory_budget_mb=devices.memory_budget_mb())

    def scorer(images, targets, name, protocol):
        results = store.ResultStore(out / "elimination", store.context(variables, images, targets, metric,
                                                                       evaluation={"split": name}))
        inputs = engine.Inputs(model, variables, layers, images, targets, np.asarray(run.state.image_mean),
                               np.asarray(run.state.image_std), metric, batch_size)
        return set_scorer(inputs, protocol=protocol, results=results, chunk=chunk)

    name, (images, targets) = settings.metric_split, run.task.arrays(_search_split(run, source, settings.metric_split))
    on_split = scorer(images, targets, name, f"search-{name}")
    on_test = scorer(*run.task.arrays(run.test), "test", "test")
    baseline = on_split([()])[0]
    log(f"{name} {metric.name} of {source.name}: {baseline:.4f}; {len(options)} options "
        f"({settings.granularity}, {settings.form}); greedy search with max drop {settings.max_drop}")
    path = elim.greedy(options, on_split, baseline=baseline, max_drop=settings.max_drop, on_step=lambda r: log(
        f"step {r['step']}: best next {r['added'].label} -> {r['value']:.4f} (drop {r['drop']:+.4f}) "
        f"{'removed' if r['accepted'] else 'stop'}"))
    slim_set = elim.chosen(path)
    shot = elim.one_shot(path, baseline=baseline, max_drop=settings.max_drop)
    shot_value = on_split([shot])[0]
    smallest = elim.k_smallest(path, len(slim_set))
    draws = elim.random_sets(options, len(slim_set), draws=settings.random_draws, seed=0) if slim_set else []
    test_full, test_slim, test_shot, test_smallest, *test_draws = on_test([(), slim_set, shot, smallest, *draws])
    return {"split": name, "baseline": baseline, "path": path, "slim_set": slim_set, "shot": shot,
            "shot_value": shot_value, "smallest": smallest, "test_smallest": test_smallest, "draws": draws,
            "test_full": test_full, "test_slim": test_slim, "test_shot": test_shot, "test_draws": test_draws,
            "image_shape": images.shape, "layers": layers}


def _summary(run: core.Run, layers, variables, found: dict, slim: dict) -> dict[str, Any]:
    """The elimination's record: the path, the chosen units, and every model's test score and size."""
    split, tuned, slim_set = found["split"], slim["tuned"], found["slim_set"]
    return {
        "baseline": {split: found["baseline"], "test": found["test_full"]},
        "path": [path_row(r, layers, variables, run.model, found["image_shape"]) for r in found["path"]],
        "chosen": [c.label for c in slim_set], "units": [c.unit for c in slim_set],
        "choices": [[c.unit, c.conv] for c in slim_set],
        "one_shot": {"choices": [c.label for c in found["shot"]], split: found["shot_value"], "test": found["test_shot"]},
        "k_smallest": {"choices": [[c.unit, c.conv] for c in found["smallest"]], "test": found["test_smallest"]},
        "slim": {"test_masked": found["test_slim"], "test": slim["test_before"],
                 "params": elim.count_params(slim["variables"]), "conv_macs": elim.conv_macs(slim["layers"])},
        "full": {"params": elim.count_params(variables), "conv_macs": elim.conv_macs(layers), "test": found["test_full"]},
        "finetuned": None if tuned is None else {
            "test": tuned["value"], "step": tuned["step"], "epochs": tuned["epochs"],
            "learning_rate": tuned["learning_rate"],
            "kept": "step 0 (fine-tuning did not improve validation)" if tuned["step"] == 0 else
                    f"step {tuned['step']} (best on validation)"},
        "random": [{"choices": [[c.unit, c.conv] for c in d], "test": v}
                   for d, v in zip(found["draws"], found["test_draws"])],
    }


def metric_label(metric) -> str:
    """The engine metric's name with the classes it scores (segmentation tables lead with myocardium Dice)."""
    classes, names = getattr(metric, "classes", None), getattr(metric, "class_names", None)
    if classes and names and not all(names[c].lower() in metric.name.lower() for c in classes):
        return f"{metric.name} ({', '.join(names[c] for c in classes)})"
    return metric.name


def path_row(record: dict, layers, variables, model, image_shape) -> dict[str, Any]:
    """One step of the path with the slim model's size if the step's set were kept."""
    tried = tuple(record["removed"]) if record["accepted"] else tuple(record["removed"]) + (record["added"],)
    slim = elim.slim_model(model, tried, layers)
    shapes = jax.eval_shape(lambda: slim.init(jax.random.key(0), np.zeros((1, *image_shape[1:]), np.float32)))
    return {"step": record["step"], "added": record["added"].label, "units_removed": len(tried),
            "value": record["value"], "drop": record["drop"], "accepted": record["accepted"],
            "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))),
            "conv_macs": elim.conv_macs(layers, tried)}


def write_path_table(directory: Path, summary: dict) -> None:
    import csv

    if not files.WRITER:
        return
    rows = summary["path"]
    with (directory / "path.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
        writer.writeheader()
        writer.writerows(rows)
    from resnet_jax.reporting import figures

    figures.plot_elimination_path(summary, directory / "path.png")



def format_summary(s: dict) -> str:
    """The closing lines of ``resnet-jax eliminate``."""
    full, slim = s["full"], s["slim"]
    lines = [f"chosen on {s['split_chose_units']} (max drop {s['max_drop']}): removed {len(s['units'])} units "
             f"{s['units']}",
             f"params {full['params']:,} -> {slim['params']:,} ({slim['params'] / full['params']:.3f}x); conv MACs "
             f"{full['conv_macs']:,} -> {slim['conv_macs']:,} ({slim['conv_macs'] / full['conv_macs']:.3f}x)",
             f"test {s['metric']}: full {full['test']:.4f}, slim {slim['test']:.4f}"
             + (f", fine-tuned {s['finetuned']['test']:.4f}" if s["finetuned"] else "")
             + f"; one-shot ({len(s['one_shot']['choices'])} units) {s['one_shot']['test']:.4f}"
             + (f"; the {len(s['units'])} smallest single drops together {s['k_smallest']['test']:.4f}"
                if "k_smallest" in s else "")]
    for key, label in (("test", "random sets"), ("finetuned", "random sets, fine-tuned")):
        values = [r[key] for r in s["random"] if key in r]
        if values:
            lines.append(f"{label} of {len(s['units'])} units ({len(values)} draws): mean {np.mean(values):.4f}, "
                         f"min {min(values):.4f}, max {max(values):.4f}")
    return "\n".join(lines)
