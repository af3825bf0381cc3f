"""The dependency rule of DESIGN.md, enforced: a layer imports only layers below it, with no allow-list.

Every module under ``src/npyfeed`` is parsed (``ast``, nothing imported) and every import is checked: module
level, ``TYPE_CHECKING`` blocks and imports inside functions alike. The one allowed upward edge is the Loader's
lazy, delegation-only ``to_tf_dataset`` / ``to_keras`` / ``to_torch``; it must sit inside one of those methods and
carry the marker comment, so it is visible where it is written. No module reads another module's private names
(``from x import _y``) or private attributes (``obj._attr`` where no class of the reading module defines ``_attr``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "npyfeed"
UPWARD_MARKER = "# the one upward edge"
UPWARD_METHODS = frozenset({"to_tf_dataset", "to_keras", "to_torch"})

# DESIGN.md's table, one rule per layer: which npyfeed layers (by name) each may import. Every layer may import
# its own package; layer 1 ("base": errors, argument checks, system facts) may import only ``npyfeed.errors``.
BASE = ("errors", "arguments", "system", "runs")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "base": frozenset({"errors"}),
    "storage": frozenset({"base"}),
    "format": frozenset({"storage", "base"}),
    "sources": frozenset({"format", "storage", "base"}),
    "order": frozenset({"base"}),
    "shard": frozenset({"base"}),
    "launcher": frozenset({"base"}),
    "loader": frozenset({"order", "shard", "launcher", "sources", "storage", "base"}),
    "adapters": frozenset({"order", "shard", "sources", "base"}),  # never loader, not even for typing
    "write": frozenset({"format", "sources", "base"}),
}
BELOW_8 = frozenset(MAY_IMPORT) - {"errors"}
# Layer 8, anything below: the public modules (``npyfeed``, ``npyfeed.keras``...) re-export layers 1-7; the command
# line sits on top (it runs the bench and reads the package's version); ``python -m npyfeed`` runs the command line.
MAY_IMPORT |= {
    "bench": BELOW_8,
    "public": BELOW_8,
    "cli": BELOW_8 | {"bench", "public"},
    "main": frozenset({"cli"}),
}


def layer(module: str) -> str:
    """The layer of a module ``npyfeed.x.y``: its package, or one of the named top-level modules."""
    parts = module.split(".")
    if parts == ["npyfeed"] or module in {"npyfeed.keras", "npyfeed.jax_arrays", "npyfeed.convert"}:
        return "public"  # the documented entry points: re-exports of the layers below
    if module == "npyfeed.__main__":
        return "main"
    head = parts[1]
    if head == "errors":
        return "errors"
    if head in BASE:
        return "base"
    if head in MAY_IMPORT:
        return head
    raise AssertionError(f"{module} belongs to no layer of DESIGN.md: add it to the table or move it")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported npyfeed module
    names: tuple[str, ...]  # names taken with ``from target import ...``
    line: int
    where: str  # "module", "TYPE_CHECKING" or "def NAME"
    marked: bool  # the line carries UPWARD_MARKER


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if MODULES[source].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(source: str) -> list[Import]:
    path = MODULES[source]
    text = path.read_text()
    lines = text.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = where
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for item in child.body:
                    visit_one(item, "TYPE_CHECKING")
                for item in child.orelse:
                    visit_one(item, where)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                here = f"def {child.name}"
            visit_one(child, here)

    def visit_one(node: ast.AST, where: str) -> None:
        marked = UPWARD_MARKER in lines[getattr(node, "lineno", 1) - 1]
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "npyfeed":
                    found.append(Import(source, alias.name, (), node.lineno, where, marked))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(source, node)
            if target.split(".")[0] == "npyfeed":
                names = tuple(a.name for a in node.names)
                submodules = [n for n in names if f"{target}.{n}" in MODULES]
                for n in submodules:  # ``from npyfeed.storage import sigbus`` imports a module
                    found.append(Import(source, f"{target}.{n}", (), node.lineno, where, marked))
                rest = tuple(n for n in names if n not in submodules)
                if rest or not submodules:
                    found.append(Import(source, target, rest, node.lineno, where, marked))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            visit(node, f"def {node.name}")
        elif not isinstance(node, (ast.Import, ast.ImportFrom)):
            visit(node, where)

    visit(ast.parse(text), "module")
    return found


ALL_IMPORTS = [i for m in MODULES for i in imports(m) if i.target != i.source]


def is_upward_edge(i: Import) -> bool:
    """The Loader's lazy ``to_*`` delegation to an adapter: the one allowed upward edge (see DESIGN.md)."""
    return (
        i.source == "npyfeed.loader.loader"
        and i.where in {f"def {m}" for m in UPWARD_METHODS}
        and i.target.startswith("npyfeed.adapters.")
        and i.marked
    )


def test_every_module_has_a_layer_and_every_import_target_exists() -> None:
    for m in MODULES:
        layer(m)
    unknown = [f"{i.source}:{i.line} imports {i.target}" for i in ALL_IMPORTS if i.target not in MODULES]
    assert unknown == []


def test_a_layer_imports_only_layers_below_it() -> None:
    wrong = []
    for i in ALL_IMPORTS:
        src, dst = layer(i.source), layer(i.target)
        allowed = MAY_IMPORT[src] | ({"errors"} if "base" in MAY_IMPORT[src] else set())
        if src == dst or dst in allowed or is_upward_edge(i):
            continue
        wrong.append(f"{i.source}:{i.line} ({src}, {i.where}) imports {i.target} ({dst})")
    assert wrong == []


def test_the_upward_edge_is_marked_and_only_where_design_allows_it() -> None:
    marked = [i for i in ALL_IMPORTS if i.marked]
    assert marked, "Loader.to_* delegation lost its marker comment"
    assert all(is_upward_edge(i) for i in marked), [i for i in marked if not is_upward_edge(i)]
    assert {i.where for i in marked} == {f"def {m}" for m in UPWARD_METHODS}


def test_no_import_cycle_counting_type_checking_and_lazy_imports() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for i in ALL_IMPORTS:
        if not is_upward_edge(i):
            graph[i.source].add(i.target)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            connect(v)
    assert cycles == []


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = [
        f"{i.source}:{i.line} imports {n} from {i.target}"
        for i in ALL_IMPORTS
        for n in i.names
        if n.startswith("_") and not n.startswith("__")
    ]
    wrong += [
        f"{m} is a private module"
        for m in MODULES
        if any(p.startswith("_") and not p.startswith("__") for p in m.split("."))
    ]
    assert wrong == []


def private_definitions(tree: ast.AST) -> set[str]:
    """Private names a module defines: ``self._x = ...``, ``def _x``, class-level ``_x = ...``, ``__slots__``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_"):
            names.add(node.name)
        elif isinstance(node, (ast.AnnAssign, ast.Assign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.startswith("_"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_"):
            names.add(node.value)  # __slots__ entries, getattr(self, "_x")
    return names


TREES = {m: ast.parse(p.read_text()) for m, p in MODULES.items()}
NPYFEED_PRIVATE = set().union(*(private_definitions(t) for t in TREES.values()))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reads_another_modules_private_attributes(module: str) -> None:
    """``x._attr`` is read only where the reading module itself defines ``_attr`` (its own classes' state).

    Only names that some npyfeed module defines count: a private attribute of NumPy or the standard library is
    not another npyfeed module's.
    """
    own = private_definitions(TREES[module])
    wrong = sorted(
        f"{module}:{node.lineno} reads {ast.unparse(node)}"
        for node in ast.walk(TREES[module])
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr in NPYFEED_PRIVATE
        and node.attr not in own
    )
    assert wrong == []
