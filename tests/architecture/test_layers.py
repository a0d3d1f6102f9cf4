"""The house as drawn (STYLE.md, "Packages show the architecture"): which package may import which, and which part
of the coordinator and of the router may import which, checked on every import statement in the product's code
(module-level, function-level and TYPE_CHECKING imports alike), plus no import cycle between modules.

A package may import those its row names, and never tests/. Inside coordinator/ and shard_router/, a part may import
its own modules and the parts on lower levels, never one on its level or above; `__init__` and `__main__` of the
package are its top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PACKAGES: dict[str, frozenset[str]] = {
    "protos": frozenset(),
    # What any gRPC client of saga.v1 needs (channel credentials, tokens, retries); the processes are such clients
    # too, so common builds on sagaclient.credentials, and sagaclient loads none of common (tests/sagaclient).
    "sagaclient": frozenset({"protos"}),
    "common": frozenset({"protos", "sagaclient"}),
    "coordinator": frozenset({"common", "protos"}),
    "shard_router": frozenset({"common", "protos"}),
    "service_stubs": frozenset({"common", "protos"}),
    # Tools above the processes: the operator's command line, the launcher, the benchmarks. sagactl and deploy use a
    # process package through its public surface only (see PUBLIC_ONLY).
    "sagactl": frozenset({"sagaclient", "common", "protos", "shard_router"}),
    "deploy": frozenset({"sagaclient", "common", "protos", "shard_router"}),
    "bench": frozenset({"deploy", "sagaclient", "common", "protos", "coordinator", "shard_router", "service_stubs"}),
}
PUBLIC_ONLY = {("sagactl", "shard_router"), ("deploy", "shard_router")}
"""(importer, imported): only `import imported` / `from imported import name` (its __init__'s __all__)."""

LEVELS: dict[str, list[set[str]]] = {
    "coordinator": [
        {"config", "clock", "logs", "metrics", "crashpoints"},
        {"saga"},
        {"journal"},
        {"security", "ring", "engine"},
        {"operations"},
        {"shard"},
        # saga-defs plan and verify: the real shard and engine, in process, against fake services.
        {"tools"},
        {"api"},
        {"app"},
        {"__main__", "__init__"},
    ],
    "shard_router": [
        {"config", "errors", "metrics", "channels"},
        {"ring"},
        {"defs"},
        {"relay"},
        {"dashboard"},
        {"server"},
        {"__main__", "__init__"},
    ],
}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            yield ".".join(parts), path


def _imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import statement, relative ones resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _part(module: str) -> str:
    """coordinator.engine.caller -> engine; coordinator.shard -> shard; coordinator -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _level(package: str, part: str) -> int:
    for i, parts in enumerate(LEVELS[package]):
        if part in parts:
            return i
    raise AssertionError(f"{package}.{part} is in no level of LEVELS[{package!r}]: place it")


def wrong_way_imports() -> list[str]:
    problems = []
    ours = set(PACKAGES) | {"tests"}
    for name, path in _modules():
        top = name.split(".")[0]
        for target, names, line in _imports(name, path):
            other = target.split(".")[0]
            if other not in ours or other == top:
                if other == top and top in LEVELS:
                    mine, theirs = _part(name), _part(target)
                    # `from coordinator.engine import preview` names a module of the part, not the package's top.
                    if theirs == "__init__" and names:
                        theirs = names[0] if any(names[0] in lv for lv in LEVELS[top]) else theirs
                    if mine != theirs and _level(top, theirs) >= _level(top, mine):
                        problems.append(f"{path.relative_to(ROOT)}:{line}: {top}.{mine} imports {target} (a level up)")
                continue
            if other not in PACKAGES[top]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {top} may not import {target}")
            elif (top, other) in PUBLIC_ONLY and target != other:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {top} imports {target}, not {other}'s public surface"
                )
    return problems


def import_cycles() -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    modules = dict(_modules())
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for target, names, _ in _imports(name, path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
                    break
    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            # A package's __init__ re-exporting its modules is not a cycle of its own.
            if len(component) > 1 and not all(c.count(".") == 0 or _is_init_pair(c, component) for c in component):
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def _is_init_pair(module: str, component: list[str]) -> bool:
    return False


def test_no_import_points_the_wrong_way() -> None:
    problems = wrong_way_imports()
    assert not problems, "\n".join(problems)


def test_no_import_cycle() -> None:
    cycles = import_cycles()
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_fails_on_a_wrong_way_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a journal module that imports the engine, a common module that imports the
    coordinator, and two modules importing each other are each reported."""
    global ROOT
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "coordinator" / "journal").mkdir()
    (tmp_path / "coordinator" / "journal" / "__init__.py").write_text("")
    (tmp_path / "coordinator" / "journal" / "writer.py").write_text("from coordinator.engine import Engine\n")
    (tmp_path / "coordinator" / "engine.py").write_text("from coordinator.journal.writer import x\n")
    (tmp_path / "common" / "logs.py").write_text("import coordinator.shard\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    problems = wrong_way_imports()
    assert any("coordinator.journal imports coordinator.engine (a level up)" in p for p in problems), problems
    assert any("common may not import coordinator.shard" in p for p in problems), problems
    assert [sorted(c) for c in import_cycles()] == [["coordinator.engine", "coordinator.journal.writer"]]
