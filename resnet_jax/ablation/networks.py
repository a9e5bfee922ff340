"""Any Flax model, linen or NNX, as a pure function of plain variables, and a hook on its modules' calls.

The ablation engine needs three things of a model: ``apply(variables, x) -> logits`` as a pure function of a
``{"params": ..., ...}`` tree (so a mask is a transform of that tree), the module path of every call (so a layer
has a name), and a way to change one module's output while tracing (so many masked models share one forward).
:func:`as_network` gives all three for a ``flax.linen.Module`` (through ``nn.intercept_methods``) and for a
``flax.nnx.Module`` (split into a graph definition and plain dicts; calls are hooked by wrapping ``__call__`` of
the module classes for the duration of one trace).

What a model must satisfy: it takes a batch-first array and returns its output (logits, or a tuple whose first
element is the logits, such as our models' ``(logits, intermediates)``); its call with ``apply_kwargs`` must not
update state (pass ``{"train": False}`` or the like to a model that trains by default).

    network, variables = as_network(model, variables, apply_kwargs={"train": False})
    logits = network.apply(variables, images)
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import flax
import flax.linen as nn
import jax

if TYPE_CHECKING:
    from flax import nnx

Path = tuple[str, ...]
Hook = Callable[[Path, Any, tuple, Callable[[], Any]], Any]
"""``hook(path, module, args, call) -> output``: sees the outermost call of every submodule (not the model itself)
with its positional arguments; ``call()`` runs the module and returns its output, which the hook may change."""


class ModelError(ValueError):
    """A model the ablation tools cannot use as given; the message says why and what to pass instead.

    Example:
        >>> import flax.linen as nn
        >>> from resnet_jax.ablation import ModelError, layer_catalogue
        >>> try:
        ...     layer_catalogue(nn.Dense(2))        # a linen model without its variables
        ... except ModelError as err:
        ...     print(err)
        a linen model needs its variables, a mapping with 'params' (from model.init); got NoneType
    """


@dataclasses.dataclass(frozen=True)
class Network:
    """A model as pure functions of plain variables (see the module docstring)."""

    model: Any  # the linen module, or the NNX graph definition
    framework: str  # "linen" or "nnx"
    apply_kwargs: tuple[tuple[str, Any], ...] = ()
    nnx_state: Any = None  # NNX: the (params, rest) State templates the plain dicts are put back into

    @property
    def module_type(self) -> type:
        return type(self.model) if self.framework == "linen" else self.model.type

    def apply(self, variables: Mapping[str, Any], x: jax.Array, *, hook: Hook | None = None,
              mutable: bool = False, **kwargs) -> Any:
        """The model's logits on ``x``; with ``hook``, every submodule call goes through it; ``mutable``: a call
        that may update state (its updates are dropped; the catalogue traces train-mode models so)."""
        kwargs = {**dict(self.apply_kwargs), **kwargs}
        if self.framework == "linen":
            with nn.intercept_methods(_linen_interceptor(hook)) if hook else contextlib.nullcontext():
                out = self.model.apply(variables, x, mutable=True, **kwargs) if mutable else \
                    self.model.apply(variables, x, **kwargs)
            return logits_of(out[0] if mutable else out)
        module = self.merged(variables)
        with _nnx_hooked(module, hook) if hook else contextlib.nullcontext():
            return logits_of(module(x, **kwargs))

    def merged(self, variables: Mapping[str, Any]) -> nnx.Module:
        """The NNX module holding ``variables`` (a fresh object: the caller's model is never changed)."""
        from flax import nnx

        params, rest = (jax.tree.map(lambda a: a, s) for s in self.nnx_state)
        nnx.replace_by_pure_dict(params, variables["params"])
        if variables.get("rest"):
            nnx.replace_by_pure_dict(rest, variables["rest"])
        return nnx.merge(self.model, params, rest)

    def init_params(self, seed: int, example: jax.Array) -> Any:
        """Parameters drawn afresh from the model's own initialisers (``rerandomize``)."""
        if self.framework == "nnx":
            raise ModelError("rerandomize needs the model's initialisers, which an NNX module does not keep; "
                             "use reinit with initial_params (a fresh model's nnx.state(model, nnx.Param)) instead")
        return self.model.init(jax.random.key(seed), example, **dict(self.apply_kwargs))["params"]


def logits_of(out: Any) -> Any:
    """A model's logits: its output, or the first element of a tuple (``(logits, intermediates)``)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def is_nnx(model: Any) -> bool:
    """Whether ``model`` is a ``flax.nnx.Module``. ``flax.nnx`` is imported only when a model needs it (a quarter
    of a second of every command's start): a model that is one has imported it already."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(model, nnx.Module)


def as_network(model: Any, variables: Any = None, *,
               apply_kwargs: Mapping[str, Any] | None = None) -> tuple[Network, dict[str, Any]]:
    """``(network, variables)`` for a linen module and its variables, or an NNX module (``variables`` None, or the
    state from ``nnx.split``); NNX variables come back as ``{"params": plain dict, "rest": plain dict}``."""
    kwargs = tuple(sorted((apply_kwargs or {}).items()))
    if isinstance(model, Network):
        return model, variables
    if is_nnx(model):
        from flax import nnx

        graphdef, state = nnx.split(model)
        if variables is not None:
            state = variables
        params, rest = nnx.split_state(state, nnx.Param, ...)
        plain = {"params": params.to_pure_dict(), "rest": rest.to_pure_dict()}
        return Network(graphdef, "nnx", kwargs, (params, rest)), plain
    if isinstance(model, nn.Module):
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise ModelError(f"a linen model needs its variables, a mapping with 'params' (from model.init); "
                             f"got {type(variables).__name__}")
        return Network(model, "linen", kwargs), variables
    raise ModelError(f"not a Flax model: {type(model).__name__}; give a flax.linen.Module with its variables or a "
                     f"flax.nnx.Module")


def is_train_mode_error(err: Exception) -> bool:
    return isinstance(err, flax.errors.ModifyScopeVariableError)


def train_mode_message(network: Network) -> str:
    return (f"{network.module_type.__name__}'s call updates its batch statistics (BatchNorm in training mode, as a "
            f"model written like the flax examples is by default): pass apply_kwargs={{'train': False}} (or the "
            f"switch your model takes) so it is scored in evaluation mode")


# Hooks -----------------------------------------------------------------------------------------

def _linen_interceptor(hook: Hook):
    active: set[int] = set()

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        path = tuple(module.path)
        if not path or id(module) in active or context.method_name == "setup" or \
                (context.method_name.startswith("_") and context.method_name != "__call__"):
            return next_fun(*args, **kwargs)
        active.add(id(module))
        try:
            return hook(path, module, args, lambda: next_fun(*args, **kwargs))
        finally:
            active.discard(id(module))

    return interceptor


def nnx_paths(module: nnx.Module) -> dict[int, Path]:
    """``id(submodule) -> path`` (the model itself excluded); list indices become strings."""
    from flax import nnx

    return {id(m): tuple(str(p) for p in path) for path, m in nnx.iter_modules(module) if path}


@contextlib.contextmanager
def _nnx_hooked(module: nnx.Module, hook: Hook) -> Iterator[None]:
    """Every submodule's ``__call__`` through ``hook`` while the context is open (the classes are restored)."""
    from flax import nnx

    paths = nnx_paths(module)
    classes = {type(m) for _, m in nnx.iter_modules(module)} - {type(module)}
    saved = {cls: cls.__dict__.get("__call__") for cls in classes}
    active: set[int] = set()

    def wrap(original):
        def __call__(self, *args, **kwargs):
            if id(self) not in paths or id(self) in active:
                return original(self, *args, **kwargs)
            active.add(id(self))
            try:
                return hook(paths[id(self)], self, args, lambda: original(self, *args, **kwargs))
            finally:
                active.discard(id(self))
        return __call__

    try:
        for cls in classes:
            cls.__call__ = wrap(cls.__call__)
        yield
    finally:
        for cls, original in saved.items():
            if original is None:
                del cls.__call__
            else:
                cls.__call__ = original


def module_params(variables: Mapping[str, Any], path: Path) -> Mapping[str, Any] | None:
    """The parameter subtree of the module at ``path``, or None if the variables hold none there."""
    node = variables["params"]
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key, node.get(int(key)) if key.isdigit() else None)
        if node is None:
            return None
    return node if isinstance(node, Mapping) else None
