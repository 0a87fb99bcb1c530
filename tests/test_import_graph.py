"""The project's import graph, read with `ast`: no cycles, and data flows one way into the service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "service", "bench", "harness")  # those that exist are checked
Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    """service/tasks/caption.py -> "service.tasks.caption"; a package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name an import anywhere in `tree` may refer to: imports inside functions and
    under TYPE_CHECKING count too (a lazy or type-only import is still a dependency). For
    `from a import b` both "a" and "a.b" are given; the caller keeps those that are modules."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> Graph:
    """Module -> the project modules it imports, for every .py file under `packages`."""
    files = {
        module_name(path, root): path
        for package in packages
        if (root / package).is_dir()
        for path in sorted((root / package).rglob("*.py"))
    }
    graph: Graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = imported_names(tree, module, path.name == "__init__.py")
        graph[module] = {name for name in names if name in files and name != module}
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def imports_between(graph: Graph, source: str, target: str) -> list[str]:
    """Every "a -> b" edge from package `source` into package `target`."""
    return sorted(
        f"{module} -> {name}"
        for module, names in graph.items()
        if module.split(".")[0] == source
        for name in names
        if name.split(".")[0] == target
    )


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT)


def test_the_graph_covers_the_packages(graph: Graph) -> None:
    assert {"models.search", "service.service", "training.loop"} <= set(graph)
    assert "service.runtime" in graph["service.tasks.caption"]


def test_there_is_no_import_cycle(graph: Graph) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("source", "target"),
    [("models", "service"), ("models", "training"), ("training", "service")],
)
def test_data_flows_one_way(graph: Graph, source: str, target: str) -> None:
    assert imports_between(graph, source, target) == []


def test_a_cycle_through_a_type_only_import_is_found(tmp_path: Path) -> None:
    """The shape the service had before its tasks were split out: runtime imported language at
    module level, language imported runtime under TYPE_CHECKING."""
    package = tmp_path / "service"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "runtime.py").write_text("from service import language\n")
    (package / "language.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtime import Runtime\n"
    )
    cycle = find_cycle(import_graph(tmp_path, ("service",)))
    assert cycle is not None and set(cycle) == {"service.runtime", "service.language"}
    (package / "language.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path, ("service",))) is None


def test_no_test_imports_the_conftest() -> None:
    """pytest loads tests/conftest.py as its own module; `import tests.conftest` runs it a second
    time, which makes a second temporary store and points BENTOML_HOME at it, so every later
    `bentoml serve` looks in an empty store. Shared constants live in tests/helpers.py; commands
    run outside pytest (tests/reliability/load.py) may use the conftest's store builder."""
    tests = Path(__file__).parent
    in_pytest = [
        path
        for path in sorted(tests.rglob("*.py"))
        if 'if __name__ == "__main__":' not in path.read_text(encoding="utf-8")
    ]
    offenders = [
        path.name
        for path in in_pytest
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom | ast.Import)
        and any(
            name == "tests.conftest"
            for name in [getattr(node, "module", None), *(a.name for a in node.names)]
        )
    ]
    assert offenders == []
