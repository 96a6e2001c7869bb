"""Tests for daemonapp.config: YAML with line numbers, validation, building the app."""

from __future__ import annotations

import configparser
import os
import re
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from daemonapp.app import DaemonApp
from daemonapp.config import (
    APP_KEYS,
    CGI_KEYS,
    LOCK_KEYS,
    LOG_KEYS,
    Config,
    ConfigError,
    DaemonSpec,
    build_app,
    daemon_types,
    load_config,
    resolve_daemon_type,
    unix_socket_path,
)
from daemonapp.daemon import Daemon, OptionError
from daemonapp.listeners import LISTENER_OPTIONS

ROOT = Path(__file__).resolve().parent.parent


class Replicator(Daemon):
    """A user daemon with parameters of its own."""

    def __init__(self, *, record_count: int = 5, source_dir: str = ".", **kw: Any) -> None:
        if not isinstance(record_count, int) or record_count < 1:
            raise OptionError("record_count", f"expected at least 1, got {record_count!r}")
        super().__init__(**kw)
        self.record_count = record_count
        self.source_dir = source_dir


class Needy(Daemon):
    """A daemon with a required parameter and a class default run_every."""

    run_every = 60.0

    def __init__(self, *, target: str, socket_mode: object = None, flag: object = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.target = target
        self.socket_mode = socket_mode
        self.flag = flag


class Manager(Daemon):
    """A daemon building children from a nested ``queue:`` section."""

    NESTED_DAEMON_OPTIONS = {"queue": ("source_dir",)}
    run_every = 300.0

    def __init__(self, *, queue: dict[str, Any], base_directory: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.queue = queue
        self.base_directory = base_directory


class NotADaemon:
    """Something that is not a Daemon."""


def write(tmp_path: Path, text: str, name: str = "daemons.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def errors(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.messages


# ------------------------------------------------------------------ loading


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is a valid configuration with every default and state in ./var."""
    config = load_config(write(tmp_path, ""))
    assert config.app.state_dir == str(tmp_path / "var")
    assert (config.app.stay_alive_for, config.app.shutdown_after,
            config.app.shutdown_if_idle) == (None, None, None)
    assert (config.app.stop_timeout, config.app.time_slice) == (30.0, 0.010)
    assert (config.app.log.format, config.app.log.level, config.app.log.file) == \
        ("text", "info", None)
    assert config.daemons == ()
    assert config.listeners == ()


def test_app_durations_are_parsed_to_seconds(tmp_path: Path) -> None:
    """The app section's durations become float seconds."""
    config = load_config(write(tmp_path, """
        app:
          stay_alive_for: 15m
          shutdown_after: 1h30m
          shutdown_if_idle: 1m
          stop_timeout: 5
          time_slice: 20ms
          locks: {ttl: 45s, wait: 2s}
    """))
    app = config.app
    assert (app.stay_alive_for, app.shutdown_after, app.shutdown_if_idle,
            app.stop_timeout, app.time_slice) == (900.0, 5400.0, 60.0, 5.0, 0.02)
    assert (app.locks.url, app.locks.ttl, app.locks.wait) == (None, 45.0, 2.0)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    """state_dir, log.file and path parameters resolve against the file's directory."""
    (tmp_path / "etc").mkdir()
    config = load_config(write(tmp_path, """
        app:
          state_dir: ../state
          log: {file: logs/app.log}
        daemons:
          collective:
            type: tests.test_config:Replicator
            run_every: 30s
            source_dir: data
    """, name="etc/daemons.yaml"))
    assert config.app.state_dir == str(tmp_path / "state")
    assert config.app.log.file == str(tmp_path / "etc" / "logs" / "app.log")
    assert config.daemons[0].options["source_dir"] == str(tmp_path / "etc" / "data")


def test_daemon_section_becomes_a_spec(tmp_path: Path) -> None:
    """A daemon section gives a DaemonSpec that builds the configured instance."""
    config = load_config(write(tmp_path, """
        daemons:
          collective:
            type: tests.test_config:Replicator
            run_every: 30s
            increase_idle_by: 10s
            maximum_idle: 2m
            record_count: 10
    """))
    (spec,) = config.daemons
    assert (spec.name, spec.type_name, spec.cls, spec.line) == \
        ("collective", "tests.test_config:Replicator", Replicator, 2)
    daemon = spec()
    assert isinstance(daemon, Replicator)
    assert (daemon.name, daemon.run_every, daemon.increase_idle_by, daemon.maximum_idle,
            daemon.record_count) == ("collective", 30.0, 10.0, 120.0, 10)


def test_spec_builds_fresh_instances_with_overrides(tmp_path: Path) -> None:
    """Calling a spec twice gives two daemons; keywords override the section."""
    config = load_config(write(tmp_path, """
        daemons:
          collective: {type: tests.test_config:Replicator, run_every: 30s}
    """))
    spec = config.daemons[0]
    first, second = spec(), spec(name="other", record_count=7)
    assert first is not second
    assert (second.name, second.record_count) == ("other", 7)


def test_mode_keeps_its_source_text(tmp_path: Path) -> None:
    """A mode written 0660 arrives as the text "0660", not YAML 1.1's number 432."""
    config = load_config(write(tmp_path, """
        daemons:
          n: {type: tests.test_config:Needy, target: x, socket_mode: 0660, flag: on}
    """))
    daemon = config.daemons[0]()
    assert isinstance(daemon, Needy)
    assert daemon.socket_mode == "0660"
    assert daemon.flag is True


def test_class_default_run_every_is_enough(tmp_path: Path) -> None:
    """A class that sets run_every needs no run_every key."""
    config = load_config(write(tmp_path, """
        daemons:
          n: {type: tests.test_config:Needy, target: x}
    """))
    assert config.daemons[0]().run_every == 60.0


def test_nested_section_is_passed_as_a_checked_mapping(tmp_path: Path) -> None:
    """A NESTED_DAEMON_OPTIONS option arrives as a mapping with its type and options."""
    config = load_config(write(tmp_path, """
        daemons:
          mail:
            type: tests.test_config:Manager
            base_directory: queues
            queue: {type: tests.test_config:Replicator, run_every: 10s, record_count: 2}
    """))
    daemon = config.daemons[0]()
    assert isinstance(daemon, Manager)
    assert daemon.queue == {"type": "tests.test_config:Replicator", "run_every": "10s",
                            "record_count": 2}
    assert daemon.base_directory == str(tmp_path / "queues")


def test_short_names_match_setup_cfg() -> None:
    """Every entry point of setup.cfg's daemonapp.daemons group is a known short name."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["daemonapp.daemons"].strip().splitlines()
    declared = dict(line.replace(" ", "").split("=", 1) for line in lines)
    types = daemon_types()
    assert {name: types[name] for name in declared} == declared


def test_resolve_by_module_path() -> None:
    """"package.module:Class" resolves to the class."""
    assert resolve_daemon_type("tests.test_config:Replicator") is Replicator


def test_resolve_by_short_name() -> None:
    """A bundled short name resolves through the entry points."""
    cls = resolve_daemon_type("file_cleanup")
    assert (cls.__module__, cls.__name__) == ("daemonapp.daemons.file_cleanup", "FileCleanup")


# ------------------------------------------------------------------- errors


def test_bad_duration_names_file_line_and_key(tmp_path: Path) -> None:
    """A bad duration is reported as FILE:LINE: dotted.key: message."""
    path = write(tmp_path, """
        daemons:
          collective:
            type: tests.test_config:Replicator
            run_every: soon
    """)
    assert errors(path) == [
        f"{path}:4: daemons.collective.run_every: expected a duration like \"30s\", "
        "\"5m\" or \"1h30m\", got 'soon'"]


def test_two_errors_are_both_reported(tmp_path: Path) -> None:
    """Every error of a file is reported, in line order."""
    path = write(tmp_path, """
        app:
          shutdown_after: later
        daemons:
          collective:
            type: tests.test_config:Replicator
            run_every: 30s
            record_countt: 10
    """)
    messages = errors(path)
    assert len(messages) == 2
    assert messages[0].startswith(f"{path}:2: app.shutdown_after: expected a duration")
    assert messages[1].startswith(
        f"{path}:7: daemons.collective.record_countt: unknown to both Daemon and "
        "tests.test_config:Replicator (did you mean 'record_count'?)")


def test_unknown_key_lists_what_is_expected(tmp_path: Path) -> None:
    """A key unknown to both Daemon and the class names the class's parameters."""
    path = write(tmp_path, """
        daemons:
          c: {type: tests.test_config:Replicator, run_every: 1, colour: red}
    """)
    (message,) = errors(path)
    assert message == (
        f"{path}:2: daemons.c.colour: unknown to both Daemon and tests.test_config:Replicator; "
        "expected a Daemon attribute (run_every, increase_idle_by, multiply_idle_by, "
        "maximum_idle, priority, max_items, max_seconds, jitter, in_thread, lock, "
        "start_delay, schedule, timezone, misfire_grace, catch_up, timeout, alert_after) "
        "or a parameter of "
        "Replicator (record_count, source_dir)")


def test_constructor_option_error_points_at_its_key(tmp_path: Path) -> None:
    """An OptionError raised by the class's constructor is reported at that key's line."""
    path = write(tmp_path, """
        daemons:
          c:
            type: tests.test_config:Replicator
            run_every: 30s

            record_count: 0
    """)
    assert errors(path) == [f"{path}:6: daemons.c.record_count: expected at least 1, got 0"]


@pytest.mark.parametrize(("other", "error"), [
    ("jitter: 5", "daemons.c.jitter: expected a number from 0 up to (not including) 1, got 5"),
    ("colour: red", "daemons.c.colour: unknown to both Daemon and tests.test_config:Replicator"),
])
def test_a_constructor_error_shows_beside_the_sections_other_errors(
        tmp_path: Path, other: str, error: str) -> None:
    """The class is built without the options already reported, so that what it refuses
    itself (an OptionError) is reported at once too, not after the others are fixed."""
    path = write(tmp_path, f"""
        daemons:
          c:
            type: tests.test_config:Replicator
            run_every: 30s
            {other}
            record_count: 0
    """)
    found = errors(path)
    assert len(found) == 2, found
    assert found[0].startswith(f"{path}:5: {error}")
    assert found[1] == f"{path}:6: daemons.c.record_count: expected at least 1, got 0"


def test_every_bad_attribute_is_reported(tmp_path: Path) -> None:
    """Bad Daemon attributes of one section are all reported, not just the first."""
    path = write(tmp_path, """
        daemons:
          c:
            type: tests.test_config:Replicator
            run_every: 30s
            jitter: 2
            priority: high
            lock: "bad name"
    """)
    assert errors(path) == [
        f"{path}:5: daemons.c.jitter: expected a number from 0 up to (not including) 1, got 2",
        f"{path}:6: daemons.c.priority: expected a whole number, got 'high'",
        f"{path}:7: daemons.c.lock: expected a lock name of letters, digits, '.', '_' and "
        "'-', got 'bad name'",
    ]


def test_missing_run_every(tmp_path: Path) -> None:
    """A daemon without run_every (and no class default) is an error at its section."""
    path = write(tmp_path, """
        daemons:
          c:
            type: tests.test_config:Replicator
    """)
    assert errors(path) == [
        f'{path}:2: daemons.c.run_every: missing: expected a duration above zero, like "30s"']


def test_missing_required_parameter(tmp_path: Path) -> None:
    """A required parameter of the class that is absent is reported."""
    path = write(tmp_path, """
        daemons:
          n:
            type: tests.test_config:Needy
    """)
    assert errors(path) == [f"{path}:2: daemons.n.target: missing: Needy needs this parameter"]


def test_misspelt_required_parameter_is_one_error(tmp_path: Path) -> None:
    """A typo of a required parameter is reported once, as the unknown key."""
    path = write(tmp_path, """
        daemons:
          n: {type: tests.test_config:Needy, targett: x}
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:2: daemons.n.targett: unknown to both Daemon and "
                              "tests.test_config:Needy (did you mean 'target'?)")


def test_missing_type(tmp_path: Path) -> None:
    """A daemon section without type is reported."""
    path = write(tmp_path, """
        daemons:
          c:
            run_every: 1
    """)
    assert errors(path) == [
        f'{path}:2: daemons.c.type: missing: expected a short name like "file_cleanup" or '
        '"package.module:Class"']


def test_unknown_short_name(tmp_path: Path) -> None:
    """An unknown short name lists the known ones."""
    path = write(tmp_path, """
        daemons:
          c: {type: nosuch, run_every: 1}
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:2: daemons.c.type: unknown daemon type 'nosuch': "
                              "expected one of command, dir_queue, dir_queue_manager, "
                              "file_cleanup")
    assert message.endswith('or "package.module:Class"')


def test_module_that_does_not_import(tmp_path: Path) -> None:
    """A type whose module cannot be imported says so."""
    path = write(tmp_path, """
        daemons:
          c: {type: "nosuch_module_xyz:Thing", run_every: 1}
    """)
    assert errors(path) == [
        f"{path}:2: daemons.c.type: cannot import module 'nosuch_module_xyz': "
        "No module named 'nosuch_module_xyz'"]


def test_class_that_is_not_a_daemon(tmp_path: Path) -> None:
    """A type that is not a Daemon subclass is an error."""
    path = write(tmp_path, """
        daemons:
          c: {type: "tests.test_config:NotADaemon", run_every: 1}
    """)
    assert errors(path) == [
        f"{path}:2: daemons.c.type: 'tests.test_config:NotADaemon' is not a "
        "daemonapp.Daemon subclass"]


def test_name_key_is_refused(tmp_path: Path) -> None:
    """A daemon's name is its section key, so a name: key is an error."""
    path = write(tmp_path, """
        daemons:
          c: {type: tests.test_config:Replicator, run_every: 1, name: other}
    """)
    assert errors(path) == [
        f"{path}:2: daemons.c.name: a daemon's name is its section's key; remove this key"]


def test_nested_section_errors_have_dotted_keys(tmp_path: Path) -> None:
    """Errors inside a nested section name its full dotted key and line."""
    path = write(tmp_path, """
        daemons:
          mail:
            type: tests.test_config:Manager
            base_directory: queues
            queue:
              type: tests.test_config:Replicator
              run_every: 10s
              jitter: 5
              source_dir: /tmp
    """)
    assert errors(path) == [
        f"{path}:8: daemons.mail.queue.jitter: expected a number from 0 up to "
        "(not including) 1, got 5",
        f"{path}:9: daemons.mail.queue.source_dir: is set for each daemon by its parent; "
        "remove this key",
    ]


def test_unknown_section(tmp_path: Path) -> None:
    """A top-level key other than app, listeners, daemons, cgi is an error."""
    path = write(tmp_path, """
        app: {}
        jobs: {}
    """)
    assert errors(path) == [
        f"{path}:2: jobs: unknown section; expected one of app, listeners, daemons, cgi"]


def test_unknown_app_option_suggests(tmp_path: Path) -> None:
    """A misspelt app option suggests the close one."""
    path = write(tmp_path, """
        app:
          stay_alive: 1m
    """)
    assert errors(path) == [
        f"{path}:2: app.stay_alive: unknown app option (did you mean 'stay_alive_for'?); "
        "expected one of stay_alive_for, shutdown_after, shutdown_if_idle, stop_timeout, "
        "time_slice, state_dir, log, locks, timezone, alerts, history, processes"]


def test_bad_log_level(tmp_path: Path) -> None:
    """app.log.level takes one of the twisted.logger level names."""
    path = write(tmp_path, """
        app:
          log: {level: loud}
    """)
    assert errors(path) == [
        f"{path}:2: app.log.level: expected one of debug, info, warn (or warning), error, "
        "critical, got 'loud'"]


@pytest.mark.parametrize("written", ["warning", "WARNING", "warn", "Warn"])
def test_log_level_warning_is_warn(tmp_path: Path, written: str) -> None:
    """app.log.level: warning, Python's spelling, means twisted.logger's warn."""
    config = load_config(write(tmp_path, f"app: {{log: {{level: {written}}}}}\n"))
    assert config.app.log.level == "warn"


def test_duplicate_key(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error (YAML would keep the last)."""
    path = write(tmp_path, """
        app:
          stop_timeout: 1s
          stop_timeout: 2s
    """)
    assert errors(path) == [f"{path}:3: app.stop_timeout: duplicate key: each key may appear once"]


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    """Invalid YAML is reported with its line."""
    path = write(tmp_path, """
        app:
          stop_timeout: [1
        daemons: {}
    """)
    (message,) = errors(path)
    assert re.match(rf"{re.escape(path)}:3: invalid YAML: ", message), message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A file that is a list is an error."""
    path = write(tmp_path, "- a\n- b\n")
    assert errors(path) == [
        f"{path}:1: (top level): expected a mapping with the sections app, listeners, "
        "daemons, cgi"]


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    path = str(tmp_path / "missing.yaml")
    assert errors(path) == [f"{path}: cannot read the configuration: No such file or directory"]


def test_python_tags_are_refused(tmp_path: Path) -> None:
    """Only safe YAML is loaded: a python tag is an error, never executed."""
    path = write(tmp_path, """
        app: !!python/object/apply:os.system ["true"]
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:1: invalid YAML: ")


# ---------------------------------------------------------------------- cgi


def test_cgi_defaults_and_listener_choice(tmp_path: Path) -> None:
    """cgi: defaults, and its listener is the first scgi one on a unix socket."""
    config = load_config(write(tmp_path, """
        listeners:
          - {protocol: http, endpoint: "tcp:0:interface=127.0.0.1", wsgi: "tests.test_config:app"}
          - {protocol: fastcgi, endpoint: "unix:run/f.sock", wsgi: "tests.test_config:app"}
          - {protocol: scgi, endpoint: "unix:run/s.sock", wsgi: "tests.test_config:app"}
        cgi: {}
    """))
    cgi = config.cgi
    assert (cgi.min_load, cgi.max_load, cgi.start_timeout, cgi.lock_timeout, cgi.listener) == \
        (0.0, None, 10.0, 10.0, None)
    chosen = config.cgi_listener()
    assert chosen is not None and chosen.index == 2


def test_cgi_listener_must_be_a_unix_scgi_or_fastcgi(tmp_path: Path) -> None:
    """cgi.listener pointing at an http listener is an error."""
    path = write(tmp_path, """
        listeners:
          - {protocol: http, endpoint: "tcp:0:interface=127.0.0.1", wsgi: "tests.test_config:app"}
        cgi:
          listener: 0
    """)
    assert errors(path) == [
        f"{path}:4: cgi.listener: expected an scgi or fastcgi listener on a unix: endpoint"]


def test_cgi_max_load_below_min_load(tmp_path: Path) -> None:
    """max_load under min_load is an error."""
    path = write(tmp_path, """
        cgi:
          min_load: 4
          max_load: 2
    """)
    assert errors(path) == [
        f"{path}:3: cgi.max_load: expected a load of at least min_load (4), got 2"]


def test_unix_socket_path_parsing(tmp_path: Path) -> None:
    """The socket path of unix: endpoints resolves against the base directory."""
    base = str(tmp_path)
    assert unix_socket_path("unix:./run/app.sock:mode=0660", base) == \
        str(tmp_path / "run" / "app.sock")
    assert unix_socket_path("unix:address=/srv/a.sock:lockfile=0", base) == "/srv/a.sock"
    assert unix_socket_path("tcp:8080", base) is None


# ---------------------------------------------------------------- listeners


def test_listener_without_protocol(tmp_path: Path) -> None:
    """A listener item needs a protocol."""
    path = write(tmp_path, """
        listeners:
          - endpoint: "unix:run/app.sock"
    """)
    (message,) = errors(path)
    assert message == f"{path}:2: listeners[0].protocol: missing: expected one of fastcgi, " \
                      "scgi, http"


def test_two_listeners_on_fd0(tmp_path: Path) -> None:
    """At most one fastcgi listener may serve the inherited fd 0."""
    path = write(tmp_path, """
        listeners:
          - {protocol: fastcgi, wsgi: "tests.test_config:app"}
          - {protocol: fastcgi, endpoint: "fd:0", wsgi: "tests.test_config:app"}
    """)
    (message,) = errors(path)
    assert message == (f"{path}:3: listeners[1].endpoint: only one listener may serve the "
                       "inherited fd 0 (a fastcgi item with no endpoint, or endpoint: fd:0)")


def test_scgi_on_fd0_counts_too(tmp_path: Path) -> None:
    """An scgi item on fd:0 beside a fastcgi item without endpoint is one too many."""
    path = write(tmp_path, """
        listeners:
          - {protocol: fastcgi, wsgi: "tests.test_config:app"}
          - {protocol: scgi, endpoint: "fd:0", wsgi: "tests.test_config:app"}
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:3: listeners[1].endpoint: only one listener may serve")


def test_listener_options_are_checked_by_the_listener_module(tmp_path: Path) -> None:
    """An option LISTENER_OPTIONS does not know is an error at its line."""
    path = write(tmp_path, """
        listeners:
          - protocol: scgi
            endpoint: "unix:run/app.sock"
            wsgi: "tests.test_config:app"
            max_concurrentt: 3
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:5: listeners[0].max_concurrentt: unknown listener "
                              "option (did you mean 'max_concurrent'?)")


def test_a_broken_listeners_dependency_is_reported_with_its_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImportError inside daemonapp.listeners (a broken dependency of Twisted) is
    reported as such, at the listeners' line, not as a configuration mistake."""
    import importlib

    real = importlib.import_module

    def broken(name: str, package: str | None = None) -> Any:
        if name == "daemonapp.listeners":
            raise ModuleNotFoundError("No module named 'service_identity'",
                                      name="service_identity")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", broken)
    path = write(tmp_path, """
        listeners:
          - {protocol: fastcgi, endpoint: "unix:run/app.sock", wsgi: "tests.test_config:app"}
    """)
    (message,) = errors(path)
    assert message == (f"{path}:1: listeners: listeners cannot be built here: importing "
                       "daemonapp.listeners failed: No module named 'service_identity'")


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI application for listener items."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from config\n"]


# ------------------------------------------------------------------ building


def build(config: Config, **kw: Any) -> DaemonApp:
    return build_app(config, reactor=Clock(), stop_reactor=False, handle_signals=False,
                     status_server=False, **kw)


def test_build_app_adds_the_daemons_and_settings(tmp_path: Path) -> None:
    """build_app gives a DaemonApp with the file's lifetime settings and daemons."""
    config = load_config(write(tmp_path, """
        app:
          stay_alive_for: 1m
          shutdown_after: 2m
          shutdown_if_idle: 10s
          stop_timeout: 3s
        daemons:
          a: {type: tests.test_config:Replicator, run_every: 30s}
          b: {type: tests.test_config:Needy, target: t}
    """))
    app = build(config)
    assert (app.stay_alive_for, app.shutdown_after, app.shutdown_if_idle, app.stop_timeout) == \
        (60.0, 120.0, 10.0, 3.0)
    assert sorted(app.daemons) == ["a", "b"]
    assert app.state_dir == str(tmp_path / "var")


def test_build_app_creates_a_private_state_dir(tmp_path: Path) -> None:
    """The state directory is created with mode 0700."""
    config = load_config(write(tmp_path, "app: {state_dir: state}\n"))
    build(config)
    mode = stat.S_IMODE(os.stat(tmp_path / "state").st_mode)
    assert mode == 0o700


def test_load_config_writes_nothing(tmp_path: Path) -> None:
    """Loading (and validating) creates no state directory."""
    load_config(write(tmp_path, "daemons: {a: {type: tests.test_config:Replicator, "
                                "run_every: 1}}\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemons.yaml"]


def test_built_daemons_run_on_the_app_clock(tmp_path: Path) -> None:
    """A daemon built from YAML runs on the injected clock after start_delay."""
    config = load_config(write(tmp_path, """
        daemons:
          a: {type: tests.test_config:Replicator, run_every: 30s, start_delay: 5s}
    """))
    clock = Clock()
    app = build_app(config, reactor=clock, stop_reactor=False, handle_signals=False,
                    status_server=False)
    app.startService()
    clock.advance(5)
    assert app.daemons["a"].stats["runs"] == 1
    assert app.daemons["a"].stats["last_outcome"] == "idle"


def test_overrides_reach_the_app(tmp_path: Path) -> None:
    """Keyword overrides of build_app win over the file."""
    config = load_config(write(tmp_path, "app: {stop_timeout: 9s}\n"))
    app = build(config, stop_timeout=1.5)
    assert app.stop_timeout == 1.5


def test_daemon_spec_is_a_plain_factory() -> None:
    """A DaemonSpec can be made by hand and called with a name."""
    spec = DaemonSpec(name="x", type_name="tests.test_config:Replicator", cls=Replicator,
                      options={"run_every": 2})
    daemon = spec(name="y")
    assert (daemon.name, daemon.run_every) == ("y", 2.0)


# ----------------------------------------------------------------------- docs


def _documented(section: str) -> set[str]:
    """The option names in the first column of the tables under a docs heading."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    match = re.search(rf"^## `{re.escape(section)}`.*?$(.*?)(?=^## |\Z)", text,
                      re.MULTILINE | re.DOTALL)
    assert match is not None, f"docs/configuration.md has no '## `{section}`' section"
    return set(re.findall(r"^\| `([A-Za-z_.]+)` \|", match.group(1), re.MULTILINE))


def test_docs_list_every_app_option() -> None:
    """docs/configuration.md documents exactly the app options the code knows."""
    expected = {k for k in APP_KEYS if k not in ("log", "locks")}
    expected |= {f"log.{k}" for k in LOG_KEYS} | {f"locks.{k}" for k in LOCK_KEYS}
    assert _documented("app") == expected


def test_docs_list_every_daemon_attribute() -> None:
    """docs/configuration.md documents type and every Daemon attribute."""
    assert _documented("daemons") == {"type", *Daemon.ATTRIBUTES}


def test_docs_list_every_cgi_option() -> None:
    """docs/configuration.md documents exactly the cgi options."""
    assert _documented("cgi") == set(CGI_KEYS)


def test_docs_list_every_listener_option() -> None:
    """docs/configuration.md documents exactly the keys of LISTENER_OPTIONS."""
    assert _documented("listeners") == set(LISTENER_OPTIONS)


def test_listener_mode_keeps_its_octal_text(tmp_path: Path) -> None:
    """A listener's mode: 0660 is octal 0660 (432 would be 0660 by luck; 0600 is not 600)."""
    config = load_config(write(tmp_path, """
        listeners:
          - protocol: scgi
            endpoint: "unix:run/app.sock"
            mode: 0600
            wsgi: "tests.test_config:app"
    """))
    assert config.listeners[0].options["mode"] == 0o600


def test_listener_application_that_does_not_import(tmp_path: Path) -> None:
    """A wsgi target that cannot be imported is reported at its line by check."""
    path = write(tmp_path, """
        listeners:
          - protocol: scgi
            endpoint: "unix:run/app.sock"
            wsgi: "nosuch_module_q:application"
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:4: listeners[0].wsgi: cannot import "
                              "'nosuch_module_q:application'")


def test_listener_jobs_needs_a_dispatcher(tmp_path: Path) -> None:
    """jobs: true without a job_dispatcher daemon is an error."""
    path = write(tmp_path, """
        listeners:
          - protocol: http
            endpoint: "tcp:0:interface=127.0.0.1"
            jobs: true
    """)
    assert errors(path) == [
        f"{path}:4: listeners[0].jobs: jobs: true needs a job_dispatcher daemon in daemons:"]


def test_locks_url_selects_the_lease_provider(tmp_path: Path) -> None:
    """app.locks.url and ttl reach the app's lock provider; wait becomes its lock_wait."""
    from daemonapp.locks import LockProvider

    config = load_config(write(tmp_path, """
        app:
          locks: {url: "postgresql://postgres@127.0.0.1:5432/test", ttl: 45s, wait: 3s}
    """))
    app = build(config)
    provider = app._locks
    assert isinstance(provider, LockProvider)
    assert (provider.url, provider.ttl, app.lock_wait) == \
        ("postgresql://postgres@127.0.0.1:5432/test", 45.0, 3.0)


def test_dir_queue_manager_queue_section(tmp_path: Path) -> None:
    """The bundled manager's queue: section defaults to dir_queue and is handed over."""
    config = load_config(write(tmp_path, """
        daemons:
          mail:
            type: dir_queue_manager
            run_every: 1m
            base_directory: queues
            queue: {run_every: 10s, stale_after: 1h}
    """))
    (spec,) = config.daemons
    assert spec.options["queue"] == {"type": "dir_queue", "run_every": "10s",
                                     "stale_after": "1h"}
    assert spec.options["base_directory"] == str(tmp_path / "queues")
    assert not (tmp_path / "queues").exists()


def test_dir_queue_manager_refuses_a_queue_directory(tmp_path: Path) -> None:
    """A queue: section that sets directory is reported at that key's line."""
    path = write(tmp_path, """
        daemons:
          mail:
            type: dir_queue_manager
            run_every: 1m
            base_directory: queues
            queue:
              run_every: 10s
              directory: /tmp
    """)
    (message,) = errors(path)
    assert message.startswith(f"{path}:8: daemons.mail.queue.directory: ")


def test_errors_quote_the_source_text(tmp_path: Path) -> None:
    """A scalar YAML 1.1 converted (`on` → True) is quoted as written in messages."""
    path = write(tmp_path, """
        daemons:
          c:
            type: daemonapp.examples.hello:Hello
            run_every: on
    """)
    (message,) = errors(path)
    assert message == f"{path}:4: daemons.c.run_every: expected a duration like \"30s\", got 'on'"


def test_validation_builds_each_daemon_once(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a file builds each daemon once, by its class; its attributes are checked by
    their converters, not by a trial Daemon each."""
    built: list[str] = []
    original = Daemon.__init__

    def counting(self: Daemon, **kw: Any) -> None:
        built.append(type(self).__name__)
        original(self, **kw)

    monkeypatch.setattr(Daemon, "__init__", counting)
    load_config(write(tmp_path, """
        daemons:
          a: {type: tests.test_config:Replicator, run_every: 30s, jitter: 0.1, priority: 2,
              lock: ldap, max_items: 5}
    """))
    assert built == ["Replicator"]
