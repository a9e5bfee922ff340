"""Ablations as data: a layer catalogue, specs that select layers, pure masks, a batched engine.

The flow is ``catalogue -> spec -> resolve (layer names) -> mask (pytree) -> apply (pure)``, and
the engine evaluates a stack of masks over a dataset with one compiled function per chunk shape.

Ablation kinds (PROTOCOLS.md): ``zero-kernel`` replaces a conv kernel by zeros and keeps its
BatchNorm, so the branch still emits the BN constant ``beta - gamma * mean / sqrt(var + eps)``;
``zero-branch`` also zeroes that BatchNorm's scale and bias, so the conv path outputs exactly 0;
``lesion`` removes a whole residual branch (identity-shortcut units only); ``reinit`` puts the
kernel back to the run's initial values; ``rerandomize`` draws it afresh from the initialiser;
``cut-identity`` removes the identity shortcut of a unit, which then outputs ``relu(branch(x))`` (a gate
only: no weight expresses it); ``zero-output`` sets a module's whole output to 0, bias included (every parameter
the module owns directly is zeroed). ``zero-kernel``, ``zero-output``, ``reinit`` and ``rerandomize`` work on any
model; ``zero-branch`` needs the normalisation consuming the layer's output (found by tracing); ``lesion`` and
``cut-identity`` need a model that declares its residual units.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.ablation import networks
from resnet_jax.models import resnet

KINDS = ("zero-kernel", "zero-branch", "lesion", "reinit", "rerandomize", "cut-identity", "zero-output")
"""What an ablation does to the layers it selects (a spec's ``kind``); see the ablation specs how-to."""
UNIT_KINDS = ("lesion", "cut-identity")
"""Kinds that act on a whole residual unit with an identity shortcut (a spec names the unit's convs)."""
GATE_ONLY_KINDS = ("cut-identity",)
"""Kinds that no change of weights expresses: the engine runs them with gates only."""
ROLES = ("stem", "decomposition", "shortcut", "adjacent", "residual")
"""The roles a conv of a ResNet plays in the study, for selectors such as ``Selector(roles=("residual",))``."""
GATE_KINDS = {"zero-kernel": "kernel", "zero-branch": "output", "lesion": "unit", "cut-identity": "identity",
              "zero-output": "kernel"}
"""Kinds the gate formulation can express, and the gate site each one uses in a model that takes gates (our
convs have no bias, so a zeroed output is a zeroed kernel there)."""
STRUCTURE_KINDS = ("lesion", "cut-identity")
"""Kinds that need a model declaring its residual units."""


class SpecError(ValueError):
    """An ablation spec that cannot be resolved; the message lists the valid choices.

    Example:
        >>> from resnet_jax.ablation import SpecError, parse_spec
        >>> try:
        ...     parse_spec({"name": "x", "kind": "zero", "select": "layer1.*"})
        ... except SpecError as err:
        ...     print(err)
        spec 'x': unknown kind 'zero'; valid: ['zero-kernel', 'zero-branch', 'lesion', ...]
    """


# Catalogue -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layer:
    """One module that owns a ``kernel``, with where it sits and what it does.

    ``path`` is its module path in the variables; ``name`` the same path with dots, or the name a model that
    declares its structure gives it (torchvision's ``layer3.0.downsample`` for our ResNets). ``norm`` names the
    normalisation that directly consumes its output ("" when none does), found by tracing the forward.
    ``stage``, ``unit`` and ``roles`` are empty for models that declare no structure.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.ablation import layer_catalogue
        >>> from resnet_jax.models import create_model
        >>> model = create_model("resnet_tiny", num_classes=2, stem="cifar")
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))  # shapes suffice
        >>> layer = layer_catalogue(model, variables, input_shape=(1, 8, 8, 3))[7]
        >>> layer.name, layer.stage, layer.unit, layer.roles, layer.norm
        ('layer2.0.downsample', 2, 'layer2.0', ('shortcut', 'decomposition'), 'layer2.0.downsample.bn')
        >>> layer.kernel_shape, layer.stride, layer.output_hw, layer.macs
        ((1, 1, 4, 8), 2, (4, 4), 512)
    """

    name: str
    path: tuple[str, ...]
    norm: str
    stage: int | None
    unit: str | None  # canonical name of its residual unit, e.g. "layer2.0"
    kernel_shape: tuple[int, ...]
    in_channels: int
    out_channels: int
    stride: int
    output_hw: tuple[int, int]
    macs: int
    roles: tuple[str, ...]
    type: str = "Conv"
    input_shape: tuple[int, ...] = ()  # per example, batch axis dropped
    output_shape: tuple[int, ...] = ()
    norm_path: tuple[str, ...] | None = None


@dataclasses.dataclass
class _Call:
    """One traced call of a module that owns a kernel."""

    path: tuple[str, ...]
    module: Any
    x_shape: tuple[int, ...] = ()
    y_shape: tuple[int, ...] = ()
    norm_path: tuple[str, ...] | None = None


_NORM_NAMES = ("BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm")


def _norms() -> tuple[type, ...]:
    """Flax's normalisation classes: linen's, and NNX's where an NNX model has imported ``flax.nnx``."""
    modules = (nn, sys.modules["flax.nnx"]) if "flax.nnx" in sys.modules else (nn,)
    return tuple(getattr(m, n) for m in modules for n in _NORM_NAMES if hasattr(m, n))


def _trace_kernel_calls(network: networks.Network, variables, x) -> list[_Call]:
    """Every module that owns a ``kernel``, at its first call, in call order, with its input and output shapes and
    the normalisation whose call takes its output object as input (the output's first consumer)."""
    calls: list[_Call] = []
    produced: dict[int, _Call] = {}
    norms = _norms()
    keep = []  # outputs stay alive so their ids stay theirs

    def hook(path, module, args, call):
        source = produced.pop(id(args[0]), None) if args else None
        if source is not None and isinstance(module, norms):
            source.norm_path = path
        owned = networks.module_params(variables, path)
        record = None
        if owned is not None and "kernel" in owned and all(c.path != path for c in calls):
            record = _Call(path, module, tuple(getattr(args[0], "shape", ())) if args else ())
            calls.append(record)
        out = call()
        if record is not None:
            record.y_shape = tuple(getattr(out, "shape", ()))
            produced[id(out)] = record
            keep.append(out)
        return out

    jax.eval_shape(lambda v, x: network.apply(v, x, hook=hook, mutable=True), variables, x)
    return calls


def natural_key(name: str) -> tuple:
    """Sort key that reads numbers as numbers: ``Block_2`` before ``Block_10``, ``layer1.9`` before ``layer1.10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


def _macs(module, kernel_shape: tuple[int, ...], x_shape, y_shape) -> int:
    """Multiply-adds per example: each output position computes a kernel's worth (a transposed conv: each input
    position scatters one)."""
    size = int(np.prod(kernel_shape))
    if type(module).__name__ == "ConvTranspose":
        return int(np.prod(x_shape[1:-1], dtype=np.int64)) * size
    features = kernel_shape[-1]
    if type(module).__name__ == "DenseGeneral":
        features = int(np.prod(np.atleast_1d(module.features)))
    elif type(module).__name__ == "Einsum" and getattr(module, "einsum_str", None):
        ins, out = module.einsum_str.replace(" ", "").split("->")
        spec = ins.split(",")[1]
        features = int(np.prod([d for c, d in zip(spec, kernel_shape) if c in out]))
    return int(np.prod(y_shape[1:], dtype=np.int64)) * size // max(features, 1)


def _layer(call: _Call, kernel_shape: tuple[int, ...], place) -> Layer:
    """A catalogue entry from a traced call and, for a model that declares its structure, the layer's place."""
    x, y = call.x_shape, call.y_shape
    spatial = len(y) == 4
    # The input's channels, not the kernel's: a grouped conv's kernel holds in / groups (ResNeXt's 3x3 convs).
    in_channels = x[-1] if x else (kernel_shape[-2] if place is not None else 0)
    roles = () if place is None else _roles(place, in_channels, kernel_shape[-1], call.path)
    name = place.name if place is not None else ".".join(call.path)
    norm = "" if call.norm_path is None else (resnet.canonical_name(call.norm_path) if place is not None
                                              else ".".join(call.norm_path))
    return Layer(
        name=name, path=call.path, norm=norm, stage=None if place is None else place.stage,
        unit=None if place is None else place.unit, kernel_shape=kernel_shape, in_channels=int(in_channels),
        out_channels=int(y[-1]) if y else 0, stride=x[1] // y[1] if spatial and len(x) == 4 and y[1] else 1,
        output_hw=(y[1], y[2]) if spatial else (1, 1), macs=_macs(call.module, kernel_shape, x, y), roles=roles,
        type=type(call.module).__name__, input_shape=tuple(x[1:]), output_shape=tuple(y[1:]),
        norm_path=call.norm_path)


def _roles(place, cin: int, cout: int, path: tuple[str, ...]) -> tuple[str, ...]:
    """Roles from structure, not from a list (see :func:`catalogue`)."""
    roles = []
    if place.stage is None:
        roles.append("stem")
    if place.shortcut:
        roles.append("shortcut")
    if cin != cout:
        roles.append("decomposition")
    if place.stage is not None and not place.shortcut and cin == cout and place.unit.rpartition(".")[2] == "0":
        roles.append("adjacent")
    return tuple(roles) or ("residual",)


def catalogue(model: Any, variables: Any = None, example_input: Any = None, *,
              input_shape: Sequence[int] = (1, 32, 32, 3), apply_kwargs: Mapping[str, Any] | None = None) -> list[Layer]:
    """Every module that owns a ``kernel`` (Conv, ConvTranspose, Dense, DenseGeneral, Einsum, ours), in call
    order, with its type, shapes, MACs and the normalisation that consumes its output.

    Works for any ``flax.linen.Module`` (with its variables) and any ``flax.nnx.Module`` (``variables`` None, or
    the state from ``nnx.split``); a linen model whose default call updates batch statistics is traced as it is
    (its updates dropped). Layers are named by module path with dots (``features.Conv_3``). A model that declares
    its structure (``ablation_place``, see :class:`resnet_jax.models.batching.LayerPlace`), as our ResNet and PSPNet
    do, names its layers itself, keeps other modules out, and gets stages, units and roles: ``stem`` is a conv
    outside every stage; ``shortcut`` a projection (``downsample``); ``decomposition`` any conv that changes the
    channel count; ``adjacent`` the other convs of a stage's first unit; ``residual`` everything else.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> from resnet_jax.ablation import layer_catalogue
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> layers = layer_catalogue(model, variables, input_shape=(1, 8, 8, 3))
        >>> [(l.name, l.type, l.kernel_shape, l.macs) for l in layers]
        [('layers_0', 'Conv', (3, 3, 3, 4), 6912), ('layers_3', 'Dense', (4, 2), 8)]
    """
    network, variables = networks.as_network(model, variables, apply_kwargs=apply_kwargs)
    x = jnp.zeros(tuple(input_shape)) if example_input is None else example_input
    x = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), getattr(x, "dtype", jnp.float32))
    place_of = getattr(network.model, "ablation_place", None) if network.framework == "linen" else None
    layers = []
    for call in _trace_kernel_calls(network, variables, x):
        place = None if place_of is None else place_of(call.path, call.module)
        if place_of is not None and place is None:
            continue
        kernel_shape = tuple(networks.module_params(variables, call.path)["kernel"].shape)
        layers.append(_layer(call, kernel_shape, place))
    return layers


def declares_structure(layers: Sequence[Layer]) -> bool:
    """Whether the catalogued model declared stages, units and roles (our ResNet and PSPNet do)."""
    return any(l.roles for l in layers)


def unit_has_identity_shortcut(layers: Sequence[Layer], unit: str) -> bool:
    return not any(l.unit == unit and "shortcut" in l.roles for l in layers)


def format_catalogue(layers: Sequence[Layer]) -> str:
    """A fixed-width table of the catalogue (for ``resnet-jax layers``)."""
    head = f"{'#':>3}  {'name':<24}{'stage':>6}  {'kernel':<16}{'stride':>7}{'out':>9}{'MACs':>13}  roles"
    rows = [head, "-" * len(head)]
    for i, l in enumerate(layers):
        kernel = "x".join(map(str, l.kernel_shape))
        out = "x".join(map(str, l.output_hw))
        stage = "-" if l.stage is None else str(l.stage)
        rows.append(f"{i:>3}  {l.name:<24}{stage:>6}  {kernel:<16}{l.stride:>7}{out:>9}{l.macs:>13,}  "
                    f"{','.join(l.roles)}")
    total = sum(l.macs for l in layers)
    rows.append(f"{len(layers)} convs, {total:,} MACs per image; "
                f"{sum('decomposition' in l.roles for l in layers)} decomposition "
                f"({sum('shortcut' in l.roles for l in layers)} shortcuts)")
    return "\n".join(rows)


# Specs -----------------------------------------------------------------------------------------

_SELECTOR_KEYS = ("names", "patterns", "regex", "roles", "stages", "types", "paths")


@dataclasses.dataclass(frozen=True)
class Selector:
    """Layers matching ALL given fields; each field matches ANY of its entries.

    ``names`` are canonical names, ``patterns`` shell globs (``layer3.*.conv2``), ``regex``
    full-match regular expressions, ``roles`` from :data:`ROLES`, ``stages`` stage numbers (these two only for a
    model that declares its structure), ``types`` module type names (``Conv``, ``Dense``), ``paths`` shell globs
    over the module path with dots (``features.Conv_*``; the same as the name unless the model names its layers).

    Example:
        >>> from resnet_jax.ablation import AblationSpec, Selector
        >>> third = Selector(stages=(3,), roles=("residual",))     # stage 3 AND a residual conv
        >>> spec = AblationSpec("stage3-residual", select=(third,))
        >>> spec.select[0].stages, spec.select[0].roles
        ((3,), ('residual',))
        >>> Selector(patterns=("layer3.*.conv2", "layer4.*.conv2"))  # either glob
        Selector(names=(), patterns=('layer3.*.conv2', 'layer4.*.conv2'), regex=(), roles=(), stages=(), types=(),
                 paths=())
    """

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    stages: tuple[int, ...] = ()
    types: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def matches(self, layer: Layer) -> bool:
        tests = [
            (self.names, lambda n: layer.name == n),
            (self.patterns, lambda p: fnmatch.fnmatchcase(layer.name, p)),
            (self.regex, lambda r: re.fullmatch(r, layer.name) is not None),
            (self.roles, lambda r: r in layer.roles),
            (self.stages, lambda s: layer.stage == s),
            (self.types, lambda t: layer.type == t),
            (self.paths, lambda p: fnmatch.fnmatchcase(".".join(layer.path), p)),
        ]
        return all(any(map(test, values)) for values, test in tests if values)


@dataclasses.dataclass(frozen=True)
class AblationSpec:
    """A named ablation: the union of ``select`` minus the union of ``exclude``, and a kind.

    Example:
        >>> from resnet_jax.ablation import AblationSpec, Selector, parse_spec
        >>> spec = AblationSpec("stage4-but-shortcut", "zero-branch", select=(Selector(stages=(4,)),),
        ...                     exclude=(Selector(roles=("shortcut",)),))
        >>> spec.to_dict()["exclude"]
        ({'names': (), 'patterns': (), 'regex': (), 'roles': ('shortcut',), 'stages': (), 'types': (), 'paths': ()},)
        >>> parse_spec({"name": "stage4-but-shortcut", "kind": "zero-branch", "select": {"stages": 4},
        ...             "exclude": {"roles": "shortcut"}}) == spec
        True
    """

    name: str
    kind: str = "zero-kernel"
    select: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    seed: int = 1  # for ``rerandomize``

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def parse_selector(obj: Mapping[str, Any] | str, *, where: str) -> Selector:
    """A selector from a dict, or a bare string taken as a glob pattern."""
    if isinstance(obj, str):
        return Selector(patterns=(obj,))
    if not isinstance(obj, Mapping):
        raise SpecError(f"{where}: a selector must be a mapping or a pattern string, got {obj!r}")
    unknown = sorted(set(obj) - set(_SELECTOR_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown selector field(s) {unknown}; valid: {list(_SELECTOR_KEYS)}")
    fields = {k: _as_tuple(obj.get(k)) for k in _SELECTOR_KEYS}
    bad_roles = [r for r in fields["roles"] if r not in ROLES]
    if bad_roles:
        raise SpecError(f"{where}: unknown role(s) {bad_roles}; valid: {list(ROLES)}")
    for r in fields["regex"]:
        try:
            re.compile(r)
        except re.error as err:
            raise SpecError(f"{where}: invalid regex {r!r}: {err}") from err
    if any(not isinstance(s, int) for s in fields["stages"]):
        raise SpecError(f"{where}: stages must be integers, got {list(fields['stages'])}")
    return Selector(**fields)


def parse_spec(obj: Mapping[str, Any]) -> AblationSpec:
    """Validate and type a spec given as plain data (from JSON/YAML or the command line).

    A bare string selects by glob; single values stand for one-element lists.

    Example:
        >>> from resnet_jax.ablation import parse_spec
        >>> spec = parse_spec({"name": "late-conv2", "select": ["layer3.*.conv2", {"stages": 4, "roles": "residual"}]})
        >>> spec.kind, [s.patterns or s.stages for s in spec.select]
        ('zero-kernel', [('layer3.*.conv2',), (4,)])
    """
    if not isinstance(obj, Mapping):
        raise SpecError(f"an ablation spec must be a mapping, got {obj!r}")
    valid = ("name", "kind", "select", "exclude", "seed")
    unknown = sorted(set(obj) - set(valid))
    if unknown:
        raise SpecError(f"unknown spec field(s) {unknown}; valid: {list(valid)}")
    name = obj.get("name")
    if not name or not isinstance(name, str):
        raise SpecError(f"spec {obj!r} needs a 'name' (a non-empty string)")
    kind = obj.get("kind", "zero-kernel")
    if kind not in KINDS:
        raise SpecError(f"spec {name!r}: unknown kind {kind!r}; valid: {list(KINDS)}")
    select = tuple(parse_selector(s, where=f"spec {name!r} select")
                   for s in _as_tuple(obj.get("select")))
    if not select:
        raise SpecError(f"spec {name!r} selects nothing: give 'select' ({', '.join(_SELECTOR_KEYS)})")
    exclude = tuple(parse_selector(s, where=f"spec {name!r} exclude") for s in _as_tuple(obj.get("exclude")))
    return AblationSpec(name=name, kind=kind, select=select, exclude=exclude, seed=int(obj.get("seed", 1)))


def load_specs(path) -> list[AblationSpec]:
    """Specs from a JSON or YAML file holding one spec or a list of them; a malformed file is a
    :class:`SpecError` that names the file and line.

    Example:
        >>> import pathlib, tempfile
        >>> from resnet_jax.ablation import load_specs
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "specs.yaml"
        >>> _ = path.write_text("[{name: stem, select: conv1}, {name: stage4, kind: lesion, select: {stages: 4}}]")
        >>> [(s.name, s.kind) for s in load_specs(path)]
        [('stem', 'zero-kernel'), ('stage4', 'lesion')]
    """
    import yaml
    from pathlib import Path

    try:
        obj = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except OSError as err:
        raise SpecError(f"cannot read spec file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"{path}:{where} is not valid YAML/JSON ({getattr(err, 'problem', None) or err})") from None
    if not obj:
        raise SpecError(f"spec file {path} holds no specs; give a spec (name, kind, select) or a list of them")
    try:
        return [parse_spec(o) for o in (obj if isinstance(obj, list) else [obj])]
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def _roles_by_stage(layers: Sequence[Layer]) -> str:
    """``no stage: stem, decomposition; 1: adjacent, residual; ...``: what a selector of stages and roles can meet."""
    stages = sorted({l.stage for l in layers}, key=lambda s: -1 if s is None else s)
    held = {s: {r for l in layers if l.stage == s for r in l.roles} for s in stages}
    return "; ".join(f"{'no stage' if s is None else s}: {', '.join(r for r in ROLES if r in held[s])}"
                     for s in stages)


def _offers(layers: Sequence[Layer]) -> str:
    """What a model without declared structure can be selected by."""
    types = list(dict.fromkeys(l.type for l in layers))
    return (f"select by names, patterns, paths, regex or types; its types: {types}; its names: "
            f"{[l.name for l in layers]}")


def _check_selector(spec: AblationSpec, sel: Selector, layers: Sequence[Layer]) -> None:
    """A selector's names, stages, types and globs must each exist in the catalogue."""
    valid_names = [l.name for l in layers]
    valid_stages = sorted({l.stage for l in layers if l.stage is not None})
    if (sel.roles or sel.stages) and not declares_structure(layers):
        raise SpecError(f"spec {spec.name!r}: this model declares no structure (stages, units, roles), so "
                        f"{'roles' if sel.roles else 'stages'} select nothing; {_offers(layers)}")
    missing = [n for n in sel.names if n not in valid_names]
    if missing:
        raise SpecError(f"spec {spec.name!r}: unknown layer name(s) {missing}; valid: {valid_names}")
    bad_stages = [s for s in sel.stages if s not in valid_stages]
    if bad_stages:
        raise SpecError(f"spec {spec.name!r}: unknown stage(s) {bad_stages}; valid: {valid_stages}")
    valid_types = list(dict.fromkeys(l.type for l in layers))
    bad_types = [t for t in sel.types if t not in valid_types]
    if bad_types:
        raise SpecError(f"spec {spec.name!r}: no layer of type(s) {bad_types}; valid: {valid_types}")
    for p in sel.patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in valid_names):
            raise SpecError(f"spec {spec.name!r}: pattern {p!r} matches no layer; valid names: {valid_names}")
    paths = [".".join(l.path) for l in layers]
    for p in sel.paths:
        if not any(fnmatch.fnmatchcase(n, p) for n in paths):
            raise SpecError(f"spec {spec.name!r}: path glob {p!r} matches no layer; module paths: {paths}")


def _check_kind(spec: AblationSpec, chosen: tuple[str, ...], layers: Sequence[Layer]) -> None:
    """Kinds that need more than a kernel: a consuming normalisation, or residual units."""
    by_name = {l.name: l for l in layers}
    if spec.kind == "zero-branch":
        for name in chosen:
            if by_name[name].norm_path is None:
                raise SpecError(f"spec {spec.name!r}: zero-branch silences the normalisation that consumes "
                                f"{name!r}'s output, and tracing found none (no BatchNorm or other norm takes it "
                                f"directly); use zero-output to set {name!r}'s own output to 0")
    if spec.kind in UNIT_KINDS and not declares_structure(layers):
        raise SpecError(f"spec {spec.name!r}: {spec.kind} acts on residual units, and this model declares none "
                        f"(models declare them with ablation_place, as resnet_jax's ResNet does); kinds for it: "
                        f"{[k for k in KINDS if k not in STRUCTURE_KINDS]}")
    if spec.kind in UNIT_KINDS:
        for name in chosen:
            unit = by_name[name].unit
            if unit is None or not unit_has_identity_shortcut(layers, unit):
                raise SpecError(
                    f"spec {spec.name!r}: {spec.kind} acts on a unit's identity shortcut and needs identity-shortcut units; "
                    f"{name!r} is in {unit or 'the stem'}, which has none. Valid units: "
                    f"{sorted({l.unit for l in layers if l.unit and unit_has_identity_shortcut(layers, l.unit)})}")


def resolve(spec: AblationSpec, layers: Sequence[Layer]) -> tuple[str, ...]:
    """The layer names a spec selects, in network order; errors name what did not match."""
    valid_names = [l.name for l in layers]
    valid_stages = sorted({l.stage for l in layers if l.stage is not None})
    for sel in (*spec.select, *spec.exclude):
        _check_selector(spec, sel, layers)
    selected = [l for l in layers if any(s.matches(l) for s in spec.select)]
    if not selected:
        offers = f"roles by stage: {_roles_by_stage(layers)}" if declares_structure(layers) else _offers(layers)
        raise SpecError(f"spec {spec.name!r} ({spec.kind}) selects no layer: no layer has every field of one of its "
                        f"selectors; {offers}")
    chosen = tuple(l.name for l in selected if not any(s.matches(l) for s in spec.exclude))
    if not chosen:
        raise SpecError(f"spec {spec.name!r} ({spec.kind}) matches no layer (its exclusions remove every selected "
                        f"one); valid names: {valid_names}; stages: {valid_stages}; roles: {list(ROLES)}")
    _check_kind(spec, chosen, layers)
    return chosen


# Masks -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ablation:
    """A resolved spec: what a mask is built from.

    Example:
        >>> from resnet_jax.ablation import Ablation
        >>> Ablation("two-convs", "zero-kernel", ("layer1.0.conv1", "layer1.0.conv2"))
        Ablation(name='two-convs', kind='zero-kernel', layers=('layer1.0.conv1', 'layer1.0.conv2'), seed=1)
    """

    name: str
    kind: str
    layers: tuple[str, ...]
    seed: int = 1


def resolve_all(specs: Sequence[AblationSpec], layers: Sequence[Layer]) -> list[Ablation]:
    """Resolve every spec first, so a bad one fails before any compute.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.ablation import AblationSpec, Selector, layer_catalogue, resolve_all
        >>> from resnet_jax.models import create_model
        >>> model = create_model("resnet_tiny", num_classes=2, stem="cifar")
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> layers = layer_catalogue(model, variables, input_shape=(1, 8, 8, 3))
        >>> specs = [AblationSpec("stage3-residual", select=(Selector(stages=(3,), roles=("residual",)),)),
        ...          AblationSpec("shortcuts", "zero-branch", (Selector(roles=("shortcut",)),))]
        >>> [(a.name, a.layers) for a in resolve_all(specs, layers)]
        [('stage3-residual', ('layer3.1.conv1', 'layer3.1.conv2')),
         ('shortcuts', ('layer2.0.downsample', 'layer3.0.downsample', 'layer4.0.downsample'))]
    """
    out = [Ablation(s.name, s.kind, resolve(s, layers), s.seed) for s in specs]
    names = [a.name for a in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"duplicate ablation names {dupes}; each mask needs its own name")
    return out


def _norm_leaves(layer: Layer) -> set[tuple[str, ...]]:
    if layer.norm_path is None:
        raise SpecError(f"{layer.name}: no normalisation consumes its output (tracing found none); zero-branch and "
                        f"lesion need one")
    return {(*layer.norm_path, "scale"), (*layer.norm_path, "bias")}


def leaf_targets(ablation: Ablation, layers: Sequence[Layer], params: Mapping[str, Any]) -> set[tuple[str, ...]]:
    """Parameter leaf paths an ablation replaces."""
    by_name = {l.name: l for l in layers}
    targets = set()
    for name in ablation.layers:
        layer = by_name[name]
        if ablation.kind == "lesion":
            last = [l for l in layers if l.unit == layer.unit and "shortcut" not in l.roles][-1]
            targets |= _norm_leaves(last)
            continue
        if ablation.kind == "zero-output":  # every parameter the module owns directly: kernel, bias, ...
            owned = networks.module_params({"params": params}, layer.path) or {}
            targets |= {(*layer.path, k) for k, v in owned.items() if not isinstance(v, Mapping)}
            continue
        targets.add((*layer.path, "kernel"))
        if ablation.kind == "zero-branch":
            targets |= _norm_leaves(layer)
    return {tuple(str(p) for p in t) for t in targets}


def make_mask(params: Mapping[str, Any], ablation: Ablation, layers: Sequence[Layer]) -> Any:
    """A keep-mask shaped like ``params``: a scalar bool per leaf (True keeps the leaf).

    Scalars broadcast against their leaves, so a stack of K masks costs K bools per leaf. A target the
    parameters lack (a norm without scale or bias is skipped) is an error naming the layer: the variables are not
    the catalogued model's.

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> from resnet_jax.ablation import Ablation, layer_catalogue, make_mask
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> layers = layer_catalogue(model, variables, input_shape=(1, 8, 8, 3))
        >>> mask = make_mask(variables["params"], Ablation("out", "zero-output", ("layers_3",)), layers)
        >>> jax.tree.map(bool, mask)
        {'layers_0': {'bias': True, 'kernel': True}, 'layers_3': {'bias': False, 'kernel': False}}
    """
    targets = leaf_targets(ablation, layers, params)
    leaves = {tuple(str(getattr(k, "key", k)) for k in kp)
              for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    targets -= {t for t in targets - leaves if t[-1] == "bias"}  # a norm without bias: its zero scale silences it
    missing = sorted(targets - leaves)
    if missing:
        raise ValueError(f"{ablation.name}: {ablation.kind} of {list(ablation.layers)} replaces "
                         f"params/{'/'.join(missing[0])}, which the variables lack (a normalisation without a scale "
                         f"cannot be silenced; otherwise the variables are not the catalogued model's)")
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: np.bool_(tuple(str(getattr(k, "key", k)) for k in kp) not in targets), params)


def stack(masks: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: np.stack(leaves), *masks)


def replacement_for(kind: str, *, model: Any, input_shape: Sequence[int], initial_params: Any = None):
    """``seed -> params`` that a kind puts in place of masked kernels (None: zeros). ``reinit`` restores the
    run's initial parameters; ``rerandomize`` draws fresh ones from the initialiser with the spec's seed."""
    if kind == "reinit":
        if initial_params is None:
            raise ValueError("reinit needs the run's initial parameters (initial_params)")
        return lambda seed: initial_params
    if kind == "rerandomize":
        network = model if isinstance(model, networks.Network) else networks.Network(model, "linen")
        if network.framework == "nnx":
            network.init_params(0, None)  # refuses, saying why and what to use instead
        sample = jnp.zeros((1, *input_shape[1:]), jnp.float32)
        return lambda seed: network.init_params(seed, sample)
    return None


def apply(variables: Mapping[str, Any], mask: Any, *, replacement: Any = None) -> dict[str, Any]:
    """Pure: the variables with every masked-out parameter leaf replaced (by 0 by default).

    Example:
        >>> import flax.linen as nn, jax, jax.numpy as jnp
        >>> from resnet_jax.ablation import Ablation, apply, layer_catalogue, make_mask
        >>> model = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda x: x.mean((1, 2)), nn.Dense(2)])
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> layers = layer_catalogue(model, variables, input_shape=(1, 8, 8, 3))
        >>> mask = make_mask(variables["params"], Ablation("no-conv", "zero-kernel", ("layers_0",)), layers)
        >>> ablated = apply(variables, mask)          # jit- and vmap-able; variables are not modified
        >>> kernel, before = ablated["params"]["layers_0"]["kernel"], variables["params"]["layers_0"]["kernel"]
        >>> float(jnp.abs(kernel).sum()), bool(jnp.all(before != 0))
        (0.0, True)
        >>> model.apply(ablated, jnp.ones((1, 8, 8, 3))).tolist()   # no conv: only the biases (zero at init) remain
        [[0.0, 0.0]]
    """
    if replacement is None:
        params = jax.tree.map(lambda v, m: jnp.where(m, v, jnp.zeros_like(v)), variables["params"], mask)
    else:
        params = jax.tree.map(lambda v, m, r: jnp.where(m, v, r), variables["params"], mask, replacement)
    return {**variables, "params": params}


def make_gates(ablations: Sequence[Ablation], layers: Sequence[Layer]) -> dict[str, dict[str, np.ndarray]]:
    """Per-site gate vectors of length K (1 keeps, 0 silences) for gate-expressible ablations."""
    by_name = {l.name: l for l in layers}
    sites: dict[str, dict[str, np.ndarray]] = {}
    for k, ablation in enumerate(ablations):
        site_kind = GATE_KINDS[ablation.kind]
        for name in ablation.layers:
            site = by_name[name].unit if ablation.kind in UNIT_KINDS else name
            vec = sites.setdefault(site_kind, {}).setdefault(site, np.ones(len(ablations), np.float32))
            vec[k] = 0.0
    return sites


HOOK_SITES = {"zero-kernel": "kernel", "zero-output": "output", "zero-branch": "output", "lesion": "output"}
"""Kinds that gating module outputs expresses in any model, and the site: ``kernel`` keeps only the bias
(``y * g + bias * (1 - g)``, exactly the output with a zero kernel), ``output`` scales the whole output. A
``zero-branch`` gates its layer's kernel and the output of the normalisation consuming it; a ``lesion`` the
output of its unit's last normalisation."""


def make_hook_gates(ablations: Sequence[Ablation], layers: Sequence[Layer]) -> dict[str, dict[str, np.ndarray]]:
    """Per-module gate vectors of length K, ``{site: {module path with dots: vector}}``, for models gated by
    intercepting their modules' calls (:data:`HOOK_SITES`)."""
    by_name = {l.name: l for l in layers}
    sites: dict[str, dict[str, np.ndarray]] = {}

    def close(site, path, k):
        sites.setdefault(site, {}).setdefault(".".join(path), np.ones(len(ablations), np.float32))[k] = 0.0

    for k, ablation in enumerate(ablations):
        for name in ablation.layers:
            layer = by_name[name]
            if ablation.kind == "lesion":
                last = [l for l in layers if l.unit == layer.unit and "shortcut" not in l.roles][-1]
                close("output", _norm_path(last), k)
                continue
            close("output" if ablation.kind == "zero-output" else "kernel", layer.path, k)
            if ablation.kind == "zero-branch":
                close("output", _norm_path(layer), k)
    return sites


def _norm_path(layer: Layer) -> tuple[str, ...]:
    return min(_norm_leaves(layer))[:-1]
