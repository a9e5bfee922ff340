"""The Python API reference and its check: ``{public-api} PACKAGE`` documents every name of ``PACKAGE.__all__``
(classes, functions, constants, the modules a package lists), and the build warns (an error under ``-W``) for a
public name without a docstring, and for a public function or class whose docstring shows no example (a ``>>>``
line; ``tests/test_doctests.py`` runs them). Constants count as documented by a string literal after their
assignment, the form autodoc reads; so do partials such as ``ResNet18``, whose example lives in that string."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from types import ModuleType

import flax.linen as nn
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

LOG = logging.getLogger(__name__)
PACKAGES = ("ablation", "configs", "data", "interop", "models", "reporting", "studies", "studies.skip", "training")


def _attribute_docs(package: ModuleType) -> dict[str, list[str]]:
    """Every constant some module of ``package`` documents with a string after its assignment, with that string."""
    docs: dict[str, list[str]] = {}
    names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for name in names:
        try:
            found = ModuleAnalyzer.for_module(name).find_attr_docs()
        except Exception:  # a module without readable source documents nothing
            continue
        docs.update({attr: lines for (_, attr), lines in found.items()})
    return docs


def public(package_name: str) -> list[tuple[str, object]]:
    """``(name, object)`` for every name of the package's ``__all__``; a listed submodule is imported."""
    package = importlib.import_module(package_name)
    return [(name, getattr(package, name, None) or importlib.import_module(f"{package_name}.{name}"))
            for name in package.__all__]


def _has_own_doc(obj) -> bool:
    return not isinstance(obj, functools.partial) and bool((obj.__doc__ or "").strip())


def undocumented(package_name: str) -> list[str]:
    """The names of ``package_name.__all__`` that carry no docstring of their own."""
    attribute_docs = _attribute_docs(importlib.import_module(package_name))
    return [name for name, obj in public(package_name)
            if not (_has_own_doc(obj) if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)
                    else name in attribute_docs)
            and not (isinstance(obj, functools.partial) and name in attribute_docs)]


def unexampled(package_name: str) -> list[str]:
    """The functions and classes of ``package_name.__all__`` (partials included) whose docstring has no ``>>>``
    example; submodules and constants need none."""
    attribute_docs = _attribute_docs(importlib.import_module(package_name))

    def doc(name, obj):
        return "\n".join(attribute_docs.get(name, [])) if isinstance(obj, functools.partial) else obj.__doc__ or ""

    return [name for name, obj in public(package_name)
            if not inspect.ismodule(obj) and callable(obj) and ">>>" not in doc(name, obj)]


def _entry(package_name: str, name: str, obj, attribute_docs: dict[str, list[str]]) -> list[str]:
    """The reStructuredText that documents one public name."""
    full = f"{package_name}.{name}"
    if inspect.ismodule(obj):
        return [f".. automodule:: {obj.__name__}", ""]
    if inspect.isclass(obj):
        members = [] if issubclass(obj, nn.Module) else ["   :members:"]  # a module's fields are its signature
        return [f".. autoclass:: {full}", *members, ""]
    if isinstance(obj, functools.partial):
        keywords = ", ".join(f"{k}={v.__name__ if inspect.isclass(v) else v!r}" for k, v in obj.keywords.items())
        return [f".. py:function:: {name}(**kwargs)", "", f"   :class:`{obj.func.__name__}` with ``{keywords}``.",
                "", *[f"   {line}" for line in attribute_docs.get(name, [])], ""]
    if callable(obj):
        return [f".. autofunction:: {full}", ""]
    return [f".. py:data:: {name}", f"   :value: {_short(obj)}", "",
            *[f"   {line}" for line in attribute_docs.get(name, [])], ""]


def _short(value) -> str:
    text = repr(list(value) if isinstance(value, dict) else value)
    return text if len(text) <= 120 else text[:117] + "..."


class PublicApi(SphinxDirective):
    """Every public name of the package named by the argument, in ``__all__``'s order."""

    required_arguments = 1

    def run(self):
        package_name = self.arguments[0]
        attribute_docs = _attribute_docs(importlib.import_module(package_name))
        lines = [f".. automodule:: {package_name}", "   :no-index:", "", f".. py:currentmodule:: {package_name}", ""]
        for name, obj in public(package_name):
            lines += _entry(package_name, name, obj, attribute_docs)
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=f"public-api {package_name}"), container)
        return container.children


def check(app) -> None:
    for short in PACKAGES:
        package = f"resnet_jax.{short}"
        if not hasattr(importlib.import_module(package), "__all__"):
            LOG.warning(f"{package} has no __all__: name its public functions")
            continue
        for name in undocumented(package):
            LOG.warning(f"{package}.{name} is public (in __all__) but has no docstring")
        missing = unexampled(package)
        if missing:
            LOG.warning(f"{package}: public functions and classes without an example: {', '.join(missing)}. Give each "
                        f"docstring an 'Example:' section of doctest lines ('>>> call(...)', then its true output), "
                        f"cheap enough to run (tiny arrays, configs, jax.eval_shape), with '# doctest: +SKIP' on lines "
                        f"that need a trained run, data on disk or torch; tests/test_doctests.py runs them")


def setup(app):
    app.add_directive("public-api", PublicApi)
    app.connect("builder-inited", check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
