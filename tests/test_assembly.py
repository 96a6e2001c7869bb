"""Tests for daemonapp.assembly: from a loaded Config to a running app."""

from __future__ import annotations

import marshal
import os
import textwrap
from pathlib import Path

import pytest

from daemonapp.assembly import write_sidecar
from daemonapp.config import load_config


def write(directory: Path, text: str, name: str = "daemons.yaml") -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


# ------------------------------------------------------------------ the sidecar


def test_sidecar_holds_what_the_cgi_frontend_needs(tmp_path: Path) -> None:
    """cgi.marshal names the socket, protocol, loads, timeouts, state_dir and argv."""
    path = write(tmp_path, """
        listeners:
          - {protocol: scgi, endpoint: "unix:run/app.sock", wsgi: "tests.test_config:app"}
        cgi: {min_load: 0.5, max_load: 6, start_timeout: 3s, lock_timeout: 2s}
    """)
    config = load_config(path)
    os.makedirs(config.app.state_dir)
    sidecar = write_sidecar(config, ["python", "-m", "daemonapp.cli", "run", path])
    assert sidecar == str(tmp_path / "var" / "cgi.marshal")
    with open(sidecar, "rb") as f:
        data = marshal.load(f)
    assert data == {
        "config": path,
        "wsgi": "tests.test_config:app",
        "socket": str(tmp_path / "run" / "app.sock"),
        "protocol": "scgi",
        "min_load": 0.5,
        "max_load": 6.0,
        "start_timeout": 3.0,
        "lock_timeout": 2.0,
        "state_dir": str(tmp_path / "var"),
        "argv": ["python", "-m", "daemonapp.cli", "run", path],
        "scgi_content_length": True,
    }
    assert os.stat(sidecar).st_mode & 0o777 == 0o600


def test_no_sidecar_without_a_unix_listener(tmp_path: Path) -> None:
    """Without an scgi/fastcgi unix listener there is nothing for the frontend."""
    config = load_config(write(tmp_path, "daemons: {}\n"))
    assert write_sidecar(config, []) is None


def test_the_sidecar_is_the_frontends_reading_of_the_file(tmp_path: Path) -> None:
    """What `run` writes is what the CGI frontend reads from the same YAML file, plus the
    daemon's own command and its Content-Length promise: the frontend owns the schema."""
    import yaml

    from daemonapp.cgi_frontend import sidecar_settings

    path = write(tmp_path, """
        app: {state_dir: ./state}
        listeners:
          - {protocol: http, endpoint: "tcp:0", wsgi: "tests.test_config:app"}
          - {protocol: fastcgi, endpoint: "unix:./run/f.sock", native: "tests.test_config:app"}
          - {protocol: scgi, endpoint: "unix:./run/s.sock:mode=0660", wsgi: "tests.test_config:app"}
        cgi: {max_load: 3, lock_timeout: 1m}
    """)
    config = load_config(path)
    os.makedirs(config.app.state_dir)
    sidecar = write_sidecar(config, ["daemonapp", "run", path])
    assert sidecar is not None
    with open(sidecar, "rb") as f:
        written = marshal.load(f)
    with open(path) as f:
        expected = sidecar_settings(path, yaml.safe_load(f))
    expected["argv"] = ["daemonapp", "run", path]
    expected["scgi_content_length"] = True
    assert list(written.items()) == list(expected.items())
    assert config.cgi_listener() == config.listeners[2]


@pytest.mark.parametrize("protocol", ["SCGI", "FastCGI"])
def test_the_frontend_reads_a_protocol_in_any_case(tmp_path: Path, protocol: str) -> None:
    """`protocol` is case-insensitive for daemonapp, so for the frontend too: with no
    sidecar yet (a first start on demand) it finds the listener `run` would write."""
    import yaml

    from daemonapp.cgi_frontend import sidecar_settings

    path = write(tmp_path, f"""
        listeners:
          - {{protocol: {protocol}, endpoint: "unix:./run/app.sock", wsgi: "tests.test_config:app"}}
        cgi: {{max_load: 4}}
    """)
    config = load_config(path)
    with open(path) as f:
        settings = sidecar_settings(path, yaml.safe_load(f))
    assert settings["protocol"] == protocol.lower()
    assert settings["socket"] == str(tmp_path / "run" / "app.sock")
    assert config.cgi_listener() == config.listeners[0]


# ----------------------------------------------------------------- assembling


def test_a_spawned_process_serves_fd0_with_a_short_drain(tmp_path: Path) -> None:
    """Under a web server (fd 0 inherited) the fastcgi item without endpoint serves fd:0,
    the drain fits before the server's SIGKILL and the status socket has the pid in it."""
    from twisted.internet.testing import MemoryReactorClock

    from daemonapp.assembly import Assembly

    path = write(tmp_path, """
        app: {stop_timeout: 30s}
        listeners:
          - {protocol: fastcgi, wsgi: "tests.test_config:app"}
    """)
    app = Assembly(load_config(path), inherited=True).build(
        reactor=MemoryReactorClock(), stop_reactor=False, handle_signals=False,
        status_server=True)
    assert app.stop_timeout == 2.0
    assert [listener.endpoint.description for listener in app.listeners] == ["fd:0"]
    status = [child for child in app if not hasattr(child, "drain")]
    assert [child.path for child in status] == [
        str(tmp_path / "var" / f"status.{os.getpid()}.sock")]


def test_fd0_refused_when_no_web_server_passed_it(tmp_path: Path) -> None:
    """A fastcgi item without endpoint is a config error when fd 0 is not listening,
    and nothing (not even state_dir) is created."""
    from daemonapp.assembly import Assembly
    from daemonapp.config import ConfigError

    path = write(tmp_path, """
        listeners:
          - {protocol: fastcgi, wsgi: "tests.test_config:app"}
    """)
    with pytest.raises(ConfigError) as info:
        Assembly(load_config(path), inherited=False).prepare()
    assert info.value.messages[0].startswith(
        f"{path}:2: listeners[0].endpoint: no endpoint (or fd:0) means the listening socket")
    assert not (tmp_path / "var").exists()


def test_an_unbound_listener_stops_the_app_with_status_1(tmp_path: Path) -> None:
    """when_listening stops the app (exit 1) once it runs with a listener not bound, and
    tells the caller (a takeover then leaves the previous process alone)."""
    from twisted.internet.testing import MemoryReactorClock

    from daemonapp.assembly import Assembly

    path = write(tmp_path, """
        listeners:
          - {protocol: http, endpoint: "tcp:0:interface=127.0.0.1", wsgi: "tests.test_config:app"}
    """)
    reactor = MemoryReactorClock()
    assembly = Assembly(load_config(path))
    app = assembly.build(reactor=reactor, stop_reactor=False, handle_signals=False,
                         status_server=False)
    told: list[bool] = []
    assembly.when_listening(app, told.append)
    for hook in reactor.whenRunningHooks:  # the reactor starts; the app is not started
        hook[0](*hook[1], **hook[2])
    reactor.advance(0)
    assert told == [False]
    assert app.stop_reason is not None and "not listening" in app.stop_reason


@pytest.mark.parametrize(("app_yaml", "inherited", "expected"), [
    ("{}", False, False),
    ("{processes: 2}", False, True),
    ("{}", True, True),
])
def test_wsgi_multiprocess_says_whether_other_processes_serve_the_app(
        tmp_path: Path, app_yaml: str, inherited: bool, expected: bool) -> None:
    """PEP 3333's wsgi.multiprocess is true when app.processes > 1 or a web server
    spawned the process (it may spawn siblings), false for one process of its own."""
    from twisted.internet.testing import MemoryReactorClock

    from daemonapp.assembly import Assembly

    endpoint = "" if inherited else f", endpoint: 'unix:{tmp_path}/app.sock'"
    path = write(tmp_path, f"""
        app: {app_yaml}
        listeners:
          - {{protocol: fastcgi, wsgi: "tests.test_config:app"{endpoint}}}
    """)
    app = Assembly(load_config(path), inherited=inherited).build(
        reactor=MemoryReactorClock(), stop_reactor=False, handle_signals=False,
        status_server=False)
    (listener,) = app.listeners
    # what every request's environ starts from
    assert listener.app._base["wsgi.multiprocess"] is expected  # type: ignore[attr-defined]
