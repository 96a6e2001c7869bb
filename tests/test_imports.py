"""Tests for daemonapp.imports: the one reading of a "module:attribute" target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from daemonapp.daemons._build import resolve_type
from daemonapp.imports import TargetImportError, import_target, split_target
from daemonapp.listeners import check_listener
from daemonapp.options import OptionError


def test_a_target_names_an_attribute_path() -> None:
    """"module:a.b" is the attribute b of the attribute a of the module."""
    assert import_target("os.path:join.__name__") == "join"


def test_the_default_attribute_when_none_is_given() -> None:
    """"module" alone with a default is that attribute of the module."""
    assert split_target("myapp.web", default="application") == ("myapp.web", "application")
    assert import_target("os", default="sep") == "/"


def test_a_missing_module_says_so() -> None:
    """A module that is not there is "cannot import module"."""
    with pytest.raises(TargetImportError) as info:
        import_target("no_such_module_xyz:thing")
    assert str(info.value) == ("cannot import module 'no_such_module_xyz': "
                               "No module named 'no_such_module_xyz'")


def test_a_module_that_fails_while_importing_says_how(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that raises while it is imported names the error it raised."""
    (tmp_path / "broken_target_mod.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TargetImportError) as info:
        import_target("broken_target_mod:app")
    assert str(info.value) == ("importing module 'broken_target_mod' failed: "
                               "RuntimeError: no database")
    sys.modules.pop("broken_target_mod", None)


def test_a_missing_attribute_names_the_module() -> None:
    """An attribute the module lacks is "has no attribute"."""
    with pytest.raises(TargetImportError) as info:
        import_target("os:no_such_thing.x")
    assert str(info.value) == "module 'os' has no attribute 'no_such_thing.x'"


def test_daemon_types_use_the_same_rule() -> None:
    """A daemon's type reports an import failure in import_target's words."""
    with pytest.raises(OptionError) as info:
        resolve_type("os:no_such_thing")
    assert (info.value.key, info.value.message) == (
        "type", "module 'os' has no attribute 'no_such_thing'")


def test_as_written_names_the_whole_target(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With as_written, each failure names the target as the user wrote it."""
    (tmp_path / "broken_written_mod.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    messages = []
    for target in ("no_such_module_xyz:app", "broken_written_mod:app", "os:no_such_thing"):
        with pytest.raises(TargetImportError) as info:
            import_target(target, as_written=True)
        messages.append(str(info.value))
    sys.modules.pop("broken_written_mod", None)
    assert messages == [
        "cannot import 'no_such_module_xyz:app': No module named 'no_such_module_xyz'",
        "importing 'broken_written_mod:app' failed: RuntimeError: no database",
        "cannot import 'os:no_such_thing': module 'os' has no attribute 'no_such_thing'",
    ]


def test_listener_applications_use_the_same_rule() -> None:
    """A listener's wsgi target reports an import failure in import_target's words."""
    _, errors = check_listener({"protocol": "http", "endpoint": "tcp:0",
                                "wsgi": "os:no_such_thing"})
    assert [(error.key, error.message) for error in errors] == [
        ("wsgi", "cannot import 'os:no_such_thing': module 'os' has no attribute "
                 "'no_such_thing'")]
