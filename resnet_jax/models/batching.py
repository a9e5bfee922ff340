"""How the ablation engine lays out many models in one batch: gates and copies of the clean rows.

A *gate* is a per-row multiplier at a named site (``kernel``: a conv's output before its BatchNorm,
i.e. a zeroed kernel; ``output``: the BatchNorm's output, a silenced branch; ``unit``: a residual
unit's whole branch, a lesion). *Copies* of the clean batch join the forward at a branch point, so
K masked models share everything before their first ablated unit. The models call these helpers
in their forward; :mod:`resnet_jax.ablation.engine` builds the gates and branch maps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Gates = Mapping[str, Mapping[str, Array]]

GATE_KINDS = ("kernel", "output", "unit", "identity")
"""Gate sites: ``kernel`` scales a conv's output before its BatchNorm (a zeroed kernel),
``output`` scales the BatchNorm's output (a silenced branch), ``unit`` scales a residual unit's
whole branch before the shortcut is added (a lesion), ``identity`` scales a unit's identity shortcut."""


def gate(x: Array, gates: Gates | None, kind: str, name: str) -> Array:
    """Multiply ``x`` per example by the gate registered for ``(kind, name)``, if any."""
    if gates is None:
        return x
    g = gates.get(kind, {}).get(name)
    if g is None:
        return x
    if _CONSUMED:
        _CONSUMED[-1].add((kind, name))
    # With branches, the rows present here are a prefix of the final rows (copies are appended).
    g = jnp.asarray(g, x.dtype)[: x.shape[0]]
    return x * g.reshape((-1,) + (1,) * (x.ndim - 1))


class Copies(NamedTuple):
    """Copies of the clean batch that join the forward at one branch point (see :class:`ResNet`).

    ``full`` copies run the unit like any other row (any gates). The other two are for copies whose
    first zero gate is in this unit: a ``residual`` copy has a zero gate in the unit's residual branch
    and none on its shortcut, a ``shortcut`` copy a zero gate on the projection shortcut and none in
    the branch. Past a zero gate a part no longer depends on the image, so the unit computes that
    part on one row and adds it to the clean rows' other part: such a copy costs an addition
    where a full copy costs the unit. Evaluation mode only (BatchNorm with running statistics):
    in train mode the one row would get batch statistics of its own.
    """

    full: int = 0
    residual: int = 0
    shortcut: int = 0


class LayerPlace(NamedTuple):
    """Where a kernel module sits in a model that declares its residual structure: the protocol by which a model
    tells the ablation catalogue a layer's name, stage and unit, and whether it is a projection shortcut.

    A model declares it with a method ``ablation_place(path, module) -> LayerPlace | None`` (None keeps a module
    out of the catalogue) and, if its ``__call__`` takes ``gates=`` and ``branches=`` (this module's layout), a
    class attribute ``ablation_gates = True``. Models without it are catalogued by module path."""

    name: str
    stage: int | None
    unit: str | None
    shortcut: bool


_CONSUMED: list[set[tuple[str, str]]] = []


@contextlib.contextmanager
def recording_gates() -> Iterator[set[tuple[str, str]]]:
    """The ``(kind, name)`` gate sites that :func:`gate` applies while the context is open (at trace time), so
    the engine can refuse a gate no call consumed."""
    seen: set[tuple[str, str]] = set()
    _CONSUMED.append(seen)
    try:
        yield seen
    finally:
        _CONSUMED.pop()


def as_copies(value: int | Copies) -> Copies:
    return value if isinstance(value, Copies) else Copies(full=int(value))


def tile_clean(x: Array, k: int, clean: int) -> Array:
    """Append ``k`` copies of the clean batch (the first ``clean`` rows) to ``x``."""
    if not k:
        return x
    c = x[:clean]
    return jnp.concatenate([x, jnp.broadcast_to(c[None], (k, *c.shape)).reshape(k * clean, *c.shape[1:])])


def copy_gates(gates: Gates | None, first: int, count: int, clean: int) -> Gates | None:
    """The gates of copies ``first .. first + count - 1``, one row per copy (gates hold one value per row)."""
    if gates is None:
        return None
    return jax.tree.map(lambda g: jnp.asarray(g)[first * clean:(first + count) * clean:clean], gates)
