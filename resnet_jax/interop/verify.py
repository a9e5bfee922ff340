"""Cross-framework verification: the ablation tables of a run, recomputed in PyTorch.

:func:`ablation_in_torch` applies an :class:`~resnet_jax.ablation.Ablation` to a torchvision
``state_dict`` by canonical layer name, independently of the JAX mask code;
:func:`verify_workdir` scores the baseline and every mask of chosen protocols in both frameworks on
the same test images and says where they differ; :func:`import_torch_run` turns a torchvision
checkpoint into a run directory that ``evaluate``, ``ablate`` and ``verify`` accept.

Tolerances. float32 forward passes of one network in two frameworks differ by rounding, which
grows with depth: ~1e-5 relative at ResNet34's last stage (tests/test_convert.py), i.e. ~1e-4 on
logits of order 10; measured on a trained CIFAR-10 ResNet34 (500 test images, every protocol's
masks of kinds zero-kernel, zero-branch, lesion and reinit): at most 2.7e-5. ``LOGIT_TOL = 1e-3`` leaves well over an order of magnitude for that, while a
wrongly ablated or mis-converted tensor moves logits by 1e-2 or (far) more. A prediction may flip where
the top-2 margin is within rounding, so disagreements count as failures only on examples whose
JAX margin is at least ``MARGIN_TOL = 1e-4``; note that a margin between 1e-4 and twice the
observed logit deviation could still flip by rounding alone, so a failure of that kind alone is
worth reading before blaming the ablation (the table reports both numbers).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpointing, configs, ledger, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine
from resnet_jax.ablation import protocols as prot
from resnet_jax.data.inputs import normalize
from resnet_jax.interop import convert
from resnet_jax.models import resnet as models
from resnet_jax.training import classification, runs

LOGIT_TOL = 1e-3
MARGIN_TOL = 1e-4
CSV_COLUMNS = ("protocol", "mask", "kind", "n_examples", "jax_value", "torch_value", "abs_delta",
               "max_logit_deviation", "disagreements", "low_margin_examples", "ok")


# --------------------------------------------------------------------------- ablations in torch


def ablation_in_torch(state_dict: Mapping[str, Any], ablation: abl.Ablation, layers: Sequence[abl.Layer], *,
                      arch: str, initial: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy of a torchvision ``state_dict`` with ``ablation`` applied, tensor by tensor.

    ``zero-kernel`` zeroes each named conv's weight; ``zero-branch`` also its BatchNorm's weight and
    bias; ``lesion`` the weight and bias of the last BatchNorm of each named unit's residual branch;
    ``reinit`` copies each kernel from ``initial`` (the run's initial state_dict); ``rerandomize``
    from a fresh JAX init of ``arch`` with the ablation's seed, converted, so both frameworks see the
    very tensors the JAX engine draws. Edited entries are new tensors; the others are shared with
    ``state_dict``, which is never modified.

    Args:
      state_dict: ``convert.to_torch_state_dict(variables, arch=...)`` or any torchvision ResNet's.
      ablation: a resolved ablation (its ``layers`` are canonical conv names of ``layers``).
      layers: the model's catalogue (:func:`ablation.catalogue`).
      arch: the architecture, for ``rerandomize``.
      initial: the initial state_dict, for ``reinit``.
    """
    torch = convert.import_torch()
    by_name = {l.name: l for l in layers}
    unknown = [n for n in ablation.layers if n not in by_name]
    if unknown:
        raise abl.SpecError(f"ablation {ablation.name!r}: unknown layer(s) {unknown}; valid: {list(by_name)}")
    source = _replacement_source(state_dict, ablation, arch=arch, initial=initial)
    out = dict(state_dict)
    for key in sorted(_torch_targets(ablation, layers)):
        if key not in state_dict:
            raise ValueError(f"ablation {ablation.name!r} edits {key!r}, which the state_dict lacks")
        if source is None:
            out[key] = torch.zeros_like(state_dict[key])
        else:
            out[key] = source[key].detach().clone()
    return out


def _torch_targets(ablation: abl.Ablation, layers: Sequence[abl.Layer]) -> set[str]:
    """torch keys an ablation replaces; names go through convert's one name map."""
    by_name = {l.name: l for l in layers}
    module = convert.torch_module_name
    keys = set()
    for name in ablation.layers:
        layer = by_name[name]
        if ablation.kind == "lesion":
            last = [l for l in layers if l.unit == layer.unit and "shortcut" not in l.roles][-1]
            keys |= {f"{module(last.norm)}.weight", f"{module(last.norm)}.bias"}
            continue
        keys.add(f"{module(layer.name)}.weight")
        if ablation.kind == "zero-branch":
            keys |= {f"{module(layer.norm)}.weight", f"{module(layer.norm)}.bias"}
    return keys


def _replacement_source(state_dict, ablation: abl.Ablation, *, arch: str, initial) -> Mapping[str, Any] | None:
    """Where replaced tensors come from: None (zeros), the initial state_dict, or a fresh init."""
    if ablation.kind in ("zero-kernel", "zero-branch", "lesion"):
        return None
    if ablation.kind == "reinit":
        if initial is None:
            raise ValueError("reinit needs the run's initial state_dict (initial=...)")
        return initial
    if ablation.kind == "rerandomize":
        num_classes = int(state_dict["fc.weight"].shape[0])
        stem = "cifar" if tuple(state_dict["conv1.weight"].shape[-2:]) == (3, 3) else "torchvision"
        return _fresh_state_dict(arch, num_classes, stem, int(ablation.seed))
    raise abl.SpecError(f"unknown kind {ablation.kind!r}; valid: {list(abl.KINDS)}")


@functools.lru_cache(maxsize=2)
def _fresh_state_dict(arch: str, num_classes: int, stem: str, seed: int) -> dict[str, Any]:
    """The engine's ``rerandomize`` draw (``model.init(key(seed))`` under jit, a uint32 seed), in torch form."""
    model = models.create_model(arch, num_classes=num_classes, stem=stem)
    sample = jnp.zeros((1, 32, 32, 3), jnp.float32)  # parameter values do not depend on the image size
    variables = jax.jit(lambda s: model.init(jax.random.key(s), sample))(np.uint32(seed))
    return convert.to_torch_state_dict(jax.device_get(variables), arch=arch)


# --------------------------------------------------------------------------- verifying a run


class _AccuracyWithLogits(metrics.Accuracy):
    """Accuracy that also hands back the logits, so the two frameworks can be compared value by value."""

    def per_example(self, logits, labels):
        return {**super().per_example(logits, labels), "logits": logits}


@dataclasses.dataclass(frozen=True)
class _Job:
    protocol: str
    ablation: abl.Ablation


def _jobs(protocols: Sequence[str], kinds: Sequence[str], layers: Sequence[abl.Layer], log) -> list[_Job]:
    """Every (protocol, kind) mask, resolved before any compute; pairs that cannot exist are skipped."""
    jobs, asked = [], [p for p in protocols if p != "baseline"]
    for p in asked:
        errors = []
        for k in kinds:
            try:
                specs = prot.protocol_specs(p, layers, kind=k)
            except abl.SpecError as err:  # e.g. lesion x shortcut
                errors.append(err)
                log(f"skipping {p} ({k}): {err}")
                continue
            jobs += [_Job(p, a) for a in abl.resolve_all(specs, layers)]
        if len(errors) == len(kinds):
            raise errors[0]
    return jobs


def verify_workdir(workdir: str | os.PathLike, *, protocols: Sequence[str] = prot.STUDY_PROTOCOLS,
                   n_examples: int | None = 1000, data_dir: str | os.PathLike | None = None,
                   kinds: Sequence[str] = ("zero-kernel",), checkpoint: str = "best", method: str = "auto",
                   batch_size: int = 128, logit_tol: float = LOGIT_TOL, margin_tol: float = MARGIN_TOL,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the baseline and every mask of ``protocols`` x ``kinds`` in JAX and in PyTorch; compare.

    Both see the run's checkpoint, the same ``n_examples`` test images (the subset ``ablate`` uses)
    normalised as in training (:func:`resnet_jax.data.inputs.normalize`); JAX through the ablation engine that
    writes the tables (in full float32, even for a bfloat16 run or on a GPU, whose TF32 convs alone
    would exceed the tolerance), PyTorch through a torchvision model in eval mode on the CPU with
    the ablation applied to its state_dict (:func:`ablation_in_torch`). A row fails when its max logit deviation exceeds
    ``logit_tol`` or a prediction differs on an example whose JAX top-2 margin is ``>= margin_tol``.
    (protocol, kind) pairs that do not exist (a lesion of a projection) are skipped with a note.

    Example::

        result = verify_workdir("runs/c10-cpu", protocols=["single"], kinds=["zero-kernel", "lesion"])
        assert result["ok"], format_table(result["rows"])

    Returns:
      ``{'rows': [...], 'ok': bool, 'csv': path}``: one row per mask (:data:`CSV_COLUMNS`), also
      written to ``<workdir>/verify.csv``, and whether every row is ok.
    """
    workdir = Path(workdir)
    kinds = list(dict.fromkeys(kinds))
    _check_request(workdir, protocols, kinds)
    run = runs.restore(workdir, which=checkpoint, data_dir=data_dir, command="verify")
    config, model, state, test = run.config, run.model, run.state, run.test
    arch, stem = config["model"]["name"], config["model"]["stem"]
    if config["model"]["dtype"] != "float32":  # bfloat16 rounding alone exceeds any useful tolerance
        log(f"note: the run computes in {config['model']['dtype']}; verifying its float32 forward pass")
        model = classification.build_model({**config, "model": {**config["model"], "dtype": "float32"}}, test.num_classes)
    variables = jax.device_get(state.variables)
    test = test.take(n_examples, seed=0)
    mean, std = np.asarray(state.image_mean, np.float32), np.asarray(state.image_std, np.float32)
    layers = abl.catalogue(model, variables, input_shape=(1, *test.images.shape[1:]))
    # The baseline (no layers) takes the first kind, so it joins that kind's engine call and compiles nothing new.
    baseline = abl.Ablation("baseline", kinds[0] if kinds else "zero-kernel", ())
    jobs = [_Job("baseline", baseline)] + _jobs(protocols, kinds, layers, log)
    needs_initial = any(j.ablation.kind == "reinit" for j in jobs)
    initial = checkpointing.load_initial(workdir, variables["params"]) if needs_initial else None

    log(f"scoring {len(jobs)} masks on {len(test)} test images in JAX, then in PyTorch")
    jax_results = _jax_results(model, variables, jobs, layers, test, mean, std, method=method,
                               batch_size=batch_size, initial=initial)
    torch_logits = _torch_logits_fn(variables, layers, test.images, mean, std, arch=arch, stem=stem,
                                    initial=initial, batch_size=batch_size, config=config)
    from tqdm import tqdm

    rows = [_compare(j.protocol, jax_results[(j.ablation.kind, j.ablation.name)], torch_logits(j.ablation),
                     test.labels, logit_tol=logit_tol, margin_tol=margin_tol)
            for j in tqdm(jobs, desc="PyTorch", unit="mask", disable=None, leave=False)]
    ledger.declare(workdir, "verify", ["verify.csv"])
    path = write_csv(rows, workdir / "verify.csv")
    return {"rows": rows, "ok": all(r["ok"] for r in rows), "csv": str(path)}


VERIFIABLE_KINDS = tuple(k for k in abl.KINDS if k not in abl.GATE_ONLY_KINDS)


def _check_request(workdir: Path, protocols: Sequence[str], kinds: Sequence[str]) -> None:
    """Fail on bad names and runs without a torchvision twin before the (slow) restore."""
    for k in kinds:
        if k not in VERIFIABLE_KINDS:
            raise abl.SpecError(f"kind {k!r} cannot be checked in PyTorch (it is a gate, not weights); valid: "
                                f"{list(VERIFIABLE_KINDS)}")
    for p in protocols:
        if p not in prot.PROTOCOLS or p == "identity-shortcut":
            raise abl.SpecError(f"protocol {p!r} cannot be checked in PyTorch; valid: "
                                f"{[q for q in prot.PROTOCOLS if q != 'identity-shortcut']} or 'all'")
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with `resnet-jax train`")
    config = json.loads(path.read_text())
    arch = config.get("model", {}).get("name")
    if config.get("task", "classification") != "classification" or arch not in convert.TORCHVISION_ARCHS:
        raise configs.ConfigError(f"{workdir}: model {arch!r} has no torchvision counterpart; verify needs a "
                                  f"classification run of {list(convert.TORCHVISION_ARCHS)}")


def _jax_results(model, variables, jobs: Sequence[_Job], layers, test, mean, std, *, method, batch_size,
                 initial) -> dict[tuple[str, str], engine.Result]:
    """Engine results keyed by (kind, mask name), one engine call per kind; a mask shared by two
    protocols (a shortcut is also a single conv) runs once. The baseline rides with the first kind."""
    by_kind: dict[str, dict[str, abl.Ablation]] = {}
    for j in jobs:
        by_kind.setdefault(j.ablation.kind, {})[j.ablation.name] = j.ablation
    out = {}
    # Full float32 convs: on recent GPUs the default is TF32 (~1e-3 relative), far above the tolerance,
    # while the torch side runs float32 on the CPU. A no-op on CPUs.
    with jax.default_matmul_precision("highest"):
        for kind, ablations in by_kind.items():
            for r in engine.evaluate(model, variables, list(ablations.values()), layers, test.images,
                                     test.labels, image_mean=mean, image_std=std, metric=_AccuracyWithLogits(),
                                     batch_size=batch_size, method=method, initial_params=initial):
                out[(kind, r.name)] = r
    return out


def _torch_logits_fn(variables, layers, images: np.ndarray, mean, std, *, arch: str, stem: str, initial,
                     batch_size: int, config: Mapping[str, Any] | None = None) -> Callable[[abl.Ablation], np.ndarray]:
    """``ablation -> logits`` of the torchvision twin on ``images`` (NCHW, normalised as in JAX); cached. A slim
    run (units eliminated) is checked against its exported torch model (:mod:`resnet_jax.interop.export`)."""
    torch = convert.import_torch()
    if config is not None and config["model"].get("eliminated"):
        from resnet_jax.interop import export

        to_sd = export.torch_state_dict
        net = export.build(export.architecture(config, variables)).eval()
    else:
        to_sd = functools.partial(convert.to_torch_state_dict, arch=arch)
        net = None
    state_dict = to_sd(variables)
    initial_sd = None if initial is None else to_sd({"params": initial, "batch_stats": variables["batch_stats"]})
    net = net or convert.torchvision_model(arch, num_classes=int(state_dict["fc.weight"].shape[0]), stem=stem).eval()
    x = np.asarray(normalize(images, mean, std))  # the normalisation of training and of the engine
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    cache: dict[tuple[str, str], np.ndarray] = {}

    def logits(a: abl.Ablation) -> np.ndarray:
        key = (a.kind, a.name)
        if key not in cache:
            sd = state_dict if not a.layers else ablation_in_torch(state_dict, a, layers, arch=arch,
                                                                   initial=initial_sd)
            net.load_state_dict(sd)
            with torch.inference_mode():
                cache[key] = np.concatenate([net(x[i:i + batch_size]).numpy()
                                             for i in range(0, len(x), batch_size)])
        return cache[key]

    return logits


def _compare(protocol: str, result: engine.Result, torch_logits: np.ndarray, labels: np.ndarray, *,
             logit_tol: float, margin_tol: float) -> dict[str, Any]:
    pe = result.per_example
    jax_logits = np.asarray(pe["logits"], np.float32)
    torch_pred = np.argmax(torch_logits, -1)
    torch_value = float(np.mean(torch_pred == labels))
    same = jax_logits == torch_logits  # equal infinities deviate by 0, NaNs never match
    deviation = float(np.max(np.where(same, 0.0, np.abs(jax_logits - torch_logits)), initial=0.0))
    disagree = np.asarray(pe["prediction"]) != torch_pred
    low_margin = np.asarray(pe["margin"]) < margin_tol
    ok = bool(deviation <= logit_tol and not np.any(disagree & ~low_margin))
    return {"protocol": protocol, "mask": result.name, "kind": result.kind if result.layers else "none",
            "n_examples": int(len(labels)), "jax_value": float(result.value), "torch_value": torch_value,
            "abs_delta": abs(float(result.value) - torch_value), "max_logit_deviation": deviation,
            "disagreements": int(disagree.sum()), "low_margin_examples": int(low_margin.sum()), "ok": ok}


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``rows`` as CSV, atomically (a reader never sees half a table)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def verdict(result: Mapping[str, Any]) -> str:
    """One line: whether JAX and PyTorch agree on every mask, and by how much at worst."""
    rows = result["rows"]
    failed = [r for r in rows if not r["ok"]]
    worst = max((r["max_logit_deviation"] for r in rows), default=0.0)
    head = "PyTorch agrees" if not failed else f"PyTorch DISAGREES on {len(failed)} of {len(rows)} masks"
    return (f"{head}: {len(rows)} masks on {rows[0]['n_examples'] if rows else 0} images, "
            f"{sum(r['disagreements'] for r in rows)} prediction disagreements, max logit deviation {worst:.2e} "
            f"(tolerance {LOGIT_TOL:g}), {sum(r['low_margin_examples'] for r in rows)} examples with a top-2 margin "
            f"below {MARGIN_TOL:g}")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width table of :func:`verify_workdir`'s rows."""
    head = (f"{'protocol':<27}{'mask':<22}{'kind':<12}{'jax':>8}{'torch':>8}{'|delta|':>9}"
            f"{'max|dlogit|':>13}{'disagree':>10}{'low-margin':>12}  ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['protocol']:<27}{r['mask']:<22}{r['kind']:<12}{r['jax_value']:>8.4f}"
                     f"{r['torch_value']:>8.4f}{r['abs_delta']:>9.4f}{r['max_logit_deviation']:>13.2e}"
                     f"{r['disagreements']:>10}{r['low_margin_examples']:>12}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
