"""The study's experiments as lists of specs, and sweeps that survive interruption.

Protocols (PROTOCOLS.md, Study A): ``baseline``; ``single`` (one mask per conv kernel);
``stage-except-decomposition`` (per stage, every conv but its decomposition and adjacent ones,
i.e. units 1..n-1); ``shortcut`` (per stage with a projection, that projection).

Every finished mask is appended to the :class:`~resnet_jax.ablation.store.ResultStore` as its chunk
completes, keyed by its content; a rerun skips what is there, so an interrupted sweep loses at most
the chunk in flight.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine
from resnet_jax.ablation.store import ResultStore, ablation_key
from resnet_jax.ablation.tables import table_row

STUDY_PROTOCOLS = ("baseline", "single", "stage-except-decomposition", "shortcut")
"""The study's protocols: what ``--protocol all`` runs."""
READINGS = ("stage-except-decomposition-first-conv", "identity-shortcut")
"""The study's open readings as protocols: stage 1's adjacent conv read as ``layer1.0.conv1`` alone, and a cut of
each identity shortcut (run with ``--kind`` ignored: ``cut-identity``)."""
PROTOCOLS = (*STUDY_PROTOCOLS, *READINGS, "pairs")
"""``pairs``: every pair of convs (ResNet34: 36 convs, 630 masks), with their interaction; run on request."""
BASELINE = abl.Ablation("baseline", "none", ())
"""The unablated model: put it first in ``evaluate``'s list to score the clean model with the masks."""
STRUCTURE_PROTOCOLS = ("stage-except-decomposition", "shortcut", "stage-except-decomposition-first-conv",
                       "identity-shortcut")
"""Protocols that read stages, units and roles, so need a model that declares them."""


def protocol_specs(protocol: str, layers: Sequence[abl.Layer], *, kind: str = "zero-kernel") -> list[abl.AblationSpec]:
    """The specs of a named protocol for a model's catalogue. ``single`` and ``pairs`` work for any model; the
    others, and the unit kinds, need a model that declares its stages and units.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.ablation import layer_catalogue, protocol_specs, resolve_all
        >>> from resnet_jax.models import create_model
        >>> model = create_model("resnet_tiny", num_classes=2, stem="cifar")
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> layers = layer_catalogue(model, variables, input_shape=(1, 8, 8, 3))
        >>> len(protocol_specs("single", layers)), [s.name for s in protocol_specs("shortcut", layers)]
        (20, ['layer2.0.downsample', 'layer3.0.downsample', 'layer4.0.downsample'])
        >>> [(a.name, a.layers) for a in resolve_all(protocol_specs("stage-except-decomposition", layers), layers)][:2]
        [('layer1', ('layer1.1.conv1', 'layer1.1.conv2')), ('layer2', ('layer2.1.conv1', 'layer2.1.conv2'))]
    """
    if (protocol in STRUCTURE_PROTOCOLS or kind in abl.STRUCTURE_KINDS) and not abl.declares_structure(layers):
        raise abl.SpecError(f"protocol {protocol!r} with kind {kind!r} needs a model that declares its stages and "
                            f"units (ablation_place, as resnet_jax's ResNet does); for this model: protocols "
                            f"single and pairs, kinds {[k for k in abl.KINDS if k not in abl.STRUCTURE_KINDS]}, or a "
                            f"spec file")
    stages = sorted({l.stage for l in layers if l.stage is not None})
    prefix = _encoder_prefix(layers)
    if protocol == "single":
        if kind == "lesion":  # a lesion removes a unit: one mask per identity-shortcut unit
            units = [u for u in dict.fromkeys(l.unit for l in layers if l.unit)
                     if abl.unit_has_identity_shortcut(layers, u)]
            return [abl.AblationSpec(u, kind, (abl.Selector(patterns=(f"{u}.*",)),)) for u in units]
        return [abl.AblationSpec(l.name, kind, (abl.Selector(names=(l.name,)),)) for l in layers]
    if protocol == "stage-except-decomposition":
        return _stages_with_layers([abl.AblationSpec(f"{prefix}layer{s}", kind, (abl.Selector(stages=(s,)),),
                                                     (abl.Selector(roles=("decomposition", "adjacent")),))
                                    for s in stages], layers)
    if protocol == "shortcut":
        if kind == "lesion":
            raise abl.SpecError("the shortcut protocol ablates projection convs, which a lesion cannot remove; "
                                f"valid kinds for it: {[k for k in abl.KINDS if k != 'lesion']}")
        shortcut_stages = [s for s in stages if any(l.stage == s and "shortcut" in l.roles for l in layers)]
        return [abl.AblationSpec(f"{prefix}layer{s}.0.downsample", kind,
                                 (abl.Selector(stages=(s,), roles=("shortcut",)),)) for s in shortcut_stages]
    if protocol == "identity-shortcut":  # the study calls identity shortcuts important; here each is cut
        units = [u for u in dict.fromkeys(l.unit for l in layers if l.unit) if abl.unit_has_identity_shortcut(layers, u)]
        return [abl.AblationSpec(f"{u}.identity", "cut-identity", (abl.Selector(patterns=(f"{u}.*",)),)) for u in units]
    if protocol == "stage-except-decomposition-first-conv":
        # None in a slim model whose stage-1 first unit was eliminated: nothing adjacent is then kept.
        first = next((l.name for l in layers if l.stage == stages[0] and "adjacent" in l.roles), None)

        def kept(s):
            if s != stages[0]:
                return (abl.Selector(roles=("decomposition", "adjacent")),)
            return (abl.Selector(roles=("decomposition",)),) + ((abl.Selector(names=(first,)),) if first else ())

        return _stages_with_layers([abl.AblationSpec(f"{prefix}layer{s}", kind, (abl.Selector(stages=(s,)),), kept(s))
                                    for s in stages], layers)
    if protocol == "pairs":
        if kind == "lesion":
            raise abl.SpecError(f"the pairs protocol ablates pairs of convs, not units; valid kinds for it: "
                                f"{[k for k in abl.KINDS if k != 'lesion']}")
        names = [l.name for l in layers]
        return [abl.AblationSpec(f"{a}+{b}", kind, (abl.Selector(names=(a, b)),))
                for i, a in enumerate(names) for b in names[i + 1:]]
    raise abl.SpecError(f"unknown protocol {protocol!r}; valid: {list(PROTOCOLS)} or a spec file")


def _stages_with_layers(specs: list[abl.AblationSpec], layers: Sequence[abl.Layer]) -> list[abl.AblationSpec]:
    """Stage specs that select something: in a slim model (units eliminated) a stage may keep only its first unit,
    whose convs the stage protocols keep, and then has no row."""
    return [s for s in specs if any(any(x.matches(l) for x in s.select) and not any(x.matches(l) for x in s.exclude)
                                    for l in layers)]


def _encoder_prefix(layers: Sequence[abl.Layer]) -> str:
    head = layers[0].name.rpartition(".")[0]
    return f"{head}." if head else ""




# One call -------------------------------------------------------------------------------------

def ablate(model: Any, variables: Any, images: np.ndarray, targets: np.ndarray, *, protocol: str = "single",
           kind: str = "zero-kernel", specs: Sequence[abl.AblationSpec] | None = None,
           apply_kwargs: Mapping[str, Any] | None = None, **options) -> list[engine.Result]:
    """Catalogue any Flax model, build a protocol's masks (or resolve ``specs``) and score them with the unablated
    model first, in one call.

    ``model`` is a ``flax.linen.Module`` with its ``variables``, or a ``flax.nnx.Module`` (``variables`` None);
    ``images`` are uint8 or floats in [0, 1], normalised by ``image_mean`` and ``image_std`` (default 0 and 1) as
    the engine does; ``options`` go to :func:`engine.evaluate` (``metric``, ``batch_size``, ``method``, ...).

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> images = np.random.default_rng(0).random((16, 8, 8, 3), np.float32)
        >>> labels = np.asarray(model.apply(variables, images).argmax(-1))  # the model's own answers: accuracy 1
        >>> from resnet_jax.ablation import ablate
        >>> results = ablate(model, variables, images, labels, protocol="single", kind="zero-output")
        >>> baseline, masked = results[0], results[1:]
        >>> baseline.value, [(r.name, r.kind, r.value == float(np.mean(labels == 0))) for r in masked]
        (1.0, [('layers_0', 'zero-output', True), ('layers_3', 'zero-output', True)])
    """
    layers = abl.catalogue(model, variables, images[:1], apply_kwargs=apply_kwargs)
    if not layers:
        raise abl.SpecError(f"{type(model).__name__} has no module that owns a kernel (Conv, Dense, ...) in its "
                            f"forward: nothing to ablate")
    specs = protocol_specs(protocol, layers, kind=kind) if specs is None else specs
    options = {"image_mean": 0.0, "image_std": 1.0, "progress": False, **options}
    return engine.evaluate(model, variables, [BASELINE, *abl.resolve_all(specs, layers)], layers, images, targets,
                           apply_kwargs=apply_kwargs, **options)


# Running ---------------------------------------------------------------------------------------

Evaluate = Callable[[Sequence[abl.Ablation], Callable[[list[engine.Result]], None]], object]
"""``evaluate(ablations, on_chunk)``: scores ablations, handing each finished chunk to ``on_chunk``."""


def run_protocol(protocol: str, *, store: ResultStore, evaluate: Evaluate, layers: Sequence[abl.Layer],
                 kind: str = "zero-kernel", specs: Sequence[abl.AblationSpec] | None = None,
                 metric_name: str = "accuracy", log=print) -> list[dict]:
    """Run (or finish) one protocol; return its table rows.

    The baseline is evaluated once per store context and shared by every protocol; a mask whose
    content (kind, layers, seed) was scored before in the same context is read, not recomputed.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> images = np.random.default_rng(0).random((16, 8, 8, 3), np.float32)
        >>> labels = np.asarray(model.apply(variables, images).argmax(-1))  # the model's own answers: accuracy 1
        >>> import tempfile
        >>> from resnet_jax.ablation import ResultStore, evaluate, layer_catalogue, run_protocol
        >>> layers = layer_catalogue(model, variables, images[:1])
        >>> def score(ablations, on_chunk):     # the engine on this model and these images
        ...     return evaluate(model, variables, ablations, layers, images, labels, image_mean=0.0, image_std=1.0,
        ...                     on_chunk=on_chunk, progress=False)
        >>> store = ResultStore(tempfile.mkdtemp(), {"id": "tiny-model-16-images"})
        >>> rows = run_protocol("single", store=store, evaluate=score, layers=layers)
        single (zero-kernel): 0 of 2 masks already done; evaluating 2
        single (zero-kernel): 2 masks in ...s
        >>> [(r["mask"], r["baseline"], r["delta"] == float(np.mean(labels == 0)) - 1) for r in rows]
        [('layers_0', 1.0, True), ('layers_3', 1.0, True)]
        >>> rows == run_protocol("single", store=store, evaluate=None, layers=layers)   # read, not recomputed
        True
    """
    if protocol != "baseline" and specs is None:
        specs = protocol_specs(protocol, layers, kind=kind)
    ablations = [BASELINE] if protocol == "baseline" else abl.resolve_all(specs, layers)
    done = _ensure_baseline(store, evaluate, metric_name)
    baseline_row = done[ablation_key(BASELINE)]
    if protocol == "baseline":
        return [table_row(baseline_row, baseline_row, mask="baseline")]
    todo = list({ablation_key(a): a for a in ablations if ablation_key(a) not in done}.values())
    if todo:
        log(f"{protocol} ({kind}): {len(ablations) - len(todo)} of {len(ablations)} masks already done; "
            f"evaluating {len(todo)}")
        t0 = time.perf_counter()
        by_id = {(a.name, a.kind, a.layers): a for a in todo}
        evaluate(todo, lambda chunk: store.append(protocol, chunk, by_id, metric=metric_name))
        log(f"{protocol} ({kind}): {len(todo)} masks in {time.perf_counter() - t0:.1f}s")
        done = store.load()
    return [table_row(done[ablation_key(a)], baseline_row, mask=a.name) for a in ablations]


def _ensure_baseline(store: ResultStore, evaluate: Evaluate, metric_name: str) -> dict[str, dict]:
    """The store's rows, with the baseline scored first if it is not among them."""
    done = store.load()
    if ablation_key(BASELINE) not in done:
        scored = abl.Ablation("baseline", "zero-kernel", ())  # no layers: the engine runs the clean model
        evaluate([scored], lambda chunk: store.append(
            "baseline", [dataclasses.replace(r, kind="none") for r in chunk],
            {("baseline", "none", ()): BASELINE}, metric=metric_name))
        done = store.load()
    return done


DESCRIPTIONS = {
    "baseline": "The trained model, unablated.",
    "single": "One mask per conv kernel, each replacing exactly that kernel; network order. Circled points are "
              "decomposition convs (they change the channel count).",
    "stage-except-decomposition": "Per stage, every conv except its decomposition and adjacent convs "
                                  "(i.e. residual units 1..n-1 of the stage).",
    "shortcut": "Per stage with a projection shortcut, that 1x1 projection conv.",
    "stage-except-decomposition-first-conv": "As stage-except-decomposition, but stage 1's adjacent conv read as "
                                             "layer1.0.conv1 alone (the study's text allows it): layer1.0.conv2 "
                                             "is ablated with units 1..n-1.",
    "identity-shortcut": "Per residual unit with an identity shortcut, that shortcut cut: the unit outputs "
                         "relu(branch(x)) (the study calls identity shortcuts important without cutting one).",
    "pairs": "Every pair of convs ablated together; interaction = drop(A and B) - drop(A) - drop(B) "
             "(positive: the pair costs more than its parts, synergistic; negative: less, redundant).",
}


def interactions(pair_rows: Sequence[dict], single_rows: Sequence[dict]) -> list[dict]:
    """``pair_rows`` with ``drop_a``, ``drop_b`` and ``interaction``, from the single-conv rows of the same model
    and examples (drop = baseline - value)."""
    drop = {r["layers"]: r["baseline"] - r["value"] for r in single_rows}
    out = []
    for r in pair_rows:
        a, b = r["layers"].split()
        pair_drop = r["baseline"] - r["value"]
        out.append({**r, "drop_a": drop[a], "drop_b": drop[b], "interaction": pair_drop - drop[a] - drop[b]})
    return out
