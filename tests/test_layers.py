"""The import graph of ``sscc_core/``, ``pipelines/`` and ``benchmarks/``: layers go one way.

Every ``import`` and ``from ... import`` statement is read from the source with :mod:`ast`
(module level, inside functions and under ``if TYPE_CHECKING:`` alike), so a function-local
import cannot hide a cycle. The checks: no import cycle; no function-local import whose hoisting
would close a cycle; ``sscc_core`` never imports Ray; and inside ``sscc_core`` every import goes to
a module of the same or a lower layer of :data:`LAYERS` (a new module must be given a layer).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sscc_core", "pipelines", "benchmarks")

# sscc_core's layers, lowest first; a module may import only from its own layer or lower ones.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("sscc_core", "sscc_core.config", "sscc_core.storage", "sscc_core.profiling",
                    "sscc_core.metrics", "sscc_core.versioning")),
    ("readers and tiling", ("sscc_core.io", "sscc_core.io.*")),
    ("pre-processing, model, loss, augmentation, applying a readout",
     ("sscc_core.model", "sscc_core.model.*")),
    ("labelling and stores", ("sscc_core.labelling", "sscc_core.labelling.*")),
    ("training and fitting a readout", ("sscc_core.training", "sscc_core.training.*")),
    ("accuracy harness", ("sscc_core.accuracy", "sscc_core.accuracy.*")),
)


@dataclass(frozen=True)
class Edge:
    """One import of a project module by another.

    Attributes:
        source: The importing module (dotted name).
        target: The imported project module, or the top-level third-party name (``ray...``).
        local: Whether the import statement sits inside a function.
        line: Line number of the statement in the source's file.
    """

    source: str
    target: str
    local: bool
    line: int


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of :data:`PACKAGES`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of a module and whether it sits inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                           ast.Lambda)))

    visit(tree, False)
    return found


def import_edges() -> list[Edge]:
    """The imports of project modules (and of Ray) by the modules of :data:`PACKAGES`."""
    modules = module_files()
    edges = []
    for source, path in modules.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node, local in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` imports the submodule; ``from mod import name`` the module
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] == "ray":
                    edges.append(Edge(source, target, local, node.lineno))
                    continue
                while target and target not in modules:  # ``import a.b.c`` binds module a.b.c
                    target = target.rpartition(".")[0]
                if target and target != source:
                    edges.append(Edge(source, target, local, node.lineno))
    return edges


def _graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.target.startswith("ray"):
            graph.setdefault(edge.source, set()).add(edge.target)
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of an ``sscc_core`` module (``None`` when it has none)."""
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return i
    return None


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges()


def test_the_graph_is_read(edges):
    pairs = {(e.source, e.target) for e in edges}
    assert ("sscc_core.labelling.inference", "sscc_core.model.readout") in pairs
    assert ("pipelines.train", "sscc_core.training.trainer") in pairs
    assert any(e.target.startswith("ray") for e in edges)


def test_no_import_cycle(edges):
    assert find_cycles(_graph(edges)) == []


def test_no_function_local_import_dodges_a_cycle(edges):
    module_level = _graph([e for e in edges if not e.local])
    dodges = [f"{e.source}:{e.line} imports {e.target} inside a function; {e.target} imports "
              f"{e.source} (directly or not)" for e in edges
              if e.local and not e.target.startswith("ray") and _reaches(module_level, e.target, e.source)]
    assert dodges == []


def test_sscc_core_never_imports_ray(edges):
    assert [f"{e.source}:{e.line} imports {e.target}" for e in edges
            if e.source.split(".")[0] == "sscc_core" and e.target.split(".")[0] == "ray"] == []


def test_sscc_core_imports_go_down_the_layers(edges):
    core = sorted(m for m in module_files() if m.split(".")[0] == "sscc_core")
    assert [m for m in core if layer_of(m) is None] == [], "give every sscc_core module a layer"
    upward = [f"{e.source} ({LAYERS[layer_of(e.source)][0]}):{e.line} imports {e.target} "
              f"({LAYERS[layer_of(e.target)][0]})" for e in edges
              if e.source.split(".")[0] == e.target.split(".")[0] == "sscc_core"
              and layer_of(e.target) > layer_of(e.source)]
    assert upward == []


def test_sscc_core_imports_no_pipeline(edges):
    assert [f"{e.source}:{e.line} imports {e.target}" for e in edges
            if e.source.split(".")[0] == "sscc_core" and e.target.split(".")[0] != "sscc_core"
            and not e.target.startswith("ray")] == []


def test_the_checks_catch_what_they_are_for():
    cyclic = [Edge("a", "b", False, 1), Edge("b", "c", False, 1), Edge("c", "a", True, 1)]
    assert find_cycles(_graph(cyclic)) == [["a", "b", "c"]]
    assert _reaches(_graph(cyclic[:2]), "a", "c") and not _reaches(_graph(cyclic[:2]), "c", "a")
    assert layer_of("sscc_core.io.envi") == 1 and layer_of("sscc_core.model.readout") < layer_of(
        "sscc_core.labelling.inference") < layer_of("sscc_core.training.readout_fit")
