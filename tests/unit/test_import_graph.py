"""clipdex's modules import one another without a cycle, counting imports inside functions
(made lazily to keep torch out of the query path) as well as at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import clipdex

ROOT = Path(clipdex.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The clipdex modules ``path`` imports (``from clipdex.a import b`` counts clipdex.a.b when
    that is a module, else clipdex.a); strings given to importlib count too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            names = [node.value]  # a module named for importlib.import_module
        found.update(n for n in names if n in known)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None (depth-first, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_models_package_has_no_import_cycle() -> None:
    graph = _graph()
    models = {k: {v for v in vs if v.startswith("clipdex.models")} for k, vs in graph.items()
              if k.startswith("clipdex.models")}
    assert _cycle(models) is None, " -> ".join(_cycle(models) or [])


def test_runtimes_import_only_the_interface_not_the_factory() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("clipdex.models.runtimes."):
            assert "clipdex.models.factory" not in deps, name
    assert "clipdex.models.runtimes.onnx" in graph["clipdex.models.factory"]
