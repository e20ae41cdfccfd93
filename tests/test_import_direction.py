"""Imports inside each package run one way: no module reaches itself through imports.

Every ``import``/``from … import`` of a package module counts, at module level or inside a
function (a lazy import is still a dependency).  For ``kad_kernels`` the intended order is
API → dispatch (``_backends``) → backends (``_native``, ``triton/``) → shared leaves
(``_backend``, ``rules``, ``_random``, ``reference``).  In ``kad``, ``kad eval``'s run
(``evaluate``) → the result file (``results``) and the scores (``report``) → ``stats``:
``kad summary`` and ``kad plot`` read files without the run's modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(package: str) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}``, submodule imports resolved to files."""
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            edges |= {c for c in candidates if c in files and c != name}
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", ["kad_kernels", "kad"])
def test_no_import_circle(package):
    graph = _graph(package)
    inits = {name for name in graph if (ROOT / name.replace(".", "/") / "__init__.py").is_file()}
    # Edges into a package's own __init__ from inside it are resolved to the submodule imported.
    graph = {name: {t for t in edges if t not in inits or not name.startswith(t + ".")} for name, edges in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_backends_share_a_leaf():
    graph = _graph("kad_kernels")
    assert graph["kad_kernels._backend"] <= {"kad_kernels.rules"}
    for backend in ("kad_kernels._native", "kad_kernels.triton", "kad_kernels.triton.ops"):
        assert "kad_kernels._backends" not in graph[backend], f"{backend} imports the dispatch module"


def test_the_result_file_and_the_report_import_no_decoding():
    graph = _graph("kad")
    for module in ("kad.results", "kad.report"):
        assert graph[module] <= {"kad.stats"}, f"{module} imports {sorted(graph[module] - {'kad.stats'})}"
        tree = ast.parse((ROOT / module.replace(".", "/")).with_suffix(".py").read_text())
        outside = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        outside |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
        assert outside <= sys.stdlib_module_names, f"{module} imports {sorted(outside - sys.stdlib_module_names)}"
    for reader in ("kad.plots", "kad.results", "kad.report"):
        assert "kad.evaluate" not in graph[reader], f"{reader} imports kad.evaluate"
