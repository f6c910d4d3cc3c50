"""The package tree is the architecture: no import cycles at all (imports inside functions
included), and a top level small enough to take in at a glance."""

from __future__ import annotations

from pathlib import Path

import grimp

import kproxy

MAX_TOP_LEVEL_MODULES = 15


def strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> list[set[str]]:
    """Tarjan's algorithm over the module import graph: every group of modules that import
    each other, directly or through others (a group of one that imports itself counts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module) & modules:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1 or module in graph.find_modules_directly_imported_by(module):
                groups.append(group)

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles():
    graph = grimp.build_graph("kproxy")
    modules = {m for m in graph.modules if m.startswith("kproxy")}
    assert len(modules) > 50  # the whole package was read
    assert strongly_connected(graph, modules) == []


def test_the_cycle_finder_finds_cycles():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert strongly_connected(graph, {"p.a", "p.b", "p.c", "p.d"}) == [{"p.a", "p.b", "p.c"}]


def test_top_level_stays_small():
    top = Path(kproxy.__file__).parent
    modules = sorted(p.name for p in top.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
