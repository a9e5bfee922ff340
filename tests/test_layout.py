"""The package's shape: no import cycles, and imports that only go down the layers.

Parsed from source (module-level and function-level imports alike), so an import hidden inside a
function cannot hide a cycle.
"""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_jax"
LAYERS = ("files", "ledger", "devices", "metrics", "checkpointing", "configs", "data", "models", "training", "ablation",
          "interop", "reporting", "studies", "cli")
"""Top-level modules and subpackages, lowest first: each may import only from its own layer and below."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every resnet_jax module ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("resnet_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnet_jax"):
            for alias in node.names:  # `from resnet_jax.x import y`: y is a submodule or a name in x
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known and m != _module_name(path)}


@functools.cache  # parsed once per test process, not once per module tested
def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "resnet_jax.ablation.engine" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_only_go_down(module):
    assert module.count(".") == 0 or module.split(".")[1] in LAYERS, f"{module} is in no layer of {LAYERS}"
    upward = sorted(m for m in import_graph()[module] if _layer(m) > _layer(module))
    assert not upward, f"{module} imports from a higher layer: {upward}"


STUDY_LIMITS = {"module_lines": 300, "function_lines": 60, "parameters": 8}
"""The studies layer stays readable: a study grows by new small modules, and a long signature becomes a record."""


def oversized(source: str, limits: dict = STUDY_LIMITS) -> list[str]:
    """What in ``source`` exceeds ``limits``: the module's line count, any function's lines or parameters
    (``self`` not counted)."""
    found = []
    if len(source.splitlines()) > limits["module_lines"]:
        found.append(f"{len(source.splitlines())} lines")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs) if p.arg not in ("self", "cls")]
            lines = node.end_lineno - node.lineno + 1
            if lines > limits["function_lines"]:
                found.append(f"{node.name}: {lines} lines")
            if len(params) > limits["parameters"]:
                found.append(f"{node.name}: {len(params)} parameters")
    return found


def test_the_size_check_finds_a_planted_long_function_and_signature():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    source = f"def long(a, b, c, d, e, f, g, h, *, i):\n{body}\n\n\nclass A:\n    def ok(self, a):\n        return a\n"
    assert oversized(source) == ["long: 61 lines", "long: 9 parameters"]
    assert oversized("x = 1\n" * 301) == ["301 lines"]


@pytest.mark.parametrize("path", sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "studies").rglob("*.py")))
def test_study_modules_stay_small(path):
    assert not oversized((PACKAGE / path).read_text()), oversized((PACKAGE / path).read_text())
