"""Load a daemonapp YAML file into a validated Config, and build the DaemonApp from it.

Every error in a file is collected and reported at once as
``FILE:LINE: dotted.key: what is wrong and what is expected``; nothing is started
when there is one. Only :func:`load_config` reads files; :func:`build_app` is the
one place that creates state (the state directory).
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemonapp.configfile import ConfigFileError, LineMapping, LineSequence, read_document
from daemonapp.daemon import Daemon, OptionError
from daemonapp.daemons._build import BUNDLED_DAEMONS, class_options, daemon_types, resolve_type
from daemonapp.durations import parse_duration
from daemonapp.state_dir import (
    StateDirError,
    ensure_state_dir,
    path_problems,
    state_dir_problems,
)

if TYPE_CHECKING:
    from daemonapp.app import DaemonApp

__all__ = [
    "BUNDLED_DAEMONS",
    "AppSettings",
    "CgiSettings",
    "Config",
    "ConfigError",
    "DaemonSpec",
    "ListenerSpec",
    "LockSettings",
    "LogSettings",
    "build_app",
    "build_listeners",
    "daemon_types",
    "ensure_state_dir",
    "load_config",
    "nested_options",
    "prepare_state_dir",
    "resolve_daemon_type",
    "stop_unless_listening",
    "unix_socket_path",
]

#: The top-level sections of a file.
SECTIONS = ("app", "listeners", "daemons", "cgi")
#: The keys of ``app:`` and of its ``log:`` and ``locks:`` mappings.
APP_KEYS = ("stay_alive_for", "shutdown_after", "shutdown_if_idle", "stop_timeout",
            "time_slice", "state_dir", "log", "locks")
LOG_KEYS = ("format", "level", "file")
LOCK_KEYS = ("url", "ttl", "wait")
#: The keys of ``cgi:``.
CGI_KEYS = ("min_load", "max_load", "start_timeout", "lock_timeout", "listener")
#: Listener protocols (DESIGN §4).
PROTOCOLS = ("fastcgi", "scgi", "http")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
#: Other spellings of a level: Python's logging says "warning", twisted.logger "warn".
LOG_LEVEL_ALIASES = {"warning": "warn"}

#: How much of a value, a key and a whole message an error shows (hostile files).
MAX_SHOWN_VALUE = 200
MAX_SHOWN_KEY = 200
MAX_MESSAGE = 2000
#: A lock's flock file, NAME.lock, is one file name (255 bytes at most).
MAX_LOCK_NAME_BYTES = 250

_PATH_NAMES = frozenset({"path", "directory", "dir", "file", "base_directory", "base_dir"})
_PATH_SUFFIXES = ("_path", "_dir", "_directory", "_file")


class ConfigError(Exception):
    """A configuration file has errors; ``messages`` holds one line per error."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


# ---------------------------------------------------------------- YAML with lines


# The YAML reader (daemonapp.configfile) keeps the line and source text of each key.
_Mapping = LineMapping
_Sequence = LineSequence


def _line(mapping: Mapping[Any, Any], key: object) -> int:
    if isinstance(mapping, _Mapping):
        return mapping.key_lines.get(key, mapping.line)
    return 0


def _dotted_line(mapping: Mapping[Any, Any], dotted: str, default: int) -> int:
    """The line of a dotted key ("queue.run_every") inside nested mappings."""
    line = default
    for part in dotted.split("."):
        if not isinstance(mapping, _Mapping) or part not in mapping:
            break
        line = mapping.key_lines.get(part, line)
        mapping = mapping[part]
    return line


def _start_line(value: object) -> int:
    return value.line if isinstance(value, _Mapping | _Sequence) else 0


def _raw(mapping: Mapping[Any, Any], key: str) -> object:
    """The value of ``key``; for a mode (``mode``, ``*_mode``) its source text.

    YAML 1.1 reads ``0660`` as the number 432: the text is what the user meant.
    """
    value = mapping[key]
    if (key == "mode" or key.endswith("_mode")) and isinstance(mapping, _Mapping) \
            and key in mapping.texts and value is not None:
        return mapping.texts[key]
    return value


# -------------------------------------------------------------------- the result


@dataclass(frozen=True)
class LogSettings:
    """``app.log``: how `daemonapp run` writes its log."""

    format: str = "text"
    level: str = "info"
    file: str | None = None


@dataclass(frozen=True)
class LockSettings:
    """``app.locks``: the highlander lock backend (PostgreSQL when url is set)."""

    url: str | None = None
    ttl: float = 30.0
    wait: float = 10.0


@dataclass(frozen=True)
class AppSettings:
    """The ``app:`` section."""

    state_dir: str
    stay_alive_for: float | None = None
    shutdown_after: float | None = None
    shutdown_if_idle: float | None = None
    stop_timeout: float = 30.0
    time_slice: float = 0.010
    log: LogSettings = field(default_factory=LogSettings)
    locks: LockSettings = field(default_factory=LockSettings)
    #: Where state_dir was set (0: the default ./var): run-time errors point there.
    state_dir_line: int = 0


@dataclass(frozen=True)
class DaemonSpec:
    """A validated daemon section: calling it builds the daemon.

    ``spec(name=..., **overrides)`` returns a new instance; this is also what a
    class listed in ``NESTED_DAEMON_OPTIONS`` receives for such an option.
    """

    name: str
    type_name: str
    cls: type[Daemon]
    options: Mapping[str, Any]
    line: int = 0

    def __call__(self, *, name: str | None = None, **overrides: Any) -> Daemon:
        options = {**self.options, **overrides}
        return self.cls(name=self.name if name is None else name, **options)


@dataclass(frozen=True)
class ListenerSpec:
    """A validated ``listeners:`` item (options converted by LISTENER_OPTIONS)."""

    index: int
    options: Mapping[str, Any]
    line: int = 0
    key_lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return str(self.options.get("protocol"))

    @property
    def endpoint(self) -> str | None:
        value = self.options.get("endpoint")
        return None if value is None else str(value)


@dataclass(frozen=True)
class CgiSettings:
    """The ``cgi:`` section, read by the CGI frontend through the state_dir sidecar."""

    min_load: float = 0.0
    max_load: float | None = None
    start_timeout: float = 10.0
    lock_timeout: float = 10.0
    listener: int | None = None


@dataclass(frozen=True)
class Config:
    """A validated configuration file."""

    path: str
    base_dir: str
    app: AppSettings
    listeners: tuple[ListenerSpec, ...] = ()
    daemons: tuple[DaemonSpec, ...] = ()
    cgi: CgiSettings = field(default_factory=CgiSettings)
    cgi_configured: bool = False

    def cgi_listener(self) -> ListenerSpec | None:
        """The listener the CGI frontend talks to: ``cgi.listener``, else the first
        scgi, else the first fastcgi listener on a Unix socket."""
        if self.cgi.listener is not None:
            return self.listeners[self.cgi.listener]
        for protocol in ("scgi", "fastcgi"):
            for spec in self.listeners:
                if spec.protocol == protocol and unix_socket_path(spec.endpoint,
                                                                  self.base_dir):
                    return spec
        return None


def unix_socket_path(endpoint: str | None, base_dir: str) -> str | None:
    """The socket path of a ``unix:`` endpoint string, absolute; None for others."""
    if not endpoint or not endpoint.startswith("unix:"):
        return None
    rest = endpoint[len("unix:"):]
    # Twisted's endpoint grammar: ':' separates arguments, '\:' is a literal colon.
    parts = re.split(r"(?<!\\):", rest)
    path = None
    for part in parts:
        if part.startswith("address="):
            path = part[len("address="):]
            break
        if "=" not in part and path is None:
            path = part
    if not path:
        return None
    path = path.replace("\\:", ":")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


# ------------------------------------------------------------------ daemon types


def resolve_daemon_type(type_name: str, *,
                        types: Mapping[str, str] | None = None) -> type[Daemon]:
    """The Daemon class for a short name or "package.module:Class" (ValueError if not).

    ``types``: `daemon_types()`, read once by a caller that resolves many names.
    """
    try:
        return resolve_type(type_name, types=types)
    except OptionError as e:
        raise ValueError(e.message) from None


def class_parameters(cls: type[Daemon]) -> tuple[frozenset[str], frozenset[str]]:
    """The (accepted, required) keyword parameters of ``cls`` besides Daemon.ATTRIBUTES."""
    return class_options(cls)


def nested_options(cls: type[Daemon]) -> dict[str, frozenset[str]]:
    """A class's ``NESTED_DAEMON_OPTIONS``: option name -> keys its parent supplies.

    Declared as a tuple of option names, or a mapping of option name to the keys
    the class sets on each child it builds (a queue's ``directory``).
    """
    declared = getattr(cls, "NESTED_DAEMON_OPTIONS", ())
    if isinstance(declared, Mapping):
        return {str(k): frozenset(v) for k, v in declared.items()}
    return {str(k): frozenset() for k in declared}


def _is_path_option(cls: type, key: str) -> bool:
    declared = getattr(cls, "PATH_OPTIONS", None)
    if declared is not None:
        return key in declared
    return key in _PATH_NAMES or key.endswith(_PATH_SUFFIXES)


def _resolve_path(value: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


# -------------------------------------------------------------------- validation

_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")


def _as_written(root: Mapping[Any, Any] | None, dotted: str, message: str) -> str:
    """Quote a scalar as the user wrote it, not as YAML 1.1 read it.

    ``run_every: on`` reads as True and ``0660`` as 432: a message saying "got True"
    would puzzle; "got 'on'" does not.
    """
    parent: object = root
    parts = dotted.split(".")
    for part in parts[:-1]:
        match = _INDEX.match(part)
        name, index = (match.group(1), int(match.group(2))) if match else (part, None)
        if not isinstance(parent, Mapping) or name not in parent:
            return message
        parent = parent[name]
        if index is not None:
            if not isinstance(parent, list) or index >= len(parent):
                return message
            parent = parent[index]
    last = parts[-1]
    if not isinstance(parent, _Mapping) or last not in parent.texts:
        return message
    value, text = parent[last], parent.texts[last]
    if isinstance(value, str) or text == str(value):
        return message
    return message.replace(f"got {value!r}", f"got {text!r}")



def _clip(text: str, limit: int = 0) -> str:
    """``text``, cut to about ``limit`` characters (MAX_MESSAGE by default) with a note."""
    limit = limit or MAX_MESSAGE
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters in all)"


def _suggest(key: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Checker:
    """Collects the errors of one file."""

    def __init__(self, path: str, base_dir: str) -> None:
        self.path = path
        self.base_dir = base_dir
        self.messages: list[tuple[int, str]] = []
        self.root: Mapping[Any, Any] | None = None

    def error(self, line: int, key: str, message: str) -> None:
        message = _as_written(self.root, key, message)
        # A value quoted in a message ("got ...") is shown in part: a 1 MiB scalar or a
        # mapping reached through aliases must not become a 1 MiB line of output.
        head, got, value = message.rpartition("got ")
        if got:
            message = head + got + _clip(value, MAX_SHOWN_VALUE)
        self.messages.append((line, f"{self.path}:{line}: {_clip(key, MAX_SHOWN_KEY)}: "
                                    f"{_clip(message, MAX_MESSAGE)}"))

    def mapping(self, value: object, line: int, key: str) -> Mapping[Any, Any] | None:
        if value is None:
            return _Mapping()
        if not isinstance(value, dict):
            self.error(line, key, f"expected a mapping of keys to values, got {value!r}")
            return None
        if isinstance(value, _Mapping):
            for dup, dup_line in value.duplicates:
                self.error(dup_line, f"{key}.{dup}", "duplicate key: each key may appear once")
        return value

    def unknown(self, mapping: Mapping[Any, Any], prefix: str, known: Iterable[str],
                what: str) -> None:
        known = tuple(known)
        for key in mapping:
            if key not in known:
                self.error(_line(mapping, key), f"{prefix}.{key}",
                           f"unknown {what}{_suggest(key, known)}; expected one of "
                           f"{', '.join(known)}")

    def convert(self, mapping: Mapping[Any, Any], key: str, prefix: str,
                convert: Callable[[Any], Any], default: Any) -> Any:
        if key not in mapping:
            return default
        try:
            return convert(_raw(mapping, key))
        except ValueError as e:
            self.error(_line(mapping, key), f"{prefix}.{key}", str(e))
            return default


def _duration(value: object) -> float:
    return parse_duration(value)


def _optional_duration(value: object) -> float | None:
    return None if value is None else parse_duration(value)


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return seconds


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a number of zero or more, got {value!r}")
    return float(value)


def _optional_number(value: object) -> float | None:
    return None if value is None else _number(value)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value.lower()
    return convert


def _log_level(value: object) -> str:
    name = value.lower() if isinstance(value, str) else ""
    name = LOG_LEVEL_ALIASES.get(name, name)
    if name not in LOG_LEVELS:
        raise ValueError("expected one of debug, info, warn (or warning), error, critical, "
                         f"got {value!r}")
    return name


class _Validator:
    """Turns the parsed document into a Config, collecting every error."""

    def __init__(self, checker: _Checker) -> None:
        self.check = checker
        self.base_dir = checker.base_dir
        self._types: dict[str, str] | None = None
        # type name -> its class, or why it is none: a file with thousands of sections
        # resolves each name (entry points, imports) once.
        self._resolved: dict[str, type[Daemon] | ValueError] = {}

    def daemon_class(self, type_name: str) -> type[Daemon]:
        """resolve_daemon_type, once per name and with one read of the entry points."""
        found = self._resolved.get(type_name)
        if found is None:
            if self._types is None:
                self._types = daemon_types()
            try:
                found = resolve_daemon_type(type_name, types=self._types)
            except ValueError as e:
                found = e
            self._resolved[type_name] = found
        if isinstance(found, ValueError):
            raise ValueError(str(found))
        return found

    def path(self, value: object) -> str:
        return _resolve_path(_text(value), self.base_dir)

    def optional_path(self, value: object) -> str | None:
        return None if value is None else self.path(value)

    # ---------------------------------------------------------------- app

    def app(self, raw: object, line: int) -> AppSettings:
        check = self.check
        default_state = _resolve_path("./var", self.base_dir)
        section = check.mapping(raw, line, "app")
        if section is None:
            return AppSettings(state_dir=default_state)
        check.unknown(section, "app", APP_KEYS, "app option")
        get = check.convert
        log_settings = LogSettings()
        if "log" in section:
            log_raw = check.mapping(section["log"], _line(section, "log"), "app.log")
            if log_raw is not None:
                check.unknown(log_raw, "app.log", LOG_KEYS, "log option")
                log_settings = LogSettings(
                    format=get(log_raw, "format", "app.log", _choice(LOG_FORMATS), "text"),
                    level=get(log_raw, "level", "app.log", _log_level, "info"),
                    file=get(log_raw, "file", "app.log", self.optional_path, None),
                )
        lock_settings = LockSettings()
        if "locks" in section:
            locks_raw = check.mapping(section["locks"], _line(section, "locks"), "app.locks")
            if locks_raw is not None:
                check.unknown(locks_raw, "app.locks", LOCK_KEYS, "locks option")
                lock_settings = LockSettings(
                    url=get(locks_raw, "url", "app.locks",
                            lambda v: None if v is None else _text(v), None),
                    ttl=get(locks_raw, "ttl", "app.locks", _positive_duration, 30.0),
                    wait=get(locks_raw, "wait", "app.locks", _duration, 10.0),
                )
        return AppSettings(
            state_dir=get(section, "state_dir", "app", self.path, default_state),
            stay_alive_for=get(section, "stay_alive_for", "app", _optional_duration, None),
            shutdown_after=get(section, "shutdown_after", "app", _optional_duration, None),
            shutdown_if_idle=get(section, "shutdown_if_idle", "app", _optional_duration, None),
            stop_timeout=get(section, "stop_timeout", "app", _duration, 30.0),
            time_slice=get(section, "time_slice", "app", _positive_duration, 0.010),
            log=log_settings,
            locks=lock_settings,
            state_dir_line=_line(section, "state_dir") if "state_dir" in section else 0,
        )

    # ------------------------------------------------------------ daemons

    def daemons(self, raw: object, line: int) -> tuple[DaemonSpec, ...]:
        section = self.check.mapping(raw, line, "daemons")
        if section is None:
            return ()
        specs = []
        for name, body in section.items():
            spec = self.daemon(name, body, _line(section, name), f"daemons.{name}",
                               nested=False)
            if spec is not None:
                specs.append(spec)
        return tuple(specs)

    def daemon(self, name: object, raw: object, line: int, prefix: str, *,
               nested: bool, supplied: frozenset[str] = frozenset(),
               default_type: str | None = None) -> DaemonSpec | None:
        """Validate one daemon section.

        A nested section (``nested``) is built later by its parent, which sets the
        ``supplied`` keys (a queue's directory) on each child; it is checked key by
        key but not built here.
        """
        check = self.check
        if not nested and (not isinstance(name, str) or not name or "/" in name):
            check.error(line, prefix, "a daemon name is a non-empty string without '/', "
                        f"got {name!r}")
            return None
        body = check.mapping(raw, line, prefix)
        if body is None:
            return None
        if "type" not in body and default_type is None:
            check.error(line, f"{prefix}.type", 'missing: expected a short name like '
                        '"file_cleanup" or "package.module:Class"')
            return None
        type_name = body.get("type", default_type)
        if not isinstance(type_name, str):
            check.error(_line(body, "type"), f"{prefix}.type",
                        f'expected a short name or "package.module:Class", got {type_name!r}')
            return None
        try:
            cls = self.daemon_class(type_name)
        except ValueError as e:
            check.error(_line(body, "type"), f"{prefix}.type", str(e))
            return None
        accepted, required = class_parameters(cls)
        nested_keys = nested_options(cls)
        nested_types = getattr(cls, "NESTED_DEFAULT_TYPES", {})
        options: dict[str, Any] = {}
        misspelt: set[str] = set()  # parameters an unknown key probably meant
        ok = True
        for key in body:
            if key == "type":
                continue
            key_line = _line(body, key)
            dotted = f"{prefix}.{key}"
            if key == "name":
                check.error(key_line, dotted, "a daemon's name is its section's key; "
                            "remove this key")
                ok = False
            elif key in supplied:
                check.error(key_line, dotted, "is set for each daemon by its parent; "
                            "remove this key")
                ok = False
            elif key in Daemon.ATTRIBUTES:
                options[key] = _raw(body, key)
            elif key in accepted:
                value = _raw(body, key)
                if key in nested_keys:
                    child = self.daemon(key, value, key_line, dotted, nested=True,
                                        supplied=nested_keys[key],
                                        default_type=nested_types.get(key))
                    if child is None:
                        ok = False
                        continue
                    # The parent receives the checked section as a plain mapping and
                    # builds each child with daemonapp.daemons._build.build_daemon.
                    value = {"type": child.type_name, **child.options}
                elif isinstance(value, str) and _is_path_option(cls, key):
                    value = _resolve_path(value, self.base_dir)
                options[key] = value
            else:
                known = sorted(accepted)
                hint = _suggest(key, (*Daemon.ATTRIBUTES, *known))
                misspelt.update(difflib.get_close_matches(str(key), known, n=1))
                check.error(
                    key_line, dotted,
                    f"unknown to both Daemon and {type_name}{hint}; "
                    f"expected a Daemon attribute ({', '.join(Daemon.ATTRIBUTES)})"
                    + (f" or a parameter of {cls.__name__} ({', '.join(known)})" if known
                       else f" ({cls.__name__} takes no parameters of its own)"))
                ok = False
        if not self._check_attributes(cls, options, body, line, prefix):
            ok = False
        # A nested section's parent supplies some parameters (a queue's directory) and
        # checks the rest when it is built below.
        for key in sorted(required) if not nested else ():
            if key not in body and key not in misspelt:
                check.error(line, f"{prefix}.{key}",
                            f"missing: {cls.__name__} needs this parameter")
                ok = False
        if not ok:
            return None
        spec = DaemonSpec(name=str(name), type_name=type_name, cls=cls, options=options,
                          line=line)
        if nested:
            return spec
        try:
            spec()
        except OptionError as e:
            check.error(_dotted_line(body, e.key, line), f"{prefix}.{e.key}", e.message)
            return None
        except Exception as e:
            check.error(line, prefix, f"{type_name} rejected this section: "
                        f"{type(e).__name__}: {e}")
            return None
        return spec

    def _check_attributes(self, cls: type[Daemon], options: Mapping[str, Any],
                          body: Mapping[Any, Any], line: int, prefix: str) -> bool:
        """Check each Daemon attribute of a section on its own, so all errors show."""
        ok = True
        if not options.get("run_every") and not cls.run_every:
            self.check.error(line, f"{prefix}.run_every",
                             'missing: expected a duration above zero, like "30s"')
            ok = False
        for key, value in options.items():
            if key not in Daemon.ATTRIBUTES:
                continue
            trial = {key: value}
            if key != "run_every":
                trial["run_every"] = 1.0
            try:
                Daemon(**trial)
            except OptionError as e:
                self.check.error(_line(body, key), f"{prefix}.{key}", e.message)
                ok = False
            except (TypeError, ValueError) as e:
                self.check.error(_line(body, key), f"{prefix}.{key}", str(e))
                ok = False
        lock = options.get("lock")
        # the flock file is state_dir/locks/NAME.lock: one file name, at most 255 bytes
        if isinstance(lock, str) and len(lock.encode()) > MAX_LOCK_NAME_BYTES:
            self.check.error(_line(body, "lock"), f"{prefix}.lock",
                             f"a lock name has at most {MAX_LOCK_NAME_BYTES} bytes (its file "
                             f"is locks/NAME.lock), got {len(lock.encode()):,}")
            ok = False
        return ok

    # ---------------------------------------------------------- listeners

    def listeners(self, raw: object, line: int) -> tuple[ListenerSpec, ...]:
        check = self.check
        if raw is None:
            return ()
        if not isinstance(raw, list):
            check.error(line, "listeners", f"expected a list of listener items, got {raw!r}")
            return ()
        try:
            converters: dict[str, Callable[[Any], Any]] = dict(
                _listeners_module().LISTENER_OPTIONS)
        except _ListenersUnavailable as e:
            check.error(line, "listeners", str(e))
            return ()
        specs = []
        inherited: list[int] = []
        lines = raw.lines if isinstance(raw, _Sequence) else [line] * len(raw)
        for index, item in enumerate(raw):
            prefix = f"listeners[{index}]"
            body = check.mapping(item, lines[index], prefix)
            if body is None:
                continue
            item_line = _start_line(body) or lines[index]
            options: dict[str, Any] = {}
            ok = True
            protocol = body.get("protocol")
            if "protocol" not in body:
                check.error(item_line, f"{prefix}.protocol",
                            f"missing: expected one of {', '.join(PROTOCOLS)}")
                ok = False
            elif protocol not in PROTOCOLS:
                check.error(_line(body, "protocol"), f"{prefix}.protocol",
                            f"expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
                ok = False
            for key in body:
                dotted = f"{prefix}.{key}"
                value = _raw(body, key)
                if key not in converters:
                    check.error(_line(body, key), dotted,
                                f"unknown listener option{_suggest(key, converters)}; "
                                f"expected one of {', '.join(sorted(converters))}")
                    ok = False
                    continue
                try:
                    options[key] = converters[key](value)
                except (ValueError, TypeError) as e:
                    check.error(_line(body, key), dotted, str(e))
                    ok = False
            if not ok:
                continue
            endpoint = options.get("endpoint")
            on_fd0 = str(endpoint) == "fd:0" or (protocol == "fastcgi" and endpoint is None)
            if on_fd0:
                inherited.append(index)
                if len(inherited) > 1:
                    check.error(_line(body, "endpoint"), f"{prefix}.endpoint",
                                "only one listener may serve the inherited fd 0 "
                                "(a fastcgi item with no endpoint, or endpoint: fd:0)")
                    continue
            elif endpoint is None:
                check.error(item_line, f"{prefix}.endpoint",
                            'missing: expected a Twisted endpoint like '
                            '"unix:./run/app.sock" or "tcp:8080:interface=127.0.0.1"')
                continue
            key_lines = {str(key): _line(body, key) for key in body}
            specs.append(ListenerSpec(index=index, options=options, line=item_line,
                                      key_lines=key_lines))
        return tuple(specs)

    def try_listeners(self, listeners: tuple[ListenerSpec, ...],
                      daemons: tuple[DaemonSpec, ...], state_dir: str) -> None:
        """Build each listener once, unstarted, on a Clock: imports and cross-key rules
        (wsgi or native, jobs needs a dispatcher) are checked before anything starts."""
        try:
            build = _listeners_module().build_listener
        except _ListenersUnavailable:
            return  # reported by listeners() already
        from twisted.internet.task import Clock

        has_jobs = any(callable(getattr(spec.cls, "job_status", None)) for spec in daemons)
        for spec in listeners:
            prefix = f"listeners[{spec.index}]"
            if spec.options.get("jobs") and not has_jobs:
                self.check.error(spec.key_lines.get("jobs", spec.line), f"{prefix}.jobs",
                                 "jobs: true needs a job_dispatcher daemon in daemons:")
                continue
            try:
                build(dict(spec.options), reactor=Clock(), base_dir=self.base_dir,
                      state_dir=state_dir, jobs_status=_no_job_status)
            except OptionError as e:
                self.check.error(spec.key_lines.get(e.key, spec.line), f"{prefix}.{e.key}",
                                 e.message)
            except Exception as e:
                self.check.error(spec.line, prefix, f"cannot build this listener: "
                                 f"{type(e).__name__}: {e}")

    # -------------------------------------------------------------- paths

    def paths(self, app: AppSettings, app_line: int, listeners: tuple[ListenerSpec, ...],
              on_disk: bool, owners: Iterable[int]) -> None:
        """state_dir and the log file: lengths always; ``on_disk``, what `run` will find."""
        check = self.check
        state_line = app.state_dir_line or app_line
        spawned = any(spec.protocol == "fastcgi" and spec.endpoint in (None, "fd:0")
                      for spec in listeners)
        if on_disk:
            problems = state_dir_problems(app.state_dir, owners=owners, spawned=spawned)
        else:
            problems = path_problems(app.state_dir, what="state_dir")
        for problem in problems:
            check.error(state_line, "app.state_dir", problem)
        log_file = app.log.file
        if log_file is None:
            return
        section = self.check.root.get("app") if self.check.root is not None else None
        log_section = section.get("log") if isinstance(section, Mapping) else None
        log_line = _line(log_section, "file") if isinstance(log_section, Mapping) else app_line
        for problem in path_problems(log_file, what="the log file"):
            check.error(log_line, "app.log.file", problem)
        directory = os.path.dirname(log_file)
        # `run` creates state_dir before it opens the log, and nothing else.
        if on_disk and directory != app.state_dir and not os.path.isdir(directory):
            check.error(log_line, "app.log.file",
                        f"the directory {directory} does not exist: create it, or keep the "
                        "log in state_dir (created by `daemonapp run`)")

    # ---------------------------------------------------------------- cgi

    def cgi(self, raw: object, line: int, listeners: tuple[ListenerSpec, ...]) -> CgiSettings:
        check = self.check
        section = check.mapping(raw, line, "cgi")
        if section is None:
            return CgiSettings()
        check.unknown(section, "cgi", CGI_KEYS, "cgi option")
        get = check.convert
        min_load = get(section, "min_load", "cgi", _number, 0.0)
        max_load = get(section, "max_load", "cgi", _optional_number, None)
        if max_load is not None and max_load < min_load:
            check.error(_line(section, "max_load"), "cgi.max_load",
                        f"expected a load of at least min_load ({min_load:g}), got {max_load:g}")
        listener: int | None = None
        if "listener" in section:
            value = section["listener"]
            key_line = _line(section, "listener")
            by_index = {spec.index: position for position, spec in enumerate(listeners)}
            if isinstance(value, int) and not isinstance(value, bool):
                if value in by_index:
                    listener = by_index[value]
            elif isinstance(value, str):
                for position, spec in enumerate(listeners):
                    if spec.endpoint == value:
                        listener = position
            if listener is None:
                check.error(key_line, "cgi.listener",
                            "expected the index of a listener item (0 is the first) or its "
                            f"endpoint string, got {value!r}")
            elif listeners[listener].protocol not in ("scgi", "fastcgi") or \
                    unix_socket_path(listeners[listener].endpoint, self.base_dir) is None:
                check.error(key_line, "cgi.listener",
                            "expected an scgi or fastcgi listener on a unix: endpoint")
                listener = None
        return CgiSettings(
            min_load=min_load,
            max_load=max_load,
            start_timeout=get(section, "start_timeout", "cgi", _positive_duration, 10.0),
            lock_timeout=get(section, "lock_timeout", "cgi", _duration, 10.0),
            listener=listener,
        )


def _no_job_status(job_id: int) -> Any:
    return None


def _listeners_module() -> Any:
    """daemonapp.listeners, imported when a config has listeners.

    An ImportError there is an environment problem (a dependency of Twisted missing
    or broken, e.g. Debian's pyOpenSSL without service_identity ahead of the venv),
    reported with its real cause rather than as a configuration mistake.
    """
    try:
        return importlib.import_module("daemonapp.listeners")
    except ImportError as e:
        raise _ListenersUnavailable(f"listeners cannot be built here: importing "
                                    f"daemonapp.listeners failed: {e}") from e


class _ListenersUnavailable(Exception):
    """daemonapp.listeners (or one of its dependencies) cannot be imported."""


def load_config(path: str | os.PathLike[str], *, check_state_dir: bool = False,
                owners: Iterable[int] = ()) -> Config:
    """Read and validate a configuration file; raise ConfigError with every error.

    ``check_state_dir``: also look at the file system as `daemonapp run` will (for
    ``check``, ``run`` and twistd): state_dir must be private, ours and no symlink
    (``owners``: uids allowed to own it besides the effective one, twistd's --uid),
    and a log file's directory must exist or be state_dir. Nothing is written.
    """
    path_text = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path_text))
    try:
        document = read_document(path_text)
    except ConfigFileError as e:
        where = path_text if e.line is None else f"{path_text}:{e.line}"
        raise ConfigError([f"{where}: {_clip(e.problem)}"]) from None
    checker = _Checker(path_text, base_dir)
    if document is None:
        document = _Mapping()
    if not isinstance(document, dict):
        raise ConfigError([f"{path_text}:1: (top level): expected a mapping with the "
                           f"sections {', '.join(SECTIONS)}"])
    checker.root = document
    root = checker.mapping(document, 1, "(top level)") or _Mapping()
    for key in root:
        if key not in SECTIONS:
            checker.error(_line(root, key), str(key),
                          f"unknown section{_suggest(key, SECTIONS)}; expected one of "
                          f"{', '.join(SECTIONS)}")
    validator = _Validator(checker)
    app = validator.app(root.get("app"), _line(root, "app"))
    listeners = validator.listeners(root.get("listeners"), _line(root, "listeners"))
    daemons = validator.daemons(root.get("daemons"), _line(root, "daemons"))
    validator.try_listeners(listeners, daemons, app.state_dir)
    cgi = validator.cgi(root.get("cgi"), _line(root, "cgi"), listeners)
    validator.paths(app, _line(root, "app") or 1, listeners, check_state_dir, owners)
    if checker.messages:
        raise ConfigError([message for _, message in
                           sorted(checker.messages, key=lambda item: item[0])])
    return Config(path=path_text, base_dir=base_dir, app=app, listeners=listeners,
                  daemons=daemons, cgi=cgi, cgi_configured="cgi" in root)


# ----------------------------------------------------------------------- building


def prepare_state_dir(config: Config, *, owners: Iterable[int] = ()) -> str:
    """Create (0700) and check the config's state_dir; ConfigError (FILE:LINE:
    app.state_dir: ...) when it is refused (a symlink, open to writes by others,
    another user's, a path too long)."""
    try:
        return ensure_state_dir(config.app.state_dir, owners=owners)
    except StateDirError as e:
        line = config.app.state_dir_line or 1
        raise ConfigError([f"{config.path}:{line}: app.state_dir: {e}"]) from None


def build_listeners(config: Config, app: DaemonApp, *,
                    only: Iterable[ListenerSpec] | None = None) -> None:
    """Build the listener items with daemonapp.listeners.build_listener and add them.

    Raises ConfigError (FILE:LINE: listeners[i].key: ...) for an item it cannot build.
    """
    specs = tuple(config.listeners if only is None else only)
    if not specs:
        return
    try:
        build = _listeners_module().build_listener
    except _ListenersUnavailable as e:
        raise ConfigError([f"{config.path}:{specs[0].line}: listeners: {e}"]) from None
    jobs_status = None
    for daemon in app.daemons.values():
        if callable(getattr(daemon, "job_status", None)):
            jobs_status = daemon.job_status  # type: ignore[attr-defined]
            break
    messages = []
    for spec in specs:
        prefix = f"{config.path}:{{line}}: listeners[{spec.index}]"
        try:
            listener = build(dict(spec.options), reactor=app.reactor,
                             base_dir=config.base_dir, state_dir=config.app.state_dir,
                             jobs_status=jobs_status)
        except OptionError as e:
            line = spec.key_lines.get(e.key, spec.line)
            messages.append(prefix.format(line=line) + f".{e.key}: {e.message}")
            continue
        app.add_listener(listener)
    if messages:
        raise ConfigError(messages)


def build_app(config: Config, *, reactor: Any = None, status_server: bool | None = None,
              status_socket: str | None = None, listeners: bool = True,
              owners: Iterable[int] = (), **app_overrides: Any) -> DaemonApp:
    """Build the DaemonApp a Config describes: daemons, listeners, status socket.

    Creates the state directory (0700) with `prepare_state_dir`. ``app_overrides`` are
    DaemonApp keywords
    (``stop_reactor=False``, ``clock=``, ...). ``status_server`` None means: serve
    the status socket when the reactor can listen on Unix sockets; ``status_socket``
    its path (default ``state_dir/status.sock``).
    """
    from daemonapp.app import DaemonApp

    settings = config.app
    prepare_state_dir(config, owners=owners)
    kwargs: dict[str, Any] = {
        "stay_alive_for": settings.stay_alive_for,
        "shutdown_after": settings.shutdown_after,
        "shutdown_if_idle": settings.shutdown_if_idle,
        "stop_timeout": settings.stop_timeout,
        "time_slice": settings.time_slice,
        "state_dir": settings.state_dir,
        "lock_wait": settings.locks.wait,
        "reactor": reactor,
    }
    kwargs.update(app_overrides)
    if settings.locks.url is not None and "locks" not in app_overrides:
        kwargs["locks"] = _lock_provider(config, kwargs.get("reactor") or kwargs.get("clock"))
    app = DaemonApp(**kwargs)
    for spec in config.daemons:
        app.add(spec())
    if listeners:
        build_listeners(config, app)
    if status_server is None:
        status_server = hasattr(app.reactor, "adoptStreamPort")
    if status_server:
        from daemonapp.status import StatusService, status_socket_path

        path = status_socket or status_socket_path(settings.state_dir)
        StatusService(app, path).setServiceParent(app)  # type: ignore[no-untyped-call]
    return app


def not_listening(app: DaemonApp) -> list[str]:
    """The names of the app's listeners that are not bound (after it started)."""
    return [str(getattr(listener, "name", listener)) for listener in app.listeners
            if not getattr(listener, "running", False)
            or getattr(listener, "port", True) is None]


def stop_unless_listening(app: DaemonApp) -> bool:
    """Stop the app (exit status 1) when a listener failed to bind; True when all are.

    The entry points call this once the app has started: a listener that cannot bind
    (an address in use) must not leave a half-started process behind.
    """
    if app.stop_reason is not None:
        return True  # already stopping (an idle exit at start): its listeners are closing
    failed = not_listening(app)
    if not failed:
        return True
    from twisted.logger import Logger

    Logger(namespace="daemonapp.config").critical(
        "not listening: {listeners}; stopping", listeners=", ".join(failed))
    app.stop(f"listener(s) not listening: {', '.join(failed)}", 1)
    return False


def _lock_provider(config: Config, reactor: Any) -> Any:
    """The PostgreSQL lease provider of ``app.locks.url``."""
    from daemonapp import locks

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return locks.LockProvider(reactor=reactor, state_dir=config.app.state_dir,
                              url=config.app.locks.url, ttl=config.app.locks.ttl)
