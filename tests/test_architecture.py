"""The rules of docs/architecture.md, checked on the source: what may import what.

Imports are read with :mod:`ast` (module level and inside functions; those under
``if TYPE_CHECKING:`` are for the type checker only and do not count).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "app", "schemas")
#: What the sans-I/O engine must never use: I/O, threads, clocks, the shell.
ENGINE_FORBIDDEN = {
    "app",
    "asyncio",
    "socket",
    "sqlite3",
    "threading",
    "multiprocessing",
    "subprocess",
    "selectors",
    "time",
    "datetime",
    "fcntl",
    "os",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def imports_of(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports at run time."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
                if node.module is None:  # from . import a, b: each is a module
                    found.update(f"{target}.{alias.name}" for alias in node.names)
                else:
                    found.add(target)
            elif node.module:
                found.add(node.module)
    return found


def project_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imp in imports_of(path):
            # the longest project module the import names: engine.dialog.Socket → engine.dialog
            parts = imp.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                deps.add(".".join(parts))
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_engine_does_no_io_and_never_imports_the_shell() -> None:
    bad = {}
    for path in (ROOT / "engine").rglob("*.py"):
        top = {imp.split(".")[0] for imp in imports_of(path)}
        if top & ENGINE_FORBIDDEN:
            bad[module_name(path)] = sorted(top & ENGINE_FORBIDDEN)
    assert not bad, f"engine modules importing I/O, clocks or the shell: {bad}"


def test_schemas_stand_alone() -> None:
    graph = project_graph()
    for name, deps in graph.items():
        if name.startswith("schemas"):
            assert not {d for d in deps if d.startswith(("app", "engine"))}, name


def test_no_import_circles() -> None:
    assert cycles(project_graph()) == []


def test_the_checks_see_what_they_look_for() -> None:
    """The graph walk finds real edges and would report a circle."""
    graph = project_graph()
    assert "engine.dialog" in graph["engine.dlg_table"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
