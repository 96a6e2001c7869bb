"""No module outside daemon.py reads a Daemon's private attributes (issue 15).

The scheduler keeps its own record per daemon and the bundled daemons use the public
Daemon API, so only daemon.py may touch ``Daemon._anything``. Checked on the source,
by a heuristic that cannot know types: an attribute ``_name`` read from an expression
that names a daemon (``daemon``, ``d``, ``old_daemon``, ``slot.daemon``,
``self.daemon``, ``app.daemons[name]``, a parameter or variable annotated as a
``...Daemon``), and, inside a subclass of Daemon, ``self._name`` for the private
names that daemon.py's Daemon itself defines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import daemonapp

PACKAGE = Path(daemonapp.__file__).parent
DAEMON_PY = PACKAGE / "daemon.py"
_DAEMON_NAME = re.compile(r"(^|_)(daemon|d)$")
_DAEMON_ANNOTATION = re.compile(r"\b\w*Daemon\b")
_NOT_A_DAEMON = re.compile(r"\bDaemon(App|Spec)\b")


def is_private(name: str) -> bool:
    """``_name``, not ``__dunder__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def daemon_private_names(tree: ast.Module) -> set[str]:
    """The private attributes and methods daemon.py's Daemon and SeedDaemon define."""
    names: set[str] = set()
    for cls in ast.walk(tree):
        if not (isinstance(cls, ast.ClassDef) and cls.name in ("Daemon", "SeedDaemon")):
            continue
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if is_private(name)}


def names_a_daemon(expr: ast.expr, annotated: set[str]) -> bool:
    """Whether ``expr`` looks like a daemon by its name."""
    if isinstance(expr, ast.Name):
        return bool(_DAEMON_NAME.search(expr.id)) or expr.id in annotated
    if isinstance(expr, ast.Attribute):
        return expr.attr.endswith("daemon")
    if isinstance(expr, ast.Subscript):
        holder = expr.value
        name = (holder.id if isinstance(holder, ast.Name)
                else holder.attr if isinstance(holder, ast.Attribute) else "")
        return name.endswith("daemons")
    return False


def annotated_daemons(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The parameters and variables of ``function`` annotated as some ``...Daemon``."""
    found: set[str] = set()
    args = function.args
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
        if arg.annotation is not None:
            found.update([arg.arg] if is_daemon_annotation(arg.annotation) else [])
    for node in ast.walk(function):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and is_daemon_annotation(node.annotation)):
            found.add(node.target.id)
    return found


def is_daemon_annotation(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return bool(_DAEMON_ANNOTATION.search(_NOT_A_DAEMON.sub("", text)))


def daemon_subclasses(trees: dict[Path, ast.Module]) -> set[str]:
    """The package's classes that derive from Daemon, by name (transitively)."""
    found = {"Daemon", "SeedDaemon"}
    grew = True
    while grew:
        grew = False
        for tree in trees.values():
            for cls in ast.walk(tree):
                if not isinstance(cls, ast.ClassDef) or cls.name in found:
                    continue
                bases = {base.id if isinstance(base, ast.Name) else
                         base.attr if isinstance(base, ast.Attribute) else ""
                         for base in cls.bases}
                if bases & found:
                    found.add(cls.name)
                    grew = True
    return found


def private_reads(root: Path) -> list[str]:
    """``path:line: expression`` for each read of a Daemon's private attribute."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sorted(root.rglob("*.py"))}
    daemon_py = root / "daemon.py"
    private = daemon_private_names(trees[daemon_py])
    subclasses = daemon_subclasses(trees)
    found: set[tuple[str, int, str]] = set()
    for path, tree in trees.items():
        if path == daemon_py:
            continue
        where = str(path.relative_to(root.parent))

        def check(node: ast.AST, annotated: set[str], where: str = where) -> None:
            if (isinstance(node, ast.Attribute) and is_private(node.attr)
                    and names_a_daemon(node.value, annotated)):
                found.add((where, node.lineno, ast.unparse(node)))

        for node in ast.walk(tree):
            check(node, set())
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                annotated = annotated_daemons(node)
                for inner in ast.walk(node) if annotated else ():
                    check(inner, annotated)
            if isinstance(node, ast.ClassDef) and node.name in subclasses:
                for inner in ast.walk(node):
                    if (isinstance(inner, ast.Attribute) and inner.attr in private
                            and isinstance(inner.value, ast.Name) and inner.value.id == "self"):
                        found.add((where, inner.lineno, ast.unparse(inner)))
    return [f"{path}:{line}: {text}" for path, line, text in sorted(found)]


def test_no_module_outside_daemon_py_reads_a_daemon_private() -> None:
    """No module of the package but daemon.py reads a Daemon attribute that starts
    with an underscore."""
    assert private_reads(PACKAGE) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The heuristic flags each kind of read it claims to (and not a Daemon's own)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "daemon.py").write_text(
        "class Daemon:\n"
        "    def __init__(self):\n"
        "        self._due = 0\n"
        "        self.name = 'x'\n"
        "    def _end(self):\n"
        "        return self._due\n")
    (package / "user.py").write_text(
        "from pkg.daemon import Daemon\n"
        "def a(daemon, slot, app, thing: 'Daemon | None', other: 'DaemonApp'):\n"
        "    daemon._due; slot.daemon._due; app.daemons['n']._end(); thing._x\n"
        "    other._fine; daemon.name; daemon.__class__\n"
        "class Mine(Daemon):\n"
        "    def run(self):\n"
        "        self._own = 1\n"
        "        return self._end(), self._own\n")
    assert private_reads(package) == [
        "pkg/user.py:3: app.daemons['n']._end",
        "pkg/user.py:3: daemon._due",
        "pkg/user.py:3: slot.daemon._due",
        "pkg/user.py:3: thing._x",
        "pkg/user.py:8: self._end",
    ]
