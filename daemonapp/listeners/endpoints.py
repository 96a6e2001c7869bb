"""Where a listener listens: Twisted endpoint strings, with safe ``unix:`` and our ``fd:N``.

- ``unix:PATH[:mode=0660][:backlog=N]``: the socket gets an explicit mode (default
  0660, never Twisted's 0666, no lock file). It is bound as ``PATH.new``, chmod'ed and
  renamed over ``PATH``, so a second process can take over without downtime; on stop
  PATH is unlinked only if its device and inode are still the ones we bound. A missing
  parent directory is created 0750 (chgrp'ed to ``socket_group`` when set).
- ``fd:N`` (``fd:fileno=N``): adopt an inherited listening socket (what a web server
  such as lighttpd or spawn-fcgi hands over on fd 0); it is set non-blocking first
  and its path is never unlinked.
- ``systemd:domain=UNIX:index=0`` (or ``name=``): Twisted reads which inherited socket
  it is (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES); it is then adopted as ``fd:N`` is, so
  its path is never unlinked and it is closed without ``shutdown()``: systemd listens on
  it between service restarts (Twisted's adopted unix port would do both, and chmod it).
- anything else (``tcp:8000:interface=127.0.0.1``) goes to
  ``twisted.internet.endpoints.serverFromString``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.listeners.exchange import ascii_digits
from daemonapp.unixsocket import (  # noqa: F401 - re-exported: this module's names before
    OwnedUNIXPort,
    PlainUNIXServer,
    PreparedUnix,
    from_fd,
    group_id,
)

log = Logger()

DEFAULT_SOCKET_MODE = 0o660
DEFAULT_DIR_MODE = 0o750
DEFAULT_BACKLOG = 128


@dataclass(frozen=True)
class EndpointSpec:
    """A parsed endpoint description."""

    kind: str  # "unix", "fd" or "twisted"
    description: str
    path: str | None = None
    mode: int = DEFAULT_SOCKET_MODE
    backlog: int = DEFAULT_BACKLOG
    fd: int | None = None


def _split(description: str) -> list[str]:
    """Split on ``:`` honouring backslash escapes, as Twisted's endpoint strings do."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_mode(value: object) -> int:
    """A permission mode from ``"0660"``, ``"660"``, ``"0o660"`` or an int (read as is)."""
    if isinstance(value, bool):
        raise ValueError(f'expected an octal mode like "0660", got {value!r}')
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise ValueError(f'expected an octal mode like "0660", got {value!r}') from None
    else:
        raise ValueError(f'expected an octal mode like "0660", got {value!r}')
    if not 0 <= mode <= 0o777:
        raise ValueError(f"expected a mode between 0000 and 0777, got {value!r}")
    return mode


def parse_endpoint(description: str | None, *, base_dir: str = ".",
                   mode: int | None = None) -> EndpointSpec:
    """Parse an endpoint description (None means the inherited fd 0).

    Relative unix paths are resolved against ``base_dir``. Raises ValueError with a
    message for users.
    """
    if description is None:
        return EndpointSpec("fd", "fd:0", fd=0)
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f'expected an endpoint like "unix:/run/app/app.sock", '
                         f'"tcp:8000:interface=127.0.0.1" or "fd:0", got {description!r}')
    parts = _split(description.strip())
    kind = parts[0].lower()
    args = [p for p in parts[1:] if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if kind == "fd":
        text = kwargs.pop("fileno", None)
        if text is None and len(args) == 1:
            text = args[0]
        elif text is not None and args:
            text = None
        if kwargs or text is None or not ascii_digits(text):
            raise ValueError(f'expected "fd:N" with N a file descriptor number, '
                             f'got {description!r}')
        return EndpointSpec("fd", description, fd=int(text))
    if kind == "unix":
        path = kwargs.pop("address", None) or kwargs.pop("path", None) or (
            args[0] if args else None)
        if not path:
            raise ValueError(f'expected "unix:PATH", got {description!r}')
        socket_mode = mode if mode is not None else DEFAULT_SOCKET_MODE
        if "mode" in kwargs:
            socket_mode = parse_mode(kwargs.pop("mode"))
        backlog = DEFAULT_BACKLOG
        if "backlog" in kwargs:
            text = kwargs.pop("backlog")
            if not ascii_digits(text):
                raise ValueError(f"expected a number for backlog, got {text!r}")
            backlog = int(text)
        kwargs.pop("lockfile", None)  # never: the PATH.new/rename handover replaces it
        if kwargs:
            raise ValueError(f"unknown unix endpoint option(s) {sorted(kwargs)} in "
                             f"{description!r} (known: mode, backlog)")
        if len(path) >= 100:
            raise ValueError(f"unix socket path too long ({len(path)} bytes, at most 99): "
                             f"{path!r}")
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
        return EndpointSpec("unix", description, path=path, mode=socket_mode,
                            backlog=backlog)
    return EndpointSpec("twisted", description)


def _ensure_dir(directory: str, socket_group: str | None) -> None:
    if os.path.isdir(directory):
        return
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, DEFAULT_DIR_MODE)
    if socket_group is not None:
        os.chown(directory, -1, group_id(socket_group))


def bind_unix(spec: EndpointSpec, factory: Factory, reactor: Any,
              socket_group: str | None = None) -> OwnedUNIXPort:
    """Bind ``PATH.new`` with the mode, rename it over ``PATH`` and listen on it."""
    return _prepare_unix(spec, socket_group).commit(factory, reactor)


def _prepare_unix(spec: EndpointSpec, socket_group: str | None) -> PreparedUnix:
    path = spec.path
    assert path is not None
    _ensure_dir(os.path.dirname(path) or ".", socket_group)
    return PreparedUnix(path, spec.mode, spec.backlog, socket_group)


def is_listening_socket(fd: int) -> bool:
    """True when ``fd`` is a listening stream socket (SO_ACCEPTCONN, not getpeername)."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        probe.close()


def adopt_fd(fd: int, factory: Factory, reactor: Any) -> IListeningPort:
    """Listen on an inherited listening socket; its path is never unlinked."""
    if not is_listening_socket(fd):
        raise OSError(f"fd {fd} is not a listening socket")
    skt = socket.socket(fileno=os.dup(fd))
    try:
        skt.setblocking(False)  # web servers hand over blocking sockets
        family = skt.family
        if family == socket.AF_UNIX:
            port: Any = from_fd(reactor, skt.fileno(), factory)
            port.startListening()
        else:
            port = reactor.adoptStreamPort(skt.fileno(), family, factory)
    finally:
        skt.close()
    # Drop our reference to the original so that a drain really stops new connections.
    if fd <= 2:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    else:
        os.close(fd)
    log.info("listening on inherited fd {fd}", fd=fd)
    result: IListeningPort = port
    return result


def _listen_tcp_shared(endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint, factory: Factory,
                       reactor: Any, *, share_ports: frozenset[int]) -> IListeningPort:
    """Listen on a tcp endpoint's port with SO_REUSEPORT, so that the next process of
    the same config (and user) binds it too while this one still serves: a takeover
    of a tcp listener without downtime (DESIGN §4), as PATH.new does for unix. The
    kernel spreads new connections over both until this one drains (its queue
    accepted first). Unless it is one of ``share_ports`` (those a previous process of
    this config listens on), a port already in use is refused, as without SO_REUSEPORT:
    two apps never split a port by mistake."""
    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    # What Twisted's parser made of the string (the one owner of its syntax).
    interface, number, backlog = endpoint._interface, endpoint._port, endpoint._backlog
    if number and number not in share_ports:
        _bound(family, interface, number, share=False).close()  # in use: refused
    skt = _bound(family, interface, number, share=True)
    try:
        skt.listen(backlog)
        skt.setblocking(False)
        port: IListeningPort = reactor.adoptStreamPort(skt.fileno(), family, factory)
    finally:
        skt.close()  # (the port holds its own duplicate)
    return port


def _bound(family: int, interface: str, number: int, *, share: bool) -> socket.socket:
    """A tcp socket bound to ``interface``:``number`` with SO_REUSEADDR (as Twisted's own)
    and, when ``share``, SO_REUSEPORT; CannotListenError when it cannot be."""
    skt = socket.socket(family, socket.SOCK_STREAM)
    try:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        skt.bind((interface, number))
    except OSError as e:
        skt.close()
        raise CannotListenError(interface, number, e) from None
    return skt


class Prepared:
    """An endpoint bound as far as it can be without taking over anything (see `prepare`)."""

    def __init__(self, spec: EndpointSpec, factory: Factory, reactor: Any,
                 socket_group: str | None = None, *,
                 share_ports: frozenset[int] = frozenset()) -> None:
        self.spec = spec
        self.factory = factory
        self.reactor = reactor
        self.unix: PreparedUnix | None = None
        self.listening: defer.Deferred[IListeningPort] | None = None
        if spec.kind == "unix":
            self.unix = _prepare_unix(spec, socket_group)
        elif spec.kind != "fd":
            # A port has no path to take over: bind it now, so that a port in use fails
            # the start before any unix path is renamed.
            endpoint = serverFromString(reactor, spec.description)
            listening: defer.Deferred[IListeningPort]
            if isinstance(endpoint, AdoptedStreamServerEndpoint):  # systemd: an fd:N
                listening = defer.succeed(adopt_fd(endpoint.fileno, factory, reactor))
            elif isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint) \
                    and isinstance(reactor, PosixReactorBase):  # (a real one: real sockets)
                listening = defer.succeed(_listen_tcp_shared(endpoint, factory, reactor,
                                                             share_ports=share_ports))
            else:
                listening = endpoint.listen(factory)
            if listening.called and isinstance(listening.result, Failure):
                failure: Failure = listening.result
                listening.addErrback(lambda _: None)  # raised here instead
                failure.raiseException()
            self.listening = listening

    def commit(self) -> defer.Deferred[IListeningPort]:
        """Take the endpoint over and listen (usually fired already)."""
        spec = self.spec
        try:
            if self.unix is not None:
                unix_port = self.unix.commit(self.factory, self.reactor)
                log.info("listening on unix:{path} (mode {mode:04o})", path=spec.path,
                         mode=spec.mode)
                return defer.succeed(unix_port)
            if spec.kind == "fd":
                assert spec.fd is not None
                return defer.succeed(adopt_fd(spec.fd, self.factory, self.reactor))
        except Exception:
            return defer.fail()
        assert self.listening is not None
        return self.listening

    def abandon(self) -> None:
        """Undo `prepare`: close what was bound; no path of another process changes."""
        if self.unix is not None:
            self.unix.abandon()
        listening, self.listening = self.listening, None
        if listening is not None:
            listening.addCallback(lambda port: port.stopListening())
            listening.addErrback(lambda f: None)


def prepare(spec: EndpointSpec, factory: Factory, reactor: Any,
            socket_group: str | None = None, *,
            share_ports: frozenset[int] = frozenset()) -> Prepared:
    """Bind without taking over: unix at ``PATH.new``, ports for real (``share_ports``:
    those a previous process of this config listens on too); raises on errors."""
    return Prepared(spec, factory, reactor, socket_group, share_ports=share_ports)


def tcp_port(description: str, reactor: Any) -> int | None:
    """The port of a ``tcp:``/``tcp6:`` endpoint description (None: another kind)."""
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        port: int = endpoint._port
        return port
    return None


def listen(spec: EndpointSpec, factory: Factory, reactor: Any,
           socket_group: str | None = None) -> defer.Deferred[IListeningPort]:
    """Start listening; the Deferred has usually fired already (unix, fd, tcp)."""
    try:
        prepared = prepare(spec, factory, reactor, socket_group)
    except Exception:
        return defer.fail()
    return prepared.commit()
