"""Eliminating residual units: which units a slim model drops, the greedy search that picks them, and the exact
slim variables.

In evaluation mode a zeroed kernel makes its residual branch input-independent (PROTOCOLS.md): BatchNorm then
emits a constant, so an identity-shortcut unit computes ``relu(x + b)``. Zeroing the branch's last conv gives a
per-channel ``b`` (``bn(0)``); zeroing an earlier conv gives a per-position ``b`` (the next conv sees a constant
map through zero padding, so the border differs). A *lesion* drops the branch, ``relu(x)``. A slim model
(:class:`resnet_jax.models.resnet.ResNet` with ``eliminated``) computes exactly what the masked model computes,
with no conv left in those units.

A *choice* is ``(unit, zeroed conv)`` (the conv empty for a lesion); a *set* of choices names at most one per unit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.ablation import catalogue as abl
from resnet_jax.models import resnet

GRANULARITIES = ("unit", "conv")
FORMS = ("bias", "lesion")


@dataclasses.dataclass(frozen=True, order=True)
class Choice:
    """Eliminate ``unit`` by zeroing ``conv`` (``''``: a lesion, the branch removed)."""

    unit: str
    conv: str = ""

    @property
    def label(self) -> str:
        return self.conv or f"{self.unit} (lesion)"


def branch_convs(layers: Sequence[abl.Layer], unit: str) -> list[abl.Layer]:
    """The convs of a unit's residual branch, in call order (its projection shortcut aside)."""
    return [l for l in layers if l.unit == unit and "shortcut" not in l.roles]


def eliminable_units(layers: Sequence[abl.Layer]) -> list[str]:
    """Units with an identity shortcut, in network order: only they become ``relu(x + b)`` with no conv left."""
    units = list(dict.fromkeys(l.unit for l in layers if l.unit is not None))
    return [u for u in units if abl.unit_has_identity_shortcut(layers, u)]


def candidates(layers: Sequence[abl.Layer], *, granularity: str = "unit", form: str = "bias") -> list[Choice]:
    """What a search may remove: per identity-shortcut unit its last conv zeroed (``unit``), or any conv of its
    branch (``conv``, where zeroing an earlier conv gives a per-position bias); a lesion per unit (``lesion``)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {list(GRANULARITIES)}")
    if form not in FORMS:
        raise ValueError(f"unknown elimination form {form!r}; valid: {list(FORMS)}")
    units = eliminable_units(layers)
    if not units:
        raise ValueError("this model has no identity-shortcut unit to eliminate")
    if form == "lesion":
        if granularity == "conv":
            raise ValueError("a lesion removes a whole branch: use --granularity unit with --form lesion")
        return [Choice(u) for u in units]
    if granularity == "unit":
        return [Choice(u, branch_convs(layers, u)[-1].name) for u in units]
    return [Choice(u, l.name) for u in units for l in branch_convs(layers, u)]


def form_of(choice: Choice, layers: Sequence[abl.Layer]) -> str:
    """The slim model's form for a choice (:data:`resnet.ELIMINATED_FORMS`)."""
    if not choice.conv:
        return "lesion"
    return "channel" if branch_convs(layers, choice.unit)[-1].name == choice.conv else "position"


def eliminated(choices: Sequence[Choice], layers: Sequence[abl.Layer]) -> tuple[tuple[str, str], ...]:
    """``((unit, form), ...)`` in network order: a slim model's ``eliminated`` attribute."""
    order = {u: i for i, u in enumerate(eliminable_units(layers))}
    return tuple((c.unit, form_of(c, layers)) for c in sorted(choices, key=lambda c: order[c.unit]))


def check_set(choices: Sequence[Choice], layers: Sequence[abl.Layer]) -> None:
    units = [c.unit for c in choices]
    valid = eliminable_units(layers)
    bad = sorted(set(units) - set(valid))
    if bad:
        raise ValueError(f"unit(s) {bad} cannot be eliminated (no identity shortcut, or unknown); valid: {valid}")
    if len(set(units)) != len(units):
        raise ValueError(f"a unit is eliminated once; got {[c.label for c in choices]}")
    if len({bool(c.conv) for c in choices}) > 1:
        raise ValueError("one set mixes lesions and zeroed convs; use one form per set")


def as_ablation(choices: Sequence[Choice], layers: Sequence[abl.Layer], *, name: str | None = None) -> abl.Ablation:
    """The masked model the set corresponds to, for the engine (no choices: the unablated model)."""
    check_set(choices, layers)
    order = {l.name: i for i, l in enumerate(layers)}
    name = name or ("eliminate " + ",".join(sorted(c.unit for c in choices)) if choices else "baseline")
    if choices and not choices[0].conv:
        firsts = sorted((branch_convs(layers, c.unit)[0].name for c in choices), key=order.get)
        return abl.Ablation(name, "lesion", tuple(firsts))
    return abl.Ablation(name, "zero-kernel", tuple(sorted((c.conv for c in choices), key=order.get)))


# The search -------------------------------------------------------------------------------------

Score = Callable[[list[tuple[Choice, ...]]], list[float]]
"""Scores of sets of choices (higher is better), all sets in one call: one engine call per search step."""


def greedy(options: Sequence[Choice], score: Score, *, baseline: float, max_drop: float,
           on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Greedy backward elimination: each step scores every remaining option jointly with those already removed and
    removes the best one, while the drop from ``baseline`` stays within ``max_drop``.

    Returns one record per step: ``removed`` (the set after the step), ``added``, ``value``, ``drop``,
    ``accepted`` and every option's score (``scores``). The last record is the rejected step (or the last option).
    Ties go to the earlier option in network order, so the path is reproducible.
    """
    removed: list[Choice] = []
    path = []
    while True:
        taken = {c.unit for c in removed}
        remaining = [c for c in options if c.unit not in taken]
        if not remaining:
            return path
        values = score([tuple(removed) + (c,) for c in remaining])
        best = int(np.argmax(values))
        drop = baseline - values[best]
        accepted = bool(drop <= max_drop + 1e-9)  # a drop of exactly max_drop, up to float rounding, is kept
        record = {"step": len(removed) + 1, "added": remaining[best], "value": float(values[best]),
                  "drop": float(drop), "accepted": accepted,
                  "removed": tuple(removed) + ((remaining[best],) if accepted else ()),
                  "scores": [(c, float(v)) for c, v in zip(remaining, values)]}
        path.append(record)
        if on_step is not None:
            on_step(record)
        if not accepted:
            return path
        removed.append(remaining[best])


def chosen(path: Sequence[dict]) -> tuple[Choice, ...]:
    """The largest accepted set of a greedy path."""
    accepted = [r for r in path if r["accepted"]]
    return accepted[-1]["removed"] if accepted else ()


def one_shot(path: Sequence[dict], *, baseline: float, max_drop: float) -> tuple[Choice, ...]:
    """The study's one-shot choice: every option whose drop alone is within ``max_drop`` (from the first step,
    which scores each option alone); for ``conv`` granularity the unit's best conv."""
    if not path:
        return ()
    best_per_unit: dict[str, tuple[Choice, float]] = {}
    for c, v in path[0]["scores"]:
        if baseline - v <= max_drop + 1e-9 and (c.unit not in best_per_unit or v > best_per_unit[c.unit][1]):
            best_per_unit[c.unit] = (c, v)
    return tuple(c for c, _ in best_per_unit.values())


def k_smallest(path: Sequence[dict], k: int) -> tuple[Choice, ...]:
    """The baseline a joint search must beat: the ``k`` options with the smallest drops alone (the first step of
    the path scores each option alone), one per unit (its best option), removed together without a search."""
    if not path or k <= 0:
        return ()
    best_per_unit: dict[str, tuple[Choice, float]] = {}
    for c, v in path[0]["scores"]:
        if c.unit not in best_per_unit or v > best_per_unit[c.unit][1]:
            best_per_unit[c.unit] = (c, v)
    if k > len(best_per_unit):
        raise ValueError(f"cannot pick {k} of {len(best_per_unit)} units")
    ranked = sorted(best_per_unit.values(), key=lambda cv: -cv[1])  # stable: ties keep the path's order
    return tuple(c for c, _ in ranked[:k])


def random_sets(options: Sequence[Choice], size: int, *, draws: int, seed: int = 0) -> list[tuple[Choice, ...]]:
    """``draws`` sets of ``size`` options on distinct units, uniformly at random (fixed by ``seed``)."""
    units = list(dict.fromkeys(c.unit for c in options))
    if size > len(units):
        raise ValueError(f"cannot draw {size} of {len(units)} units")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        picked = set(rng.choice(len(units), size=size, replace=False).tolist())
        by_unit = {}
        for c in options:
            if units.index(c.unit) in picked:
                by_unit.setdefault(c.unit, []).append(c)
        out.append(tuple(opts[rng.integers(len(opts))] for opts in by_unit.values()))
    return out


# The slim model -----------------------------------------------------------------------------------

def slim_model(model: nn.Module, choices: Sequence[Choice], layers: Sequence[abl.Layer]) -> nn.Module:
    """The model with the chosen units replaced by ``relu(x + b)`` (ResNet or PSPNet)."""
    return model.clone(eliminated=tuple(model.eliminated) + eliminated(choices, layers))


def _captured_branches(model: nn.Module, variables, norms: Mapping[tuple[str, ...], str],
                       input_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """The outputs of the given BatchNorms (module path -> unit) on one all-zero image, in one compiled call (run
    op by op, a ResNet34 compiles some hundred small programs, every process anew)."""
    def captured(variables):
        out = {}

        def interceptor(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            path = tuple(context.module.path)
            if path in norms and context.method_name == "__call__":
                out[norms[path]] = y
            return y

        with nn.intercept_methods(interceptor):
            model.apply(variables, jnp.zeros((1, *input_shape[1:]), jnp.float32))
        return out

    return {k: np.asarray(v[0], np.float32) for k, v in jax.jit(captured)(variables).items()}


def _without(tree: Mapping[str, Any], path: Sequence[str]) -> dict:
    """``tree`` without the node at ``path`` (empty parents removed, as Flax omits them)."""
    tree = dict(tree)
    head, *rest = path
    if head not in tree:
        return tree
    if rest:
        sub = _without(tree[head], rest)
        if sub:
            tree[head] = sub
        else:
            del tree[head]
    else:
        del tree[head]
    return tree


def _with(tree: Mapping[str, Any], path: Sequence[str], value: Any) -> dict:
    tree = dict(tree)
    head, *rest = path
    tree[head] = _with(tree.get(head, {}), rest, value) if rest else value
    return tree


def slim_variables(model: nn.Module, variables: Mapping[str, Any], choices: Sequence[Choice],
                   layers: Sequence[abl.Layer], *, input_shape: Sequence[int]) -> dict[str, Any]:
    """The slim model's variables: the eliminated branches' convs and BatchNorms removed and each unit's constant
    ``b`` (``branch_bias``) read off the masked model's branch output (exact in evaluation mode)."""
    check_set(choices, layers)
    ablation = as_ablation(choices, layers)
    masked = abl.apply(variables, abl.make_mask(variables["params"], ablation, layers)) if choices else variables
    unit_paths = {c.unit: branch_convs(layers, c.unit)[-1].path[:-1] for c in choices}
    norms = {resnet.layer_path_of_norm(branch_convs(layers, c.unit)[-1].path): c.unit for c in choices if c.conv}
    biases = _captured_branches(model, masked, norms, input_shape) if norms else {}
    params, stats = dict(variables["params"]), dict(variables.get("batch_stats", {}))
    for c in choices:
        params, stats = _without(params, unit_paths[c.unit]), _without(stats, unit_paths[c.unit])
        form = form_of(c, layers)
        if form == "channel":
            b = biases[c.unit]
            if np.ptp(b.reshape(-1, b.shape[-1]), axis=0).max() != 0:
                raise AssertionError(f"{c.conv} zeroed: the branch of {c.unit} should be constant per channel")
            params = _with(params, (*unit_paths[c.unit], "branch_bias"), jnp.asarray(b[0, 0]))
        elif form == "position":
            params = _with(params, (*unit_paths[c.unit], "branch_bias"), jnp.asarray(biases[c.unit]))
    out = {"params": params, "batch_stats": stats} if "batch_stats" in variables else {"params": params}
    _check_structure(slim_model(model, choices, layers), out, input_shape)
    return out


def _check_structure(model: nn.Module, variables, input_shape) -> None:
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape[1:]))))
    shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)  # noqa: E731
    if shapes(dict(expected)) != shapes(dict(variables)):
        raise AssertionError("the slim variables do not match the slim model's structure")


def slim_initial(initial_params: Mapping[str, Any], slim_params: Mapping[str, Any]) -> Any:
    """A slim run's initial parameters: the source run's, minus the eliminated convs, with each ``branch_bias`` at
    its initialiser's value (zeros), so ``reinit`` on the slim run means what it means on the source."""
    def pick(path, leaf):
        node = initial_params
        for k in path:
            node = node.get(str(k.key)) if isinstance(node, Mapping) else None
            if node is None:
                return jnp.zeros_like(leaf)
        return jnp.asarray(node)

    return jax.tree_util.tree_map_with_path(pick, dict(slim_params))


def count_params(variables: Mapping[str, Any]) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(variables["params"])))


def conv_macs(layers: Sequence[abl.Layer], choices: Sequence[Choice] = ()) -> int:
    """Multiply-accumulates per image of every conv the slim model keeps."""
    gone = {c.unit for c in choices}
    return int(sum(l.macs for l in layers if not (l.unit in gone and "shortcut" not in l.roles)))
