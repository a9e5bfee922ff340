"""The slim run that an elimination leaves: its config, its step-0 checkpoint (the full run's weights with the
chosen units removed, checked exact against the masked model), and the optional fine-tuning that follows.

The slim run is a normal run directory, so ``evaluate``, ``ablate``, ``export-torch`` and ``report`` work on it.

Usage: ``score_run("runs/slim")`` scores a slim (or any) run's checkpoint with the ablation engine;
``resnet-jax eliminate`` builds the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import checkpointing, devices, files
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import elimination as elim
from resnet_jax.ablation import engine
from resnet_jax.training import core, runs

EXACT_TOLERANCE = 2e-3
"""How far the slim model's test score may sit from the masked model's: exact on CPUs in float32 (tested); on
accelerators the bias is computed by another program than the sweep, and rounding may flip an example whose top
two logits tie. A wrong bias moves the score far more."""
FINETUNE_LR_FACTOR = 0.1
"""Fine-tuning starts at this fraction of the run's peak learning rate (no warm-up; cosine to zero)."""


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


def score_run(workdir, *, which: str = "best", batch_size: int = 128) -> dict[str, Any]:
    """A run's test score by the ablation engine's metric (the unablated model), so slim, full and other models
    are compared on one measure."""
    return engine_score(runs.restore(workdir, which=which, command="eliminate"), batch_size=batch_size)


def engine_score(run: core.Run, *, batch_size: int, split=None) -> dict[str, Any]:
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
              "engine_value": engine_score(slim, batch_size=batch_size)["value"]}
    files.write_json(path, record)
    return record


def build(run: core.Run, source: Path, out: Path, found: dict, *, finetune_epochs: int, finetune_lr: float | None,
          batch_size: int, log) -> dict[str, Any]:
    """The slim run in ``out`` of the units ``found`` chose: step 0 checked exact against the masked model's test
    score, then fine-tuned if asked. Returns its variables, layers, step-0 test score and fine-tuned score."""
    variables, model, slim_set, layers = jax.device_get(run.state.variables), run.model, found["slim_set"], found["layers"]
    shape = (1, *run.task.arrays(run.test)[0].shape[1:])
    smodel = elim.slim_model(model, slim_set, layers)
    svars = elim.slim_variables(model, variables, slim_set, layers, input_shape=shape)
    earlier = tuple(tuple(p) for p in run.config["model"]["eliminated"])  # a slim source keeps its eliminations
    config = slim_config(run.config, earlier + elim.eliminated(slim_set, layers), source=str(source),
                         finetune_epochs=finetune_epochs, finetune_lr=finetune_lr)
    core.prepare_workdir(config, out, force_new=False)
    ranking = core.ranking_metric(run.task, core.Splits(None, run.val, run.test), run.config)
    _save_start(out, config, smodel, svars, run, ranking=ranking, source=source, source_params=variables["params"])
    # Every test score below is the engine's (the metric the search used), on the slim run as restored from disk.
    before = _before_finetune(out, config, batch_size)
    if abs(found["test_slim"] - before["engine_value"]) > EXACT_TOLERANCE:
        raise AssertionError(f"the slim model scores {before['engine_value']} where the masked model scores "
                             f"{found['test_slim']}: the elimination is not exact")
    tuned = None
    if finetune_epochs and not slim_set:
        log("nothing was removed, so there is nothing to fine-tune: the slim run is the full network")
    if finetune_epochs and slim_set:
        runs.train(config, out, log=log)
        tuned = {**score_run(out, batch_size=batch_size), "epochs": finetune_epochs,
                 "learning_rate": config["train"]["learning_rate"]}
    else:
        core.write_evaluation(out, {k: v for k, v in before.items() if k.startswith("test_")}, step=0,
                              which="best", n_examples=len(run.test), log=log)
    return {"variables": svars, "layers": abl.catalogue(smodel, svars, input_shape=shape),
            "test_before": before["engine_value"], "tuned": tuned}
