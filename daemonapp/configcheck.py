"""Validate a configuration file: every value checked, every error reported at once.

`load_config` reads the file (daemonapp.configfile keeps each key's line and source
text) and turns it into a Config (daemonapp.configmodel), collecting each error as
``FILE:LINE: dotted.key: what is wrong and what is expected``. Values are checked by
the rules' owners (daemonapp.options for Daemon attributes, daemonapp.listeners'
check_listener for listener items, daemonapp.durations); a daemon is built once, by
its class, to check its own parameters; a listener is not built. Nothing is written.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from daemonapp.configerrors import (
    MAX_MESSAGE,
    Checker,
    clip,
    dotted_line,
    line_of,
    raw_value,
    start_line,
    suggest,
)
from daemonapp.configfile import ConfigFileError, LineMapping, LineSequence, read_document
from daemonapp.configmodel import (
    AppSettings,
    CgiSettings,
    Config,
    ConfigError,
    DaemonSpec,
    ListenerSpec,
    LockSettings,
    LogSettings,
    unix_socket_path,
)
from daemonapp.daemon import Daemon, OptionError
from daemonapp.daemons._build import class_options, daemon_types, resolve_type
from daemonapp.durations import parse_duration
from daemonapp.options import CLOCK_EXCLUDES, DAEMON_OPTIONS, clock_conflict
from daemonapp.state_dir import path_problems, state_dir_problems

__all__ = [
    "MAX_MESSAGE",
    "ListenersUnavailable",
    "class_parameters",
    "listeners_module",
    "load_config",
    "nested_options",
    "resolve_daemon_type",
]

#: The top-level sections of a file.
SECTIONS = ("app", "listeners", "daemons", "cgi")
#: The keys of ``app:`` and of its ``log:`` and ``locks:`` mappings.
APP_KEYS = ("stay_alive_for", "shutdown_after", "shutdown_if_idle", "stop_timeout",
            "time_slice", "state_dir", "log", "locks", "timezone", "alerts", "history",
            "processes")
LOG_KEYS = ("format", "level", "file")
LOCK_KEYS = ("url", "ttl", "wait")
#: The keys of ``cgi:``.
CGI_KEYS = ("min_load", "max_load", "start_timeout", "lock_timeout", "listener")
#: Listener protocols (DESIGN §4), for config's API; daemonapp.listeners checks them.
PROTOCOLS = ("fastcgi", "scgi", "http")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
#: Other spellings of a level: Python's logging says "warning", twisted.logger "warn".
LOG_LEVEL_ALIASES = {"warning": "warn"}

#: A lock's flock file, NAME.lock, is one file name (255 bytes at most).
MAX_LOCK_NAME_BYTES = 250

_PATH_NAMES = frozenset({"path", "directory", "dir", "file", "base_directory", "base_dir"})
_PATH_SUFFIXES = ("_path", "_dir", "_directory", "_file")


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

def _optional_duration(value: object) -> float | None:
    return None if value is None else parse_duration(value)


def _positive_duration(value: object) -> float:
    return parse_duration(value, positive=True)


def _zone_name(value: object) -> str | None:
    """An IANA zone name, checked by the daemon option's own rule."""
    try:
        zone: str | None = DAEMON_OPTIONS["timezone"]("timezone", value)  # type: ignore[assignment]
    except OptionError as e:
        raise ValueError(e.message) from None
    return zone


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


def _plain(value: object) -> object:
    """A YAML value as plain dicts and lists (LineMapping and LineSequence are subclasses)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _alerts(value: object) -> object:
    """``app.alerts``: checked by the alert targets' own rules (daemonapp.alerts)."""
    from daemonapp.alerts import parse_targets

    spec = _plain(value)
    try:
        parse_targets(spec, key="app.alerts")
    except OptionError as e:
        raise ValueError(e.message) from None
    return spec


def _history_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of runs kept per daemon (0: none), "
                         f"got {value!r}")
    return value


def _processes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ValueError(f"expected a number of processes from 1 to 256 (e.g. the number "
                         f"of cores), got {value!r}")
    return value


def _log_level(value: object) -> str:
    name = value.lower() if isinstance(value, str) else ""
    name = LOG_LEVEL_ALIASES.get(name, name)
    if name not in LOG_LEVELS:
        raise ValueError("expected one of debug, info, warn (or warning), error, critical, "
                         f"got {value!r}")
    return name


class _Validator:
    """Turns the parsed document into a Config, collecting every error."""

    def __init__(self, checker: Checker) -> None:
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
            log_raw = check.mapping(section["log"], line_of(section, "log"), "app.log")
            if log_raw is not None:
                check.unknown(log_raw, "app.log", LOG_KEYS, "log option")
                log_settings = LogSettings(
                    format=get(log_raw, "format", "app.log", _choice(LOG_FORMATS), "text"),
                    level=get(log_raw, "level", "app.log", _log_level, "info"),
                    file=get(log_raw, "file", "app.log", self.optional_path, None),
                )
        lock_settings = LockSettings()
        if "locks" in section:
            locks_raw = check.mapping(section["locks"], line_of(section, "locks"), "app.locks")
            if locks_raw is not None:
                check.unknown(locks_raw, "app.locks", LOCK_KEYS, "locks option")
                lock_settings = LockSettings(
                    url=get(locks_raw, "url", "app.locks",
                            lambda v: None if v is None else _text(v), None),
                    ttl=get(locks_raw, "ttl", "app.locks", _positive_duration, 30.0),
                    wait=get(locks_raw, "wait", "app.locks", parse_duration, 10.0),
                )
        return AppSettings(
            state_dir=get(section, "state_dir", "app", self.path, default_state),
            stay_alive_for=get(section, "stay_alive_for", "app", _optional_duration, None),
            shutdown_after=get(section, "shutdown_after", "app", _optional_duration, None),
            shutdown_if_idle=get(section, "shutdown_if_idle", "app", _optional_duration, None),
            stop_timeout=get(section, "stop_timeout", "app", parse_duration, 30.0),
            time_slice=get(section, "time_slice", "app", _positive_duration, 0.010),
            timezone=get(section, "timezone", "app", _zone_name, None),
            alerts=get(section, "alerts", "app", _alerts, None),
            history=get(section, "history", "app", _history_size, 100),
            log=log_settings,
            locks=lock_settings,
            state_dir_line=line_of(section, "state_dir") if "state_dir" in section else 0,
            processes=get(section, "processes", "app", _processes, 1),
            processes_line=line_of(section, "processes") if "processes" in section else 0,
        )

    # ------------------------------------------------------------ daemons

    def daemons(self, raw: object, line: int) -> tuple[DaemonSpec, ...]:
        section = self.check.mapping(raw, line, "daemons")
        if section is None:
            return ()
        specs = []
        for name, body in section.items():
            spec = self.daemon(name, body, line_of(section, name), f"daemons.{name}",
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
            check.error(line_of(body, "type"), f"{prefix}.type",
                        f'expected a short name or "package.module:Class", got {type_name!r}')
            return None
        try:
            cls = self.daemon_class(type_name)
        except ValueError as e:
            check.error(line_of(body, "type"), f"{prefix}.type", str(e))
            return None
        accepted, required = class_parameters(cls)
        nested_keys = nested_options(cls)
        nested_types = getattr(cls, "NESTED_DEFAULT_TYPES", {})
        options: dict[str, Any] = {}
        misspelt: set[str] = set()  # parameters an unknown key probably meant
        bad: set[str] = set()  # options whose error is reported already
        ok = True
        for key in body:
            if key == "type":
                continue
            key_line = line_of(body, key)
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
                options[key] = raw_value(body, key)
            elif key in accepted:
                value = raw_value(body, key)
                if key in nested_keys:
                    child = self.daemon(key, value, key_line, dotted, nested=True,
                                        supplied=nested_keys[key],
                                        default_type=nested_types.get(key))
                    if child is None:
                        ok = False
                        bad.add(key)
                        continue
                    # The parent receives the checked section as a plain mapping and
                    # builds each child with daemonapp.daemons._build.build_daemon.
                    value = {"type": child.type_name, **child.options}
                elif isinstance(value, str) and _is_path_option(cls, key):
                    value = _resolve_path(value, self.base_dir)
                options[key] = value
            else:
                known = sorted(accepted)
                hint = suggest(key, (*Daemon.ATTRIBUTES, *known))
                misspelt.update(difflib.get_close_matches(str(key), known, n=1))
                check.error(
                    key_line, dotted,
                    f"unknown to both Daemon and {type_name}{hint}; "
                    f"expected a Daemon attribute ({', '.join(Daemon.ATTRIBUTES)})"
                    + (f" or a parameter of {cls.__name__} ({', '.join(known)})" if known
                       else f" ({cls.__name__} takes no parameters of its own)"))
                ok = False
        if not self._check_attributes(cls, options, body, line, prefix, bad=bad):
            ok = False
        # A nested section's parent supplies some parameters (a queue's directory) and
        # checks the rest when it is built below.
        missing = False
        for key in sorted(required) if not nested else ():
            if key not in body and key not in misspelt:
                check.error(line, f"{prefix}.{key}",
                            f"missing: {cls.__name__} needs this parameter")
                missing = True
        if not ok or missing:
            if not nested and not missing and "run_every" not in bad:
                rest = {key: value for key, value in options.items() if key not in bad}
                self._other_errors(DaemonSpec(name=str(name), type_name=type_name, cls=cls,
                                              options=rest, line=line), bad, body, prefix)
            return None
        spec = DaemonSpec(name=str(name), type_name=type_name, cls=cls, options=options,
                          line=line)
        if nested:
            return spec
        try:
            spec()
        except OptionError as e:
            check.error(dotted_line(body, e.key, line), f"{prefix}.{e.key}", e.message)
            return None
        except Exception as e:
            check.error(line, prefix, f"{type_name} rejected this section: "
                        f"{type(e).__name__}: {e}")
            return None
        return spec

    def _other_errors(self, rest: DaemonSpec, bad: set[str], body: Mapping[Any, Any],
                      prefix: str) -> None:
        """A section with errors already: its class built without the options reported
        (``rest``), so that what the class itself refuses (a parameter's own rule) shows
        as well."""
        try:
            rest()
        except OptionError as e:
            # Only about a value the section gives and no error named yet: one about a
            # key it lacks may come of the options left out (run_every, for a schedule).
            if e.key in body and e.key not in bad:
                self.check.error(dotted_line(body, e.key, rest.line), f"{prefix}.{e.key}",
                                 e.message)
        except Exception:  # noqa: S110 - the section's reported errors may be the cause
            pass

    def _check_attributes(self, cls: type[Daemon], options: Mapping[str, Any],
                          body: Mapping[Any, Any], line: int, prefix: str, *,
                          bad: set[str]) -> bool:
        """Check each Daemon attribute of a section on its own, so all errors show
        (daemonapp.options converts each value; the class builds the daemon once); the
        keys of those reported go to ``bad``."""
        ok = True
        clock = options.get("schedule") is not None or cls.schedule is not None
        if not clock and not options.get("run_every") and not cls.run_every:
            self.check.error(line, f"{prefix}.run_every",
                             'missing: expected a duration above zero, like "30s"')
            bad.add("run_every")
            ok = False
        for key, value in options.items():
            convert = DAEMON_OPTIONS.get(key)
            if convert is None:
                continue
            if clock and key in CLOCK_EXCLUDES:
                self.check.error(line_of(body, key), f"{prefix}.{key}",
                                 clock_conflict(key).message)
                bad.add(key)
                ok = False
                continue
            try:
                if key == "run_every" and not value:
                    # "required" is Daemon's rule across attributes: its own words
                    Daemon(run_every=value)
                else:
                    convert(key, value)  # the option's own rule: nothing is built
            except OptionError as e:
                self.check.error(line_of(body, key), f"{prefix}.{key}", e.message)
                bad.add(key)
                ok = False
            except (TypeError, ValueError) as e:
                self.check.error(line_of(body, key), f"{prefix}.{key}", str(e))
                bad.add(key)
                ok = False
        lock = options.get("lock")
        # the flock file is state_dir/locks/NAME.lock: one file name, at most 255 bytes
        if isinstance(lock, str) and len(lock.encode()) > MAX_LOCK_NAME_BYTES:
            self.check.error(line_of(body, "lock"), f"{prefix}.lock",
                             f"a lock name has at most {MAX_LOCK_NAME_BYTES} bytes (its file "
                             f"is locks/NAME.lock), got {len(lock.encode()):,}")
            bad.add("lock")
            ok = False
        return ok

    # ---------------------------------------------------------- listeners

    def listeners(self, raw: object, line: int) -> tuple[ListenerSpec, ...]:
        """Each item checked by the listeners' own check_listener; the fd 0 rule across
        items is the file's."""
        check = self.check
        if raw is None:
            return ()
        if not isinstance(raw, list):
            check.error(line, "listeners", f"expected a list of listener items, got {raw!r}")
            return ()
        try:
            check_listener = listeners_module().check_listener
        except ListenersUnavailable as e:
            check.error(line, "listeners", str(e))
            return ()
        specs = []
        inherited: list[int] = []
        lines = raw.lines if isinstance(raw, LineSequence) else [line] * len(raw)
        for index, item in enumerate(raw):
            prefix = f"listeners[{index}]"
            body = check.mapping(item, lines[index], prefix)
            if body is None:
                continue
            item_line = start_line(body) or lines[index]
            key_lines = {str(key): line_of(body, key) for key in body}
            options, errors = check_listener({key: raw_value(body, key) for key in body},
                                             base_dir=self.base_dir)
            for error in errors:
                check.error(key_lines.get(error.key, item_line), f"{prefix}.{error.key}",
                            error.message)
            if errors:
                continue
            endpoint = options.get("endpoint")
            if str(endpoint) == "fd:0" or (options["protocol"] == "fastcgi" and endpoint is None):
                inherited.append(index)
                if len(inherited) > 1:
                    check.error(line_of(body, "endpoint"), f"{prefix}.endpoint",
                                "only one listener may serve the inherited fd 0 "
                                "(a fastcgi item with no endpoint, or endpoint: fd:0)")
                    continue
            specs.append(ListenerSpec(index=index, options=options, line=item_line,
                                      key_lines=key_lines))
        return tuple(specs)

    def listener_jobs(self, listeners: tuple[ListenerSpec, ...],
                      daemons: tuple[DaemonSpec, ...]) -> None:
        """``jobs: true`` needs a job dispatcher among the daemons (the file's rule)."""
        has_jobs = any(callable(getattr(spec.cls, "job_status", None)) for spec in daemons)
        for spec in listeners:
            if spec.options.get("jobs") and not has_jobs:
                self.check.error(spec.key_lines.get("jobs", spec.line),
                                 f"listeners[{spec.index}].jobs",
                                 "jobs: true needs a job_dispatcher daemon in daemons:")

    def processes(self, app: AppSettings, listeners: tuple[ListenerSpec, ...]) -> None:
        """``app.processes`` > 1 shares sockets we bind: not the fd 0 of a web server,
        which owns the processes then (DESIGN §11)."""
        if app.processes <= 1:
            return
        if app.shutdown_if_idle is not None:
            # idle exit is for a process started on demand; the supervisor cannot tell
            # from its own requests whether its workers are idle
            self.check.error(app.processes_line, "app.processes",
                             f"processes: {app.processes} and shutdown_if_idle exclude each "
                             "other (an app of several processes runs until it is stopped "
                             "or shutdown_after); remove one of them")
        for spec in listeners:
            if spec.protocol == "fastcgi" and spec.endpoint in (None, "fd:0"):
                self.check.error(app.processes_line, "app.processes",
                                 f"processes: {app.processes} cannot serve the fd 0 a web "
                                 f"server passes (listeners[{spec.index}]): the web server "
                                 "starts the processes then; give that listener a unix: or "
                                 "tcp: endpoint, or remove processes")

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
        log_line = line_of(log_section, "file") if isinstance(log_section, Mapping) else app_line
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
            check.error(line_of(section, "max_load"), "cgi.max_load",
                        f"expected a load of at least min_load ({min_load:g}), got {max_load:g}")
        listener: int | None = None
        if "listener" in section:
            value = section["listener"]
            key_line = line_of(section, "listener")
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
            lock_timeout=get(section, "lock_timeout", "cgi", parse_duration, 10.0),
            listener=listener,
        )


def listeners_module() -> Any:
    """daemonapp.listeners, imported when a config has listeners.

    An ImportError there is an environment problem (a dependency of Twisted missing
    or broken, e.g. Debian's pyOpenSSL without service_identity ahead of the venv),
    reported with its real cause rather than as a configuration mistake.
    """
    try:
        return importlib.import_module("daemonapp.listeners")
    except ImportError as e:
        raise ListenersUnavailable(f"listeners cannot be built here: importing "
                                    f"daemonapp.listeners failed: {e}") from e


class ListenersUnavailable(Exception):
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
        raise ConfigError([f"{where}: {clip(e.problem)}"]) from None
    checker = Checker(path_text, base_dir)
    if document is None:
        document = LineMapping()
    if not isinstance(document, dict):
        raise ConfigError([f"{path_text}:1: (top level): expected a mapping with the "
                           f"sections {', '.join(SECTIONS)}"])
    checker.root = document
    root = checker.mapping(document, 1, "(top level)") or LineMapping()
    for key in root:
        if key not in SECTIONS:
            checker.error(line_of(root, key), str(key),
                          f"unknown section{suggest(key, SECTIONS)}; expected one of "
                          f"{', '.join(SECTIONS)}")
    validator = _Validator(checker)
    app = validator.app(root.get("app"), line_of(root, "app"))
    listeners = validator.listeners(root.get("listeners"), line_of(root, "listeners"))
    daemons = validator.daemons(root.get("daemons"), line_of(root, "daemons"))
    validator.listener_jobs(listeners, daemons)
    validator.processes(app, listeners)
    cgi = validator.cgi(root.get("cgi"), line_of(root, "cgi"), listeners)
    validator.paths(app, line_of(root, "app") or 1, listeners, check_state_dir, owners)
    if checker.messages:
        raise ConfigError([message for _, message in
                           sorted(checker.messages, key=lambda item: item[0])])
    return Config(path=path_text, base_dir=base_dir, app=app, listeners=listeners,
                  daemons=daemons, cgi=cgi, cgi_configured="cgi" in root)
