"""No import cycle in the daemonapp package: its modules' imports form a tree of layers.

A module's imports are those at its top level, including those under ``if
TYPE_CHECKING:`` or ``try:`` (a cycle for the type checker is still a cycle in the
design); an import inside a function is a deliberate lazy one and not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import daemonapp

PACKAGE = Path(daemonapp.__file__).parent


def module_names(root: Path) -> dict[str, Path]:
    """Every module under ``root`` (a package directory) by its dotted name."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def top_level_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports at its top level."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    found.add(submodule if submodule in modules else base)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                if isinstance(node, ast.Try):
                    for handler in node.handlers:
                        visit(handler.body)
                    visit(node.finalbody)

    visit(ast.parse(path.read_text()).body)
    return {module for module in found if module in modules and module != name}


def cycles(root: Path) -> list[list[str]]:
    """The import cycles among ``root``'s modules (each as a path back to its start)."""
    modules = module_names(root)
    graph = {name: top_level_imports(name, path, modules) for name, path in modules.items()}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for imported in sorted(graph[name]):
            if state.get(imported) == 1:
                found.append([*path[path.index(imported):], imported])
            elif imported not in state:
                walk(imported)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    return found


def test_the_package_has_no_import_cycle() -> None:
    """No module of daemonapp imports, at its top level, one that imports it back."""
    assert cycles(PACKAGE) == []


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """The check sees a cycle through a TYPE_CHECKING import and a relative import, and
    not one through an import inside a function."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.b import B\n")
    (package / "sub" / "b.py").write_text("from . import a\n")
    (package / "c.py").write_text("def f():\n    import pkg.d\n")
    (package / "d.py").write_text("import pkg.c\n")
    assert cycles(package) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]]
