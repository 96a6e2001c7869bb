"""Where a listener listens: Twisted endpoint strings, with safe ``unix:`` and our ``fd:N``.

- ``unix:PATH[:mode=0660][:backlog=N]``: the socket gets an explicit mode (default
  0660, never Twisted's 0666, no lock file). It is bound as ``PATH.new``, chmod'ed and
  renamed over ``PATH``, so a second process can take over without downtime; on stop
  PATH is unlinked only if its device and inode are still the ones we bound. A missing
  parent directory is created 0750 (chgrp'ed to ``socket_group`` when set).
- ``fd:N`` (``fd:fileno=N``): adopt an inherited listening socket (what a web server
  such as lighttpd or spawn-fcgi hands over on fd 0); it is set non-blocking first
  and its path is never unlinked.
- anything else (``tcp:8000:interface=127.0.0.1``, ``systemd:domain=UNIX:index=0``)
  goes to ``twisted.internet.endpoints.serverFromString``.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, tcp, unix
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

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
        if kwargs or text is None or not text.isdigit():
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
            if not text.isdigit():
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


class PlainUNIXServer(unix.Server):  # type: ignore[misc]
    """A unix connection that reads with ``recv()``.

    Twisted's unix connection reads with ``recvmsg()`` through a wrapper, to receive
    file descriptors, which a web server never sends; a plain read costs less on
    every request.
    """

    doRead = tcp.Connection.doRead  # type: ignore[assignment]


class OwnedUNIXPort(unix.Port):  # type: ignore[misc]
    """A UNIX port over a socket we bound ourselves (or inherited).

    Twisted's Port chmods its path when it starts and unlinks it when it stops; during
    a zero-downtime handover that would break the new process's socket, so this port
    does neither: it unlinks ``owned_path`` only while that path is still the socket
    we bound (same device and inode).
    """

    transport = PlainUNIXServer
    owned_path: str | None = None
    owned_identity: tuple[int, int] | None = None

    def startListening(self) -> None:
        port: Any = self  # Twisted's Port is untyped
        skt = port._preexistingSocket
        port._preexistingSocket = None
        skt.setblocking(False)  # a blocking accept would hang the reactor
        port.factory.doStart()
        port.connected = True
        port.socket = skt
        port.fileno = skt.fileno
        port.numberAccepts = 100
        port.startReading()

    def connectionLost(self, reason: Failure) -> None:
        path, identity = self.owned_path, self.owned_identity
        if path is not None and identity is not None:
            try:
                st = os.lstat(path)
            except OSError:
                pass
            else:
                if (st.st_dev, st.st_ino) == identity:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        tcp.Port.connectionLost(self, reason)

def _from_fd(reactor: Any, fd: int, factory: Factory) -> Any:
    port_class: Any = OwnedUNIXPort
    return port_class._fromListeningDescriptor(reactor, fd, factory)


def _ensure_dir(directory: str, socket_group: str | None) -> None:
    if os.path.isdir(directory):
        return
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, DEFAULT_DIR_MODE)
    if socket_group is not None:
        os.chown(directory, -1, group_id(socket_group))


def group_id(name: str) -> int:
    """The gid of a group given by name or number."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no such group {name!r}") from None


def bind_unix(spec: EndpointSpec, factory: Factory, reactor: Any,
              socket_group: str | None = None) -> OwnedUNIXPort:
    """Bind ``PATH.new`` with the mode, rename it over ``PATH`` and listen on it."""
    path = spec.path
    assert path is not None
    _ensure_dir(os.path.dirname(path) or ".", socket_group)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket: refusing to replace it")
    new = path + ".new"
    try:
        if stat.S_ISSOCK(os.lstat(new).st_mode):
            os.unlink(new)  # left by a process that died between bind and rename
    except FileNotFoundError:
        pass
    skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        skt.bind(new)
        try:
            os.chmod(new, spec.mode)
            if socket_group is not None:
                os.chown(new, -1, group_id(socket_group))
            skt.listen(spec.backlog)
            skt.setblocking(False)
            os.rename(new, path)
        except BaseException:
            try:
                os.unlink(new)
            except OSError:
                pass
            raise
        st = os.lstat(path)
        port: OwnedUNIXPort = _from_fd(reactor, skt.fileno(), factory)
    finally:
        skt.close()  # the port holds its own duplicate
    port._bindPath = path
    port.owned_path = path
    port.owned_identity = (st.st_dev, st.st_ino)
    port.startListening()
    log.info("listening on unix:{path} (mode {mode:04o})", path=path, mode=spec.mode)
    return port


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
            port: Any = _from_fd(reactor, skt.fileno(), factory)
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


def listen(spec: EndpointSpec, factory: Factory, reactor: Any,
           socket_group: str | None = None) -> defer.Deferred[IListeningPort]:
    """Start listening; the Deferred has usually fired already (unix, fd, tcp)."""
    try:
        if spec.kind == "unix":
            return defer.succeed(bind_unix(spec, factory, reactor, socket_group))
        if spec.kind == "fd":
            assert spec.fd is not None
            return defer.succeed(adopt_fd(spec.fd, factory, reactor))
        endpoint = serverFromString(reactor, spec.description)
    except Exception:
        return defer.fail()
    result: defer.Deferred[IListeningPort] = endpoint.listen(factory)
    return result
