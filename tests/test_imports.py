"""The house: imports run one way (entry points -> ssl_zoo -> building blocks), with no cycle
among ssl_zoo's modules, lazy (in-function) imports included."""

import ast
from pathlib import Path

from conftest import ROOT


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the ssl_zoo modules it imports, from the source alone. (Python runs a package's
    __init__ before any of its submodules; that implicit step is not an edge here, or every
    function of ssl_zoo/__init__.py that imports a job would close a cycle.)"""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from package import submodule` loads the submodule; any other name, the module.
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}  # "open" while on the current path, then "done"

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_ssl_zoo_imports_have_no_cycle():
    graph = import_graph(ROOT / "ssl_zoo")
    assert "ssl_zoo.federated.run" in graph and "ssl_zoo.methods.base" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
