"""llmc's imports run one way: no import cycles, and the runtime never reaches the compiler side.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and ``from ...
import`` anywhere in a module counts, inside functions and under ``TYPE_CHECKING`` included. ``from
llmc.x import y`` is an edge to the module ``llmc.x.y`` when that is a module, else to ``llmc.x``;
relative imports are resolved against the importing module's package. Importing a submodule is not
counted as importing its package's ``__init__`` (Python runs it, but a package importing its own
submodules is not a cycle anyone has to untangle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llmc"

# every package is checked (llmc/quant's circles went with the explicit scheme interface)
UNCHECKED_PREFIXES: tuple[str, ...] = ()
# Known cycles outside those, each as a frozenset of modules, with the reason it stays: none.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

# llmc.plan and llmc.weights hold what llmc.compile held before; they build modules and convert weights
COMPILER_SIDE = (
    "llmc.compiler",
    "llmc.compile",
    "llmc.plan",
    "llmc.weights",
    "llmc.convert",
    "llmc.quant",
    "llmc.models",
    "llmc.kernels",
)
# llmc.runtime modules allowed to reach the compiler side, with the reason: none.
RUNTIME_EXCEPTIONS: dict[str, str] = {}


def module_files() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module of llmc."""
    modules = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (file, is_package)
    return modules


def _known(name: str, modules: dict) -> str | None:
    """``name`` or its closest enclosing module that is part of llmc (``import llmc.x.y`` names a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the llmc modules it imports (anywhere in its source)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, (file, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
                ]
            else:
                continue
            edges.update(t for t in (_known(t, modules) for t in targets if t.split(".")[0] == "llmc") if t)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not -> the module that imports it on one path."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for child in sorted(graph[node]):
            if child not in via and child != start:
                via[child] = node
                todo.append(child)
    return via


def test_graph_reads_every_kind_of_import():
    graph = import_graph()
    assert "llmc.compile" in graph["llmc.cli"]  # imported inside a function
    assert "llmc.plan" in graph["llmc.convert"]  # imported under TYPE_CHECKING
    assert "llmc.compiler.preset" in graph["llmc.compiler.targets"]  # from llmc.x.y import name
    assert "llmc.models.llama" in graph["llmc.models"]  # from llmc.models import llama (a module)


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if not all(_within(m, UNCHECKED_PREFIXES) for m in c)]
    unexpected = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert not unexpected, f"import cycles among llmc modules: {unexpected}"
    stale = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not stale, f"KNOWN_CYCLES lists cycles that are gone; remove them: {stale}"


def test_runtime_never_reaches_the_compiler_side():
    graph = import_graph()
    problems = []
    for module in sorted(m for m in graph if _within(m, ("llmc.runtime",))):
        if module in RUNTIME_EXCEPTIONS:
            continue
        via = reachable(graph, module)
        entries = [m for m in via if _within(m, COMPILER_SIDE) and not _within(via[m], COMPILER_SIDE)]
        for bad in sorted(entries):  # where a path first steps onto the compiler side
            path = [bad]
            while path[-1] != module:
                path.append(via[path[-1]])
            problems.append(" <- ".join(path))
    assert not problems, "llmc.runtime imports the compiler side:\n" + "\n".join(problems)
