"""Ablations as data: a layer catalogue, specs that select layers, pure masks, a batched engine.

The flow is ``catalogue -> spec -> resolve (layer names) -> mask (pytree) -> apply (pure)``, and
the engine evaluates a stack of masks over a dataset with one compiled function per chunk shape.

Ablation kinds (PROTOCOLS.md): ``zero-kernel`` replaces a conv kernel by zeros and keeps its
BatchNorm, so the branch still emits the BN constant ``beta - gamma * mean / sqrt(var + eps)``;
``zero-branch`` also zeroes that BatchNorm's scale and bias, so the conv path outputs exactly 0;
``lesion`` removes a whole residual branch (identity-shortcut units only); ``reinit`` puts the
kernel back to the run's initial values; ``rerandomize`` draws it afresh from the initialiser;
``cut-identity`` removes the identity shortcut of a unit, which then outputs ``relu(branch(x))`` (a gate
only: no weight expresses it).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import resnet

KINDS = ("zero-kernel", "zero-branch", "lesion", "reinit", "rerandomize", "cut-identity")
UNIT_KINDS = ("lesion", "cut-identity")
"""Kinds that act on a whole residual unit with an identity shortcut (a spec names the unit's convs)."""
GATE_ONLY_KINDS = ("cut-identity",)
"""Kinds that no change of weights expresses: the engine runs them with gates only."""
ROLES = ("stem", "decomposition", "shortcut", "adjacent", "residual")
GATE_KINDS = {"zero-kernel": "kernel", "zero-branch": "output", "lesion": "unit", "cut-identity": "identity"}
"""Kinds the gate formulation can express, and the gate site each one uses."""


class SpecError(ValueError):
    """An ablation spec that cannot be resolved; the message lists the valid choices."""


# Catalogue -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layer:
    """One conv kernel of a model, with where it sits and what it does."""

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


_STAGE = re.compile(r"layer(\d+)$")


def _record_convs(model: nn.Module, variables, input_shape) -> list[tuple[tuple[str, ...], tuple, tuple]]:
    """``(path, input shape, output shape)`` of every :class:`resnet.Conv` call, in call order."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, resnet.Conv) and context.method_name == "__call__":
            calls.append((tuple(context.module.path), args[0].shape, out.shape))
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros(input_shape)), variables)
    return calls


def catalogue(model: nn.Module, variables: Mapping[str, Any], *,
              input_shape: Sequence[int] = (1, 32, 32, 3)) -> list[Layer]:
    """Every conv kernel in network order with stage, unit, shapes, stride, MACs and roles.

    Roles come from structure, not from a list: ``stem`` is a conv outside every stage;
    ``shortcut`` a projection (``downsample``); ``decomposition`` any conv that changes the
    channel count; ``adjacent`` the other convs of a stage's first unit (they follow a
    decomposition conv, or the stem for stage 1); ``residual`` everything else.
    """
    layers = []
    for path, x_shape, y_shape in _record_convs(model, variables, input_shape):
        name = resnet.canonical_name(path)
        kernel_shape = tuple(_lookup(variables["params"], path)["kernel"].shape)
        kh, kw, cin, cout = kernel_shape
        stage_idx = next((i for i, p in enumerate(path) if _STAGE.match(p)), None)
        stage = int(_STAGE.match(path[stage_idx]).group(1)) if stage_idx is not None else None
        unit = resnet.canonical_name(path[:stage_idx + 2]) if stage_idx is not None else None
        shortcut = "downsample" in path
        roles = []
        if stage is None:
            roles.append("stem")
        if shortcut:
            roles.append("shortcut")
        if cin != cout:
            roles.append("decomposition")
        if stage is not None and not shortcut and cin == cout and path[stage_idx + 1] == "0":
            roles.append("adjacent")
        if not roles:
            roles.append("residual")
        layers.append(Layer(
            name=name, path=path, norm=resnet.norm_of(name), stage=stage, unit=unit,
            kernel_shape=kernel_shape, in_channels=cin, out_channels=cout,
            stride=x_shape[1] // y_shape[1], output_hw=(y_shape[1], y_shape[2]),
            macs=y_shape[1] * y_shape[2] * kh * kw * cin * cout, roles=tuple(roles),
        ))
    return layers


def _lookup(tree, path):
    for p in path:
        tree = tree[p]
    return tree


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

_SELECTOR_KEYS = ("names", "patterns", "regex", "roles", "stages")


@dataclasses.dataclass(frozen=True)
class Selector:
    """Layers matching ALL given fields; each field matches ANY of its entries.

    ``names`` are canonical names, ``patterns`` shell globs (``layer3.*.conv2``), ``regex``
    full-match regular expressions, ``roles`` from :data:`ROLES`, ``stages`` stage numbers.
    """

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    stages: tuple[int, ...] = ()

    def matches(self, layer: Layer) -> bool:
        tests = [
            (self.names, lambda n: layer.name == n),
            (self.patterns, lambda p: fnmatch.fnmatchcase(layer.name, p)),
            (self.regex, lambda r: re.fullmatch(r, layer.name) is not None),
            (self.roles, lambda r: r in layer.roles),
            (self.stages, lambda s: layer.stage == s),
        ]
        return all(any(map(test, values)) for values, test in tests if values)


@dataclasses.dataclass(frozen=True)
class AblationSpec:
    """A named ablation: the union of ``select`` minus the union of ``exclude``, and a kind."""

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
    """Validate and type a spec given as plain data (from JSON/YAML or the command line)."""
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
        raise SpecError(f"spec {name!r} selects nothing: give 'select' (names, patterns, regex, roles, stages)")
    exclude = tuple(parse_selector(s, where=f"spec {name!r} exclude") for s in _as_tuple(obj.get("exclude")))
    return AblationSpec(name=name, kind=kind, select=select, exclude=exclude, seed=int(obj.get("seed", 1)))


def load_specs(path) -> list[AblationSpec]:
    """Specs from a JSON or YAML file holding one spec or a list of them; a malformed file is a
    :class:`SpecError` that names the file and line."""
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


def resolve(spec: AblationSpec, layers: Sequence[Layer]) -> tuple[str, ...]:
    """The layer names a spec selects, in network order; errors name what did not match."""
    valid_names = [l.name for l in layers]
    valid_stages = sorted({l.stage for l in layers if l.stage is not None})
    for sel in (*spec.select, *spec.exclude):
        missing = [n for n in sel.names if n not in valid_names]
        if missing:
            raise SpecError(f"spec {spec.name!r}: unknown layer name(s) {missing}; valid: {valid_names}")
        bad_stages = [s for s in sel.stages if s not in valid_stages]
        if bad_stages:
            raise SpecError(f"spec {spec.name!r}: unknown stage(s) {bad_stages}; valid: {valid_stages}")
        for p in sel.patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in valid_names):
                raise SpecError(f"spec {spec.name!r}: pattern {p!r} matches no layer; valid names: {valid_names}")
    selected = [l for l in layers if any(s.matches(l) for s in spec.select)]
    if not selected:
        raise SpecError(f"spec {spec.name!r} ({spec.kind}) selects no layer: no layer has every field of one of its "
                        f"selectors; roles by stage: {_roles_by_stage(layers)}")
    chosen = tuple(l.name for l in selected if not any(s.matches(l) for s in spec.exclude))
    if not chosen:
        raise SpecError(f"spec {spec.name!r} ({spec.kind}) matches no layer (its exclusions remove every selected "
                        f"one); valid names: {valid_names}; stages: {valid_stages}; roles: {list(ROLES)}")
    if spec.kind in UNIT_KINDS:
        by_name = {l.name: l for l in layers}
        for name in chosen:
            unit = by_name[name].unit
            if unit is None or not unit_has_identity_shortcut(layers, unit):
                raise SpecError(
                    f"spec {spec.name!r}: {spec.kind} acts on a unit's identity shortcut and needs identity-shortcut units; "
                    f"{name!r} is in {unit or 'the stem'}, which has none. Valid units: "
                    f"{sorted({l.unit for l in layers if l.unit and unit_has_identity_shortcut(layers, l.unit)})}")
    return chosen


# Masks -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ablation:
    """A resolved spec: what a mask is built from."""

    name: str
    kind: str
    layers: tuple[str, ...]
    seed: int = 1


def resolve_all(specs: Sequence[AblationSpec], layers: Sequence[Layer]) -> list[Ablation]:
    """Resolve every spec first, so a bad one fails before any compute."""
    out = [Ablation(s.name, s.kind, resolve(s, layers), s.seed) for s in specs]
    names = [a.name for a in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"duplicate ablation names {dupes}; each mask needs its own name")
    return out


def _leaf_targets(ablation: Ablation, layers: Sequence[Layer]) -> set[tuple[str, ...]]:
    """Parameter leaf paths an ablation replaces."""
    by_name = {l.name: l for l in layers}
    targets = set()
    for name in ablation.layers:
        layer = by_name[name]
        if ablation.kind == "lesion":
            last = [l for l in layers if l.unit == layer.unit and "shortcut" not in l.roles][-1]
            norm_path = resnet.layer_path_of_norm(last.path)
            targets |= {(*norm_path, "scale"), (*norm_path, "bias")}
            continue
        targets.add((*layer.path, "kernel"))
        if ablation.kind == "zero-branch":
            norm_path = resnet.layer_path_of_norm(layer.path)
            targets |= {(*norm_path, "scale"), (*norm_path, "bias")}
    return targets


def make_mask(params: Mapping[str, Any], ablation: Ablation, layers: Sequence[Layer]) -> Any:
    """A keep-mask shaped like ``params``: a scalar bool per leaf (True keeps the leaf).

    Scalars broadcast against their leaves, so a stack of K masks costs K bools per leaf.
    """
    targets = _leaf_targets(ablation, layers)
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: np.bool_(tuple(str(k.key) for k in kp) not in targets), params)


def stack(masks: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: np.stack(leaves), *masks)


def replacement_for(kind: str, *, model: nn.Module, input_shape: Sequence[int], initial_params: Any = None):
    """``seed -> params`` that a kind puts in place of masked kernels (None: zeros). ``reinit`` restores the
    run's initial parameters; ``rerandomize`` draws fresh ones from the initialiser with the spec's seed."""
    if kind == "reinit":
        if initial_params is None:
            raise ValueError("reinit needs the run's initial parameters (initial_params)")
        return lambda seed: initial_params
    if kind == "rerandomize":
        sample = jnp.zeros((1, *input_shape[1:]), jnp.float32)
        return lambda seed: model.init(jax.random.key(seed), sample)["params"]
    return None


def apply(variables: Mapping[str, Any], mask: Any, *, replacement: Any = None) -> dict[str, Any]:
    """Pure: the variables with every masked-out parameter leaf replaced (by 0 by default).

    Example::

        mask = make_mask(variables["params"], Ablation("x", "zero-kernel", ("layer1.0.conv2",)), layers)
        ablated = apply(variables, mask)          # jit- and vmap-able; variables are not modified
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
