"""The package's layout, read from its syntax tree: one folder per concern, imports that point down
only (a module imports from a lower rank or from its own folder), no import cycle, and at most
three modules at the package root besides ``__init__``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_glif"
#: Bottom to top; a unit imports only from units of a lower rank (or from itself).
RANKS = {
    "io": 0,
    "neurons": 1,
    "data": 1,
    "layers": 2,
    "models": 3,
    "training": 4,
    "callbacks": 5,
    "authors_checkpoints": 6,
    "cli": 7,
    "sweep": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of its code (a function-level
    import is an edge too): ``from a.b import c`` gives ``a.b.c`` if that is a module, else
    ``a.b``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE.name or t.startswith(PACKAGE.name + "."))
    return {resolve(t) for t in found} - {None, name}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(target: str) -> str | None:
    """The module ``target`` names (an attribute of a module resolves to that module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_every_folder_and_root_module_has_a_rank():
    units = {unit(m) for m in MODULES} - {"__init__"}
    assert units == set(RANKS), f"ranks to add or drop: {units ^ set(RANKS)}"
    root = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(root) <= 3, f"at most 3 modules at the package root besides __init__: {root}"


def test_imports_point_down_only():
    upward = [
        f"{a} imports {b} ({unit(a)} rank {RANKS[unit(a)]} -> {unit(b)} rank {RANKS[unit(b)]})"
        for a, targets in GRAPH.items()
        for b in targets
        if unit(a) != "__init__"
        and unit(b) not in (unit(a), "__init__")
        and RANKS[unit(b)] >= RANKS[unit(a)]
    ]
    assert not upward, "imports must point down:\n" + "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    # A package's __init__ that re-exports its modules is imported by them only through their
    # own package path, which Python resolves to the module itself: leave __init__ edges out.
    graph = {a: {b for b in t if not MODULES[b].name == "__init__.py"} for a, t in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, cyclic",
    [({"a": {"b"}, "b": {"c"}, "c": set()}, False), ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)],
)
def test_the_cycle_search_finds_a_cycle_and_only_a_cycle(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic
