"""The config seam: LISTENER_OPTIONS converters, check_listener and build_listener errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from daemonapp.daemon import OptionError
from daemonapp.listeners import LISTENER_OPTIONS, ListenerOptions, build_listener, check_listener

APP = "tests.listeners.apps:hello_native"


def test_every_documented_key_has_a_converter() -> None:
    """LISTENER_OPTIONS has exactly the listener item keys."""
    assert sorted(LISTENER_OPTIONS) == sorted([
        "protocol", "endpoint", "wsgi", "native", "jobs", "health", "metrics", "threads",
        "request_buffering",
        "max_concurrent", "backlog", "queue_timeout", "max_param_bytes", "max_body_bytes",
        "request_timeout", "max_requests", "max_requests_jitter", "allow_from", "script_name",
        "socket_group",
        "mode", "header_timeout", "body_timeout", "idle_timeout", "send_timeout",
        "max_buffer_bytes", "max_listener_buffer_bytes", "max_connections"])


@pytest.mark.parametrize(("key", "raw", "expected"), [
    ("protocol", "FastCGI", "fastcgi"),
    ("queue_timeout", "1m30s", 90.0),
    ("request_timeout", "250ms", 0.25),
    ("body_timeout", "2m", 120.0),
    ("max_param_bytes", "64KiB", 65536),
    ("max_body_bytes", "1MiB", 1048576),
    ("max_listener_buffer_bytes", "32MiB", 33554432),
    ("max_connections", "500", 500),
    ("send_timeout", "90s", 90.0),
    ("threads", 0, 0),
    ("allow_from", "127.0.0.1, 10.0.0.0/8", ["127.0.0.1/32", "10.0.0.0/8"]),
    ("script_name", "/app/", "/app"),
    ("mode", "0600", 0o600),
    ("endpoint", "unix:/run/a.sock:mode=0660", "unix:/run/a.sock:mode=0660"),
    ("wsgi", "pkg.mod:app", "pkg.mod:app"),
])
def test_converters(key: str, raw: object, expected: object) -> None:
    """Each converter normalizes its value."""
    assert LISTENER_OPTIONS[key](raw) == expected


@pytest.mark.parametrize(("key", "raw"), [
    ("protocol", "ajp"), ("threads", -1), ("max_concurrent", 0), ("queue_timeout", "soon"),
    ("max_body_bytes", "lots"), ("allow_from", ["nowhere"]), ("script_name", "app"),
    ("mode", "rwx"), ("endpoint", "fd:x"), ("wsgi", "no colon"), ("jobs", "yes"),
])
def test_converters_reject(key: str, raw: object) -> None:
    """Bad values raise ValueError."""
    with pytest.raises(ValueError):
        LISTENER_OPTIONS[key](raw)


def _build(**options: object) -> object:
    return build_listener(options, reactor=MemoryReactorClock(), base_dir="/tmp")


def test_import_error_is_an_option_error() -> None:
    """An unimportable target raises OptionError naming the key."""
    with pytest.raises(OptionError) as caught:
        _build(protocol="fastcgi", endpoint="tcp:0", wsgi="no_such_module_xyz:app")
    assert caught.value.key == "wsgi"


def test_missing_attribute_is_an_option_error() -> None:
    """A missing callable raises OptionError naming the key."""
    with pytest.raises(OptionError) as caught:
        _build(protocol="fastcgi", endpoint="tcp:0", native="tests.listeners.apps:nope")
    assert caught.value.key == "native"


def test_unknown_key() -> None:
    """An unknown key raises OptionError naming it."""
    with pytest.raises(OptionError) as caught:
        _build(protocol="fastcgi", endpoint="tcp:0", native="tests.listeners.apps:hello_native",
               colour="red")
    assert caught.value.key == "colour"


def test_needs_something_to_serve() -> None:
    """A listener without wsgi, native or jobs is an error."""
    with pytest.raises(OptionError):
        _build(protocol="fastcgi", endpoint="tcp:0")


def test_jobs_needs_jobs_status() -> None:
    """jobs: true without a jobs_status function is an error naming jobs."""
    with pytest.raises(OptionError) as caught:
        _build(protocol="fastcgi", endpoint="tcp:0", jobs=True)
    assert caught.value.key == "jobs"


def test_fastcgi_without_endpoint_means_fd0() -> None:
    """A fastcgi item without endpoint listens on the inherited fd 0."""
    listener = _build(protocol="fastcgi", native="tests.listeners.apps:hello_native")
    assert listener.snapshot()["endpoint"] == "fd:0"  # type: ignore[attr-defined]


def test_http_needs_an_endpoint() -> None:
    """An http item without endpoint is an error naming endpoint."""
    with pytest.raises(OptionError) as caught:
        _build(protocol="http", native="tests.listeners.apps:hello_native")
    assert caught.value.key == "endpoint"


def test_fd_endpoint_has_one_spelling() -> None:
    """"fd:fileno=0", " fd:0 " and 0 all become "fd:0" (how the fd 0 rules recognize it)."""
    convert = LISTENER_OPTIONS["endpoint"]
    assert [convert("fd:fileno=0"), convert(" fd:0 "), convert(0), convert("fd:fileno=3")] == [
        "fd:0", "fd:0", "fd:0", "fd:3"]


# ------------------------------------------------------------------ check_listener


def test_check_listener_reports_every_key_at_once() -> None:
    """check_listener names each bad key of an item, not only the first."""
    values, errors = check_listener({"protocol": "scgi", "endpoint": "unix:a.sock",
                                     "threads": -1, "colour": "red", "queue_timeout": "soon"})
    assert [(error.key, error.message) for error in errors] == [
        ("threads", "expected a whole number of at least 0, got -1"),
        ("colour", "unknown listener option; expected one of allow_from, backlog, "
                   "body_timeout, endpoint, header_timeout, health, idle_timeout, jobs, "
                   "max_body_bytes, max_buffer_bytes, max_concurrent, max_connections, "
                   "max_listener_buffer_bytes, max_param_bytes, max_requests, "
                   "max_requests_jitter, metrics, mode, native, protocol, queue_timeout, "
                   "request_buffering, request_timeout, script_name, send_timeout, "
                   "socket_group, threads, wsgi"),
        ("queue_timeout", 'expected a duration like "30s", "5m" or "1h30m", got \'soon\''),
    ]
    assert values == {"protocol": "scgi", "endpoint": "unix:a.sock"}


def test_check_listener_needs_a_protocol() -> None:
    """An item without protocol is an error naming it (build_listener's Python callers
    get fastcgi by default)."""
    _, errors = check_listener({"endpoint": "tcp:0", "native": APP})
    assert [(error.key, error.message) for error in errors] == [
        ("protocol", "missing: expected one of fastcgi, scgi, http")]


def test_check_listener_converts_and_imports_without_building() -> None:
    """A good item gives its converted values and no error; nothing is listening."""
    values, errors = check_listener({"protocol": "http", "endpoint": "tcp:0", "native": APP,
                                     "queue_timeout": "1m", "mode": "0600"})
    assert (errors, values) == ([], {"protocol": "http", "endpoint": "tcp:0", "native": APP,
                                     "queue_timeout": 60.0, "mode": 0o600})
    assert isinstance(values, ListenerOptions)


@pytest.mark.parametrize(("options", "key", "message"), [
    ({"protocol": "http", "native": APP}, "endpoint",
     'missing: expected a Twisted endpoint like "unix:./run/app.sock" or '
     '"tcp:8080:interface=127.0.0.1"'),
    ({"protocol": "http", "endpoint": "tcp:0", "native": APP, "wsgi": APP}, "native",
     "a listener serves either wsgi or native, not both"),
    ({"protocol": "http", "endpoint": "tcp:0"}, "protocol",
     "a listener needs wsgi: module:callable, native: module:callable, jobs: true, "
     "health: true or metrics: true"),
    ({"protocol": "http", "endpoint": "unix:", "native": APP}, "endpoint",
     "expected \"unix:PATH\", got 'unix:'"),
    ({"protocol": "http", "endpoint": "tcp:0", "native": "no_such_module_xyz:app"}, "native",
     "cannot import 'no_such_module_xyz:app': No module named 'no_such_module_xyz'"),
])
def test_check_listener_rules_between_keys(options: dict[str, object], key: str,
                                           message: str) -> None:
    """The rules between keys give the first error, naming its key."""
    _, errors = check_listener(options)
    assert [(error.key, error.message) for error in errors] == [(key, message)]


def test_build_listener_takes_checked_options_as_they_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Options from check_listener are not converted again when built (one conversion)."""
    calls: list[object] = []
    convert = LISTENER_OPTIONS["queue_timeout"]

    def counting(value: object) -> object:
        calls.append(value)
        return convert(value)

    monkeypatch.setitem(LISTENER_OPTIONS, "queue_timeout", counting)
    values, errors = check_listener({"protocol": "fastcgi", "endpoint": "tcp:0",
                                     "native": APP, "queue_timeout": "90s"})
    listener = build_listener(values, reactor=MemoryReactorClock(), base_dir="/tmp")
    assert (errors, calls) == ([], ["90s"])
    assert listener.dispatcher.queue_timeout == 90.0  # type: ignore[attr-defined]


def test_a_config_file_converts_each_listener_option_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From YAML to a built app, a listener option goes through its converter once."""
    from daemonapp.assembly import Assembly
    from daemonapp.config import load_config

    calls: list[object] = []
    convert = LISTENER_OPTIONS["queue_timeout"]

    def counting(value: object) -> object:
        calls.append(value)
        return convert(value)

    monkeypatch.setitem(LISTENER_OPTIONS, "queue_timeout", counting)
    path = tmp_path / "app.yaml"
    path.write_text(f'listeners:\n  - {{protocol: fastcgi, native: "{APP}", '
                    'queue_timeout: 90s}\n')
    app = Assembly(load_config(str(path)), inherited=True).build(
        reactor=MemoryReactorClock(), stop_reactor=False, handle_signals=False,
        status_server=False)
    (listener,) = app.listeners
    assert calls == ["90s"]
    assert listener.dispatcher.queue_timeout == 90.0  # type: ignore[attr-defined]
    assert listener.endpoint.description == "fd:0"  # type: ignore[attr-defined]
