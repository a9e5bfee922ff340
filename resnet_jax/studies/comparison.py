"""What a slim network is worth: the full model, the slim one (before and after fine-tuning), random sets of the
same size and optionally ResNet18 trained with the same recipe, side by side on the same test images (paired
tests against the slim model) and the same device (parameters, conv MACs, measured eval and train images/s).

Used by the ``cifar-eliminate`` and ``acdc-eliminate`` stages of ``reproduce`` and by ``benchmarks/elimination.py``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import files
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import elimination as elim
from resnet_jax.ablation import engine, speed, statistics
from resnet_jax.studies.slim import score_run
from resnet_jax.training import core, runs


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


def measure(programs: dict, *, batch: int, repeats: int, steps: int) -> dict[str, dict[str, Any]]:
    """Eval and train images/s per model: the median over ``repeats`` rounds, and every round's (under
    ``"rounds"``), from which :func:`_rows` takes each model's speed ratio to the full model's in the same round.
    Each round times every model's ``steps`` eval calls and ``steps`` train steps once, in a shuffled order."""
    for evaluate, train in programs.values():  # compile and warm up
        evaluate(), train()
    calls = {(name, kind): functools.partial(_repeat, fn, steps) for name, fns in programs.items()
             for kind, fn in zip(("eval", "train"), fns)}
    seconds = speed.interleaved_seconds(calls, repeats=repeats)
    out = {}
    for name in programs:
        rounds = {kind: [batch * steps / s for s in seconds[name, kind]] for kind in ("eval", "train")}
        out[name] = {**{f"{kind}_images_per_s": float(np.median(r)) for kind, r in rounds.items()}, "rounds": rounds}
    return out


def _repeat(fn, steps: int) -> None:
    for _ in range(steps):
        fn()


TRAINED = {"resnet18": "resnet18, same recipe, {} epochs", "scratch": "slim architecture from scratch, {} epochs"}
"""Separately trained models a slim one is compared with (run directories given to :func:`compare`)."""


def compare(full_dir, slim_dir, *, trained: Mapping[str, str | Path] | None = None, batch: int = 128,
            repeats: int = speed.MIN_REPEATS, steps: int = 3, data_dir=None, log=print) -> dict[str, Any]:
    """Rows for the full model, the slim one (before and after fine-tuning), the k smallest single drops removed
    together, random sets of the same size (mean, range, sd) and the ``trained`` runs (keys of ``TRAINED``: ResNet18,
    the slim architecture from scratch): test metric, parameters, conv MACs and measured eval / train images/s.
    ``repeats=0`` times nothing (no program is compiled for it): the rows then hold no speeds, and reports say
    "not timed"."""
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0 (0: no timing), got {repeats}")
    full_dir, slim_dir = Path(full_dir).absolute(), Path(slim_dir).absolute()
    summary = json.loads((slim_dir / "elimination" / "summary.json").read_text())
    full = runs.restore(full_dir, data_dir=data_dir, command="eliminate")
    batch = min(batch, full.config["train"]["batch_size"])  # a training batch of this run fits in memory
    images_all, targets_all = full.task.arrays(full.test)
    take = np.arange(batch) % len(images_all)
    unknown = set(trained or {}) - set(TRAINED)
    if unknown:
        raise ValueError(f"unknown trained model(s) {sorted(unknown)}; valid: {sorted(TRAINED)}")
    trained = {k: Path(v).absolute() for k, v in (trained or {}).items()}
    entries, norms = _entries(full, summary, slim_dir, trained)
    log(f"paired tests of the slim model against {len(entries) - 1} others on the {len(images_all)} test examples")
    paired = paired_against_slim(full, entries, norms, batch_size=batch)
    mean, std = np.asarray(full.state.image_mean), np.asarray(full.state.image_std)
    speeds = {name: {} for name in entries}
    if repeats:
        log(f"timing {len(entries)} models side by side (batch {batch}, {repeats} repeats of {steps} calls)")
        speeds = measure({name: _programs(full.config, full.task, m, v, mean, std, images_all[take],
                                          targets_all[take]) for name, (m, v) in entries.items()},
                         batch=batch, repeats=repeats, steps=steps)
    shape = (1, *images_all.shape[1:])
    sizes = {name: {"params": elim.count_params(v), "conv_macs": elim.conv_macs(abl.catalogue(m, v, input_shape=shape)),
                    **speeds[name]} for name, (m, v) in entries.items()}
    rows = _rows(full.config, summary, sizes, trained={k: (score_run(v)["value"], runs.read_config(v)["train"]["epochs"])
                                                       for k, v in trained.items()})
    return {"device": jax.devices()[0].device_kind, "batch": batch, "repeats": repeats, "steps": steps,
            "metric": summary["metric"], "rows": rows, "slim_run": str(slim_dir), "paired_vs_slim": paired}


def _entries(full: core.Run, summary: dict, slim_dir: Path, trained: dict[str, Path]) -> tuple[dict[str, tuple], dict]:
    """``(model, variables)`` of every model compared, and the input normalisation of the separately trained
    ones (each keeps its own)."""
    variables = jax.device_get(full.state.variables)
    shape = (1, *full.task.arrays(full.test)[0].shape[1:])
    layers = abl.catalogue(full.model, variables, input_shape=shape)
    slim = runs.restore(slim_dir, command="eliminate")
    entries = {"full": (full.model, variables), "slim": (slim.model, jax.device_get(slim.state.variables))}
    sets = {f"random-{i}": draw["choices"] for i, draw in enumerate(summary["random"]) if "finetuned" not in draw}
    for i, draw in enumerate(summary["random"]):  # fine-tuned like the slim model: compared as trained
        if "finetuned" in draw:
            tuned = runs.restore(slim_dir / "random" / f"draw-{i}", command="eliminate")
            entries[f"random-{i}"] = (tuned.model, jax.device_get(tuned.state.variables))
    if summary.get("k_smallest", {}).get("choices"):  # eliminations before this control have none
        sets["k-smallest"] = summary["k_smallest"]["choices"]
    for name, pairs in sets.items():
        choices = tuple(elim.Choice(u, c) for u, c in pairs)
        entries[name] = (elim.slim_model(full.model, choices, layers),
                         elim.slim_variables(full.model, variables, choices, layers, input_shape=shape))
    norms = {}
    for name, path in trained.items():
        other = runs.restore(path, command="eliminate")
        entries[name] = (other.model, jax.device_get(other.state.variables))
        norms[name] = (np.asarray(other.state.image_mean), np.asarray(other.state.image_std))
    return entries, norms


def _rows(config: dict, summary: dict, sizes: dict[str, dict], *, trained: dict[str, tuple[float, int]]) -> list[dict]:
    """The comparison table: one row per model (random draws as their mean, range and sd), with ratios to the
    full model."""
    n, m = len(summary["units"]), config["model"]
    rows = [{"name": f"{m.get('name') or 'pspnet-' + m['encoder']} (full)", "value": summary["full"]["test"],
             **sizes["full"]},
            {"name": f"slim, {n} units removed", "value": summary["slim"]["test"], **sizes["slim"]}]
    if summary["finetuned"]:
        tuned = summary["finetuned"]
        label = (f"slim, fine-tuned {tuned['epochs']} epoch(s)" if tuned["step"] else
                 f"slim, fine-tuning {tuned['epochs']} epoch(s) did not improve validation: step 0 kept")
        rows.append({**rows[-1], "name": label, "value": tuned["test"]})
    randoms = [name for name in sizes if name.startswith("random-")]
    if randoms:
        tuned = all("finetuned" in d for d in summary["random"])
        values = [d["finetuned" if tuned else "test"] for d in summary["random"]]
        per = [sizes[name] for name in randoms]
        label = f", fine-tuned {summary['finetuned']['epochs']} epoch(s)" if tuned and summary["finetuned"] else ""
        rows.append({"name": f"random {n} units{label} ({len(randoms)} draws, mean)", "value": float(np.mean(values)),
                     "low": float(min(values)), "high": float(max(values)),
                     "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                     **_mean_sizes(per)})
    if "k-smallest" in sizes:
        rows.append({"name": f"the {n} smallest single drops, removed together", "value": summary["k_smallest"]["test"],
                     **sizes["k-smallest"]})
    for name, (value, epochs) in trained.items():
        rows.append({"name": TRAINED[name].format(epochs), "value": value, **sizes[name]})
    for r in rows:
        r["ratios_vs_full"] = {k: r[k] / rows[0][k] for k in ("params", "conv_macs", "eval_images_per_s",
                                                               "train_images_per_s") if k in r}
        if "rounds" in r:  # speed ratios round by round, with an interval (speed.ratio_interval)
            r["speed_vs_full"] = {f"{k}_images_per_s": speed.ratio_interval(r["rounds"][k], rows[0]["rounds"][k])
                                  for k in ("eval", "train")}
            r["ratios_vs_full"].update({k: v["ratio"] for k, v in r["speed_vs_full"].items()})
    return rows


def _mean_sizes(per: list[dict]) -> dict:
    """Random draws as one row: every size and speed averaged over the draws, the speeds round by round too."""
    out = {k: float(np.mean([q[k] for q in per])) for k in per[0] if k != "rounds"}
    if "rounds" in per[0]:
        out["rounds"] = {k: np.mean([q["rounds"][k] for q in per], axis=0).tolist() for k in per[0]["rounds"]}
    return out


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
        spread = f"  (range over draws: {r['low']:.4f} to {r['high']:.4f})" if "low" in r else ""
        lines.append(f"{r['name']:40s} {r['value']:14.4f} {round(r['params']):11,d} {r['conv_macs'] / 1e6:10.1f} "
                     f"{speed.images_per_s(r, 'eval_images_per_s'):>10s} "
                     f"{speed.images_per_s(r, 'train_images_per_s'):>11s}  {q['params']:.3f} {q['conv_macs']:.3f} "
                     f"{speed.images_per_s(q, 'eval_images_per_s', '.3f')} "
                     f"{speed.images_per_s(q, 'train_images_per_s', '.3f')}{spread}")
    lines += [f"speed of {r['name']} vs full: {speed.speeds_text(r)}" for r in result["rows"][1:]]
    for name, c in result.get("paired_vs_slim", {}).items():
        lines.append(f"slim minus {name}: {statistics.comparison_text(c)}")
    return "\n".join(lines)


def write_comparison(slim_dir, result: dict) -> Path:
    """``<slim>/elimination/comparison.json`` and the Pareto figure beside it."""
    from resnet_jax.reporting import figures

    directory = Path(slim_dir) / "elimination"
    files.write_json(directory / "comparison.json", result)
    return figures.plot_pareto(result["rows"], directory / "pareto.png", metric=result["metric"])


def eliminate_and_compare(run, slim, preset: Mapping[str, Any], *, controls=None, data_dir=None,
                          keep_comparison: bool = False, log=print) -> dict[str, Any]:
    """The elimination stage of a ``reproduce`` preset on one trained run: the slim network in ``slim``
    (:func:`eliminate.eliminate_workdir` with the preset's fine-tuning epochs and random draws), then its side-by-side
    comparison with the preset's timing rounds, written beside it. ``controls(summary)`` trains the separately
    trained models to compare (keys of :data:`TRAINED`); ``keep_comparison`` keeps a comparison already written,
    so that a rerun does not time again what was measured once. Returns the elimination summary."""
    from resnet_jax.studies import eliminate

    settings = eliminate.Settings(finetune_epochs=preset["finetune_epochs"], random_draws=preset["random_draws"])
    summary = eliminate.eliminate_workdir(run, slim, settings, data_dir=data_dir, log=log,
                                          force_untrained=preset.get("force_untrained", False))
    log(eliminate.format_summary(summary))
    if keep_comparison and (Path(slim) / "elimination" / "comparison.json").is_file():
        return summary
    result = compare(run, slim, trained=controls(summary) if controls else None, repeats=preset["timing_repeats"],
                     data_dir=data_dir, log=log)
    log(format_comparison(result))
    write_comparison(slim, result)
    return summary
