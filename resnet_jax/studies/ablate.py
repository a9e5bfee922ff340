"""``resnet-jax ablate``: run the protocols (or a spec file) on a trained run, write tables and figures.

Results go to ``<workdir>/ablation/``: the content-keyed store ``results.jsonl``, one CSV and one JSON
table per protocol (the JSON states the checkpoint and data it came from) and one figure each; a
segmentation run adds a qualitative figure of the most harmful and most harmless masks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpointing, devices, ledger, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, statistics, store, tables
from resnet_jax.ablation.protocols import (BASELINE, DESCRIPTIONS, PROTOCOLS, STUDY_PROTOCOLS, interactions,
                                           protocol_specs, run_protocol)
from resnet_jax.ablation.subjects import restore_subject
from resnet_jax.data.inputs import normalize
from resnet_jax.reporting import figures


def _check_request(protocols: Sequence[str], kind: str, *, batch_size: int, memory_budget_mb: float | None,
                   n_examples: int | None) -> None:
    """Refuse a bad request before restoring anything; each message names the value and what is valid."""
    if batch_size < 1:
        raise abl.SpecError(f"--batch-size must be a positive number of images, got {batch_size}")
    if memory_budget_mb is not None and memory_budget_mb <= 0:
        raise abl.SpecError(f"--memory-budget-mb must be positive, got {memory_budget_mb}")
    if n_examples is not None and n_examples < 1:
        raise abl.SpecError(f"--n-examples must be positive (or left out for the whole test split), got {n_examples}")
    if kind not in abl.KINDS:
        raise abl.SpecError(f"unknown kind {kind!r}; valid: {list(abl.KINDS)}")
    for p in protocols:
        if p not in PROTOCOLS:
            raise abl.SpecError(f"unknown protocol {p!r}; valid: {list(PROTOCOLS)} or 'all'")


def _draw(name: str, rows: Sequence[dict], path: Path, *, title: str, layers) -> Path | None:
    """The protocol's figure: metric per layer for ``single``, a heat map for ``pairs``, bars for the others, none
    for the baseline."""
    if not rows:  # e.g. a slim model's stage that kept only its first unit
        return None
    if name == "pairs":
        return figures.plot_interactions(rows, [l.name for l in layers], path, title=title)
    if name == "single":
        decomposition = {l.name for l in layers if "decomposition" in l.roles}
        return figures.plot_single(rows, decomposition, path, title=title)
    return None if name == "baseline" else figures.plot_bars(rows, path, title=title)


def ablate_workdir(workdir, *, protocols: Sequence[str] | None = None, kind: str | None = None,
                   spec_file=None, data_dir=None, n_examples: int | None = None, method: str = "auto",
                   batch_size: int = 128, memory_budget_mb: float | None = None, checkpoint: str = "best",
                   margin: float = statistics.DEFAULT_MARGIN, alpha: float = statistics.DEFAULT_ALPHA,
                   batchnorm: str = "running", whole_batches: bool = False, log=print) -> list[Path]:
    """Run protocols (or a spec file) on a trained run; write tables (with paired tests against the baseline and a
    decision per mask at ``margin``) and figures under ``ablation/``. ``batchnorm='batch'`` evaluates with batch
    statistics (the study's ``BN(0) = beta`` reading); its tables carry the suffix ``.bn-batch``; with
    ``whole_batches`` its batch size is the largest one up to ``batch_size`` that divides the examples.

    Kinds: the protocols use ``kind`` (default zero-kernel); a spec file's masks keep each spec's own kind unless
    ``kind`` is given, which then overrides every spec. A spec file's table is named after the file
    (``spec-<file stem>``), so two files never replace each other; ``protocols`` (default: the study's four
    without a spec file, none with one) run beside it."""
    workdir, out = Path(workdir), Path(workdir) / "ablation"
    protocols = list(protocols if protocols is not None else () if spec_file else STUDY_PROTOCOLS)
    try:
        rule = statistics.Decision(margin, alpha)
    except ValueError as err:
        raise abl.SpecError(f"--{err}") from None
    _check_request(protocols, kind or "zero-kernel", batch_size=batch_size, memory_budget_mb=memory_budget_mb,
                   n_examples=n_examples)
    custom = abl.load_specs(spec_file) if spec_file else None
    if custom and kind is not None:
        custom = [dataclasses.replace(spec, kind=kind) for spec in custom]
    subject = restore_subject(workdir, checkpoint=checkpoint, data_dir=data_dir, n_examples=n_examples)
    model, variables = subject.model, subject.variables
    layers = abl.catalogue(model, variables, input_shape=(1, *subject.images.shape[1:]))
    jobs = [(p, "cut-identity" if p == "identity-shortcut" else kind or "zero-kernel", None) for p in protocols]
    if custom:
        kinds = sorted({spec.kind for spec in custom})
        jobs.append((f"spec-{Path(spec_file).stem}", kinds[0] if len(kinds) == 1 else "+".join(kinds), custom))
    by_job = {name: abl.resolve_all(specs or protocol_specs(name, layers, kind=k), layers)  # all before compute
              for name, k, specs in jobs if name != "baseline"}
    resolved = {a.name: a for ablations in by_job.values() for a in ablations}
    needs_initial = any(s.kind == "reinit" for s in custom or []) or (kind == "reinit" and bool(protocols))
    initial = checkpointing.load_initial(workdir, variables["params"]) if needs_initial else None
    if batchnorm not in engine.BATCHNORM:
        raise abl.SpecError(f"unknown --batchnorm {batchnorm!r}; valid: {list(engine.BATCHNORM)}")
    if batchnorm == "batch" and whole_batches:
        batch_size = whole_batch_size(len(subject.images), batch_size)
    if batchnorm == "batch":
        try:
            engine.check_batch_statistics(len(subject.images), batch_size, [], "weights")
        except ValueError as err:
            raise abl.SpecError(f"--batchnorm batch: {err}") from None
    setting = ({"batchnorm": "batch", "batch_size": batch_size, "batch_order_seed": engine.BATCH_ORDER_SEED}
               if batchnorm == "batch" else None)
    provenance = {**store.context(variables, subject.images, subject.targets, subject.metric, evaluation=setting),
                  "checkpoint": checkpoint, "checkpoint_step": subject.step, "checkpoint_choice": subject.choice}
    groups = [statistics.patient_of(i) for i in subject.test.ids] if subject.task == "segmentation" else None
    if groups is not None:  # refuse a Dice family the bootstrap cannot decide before any mask is computed
        try:
            for size in map(len, by_job.values()):
                statistics.check_bootstrap(size, alpha, n_patients=len(set(groups)))
        except ValueError as err:
            raise abl.SpecError(str(err)) from None
    test = statistics.paired_tester(subject.metric, groups=groups)
    stats_meta = {"margin": margin, "alpha": alpha, "method": statistics.method_text(subject.metric),
                  "correction": "Bonferroni-simultaneous bounds across the protocol's masks (level 1 - alpha/m); "
                                "any-change p-values Holm-adjusted"}
    ledger.declare(workdir, "ablate", ["ablation"])
    results = store.ResultStore(out, provenance)

    def evaluate(ablations, on_chunk):
        return engine.evaluate(model, variables, ablations, layers, subject.images, subject.targets,
                               image_mean=subject.image_mean, image_std=subject.image_std, metric=subject.metric,
                               batch_size=batch_size, method=method, memory_budget_mb=memory_budget_mb,
                               initial_params=initial, on_chunk=on_chunk, batchnorm=batchnorm)

    written, all_rows = [], []
    with results.lock(log=log):
        base = run_protocol("baseline", store=results, evaluate=evaluate, layers=layers,
                            metric_name=subject.metric.name, log=log)[0]
        warning = metrics.competence_warning(subject.metric, base["value"], subject.targets)
        if warning:
            log(f"WARNING: {warning}")
        for name, k, specs in jobs:
            rows = run_protocol(name, store=results, evaluate=evaluate, layers=layers, kind=k, specs=specs,
                                metric_name=subject.metric.name, log=log)
            rows = with_statistics(rows, results.load(), test, rule=rule)
            extra = {}
            if name == "pairs":  # interactions need each conv alone: scored now unless the store has them
                singles = run_protocol("single", store=results, evaluate=evaluate, layers=layers, kind=k,
                                       metric_name=subject.metric.name, log=log)
                rows = interactions(rows, singles)
                extra = strongest_interactions(rows)
            all_rows += rows
            stem = name if name.startswith("spec-") else tables.table_stem(name, k)  # a spec file: one table
            title = f"{name} ({k})" if name != "baseline" else "baseline"
            if batchnorm == "batch":
                stem, title = f"{stem}.bn-batch", f"{title}, BatchNorm on batch statistics"
            figure = (_draw(name, rows, out / f"{stem}.png", title=f"{workdir.name}: {title}", layers=layers)
                      if devices.is_writer() else None)  # one process writes a job's files
            meta = {"title": title, "description": DESCRIPTIONS.get(name, f"Specs from {spec_file}."),
                    "figure": figure.name if figure else None, "provenance": provenance, "warning": warning,
                    "statistics": stats_meta, "margin_sensitivity": margin_sensitivity(rows, margin), **extra,
                    "seconds": float(sum(r["seconds"] for r in rows))}
            written += list(tables.write_table(rows, out, stem, meta=meta))
            if devices.is_writer():
                log(f"wrote {out / stem}.csv")
    if subject.task == "segmentation" and devices.is_writer():
        written += qualitative_figure(out, all_rows, resolved, model=model, variables=variables, split=subject.test,
                                      image_mean=subject.image_mean, image_std=subject.image_std,
                                      initial_params=initial)
    devices.barrier(f"ablate {workdir}: tables written")
    return written


def whole_batch_size(n: int, at_most: int) -> int:
    """The largest batch size up to ``at_most`` that divides ``n`` examples and splits over the local devices."""
    n_devices = jax.local_device_count()
    fits = [d for d in range(n_devices, at_most + 1, n_devices) if n % d == 0]
    if not fits:
        raise abl.SpecError(f"no batch size up to {at_most} divides the {n} examples over {n_devices} devices; "
                            f"choose --n-examples as a multiple of {n_devices}")
    return fits[-1]


def strongest_interactions(rows: Sequence[dict], n: int = 5) -> dict[str, list[dict]]:
    """The ``n`` most synergistic (largest interaction) and most redundant (smallest) pairs, for the report."""
    pick = lambda r: {k: r[k] for k in ("mask", "drop", "drop_a", "drop_b", "interaction", "decision") if k in r}  # noqa: E731
    ordered = sorted(rows, key=lambda r: r["interaction"])
    return {"synergistic": [pick(r) for r in ordered[::-1][:n]], "redundant": [pick(r) for r in ordered[:n]]}


def with_statistics(rows: Sequence[dict], stored: Mapping[str, dict], test, *,
                    rule: statistics.Decision) -> list[dict]:
    """A protocol's rows with the paired test of each mask against the baseline, read from the stored per-example
    values of both (the same images), with simultaneous bounds across the protocol's masks."""
    baseline = store.per_example(stored[store.ablation_key(BASELINE)])
    per_example = [None if r["kind"] == "none" else store.per_example(stored[r["key"]]) for r in rows]
    return statistics.annotate(rows, per_example, baseline, test, rule=rule)


def margin_sensitivity(rows: Sequence[dict], margin: float) -> dict[str, dict[str, int]]:
    """Decision counts at the usual margins and this table's, read off the stored bounds (nothing recomputed)."""
    margins = sorted({*statistics.SENSITIVITY_MARGINS, margin})
    return {f"{m:g}": statistics.decision_counts(rows, m) for m in margins}


# Qualitative figure -----------------------------------------------------------------------------

def _ablated_variables(model, variables, ablation: abl.Ablation, layers, sample, initial_params):
    mask = abl.make_mask(variables["params"], ablation, layers)
    replace = abl.replacement_for(ablation.kind, model=model, input_shape=sample.shape, initial_params=initial_params)
    return abl.apply(variables, mask, replacement=None if replace is None else replace(ablation.seed))


def pick_examples(masks: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices spread over the split, preferring slices that show every class."""
    full = [i for i, m in enumerate(masks) if len(np.unique(m)) == int(masks.max()) + 1]
    pool = np.asarray(full if len(full) >= n else range(len(masks)))
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]


def qualitative_figure(directory: Path, rows: Sequence[dict], ablations: Mapping[str, abl.Ablation], *, model,
                       variables, split: Any, image_mean, image_std, initial_params=None,
                       n_images: int = 4) -> list[Path]:
    """``qualitative.png`` (+ ``.json`` for the report): image, ground truth, baseline prediction, and the
    predictions under the most harmful and the most harmless mask among ``rows`` (lowest and highest score)."""
    scored = [r for r in rows if r["mask"] in ablations and r["kind"] != "none"]
    if not scored:
        return []
    worst, best = min(scored, key=lambda r: r["value"]), max(scored, key=lambda r: r["value"])
    idx = pick_examples(split.masks, n_images)
    images, masks = split.images[idx], split.masks[idx]
    layers = abl.catalogue(model, variables, input_shape=(1, *images.shape[1:]))
    metric = metrics.Dice(num_classes=split.num_classes)
    x = normalize(jnp.asarray(images), image_mean, image_std)  # as training and the engine normalise
    columns = [("baseline", variables)]
    for label, row in (("most harmful", worst), ("most harmless", best)):
        ablated = _ablated_variables(model, variables, ablations[row["mask"]], layers, x[:1], initial_params)
        columns.append((f"{label}:\n{row['mask']} ({row['kind']})\n{row['metric']} {row['value']:.3f}", ablated))
    predictions, scores = [], []
    apply = jax.jit(model.apply)
    for _, v in columns:
        logits, _ = apply(v, x)
        predictions.append(np.asarray(jnp.argmax(logits, -1)))
        scores.append(np.asarray(metric.per_example(logits, jnp.asarray(masks))["score"]))
    path = directory / "qualitative.png"
    figures.plot_qualitative(path, images, masks, predictions, scores, [c[0] for c in columns], split.class_names,
                             [split.ids[i] for i in idx])
    meta = {"title": "qualitative", "figure": path.name,
            "description": f"Test slices: image, ground truth, and predictions of the baseline and of the most "
                           f"harmful ({worst['mask']}, {worst['kind']}) and most harmless ({best['mask']}, "
                           f"{best['kind']}) masks of this sweep; per-slice mean foreground Dice in each title.",
            "masks": {"most_harmful": worst["mask"], "most_harmless": best["mask"]}}
    meta_path = directory / "qualitative.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    return [path, meta_path]
