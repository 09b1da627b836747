"""No import cycle between cme_bench's modules, at import time or in their layering.

The graph has an edge A -> B when module A imports module B while A itself is being imported: statements at module
level and in class bodies, including those under ``if``/``try``, but not inside functions (run later) and not under
``if TYPE_CHECKING:`` (never run). ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the
package, else to ``pkg``. A second graph counts every import wherever it sits (inside functions and under
``if TYPE_CHECKING:`` too): the modules' layering, which must have no cycle either. ``python tests/test_imports.py``
prints that graph's cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "cme_bench"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _all_nodes(body: list[ast.stmt]):
    """Every import statement of a module, wherever it sits (functions, ``TYPE_CHECKING`` blocks included)."""
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node


def _import_time_nodes(body: list[ast.stmt]):
    """Import statements that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _import_time_nodes(part)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_nodes(node.body)


def import_graph(*, every_import: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time (``every_import``: anywhere: the layering)."""
    pick = _all_nodes if every_import else _import_time_nodes
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in pick(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_real_imports() -> None:
    """A checker that finds no edges would pass vacuously."""
    graph, every = import_graph(), import_graph(every_import=True)
    assert "cme_bench.errors" in graph["cme_bench.registry"]
    assert "cme_bench.backends" in graph["cme_bench.config"]
    assert "cme_bench.vllm_backend.check" in graph["cme_bench.vllm_backend"]
    # imported inside a function: part of the layering, not of the import-time graph
    assert "cme_bench.vllm_backend.engine" in every["cme_bench.vllm_backend"] - graph["cme_bench.vllm_backend"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("every_import", [False, True], ids=["import-time", "every-import"])
def test_no_import_cycle_in_cme_bench(every_import: bool) -> None:
    assert cycles(import_graph(every_import=every_import)) == []


if __name__ == "__main__":
    found = cycles(import_graph(every_import=True))
    print("\n".join(" <-> ".join(c) for c in found) or "no import cycle")
    raise SystemExit(1 if found else 0)
