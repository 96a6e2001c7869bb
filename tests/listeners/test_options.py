"""The config seam: LISTENER_OPTIONS converters and build_listener errors."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from daemonapp.daemon import OptionError
from daemonapp.listeners import LISTENER_OPTIONS, build_listener


def test_every_documented_key_has_a_converter() -> None:
    """LISTENER_OPTIONS has exactly the listener item keys."""
    assert sorted(LISTENER_OPTIONS) == sorted([
        "protocol", "endpoint", "wsgi", "native", "jobs", "threads", "max_concurrent",
        "backlog", "queue_timeout", "max_param_bytes", "max_body_bytes", "request_timeout",
        "max_requests", "max_requests_jitter", "allow_from", "script_name", "socket_group",
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
