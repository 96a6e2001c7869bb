"""Build a Daemon from a plain mapping of options, the way a YAML section is built.

Used by daemons that make other daemons (DirQueueManager's ``queue:``); it lives
here rather than in ``daemonapp.config`` because nothing may import config but the
entry points (tap.py, cli.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from twisted.logger import Logger

from daemonapp.daemon import Daemon, OptionError
from daemonapp.imports import TargetImportError, import_target, split_target

__all__ = [
    "BUNDLED_DAEMONS",
    "ENTRY_POINT_GROUP",
    "UnknownOptionError",
    "build_daemon",
    "class_options",
    "daemon_types",
    "resolve_type",
]

log = Logger()

ENTRY_POINT_GROUP = "daemonapp.daemons"

#: The bundled short names, for a source checkout whose entry points are not
#: installed; setup.cfg's ``daemonapp.daemons`` group is the truth.
BUNDLED_DAEMONS = {
    "command": "daemonapp.daemons.command:Command",
    "dir_queue": "daemonapp.daemons.dir_queue:DirQueue",
    "dir_queue_manager": "daemonapp.daemons.dir_queue_manager:DirQueueManager",
    "file_cleanup": "daemonapp.daemons.file_cleanup:FileCleanup",
    "job_dispatcher": "daemonapp.jobs.dispatcher:JobDispatcher",
}


class UnknownOptionError(TypeError):
    """A key that is neither a Daemon attribute nor a parameter of the class.

    A TypeError, like ``Daemon(**kw)`` raises for an unknown keyword, that also
    carries the key so a caller can point at it; ``str(err) == f"{key}: {message}"``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def daemon_types() -> dict[str, str]:
    """The short daemon type names and their "module:Class" targets."""
    names = dict(BUNDLED_DAEMONS)
    try:
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            names[entry.name] = entry.value
    except Exception as e:  # a broken distribution must not hide the bundled names
        log.warn("cannot read the {group} entry points: {error}", group=ENTRY_POINT_GROUP,
                 error=e)
    return names


def resolve_type(name: str | type[Daemon], *,
                 types: Mapping[str, str] | None = None) -> type[Daemon]:
    """The Daemon class for a short name, "package.module:Class", or a class.

    ``types`` is `daemon_types()` read once by a caller resolving many names (reading
    the entry points costs milliseconds each time). Raises OptionError("type", ...)
    saying what is wrong and what is expected.
    """
    if isinstance(name, type):
        if issubclass(name, Daemon):
            return name
        raise OptionError("type", f"{name.__qualname__} is not a daemonapp.Daemon subclass")
    if not isinstance(name, str) or not name:
        raise OptionError(
            "type", f'expected a short name like "dir_queue" or "package.module:Class", '
                    f"got {name!r}")
    target = name
    if ":" not in name:
        if types is None:
            types = daemon_types()
        if name not in types:
            raise OptionError(
                "type", f"unknown daemon type {name!r}: expected one of "
                        f'{", ".join(sorted(types))}, or "package.module:Class"')
        target = types[name]
    module_name, qualname = split_target(target)
    if not module_name or not qualname:
        raise OptionError("type", f'expected "package.module:Class", got {name!r}')
    try:
        obj = import_target(target)
    except TargetImportError as e:
        raise OptionError("type", str(e)) from None
    if not (isinstance(obj, type) and issubclass(obj, Daemon)):
        raise OptionError("type", f"{target!r} is not a daemonapp.Daemon subclass")
    return obj


def class_options(cls: type[Daemon]) -> tuple[frozenset[str], frozenset[str]]:
    """The (accepted, required) keyword options of ``cls``, besides Daemon.ATTRIBUTES.

    Walks the __init__s that pass ``**kw`` on down the MRO, as far as Daemon. A
    parameter is required when some __init__ has it without a default and no
    __init__ nearer to ``cls`` names it (a subclass that names it decides).
    """
    accepted: set[str] = set()
    required: set[str] = set()
    for klass in cls.__mro__:
        if klass is Daemon or klass is object:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            break
        more = False
        for param in list(signature.parameters.values())[1:]:
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                if param.name not in accepted and param.default is param.empty:
                    required.add(param.name)
                accepted.add(param.name)
            elif param.kind is param.VAR_KEYWORD:
                more = True
        if not more:
            break
    accepted.discard("name")
    required.discard("name")
    return frozenset(accepted), frozenset(required)


def build_daemon(section: Mapping[str, Any], *, name: str, **extra: Any) -> Daemon:
    """Build the daemon that ``section`` describes, as ``type`` plus its options.

    ``section`` holds ``type`` (a short name, "package.module:Class" or a class)
    and Daemon attributes or parameters of the class; ``extra`` adds options the
    caller supplies (a child's ``directory``), which the section may not set.
    Raises OptionError (a bad or missing value, with its key) or
    UnknownOptionError (a TypeError: a key neither Daemon nor the class knows).
    """
    if not isinstance(section, Mapping):
        raise OptionError("type", f"expected a mapping with a type and options, got {section!r}")
    if "type" not in section:
        raise OptionError("type", 'missing: expected a short name like "dir_queue" or '
                                  '"package.module:Class"')
    cls = resolve_type(section["type"])
    accepted, required = class_options(cls)
    options: dict[str, Any] = {}
    for key, value in section.items():
        if key == "type":
            continue
        if not isinstance(key, str):
            raise UnknownOptionError(str(key), f"expected an option name, got {key!r}")
        if key == "name":
            raise OptionError("name", "a daemon's name is given by its parent; remove this key")
        if key in extra:
            raise OptionError(key, "is set for each daemon by its parent; remove this key")
        if key not in Daemon.ATTRIBUTES and key not in accepted:
            params = ", ".join(sorted(accepted)) or "none"
            raise UnknownOptionError(
                key, f"unknown to both Daemon and {cls.__name__}: expected a Daemon attribute "
                     f"({', '.join(Daemon.ATTRIBUTES)}) or a parameter of {cls.__name__} "
                     f"({params})")
        options[key] = value
    for key in extra:
        if key not in Daemon.ATTRIBUTES and key not in accepted:
            raise UnknownOptionError(
                key, f"{cls.__name__} has no parameter {key!r}, which its parent supplies")
    options.update(extra)
    for key in sorted(required):
        if key not in options:
            raise OptionError(key, f"missing: {cls.__name__} needs this parameter")
    return cls(name=name, **options)
