"""The package's import graph: no module imports itself through others, and no library module
(src/bonescan, except the command line) imports the benchmarks, which sit at the end of the data
flow (data -> model -> export -> repository -> server -> client -> benchmarks).

Read with ``ast`` from the files, lazy imports inside functions included (the train <-> evaluate
cycle was one). A submodule's implicit import of its own package's ``__init__`` is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> dict[str, Path]:
    """Module name -> file, for every package pyproject.toml installs (its package-dir map)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setuptools["package-dir"]

    def folder(pkg: str) -> Path:
        if pkg in dirs:
            return ROOT / dirs[pkg]
        parent, _, leaf = pkg.rpartition(".")
        return folder(parent) / leaf if parent else ROOT / dirs[""] / pkg

    modules = {}
    for pkg in setuptools["packages"]:
        for f in sorted(folder(pkg).glob("*.py")):
            modules[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from bonescan import contract` imports the module bonescan.contract
                targets |= {resolve(f"{node.module}.{a.name}") if f"{node.module}.{a.name}" in modules
                            else resolve(node.module) for a in node.names}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
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


def show(graph: dict[str, set[str]]) -> str:
    short = lambda m: m.removeprefix("bonescan.")  # noqa: E731
    return "\n".join(f"  {short(m)} -> {', '.join(sorted(map(short, graph[m]))) or '-'}" for m in sorted(graph))


def test_import_graph_has_no_cycle():
    modules = package_modules()
    assert {"bonescan.train", "bonescan.evaluate", "bonescan.client.core", "bonescan.benchmarks.demo"} <= set(modules)
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, f"import cycles: {found}\nimport graph:\n{show(graph)}"


def test_library_code_does_not_import_the_benchmarks():
    modules = package_modules()
    graph = import_graph(modules)
    library = [m for m, f in modules.items() if (ROOT / "src" / "bonescan") in f.parents and m != "bonescan.cli"]
    assert "bonescan.train" in library and "bonescan.data.dataset" in library
    offenders = {m: sorted(t for t in graph[m] if t.startswith("bonescan.benchmarks")) for m in library}
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, f"library modules importing bonescan.benchmarks: {offenders}\nimport graph:\n{show(graph)}"
