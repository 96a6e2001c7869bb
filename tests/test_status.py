"""Tests for daemonapp.status: the status socket, its client and the table."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from daemonapp.control import REQUEST_GRACE, ControlFactory
from daemonapp.status import (
    StatusService,
    fetch_status,
    format_status,
    status_socket_path,
)
from daemonapp.unixsocket import PreparedUnix

SNAPSHOT: dict[str, Any] = {
    "pid": 4242,
    "state": "running",
    "now": 1000.0,
    "started_at": 900.0,
    "uptime": 100.0,
    "stop_reason": None,
    "daemons": [
        {"name": "collective", "type": "myapp.ldap:Replicator", "priority": 0,
         "running": False, "runs": 12, "items": 30, "failures": 1,
         "last_outcome": "idle", "current_delay": 40.0, "next_run_at": 1030.0,
         "last_run_at": 990.0},
        {"name": "cleanup", "type": "daemonapp.daemons.file_cleanup:FileCleanup",
         "priority": 0, "running": True, "runs": 1, "items": 0, "failures": 0,
         "last_outcome": None, "current_delay": None, "next_run_at": None,
         "last_run_at": None},
    ],
    "listeners": [{"name": "scgi:unix:/run/a.sock", "protocol": "scgi", "listening": True,
                   "in_flight": 2, "requests": 10, "rejected_503": 1, "path": "/run/a.sock"}],
}


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A short temporary directory: unix socket paths are limited to ~107 bytes."""
    directory = tempfile.mkdtemp(prefix="dst")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_socket_path_is_in_state_dir() -> None:
    """The status socket is state_dir/status.sock."""
    assert status_socket_path("/srv/app/var") == "/srv/app/var/status.sock"


def _factory(snapshot: Any, clock: Any = None) -> ControlFactory:
    from twisted.internet.task import Clock

    return ControlFactory(snapshot, clock if clock is not None else Clock())


def test_protocol_writes_the_snapshot_and_closes() -> None:
    """A status request gets the snapshot as one JSON line, then the server closes it."""
    protocol = _factory(lambda: {"pid": 1, "daemons": []}).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b'{"v": 1, "command": "status"}\n')
    assert transport.value() == b'{"pid": 1, "daemons": []}\n'
    assert transport.disconnecting


def test_a_silent_client_gets_the_snapshot_after_the_grace() -> None:
    """A client that sends nothing (as before commands existed) still gets the status."""
    from twisted.internet.task import Clock

    clock = Clock()
    protocol = _factory(lambda: {"pid": 1}, clock).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b""
    clock.advance(REQUEST_GRACE)
    assert transport.value() == b'{"pid": 1}\n'
    assert transport.disconnecting


def test_a_client_that_never_reads_is_cut_off() -> None:
    """A status client that reads nothing (and sends garbage) is aborted after 10 s."""
    from twisted.internet.task import Clock

    clock = Clock()
    protocol = _factory(lambda: {"pid": 1}, clock).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\x00garbage" * 1000 + b"\n")
    assert json.loads(transport.value())["refused"] == "bad_request"
    clock.advance(9.9)
    assert not transport.disconnected
    clock.advance(0.1)
    assert transport.disconnected  # abortConnection: the unread answer is dropped
    protocol.connectionLost(None)  # type: ignore[arg-type]
    assert clock.getDelayedCalls() == []


def test_a_failing_snapshot_answers_an_error() -> None:
    """When the snapshot raises, the client still gets a JSON answer."""
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    protocol = _factory(broken).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b'{"command": "status"}\n')
    assert json.loads(transport.value()) == {"error": "snapshot failed"}


def _status_port(path: str) -> Any:
    """The status socket's port, bound as StatusService binds it."""
    return PreparedUnix(path, 0o600, 16).commit(_factory(dict), MemoryReactorClock())


def test_port_binds_a_private_socket(short_dir: str) -> None:
    """The status socket is a unix socket with mode 0600."""
    directory = short_dir
    path = os.path.join(directory, "status.sock")
    port = _status_port(path)
    try:
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert not os.path.exists(path + ".new")
    finally:
        port.connectionLost(None)
    assert not os.path.exists(path)


def test_port_leaves_a_successors_socket_alone(short_dir: str) -> None:
    """A stopping port does not unlink a socket a successor renamed over its path."""
    directory = short_dir
    path = os.path.join(directory, "status.sock")
    first = _status_port(path)
    second = _status_port(path)
    first.connectionLost(None)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    second.connectionLost(None)
    assert not os.path.exists(path)


def test_service_survives_an_unusable_path() -> None:
    """A status socket that cannot be bound is logged; the service keeps going."""
    class App:
        reactor = MemoryReactorClock()

        def snapshot(self) -> dict[str, Any]:
            return {}

    service = StatusService(App(), "/nonexistent-dir-xyz/status.sock")
    service.startService()
    assert service.running
    service.stopService()


def serve_once(path: str, payload: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        assert conn.recv(1024) == b'{"v": 1, "command": "status"}\n'
        conn.sendall(payload)
        conn.close()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_fetch_status_reads_the_snapshot(short_dir: str) -> None:
    """fetch_status accepts a state_dir and returns the decoded JSON object."""
    directory = short_dir
    thread = serve_once(status_socket_path(directory), b'{"pid": 7, "daemons": []}\n')
    assert fetch_status(directory) == {"pid": 7, "daemons": []}
    thread.join(5)


def test_fetch_status_without_an_app(short_dir: str) -> None:
    """With nothing listening, fetch_status raises OSError."""
    with pytest.raises(OSError):
        fetch_status(short_dir, timeout=1.0)


def test_fetch_status_refuses_non_objects(short_dir: str) -> None:
    """An answer that is not a JSON object is a ValueError."""
    directory = short_dir
    thread = serve_once(status_socket_path(directory), b"[1, 2]\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        fetch_status(directory)
    thread.join(5)


def test_format_status_table() -> None:
    """The table lists each daemon's outcome, counts, delay and next run, and listeners."""
    assert format_status(SNAPSHOT) == "\n".join([
        "pid 4242  state running  uptime 1m40s",
        "",
        "daemons (2)",
        "NAME        TYPE         LAST  RUNS  ITEMS  FAILURES  DELAY  NEXT RUN  PAUSED",
        "collective  Replicator   idle  12    30     1         40s    in 30s    -",
        "cleanup     FileCleanup  -     1     0      0         -      running   -",
        "",
        "listeners (1)",
        "NAME                   LISTENING  IN_FLIGHT  REQUESTS  503",
        "scgi:unix:/run/a.sock  True       2          10        1",
    ])


def test_format_status_shows_uploads_in_progress() -> None:
    """A listener's requests whose body still arrives have their own column."""
    listener = {**SNAPSHOT["listeners"][0], "receiving": 3}
    text = format_status({**SNAPSHOT, "listeners": [listener]})
    assert text.splitlines()[-2:] == [
        "NAME                   LISTENING  RECEIVING  IN_FLIGHT  REQUESTS  503",
        "scgi:unix:/run/a.sock  True       3          2          10        1",
    ]


def test_format_status_shows_pauses() -> None:
    """A paused daemon shows "paused" as its next run, and the time left and reason."""
    paused = {**SNAPSHOT["daemons"][0], "paused": True, "paused_since": 900.0,
              "paused_until": 1600.0, "paused_reason": "migration"}
    text = format_status({**SNAPSHOT, "daemons": [paused]})
    assert "40s    paused    10m00s left (migration)" in text


def test_format_status_shows_jobs_when_present() -> None:
    """A snapshot with a jobs entry gets a jobs section."""
    text = format_status({**SNAPSHOT, "jobs": {"pending": 3, "running": 1}})
    assert text.endswith("jobs\nKEY      VALUE\npending  3\nrunning  1")


def test_spawned_status_sockets_are_found_by_pid(tmp_path: Path) -> None:
    """Only status.<pid>.sock names count, sorted by pid; others are ignored."""
    from daemonapp.status import spawned_status_sockets, status_socket_path

    for name in ("status.sock", "status.20.sock", "status.3.sock", "status.x.sock",
                 "status.3.sock.new", "pids"):
        (tmp_path / name).touch()
    assert spawned_status_sockets(str(tmp_path)) == [
        (3, str(tmp_path / "status.3.sock")), (20, str(tmp_path / "status.20.sock"))]
    assert status_socket_path(str(tmp_path), 3) == str(tmp_path / "status.3.sock")
    assert spawned_status_sockets(str(tmp_path / "missing")) == []


def test_format_status_shows_clock_schedules() -> None:
    """Clock-scheduled daemons get a table: schedule, next fire in its zone and UTC, misfires."""
    snapshot = {"pid": 1, "state": "running", "uptime": 5, "now": 0.0, "daemons": [
        {"name": "nightly", "type": "m:Nightly", "last_outcome": None, "runs": 0, "items": 0,
         "failures": 0, "current_delay": None, "next_run_at": 3600.0,
         "schedule": "30 2 * * *", "next_fire": "2026-03-29T03:00:00+02:00",
         "misfires": {"overrun": 2, "downtime": 1}},
    ], "listeners": []}
    text = format_status(snapshot)
    assert text.split("\n")[-3:] == [
        "clock schedules (1)",
        "NAME     SCHEDULE    NEXT FIRE                  NEXT FIRE (UTC)            MISFIRES",
        "nightly  30 2 * * *  2026-03-29T03:00:00+02:00  2026-03-29T01:00:00+00:00  "
        "downtime 1, overrun 2",
    ]
