"""The package's layers (docs/design.md), enforced by reading every module's imports.

A module may import modules of its own layer or of a lower one, never of a higher one; the imports
inside the package form no circle; plumbing uses the standard library only (the Snakefile imports it
at parse time, before anything heavy).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "cr51"

#: Lowest first. docs/design.md lists the same layers.
LAYERS: dict[str, tuple[str, ...]] = {
    "plumbing": (
        "digests",
        "includes",
        "metacache",
        "statcache",
        "scan",
        "archive",
        "schema",
        "store",
        "audit",
        "jobs",
        "runsummary",
    ),
    "contract": ("settings", "tables"),
    "assay": (
        "ingest",
        "layout",
        "lysis",
        "qc",
        "points",
        "fit",
        "potency",
        "combination",
        "campaign",
        "simulate",
        "trends",
    ),
    "presentation": ("svg", "figures", "report"),
    "orchestration": ("plate", "batch", "collect", "runner", "checker"),
}
LEVEL = {module: i for i, modules in enumerate(LAYERS.values()) for module in modules}


def top_module(path: Path) -> str:
    """The package's top-level module a file belongs to (``report/page.py`` -> ``report``)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(package modules, other top-level modules) that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside_pkg = path.parent != PACKAGE  # a file of a sub-package: ``..`` is the package
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and not module.startswith("cr51"):
                external.add(module.split(".")[0])
                continue
            if node.level == 0:
                parts = module.split(".")[1:]
            elif node.level == 1 and inside_pkg:
                parts = [top_module(path), *module.split(".")] if module else [top_module(path)]
            else:
                parts = module.split(".") if module else []
            names = parts[:1] or [a.name for a in node.names]
            internal.update(n for n in names if n != "__version__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cr51."):
                    internal.add(alias.name.split(".")[1])
                else:
                    external.add(alias.name.split(".")[0])
    return internal, external


def graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        module = top_module(path)
        out.setdefault(module, set()).update(m for m in imports(path)[0] if m != module)
    return out


def test_every_module_has_a_layer():
    assert set(graph()) == set(LEVEL), "add new modules to LAYERS here and to docs/design.md"


def test_no_import_goes_up_a_layer():
    upward = [
        f"{module} ({layer_of(module)}) imports {dep} ({layer_of(dep)})"
        for module, deps in graph().items()
        for dep in deps
        if LEVEL[dep] > LEVEL[module]
    ]
    assert upward == []


def layer_of(module: str) -> str:
    return list(LAYERS)[LEVEL[module]]


def test_imports_close_no_circle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for module in sorted(g):
        if module not in state:
            visit(module, [module])


def test_plumbing_uses_the_standard_library_only():
    for module in LAYERS["plumbing"]:
        _, external = imports(PACKAGE / f"{module}.py")
        assert external <= set(sys.stdlib_module_names) | {"__future__"}, (module, external)


def test_the_checks_see_a_violation(monkeypatch):
    """The reader finds an upward import (a test that cannot fail proves nothing)."""
    bad = PACKAGE / "schema.py"
    text = bad.read_text(encoding="utf-8")
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, encoding=None: (
            text + "\nfrom .batch import process_batch\n" if self == bad else Path.read_bytes(self).decode()
        ),
    )
    assert "batch" in graph()["schema"]
    with pytest.raises(AssertionError):
        test_no_import_goes_up_a_layer()


def test_the_circle_check_sees_a_circle(monkeypatch):
    bad = PACKAGE / "layout.py"
    text = bad.read_text(encoding="utf-8")
    real = Path.read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, encoding=None: (
            text + "\nfrom .lysis import add_lysis\n" if self == bad else real(self, encoding=encoding)
        ),
    )
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_imports_close_no_circle()
