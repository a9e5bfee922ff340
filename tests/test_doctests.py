"""Every public name's docstring example runs and shows its true output: the doctests of each function and class in
a package's ``__all__`` (and of the ``ResNet18``-style partials, whose docstring follows their assignment), with
``# doctest: +SKIP`` honoured on the lines that need a trained run, a dataset folder or torch. Each example starts
from nothing (no module globals), so it runs as a reader would paste it. ``docs/_ext/public_api.py`` fails the
documentation build for a public function or class without one. The examples are kept cheap (configs, tiny arrays,
two-layer models, ``jax.eval_shape``): the whole run takes seconds, and prints how many."""

from __future__ import annotations

import ast
import doctest
import functools
import importlib
import inspect
import io
import tempfile
import time

PACKAGES = ("ablation", "configs", "data", "interop", "models", "reporting", "studies", "studies.skip", "training")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public() -> list[tuple[str, object]]:
    """``(package.name, object)`` for every name of every package's ``__all__``; a listed submodule is imported."""
    out = []
    for short in PACKAGES:
        package = importlib.import_module(f"resnet_jax.{short}")
        for name in package.__all__:
            obj = getattr(package, name, None) or importlib.import_module(f"{package.__name__}.{name}")
            out.append((f"{short}.{name}", obj))
    return out


def _assigned_doc(module, name: str) -> tuple[str, int]:
    """The string literal after ``name = ...`` in ``module``'s source (how a partial such as ``ResNet18`` is
    documented), with its line number."""
    body = ast.parse(inspect.getsource(module)).body
    for node, after in zip(body, body[1:]):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            return inspect.cleandoc(after.value.value), after.lineno
    return "", 0


def doctests(qualified: str, obj) -> list[doctest.DocTest]:
    """The doctests of one public name, each with fresh, empty globals."""
    if isinstance(obj, functools.partial):
        home = inspect.getmodule(obj.func)  # where ``ResNet18 = functools.partial(ResNet, ...)`` is written
        text, line = _assigned_doc(home, qualified.rpartition(".")[2])
        test = doctest.DocTestParser().get_doctest(text, {"__name__": "__main__"}, qualified,
                                                   inspect.getsourcefile(home), line)
        return [test] if test.examples else []
    if inspect.ismodule(obj):  # its own docstring only: its functions are not all public
        found = doctest.DocTestFinder(recurse=False).find(obj, qualified, globs={})
    elif callable(obj):  # a class with its methods' docstrings
        found = doctest.DocTestFinder().find(obj, qualified, module=inspect.getmodule(obj), globs={})
    else:
        found = []  # a constant: documented by the string after it, without an example
    return [t for t in found if t.examples]


def run(tests: list[doctest.DocTest]) -> tuple[doctest.TestResults, str]:
    """Run doctests with ``ELLIPSIS`` (``...`` in an expected output stands for any text, as in pytest's doctests)
    and ``NORMALIZE_WHITESPACE``; the counts, and the report of every failure."""
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test, out=report.write, clear_globs=True)
    return doctest.TestResults(runner.failures, runner.tries), report.getvalue()


def test_every_public_docstring_example_runs_and_shows_its_output(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' scratch folders
    start = time.perf_counter()
    tests = [t for qualified, obj in _public() for t in doctests(qualified, obj)]
    results, report = run(tests)
    print(f"{len(tests)} docstrings, {results.attempted} examples run in {time.perf_counter() - start:.1f} s")
    assert results.failed == 0, report


def test_a_wrong_expected_output_fails_and_a_skipped_line_does_not_run():
    def example():
        """Adds.

        Example:
            >>> 1 + 1
            3
            >>> open("/no/such/run/config.json")  # doctest: +SKIP
            {...}
        """

    results, report = run(doctest.DocTestFinder().find(example, "example", globs={}))
    assert (results.failed, results.attempted) == (1, 1)  # the skipped line would raise: it never ran
    assert "Expected:\n    3\nGot:\n    2" in report


def test_every_public_function_and_class_has_an_example_that_runs_here():
    """The run above reaches every public function, class and partial (a partial's example is read from the string
    after its assignment); submodules and constants need none."""
    missing = [q for q, obj in _public() if not inspect.ismodule(obj) and callable(obj) and not doctests(q, obj)]
    assert not missing, f"public functions and classes without a '>>>' example: {missing}"

