"""Evaluate many ablations over a dataset: one compiled function per chunk of masks.

Two formulations behind one interface, chosen per ablation kind:

* ``gates``: for whole-kernel kinds (zero-kernel, zero-branch, lesion) the weights stay shared
  and unbatched; each of the K ablations in a chunk multiplies one conv output (or BN output, or
  residual branch) by 0 for its copy of the batch, so K masked models are one forward with shared
  weights. ``x * 0 == conv(x, 0)`` exactly for finite activations, so this is the same model as
  the weight mask, and plain convs stay plain (vmapping over kernels would turn every conv into a
  slow grouped conv). Shared prefixes: the forward starts on the clean batch alone, and each
  ablation's copy joins it at the residual unit of its first ablated layer, so what comes before
  is computed once per chunk (a baseline reads the clean rows). Past a zero gate a part of the
  network no longer depends on the image, so a copy that cuts a unit's residual branch (or its
  shortcut) takes the clean rows' other part and adds that part computed on one row: its own
  work starts at the next unit. An ablation that cuts every path from the input (the stem, or
  both parts of a unit) gives every image the same output, so it runs on one row. Evaluation
  mode only: in train mode the gated copies would share, and change, one set of batch statistics.
  A model that takes no gates of its own (any Flax model) is gated at its modules' outputs by intercepting
  their calls (:mod:`resnet_jax.ablation.networks`), and the forward is vmapped over the gates alone: what
  precedes the first module a chunk gates carries no mask axis, so it is computed once per chunk, and a conv
  past it meets a batched input with a shared kernel (a plain conv over a larger batch). Masks are ordered by
  the first module they touch, so a chunk's models share as much of the forward as they can.
* ``weights``: the reference semantics and the only option for reinit/rerandomize: ``lax.map``
  over the chunk's masks, each applied to the variables with :func:`ablation.apply`.

Chunks are sized from a memory budget, checked against XLA's own buffer plan of the compiled
chunk; results never depend on the chunk size.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from resnet_jax import devices
from resnet_jax import metrics as metrics_lib
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import networks
from resnet_jax.data.inputs import normalize
from resnet_jax.models import batching

METHODS = ("auto", "gates", "weights")
BATCHNORM = ("running", "batch")
BATCH_ORDER_SEED = 0


@dataclasses.dataclass(frozen=True)
class Result:
    """One ablation's score over the evaluated examples.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> images = np.random.default_rng(0).random((16, 8, 8, 3), np.float32)
        >>> labels = np.asarray(model.apply(variables, images).argmax(-1))  # the model's own answers: accuracy 1
        >>> from resnet_jax.ablation import ablate
        >>> baseline, conv, dense = ablate(model, variables, images, labels)
        >>> baseline.name, baseline.value, baseline.n_examples, sorted(baseline.per_example)
        ('baseline', 1.0, 16, ['correct', 'loss', 'margin', 'prediction'])
        >>> dense.name, dense.kind, dense.layers, dense.ci_low <= dense.value <= dense.ci_high
        ('layers_3', 'zero-kernel', ('layers_3',), True)
    """

    name: str
    kind: str
    layers: tuple[str, ...]
    value: float
    ci_low: float
    ci_high: float
    loss: float
    n_examples: int
    per_example: dict[str, np.ndarray]
    seconds: float
    breakdown: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. Dice per class
    temp_bytes: int = 0  # XLA's scratch memory for the program that scored it (gates; 0: not measured)
    flops: float = 0.0  # XLA's count of the program's floating-point work over every batch, this mask's share


class Metric(Protocol):
    """What the engine asks of a metric (``resnet_jax.metrics``): per-example values on device, a summary
    with a 95 % interval on host, and optionally named extra columns (``breakdown``)."""

    name: str

    def per_example(self, logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]: ...

    def aggregate(self, per_example: Mapping[str, np.ndarray]) -> tuple[float, float, float]: ...


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything a sweep scores against, fixed for the whole sweep: the model and its catalogue, the data,
    its normalisation, the metric and the batch size (a multiple of the device count)."""

    model: Any  # a flax.linen or flax.nnx module, or a networks.Network
    variables: Mapping[str, Any]
    layers: Sequence[abl.Layer]
    images: np.ndarray
    targets: np.ndarray
    image_mean: Any
    image_std: Any
    metric: Metric
    batch_size: int
    batchnorm: str = "running"



@dataclasses.dataclass(frozen=True)
class Batches:
    """The evaluated examples as one stack of padded batches, ``(n_batches, batch, ...)``, placed on the devices
    once per engine call and split over them along the batch axis. A chunk's program loops over the stack
    inside compiled code, so the host dispatches once per chunk and reads its per-example results once."""

    images: jax.Array
    targets: jax.Array
    n_examples: int
    order: np.ndarray | None = None  # the examples' order in the batches, when not their own (batch statistics)

    @classmethod
    def place(cls, inputs: Inputs, mesh, order: np.ndarray | None = None) -> Batches:
        b = inputs.batch_size
        images, targets = (inputs.images, inputs.targets) if order is None else (inputs.images[order],
                                                                                  inputs.targets[order])
        n_batches = -(-len(images) // b)
        stack = lambda a: devices.pad_rows(a, n_batches * b).reshape(n_batches, b, *a.shape[1:])  # noqa: E731
        placed = devices.shard_stacked(mesh, stack(images), stack(targets))
        return cls(*placed, len(images), order)


def batch_order(n: int, *, seed: int = BATCH_ORDER_SEED) -> np.ndarray:
    """The fixed random order in which batch-statistics evaluation batches the examples: every batch is then a
    random sample of the data (a split stored by class would otherwise give one-class batches)."""
    return np.random.default_rng(seed).permutation(n)


def activation_bytes_per_example(layers: Sequence[abl.Layer], *, peak: bool = False) -> int:
    """A conservative float32 activation footprint of one forward: conv, BN and ReLU outputs of
    every layer, or with ``peak`` of the largest one (an inference forward frees the rest)."""
    sizes = [l.output_hw[0] * l.output_hw[1] * l.out_channels for l in layers]
    return 4 * 3 * (max(sizes) if peak else sum(sizes))


def chunk_size(n_ablations: int, *, batch_size: int, layers: Sequence[abl.Layer], memory_budget_mb: float,
               peak: bool = False) -> int:
    """Masks per chunk from the estimate; the gate path then checks XLA's own plan against the budget."""
    per_mask = batch_size * activation_bytes_per_example(layers, peak=peak)
    return int(max(1, min(n_ablations, memory_budget_mb * 2**20 // max(per_mask, 1))))


def method_for(kind: str, method: str, *, takes_gates: bool = True) -> str:
    """How a kind is scored: ``gates`` where the kind allows (for a model that takes no gates, the kinds that
    gating module outputs expresses, :data:`catalogue.HOOK_SITES`), else ``weights``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    gate_kinds = abl.GATE_KINDS if takes_gates else abl.HOOK_SITES
    if kind in abl.GATE_ONLY_KINDS and not takes_gates:
        raise ValueError(f"kind {kind!r} needs a model that takes the engine's gates (declares ablation_gates, as "
                         f"resnet_jax's ResNet does); no change of weights or module outputs expresses it")
    if method == "gates" and kind not in gate_kinds:
        raise ValueError(f"kind {kind!r} cannot be expressed by gates; use method 'weights' or 'auto'")
    if method == "weights" and kind in abl.GATE_ONLY_KINDS:
        raise ValueError(f"kind {kind!r} cannot be expressed by weights; use method 'gates' or 'auto'")
    if method == "auto":
        return "gates" if kind in gate_kinds else "weights"
    return method


def branch_point(ablation: abl.Ablation, layers: Sequence[abl.Layer]) -> str | None:
    """Where an ablation's copy of the batch branches off the clean forward: the residual unit
    (or the stem) of its first ablated layer; ``None`` for a baseline, which *is* the clean copy."""
    if not ablation.layers:
        return None
    order = {l.name: i for i, l in enumerate(layers)}
    first = min(ablation.layers, key=order.__getitem__)
    layer = layers[order[first]]
    return layer.unit or layer.name


def cuts(ablation: abl.Ablation, layers: Sequence[abl.Layer]) -> dict[str, set[str]]:
    """The parts a gate ablation silences, per residual unit (``'residual'``, ``'shortcut'``) and
    for the stem (``'stem'``, under its name). A lesion silences the residual branch only."""
    by_name = {l.name: l for l in layers}
    out: dict[str, set[str]] = {}
    for name in ablation.layers:
        layer = by_name[name]
        if ablation.kind == "cut-identity":  # the unit still depends on the input through its branch
            out.setdefault(layer.unit, set()).add("identity")
        elif layer.unit is None:
            out.setdefault(layer.name, set()).add("stem" if "stem" in layer.roles else "other")
        elif "shortcut" in layer.roles and ablation.kind != "lesion":
            out.setdefault(layer.unit, set()).add("shortcut")
        else:
            out.setdefault(layer.unit, set()).add("residual")
    return out


def _cuts_every_path(parts_by_point: Mapping[str, set[str]]) -> bool:
    return any(parts == {"stem"} or parts >= {"residual", "shortcut"} for parts in parts_by_point.values())


def placement(ablation: abl.Ablation, layers: Sequence[abl.Layer]) -> tuple[str, str] | str | None:
    """How a gate ablation's copy joins the clean forward: ``None`` for a baseline (the clean rows),
    ``'constant'`` for an input-independent one (one row), else ``(branch point, field of
    batching.Copies)``: the part its first ablated unit loses, or ``'full'`` outside a residual unit."""
    if not ablation.layers:
        return None
    parts_by_point = cuts(ablation, layers)
    if _cuts_every_path(parts_by_point):
        return "constant"
    point = branch_point(ablation, layers)
    parts = parts_by_point[point]
    return point, next(iter(parts)) if parts <= {"residual", "shortcut"} else "full"


def _takes_gates(model) -> bool:
    """Whether a model's call takes ``gates=`` (and ``branches=``) of :mod:`resnet_jax.models.batching`: it says
    so with ``ablation_gates = True``; other models are gated by intercepting their modules' calls."""
    network = model if isinstance(model, networks.Network) else networks.Network(model, "linen")
    return network.framework == "linen" and bool(getattr(network.model, "ablation_gates", False))


def _gates_forward(model: networks.Network, metric, branches: tuple[tuple[str, batching.Copies], ...], copies: int,
                   constants: int, clean: bool, consumed: set | None = None) -> Callable:
    """One jitted forward for a chunk. Gates hold one value per model: the clean one, ``copies``
    that join the clean forward at ``branches``, then ``constants`` input-independent ones. Output
    rows: the clean model's (if ``clean``: a baseline or any copy needs it), the copies', the constants'.
    A model that takes no gates is gated by intercepting its modules' calls, one output row per row of its gates
    (the clean model's first when ``clean``), vmapped (:func:`_each_model`); ``consumed`` collects the sites that
    were gated while tracing."""
    inside = _takes_gates(model)

    def one_batch(variables, gates, images, targets, mean, std):
        b = images.shape[0]
        x = normalize(images, mean, std)
        logits = []
        if not inside:  # one row per model of the chunk, the clean one first if it is among them
            logits.append(_each_model(model, variables, x, gates, consumed))
        elif clean:  # each copy joins at its first ablated unit; earlier work is shared
            per_row = jax.tree.map(lambda g: jnp.repeat(g[:1 + copies], b), gates)
            out = model.apply(variables, x, gates=per_row, branches=dict(branches))
            logits.append(out.reshape(1 + copies, b, *out.shape[1:]))
        if constants:  # every image gives the same output: one row per model, any image
            one_row = jax.tree.map(lambda g: g[1 + copies:], gates)
            out = model.apply(variables, jnp.broadcast_to(x[:1], (constants, *x.shape[1:])), gates=one_row)
            logits.append(jnp.broadcast_to(out[:, None], (constants, b, *out.shape[1:])))
        logits = jnp.concatenate(logits)
        return metric.per_example(logits, jnp.broadcast_to(targets[None], (len(logits), *targets.shape)))

    return _over_batches(one_batch)


def _each_model(model: networks.Network, variables, x, gates: Mapping[str, Mapping[str, jax.Array]],
                consumed: set | None) -> jax.Array:
    """``(models, batch, ...)``: the model on ``x`` once per row of the gates, vmapped over the gates alone.

    The image and the weights carry no mask axis, so JAX's batching leaves everything before the first gated
    module unbatched (computed once, shared by every model of the chunk), and past it a conv meets a batched
    input with a shared kernel: one plain conv over a larger batch, never a grouped one."""
    if not jax.tree.leaves(gates):  # the clean model alone
        return model.apply(variables, x)[None]
    return jax.vmap(lambda g: model.apply(variables, x, hook=_output_gates(variables, g, consumed)))(gates)


def _output_gates(variables, gates: Mapping[str, Mapping[str, jax.Array]], consumed: set | None) -> networks.Hook:
    """A hook that multiplies each gated module's output by its gate, one number per model
    (:data:`catalogue.HOOK_SITES`); a ``kernel`` gate keeps the module's bias, so the result equals the module
    with its kernel zeroed."""
    def hook(path, module, args, call):
        y = call()
        name = ".".join(path)
        sites = {site: named[name] for site, named in gates.items() if name in named}
        if not sites:
            return y
        if not hasattr(y, "dtype"):
            raise networks.ModelError(f"{name}: its output is a {type(y).__name__}, not an array, so no gate can "
                                      f"scale it; use method='weights'")
        if consumed is not None:
            consumed.update((site, name) for site in sites)
        for site, g in sites.items():
            g = g.astype(y.dtype)
            bias = (networks.module_params(variables, path) or {}).get("bias") if site == "kernel" else None
            y = y * g if bias is None else y * g + bias.astype(y.dtype) * (1 - g)
        return y

    return hook


def _over_batches(one_batch: Callable) -> Callable:
    """``one_batch(*params, images, targets, mean, std)`` looped over a stack of batches inside one program:
    ``(n_batches, B, ...)`` in, a dict of ``(n_batches, K, B)`` out."""

    @jax.jit
    def forward(*args):
        *params, images, targets, mean, std = args
        return jax.lax.map(lambda xy: one_batch(*params, xy[0], xy[1], mean, std), (images, targets))

    return forward


def _weights_forward(model: networks.Network, metric, replacement_fn: Callable | None, *,
                     batch_stats: bool = False) -> Callable:
    """One jitted forward for a chunk of weight masks; with ``batch_stats`` BatchNorm normalises by the statistics
    of each masked model's own batch (as in training, dropout off; the updated statistics are dropped)."""
    def one_batch(variables, masks, seeds, images, targets, mean, std):
        x = normalize(images, mean, std)

        def one(args):
            mask, seed = args
            replacement = None if replacement_fn is None else replacement_fn(seed)
            masked = abl.apply(variables, mask, replacement=replacement)
            logits = model.apply(masked, x, batch_stats=True, mutable=True) if batch_stats else model.apply(masked, x)
            return metric.per_example(logits, targets)

        return jax.lax.map(one, (masks, seeds))

    return _over_batches(one_batch)


def check_batch_statistics(n: int, batch_size: int, ablations: Sequence[abl.Ablation], method: str) -> None:
    """Batch statistics need whole batches (a padded row would enter every statistic) and weight masks."""
    if n % batch_size:
        divisors = [d for d in range(1, min(n, 4 * batch_size) + 1) if n % d == 0][-4:]
        raise ValueError(f"batchnorm 'batch' needs a batch size that divides the {n} examples (got {batch_size}, "
                         f"after rounding to the devices); e.g. {divisors}")
    gate_only = sorted({a.kind for a in ablations if a.kind in abl.GATE_ONLY_KINDS})
    if gate_only or method == "gates":
        raise ValueError(f"batchnorm 'batch' runs weight masks only; not method {method!r} or kinds {gate_only}")


def evaluate(
    model: Any,
    variables: Mapping[str, Any],
    ablations: Sequence[abl.Ablation],
    layers: Sequence[abl.Layer],
    images: np.ndarray,
    targets: np.ndarray,
    *,
    image_mean: Any,
    image_std: Any,
    metric: Any = metrics_lib.Accuracy(),
    batch_size: int = 128,
    method: str = "auto",
    memory_budget_mb: float | None = None,
    chunk: int | None = None,
    initial_params: Any = None,
    on_chunk: Callable[[list[Result]], None] | None = None,
    progress: bool = True,
    batchnorm: str = "running",
    apply_kwargs: Mapping[str, Any] | None = None,
    on_program: Callable[[jax.stages.Lowered, jax.stages.Compiled, int], None] | None = None,
) -> list[Result]:
    """Score every ablation on ``(images, targets)``; ``on_chunk`` sees results as chunks finish.

    Args:
      ablations: resolved ablations (:func:`ablation.resolve_all`); ones with no layers are the
        unablated model (a baseline).
      method: ``'auto'`` (gates where the kind allows, else weights), ``'gates'`` or ``'weights'``.
      memory_budget_mb: bound on a chunk's activation memory; sets the chunk size unless ``chunk``. By
        default half the memory the device reports (:func:`resnet_jax.devices.memory_budget_mb`; 2 GiB on CPUs).
        On the gate path a compiled chunk whose scratch memory (XLA's plan) exceeds it is halved.
      initial_params: the run's initial parameters, needed by ``reinit`` (for an NNX model, the plain dict of a
        fresh model's ``nnx.state(model, nnx.Param)``).
      batchnorm: ``'running'`` (evaluation mode, the trained statistics) or ``'batch'``: every masked model
        normalises by its own batch's statistics (the study's ``BN(0) = beta`` algebra). Batch statistics depend
        on the batches: they are drawn in a fixed random order (:func:`batch_order`), ``batch_size`` must divide
        the examples (no padded batch), and the weights path runs. Per-example results keep the input order.
      apply_kwargs: keywords for every call of the model, e.g. ``{"train": False}`` for a model that trains by
        default (as the flax examples' ResNet does).
      on_program: called with each chunk program the sweep compiles, lowered and compiled, and the masks it
        scores (for cost analysis: :func:`convolution_groups`, ``compiled.cost_analysis()``).

    ``model`` is any ``flax.linen.Module`` (with ``variables``) or ``flax.nnx.Module`` (``variables`` None or its
    ``nnx.split`` state) returning logits or ``(logits, ...)`` (:mod:`resnet_jax.ablation.networks`). A model that
    takes gates (our ResNet and PSPNet) shares the clean prefix of each copy; any other model's masks are gates on
    its modules' outputs (intercepted calls), and every gate sent must reach a traced call, or this refuses.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> images = np.random.default_rng(0).random((16, 8, 8, 3), np.float32)
        >>> labels = np.asarray(model.apply(variables, images).argmax(-1))  # the model's own answers: accuracy 1
        >>> from resnet_jax.ablation import BASELINE, AblationSpec, Selector, evaluate, layer_catalogue, resolve_all
        >>> layers = layer_catalogue(model, variables, images[:1])
        >>> ablations = [BASELINE, *resolve_all([AblationSpec("conv", select=(Selector(types=("Conv",)),))], layers)]
        >>> baseline, conv = evaluate(model, variables, ablations, layers, images, labels, image_mean=0.0,
        ...                           image_std=1.0, progress=False)
        >>> baseline.value, conv.layers
        (1.0, ('layers_0',))
        >>> conv.value == float(np.mean(labels == 0))   # no conv: every logit is its bias (0 at init), class 0 wins
        True
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of images, got {batch_size}")
    model, variables = networks.as_network(model, variables, apply_kwargs=apply_kwargs)
    mesh = devices.data_mesh()
    memory_budget_mb = memory_budget_mb or devices.memory_budget_mb()
    # A batch no larger than the examples (the padding would be computed and discarded); batch statistics keep
    # the batches asked for, since the statistics depend on them.
    rows = batch_size if batchnorm == "batch" else min(batch_size, max(len(images), 1))
    inputs = Inputs(model, variables, layers, images, targets, image_mean, image_std, metric,
                    devices.round_up_to_devices(rows, mesh), batchnorm)
    if batchnorm not in BATCHNORM:
        raise ValueError(f"unknown batchnorm mode {batchnorm!r}; valid: {list(BATCHNORM)}")
    if batchnorm == "batch":
        check_batch_statistics(len(images), inputs.batch_size, ablations, method)
        if not _takes_gates(model):
            raise ValueError("batchnorm 'batch' needs a model that takes batch_stats=True (resnet_jax's models); "
                             "score another model in the mode its apply_kwargs select")
        method = "weights"
    batches = Batches.place(inputs, mesh, batch_order(len(images)) if batchnorm == "batch" else None)
    results: list[Result] = []
    groups: dict[tuple[str, str], list[abl.Ablation]] = {}
    # A mask listed twice (e.g. a shortcut conv by both `single` and `shortcut`) is scored once.
    unique = list({(a.name, a.kind, a.layers): a for a in ablations}.values())
    if not _takes_gates(model):  # our models read every catalogued kernel; check any other model's forward does
        check_masks_are_read(model, variables, [a for a in unique if a.layers], layers, images[:1])
    for a in unique:  # a baseline (no layers) runs on whichever path the method names
        how = (method if method != "auto" else "gates") if not a.layers else \
            method_for(a.kind, method, takes_gates=_takes_gates(model))
        groups.setdefault((a.kind, how), []).append(a)
    shared = sorted(k for k, g in groups.items() if k[1] == "gates" and any(a.layers for a in g))
    if shared:  # baselines read the clean rows of the first gate group's chunk, not a forward of their own
        for key in [k for k, g in groups.items() if k[1] == "gates" and not any(a.layers for a in g)]:
            groups[shared[0]] = groups.pop(key) + groups[shared[0]]
    bar = tqdm(total=len(unique), desc="ablations", unit="mask", disable=not progress or None, leave=False)
    for (kind, how), group in sorted(groups.items()):
        size = chunk or chunk_size(len(group), batch_size=inputs.batch_size, layers=layers,
                                   memory_budget_mb=memory_budget_mb, peak=how == "gates")
        runs = (_gate_runner(inputs, group, batches, size=size, budget_bytes=memory_budget_mb * 2**20,
                             on_program=on_program)
                if how == "gates" else
                _weight_runner(inputs, group, batches, size=size, kind=kind, initial_params=initial_params,
                               on_program=on_program))
        for chunk_results in runs:
            results += chunk_results
            bar.update(len(chunk_results))
            if on_chunk is not None:
                on_chunk(chunk_results)
    bar.close()
    by_key = {(r.name, r.kind, r.layers): r for r in results}
    return [by_key[(a.name, a.kind, a.layers)] for a in ablations]


def _collect(forward_chunk: Callable, group, inputs: Inputs, batches: Batches, rows=None):
    """Run ``forward_chunk(stacked images, stacked targets) -> dict of (n_batches, K, B)``; join per mask.

    Examples are split over every device; masks ride along. The batches loop inside the compiled program, so
    the host dispatches once and the per-example results come back in one transfer. ``rows[i]`` is the
    output row of ``group[i]`` (default: ``i``)."""
    metric = inputs.metric
    outs = devices.to_host(forward_chunk(batches.images, batches.targets))  # (n_batches, K, B, ...) per key
    joined = {k: np.swapaxes(np.asarray(v), 0, 1).reshape(v.shape[1], -1, *v.shape[3:])[:, :batches.n_examples]
              for k, v in outs.items()}  # (K, examples): the padding is the last batch's tail
    if batches.order is not None:  # back to the examples' own order
        inverse = np.argsort(batches.order)
        joined = {k: v[:, inverse] for k, v in joined.items()}
    out = []
    for i, a in enumerate(group):
        per_example = {k: v[i if rows is None else rows[i]] for k, v in joined.items()}
        value, low, high = metric.aggregate(per_example)
        loss = float(np.mean(per_example["loss"])) if "loss" in per_example else float("nan")
        breakdown = metric.breakdown(per_example) if hasattr(metric, "breakdown") else {}
        out.append((a, value, low, high, loss, per_example, breakdown))
    return out


def _results(collected, seconds: float, temp_bytes: int = 0, flops: float = 0.0) -> list[Result]:
    return [Result(a.name, a.kind, a.layers, value, low, high, loss, len(next(iter(pe.values()))), pe,
                   seconds / len(collected), breakdown, temp_bytes, flops / len(collected))
            for a, value, low, high, loss, pe, breakdown in collected]


def _gate_runner(inputs: Inputs, group, batches: Batches, *, size: int, budget_bytes: float, on_program=None):
    # Baselines first (they read the clean rows), then copies in network order of their branch
    # points and in the batching.Copies field order there, so the rows present at any layer are a
    # prefix of the final rows; input-independent ablations last (one row each). A model without gates of its
    # own orders its masks by the first module they touch: a chunk then shares the forward up to its first one.
    model, variables, layers = inputs.model, inputs.variables, inputs.layers
    mean, std = inputs.image_mean, inputs.image_std
    inside = _takes_gates(model)
    place = {id(a): placement(a, layers) if inside else ("", "full") if a.layers else None for a in group}
    rank = {p: i for i, p in enumerate({l.unit or l.name: None for l in layers})}
    index = {l.name: i for i, l in enumerate(layers)}

    def order(a):
        where = place[id(a)]
        if where is None:
            return (-1,)
        if where == "constant":
            return (len(rank),)
        if not inside:
            return (min(index[n] for n in a.layers),)
        return rank.get(where[0], 0), batching.Copies._fields.index(where[1])

    ordered = sorted(group, key=order)
    n_base = sum(not a.layers for a in ordered)
    # One gate vector per site over all masked ablations of the group; a chunk takes its slice, so
    # every chunk has one pytree structure and chunks of one structure share a program.
    sites = (abl.make_gates if inside else abl.make_hook_gates)(ordered[n_base:], layers)
    example = (batches.images, batches.targets)
    compiled = {}
    if inside:
        queue = [(lo, min(lo + size, len(ordered))) for lo in range(0, len(ordered), size)]
    else:  # chunks that share the most work; the baselines join the first
        firsts = [min(index[n] for n in a.layers) for a in ordered[n_base:]]
        queue = [(lo + n_base if lo else 0, hi + n_base)
                 for lo, hi in plan_chunks(firsts, suffix_macs(layers), at_most=size)] or [(0, n_base)]
    while queue:
        lo, hi = queue.pop(0)
        chunk = ordered[lo:hi]
        first, last = max(lo - n_base, 0), max(hi - n_base, 0)  # the chunk's masked ablations in `sites`
        joining = [place[id(a)] for a in chunk if a.layers and place[id(a)] != "constant"]
        constants = last - first - len(joining)
        # The clean row: for a baseline, and for our models' copies to join; any other model's copies need none
        clean = any(not a.layers for a in chunk) or (inside and bool(joining))
        gates = jax.tree.map(lambda g: np.concatenate([np.ones(int(clean or inside), np.float32), g[first:last]]),
                             sites)
        if not inside:  # only the modules this chunk gates: the rest, and all before them, stay shared
            gates = {site: kept for site, named in gates.items()
                     if (kept := {name: g for name, g in named.items() if not g.all()})}
        counts = collections.Counter(joining)
        branches = tuple((p, batching.Copies(**{f: counts[(p, f)] for f in batching.Copies._fields}))
                         for p in dict.fromkeys(p for p, _ in joining))
        key = (branches, len(joining), constants, clean)
        shape = (key, jax.tree.structure(gates))  # any model's chunks gate different modules: other programs
        if shape not in compiled:
            lowered = _lowered(model, inputs.metric, key, (variables, gates, *example, mean, std))
            program = lowered.compile()
            compiled[shape] = program, _temp_bytes(program), _flops(program, batches)
            if on_program is not None:
                on_program(lowered, program, len(chunk))
        forward, temp, flops = compiled[shape]
        if temp > budget_bytes and len(chunk) > 1:  # XLA's buffer plan says the estimate was too low
            queue[:0] = [(lo, (lo + hi) // 2), ((lo + hi) // 2, hi)]
            continue
        if temp > budget_bytes:
            warnings.warn(f"one ablation at batch size {inputs.batch_size} needs {temp / 2**20:.0f} MB of scratch memory, "
                          f"over the budget of {budget_bytes / 2**20:.0f} MB; lower the batch size to fit",
                          stacklevel=2)
        # Output row of each ablation: 0 is the clean model; masked ones follow in `sites` order.
        rows = [i - n_base - first + clean if a.layers else 0 for i, a in enumerate(chunk, start=lo)]
        t0 = time.perf_counter()
        collected = _collect(lambda x, y: forward(variables, gates, x, y, mean, std), chunk, inputs, batches, rows)
        yield _results(collected, time.perf_counter() - t0, temp, flops)


def suffix_macs(layers: Sequence[abl.Layer]) -> np.ndarray:
    """Per catalogued module, the MACs of one forward from it to the output (kernel modules, in call order)."""
    return np.cumsum([l.macs for l in layers][::-1])[::-1]


def plan_chunks(firsts: Sequence[int], suffix: Sequence[float], *, at_most: int) -> list[tuple[int, int]]:
    """Chunks ``[lo, hi)`` of masks sorted by the first module they touch (``firsts[i]``, an index into ``suffix``,
    the work from a module to the output) that minimise the sweep's work, at most ``at_most`` masks each.

    A chunk computes the forward up to its first mask's module once and, for each of its masks, the rest from
    there (the vmapped forward batches everything past the first gate); each chunk also costs one forward more,
    for a program of its own to compile and run. One chunk of every mask is the loop's work; one chunk per mask,
    twice it."""
    n, total = len(firsts), float(suffix[0]) if len(suffix) else 0.0
    best, start = [0.0] + [np.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - at_most), j):
            rest = float(suffix[firsts[i]])
            cost = best[i] + 2 * total - rest + (j - i) * rest
            if cost < best[j]:
                best[j], start[j] = cost, i
    chunks, j = [], n
    while j:
        chunks.append((start[j], j))
        j = start[j]
    return chunks[::-1]


def _lowered(model: networks.Network, metric, key, args):
    """The chunk's program, lowered; refuses a gate no traced call consumed (it would leave its masks scoring the
    unablated model) and a model that updates state in the call the engine makes."""
    gates = args[1]
    consumed: set = set()
    try:
        with batching.recording_gates() as recorded:
            lowered = _gates_forward(model, metric, *key, consumed=consumed).lower(*args)
    except Exception as err:
        if networks.is_train_mode_error(err):
            raise networks.ModelError(networks.train_mode_message(model)) from None
        raise
    sent = {(site, name) for site, named in gates.items() for name in named}
    unused = sorted(sent - consumed - recorded)
    if unused:
        site, name = unused[0]
        raise networks.ModelError(
            f"the {site} gate for {name!r} reached no call of the traced forward ({len(unused)} unused in all): its "
            f"masks would score the unablated model; the model does not call that layer as catalogued, or ignores "
            f"gates= (a model declaring ablation_gates must apply them)")
    return lowered


def convolution_groups(lowered) -> collections.Counter:
    """How many convolutions of a lowered program have each ``feature_group_count``. A sweep that vmapped
    kernels alongside inputs shows counts multiplied by its masks: grouped convolutions, slow on GPUs (and missing
    tensor cores in half precision); the engine's programs keep the model's own counts."""
    return collections.Counter(int(n) for n in re.findall(r"feature_group_count = (\d+)", lowered.as_text()))


def program_flops(program: jax.stages.Compiled) -> float:
    """XLA's count of a compiled program's floating-point work (a loop inside it counted once, as its cost
    analysis does); 0 where a backend does not say."""
    analysis = program.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float((analysis or {}).get("flops", 0.0))


def _flops(program, batches: Batches) -> float:
    """A chunk program's work over every batch: the loop over batches runs its body once per batch."""
    return program_flops(program) * batches.images.shape[0]


def _temp_bytes(program) -> int:
    """Scratch memory of a compiled program as XLA planned it (0 where a backend does not say)."""
    analysis = program.memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0) or 0)


def unread_leaves(model: networks.Network, variables: Mapping[str, Any], example: np.ndarray) -> set[tuple[str, ...]]:
    """Parameter leaves the forward on ``example`` never reads, from its jaxpr (a leaf counts as read when an
    equation that leads to the output takes it)."""
    x = jnp.asarray(normalize(example, 0.0, 1.0))
    try:
        closed = jax.make_jaxpr(lambda p: model.apply({**variables, "params": p}, x))(variables["params"])
    except Exception as err:
        if networks.is_train_mode_error(err):
            raise networks.ModelError(networks.train_mode_message(model)) from None
        raise
    live = {v for v in closed.jaxpr.outvars if isinstance(v, jax.extend.core.Var)}
    for eqn in reversed(closed.jaxpr.eqns):
        if any(o in live for o in eqn.outvars):
            live |= {v for v in eqn.invars if isinstance(v, jax.extend.core.Var)}
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    return {tuple(str(getattr(k, "key", k)) for k in kp) for (kp, _), var in zip(flat, closed.jaxpr.invars)
            if var not in live}


def check_masks_are_read(model: networks.Network, variables, ablations, layers, example) -> None:
    """Refuse an ablation whose replaced parameter the forward never reads (its score would be the unablated
    model's, whatever path scores it)."""
    unread = unread_leaves(model, variables, example)
    for ablation in ablations:
        for path in sorted(abl.leaf_targets(ablation, layers, variables["params"]) & unread):
            raise networks.ModelError(f"{ablation.name}: {ablation.kind} replaces params/{'/'.join(path)}, which the "
                                      f"forward never reads (the layer's output is unused); the mask would change "
                                      f"nothing")


_WEIGHT_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
"""Compiled weight-mask programs by what they were traced from: the ids of the objects traced (the entry holds
them, so no other object takes their ids), the settings, and the arguments' shapes, dtypes and placements. A
search calls the engine once per step with the same model and inputs; tracing and lowering a ResNet again costs
seconds a call, more in a multi-process job."""
WEIGHT_PROGRAMS_KEPT = 8


def _weight_program(forward: Callable, args: tuple, *, traced: tuple | None, settings: tuple = ()):
    """``(lowered, program)`` for ``forward`` on ``args``, reused when ``forward`` was traced from the same
    ``traced`` objects with the same ``settings`` and compiled for arguments of the same kind (None: never)."""
    if traced is None:
        lowered = forward.lower(*args)
        return lowered, lowered.compile()

    def abstract(x):
        return getattr(x, "shape", None), str(getattr(x, "dtype", type(x))), getattr(x, "sharding", None)

    key = (tuple(map(id, traced)), settings, jax.tree.structure(args), tuple(map(abstract, jax.tree.leaves(args))))
    if key not in _WEIGHT_PROGRAMS:
        lowered = forward.lower(*args)
        _WEIGHT_PROGRAMS[key] = (traced, lowered, lowered.compile())
        while len(_WEIGHT_PROGRAMS) > WEIGHT_PROGRAMS_KEPT:
            _WEIGHT_PROGRAMS.popitem(last=False)
    _WEIGHT_PROGRAMS.move_to_end(key)
    return _WEIGHT_PROGRAMS[key][1:]


def _weight_runner(inputs: Inputs, group, batches: Batches, *, size: int, kind: str, initial_params: Any,
                   on_program=None):
    model, variables, layers = inputs.model, inputs.variables, inputs.layers
    replacement_fn = abl.replacement_for(kind, model=model, input_shape=inputs.images.shape,
                                         initial_params=initial_params)
    forward = _weights_forward(model, inputs.metric, replacement_fn, batch_stats=inputs.batchnorm == "batch")
    # a replacement closes over its own arrays: only programs without one are reused
    traced = None if replacement_fn is not None else (model.model, model.nnx_state, inputs.metric)
    settings = (model.framework, repr(model.apply_kwargs), inputs.batchnorm)
    masks = [abl.make_mask(variables["params"], a, layers) for a in group]
    seeds = np.asarray([a.seed for a in group], np.uint32)
    for start in range(0, len(group), size):
        chunk = group[start:start + size]
        pad = size - len(chunk)
        chunk_masks = abl.stack(masks[start:start + size] + [masks[0]] * pad)
        chunk_seeds = devices.pad_rows(seeds[start:start + size], size)
        if start == 0:  # every chunk has the first one's shapes: one program
            lowered, program = _weight_program(
                forward, (variables, chunk_masks, chunk_seeds, batches.images, batches.targets, inputs.image_mean,
                          inputs.image_std), traced=traced, settings=settings)
            flops = _flops(program, batches)  # a chunk's work, padded masks included
            if on_program is not None:
                on_program(lowered, program, size)
        t0 = time.perf_counter()
        collected = _collect(
            lambda x, y: program(variables, chunk_masks, chunk_seeds, x, y, inputs.image_mean, inputs.image_std),
            chunk, inputs, batches)
        yield _results(collected, time.perf_counter() - t0, flops=flops)
