"""The package's import graph: no cycles (lazy and type-only imports count), and the
server (`arker.local`) never reaches the client side."""

from __future__ import annotations

import ast
from pathlib import Path

import arker

PACKAGE = Path(arker.__file__).parent

# Modules both sides use. Everything else the client (`arker._client`) loads is client
# side, and `arker serve` must never load it.
SHARED = {
    "arker._constants",
    "arker._error_codes",
    "arker._ids",
    "arker._paths",
    "arker._version",
    "arker._wire",
    "arker._wire_live",
    "arker._wire_ports",
    "arker._wire_platform",
    "arker._wire_diff",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every arker module ``name`` imports anywhere in its body (functions and
    ``if TYPE_CHECKING:`` blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from .pkg import mod` imports a module, too. A package the importer lives
            # in is loaded before the importer anyway: `from . import x` is no edge to it.
            inside = name.startswith(base + ".")
            targets = [*([] if inside else [base]), *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in graph[node]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_graph_sees_the_modules_and_their_lazy_imports() -> None:
    graph = _graph()
    assert "arker._wire" in graph["arker.local.errors"]
    assert "arker.resources.sync" in graph["arker.resources"]
    assert len(graph) > 40


def test_no_import_cycles_inside_the_package() -> None:
    assert _cycles(_graph()) == []


def test_a_planted_lazy_import_cycle_is_found() -> None:
    graph = _graph()
    graph["arker._wire"] = graph["arker._wire"] | {"arker._models"}  # _models imports _wire
    assert any({"arker._models", "arker._wire"} <= set(c) for c in _cycles(graph))


def test_the_server_never_imports_the_client_side() -> None:
    graph = _graph()
    client_side = ({"arker._client"} | _reachable(graph, "arker._client")) - SHARED
    assert {"arker._base_client", "arker._exceptions", "arker.resources.sync"} <= client_side
    for module in graph:
        if module.startswith("arker.local"):
            leaks = sorted(_reachable(graph, module) & client_side)
            assert leaks == [], f"{module} reaches {leaks}"
