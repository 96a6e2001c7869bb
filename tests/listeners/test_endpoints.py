"""Endpoints: unix sockets with a mode, PATH.new takeover, inode-checked unlink, fd:N."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from daemonapp.listeners.endpoints import (
    adopt_fd,
    bind_unix,
    is_listening_socket,
    parse_endpoint,
    parse_mode,
)
from tests._processes import popen_run, running, wait_ready, write_scgi_app


def _factory() -> Factory:
    return Factory.forProtocol(Protocol)


def _stop(port: object, clock: MemoryReactorClock) -> None:
    port.stopListening()  # type: ignore[attr-defined]
    clock.advance(0)


def test_parse_unix_defaults(tmp_path: Path) -> None:
    """A relative unix path resolves against base_dir; the mode defaults to 0660."""
    spec = parse_endpoint("unix:run/app.sock", base_dir=str(tmp_path))
    assert (spec.kind, spec.path, spec.mode) == ("unix", str(tmp_path / "run/app.sock"), 0o660)


def test_parse_unix_options() -> None:
    """mode= and backlog= are read from the string; lockfile= is ignored."""
    spec = parse_endpoint("unix:address=/run/a.sock:mode=0600:backlog=7:lockfile=1")
    assert (spec.path, spec.mode, spec.backlog) == ("/run/a.sock", 0o600, 7)


def test_parse_fd_forms() -> None:
    """fd:3, fd:fileno=3 and no endpoint at all (fd 0) are our own fd endpoints."""
    assert parse_endpoint("fd:3").fd == 3
    assert parse_endpoint("fd:fileno=3").fd == 3
    assert parse_endpoint(None).fd == 0


def test_numbers_in_other_digits_are_clear_errors() -> None:
    """fd:² and backlog=² are refused with the endpoint's own message, not int()'s."""
    with pytest.raises(ValueError, match="file descriptor number"):
        parse_endpoint("fd:\u00b2")
    with pytest.raises(ValueError, match="a number for backlog"):
        parse_endpoint("unix:/tmp/x.sock:backlog=\u00b2")


def test_parse_twisted_endpoints() -> None:
    """tcp: and systemd: descriptions go to Twisted's serverFromString."""
    assert parse_endpoint("tcp:8000:interface=127.0.0.1").kind == "twisted"
    assert parse_endpoint("systemd:domain=UNIX:index=0").kind == "twisted"


def test_parse_errors() -> None:
    """Bad endpoints raise ValueError with a message."""
    for bad in ("fd:x", "unix:", "unix:/a:colour=red", ""):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_parse_mode() -> None:
    """Modes are octal strings (with or without 0 / 0o) or ints."""
    assert [parse_mode("0660"), parse_mode("640"), parse_mode("0o600"), parse_mode(0o644)] == [
        0o660, 0o640, 0o600, 0o644]
    with pytest.raises(ValueError):
        parse_mode("rw-rw----")


def test_bind_unix_mode_and_directory(tmp_path: Path) -> None:
    """The socket gets its mode, the created directory 0750, and no PATH.new is left."""
    clock = MemoryReactorClock()
    path = tmp_path / "sockdir" / "app.sock"
    port = bind_unix(parse_endpoint(f"unix:{path}:mode=0640"), _factory(), clock)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750
        assert not Path(f"{path}.new").exists()
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # the kernel queues it: the socket listens
        client.close()
    finally:
        _stop(port, clock)
    assert not path.exists()


def test_takeover_keeps_the_new_socket(tmp_path: Path) -> None:
    """A second bind takes the path over; stopping the first leaves the second's socket."""
    clock = MemoryReactorClock()
    path = tmp_path / "app.sock"
    spec = parse_endpoint(f"unix:{path}")
    old = bind_unix(spec, _factory(), clock)
    new = bind_unix(spec, _factory(), clock)
    inode = os.stat(path).st_ino
    _stop(old, clock)
    assert os.stat(path).st_ino == inode
    _stop(new, clock)
    assert not path.exists()


def test_refuses_to_replace_a_file(tmp_path: Path) -> None:
    """A regular file at the socket path is never replaced."""
    path = tmp_path / "app.sock"
    path.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        bind_unix(parse_endpoint(f"unix:{path}"), _factory(), MemoryReactorClock())
    assert path.read_text() == "data"


def test_adopt_inherited_unix_socket(tmp_path: Path) -> None:
    """fd:N adopts a blocking listening socket, makes it non-blocking, never unlinks it."""
    clock = MemoryReactorClock()
    path = tmp_path / "web.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(5)
    fd = os.dup(server.fileno())
    server.close()
    assert is_listening_socket(fd)
    port = adopt_fd(fd, _factory(), clock)
    flags = fcntl.fcntl(port.socket.fileno(), fcntl.F_GETFL)  # type: ignore[attr-defined]
    assert flags & os.O_NONBLOCK
    _stop(port, clock)
    assert path.exists()


def test_connected_socket_is_not_listening() -> None:
    """A connected (not listening) socket is detected with SO_ACCEPTCONN."""
    left, right = socket.socketpair()
    try:
        assert not is_listening_socket(left.fileno())
        with pytest.raises(OSError, match="not a listening socket"):
            adopt_fd(left.fileno(), _factory(), MemoryReactorClock())
    finally:
        left.close()
        right.close()


@pytest.mark.integration
def test_unix_endpoint_explicit_mode(tmp_path: Path) -> None:
    """A unix endpoint's mode= is applied to the socket (0600 here), and it is not 0666."""
    cfg = write_scgi_app(tmp_path, "unix:./run/app.sock:mode=0600")
    with running(popen_run(tmp_path, cfg)) as proc:
        sock = tmp_path / "run" / "app.sock"
        assert wait_ready(proc, sock)
        assert proc.poll() is None
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_a_shared_tcp_bind_joins_only_the_ports_it_is_told() -> None:
    """A port another socket listens on (with SO_REUSEPORT, as a previous daemonapp run
    does) is refused unless it is one of share_ports (a takeover of this config)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.error import CannotListenError

    from daemonapp.listeners.endpoints import _listen_tcp_shared, tcp_port

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    number = holder.getsockname()[1]
    endpoint = TCP4ServerEndpoint(reactor, number, interface="127.0.0.1")
    try:
        with pytest.raises(CannotListenError):
            _listen_tcp_shared(endpoint, _factory(), reactor, share_ports=frozenset())
        port = _listen_tcp_shared(endpoint, _factory(), reactor,
                                  share_ports=frozenset({number}))
        assert port.getHost().port == number
        port.stopListening()
    finally:
        holder.close()
    assert tcp_port(f"tcp:{number}:interface=127.0.0.1", reactor) == number
    assert tcp_port("unix:/tmp/x.sock", reactor) is None
