"""The study's experiments as lists of specs, and sweeps that survive interruption.

Protocols (PROTOCOLS.md, Study A): ``baseline``; ``single`` (one mask per conv kernel);
``stage-except-decomposition`` (per stage, every conv but its decomposition and adjacent ones,
i.e. units 1..n-1); ``shortcut`` (per stage with a projection, that projection).

Every finished mask is appended (and fsynced) to ``<workdir>/ablation/results.jsonl`` as its chunk
completes; a rerun skips what is there, so an interrupted sweep loses at most the chunk in flight.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import ablation as abl
from resnet_jax import engine

PROTOCOLS = ("baseline", "single", "stage-except-decomposition", "shortcut")
CSV_COLUMNS = ("mask", "kind", "layers", "metric", "value", "baseline", "delta", "n_examples", "ci_low", "ci_high")


def protocol_specs(protocol: str, layers: Sequence[abl.Layer], *, kind: str = "zero-kernel") -> list[abl.AblationSpec]:
    """The specs of a named protocol for a model's catalogue."""
    stages = sorted({l.stage for l in layers if l.stage is not None})
    prefix = _encoder_prefix(layers)
    if protocol == "single":
        if kind == "lesion":  # a lesion removes a unit: one mask per identity-shortcut unit
            units = [u for u in dict.fromkeys(l.unit for l in layers if l.unit)
                     if abl.unit_has_identity_shortcut(layers, u)]
            return [abl.AblationSpec(u, kind, (abl.Selector(patterns=(f"{u}.*",)),)) for u in units]
        return [abl.AblationSpec(l.name, kind, (abl.Selector(names=(l.name,)),)) for l in layers]
    if protocol == "stage-except-decomposition":
        return [abl.AblationSpec(f"{prefix}layer{s}", kind, (abl.Selector(stages=(s,)),),
                                 (abl.Selector(roles=("decomposition", "adjacent")),)) for s in stages]
    if protocol == "shortcut":
        if kind == "lesion":
            raise abl.SpecError("the shortcut protocol ablates projection convs, which a lesion cannot remove; "
                                f"valid kinds for it: {[k for k in abl.KINDS if k != 'lesion']}")
        shortcut_stages = [s for s in stages if any(l.stage == s and "shortcut" in l.roles for l in layers)]
        return [abl.AblationSpec(f"{prefix}layer{s}.0.downsample", kind,
                                 (abl.Selector(stages=(s,), roles=("shortcut",)),)) for s in shortcut_stages]
    raise abl.SpecError(f"unknown protocol {protocol!r}; valid: {list(PROTOCOLS)} or a spec file")


def _encoder_prefix(layers: Sequence[abl.Layer]) -> str:
    head = layers[0].name.rpartition(".")[0]
    return f"{head}." if head else ""


BASELINE = abl.Ablation("baseline", "none", ())


# Persistence ----------------------------------------------------------------------------------

def _encode(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    if array.dtype == bool:
        return {"dtype": "bool", "n": int(array.size), "b64": base64.b64encode(np.packbits(array)).decode()}
    return {"dtype": "float32", "n": int(array.size),
            "b64": base64.b64encode(array.astype(np.float32).tobytes()).decode()}


def decode(blob: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(blob["b64"])
    if blob["dtype"] == "bool":
        return np.unpackbits(np.frombuffer(raw, np.uint8))[: blob["n"]].astype(bool)
    return np.frombuffer(raw, np.float32)


class ResultStore:
    """Append-only JSONL of finished masks, keyed by (protocol, kind, mask, fingerprint)."""

    KEEP = ("correct", "loss", "score")  # per-example arrays worth keeping for statistics

    def __init__(self, directory: Path, fingerprint: str):
        self.path = Path(directory) / "results.jsonl"
        self.fingerprint = fingerprint
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[tuple[str, str, str], dict]:
        done = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash: that mask reruns
                    continue
                if row.get("fingerprint") == self.fingerprint:
                    done[(row["protocol"], row["kind"], row["mask"])] = row
        return done

    def append(self, protocol: str, results: Sequence[engine.Result], *, metric: str) -> None:
        with self.path.open("a") as fh:
            for r in results:
                row = {
                    "protocol": protocol, "kind": r.kind, "mask": r.name, "layers": list(r.layers),
                    "metric": metric, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                    "loss": r.loss, "n_examples": r.n_examples, "seconds": r.seconds,
                    "breakdown": r.breakdown, "fingerprint": self.fingerprint,
                    "per_example": {k: _encode(v) for k, v in r.per_example.items() if k in self.KEEP},
                }
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


# Running ---------------------------------------------------------------------------------------

def run_protocol(
    protocol: str,
    *,
    store: ResultStore,
    evaluate: Any,
    layers: Sequence[abl.Layer],
    kind: str = "zero-kernel",
    specs: Sequence[abl.AblationSpec] | None = None,
    metric_name: str = "accuracy",
    log=print,
) -> list[dict]:
    """Run (or finish) one protocol; return its table rows. ``evaluate(ablations, on_chunk)`` scores.

    The baseline is evaluated once per store and shared by every protocol.
    """
    if protocol != "baseline" and specs is None:
        specs = protocol_specs(protocol, layers, kind=kind)
    ablations = [BASELINE] if protocol == "baseline" else abl.resolve_all(specs, layers)
    done = store.load()
    baseline_row = _ensure_baseline(store, done, evaluate, metric_name)
    if protocol == "baseline":
        return [_table_row(baseline_row, baseline_row)]
    todo = [a for a in ablations if (protocol, a.kind, a.name) not in done]
    if todo:
        log(f"{protocol} ({kind}): {len(ablations) - len(todo)} of {len(ablations)} masks already done; "
            f"evaluating {len(todo)}")
        t0 = time.perf_counter()
        evaluate(todo, lambda chunk: store.append(protocol, chunk, metric=metric_name))
        log(f"{protocol} ({kind}): {len(todo)} masks in {time.perf_counter() - t0:.1f}s")
    done = store.load()
    return [_table_row(done[(protocol, a.kind, a.name)], baseline_row) for a in ablations]


def _ensure_baseline(store: ResultStore, done: dict, evaluate, metric_name: str) -> dict:
    key = ("baseline", "none", "baseline")
    if key not in done:
        evaluate([abl.Ablation("baseline", "zero-kernel", ())],
                 lambda chunk: store.append("baseline", [_as_none_kind(r) for r in chunk], metric=metric_name))
        done = store.load()
    return done[key]


def _as_none_kind(result: engine.Result) -> engine.Result:
    import dataclasses

    return dataclasses.replace(result, kind="none")


def _table_row(row: dict, baseline: dict) -> dict:
    return {
        "mask": row["mask"], "kind": row["kind"], "layers": " ".join(row["layers"]), "metric": row["metric"],
        "value": row["value"], "baseline": baseline["value"], "delta": row["value"] - baseline["value"],
        "n_examples": row["n_examples"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
        "seconds": row.get("seconds", float("nan")), **row.get("breakdown", {}),
    }


def breakdown_columns(rows: Sequence[dict]) -> list[str]:
    """The metric's extra columns present in ``rows`` (e.g. ``dice_lv``), in first-seen order."""
    fixed = set(CSV_COLUMNS) | {"seconds"}
    return list(dict.fromkeys(k for r in rows for k in r if k not in fixed))


def write_table(rows: Sequence[dict], directory: Path, stem: str, *, meta: dict | None = None) -> tuple[Path, Path]:
    """``<stem>.csv`` and ``<stem>.json`` (rows plus metadata), each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = directory / f"{stem}.csv", directory / f"{stem}.json"
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*CSV_COLUMNS, *breakdown_columns(rows)], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(csv_path)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"rows": list(rows), **(meta or {})}, indent=2))
    tmp.replace(json_path)
    return csv_path, json_path


def table_stem(protocol: str, kind: str) -> str:
    return protocol if kind == "zero-kernel" or protocol == "baseline" else f"{protocol}.{kind}"


DESCRIPTIONS = {
    "baseline": "The trained model, unablated.",
    "single": "One mask per conv kernel, each replacing exactly that kernel; network order. Circled points are "
              "decomposition convs (they change the channel count).",
    "stage-except-decomposition": "Per stage, every conv except its decomposition and adjacent convs "
                                  "(i.e. residual units 1..n-1 of the stage).",
    "shortcut": "Per stage with a projection shortcut, that 1x1 projection conv.",
}


@dataclasses.dataclass(frozen=True)
class Subject:
    """What a sweep needs from a trained run: model, weights, test data, metric, normalisation.

    ``images`` are normalised by the engine as ``(images / 255 - image_mean) / image_std``.
    ``extra_figures(directory, rows, ablations, initial_params)``, if given, draws task-specific
    figures from the sweep's table rows and resolved ablations and returns the paths it wrote.
    """

    model: Any
    variables: Any
    step: int
    images: np.ndarray
    targets: np.ndarray
    metric: Any
    image_mean: np.ndarray
    image_std: np.ndarray
    extra_figures: Callable[..., list[Path]] | None = None


def restore_subject(workdir, *, checkpoint: str = "best", data_dir=None, n_examples: int | None = None) -> Subject:
    """The run in ``workdir`` as a :class:`Subject`: classification (accuracy) or, by its config's
    ``task``, segmentation (Dice; see ``seg_train.ablation_subject``)."""
    import jax

    from resnet_jax import metrics, train

    config_path = Path(workdir) / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()).get("task") == "segmentation":
        from resnet_jax import seg_train

        return seg_train.ablation_subject(workdir, which=checkpoint, data_dir=data_dir, n_examples=n_examples)
    _, model, state, test = train.restore_run(workdir, which=checkpoint, data_dir=data_dir)
    test = test.take(n_examples, seed=0)
    return Subject(model=model, variables=jax.device_get(state.variables), step=int(state.step), images=test.images,
                   targets=test.labels, metric=metrics.Accuracy(), image_mean=np.asarray(state.image_mean),
                   image_std=np.asarray(state.image_std))


def ablate_workdir(workdir, *, protocols: Sequence[str] = PROTOCOLS, kind: str = "zero-kernel",
                   spec_file=None, data_dir=None, n_examples: int | None = None, method: str = "auto",
                   batch_size: int = 128, memory_budget_mb: float = 2048, checkpoint: str = "best",
                   log=print) -> list[Path]:
    """Run protocols (or a spec file) on a trained run; write tables and figures under ``ablation/``."""
    from resnet_jax import checkpointing, reports

    workdir = Path(workdir)
    if kind not in abl.KINDS:
        raise abl.SpecError(f"unknown kind {kind!r}; valid: {list(abl.KINDS)}")
    for p in protocols:
        if p not in PROTOCOLS:
            raise abl.SpecError(f"unknown protocol {p!r}; valid: {list(PROTOCOLS)} or 'all'")
    custom = abl.load_specs(spec_file) if spec_file else None
    subject = restore_subject(workdir, checkpoint=checkpoint, data_dir=data_dir, n_examples=n_examples)
    model, variables = subject.model, subject.variables
    layers = abl.catalogue(model, variables, input_shape=(1, *subject.images.shape[1:]))
    jobs = [("custom", kind, custom)] if custom else [(p, kind, None) for p in protocols]
    resolved = {}
    for name, k, specs in jobs:  # every spec resolves before any compute
        if name != "baseline":
            ablations = abl.resolve_all(specs or protocol_specs(name, layers, kind=k), layers)
            resolved.update((a.name, a) for a in ablations)
    needs_initial = any(s.kind == "reinit" for s in custom or []) or kind == "reinit"
    initial = checkpointing.load_initial(workdir, variables["params"]) if needs_initial else None
    store = ResultStore(workdir / "ablation", fingerprint=f"step{subject.step}-n{len(subject.images)}")

    def evaluate(ablations, on_chunk):
        return engine.evaluate(model, variables, ablations, layers, subject.images, subject.targets,
                               image_mean=subject.image_mean, image_std=subject.image_std, metric=subject.metric,
                               batch_size=batch_size, method=method, memory_budget_mb=memory_budget_mb,
                               initial_params=initial, on_chunk=on_chunk)

    written, all_rows = [], []
    decomposition = {l.name for l in layers if "decomposition" in l.roles}
    for name, k, specs in jobs:
        rows = run_protocol(name, store=store, evaluate=evaluate, layers=layers, kind=k, specs=specs,
                            metric_name=subject.metric.name, log=log)
        all_rows += rows
        stem = table_stem(name, k)
        figure = workdir / "ablation" / f"{stem}.png"
        title = f"{name} ({k})" if name != "baseline" else "baseline"
        if name == "single":
            reports.plot_single(rows, decomposition, figure, title=f"{workdir.name}: {title}")
        elif name != "baseline":
            reports.plot_bars(rows, figure, title=f"{workdir.name}: {title}")
        else:
            figure = None
        meta = {"title": title, "description": DESCRIPTIONS.get(name, f"Specs from {spec_file}."),
                "figure": str(figure) if figure else None, "checkpoint_step": subject.step,
                "seconds": float(sum(r["seconds"] for r in rows))}
        written += list(write_table(rows, workdir / "ablation", stem, meta=meta))
        log(f"wrote {workdir / 'ablation' / stem}.csv")
    if subject.extra_figures is not None:
        written += subject.extra_figures(workdir / "ablation", all_rows, resolved, initial)
    return written
