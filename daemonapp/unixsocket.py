"""Unix listening sockets bound without a window: ``PATH.new``, then a rename over ``PATH``.

The one owner of that rule, for the listeners and the status socket alike: bind and
listen at ``PATH.new`` (`PreparedUnix`), rename over ``PATH`` only once everything a
process serves is bound (`PreparedUnix.commit`), and on stop unlink ``PATH`` only while
it is still the socket we bound (`OwnedUNIXPort`), since a successor may have renamed
its own over it.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

__all__ = ["OwnedUNIXPort", "PlainUNIXServer", "PreparedUnix", "from_fd", "group_id"]


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
        # close(), never shutdown(): the socket may be shared (a web server's fd 0 among
        # its spawned processes, the workers of app.processes), and a shutdown would stop
        # it listening for all of them (Twisted does the same for an adopted port)
        port._shouldShutdown = False
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

def from_fd(reactor: Any, fd: int, factory: Factory) -> Any:
    port_class: Any = OwnedUNIXPort
    return port_class._fromListeningDescriptor(reactor, fd, factory)


def group_id(name: str) -> int:
    """The gid of a group given by name or number."""
    if name.isascii() and name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no such group {name!r}") from None


class PreparedUnix:
    """A unix socket bound at ``PATH.new`` and listening, not yet renamed over ``PATH``.

    The first half of the zero-downtime bind: a process binds *every* socket it will
    serve this way first, and only when all of them are bound does it `commit` them
    (rename over the paths). A start that fails abandons what it prepared, so the
    previous process's paths stay exactly as they were (DESIGN §4). When nothing is
    at ``PATH`` yet (no process to take over from), it binds ``PATH`` itself: the
    kernel keeps a socket's bind-time name, which peers are told (``getpeername``),
    and a rename does not change it.
    """

    def __init__(self, path: str, mode: int, backlog: int,
                 socket_group: str | None = None) -> None:
        self.path = path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.new = path  # nothing to take over: bind the real name at once
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(f"{path} exists and is not a socket: refusing to replace it")
            self.new = path + ".new"
        try:
            if self.new != path and stat.S_ISSOCK(os.lstat(self.new).st_mode):
                os.unlink(self.new)  # left by a process that died between bind and rename
        except FileNotFoundError:
            pass
        skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            skt.bind(self.new)
            try:
                os.chmod(self.new, mode)
                if socket_group is not None:
                    os.chown(self.new, -1, group_id(socket_group))
                skt.listen(backlog)
                skt.setblocking(False)
                st = os.lstat(self.new)
            except BaseException:
                _unlink_if(self.new, None)
                raise
        except BaseException:
            skt.close()
            raise
        self.socket: socket.socket | None = skt
        self.identity = (st.st_dev, st.st_ino)

    def commit(self, factory: Factory, reactor: Any) -> OwnedUNIXPort:
        """Rename the socket over the path and listen on it with ``factory``."""
        skt = self.socket
        assert skt is not None, "committed or abandoned already"
        self.socket = None
        try:
            if self.new != self.path:
                os.rename(self.new, self.path)
            port: OwnedUNIXPort = from_fd(reactor, skt.fileno(), factory)
        except BaseException:
            _unlink_if(self.new, self.identity)
            raise
        finally:
            skt.close()  # the port holds its own duplicate
        port._bindPath = self.path
        port.owned_path = self.path
        port.owned_identity = self.identity
        port.startListening()
        return port

    def abandon(self) -> None:
        """Close the socket and remove what it bound (``PATH.new``, or ``PATH`` when it
        bound that itself); another process's socket is never touched."""
        skt, self.socket = self.socket, None
        if skt is not None:
            skt.close()
            _unlink_if(self.new, self.identity)


def _unlink_if(path: str, identity: tuple[int, int] | None) -> None:
    """Unlink ``path`` when it is (still) the socket of ``identity`` (any, when None)."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and identity in (None, (st.st_dev, st.st_ino)):
            os.unlink(path)
    except OSError:
        pass
