"""The import graph of the nasproxy package, read from its source with ``ast``: every
import statement counts, those inside functions too (a package's ``__init__`` that
Python runs on the way to a submodule does not). No module imports back into one that
imports it, and the stack planner knows nothing of the search or of its store."""

from __future__ import annotations

import ast
from pathlib import Path

import nasproxy

PACKAGE = Path(nasproxy.__file__).parent


def _graph() -> dict[str, set[str]]:
    """Each nasproxy module and the nasproxy modules its source imports."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import path that leads from a module back to itself (one per module on it)."""
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            name, path = stack.pop()
            for after in sorted(graph[name]):
                if after == start:
                    cycles.append([*path, start])
                elif after not in seen:
                    seen.add(after)
                    stack.append((after, [*path, after]))
    return cycles


def test_the_graph_is_read_whole() -> None:
    """The reader sees imports made inside functions (the runner opens Ray lazily)."""
    graph = _graph()
    assert "nasproxy.search.ray_runner" in graph["nasproxy.search.runner"]
    assert {"nasproxy.errors", "nasproxy.io"} <= graph["nasproxy.results"]


def test_no_module_imports_back_into_one_that_imports_it() -> None:
    assert _cycles(_graph()) == []


def test_the_stack_planner_imports_neither_the_search_nor_its_store() -> None:
    imports = _graph()["nasproxy.multitrain.planning"]
    assert not {m for m in imports if m == "nasproxy.results" or m.startswith("nasproxy.search")}
