"""Lossless weight conversion between resnet-jax variables and torchvision ResNet state_dicts.

One name map, derived from :func:`resnet_jax.models.layer_paths`: a canonical layer name is the
torchvision module name, except that the projection shortcut's conv and BatchNorm are
``downsample.0`` and ``downsample.1`` in torch. Layouts: conv kernels HWIO <-> OIHW, the ``fc``
kernel is transposed, BatchNorm ``scale/bias/mean/var`` <-> ``weight/bias/running_mean/running_var``.
Values are copied bit for bit and never cast (bfloat16 tensors, which numpy lacks, arrive as
float32, exactly).

Example::

    sd = to_torch_state_dict(variables, arch="resnet34")
    net = torchvision_model("resnet34", num_classes=10, stem="cifar")
    net.load_state_dict(sd)                      # strict: every key and shape agrees
    variables = from_torch_state_dict(net.state_dict(), arch="resnet34")

torch is needed only to make tensors, build torchvision models and read checkpoint files;
install it with ``pip install 'resnet-jax[torch]'``.
"""

from __future__ import annotations

import functools
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import resnet as models

STEMS = ("torchvision", "cifar")
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
                     "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")
_INSTALL_HINT = (
    "pip install 'resnet-jax[torch]'  (or: pip install torch==2.14.1 torchvision==0.29.1)"
)
# torch key suffix -> (flax collection, flax leaf name) for BatchNorms.
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_SUFFIX_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class _Entry:
    """One torch tensor and where it lives in the flax variables."""

    key: str  # torch state_dict key
    collection: str  # 'params' | 'batch_stats'
    path: tuple[str, ...]  # module path + leaf name inside the collection
    layout: str  # 'conv' (HWIO<->OIHW), 'dense' (transpose) or 'same'
    shape: tuple[int, ...]  # shape in torch layout


def import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"resnet_jax.convert needs PyTorch for this; install it with {_INSTALL_HINT}") from e
    return torch


def _import_torchvision():
    import_torch()
    try:
        import torchvision
    except ImportError as e:
        raise ImportError(f"resnet_jax.convert needs torchvision for this; install it with {_INSTALL_HINT}") from e
    return torchvision


# --------------------------------------------------------------------------- the name map


def torch_module_name(name: str) -> str:
    """Canonical layer name -> torch module name (only the projection shortcut differs)."""
    if name.endswith("downsample"):
        return name + ".0"
    if name.endswith("downsample.bn"):
        return name[: -len("bn")] + "1"
    return name


_PART = re.compile(r"([a-z_]+?)(\d*)")
_PART_RANK = {"conv": 1, "bn": 1, "layer": 2, "downsample": 3, "fc": 4}


def _order_key(key: str) -> tuple:
    """torchvision's registration order: conv1, bn1, layer1.0.{conv1,bn1,conv2,bn2,...,downsample}, fc."""
    module, _, suffix = key.rpartition(".")
    parts = []
    for p in module.split("."):
        m = _PART.fullmatch(p)
        if p.isdigit():
            parts.append((0, int(p), ""))
        elif m and m.group(1) in _PART_RANK:
            parts.append((_PART_RANK[m.group(1)], int(m.group(2) or 0), m.group(1) == "bn"))
        else:
            parts.append((9, 0, p))
    rank = _SUFFIX_ORDER.index(suffix) if suffix in _SUFFIX_ORDER else len(_SUFFIX_ORDER)
    return (tuple(parts), rank, suffix)


def _entries(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> list[_Entry]:
    """Every torch tensor the given variables hold, in torchvision's order (no num_batches_tracked)."""
    out = []
    for name, path in models.layer_paths({"params": params}).items():
        node, stats = params, batch_stats
        for p in path:
            node, stats = node[p], (stats or {}).get(p)
        module = torch_module_name(name)
        if "scale" in node:
            for suffix, (coll, leaf) in _BN_LEAVES.items():
                src = node if coll == "params" else (stats or {})
                if leaf in src:
                    shape = tuple(src[leaf].shape)
                    out.append(_Entry(f"{module}.{suffix}", coll, path + (leaf,), "same", shape))
            continue
        for leaf, value in node.items():
            layout = {4: "conv", 2: "dense"}.get(value.ndim, "same") if leaf == "kernel" else "same"
            suffix = "weight" if leaf == "kernel" else leaf
            shape = _to_torch_shape(value.shape, layout)
            out.append(_Entry(f"{module}.{suffix}", "params", path + (leaf,), layout, shape))
    return sorted(out, key=lambda e: _order_key(e.key))


def _to_torch_shape(shape, layout: str) -> tuple[int, ...]:
    shape = tuple(shape)
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == "dense":
        return shape[::-1]
    return shape


_TO_TORCH = {"conv": (3, 2, 0, 1), "dense": (1, 0)}  # HWIO -> OIHW; (in, out) -> (out, in)
_TO_FLAX = {"conv": (2, 3, 1, 0), "dense": (1, 0)}  # the inverse permutations


def _relayout(x: np.ndarray, layout: str, axes: dict[str, tuple[int, ...]]) -> np.ndarray:
    """A C-ordered copy (never a view: the result must not alias the source)."""
    return np.array(x.transpose(axes[layout]) if layout in axes else x, order="C")


def _to_torch_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return _relayout(x, layout, _TO_TORCH)


def _to_flax_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return _relayout(x, layout, _TO_FLAX)


# --------------------------------------------------------------------------- expected layouts


@functools.lru_cache(maxsize=32)
def _expected_entries(arch: str, num_classes: int, stem: str) -> tuple[_Entry, ...]:
    """The tensors of ``create_model(arch, num_classes=..., stem=...)``, from abstract shapes alone."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {STEMS}")
    model = models.create_model(arch, num_classes=num_classes, stem=stem)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
    )
    return tuple(_entries(abstract["params"], abstract.get("batch_stats", {})))


def _infer_stem(conv1_shape: tuple[int, ...] | None) -> str:
    """A 3x3 stem conv is the CIFAR stem; anything else is checked against the torchvision one."""
    return "cifar" if conv1_shape is not None and tuple(conv1_shape[-2:]) == (3, 3) else "torchvision"


def _fmt(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _check(shapes: Mapping[str, tuple[int, ...]], expected: tuple[_Entry, ...], what: str, arch: str) -> None:
    """Raise ValueError at the first key (in torchvision order) where ``shapes`` and ``expected`` differ."""
    want = {e.key: e.shape for e in expected}
    for key in sorted(set(want) | set(shapes), key=_order_key):
        if key not in shapes:
            problem = f"missing key {key!r} (expected shape {_fmt(want[key])})"
        elif key not in want:
            problem = f"unexpected key {key!r} (shape {_fmt(shapes[key])})"
        elif tuple(shapes[key]) != tuple(want[key]):
            problem = f"shape mismatch at {key!r}: got {_fmt(shapes[key])}, expected {_fmt(want[key])}"
        else:
            continue
        raise ValueError(
            f"{problem}; {what} expects {len(expected)} tensors besides num_batches_tracked: "
            f"{_listing(expected, key)}{_guess(shapes, arch)}"
        )


def _guess(shapes: Mapping[str, tuple[int, ...]], arch: str) -> str:
    """Name the architecture the tensors do fit or look like (read from their units and widths), if any: the usual
    cause of a mismatch."""
    structure = read_structure(shapes)
    found = identify(structure) if structure else None
    if found is None:
        return ""
    if {e.key: e.shape for e in _expected_for(found, shapes)} == {k: tuple(v) for k, v in shapes.items()}:
        return f". The given tensors match {_describe(found, shapes)}: {structure}"
    return f". The given tensors look like {found} ({structure})" if found != arch else ""


@dataclass(frozen=True)
class Structure:
    """What tells the ResNets apart: the unit type, units per stage, stem width and a Bottleneck's groups and
    channels per group (torchvision's ``width_per_group``)."""

    block: str  # 'BasicBlock' | 'Bottleneck'
    stage_sizes: tuple[int, ...]
    num_filters: int = 64
    groups: int = 1
    width_per_group: int = 64

    def __str__(self) -> str:
        text = f"{self.block} units {'-'.join(map(str, self.stage_sizes))}"
        if self.block == "Bottleneck":
            text += f", groups={self.groups}, width_per_group={self.width_per_group}"
        return text + (f", {self.num_filters} stem channels" if self.num_filters != 64 else "")


@functools.lru_cache(maxsize=None)
def structure_of(arch: str) -> Structure:
    """The structure of ``models.create_model(arch)``, from its attributes (nothing is traced)."""
    model = models.create_model(arch)
    block = "Bottleneck" if issubclass(model.block_cls, models.Bottleneck) else "BasicBlock"
    return Structure(block, tuple(model.stage_sizes), model.num_filters, model.groups, model.width_per_group)


def read_structure(shapes: Mapping[str, tuple[int, ...]]) -> Structure | None:
    """The structure torch-layout ``shapes`` have, or None where they are not a torchvision ResNet's.

    A unit counts when all its convs are present, so one stray or missing tensor leaves the rest recognisable.
    """
    first, middle = shapes.get("layer1.0.conv1.weight"), shapes.get("layer1.0.conv2.weight")
    if first is None or middle is None or len(first) != 4 or len(middle) != 4 or 0 in (*first, *middle):
        return None
    bottleneck = "layer1.0.conv3.weight" in shapes
    convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
    sizes = []
    while f"layer{len(sizes) + 1}.0.conv1.weight" in shapes:
        stage, n = len(sizes) + 1, 0
        while all(f"layer{stage}.{n}.{c}.weight" in shapes for c in convs):
            n += 1
        sizes.append(n)
    num_filters = int(first[1])
    if not bottleneck:
        return Structure("BasicBlock", tuple(sizes), num_filters)
    width, per_group = int(middle[0]), int(middle[1])  # the grouped 3x3 conv: (width, width / groups, 3, 3)
    return Structure("Bottleneck", tuple(sizes), num_filters, width // per_group, per_group * 64 // num_filters)


def identify(structure: Structure) -> str | None:
    """The architecture (a ``models.MODELS`` name) with this structure, or None."""
    return next((a for a in models.MODELS if structure_of(a) == structure), None)


def _refuse_unsupported(shapes: Mapping[str, tuple[int, ...]]) -> None:
    """One line naming the supported architectures when the tensors are no ResNet that we build."""
    structure = read_structure(shapes)
    if structure is not None and identify(structure) is not None:
        return
    if structure is None:
        keys = list(shapes)
        what = (f"not a torchvision ResNet's (no 'layer1.0.conv1.weight' and 'layer1.0.conv2.weight' conv kernels; "
                f"keys: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}; {len(keys)} tensors)")
    else:
        what = f"a ResNet with {structure} (units and widths that no supported architecture has)"
    raise ValueError(f"unsupported architecture: the tensors are {what}; supported: {', '.join(TORCHVISION_ARCHS)}")


def _listing(expected: tuple[_Entry, ...], near: str, context: int = 3) -> str:
    """The expected keys and shapes around ``near`` (the whole list would drown the message)."""
    keys = [e.key for e in expected]
    pos = next((i for i, k in enumerate(keys) if _order_key(k) >= _order_key(near)), len(keys))
    lo, hi = max(0, pos - context), min(len(keys), pos + context + 1)
    items = [f"{e.key} {_fmt(e.shape)}" for e in expected[lo:hi]]
    return ("..., " if lo > 0 else "") + ", ".join(items) + (", ..." if hi < len(keys) else "")


# --------------------------------------------------------------------------- public API


def to_torch_state_dict(
    variables: Mapping[str, Any], *, arch: str, num_batches_tracked: int = 0
) -> dict[str, Any]:
    """Flax variables -> a torchvision ``state_dict`` (``dict[str, torch.Tensor]``), bit for bit.

    Args:
      variables: ``{'params', 'batch_stats'}`` of a ``create_model(arch, ...)`` model; the stem
        and the number of classes are read from the kernels' shapes and then checked.
      arch: a name in :data:`TORCHVISION_ARCHS` (or any name in ``models.MODELS``).
      num_batches_tracked: the count every BatchNorm reports (torch only uses it when its
        momentum is None).

    Returns:
      A dict in torchvision's key order, loadable with ``load_state_dict(strict=True)``
      into ``torchvision_model(arch, num_classes, stem)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import torchvision  # doctest: +SKIP
      >>> from resnet_jax.interop import to_torch_state_dict
      >>> from resnet_jax.models import create_model
      >>> model = create_model("resnet18", num_classes=10)
      >>> variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # doctest: +SKIP
      >>> state_dict = to_torch_state_dict(variables, arch="resnet18")  # doctest: +SKIP
      >>> torchvision.models.resnet18(num_classes=10).load_state_dict(state_dict, strict=True)  # doctest: +SKIP
      <All keys matched successfully>

    Raises:
      ValueError: the variables are not laid out like ``arch``; names the first differing key.
    """
    torch = import_torch()
    entries = _entries(variables["params"], variables.get("batch_stats", {}))
    shapes = {e.key: e.shape for e in entries}
    expected = _expected_for(arch, shapes)
    _check(shapes, expected, _describe(arch, shapes), arch)
    out = {}
    for e in expected:
        node = variables[e.collection]
        for p in e.path:
            node = node[p]
        out[e.key] = torch.from_numpy(_to_torch_layout(np.asarray(node), e.layout))
        if e.key.endswith(".running_var"):
            module = e.key[: -len("running_var")]
            out[module + "num_batches_tracked"] = torch.tensor(int(num_batches_tracked), dtype=torch.long)
    return out


def from_torch_state_dict(
    state_dict: Mapping[str, Any], *, arch: str, num_classes: int | None = None, stem: str | None = None
) -> dict[str, dict[str, Any]]:
    """A torchvision ``state_dict`` -> Flax ``{'params', 'batch_stats'}`` of numpy arrays, bit for bit.

    ``num_batches_tracked`` entries are ignored. Tensors may be torch tensors or numpy arrays, so
    this needs no torch import of its own.

    Args:
      state_dict: e.g. ``torchvision_model(...).state_dict()`` or :func:`load_torch_checkpoint`'s.
      arch: the architecture to expect.
      num_classes: size of ``fc``; ``None`` reads it from ``fc.weight``.
      stem: ``'torchvision'`` or ``'cifar'``; ``None`` reads it from ``conv1.weight`` (3x3 = cifar).

    Example:
      >>> import torchvision  # doctest: +SKIP
      >>> from resnet_jax.interop import from_torch_state_dict
      >>> state_dict = torchvision.models.resnet18(num_classes=10).state_dict()  # doctest: +SKIP
      >>> variables = from_torch_state_dict(state_dict, arch="resnet18")  # doctest: +SKIP
      >>> variables["params"]["conv1"]["kernel"].shape, variables["params"]["fc"]["kernel"].shape  # doctest: +SKIP
      ((7, 7, 3, 64), (512, 10))

    Raises:
      ValueError: tensors of no supported architecture ('unsupported architecture', naming those that are);
        missing, unexpected or mis-shaped keys (names the first one, what was expected and, where the tensors fit
        or look like another architecture, which).
    """
    arrays = {
        k: _numpy(v) for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")
    }
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    expected = _expected_for(arch, shapes, num_classes=num_classes, stem=stem)
    _refuse_unsupported(shapes)
    _check(shapes, expected, _describe(arch, shapes, num_classes=num_classes, stem=stem), arch)
    variables: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
    for e in expected:
        node = variables[e.collection]
        for p in e.path[:-1]:
            node = node.setdefault(p, {})
        node[e.path[-1]] = _to_flax_layout(arrays[e.key], e.layout)
    return variables


def torchvision_model(arch: str, num_classes: int = 1000, stem: str = "torchvision"):
    """The torchvision ResNet whose ``state_dict`` matches ``create_model(arch, num_classes=..., stem=...)``.

    ``stem='cifar'`` swaps ``conv1`` for a 3x3/1 pad-1 conv (Kaiming-initialised like the rest)
    and ``maxpool`` for ``Identity``. The model is returned as torch builds it (training mode).
    """
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"no torchvision counterpart for {arch!r}; valid: {TORCHVISION_ARCHS}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {STEMS}")
    torchvision = _import_torchvision()
    torch = import_torch()
    net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        net.conv1 = torch.nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        torch.nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = torch.nn.Identity()
    return net


def load_torch_checkpoint(
    path: str | os.PathLike, *, arch: str, num_classes: int | None = None, stem: str | None = None
) -> dict[str, dict[str, Any]]:
    """Read a PyTorch checkpoint file into Flax variables (see :func:`from_torch_state_dict`).

    Accepts a bare state_dict or a dict holding one under ``'state_dict'`` or ``'model'``; a
    ``module.`` prefix on every key (``DataParallel``) is dropped. Loads with
    ``weights_only=True``, so no pickled code runs; a file it cannot read (a whole module saved with
    ``torch.save(model)``, or no PyTorch file at all) is a ValueError that says which.

    Example:
        >>> from resnet_jax.interop import load_torch_checkpoint
        >>> variables = load_torch_checkpoint("resnet34-cifar10.pth", arch="resnet34")  # doctest: +SKIP
        >>> variables["params"]["fc"]["kernel"].shape, sorted(variables)  # doctest: +SKIP
        ((512, 10), ['batch_stats', 'params'])
    """
    torch = import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.load of a non-checkpoint raises anything (IndexError, KeyError...)
        raise ValueError(f"{path}: {_unreadable(path, err)}; save a model's weights with "
                         f"torch.save(model.state_dict(), path)") from err
    state_dict = _find_state_dict(obj, path)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return from_torch_state_dict(state_dict, arch=arch, num_classes=num_classes, stem=stem)


# --------------------------------------------------------------------------- helpers


def _resolve(shapes: Mapping[str, tuple[int, ...]], num_classes: int | None, stem: str | None):
    """Fill in the head size and stem the caller left open from the tensors' own shapes."""
    if num_classes is None:
        num_classes = shapes.get("fc.weight", (1000,))[0]
    return int(num_classes), stem or _infer_stem(shapes.get("conv1.weight"))


def _expected_for(
    arch: str, shapes: Mapping[str, tuple[int, ...]], *, num_classes: int | None = None, stem: str | None = None
) -> tuple[_Entry, ...]:
    if arch not in models.MODELS:
        raise ValueError(f"unknown arch {arch!r}; valid: {sorted(models.MODELS)}")
    return _expected_entries(arch, *_resolve(shapes, num_classes, stem))


def _describe(arch: str, shapes, *, num_classes: int | None = None, stem: str | None = None) -> str:
    num_classes, stem = _resolve(shapes, num_classes, stem)
    return f"{arch} (stem={stem!r}, num_classes={num_classes})"


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor or array-like as numpy (possibly a view; the layout step copies)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def error_line(err: BaseException) -> str:
    """``Type: first line`` of an error, without terminal escapes (torch's messages run over many lines)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__


def _unreadable(path: str | os.PathLike, err: Exception) -> str:
    """What a file is that ``torch.load(weights_only=True)`` refused, read without running any of it."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x80":  # neither torch's zip format nor its older one, a pickle stream
                return "it is not a PyTorch file (torch.load cannot read it)"
    names = _pickled_globals(path) if zipfile.is_zipfile(path) else []
    objects = [n for n in names if not n.startswith(("torch.", "collections.", "builtins.", "copyreg."))]
    modules = [n for n in names if n.startswith("torch.nn.modules.")]
    if modules:
        top = (objects or modules)[0]
        return f"it is a whole pickled module ({top}), as torch.save(model) writes, not a state_dict"
    if objects and isinstance(err, pickle.UnpicklingError):
        return f"it holds pickled Python objects ({', '.join(objects[:3])}) that weights_only loading refuses"
    return f"torch.load(weights_only=True) cannot read it ({error_line(err)})"


def _pickled_globals(path: str | os.PathLike) -> list[str]:
    """The classes and functions a torch zip file's pickle names, in order (disassembled, never unpickled)."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        data = archive.read(pickles[0]) if pickles else b""
    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, pickle.UnpicklingError):  # a damaged pickle: what was read so far
        pass
    return names


def _find_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if obj and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()):
            return obj
        keys = sorted(map(str, obj))[:8]
        raise ValueError(
            f"{path}: not a state_dict (a dict of tensors) nor a dict with a 'state_dict' or 'model' "
            f"entry; top-level keys: {keys}{' ...' if len(obj) > 8 else ''}"
        )
    raise ValueError(
        f"{path}: expected a state_dict or a dict with a 'state_dict' or 'model' entry, "
        f"got {type(obj).__name__}"
    )
