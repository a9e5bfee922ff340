"""``resnet-jax eliminate``: act on an ablation study by removing residual units, and keep the slimmer network.

A greedy backward search (:func:`resnet_jax.ablation.elimination.greedy`) scores, at each step, every remaining
unit jointly with those already removed, all in one engine call on the *validation* split; it stops at the largest
set whose drop stays within ``max_drop``. The slim model (those units as ``relu(x + b)``, exact) becomes a normal
run directory (``evaluate``, ``ablate``, ``export-torch`` and ``report`` work on it); the test split is scored
once, on the result, beside the study's one-shot choice (every individually harmless unit at once) and random
sets of the same size. Optionally the slim model is fine-tuned with the run's recipe.

Every score is kept in ``<out>/elimination/results.jsonl``, keyed by checkpoint, examples and mask, so an
interrupted search resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import checkpointing, configs, devices, files, ledger, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import elimination as elim
from resnet_jax.ablation import engine, statistics, store
from resnet_jax.training import core, runs

SPLITS = ("val", "test")
EXACT_TOLERANCE = 2e-3
"""How far the slim model's test score may sit from the masked model's: exact on CPUs in float32 (tested); on
accelerators the bias is computed by another program than the sweep, and rounding may flip an example whose top
two logits tie. A wrong bias moves the score far more."""
FINETUNE_LR_FACTOR = 0.1
"""Fine-tuning starts at this fraction of the run's peak learning rate (no warm-up; cosine to zero)."""


def set_scorer(model, variables, layers, images, targets, *, metric, image_mean, image_std, batch_size: int,
               results: store.ResultStore, protocol: str, chunk: int | None = None) -> elim.Score:
    """Scores of sets of choices on fixed examples: masked models in one engine call, every result stored and
    reused (keyed by content), so a rerun recomputes nothing it finished.

    Masks go through the engine's weights path in padded chunks whose size is a power of two up to ``chunk``, so a
    search compiles a handful of programs (the gate path would compile anew for each step's placement of copies)
    and pads at most half a chunk."""
    size = chunk or engine.chunk_size(len(elim.eliminable_units(layers)), batch_size=batch_size, layers=layers,
                                      memory_budget_mb=devices.memory_budget_mb())

    def score(sets: Sequence[tuple[elim.Choice, ...]]) -> list[float]:
        ablations = [elim.as_ablation(s, layers) for s in sets]
        done = results.load()
        todo = list({store.ablation_key(a): a for a in ablations
                     if store.ablation_key(a) not in done}.values())
        if todo:
            by_id = {(a.name, a.kind, a.layers): a for a in todo}
            bucket = min(size, 1 << (len(todo) - 1).bit_length())
            engine.evaluate(model, variables, todo, layers, images, targets, image_mean=image_mean,
                            image_std=image_std, metric=metric, batch_size=batch_size, method="weights", chunk=bucket,
                            on_chunk=lambda rs: results.append(protocol, rs, by_id, metric=metric.name))
            done = results.load()
        return [float(done[store.ablation_key(a)]["value"]) for a in ablations]

    return score


def _request(run: core.Run, variables, **settings) -> dict[str, Any]:
    return {"source": str(Path(settings.pop("workdir")).resolve()), "source_checkpoint_sha": store.tree_hash(variables),
            "source_step": int(run.state.step), **settings}


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


def slim_config(config: dict, eliminated: Sequence[tuple[str, str]], *, source: str, finetune_epochs: int,
                finetune_lr: float | None) -> dict:
    """The slim run's config: the source's, with the eliminated units and a short fine-tuning recipe."""
    t = config["train"]
    return {**config, "about": f"slim model eliminated from {source}",
            "model": {**config["model"], "eliminated": [list(p) for p in eliminated]},
            "train": {**t, "epochs": max(1, finetune_epochs), "warmup_epochs": 0.0,
                      "learning_rate": finetune_lr or t["learning_rate"] * FINETUNE_LR_FACTOR}}


def _save_start(out: Path, config: dict, model, variables, run: core.Run, *, ranking: str, source: Path,
                source_params) -> None:
    """Checkpoint step 0 of the slim run: the slim variables (fine-tuning resumes from it), ranked by the same
    metric and split as the fine-tuning epochs that may follow it; and the slim run's initial parameters (the
    source run's, pruned; see :func:`elimination.slim_initial`), so ``reinit`` resets kernels to their init."""
    if not (out / "initial_params").exists() and (Path(source) / "initial_params").exists():
        full = checkpointing.load_initial(source, source_params)
        checkpointing.save_initial(out, elim.slim_initial(full, variables["params"]))
    mngr = checkpointing.manager(out, keep=config["train"]["keep_checkpoints"], best_metric=ranking)
    if mngr.latest_step() is not None:
        return
    image_shape = run.task.arrays(run.test)[0].shape[1:]
    # The optimizer's schedule is rebuilt from the config when training resumes; only its structure is saved here.
    state = core.create_train_state(model, core.make_optimizer(config, 1), image_shape, seed=config["train"]["seed"],
                                    mean=np.asarray(run.state.image_mean), std=np.asarray(run.state.image_std))
    state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    mesh = devices.data_mesh()
    split, prefix = (run.val, "val_") if ranking.startswith("val_") else (run.test, "test_")
    scores = run.task.evaluate(config, model)(devices.replicate(mesh, state), split, mesh, prefix)
    checkpointing.save(mngr, 0, state, metrics={ranking: scores[ranking]})


def eliminate_workdir(workdir, out, *, granularity: str = "unit", form: str = "bias", max_drop: float = 0.01,
                      metric_split: str = "val", finetune_epochs: int = 0, finetune_lr: float | None = None,
                      random_draws: int = 5, batch_size: int = 128, data_dir=None, force_new: bool = False,
                      force_untrained: bool = False, log=print) -> dict[str, Any]:
    """Search, build, score (and fine-tune) a slim model of the run in ``workdir``; write it as a run in ``out``.
    A run that has learned nothing (:func:`metrics.competence_warning` on the search split) is refused unless
    ``force_untrained``: every unit of such a model looks removable."""
    if metric_split not in SPLITS:
        raise abl.SpecError(f"unknown --metric-split {metric_split!r}; valid: {list(SPLITS)}")
    if not 0 <= max_drop < 1:
        raise abl.SpecError(f"--max-drop must be in [0, 1), got {max_drop}")
    if random_draws < 0 or finetune_epochs < 0 or batch_size < 1:
        raise abl.SpecError("--random-draws and --finetune-epochs must be >= 0 and --batch-size >= 1")
    workdir, out = Path(workdir), Path(out)
    if workdir.resolve() == out.resolve():
        raise abl.SpecError("--out must be a new directory, not the source run's")
    run = runs.restore(workdir, which="best", data_dir=data_dir, command="eliminate")
    split = run.val if metric_split == "val" else run.test
    if split is None:
        raise abl.SpecError(f"{workdir} has no validation split to search on; retrain with one "
                            f"(data.val_examples) or pass --metric-split test (the test split then chooses "
                            f"the units it scores, and the summary says so)")
    if metric_split == "test" and run.val is not None:
        raise abl.SpecError(f"{workdir} has a validation split: the search scores it (--metric-split val), so that "
                            f"the test split is scored once, at the end")
    variables, model, task = jax.device_get(run.state.variables), run.model, run.task
    images, targets = task.arrays(split)
    test_images, test_targets = task.arrays(run.test)
    layers = abl.catalogue(model, variables, input_shape=(1, *images.shape[1:]))
    try:
        options = elim.candidates(layers, granularity=granularity, form=form)
    except ValueError as err:
        raise abl.SpecError(str(err)) from None
    metric = task.metric(run.config)
    warning = metrics.competence_warning(metric, _engine_score(run, batch_size=batch_size, split=split)["value"],
                                         targets)
    if warning and not force_untrained:  # refused before --out is touched
        raise abl.SpecError(f"{workdir} on its {metric_split} split: {warning}. Pass --force-untrained to "
                            f"eliminate anyway")
    request = _request(run, variables, workdir=workdir, granularity=granularity, form=form, max_drop=max_drop,
                       metric_split=metric_split, random_draws=random_draws, finetune_epochs=finetune_epochs,
                       finetune_lr=finetune_lr)
    _check_out(out, request, force_new=force_new)
    ledger.declare(out, "eliminate", ["elimination", "evaluation-before-finetune.json"])
    files.write_json(out / "elimination" / "request.json", request)
    chunk = engine.chunk_size(len(options), batch_size=batch_size, layers=layers,
                              memory_budget_mb=devices.memory_budget_mb())
    kwargs = dict(metric=metric, image_mean=np.asarray(run.state.image_mean), chunk=chunk,
                  image_std=np.asarray(run.state.image_std), batch_size=batch_size)
    results_dir = out / "elimination"
    on_split = set_scorer(model, variables, layers, images, targets, protocol=f"search-{metric_split}",
                          results=store.ResultStore(results_dir, store.context(
                              variables, images, targets, metric, evaluation={"split": metric_split})), **kwargs)
    on_test = set_scorer(model, variables, layers, test_images, test_targets, protocol="test",
                         results=store.ResultStore(results_dir, store.context(
                             variables, test_images, test_targets, metric, evaluation={"split": "test"})), **kwargs)

    baseline = on_split([()])[0]
    if warning:
        log(f"WARNING: {warning}")
    log(f"{metric_split} {metric.name} of {workdir.name}: {baseline:.4f}; {len(options)} options "
        f"({granularity}, {form}); greedy search with max drop {max_drop}")
    path = elim.greedy(options, on_split, baseline=baseline, max_drop=max_drop, on_step=lambda r: log(
        f"step {r['step']}: best next {r['added'].label} -> {r['value']:.4f} (drop {r['drop']:+.4f}) "
        f"{'removed' if r['accepted'] else 'stop'}"))
    slim_set = elim.chosen(path)
    shot = elim.one_shot(path, baseline=baseline, max_drop=max_drop)
    shot_value = on_split([shot])[0]
    draws = elim.random_sets(options, len(slim_set), draws=random_draws, seed=0) if slim_set else []
    test_full, test_slim, test_shot, *test_draws = on_test([(), slim_set, shot, *draws])

    smodel = elim.slim_model(model, slim_set, layers)
    svars = elim.slim_variables(model, variables, slim_set, layers, input_shape=(1, *images.shape[1:]))
    slayers = abl.catalogue(smodel, svars, input_shape=(1, *images.shape[1:]))
    earlier = tuple(tuple(p) for p in run.config["model"]["eliminated"])  # a slim source keeps its eliminations
    config = slim_config(run.config, earlier + elim.eliminated(slim_set, layers), source=str(workdir),
                         finetune_epochs=finetune_epochs, finetune_lr=finetune_lr)
    core.prepare_workdir(config, out, force_new=False)
    ranking = core.ranking_metric(task, core.Splits(None, run.val, run.test))
    _save_start(out, config, smodel, svars, run, ranking=ranking, source=workdir, source_params=variables["params"])
    # Every test score below is the engine's (the metric the search used), on the slim run as restored from disk.
    before = _before_finetune(out, config, batch_size)
    test_before = before["engine_value"]
    if abs(test_slim - test_before) > EXACT_TOLERANCE:
        raise AssertionError(f"the slim model scores {test_before} where the masked model scores {test_slim}: the "
                             f"elimination is not exact")
    if finetune_epochs and not slim_set:
        log("nothing was removed, so there is nothing to fine-tune: the slim run is the full network")
    if finetune_epochs and slim_set:
        runs.train(config, out, log=log)
        tuned = score_run(out, batch_size=batch_size)
    else:
        core.write_evaluation(out, {k: v for k, v in before.items() if k.startswith("test_")}, step=0,
                              which="best", n_examples=len(run.test), log=log)
    summary = {
        **request, "metric": metric_label(metric), "split_chose_units": metric_split,
        "baseline": {metric_split: baseline, "test": test_full},
        "path": [path_row(r, layers, variables, model, images.shape) for r in path],
        "chosen": [c.label for c in slim_set], "units": [c.unit for c in slim_set],
        "choices": [[c.unit, c.conv] for c in slim_set],
        "one_shot": {"choices": [c.label for c in shot], metric_split: shot_value, "test": test_shot},
        "slim": {"test_masked": test_slim, "test": test_before, "params": elim.count_params(svars),
                 "conv_macs": elim.conv_macs(slayers)},
        "full": {"params": elim.count_params(variables), "conv_macs": elim.conv_macs(layers), "test": test_full},
        "finetuned": None if not (finetune_epochs and slim_set) else {
            "test": tuned["value"], "step": tuned["step"], "epochs": finetune_epochs,
            "learning_rate": config["train"]["learning_rate"],
            "kept": "step 0 (fine-tuning did not improve validation)" if tuned["step"] == 0 else
                    f"step {tuned['step']} (best on validation)"},
        "random": [{"choices": [[c.unit, c.conv] for c in d], "test": v} for d, v in zip(draws, test_draws)],
        "checkpoint_choice": run.choice, "warning": warning,
    }
    files.write_json(out / "elimination" / "summary.json", summary)
    write_path_table(out / "elimination", summary)
    return summary


def metric_label(metric) -> str:
    """The engine metric's name with the classes it scores (segmentation tables lead with myocardium Dice)."""
    classes, names = getattr(metric, "classes", None), getattr(metric, "class_names", None)
    if classes and names and not all(names[c].lower() in metric.name.lower() for c in classes):
        return f"{metric.name} ({', '.join(names[c] for c in classes)})"
    return metric.name


def score_run(workdir, *, which: str = "best", batch_size: int = 128) -> dict[str, Any]:
    """A run's test score by the ablation engine's metric (the unablated model), so slim, full and other models
    are compared on one measure."""
    return _engine_score(runs.restore(workdir, which=which, command="eliminate"), batch_size=batch_size)


def _engine_score(run: core.Run, *, batch_size: int, split=None) -> dict[str, Any]:
    """The unablated model's score by the engine's metric on ``split`` (default: the test split)."""
    from resnet_jax.ablation.protocols import BASELINE

    variables = jax.device_get(run.state.variables)
    images, targets = run.task.arrays(run.test if split is None else split)
    layers = abl.catalogue(run.model, variables, input_shape=(1, *images.shape[1:]))
    result = engine.evaluate(run.model, variables, [BASELINE], layers, images, targets,
                             image_mean=np.asarray(run.state.image_mean), image_std=np.asarray(run.state.image_std),
                             metric=run.task.metric(run.config), batch_size=batch_size, progress=False)[0]
    return {"value": float(result.value), "step": int(run.state.step)}


def _before_finetune(out: Path, config: dict, batch_size: int) -> dict[str, Any]:
    """The slim model's test scores at step 0 (before fine-tuning), kept in ``evaluation-before-finetune.json``:
    fine-tuning may rotate that checkpoint out, and a resumed run must not score a fine-tuned one in its place.
    The step is restored from disk once and scored by the task's evaluation (every column) and by the engine
    (the search's metric, ``engine_value``). Every process of a job decides on the same file, then reads it only
    where none was scored now (process 0 alone writes it)."""
    path = out / "evaluation-before-finetune.json"
    exists = path.is_file()
    devices.barrier("eliminate: every process has looked for the step-0 scores")
    if exists:
        return json.loads(path.read_text())
    slim = runs.restore(out, which="latest", data_dir=config["data"]["data_dir"], command="eliminate")
    mesh = devices.data_mesh()
    columns = slim.task.evaluate(config, slim.model)(devices.replicate(mesh, slim.state), slim.test, mesh, "test_")
    record = {"checkpoint": "step 0 (before fine-tuning)", "step": 0, **columns,
              "engine_value": _engine_score(slim, batch_size=batch_size)["value"]}
    files.write_json(path, record)
    return record


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
             + f"; one-shot ({len(s['one_shot']['choices'])} units) {s['one_shot']['test']:.4f}"]
    if s["random"]:
        values = [r["test"] for r in s["random"]]
        lines.append(f"random sets of {len(s['units'])} units ({len(values)} draws): mean {np.mean(values):.4f}, "
                     f"min {min(values):.4f}, max {max(values):.4f}")
    return "\n".join(lines)


# Side-by-side comparison (benchmarks/elimination.py and the reproduce stage) ----------------------------------

def _programs(config, task, model, variables, mean, std, images, targets):
    """Jitted eval forward and train step of one model on one fixed batch."""
    import jax.numpy as jnp

    from resnet_jax.data.inputs import normalize

    state = core.create_train_state(model, core.make_optimizer(config, 100), images.shape[1:], seed=0,
                                    mean=mean, std=std)
    state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
    images, targets = jnp.asarray(images), jnp.asarray(targets)
    forward = jax.jit(lambda s: s.apply_fn(s.variables, normalize(images, s.image_mean, s.image_std))[0])
    step = jax.jit(task.train_step(config))
    holder = {"state": state}

    def train_once():
        holder["state"], out = step(holder["state"], images, targets, jax.random.key(0))
        jax.block_until_ready(out)

    return (lambda: forward(state).block_until_ready()), train_once


def measure(programs: dict, *, batch: int, repeats: int, steps: int) -> dict[str, dict[str, float]]:
    """Median eval and train images/s per model; every model is timed once per repeat, in turn, so that the ratios
    hold on a noisy machine."""
    import time

    def rate(fn):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return batch * steps / (time.perf_counter() - t0)

    for evaluate, train in programs.values():  # compile and warm up
        evaluate(), train()
    times = {name: {"eval": [], "train": []} for name in programs}
    for _ in range(repeats):
        for name, (evaluate, train) in programs.items():
            times[name]["eval"].append(rate(evaluate))
            times[name]["train"].append(rate(train))
    return {name: {f"{k}_images_per_s": float(np.median(v)) for k, v in t.items()} for name, t in times.items()}


def compare(full_dir, slim_dir, *, resnet18_dir=None, batch: int = 128, repeats: int = 3, steps: int = 3,
            data_dir=None, log=print) -> dict[str, Any]:
    """Rows for the full model, the slim one (before and after fine-tuning), random sets of the same size (mean,
    range, sd) and optionally ResNet18: test metric, parameters, conv MACs and measured eval / train images/s."""
    full_dir, slim_dir = Path(full_dir).absolute(), Path(slim_dir).absolute()
    summary = json.loads((slim_dir / "elimination" / "summary.json").read_text())
    full = runs.restore(full_dir, data_dir=data_dir, command="eliminate")
    task = full.task
    batch = min(batch, full.config["train"]["batch_size"])  # a training batch of this run fits in memory
    images_all, targets_all = task.arrays(full.test)
    take = np.arange(batch) % len(images_all)
    images, targets = images_all[take], targets_all[take]
    mean, std = np.asarray(full.state.image_mean), np.asarray(full.state.image_std)
    variables = jax.device_get(full.state.variables)
    shape = (1, *images.shape[1:])
    layers = abl.catalogue(full.model, variables, input_shape=shape)
    slim = runs.restore(slim_dir, command="eliminate")
    entries = {"full": (full.model, variables), "slim": (slim.model, jax.device_get(slim.state.variables))}
    for i, draw in enumerate(summary["random"]):
        choices = tuple(elim.Choice(u, c) for u, c in draw["choices"])
        entries[f"random-{i}"] = (elim.slim_model(full.model, choices, layers),
                                  elim.slim_variables(full.model, variables, choices, layers, input_shape=shape))
    if resnet18_dir:
        other = runs.restore(Path(resnet18_dir).absolute(), command="eliminate")
        entries["resnet18"] = (other.model, jax.device_get(other.state.variables))
    norms = {"resnet18": (np.asarray(other.state.image_mean), np.asarray(other.state.image_std))} if resnet18_dir else {}
    log(f"paired tests of the slim model against {len(entries) - 1} others on the {len(images_all)} test examples")
    paired = paired_against_slim(full, entries, norms, batch_size=batch)
    log(f"timing {len(entries)} models side by side (batch {batch}, {repeats} repeats of {steps} calls)")
    speeds = measure({name: _programs(full.config, task, m, v, mean, std, images, targets)
                      for name, (m, v) in entries.items()}, batch=batch, repeats=repeats, steps=steps)

    def size(name):
        m, v = entries[name]
        return {"params": elim.count_params(v), "conv_macs": elim.conv_macs(abl.catalogue(m, v, input_shape=shape)),
                **speeds[name]}

    n = len(summary["units"])
    m = full.config["model"]
    rows = [{"name": f"{m.get('name') or 'pspnet-' + m['encoder']} (full)", "value": summary["full"]["test"], **size("full")},
            {"name": f"slim, {n} units removed", "value": summary["slim"]["test"], **size("slim")}]
    if summary["finetuned"]:
        tuned = summary["finetuned"]
        label = (f"slim, fine-tuned {tuned['epochs']} epoch(s)" if tuned["step"] else
                 f"slim, fine-tuning {tuned['epochs']} epoch(s) did not improve validation: step 0 kept")
        rows.append({**rows[-1], "name": label, "value": tuned["test"]})
    randoms = [name for name in entries if name.startswith("random-")]
    if randoms:
        values = [d["test"] for d in summary["random"]]
        per = [size(name) for name in randoms]
        rows.append({"name": f"random {n} units ({len(randoms)} draws, mean)", "value": float(np.mean(values)),
                     "low": float(min(values)), "high": float(max(values)),
                     "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                     **{k: float(np.mean([q[k] for q in per])) for k in per[0]}})
    if resnet18_dir:
        value = score_run(resnet18_dir)["value"]
        rows.append({"name": "resnet18 (same recipe and budget)", "value": value, **size("resnet18")})
    base = rows[0]
    for r in rows:
        r["ratios_vs_full"] = {k: r[k] / base[k] for k in ("params", "conv_macs", "eval_images_per_s",
                                                            "train_images_per_s")}
    return {"device": jax.devices()[0].device_kind, "batch": batch, "repeats": repeats, "steps": steps,
            "metric": summary["metric"], "rows": rows, "slim_run": str(slim_dir), "paired_vs_slim": paired}


def paired_against_slim(full: core.Run, entries: dict, norms: dict, *, batch_size: int,
                        alpha: float = statistics.DEFAULT_ALPHA) -> dict[str, dict]:
    """Per other model: the slim model's test score minus that model's, on the same test examples, with its
    paired interval (Bonferroni over every comparison made here) and verdict."""
    from resnet_jax.ablation.protocols import BASELINE

    images, targets = full.task.arrays(full.test)
    metric = full.task.metric(full.config)
    default = (np.asarray(full.state.image_mean), np.asarray(full.state.image_std))
    scores = {}
    for name, (model, variables) in entries.items():
        mean, std = norms.get(name, default)
        layers = abl.catalogue(model, variables, input_shape=(1, *images.shape[1:]))
        scores[name] = engine.evaluate(model, variables, [BASELINE], layers, images, targets, image_mean=mean,
                                       image_std=std, metric=metric, batch_size=batch_size,
                                       progress=False)[0].per_example
    ids = getattr(full.test, "ids", None)
    groups = [statistics.patient_of(i) for i in ids] if full.config.get("task") == "segmentation" else None
    tester = statistics.paired_tester(metric, groups=groups)
    others = [name for name in scores if name != "slim"]
    rows = statistics.compare_models(tester, [(scores[name], scores["slim"]) for name in others], alpha=alpha)
    return dict(zip(others, rows))


def format_comparison(result: dict) -> str:
    lines = [f"{'model':40s} {result['metric']:>14s} {'params':>11s} {'conv MMACs':>10s} {'eval img/s':>10s} "
             f"{'train img/s':>11s}  vs full: params MACs eval train"]
    for r in result["rows"]:
        q = r["ratios_vs_full"]
        spread = f"  [{r['low']:.4f}, {r['high']:.4f}]" if "low" in r else ""
        lines.append(f"{r['name']:40s} {r['value']:14.4f} {round(r['params']):11,d} {r['conv_macs'] / 1e6:10.1f} "
                     f"{r['eval_images_per_s']:10.1f} {r['train_images_per_s']:11.1f}  {q['params']:.3f} "
                     f"{q['conv_macs']:.3f} {q['eval_images_per_s']:.3f} {q['train_images_per_s']:.3f}{spread}")
    for name, c in result.get("paired_vs_slim", {}).items():
        lines.append(f"slim minus {name}: {statistics.comparison_text(c)}")
    return "\n".join(lines)


def write_comparison(slim_dir, result: dict) -> Path:
    """``<slim>/elimination/comparison.json`` and the Pareto figure beside it."""
    from resnet_jax.reporting import figures

    directory = Path(slim_dir) / "elimination"
    files.write_json(directory / "comparison.json", result)
    return figures.plot_pareto(result["rows"], directory / "pareto.png", metric=result["metric"])
