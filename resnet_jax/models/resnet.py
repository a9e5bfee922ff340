"""Flax ResNets laid out like torchvision's, so a layer name means the same layer in both.

Parameter paths read as torchvision's state_dict names: ``layer3/0/conv1/kernel`` is
``layer3.0.conv1.weight``; the projection shortcut lives under ``layer{s}/0/downsample/{conv,bn}``
and is called ``layer{s}.0.downsample`` (its BatchNorm ``layer{s}.0.downsample.bn``).
:func:`layer_paths` is the one place that maps canonical names to parameter paths.

Every model returns ``(outputs, intermediates)`` so probing needs no extra plumbing, and accepts
optional *gates*: per-example multipliers at named sites that the ablation engine uses to
evaluate many ablations in one batch with shared weights (see ``resnet_jax.ablation``).

A *slim* ResNet (``eliminated``) replaces chosen identity-shortcut units by ``relu(x + b)``: the unit's
residual branch is gone and ``b`` (``branch_bias``) is what the branch emitted once a zeroed kernel made it
input-independent (see :mod:`resnet_jax.ablation.elimination`).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.configs.base import ELIMINATED_FORMS
from resnet_jax.models.batching import Copies, Gates, LayerPlace, as_copies, copy_gates, gate, tile_clean

Array = jax.Array

CONV_IMPLS = ("auto", "xla", "patches")
# How an eliminated unit's branch is replaced (ELIMINATED_FORMS, defined with the config schema): a per-channel
# bias ``(C,)`` (its last conv was zeroed), a per-position bias ``(H, W, C)`` (an earlier conv was zeroed: zero
# padding makes the constant vary near the borders), or nothing (``lesion``: the unit is ``relu(x)``).

# torchvision initialises convs with Kaiming normal (fan_out, ReLU gain).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _canonical(path: Sequence[str]) -> str:
    return ".".join(path)


def _formulation(impl: str, in_hw: tuple[int, int], out_hw: tuple[int, int], taps: int, *, groups: int = 1) -> str:
    """Which formulation a conv runs as: ``'xla'``, ``'patches'`` or ``'dense'``.

    ``auto`` follows per-layer timings on CPU (``benchmarks/conv_kernels.py``): XLA's CPU
    convolution is fine down to 4x4 outputs but 20-40x slower than a matmul on 2x2 and 1x1 maps,
    and once the input has fewer pixels than the kernel has taps (a 3x3 conv on a 2x2 or 1x1
    map) most taps read padding, so the conv as one dense matrix does less work than im2col.
    Other backends, and grouped convs (as matmuls they would multiply a block-diagonal kernel, ``groups`` times the
    work), keep XLA's convolution.
    """
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu" or groups > 1:
        return "xla"
    if taps > 1 and in_hw[0] * in_hw[1] < taps:
        return "dense"
    return "patches" if out_hw[0] * out_hw[1] <= 4 else "xla"


class Conv(nn.Module):
    """Bias-free 2D conv with torchvision's symmetric padding and a swappable formulation.

    ``impl='xla'`` uses ``lax.conv_general_dilated``; ``'patches'`` extracts patches and does one
    matmul (numerically the same contraction); ``'auto'`` picks per layer (:func:`_formulation`),
    on CPU also the dense-operator form (:func:`conv_dense`) for 2x2 and 1x1 maps. ``groups > 1``
    is torch's grouped conv (ResNeXt): the kernel is ``(kh, kw, in / groups, features)``.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    dilation: int = 1
    impl: str = "auto"
    dtype: Any = jnp.float32
    groups: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = self.kernel_size
        shape = (kh, kw, x.shape[-1] // self.groups, self.features)
        kernel = self.param("kernel", conv_init, shape, jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        pad = ((self.dilation * (kh // 2),) * 2, (self.dilation * (kw // 2),) * 2)
        out_hw = tuple(
            (x.shape[1 + i] + 2 * pad[i][0] - self.dilation * (k - 1) - 1) // self.strides + 1
            for i, k in enumerate((kh, kw))
        )
        how = _formulation(self.impl, x.shape[1:3], out_hw, kh * kw, groups=self.groups)
        if how != "xla" and self.groups > 1:
            kernel = block_diagonal(kernel, self.groups)
        if how == "patches":
            return conv_patches(x, kernel, strides=self.strides, padding=pad, dilation=self.dilation)
        if how == "dense":
            return conv_dense(x, kernel, strides=self.strides, padding=pad, dilation=self.dilation)
        return jax.lax.conv_general_dilated(
            x, kernel, (self.strides,) * 2, pad, rhs_dilation=(self.dilation,) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups,
        )


def block_diagonal(kernel: Array, groups: int) -> Array:
    """A grouped kernel ``(kh, kw, in / groups, out)`` as the ungrouped one it equals: zeros off the groups."""
    kh, kw, cin, cout = kernel.shape
    per_group = kernel.reshape(kh, kw, cin, groups, cout // groups)
    full = jnp.einsum("hwigo,Gg->hwGigo", per_group, jnp.eye(groups, dtype=kernel.dtype))
    return full.reshape(kh, kw, groups * cin, cout)


def conv_patches(x: Array, kernel: Array, *, strides: int, padding, dilation: int = 1) -> Array:
    """The conv as im2col by strided slices + one matmul.

    Slices (not ``conv_general_dilated_patches``) keep the backward pass cheap: the transpose
    of a slice is a pad, where the transpose of the patches op is another convolution.
    """
    kh, kw, cin, cout = kernel.shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h_out = (x.shape[1] - dilation * (kh - 1) - 1) // strides + 1
    w_out = (x.shape[2] - dilation * (kw - 1) - 1) // strides + 1
    cols = [
        x[:, i * dilation: i * dilation + (h_out - 1) * strides + 1: strides,
          j * dilation: j * dilation + (w_out - 1) * strides + 1: strides, :]
        for i in range(kh) for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout))


@functools.lru_cache(maxsize=None)
def _dense_taps(in_hw, out_hw, kernel_hw, strides, padding, dilation):
    """``taps[p, o]``: the kernel tap joining input pixel ``p`` to output pixel ``o`` (``kh*kw``: none)."""
    (h, w), (ho, wo), (kh, kw) = in_hw, out_hw, kernel_hw
    taps = np.full((h * w, ho * wo), kh * kw, np.int32)
    for r, c, i, j in itertools.product(range(h), range(w), range(ho), range(wo)):
        a, b = r - i * strides + padding[0][0], c - j * strides + padding[1][0]
        if a % dilation == 0 and b % dilation == 0 and a // dilation < kh and b // dilation < kw \
                and a >= 0 and b >= 0:
            taps[r * w + c, i * wo + j] = (a // dilation) * kw + b // dilation
    return taps


def conv_dense(x: Array, kernel: Array, *, strides: int, padding, dilation: int = 1) -> Array:
    """The conv as one matmul with the dense (input pixels x output pixels) operator it defines.

    Cheaper than im2col when the map has fewer pixels than the kernel has taps: a 3x3 conv on a
    1x1 map multiplies by the centre tap only instead of nine taps, eight of them padding.
    """
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    ho = (h + sum(padding[0]) - dilation * (kh - 1) - 1) // strides + 1
    wo = (w + sum(padding[1]) - dilation * (kw - 1) - 1) // strides + 1
    taps = _dense_taps((h, w), (ho, wo), (kh, kw), strides, tuple(map(tuple, padding)), dilation)
    with_zero = jnp.concatenate([kernel.reshape(kh * kw, cin, cout), jnp.zeros((1, cin, cout), kernel.dtype)])
    operator = with_zero[taps].transpose(0, 2, 1, 3).reshape(h * w * cin, ho * wo * cout)
    return jnp.dot(x.reshape(n, h * w * cin), operator).reshape(n, ho, wo, cout)


class Downsample(nn.Module):
    """Projection shortcut: 1x1 conv + BatchNorm (torchvision's ``downsample.0``/``downsample.1``)."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: Array, gates: Gates | None = None) -> Array:
        me = _canonical(self.path)
        x = self.conv(self.features, (1, 1), strides=self.strides, name="conv")(x)
        x = gate(x, gates, "kernel", me)
        x = self.norm(name="bn")(x)
        return gate(x, gates, "output", me)


class _Unit(nn.Module):
    """Shared machinery of residual units: conv -> gate -> BN -> gate, the shortcut, and copies
    joining at the unit (:class:`Copies`)."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    dilation: int = 1
    replaced: str = ""  # an ELIMINATED_FORMS entry: the branch is a constant (slim models)

    expansion = 1

    def constant_branch(self, x: Array) -> Callable[[Array, Gates | None], Array]:
        """The eliminated branch as ``(x, gates) -> b`` broadcast to ``x`` (identity-shortcut units only)."""
        me = _canonical(self.path)
        if self.replaced not in ELIMINATED_FORMS:
            raise ValueError(f"unit {me}: unknown elimination form {self.replaced!r}; valid: {ELIMINATED_FORMS}")
        if self.strides != 1 or x.shape[-1] != self.features * self.expansion:
            raise ValueError(f"unit {me} has a projection shortcut; only identity-shortcut units can be eliminated "
                             f"(their output is then relu(x + b), with no conv left)")
        if self.replaced == "lesion":
            return lambda x, gates: jnp.zeros_like(x)
        shape = (x.shape[-1],) if self.replaced == "channel" else x.shape[1:]
        if self.has_variable("params", "branch_bias"):  # a per-position bias holds the map size it was built at
            stored = tuple(self.get_variable("params", "branch_bias").shape)
            if stored != tuple(shape):
                raise ValueError(f"unit {me} was eliminated with a per-position bias for {stored[:2]} maps; this "
                                 f"input gives {tuple(shape[:2])} maps (use the input size of the run it came from)")
        bias = self.param("branch_bias", nn.initializers.zeros, shape, jnp.float32)
        return lambda x, gates: jnp.broadcast_to(bias.astype(x.dtype), x.shape)

    @property
    def width(self) -> int:
        """Channels inside the residual branch (before a Bottleneck's expanding conv)."""
        return self.features

    def conv_bn(self, index: int, kernel_size, strides=1, dilation=1,
                groups=1) -> Callable[[Array, Gates | None], Array]:
        """Conv ``index`` and its BatchNorm with their gates, as a function of ``(x, gates)`` so the
        unit can run them on more than one set of rows."""
        name = f"{_canonical(self.path)}.conv{index}"
        width = self.features * self.expansion if kernel_size == "last" else self.width
        size = (1, 1) if kernel_size in ((1, 1), "last") else kernel_size
        conv = self.conv(width, size, strides=strides, dilation=dilation, groups=groups, name=f"conv{index}")
        norm = self.norm(name=f"bn{index}")
        return lambda x, gates: gate(norm(gate(conv(x), gates, "kernel", name)), gates, "output", name)

    def merge(self, x, residual: Callable[[Array, Gates | None], Array], gates, copies: Copies, clean: int):
        """``relu(shortcut(x) + residual(x))`` for the rows present and ``copies.full`` new copies,
        then the ``residual`` and ``shortcut`` copies from the clean rows (see :class:`Copies`)."""
        me = _canonical(self.path)
        out_features = self.features * self.expansion
        projection = None
        if self.strides != 1 or x.shape[-1] != out_features:
            projection = Downsample(out_features, self.strides, self.conv, self.norm, name="downsample")
        if copies.shortcut and projection is None:
            raise ValueError(f"unit {me} has an identity shortcut, so no copy can cut it; "
                             f"join it as a 'residual' or 'full' copy")

        def branch(x, gates):
            return gate(residual(x, gates), gates, "unit", me)

        def shortcut(x, gates):
            return gate(x, gates, "identity", me) if projection is None else projection(x, gates)

        x = tile_clean(x, copies.full, clean)
        r = branch(x, gates)  # before the shortcut: the catalogue lists convs in call order
        s = shortcut(x, gates)
        out = [nn.relu(s + r)]
        if not (copies.residual or copies.shortcut):
            return out[0]
        first = x.shape[0] // clean  # the copy index of the first copy joining from the clean rows
        for count, cut, kept in ((copies.residual, branch, s), (copies.shortcut, shortcut, r)):
            if count:
                one = cut(jnp.broadcast_to(x[:1], (count, *x.shape[1:])), copy_gates(gates, first, count, clean))
                out.append(nn.relu(one[:, None] + kept[None, :clean]).reshape(count * clean, *one.shape[1:]))
                first += count
        return jnp.concatenate(out)


class BasicBlock(_Unit):
    """Two 3x3 convs (torchvision's BasicBlock); dilation replaces stride in dilated stages."""

    @nn.compact
    def __call__(self, x: Array, gates: Gates | None = None, copies: Copies = Copies(), clean: int = 0) -> Array:
        if self.replaced:
            return self.merge(x, self.constant_branch(x), gates, copies, clean)
        d = self.dilation
        conv_bn1 = self.conv_bn(1, (3, 3), strides=self.strides, dilation=d)
        conv_bn2 = self.conv_bn(2, (3, 3), dilation=d)
        return self.merge(x, lambda x, g: conv_bn2(nn.relu(conv_bn1(x, g)), g), gates, copies, clean)


class Bottleneck(_Unit):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 expanding by 4.

    As torchvision's, the branch is ``int(features * width_per_group / 64) * groups`` wide and its 3x3 conv has
    ``groups`` groups: ResNeXt-50 32x4d is ``groups=32, width_per_group=4``, Wide ResNet-50-2 ``width_per_group=128``.
    """

    expansion = 4
    groups: int = 1
    width_per_group: int = 64

    @property
    def width(self) -> int:
        return int(self.features * (self.width_per_group / 64.0)) * self.groups

    @nn.compact
    def __call__(self, x: Array, gates: Gates | None = None, copies: Copies = Copies(), clean: int = 0) -> Array:
        if self.replaced:
            return self.merge(x, self.constant_branch(x), gates, copies, clean)
        conv_bn1 = self.conv_bn(1, (1, 1))
        conv_bn2 = self.conv_bn(2, (3, 3), strides=self.strides, dilation=self.dilation, groups=self.groups)
        conv_bn3 = self.conv_bn(3, "last")

        def residual(x, g):
            return conv_bn3(nn.relu(conv_bn2(nn.relu(conv_bn1(x, g)), g)), g)

        return self.merge(x, residual, gates, copies, clean)


class Stage(nn.Module):
    """``n`` residual units named ``0..n-1``; only the first one strides or projects."""

    n_units: int
    features: int
    strides: int
    block_cls: Callable[..., nn.Module]
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    dilation: int = 1
    eliminated: Mapping[str, str] | None = None  # unit name -> form (slim models)

    @nn.compact
    def __call__(self, x: Array, gates: Gates | None = None, branches: Mapping[str, Copies] | None = None,
                 clean: int = 0) -> Array:
        for b in range(self.n_units):
            unit = f"{_canonical(self.path)}.{b}"
            copies = (branches or {}).get(unit, Copies())
            x = self.block_cls(
                self.features, self.strides if b == 0 else 1, self.conv, self.norm,
                dilation=self.dilation, replaced=(self.eliminated or {}).get(unit, ""), name=str(b),
            )(x, gates, copies, clean)
        return x


class ResNet(nn.Module):
    """torchvision-layout ResNet returning ``(logits, intermediates)``.

    Attributes:
      stage_sizes: residual units per stage, e.g. ``(3, 4, 6, 3)`` for ResNet34.
      block_cls: ``BasicBlock`` or ``Bottleneck``.
      num_classes: size of the ``fc`` head; ``None`` drops pooling and head (an encoder).
      stem: ``'torchvision'`` (7x7/2 conv + 3x3/2 max-pool) or ``'cifar'`` (3x3/1 conv, no pool).
      dilate_stages: per stage 2..4, replace its stride by dilation (PSPNet's output stride 8). Every
        unit of a dilated stage uses the new dilation, as segmentation_models_pytorch does;
        torchvision's ``replace_stride_with_dilation`` keeps the previous one in the first unit,
        so dilated weights do not transfer between the two bit for bit.
      conv_impl: ``'auto'``, ``'xla'`` or ``'patches'``; see :class:`Conv`.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters stay float32.
      eliminated: ``((unit, form), ...)``: identity-shortcut units replaced by ``relu(x + b)`` (a slim model;
        forms in :data:`ELIMINATED_FORMS`; unit names as canonical names, e.g. ``layer3.1``).
      groups, width_per_group: a Bottleneck's 3x3 conv groups and channels per group at ``num_filters=64``,
        as torchvision's ResNet takes them (ResNeXt-50 32x4d: 32 and 4; Wide ResNet-50-2: 1 and 128).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from resnet_jax.models import ResNet
      >>> model = ResNet(stage_sizes=(1, 1, 1, 1), num_classes=3, num_filters=4, stem="cifar")
      >>> x = jnp.zeros((2, 8, 8, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)   # shapes only: nothing is computed
      >>> logits, intermediates = jax.eval_shape(model.apply, variables, x)
      >>> logits.shape, {name: a.shape for name, a in intermediates.items()}
      ((2, 3), {'layer1': (2, 8, 8, 4), 'layer2': (2, 4, 4, 8), 'layer3': (2, 2, 2, 16), 'layer4': (2, 1, 1, 32),
                'pre_logits': (2, 32), 'stem': (2, 8, 8, 4)})
    """

    stage_sizes: Sequence[int]
    block_cls: Callable[..., nn.Module] = BasicBlock
    num_classes: int | None = 1000
    num_filters: int = 64
    stem: str = "torchvision"
    dilate_stages: Sequence[bool] = (False, False, False)
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    eliminated: Sequence[tuple[str, str]] = ()
    groups: int = 1
    width_per_group: int = 64

    ablation_gates = True  # the ablation catalogue's structure protocol (batching.LayerPlace)
    ablation_place = staticmethod(lambda path, module: ablation_place(path, module))

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, gates: Gates | None = None,
                 branches: Mapping[str, int | Copies] | None = None, batch_stats: bool = False):
        """Forward pass; ``batch_stats`` normalises by the batch's statistics outside training (BatchNorm only).

        ``branches`` maps a branch point (the stem's name, ``conv1``, or a residual unit's,
        ``layer2.1``) to the copies of the clean batch (the input's rows, which stay unablated)
        that join there: ``k`` full copies, or a :class:`Copies`. Ablations that start at a unit so
        share everything before it. Rows end up as ``[clean, copies]``, the copies ordered by point
        in network order, then ``full``, ``residual``, ``shortcut``; a gate holds one value per
        final row, and a site sees the prefix of rows present there.
        """
        if self.stem not in ("torchvision", "cifar"):
            raise ValueError(f"unknown stem {self.stem!r}; valid: 'torchvision', 'cifar'")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"unknown conv_impl {self.conv_impl!r}; valid: {CONV_IMPLS}")
        conv = functools.partial(Conv, impl=self.conv_impl, dtype=self.dtype)
        block_cls = self._block()
        # torch momentum 0.1 == flax momentum 0.9; exact variance as torch computes it.
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not (train or batch_stats), momentum=0.9, epsilon=1e-5,
            dtype=self.dtype, use_fast_variance=False,
        )
        stem_name, branches, eliminated = _checked_points(_canonical(self.path), self.stage_sizes, branches,
                                                          self.eliminated)
        at_stem = branches.get(stem_name, Copies())
        intermediates = {}
        clean = x.shape[0]
        x = tile_clean(x, at_stem.full, clean)
        if self.stem == "torchvision":
            x = conv(self.num_filters, (7, 7), strides=2, name="conv1")(x)
        else:
            x = conv(self.num_filters, (3, 3), strides=1, name="conv1")(x)
        x = gate(x, gates, "kernel", stem_name)
        x = gate(norm(name="bn1")(x), gates, "output", stem_name)
        x = nn.relu(x)
        if self.stem == "torchvision":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        intermediates["stem"] = x
        dilation = 1
        for i, n_units in enumerate(self.stage_sizes):
            strides = 1 if i == 0 else 2
            if i > 0 and self.dilate_stages[i - 1]:
                dilation, strides = dilation * 2, 1
            x = Stage(
                n_units, self.num_filters * 2**i, strides, block_cls, conv, norm,
                dilation=dilation, eliminated=eliminated, name=f"layer{i + 1}",
            )(x, gates, branches, clean)
            intermediates[f"layer{i + 1}"] = x
        if self.num_classes is None:
            return x, intermediates
        x = jnp.mean(x, axis=(1, 2))
        intermediates["pre_logits"] = x
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32), intermediates

    def _block(self) -> Callable[..., nn.Module]:
        """The unit class with this network's groups and width (only Bottlenecks have them, as in torchvision)."""
        if (self.groups, self.width_per_group) == (1, 64):
            return self.block_cls
        if not (isinstance(self.block_cls, type) and issubclass(self.block_cls, Bottleneck)):
            raise ValueError(f"groups={self.groups}, width_per_group={self.width_per_group} need Bottleneck units; "
                             f"{getattr(self.block_cls, '__name__', self.block_cls)} has groups=1, width_per_group=64")
        return functools.partial(self.block_cls, groups=self.groups, width_per_group=self.width_per_group)


def _checked_points(prefix: str, stage_sizes: Sequence[int], branches: Mapping[str, int | Copies] | None,
                    eliminated: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Copies], dict[str, str]]:
    """The stem's name, ``branches`` as :class:`Copies` and ``eliminated`` as a dict, each checked against the
    network's branch points (the stem, then every residual unit), so a misspelt name is an error naming the valid
    ones rather than a mask that silently does nothing."""
    stem_name = f"{prefix}.conv1" if prefix else "conv1"
    stage_names = [f"{prefix}.layer{i + 1}" if prefix else f"layer{i + 1}" for i in range(len(stage_sizes))]
    points = [stem_name] + [f"{s}.{b}" for s, n in zip(stage_names, stage_sizes) for b in range(n)]
    unknown = sorted(set(branches or {}) - set(points))
    if unknown:
        raise ValueError(f"unknown branch points {unknown}; valid: {points}")
    branches = {p: as_copies(v) for p, v in (branches or {}).items()}
    eliminated = dict(eliminated)
    wrong = sorted(set(eliminated) - set(points[1:]))
    if wrong:
        raise ValueError(f"unknown eliminated unit(s) {wrong}; valid: {points[1:]}")
    at_stem = branches.get(stem_name, Copies())
    if at_stem.residual or at_stem.shortcut:
        raise ValueError(f"the stem {stem_name!r} has no residual branch or shortcut; "
                         f"copies join it as full copies, not {at_stem}")
    return stem_name, branches, eliminated


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
"""torchvision's ``resnet18``: ``ResNet18(num_classes=10)``.

>>> import jax, jax.numpy as jnp
>>> from resnet_jax.models import ResNet18
>>> variables = jax.eval_shape(ResNet18(num_classes=10).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
>>> sum(p.size for p in jax.tree.leaves(variables["params"]))   # torchvision's resnet18(num_classes=10)
11181642
"""
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
"""torchvision's ``resnet34``, the study's network: ``ResNet34(num_classes=10, stem="cifar")``.

>>> import jax, jax.numpy as jnp
>>> from resnet_jax.models import ResNet34
>>> variables = jax.eval_shape(ResNet34(num_classes=1000).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
>>> sum(p.size for p in jax.tree.leaves(variables["params"]))   # torchvision's resnet34()
21797672
"""
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
"""torchvision's ``resnet50`` (bottleneck units): ``ResNet50(num_classes=1000)``.

>>> import jax, jax.numpy as jnp
>>> from resnet_jax.models import ResNet50
>>> variables = jax.eval_shape(ResNet50(num_classes=1000).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
>>> sum(p.size for p in jax.tree.leaves(variables["params"]))   # torchvision's resnet50()
25557032
"""
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
WideResNet50_2 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, width_per_group=128)
WideResNet101_2 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, width_per_group=128)
ResNeXt50_32x4d = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, groups=32,
                                    width_per_group=4)
ResNeXt101_32x8d = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, groups=32,
                                     width_per_group=8)
# Every structural feature of ResNet34 (stem, projections, identity units) at a tiny cost; tests only.
ResNetTiny = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, num_filters=4)

MODELS = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50, "resnet101": ResNet101,
          "resnet152": ResNet152, "wide_resnet50_2": WideResNet50_2, "wide_resnet101_2": WideResNet101_2,
          "resnext50_32x4d": ResNeXt50_32x4d, "resnext101_32x8d": ResNeXt101_32x8d, "resnet_tiny": ResNetTiny}
"""Every ResNet by the name a config's ``model.name`` gives it, e.g. ``MODELS["resnet34"](num_classes=10)``."""


def create_model(name: str, **kwargs) -> ResNet:
    """Build a model by registry name; unknown names list the valid ones.

    Example:
        >>> from resnet_jax.models import create_model
        >>> model = create_model("resnet34", num_classes=10, stem="cifar")
        >>> model.stage_sizes, model.num_classes, model.stem
        ((3, 4, 6, 3), 10, 'cifar')
        >>> create_model("resnet19")
        Traceback (most recent call last):
        ValueError: unknown model 'resnet19'; valid: ['resnet101', 'resnet152', 'resnet18', 'resnet34', ...]
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    return MODELS[name](**kwargs)


def layer_paths(variables: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Canonical layer name -> module path inside ``variables['params']``.

    Convs, BatchNorms and the head get torchvision's names: ``conv1``, ``bn1``,
    ``layer2.0.conv1``, ``layer2.0.downsample`` (its conv), ``layer2.0.downsample.bn``, ``fc``.
    Works for any model that embeds these modules (e.g. ``encoder.layer3.0.conv1``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.models import create_model, layer_paths
        >>> model = create_model("resnet_tiny", num_classes=2, stem="cifar")
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        >>> paths = layer_paths(variables)
        >>> paths["layer2.0.downsample"], paths["layer2.0.downsample.bn"], paths["fc"]
        (('layer2', '0', 'downsample', 'conv'), ('layer2', '0', 'downsample', 'bn'), ('fc',))
    """
    names = {}
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    for key_path, _ in flat:
        path = tuple(str(k.key) for k in key_path[:-1])
        names[canonical_name(path)] = path
    return dict(sorted(names.items(), key=lambda kv: _natural_key(kv[1])))


def _natural_key(path: Sequence[str]) -> tuple:
    """Network order: ``layer1.10`` after ``layer1.9``; a stem before the stages."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in path)


def canonical_name(path: Sequence[str]) -> str:
    """Module path -> canonical name; a projection's conv takes its ``downsample`` parent's name.

    Example:
        >>> from resnet_jax.models import canonical_name
        >>> canonical_name(("layer2", "0", "conv1")), canonical_name(("layer2", "0", "downsample", "conv"))
        ('layer2.0.conv1', 'layer2.0.downsample')
    """
    path = tuple(path)
    if len(path) > 1 and path[-2:] == ("downsample", "conv"):
        path = path[:-1]
    return _canonical(path)


def conv_names(variables: Mapping[str, Any]) -> list[str]:
    """Canonical names of every conv kernel (4-D ``kernel`` leaf), in network order.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.models import conv_names, create_model
        >>> model = create_model("resnet_tiny", num_classes=2, stem="cifar")
        >>> names = conv_names(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
        >>> len(names), names[:3], names[7]
        (20, ['conv1', 'layer1.0.conv1', 'layer1.0.conv2'], 'layer2.0.downsample')
    """
    params = variables["params"]
    out = []
    for name, path in layer_paths(variables).items():
        node = params
        for p in path:
            node = node[p]
        if "kernel" in node and node["kernel"].ndim == 4:
            out.append(name)
    return out


def layer_path_of_norm(conv_path: Sequence[str]) -> tuple[str, ...]:
    """Module path of the BatchNorm that follows the conv at ``conv_path``."""
    *head, last = conv_path
    return (*head, "bn" + last[len("conv"):])


_STAGE = re.compile(r"layer(\d+)$")


def ablation_place(path: Sequence[str], module: nn.Module) -> LayerPlace | None:
    """Where a conv sits (the ablation catalogue's structure protocol, :class:`LayerPlace`): its torchvision name,
    stage, unit and whether it projects a shortcut; None for any other module (the ``fc`` head stays out)."""
    if not isinstance(module, Conv):
        return None
    path = tuple(path)
    at = next((i for i, p in enumerate(path) if _STAGE.match(p)), None)
    if at is None:
        return LayerPlace(canonical_name(path), None, None, False)
    return LayerPlace(canonical_name(path), int(_STAGE.match(path[at]).group(1)), canonical_name(path[:at + 2]),
                      "downsample" in path)


def norm_of(conv_name: str) -> str:
    """The BatchNorm that follows a conv: ``conv1``->``bn1``, ``...downsample``->``...downsample.bn``."""
    if conv_name.endswith("downsample"):
        return conv_name + ".bn"
    head, _, last = conv_name.rpartition(".")
    bn = "bn" + last[len("conv"):]
    return f"{head}.{bn}" if head else bn
