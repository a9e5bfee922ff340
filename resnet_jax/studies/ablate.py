"""``resnet-jax ablate``: run the protocols (or a spec file) on a trained run, write tables and figures.

Results go to ``<workdir>/ablation/``: the content-keyed store ``results.jsonl``, one CSV and one JSON
table per protocol (the JSON states the checkpoint and data it came from) and one figure each; a
segmentation run adds a qualitative figure of the most harmful and most harmless masks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from resnet_jax import checkpointing, devices, ledger, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, statistics, store, tables
from resnet_jax.ablation.protocols import (BASELINE, DESCRIPTIONS, PROTOCOLS, STUDY_PROTOCOLS, interactions,
                                           STRUCTURE_PROTOCOLS, protocol_specs, run_protocol)
from resnet_jax.ablation.subjects import Subject, restore_subject
from resnet_jax.reporting import figures
from resnet_jax.studies import qualitative


@dataclass(frozen=True)
class Request:
    """What ``ablate`` evaluates on a run and how: protocols and/or a spec file, the examples, the evaluation
    settings, and the decision rule its tables state (``margin``, ``alpha``).

    Kinds: the protocols use ``kind`` (default zero-kernel); a spec file's masks keep each spec's own kind unless
    ``kind`` is given, which then overrides every spec. A spec file's table is named after the file, its content
    and the kind computed (``spec-<file stem>-<content digest>[.<kind>]``, :func:`spec_table_name`), so two files,
    or one file under two kinds, never replace each other; ``protocols`` (default: the study's four
    without a spec file, none with one) run beside it. ``batchnorm='batch'`` evaluates with batch statistics
    (the study's ``BN(0) = beta`` reading; tables carry the suffix ``.bn-batch``); with ``whole_batches`` its
    batch size is the largest one up to ``batch_size`` that divides the examples."""

    protocols: Sequence[str] | None = None
    kind: str | None = None
    spec_file: str | os.PathLike | None = None
    n_examples: int | None = None
    method: str = "auto"
    batch_size: int = 128
    memory_budget_mb: float | None = None
    checkpoint: str = "best"
    margin: float = statistics.DEFAULT_MARGIN
    alpha: float = statistics.DEFAULT_ALPHA
    batchnorm: str = "running"
    whole_batches: bool = False
    only_supported: bool = False  # 'all': a model without declared structure runs what it supports, and says so

    def chosen_protocols(self) -> list[str]:
        return list(self.protocols if self.protocols is not None else () if self.spec_file else STUDY_PROTOCOLS)

    def check(self) -> statistics.Decision:
        """Refuse a bad request before restoring anything (each message names the value and what is valid);
        return its decision rule."""
        try:
            rule = statistics.Decision(self.margin, self.alpha)
        except ValueError as err:
            raise abl.SpecError(f"--{err}") from None
        if self.batch_size < 1:
            raise abl.SpecError(f"--batch-size must be a positive number of images, got {self.batch_size}")
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise abl.SpecError(f"--memory-budget-mb must be positive, got {self.memory_budget_mb}")
        if self.n_examples is not None and self.n_examples < 1:
            raise abl.SpecError(f"--n-examples must be positive (or left out for the whole test split), "
                                f"got {self.n_examples}")
        if (self.kind or "zero-kernel") not in abl.KINDS:
            raise abl.SpecError(f"unknown kind {self.kind!r}; valid: {list(abl.KINDS)}")
        for p in self.chosen_protocols():
            if p not in PROTOCOLS:
                raise abl.SpecError(f"unknown protocol {p!r}; valid: {list(PROTOCOLS)} or 'all'")
        if self.batchnorm not in engine.BATCHNORM:
            raise abl.SpecError(f"unknown --batchnorm {self.batchnorm!r}; valid: {list(engine.BATCHNORM)}")
        return rule


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


def ablate_workdir(workdir, request: Request = Request(), *, data_dir=None, log=print) -> list[Path]:
    """Run ``request``'s protocols (or spec file) on a trained run; write tables (with paired tests against the
    baseline and a decision per mask at the request's margin) and figures under ``ablation/``."""
    workdir, rule = Path(workdir), request.check()
    subject = restore_subject(workdir, checkpoint=request.checkpoint, data_dir=data_dir, n_examples=request.n_examples)
    return ablate_subject(workdir, request, subject, rule=rule, log=log,
                          initial=lambda params: checkpointing.load_initial(workdir, params))


def ablate_subject(workdir: Path, request: Request, subject: Subject, *, rule: statistics.Decision,
                   initial=None, log=print) -> list[Path]:
    """``ablate`` on any :class:`Subject` (a trained run, or a user's model): tables and figures in
    ``<workdir>/ablation/``. ``initial(params)`` gives the initial parameters ``reinit`` needs (None: no masks of
    that kind); a subject with an ``origin`` (a user's model) keys its store by it beside the weights and data."""
    layers = abl.catalogue(subject.model, subject.variables, input_shape=(1, *subject.images.shape[1:]))
    if not layers:
        raise abl.SpecError("the model has no module that owns a kernel (Conv, Dense, ...) in its forward: nothing "
                            "to ablate")
    request = _supported(request, layers, log)
    jobs = _jobs(request, layers)
    resolved = {a.name: a for *_, ablations in jobs for a in ablations}
    initial_params = _initial_params(resolved.values(), subject, initial)
    batch_size = _batch_size(request, len(subject.images))
    setting = ({"batchnorm": "batch", "batch_size": batch_size, "batch_order_seed": engine.BATCH_ORDER_SEED}
               if request.batchnorm == "batch" else None)
    provenance = {**store.context(subject.variables, subject.images, subject.targets, subject.metric,
                                  evaluation=setting, origin=subject.origin),
                  **({"checkpoint": request.checkpoint, "checkpoint_step": subject.step} if subject.origin is None
                     else {}), "checkpoint_choice": subject.choice}
    groups = [statistics.patient_of(i) for i in subject.test.ids] if subject.task == "segmentation" else None
    if groups is not None:  # refuse a Dice family the bootstrap cannot decide before any mask is computed
        try:
            for name, *_, ablations in jobs:
                if name != "baseline":
                    statistics.check_bootstrap(len(ablations), rule.alpha, n_patients=len(set(groups)))
        except ValueError as err:
            raise abl.SpecError(str(err)) from None
    ledger.declare(workdir, "ablate", ["ablation"])
    results = store.ResultStore(workdir / "ablation", provenance)

    def evaluate(ablations, on_chunk):
        return engine.evaluate(subject.model, subject.variables, ablations, layers, subject.images, subject.targets,
                               image_mean=subject.image_mean, image_std=subject.image_std, metric=subject.metric,
                               batch_size=batch_size, method=request.method,
                               memory_budget_mb=request.memory_budget_mb, initial_params=initial_params,
                               on_chunk=on_chunk, batchnorm=request.batchnorm)

    run = _Sweep(workdir, request, subject, layers, results, evaluate, log)
    with results.lock(log=log):
        written, all_rows = run.tables(jobs, statistics.paired_tester(subject.metric, groups=groups), rule, provenance)
    # the qualitative figure reads our models' (logits, intermediates); a user's model returns its own outputs
    if subject.task == "segmentation" and subject.origin is None and devices.is_writer():
        written += qualitative.qualitative_figure(workdir / "ablation", all_rows, resolved, subject=subject,
                                                 initial_params=initial_params)
    devices.barrier(f"ablate {workdir}: tables written")
    return written


def _supported(request: Request, layers, log) -> Request:
    """``request`` less the structure protocols when it asked for a family (``--protocol all``) and the model does
    not declare its stages and units; one line says which were skipped and why."""
    if not request.only_supported or abl.declares_structure(layers):
        return request
    skipped = [p for p in request.chosen_protocols() if p in STRUCTURE_PROTOCOLS]
    kept = [p for p in request.chosen_protocols() if p not in skipped]
    if skipped:
        log(f"skipped {', '.join(skipped)}: they read stages, units and roles, which this model does not declare "
            f"(ablation_place, as resnet_jax's ResNet does); running {', '.join(kept)}")
    return dataclasses.replace(request, protocols=kept)


def _initial_params(ablations, subject: Subject, initial):
    """The initial parameters when some mask (spec file's or protocols') is ``reinit``, else None."""
    if not any(a.kind == "reinit" for a in ablations):
        return None
    if initial is None:
        raise abl.SpecError("kind reinit needs the model's initial parameters, which only a run trained here keeps; "
                            f"valid kinds for this model: {[k for k in abl.KINDS if k != 'reinit']}")
    return initial(subject.variables["params"])


def _jobs(request: Request, layers) -> list[tuple[str, str, list | None, list[abl.Ablation]]]:
    """``(table name, kind, the spec file's specs or None, resolved masks)`` per protocol and for the spec file;
    every mask is resolved before any is computed (a bad spec fails first)."""
    jobs = [(p, "cut-identity" if p == "identity-shortcut" else request.kind or "zero-kernel", None)
            for p in request.chosen_protocols()]
    custom = abl.load_specs(request.spec_file) if request.spec_file else None
    if custom and request.kind is not None:
        custom = [dataclasses.replace(spec, kind=request.kind) for spec in custom]
    if custom:
        kinds = sorted({spec.kind for spec in custom})
        jobs.append((spec_table_name(request.spec_file), kinds[0] if len(kinds) == 1 else "+".join(kinds), custom))
    return [(name, k, specs, [] if name == "baseline" else abl.resolve_all(
        specs or protocol_specs(name, layers, kind=k), layers)) for name, k, specs in jobs]


def spec_table_name(spec_file: str | os.PathLike) -> str:
    """A spec file's table name, ``spec-<file stem>-<first 8 hex digits of the file's sha256>``: readable, and
    two files (of one name or not) never share a table while the same file resumes its own. The table's stem adds
    the kind computed as protocol tables do (``.zero-branch``; none for zero-kernel)."""
    path = Path(spec_file)
    return f"spec-{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def _batch_size(request: Request, n_examples: int) -> int:
    if request.batchnorm != "batch":
        return request.batch_size
    batch_size = whole_batch_size(n_examples, request.batch_size) if request.whole_batches else request.batch_size
    try:
        engine.check_batch_statistics(n_examples, batch_size, [], "weights")
    except ValueError as err:
        raise abl.SpecError(f"--batchnorm batch: {err}") from None
    return batch_size


@dataclass
class _Sweep:
    """One ``ablate`` call's protocols run against one store, each written as a table with its statistics."""

    workdir: Path
    request: Request
    subject: Any
    layers: Any
    results: store.ResultStore
    evaluate: Any
    log: Any

    def rows(self, name: str, kind: str | None = None, specs=None) -> list[dict]:
        return run_protocol(name, store=self.results, evaluate=self.evaluate, layers=self.layers, kind=kind,
                            specs=specs, metric_name=self.subject.metric.name, log=self.log)

    def tables(self, jobs, test, rule: statistics.Decision, provenance: dict) -> tuple[list[Path], list[dict]]:
        base = self.rows("baseline")[0]
        warning = metrics.competence_warning(self.subject.metric, base["value"], self.subject.targets)
        if warning:
            self.log(f"WARNING: {warning}")
        written, all_rows = [], []
        for name, kind, specs, _ in jobs:
            rows = with_statistics(self.rows(name, kind, specs), self.results.load(), test, rule=rule)
            extra = {}
            if name == "pairs":  # interactions need each conv alone: scored now unless the store has them
                rows = interactions(rows, self.rows("single", kind))
                extra = strongest_interactions(rows)
            all_rows += rows
            written += self._write(name, kind, rows, {"provenance": provenance, "warning": warning,
                                                      "statistics": _statistics_meta(rule, self.subject.metric),
                                                      "margin_sensitivity": margin_sensitivity(rows, rule.margin),
                                                      **extra})
        return written, all_rows

    def _write(self, name: str, kind: str, rows: list[dict], meta: dict) -> list[Path]:
        out = self.workdir / "ablation"
        stem = tables.table_stem(name, kind)  # one table per protocol, or spec file, and kind
        title = f"{name} ({kind})" if name != "baseline" else "baseline"
        if self.request.batchnorm == "batch":
            stem, title = f"{stem}.bn-batch", f"{title}, BatchNorm on batch statistics"
        figure = (_draw(name, rows, out / f"{stem}.png", title=f"{self.workdir.name}: {title}", layers=self.layers)
                  if devices.is_writer() else None)  # one process writes a job's files
        meta = {"title": title, "description": DESCRIPTIONS.get(name, f"Specs from {self.request.spec_file}."),
                "figure": figure.name if figure else None, **meta, "seconds": float(sum(r["seconds"] for r in rows))}
        written = list(tables.write_table(rows, out, stem, meta=meta))
        if devices.is_writer():
            self.log(f"wrote {out / stem}.csv")
        return written


def _statistics_meta(rule: statistics.Decision, metric) -> dict[str, Any]:
    return {"margin": rule.margin, "alpha": rule.alpha, "method": statistics.method_text(metric),
            "correction": "Bonferroni-simultaneous bounds across the protocol's masks (level 1 - alpha/m); "
                          "any-change p-values Holm-adjusted"}


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
