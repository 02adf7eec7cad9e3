"""The package's import graph, read with ``ast`` (no import is executed): no cycles, and no
library module imports the command line or the server (issue: keep the house in order).

Every ``import`` statement that can run counts, the lazy ones inside functions too: a cycle that
only a lazy import hides still ties two modules together. Imports under ``if TYPE_CHECKING:`` are
for annotations only and do not count. ``semcorr.__main__`` is the one library-level file
allowed to reach the command line: it is the entry point.
"""

from __future__ import annotations

import ast
from pathlib import Path

from shared_data import REPO

SRC = REPO / "src"
FACES = ("semcorr.cli", "semcorr.server")
ENTRY_POINTS = {"semcorr.__main__"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The innermost semcorr module that ``name`` (a module or an attribute path) lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]
             ) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if modules[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return {found for name in names if (found := _known(name, modules))} - {module}


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports for annotations only."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, lazy ones included (type-checking blocks not)."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if _is_type_checking(node):
            children = [*getattr(node, "orelse", [])]
        stack.extend(children)
    return found


def import_graph() -> dict[str, set[str]]:
    """semcorr module → the semcorr modules it imports when it runs (anywhere in its body)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = set().union(*(_targets(name, node, modules)
                                    for node in _runtime_imports(tree)))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_library_never_imports_the_faces() -> None:
    wrong = {
        module: sorted(t for t in targets if t.startswith(FACES))
        for module, targets in import_graph().items()
        if not module.startswith(FACES) and module not in ENTRY_POINTS
    }
    assert {m: t for m, t in wrong.items() if t} == {}


def test_the_checks_can_fail() -> None:
    """The detector itself: a planted two-module cycle and a planted wrong-way arrow are seen."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    graph = import_graph()
    assert "semcorr.cli.common" in graph["semcorr.cli.match"]  # real edges are read
    assert "semcorr.io.points" in graph["semcorr.io"]  # `from semcorr.io.points import ...`
