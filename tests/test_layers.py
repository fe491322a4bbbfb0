"""The package's import structure: no import cycles, and no module imports a layer above its own.

The layer order (low to high) is written down once, here and in ``docs/contributing.md``. A module may import its own
unit (the same entry) and any lower layer; units on the same layer do not import each other. Imports inside
functions count too (they are dependencies all the same); only ``if TYPE_CHECKING:`` blocks are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bb_lightning"

#: Low to high. ``methods.base`` is the interface (quantizer, regulariser); ``methods`` the method folders and the
#: fixed quantizers of the export.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "version"),
    ("_registry", "_validate", "_io"),
    ("core", "config"),
    ("methods.base",),
    ("cost",),
    ("methods",),
    ("wrap",),
    ("export",),
    ("viz",),
    ("plugin",),
    ("app", "deploy"),
    ("",),  # bb_lightning/__init__.py: the public API
]
#: Units that may import ``lightning``.
LIGHTNING_UNITS = ("plugin", "app", "")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str) -> tuple[int, str]:
    """``(layer index, unit)`` of a module path relative to the package (``""`` = the package itself)."""
    best: tuple[int, str] | None = None
    for i, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or (unit and module.startswith(unit + ".")) or (not unit and not module):
                if best is None or len(unit) > len(best[1]):
                    best = (i, unit)
    assert best is not None, f"module `{module}` is in no layer of LAYERS; add it there and to docs/contributing.md"
    return best


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """``(package modules imported, top-level external packages imported)`` by the file at ``path``."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    external: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "bb_lightning" or alias.name.startswith("bb_lightning."):
                        found.add(alias.name.removeprefix("bb_lightning").lstrip("."))
                    else:
                        external.add(alias.name.split(".")[0])
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    target = ".".join(base + ([child.module] if child.module else []))
                elif child.module == "bb_lightning" or (child.module or "").startswith("bb_lightning."):
                    target = child.module.removeprefix("bb_lightning").lstrip(".")  # type: ignore[union-attr]
                else:
                    external.add((child.module or "").split(".")[0])
                    continue
                for alias in child.names:
                    sub = f"{target}.{alias.name}" if target else alias.name
                    found.add(sub if sub in modules else target)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(me)
    return found, external


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    layer, unit = _unit(module)
    bad = []
    for target in sorted(GRAPH[module][0]):
        t_layer, t_unit = _unit(target)
        if t_unit != unit and t_layer >= layer:
            bad.append(f"`{target}` (layer {t_layer}, `{t_unit or 'bb_lightning'}`)")
    assert not bad, f"`bb_lightning.{module}` (layer {layer}, `{unit or 'bb_lightning'}`) imports upwards: {bad}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_only_plugin_and_app_import_lightning(module):
    if _unit(module)[1] in LIGHTNING_UNITS:
        return
    assert "lightning" not in GRAPH[module][1], f"`bb_lightning.{module}` imports lightning"


def test_no_import_cycles():
    edges = {m: {t for t in targets if t in GRAPH} for m, (targets, _) in GRAPH.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    edges = {m: {t for t in ts if not (m and t.startswith(m + "."))} for m, ts in edges.items()}
    colour: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        colour[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if colour.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(f"bb_lightning.{c}".rstrip(".") for c in cycle))
            if t not in colour:
                dfs(t)
        stack.pop()
        colour[m] = 2

    for m in sorted(edges):
        if m not in colour:
            dfs(m)


def test_layers_written_in_contributing_guide():
    guide = (PACKAGE.parent / "docs" / "contributing.md").read_text()
    for units in LAYERS[:-1]:
        for unit in units:
            assert f"`{unit}`" in guide, f"layer unit `{unit}` missing from docs/contributing.md"
