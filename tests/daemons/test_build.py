"""daemonapp.daemons._build: type names to classes, and a daemon from a mapping."""

from __future__ import annotations

from typing import Any

import pytest

from daemonapp.daemon import Daemon, OptionError
from daemonapp.daemons._build import (
    UnknownOptionError,
    build_daemon,
    class_options,
    daemon_types,
    resolve_type,
)
from daemonapp.daemons.command import Command
from daemonapp.daemons.dir_queue import DirQueue
from daemonapp.daemons.dir_queue_manager import DirQueueManager
from daemonapp.daemons.file_cleanup import FileCleanup


class Plain(Daemon):
    run_every = 5


class WithParams(Daemon):
    def __init__(self, *, needed: str, optional: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.needed = needed
        self.optional = optional


class Decides(WithParams):
    """A subclass that supplies its parent's required parameter itself."""

    def __init__(self, *, needed: str = "mine", **kw: Any) -> None:
        super().__init__(needed=needed, **kw)


def test_short_names_of_the_bundled_daemons() -> None:
    """The bundled short names resolve to their classes."""
    got = {name: resolve_type(name) for name in
           ("file_cleanup", "dir_queue", "dir_queue_manager", "command")}
    assert got == {"file_cleanup": FileCleanup, "dir_queue": DirQueue,
                   "dir_queue_manager": DirQueueManager, "command": Command}


def test_entry_point_names_are_listed() -> None:
    """daemon_types lists the bundled names with their module:Class targets."""
    assert daemon_types()["dir_queue"] == "daemonapp.daemons.dir_queue:DirQueue"


def test_module_class_form() -> None:
    """"package.module:Class" resolves to that class."""
    assert resolve_type(f"{__name__}:Plain") is Plain


def test_a_class_is_returned_as_is() -> None:
    """A Daemon subclass passed as the type is accepted as is."""
    assert resolve_type(Plain) is Plain


@pytest.mark.parametrize(("name", "message"), [
    ("nope", "unknown daemon type 'nope'"),
    ("no_such_module_xyz:Thing", "cannot import module"),
    (f"{__name__}:Missing", "has no attribute 'Missing'"),
    (f"{__name__}:pytest", "not a daemonapp.Daemon subclass"),
    (":Plain", "expected \"package.module:Class\""),
    ("", "expected a short name"),
    (3, "expected a short name"),
])
def test_bad_type_names(name: Any, message: str) -> None:
    """A bad type raises OptionError on the key "type", saying what is wrong."""
    with pytest.raises(OptionError, match=message) as info:
        resolve_type(name)
    assert info.value.key == "type"


def test_class_options_walk_the_mro() -> None:
    """class_options gives a class's parameters and those it passes **kw on to."""
    assert class_options(WithParams) == (frozenset({"needed", "optional"}),
                                         frozenset({"needed"}))
    assert class_options(Decides) == (frozenset({"needed", "optional"}), frozenset())


def test_build_daemon_passes_attributes_and_params() -> None:
    """build_daemon builds the class with the section's options and the name."""
    daemon = build_daemon({"type": f"{__name__}:WithParams", "run_every": "1m",
                           "needed": "yes"}, name="one")
    assert isinstance(daemon, WithParams)
    assert (daemon.name, daemon.run_every, daemon.needed, daemon.optional) == (
        "one", 60.0, "yes", 1)


def test_build_daemon_extra_options() -> None:
    """Options given by the caller are passed along with the section's."""
    daemon = build_daemon({"type": f"{__name__}:WithParams", "run_every": 1}, name="x",
                          needed="from parent")
    assert isinstance(daemon, WithParams)
    assert daemon.needed == "from parent"


@pytest.mark.parametrize(("section", "extra", "key"), [
    ({"run_every": 1}, {}, "type"),
    ({"type": f"{__name__}:WithParams", "run_every": 1}, {}, "needed"),
    ({"type": f"{__name__}:WithParams", "run_every": 1, "needed": "a"}, {"needed": "b"},
     "needed"),
    ({"type": f"{__name__}:Plain", "name": "n"}, {}, "name"),
    ({"type": f"{__name__}:Plain", "run_every": "soon"}, {}, "run_every"),
])
def test_build_daemon_option_errors(section: dict[str, Any], extra: dict[str, Any],
                                    key: str) -> None:
    """Missing, conflicting and bad options raise OptionError naming the key."""
    with pytest.raises(OptionError) as info:
        build_daemon(section, name="x", **extra)
    assert info.value.key == key


def test_build_daemon_unknown_key() -> None:
    """A key neither Daemon nor the class knows is an UnknownOptionError (a TypeError)."""
    with pytest.raises(TypeError) as info:
        build_daemon({"type": f"{__name__}:Plain", "run_evry": 1}, name="x")
    assert isinstance(info.value, UnknownOptionError)
    assert info.value.key == "run_evry"
    assert "expected a Daemon attribute" in str(info.value)


def test_build_daemon_extra_the_class_lacks() -> None:
    """An option the caller supplies that the class does not take is a TypeError."""
    with pytest.raises(UnknownOptionError) as info:
        build_daemon({"type": f"{__name__}:Plain"}, name="x", directory="/q")
    assert info.value.key == "directory"
