"""fl_core's modules import each other without a cycle, function-level and TYPE_CHECKING
imports included (issue 20): the schema (`fl_core.config`) imports no plug-in; the plug-in
families import it, and `fl_core.plugin_config` wires their validation into it. The
import-linter contract in pyproject.toml checks the same between packages."""

from __future__ import annotations

import grimp


def find_cycle(graph: grimp.ImportGraph, modules: set[str]) -> list[str] | None:
    """One import cycle among `modules`, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.find_modules_directly_imported_by(m) & modules):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_fl_core_has_no_import_cycle():
    graph = grimp.build_graph("fl_core", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("fl_core.")}
    assert "fl_core.config" in modules and len(modules) > 40
    assert find_cycle(graph, modules) is None, " → ".join(find_cycle(graph, modules) or [])


def test_the_schema_imports_no_plugin():
    graph = grimp.build_graph("fl_core", cache_dir=None)
    imported = graph.find_modules_directly_imported_by("fl_core.config")
    assert not {m for m in imported if m.startswith(("fl_core.attacks", "fl_core.backdoors", "fl_core.aggregators"))}


def test_the_cycle_finder_finds_one():
    """The check can fail: a graph with a → b → a has a cycle."""
    g = grimp.ImportGraph()
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.a")
    assert find_cycle(g, {"p.a", "p.b"}) == ["p.a", "p.b", "p.a"]
