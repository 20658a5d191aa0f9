"""The package layout stays a pipeline: no import cycles, small modules, few top-level entries.

Imports are read from the source (every ``import`` statement, including those inside
functions; those under ``if TYPE_CHECKING:`` are annotations only and do not count).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "framevet"
MAX_MODULE_LINES = 600
#: 14 stages and shared records, plus framevet.api, the public Python API (docs/api.md)
MAX_TOP_LEVEL_ENTRIES = 14


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str, modules: set[str]) -> Iterator[str]:
    """Every framevet module ``tree`` imports, outside ``if TYPE_CHECKING:`` blocks.
    ``from pkg import mod`` depends on ``pkg.mod`` only; ``from pkg import name`` on ``pkg``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in modules else base
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """framevet module → the framevet modules it imports."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = _imports(ast.parse(path.read_text()), package, set(modules))
        targets = {t for t in found if t in modules}
        graph[name] = targets - {name}
    return graph


def _unit(module: str) -> str:
    """The top-level unit of ``module``: ``framevet.cfg.program`` → ``cfg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for src, targets in graph.items():
        # a package's __init__ re-exporting its own modules is not a dependency between units
        units.setdefault(_unit(src), set()).update(
            _unit(t) for t in targets if _unit(t) != _unit(src) and _unit(t) != "__init__")
    return units


def test_top_level_units_form_a_dag() -> None:
    assert cycles(unit_graph(import_graph())) == []


def test_modules_form_a_dag() -> None:
    assert cycles(import_graph()) == []


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_few_top_level_entries() -> None:
    # every file and folder counts, package data too
    entries = sorted(p.name for p in PACKAGE.iterdir()
                     if p.name != "__pycache__" and not p.name.endswith(".egg-info"))
    assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, entries


def test_the_layout_test_sees_imports() -> None:
    # a guard against a checker that passes because it reads nothing
    graph = import_graph()
    assert "framevet.cfg.program" in graph["framevet.stack.walker"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


if __name__ == "__main__":
    g = import_graph()
    for c in cycles(unit_graph(g)):
        print("unit cycle:", " ".join(c))
    for c in cycles(g):
        print("module cycle:", " ".join(c))


MAX_FUNCTION_LINES = 90


def test_functions_stay_short() -> None:
    long = {}
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(PACKAGE)}:{node.name}"] = n
    assert long == {}


def test_every_rule_leads_to_its_fixtures() -> None:
    # docs/architecture.md: a rule id leads to tests/fixtures/<id>/ (objtool's rules) or to
    # the row of framevet's own rules naming its module, fixtures and tests
    from framevet.rules import all_rules

    root = PACKAGE.parent.parent
    table = (root / "docs" / "architecture.md").read_text()
    missing = [rid for rid in all_rules()
               if not (root / "tests" / "fixtures" / rid).is_dir() and f"`{rid}`" not in table]
    assert missing == []
