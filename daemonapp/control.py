"""Commands to a running app over its status socket: trigger, pause, resume, reload.

The protocol (DESIGN §9, docs/operations.md "Operating a live app"): a client sends
one line of JSON, ``{"v": 1, "command": ...}``, and gets one line of JSON back, then
the app closes the connection. A client that sends nothing within `REQUEST_GRACE`
gets the status snapshot, as every client did before commands existed. Requests are
bounded (`MAX_REQUEST_BYTES`, `REQUEST_TIMEOUT`); the status is for anyone who can
reach the socket, commands only for the app's own uid or root (SO_PEERCRED), and
every command and refusal is logged with the peer's uid and pid.

`Controller` (a service named "control" in the app) carries the commands out: a
pause through daemonapp.pauses (kept in ``state_dir/pauses.json``), a reload through
daemonapp.reload; `Controller.reload` is the one place where a reload begins and ends
(`Controller.on_reload` hooks: systemd's RELOADING=1 / READY=1). `send_request` is
the client's side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemonapp.configmodel import Config, LogSettings
from daemonapp.pauses import (
    MAX_PAUSE_SECONDS,
    MAX_REASON,
    PauseKeeper,
    PauseStore,
    iso_time,
    number,
    pause_fields,
)
from daemonapp.ratelog import Episode, RateLog
from daemonapp.reload import Difference, Refused, Reloader

__all__ = [
    "COMMANDS",
    "COMMAND_TRIES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_GRACE",
    "REQUEST_TIMEOUT",
    "ControlFactory",
    "Controller",
    "Peer",
    "connect_unix",
    "controller_of",
    "peer_credentials",
    "refusal",
    "send_request",
]

log = Logger(namespace="daemonapp.control")

#: The protocol's version: a request carries it as ``"v"``, every reply too.
PROTOCOL_VERSION = 1
#: The longest request line (the newline included).
MAX_REQUEST_BYTES = 64 * 1024
#: A client silent for this long after it connected gets the status snapshot.
REQUEST_GRACE = 0.25
#: A request line not complete this long after the connection is answered with an error.
REQUEST_TIMEOUT = 5.0
#: Seconds a client has to read its answer; one that never reads is cut off.
WRITE_TIMEOUT = 10.0
#: Connections served at once; beyond that a new one is closed at once (and logged, at
#: most once a minute), so a flood cannot take the app's file descriptors.
MAX_CLIENTS = 1024
#: Bad requests are logged at most once per this many seconds (with a count).
BAD_REQUEST_LOG_EVERY = 60.0
#: How often a client sends a command the app answered with its status (send_request).
COMMAND_TRIES = 3
#: How many daemon names an "unknown daemon" answer lists.
_NAMES_SHOWN = 20

#: A reply: a JSON object, or (a reload) a Deferred of one.
Reply = dict[str, Any] | Deferred[dict[str, Any]]

#: The commands (``status`` is a read, not a command).
COMMANDS = ("trigger", "pause", "resume", "reload")


class Peer(NamedTuple):
    """Who is on the other end of a Unix socket (SO_PEERCRED); -1 when unknown."""

    pid: int
    uid: int
    gid: int


UNKNOWN_PEER = Peer(-1, -1, -1)


def peer_credentials(transport: Any) -> Peer:
    """The peer of a connected Unix socket transport (Linux: SO_PEERCRED)."""
    option = getattr(socket, "SO_PEERCRED", None)
    get_handle = getattr(transport, "getHandle", None)
    if option is None or get_handle is None:
        return UNKNOWN_PEER
    try:
        raw = get_handle().getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
    except (OSError, struct.error, AttributeError):
        return UNKNOWN_PEER
    return Peer(pid, uid, gid)


def _reply(ok: bool, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": ok, **fields}


def refusal(code: str, error: str, **fields: Any) -> dict[str, Any]:
    """A refused request: ``refused`` is a code (bad_request, not_permitted,
    unknown_daemon, unavailable, invalid_config), ``error`` the words for people."""
    return _reply(False, refused=code, error=error, **fields)


# ---------------------------------------------------------------- the protocol


@implementer(IHalfCloseableProtocol)
class _ControlProtocol(Protocol):
    """One connection: at most one request line, one answer line, then close.

    A client that closes its side first (``socat ... < /dev/null``) has said all it
    will: nothing means the status, as before commands existed; a line without its
    newline is the request.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._answered = False
        self._timer: Any = None
        self._counted = False
        self._lost = False
        self.peer = UNKNOWN_PEER

    @property
    def _factory(self) -> ControlFactory:
        factory = self.factory
        assert isinstance(factory, ControlFactory)
        return factory

    def connectionMade(self) -> None:
        factory = self._factory
        if factory.clients >= MAX_CLIENTS:
            factory.refused_clients += 1
            now = time.monotonic()
            if now - factory.refused_logged_at >= 60.0:
                factory.refused_logged_at = now
                log.warn("status socket: {count} connection(s) closed at once: {limit} "
                         "already open", count=factory.refused_clients, limit=MAX_CLIENTS)
                factory.refused_clients = 0
            self._abort()
            return
        factory.clients += 1
        self._counted = True
        self.peer = peer_credentials(self.transport)
        self._timer = factory.reactor.callLater(REQUEST_GRACE, self._grace_over)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return  # one request per connection: the rest is ignored
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline < 0:
            if len(self._buffer) >= MAX_REQUEST_BYTES:
                self._answer(self._factory.bad_request(
                    self.peer, f"request line longer than {MAX_REQUEST_BYTES} bytes"))
            return
        if newline >= MAX_REQUEST_BYTES:
            self._answer(self._factory.bad_request(
                self.peer, f"request line longer than {MAX_REQUEST_BYTES} bytes"))
            return
        line = bytes(self._buffer[:newline])
        self._buffer.clear()
        self._received(line)

    def _received(self, line: bytes) -> None:
        answer = self._factory.answer(line, self.peer)
        if isinstance(answer, Deferred):
            # (a reload reads its file in a thread): the answer once it is there
            self._answered = True
            self._cancel_timer()
            answer.addCallback(self._answer)
            return
        self._answer(answer)

    def readConnectionLost(self) -> None:
        if self._answered or not self._counted:
            return
        line, self._buffer = bytes(self._buffer), bytearray()
        if not line.strip():
            self._answer(self._factory.answer_status())
            return
        self._received(line)

    def writeConnectionLost(self) -> None:
        self._cancel_timer()
        self._abort()  # the client no longer reads: nothing more to do for it

    def _grace_over(self) -> None:
        self._timer = None
        if self._answered:
            return
        if self._buffer or self._input_waiting():
            # A request is on its way (or waits in the kernel while the reactor was
            # busy): give it the rest of REQUEST_TIMEOUT.
            self._timer = self._factory.reactor.callLater(
                max(0.0, REQUEST_TIMEOUT - REQUEST_GRACE), self._too_slow)
            return
        self._answer(self._factory.answer_status())

    def _input_waiting(self) -> bool:
        try:
            handle = self.transport.getHandle()  # type: ignore[union-attr]
            return bool(handle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (OSError, AttributeError):
            return False

    def _too_slow(self) -> None:
        self._timer = None
        if not self._answered:
            self._answer(self._factory.bad_request(
                self.peer, f"no complete request line within {REQUEST_TIMEOUT:g} s"))

    def _answer(self, reply: dict[str, Any] | bytes) -> None:
        self._answered = True
        self._buffer = bytearray()
        self._cancel_timer()
        if isinstance(reply, dict):
            data = json.dumps(reply, default=repr).encode() + b"\n"
        else:
            data = reply
        transport = self.transport
        if transport is None or self._lost:
            return  # (the client left before a reload's answer was ready)
        transport.write(data)
        transport.loseConnection()
        self._timer = self._factory.reactor.callLater(WRITE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._timer = None
        transport: Any = self.transport  # a Unix transport: it can abort
        if transport is not None:
            transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timer()
        if self._counted:
            self._counted = False
            self._factory.clients -= 1


class ControlFactory(Factory):
    """The status socket's protocol: the snapshot for anyone, commands for the owner.

    ``snapshot()`` gives the status; ``controller`` (None: this socket takes no
    commands, e.g. a process a web server spawned) carries commands out.
    """

    protocol = _ControlProtocol
    noisy = False

    def __init__(self, snapshot: Callable[[], dict[str, Any]], reactor: Any,
                 controller: Controller | None = None) -> None:
        self.snapshot = snapshot
        self.reactor = reactor
        self.controller = controller
        self.clients = 0
        self.refused_clients = 0
        self.refused_logged_at = -math.inf
        self._bad_requests = RateLog(reactor.seconds, every=BAD_REQUEST_LOG_EVERY)

    def bad_request(self, peer: Peer, error: str) -> dict[str, Any]:
        """Refuse what is not a request (garbage, too long, too slow, an unknown
        command or version): logged with the peer's uid and pid, one line at most
        every BAD_REQUEST_LOG_EVERY seconds with a count of the others, so a flood
        of garbage cannot fill the disk."""
        def line(episode: Episode) -> None:
            others = episode.count - 1
            log.warn("control: bad request from uid {uid} (pid {pid}) refused: {error}"
                     "{others}", uid=peer.uid, pid=peer.pid, error=error,
                     others=f" (and {others} more since the last such line)" if others
                     else "")

        self._bad_requests.occurred("bad_request", line)
        return refusal("bad_request", error)

    def answer_status(self) -> bytes:
        """The snapshot as one line (an error object when it cannot be made)."""
        try:
            return json.dumps(self.snapshot(), default=repr).encode() + b"\n"
        except Exception:
            log.failure("status snapshot failed")
            return json.dumps({"error": "snapshot failed"}).encode() + b"\n"

    def answer(self, line: bytes, peer: Peer) -> Reply | bytes:
        """The answer to one request line from ``peer`` (a Deferred: later)."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return self.bad_request(peer, "the request is not a line of JSON")
        if not isinstance(request, dict):
            return self.bad_request(peer, "the request is not a JSON object")
        version = request.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            return self.bad_request(peer, f"protocol version {repr(version)[:20]} is not "
                                          f"supported; this app speaks {PROTOCOL_VERSION}")
        command = request.get("command")
        if command == "status":
            return self.answer_status()
        if not isinstance(command, str) or command not in COMMANDS:
            return self.bad_request(peer, f"unknown command {str(command)[:50]!r}; "
                                          f"expected status, {', '.join(COMMANDS)}")
        if self.controller is None:
            log.warn("control: {command} refused (uid {uid}, pid {pid}): this process "
                     "takes no commands", command=command, uid=peer.uid, pid=peer.pid)
            return refusal("unavailable", "this process takes no commands (one spawned "
                                          "by a web server)")
        return self.controller.handle(request, peer)


# -------------------------------------------------------------- the controller


class Controller(Service):
    """Carries out an operator's commands on ``app`` (see the module's docstring).

    ``config``: the Config the app was built from (None: not started from a YAML file,
    so it cannot reload). ``reconfigure_log(settings)``: applies ``app.log`` (set by
    `daemonapp run`; None: the log is not ours, e.g. twistd's). ``owners``: the uids
    that may own state_dir besides us, as for the first load (twistd's --uid).
    The pauses are kept by a `PauseKeeper` (daemonapp.pauses), a reload is carried out
    by a `Reloader` (daemonapp.reload).
    """

    name = "control"

    def __init__(self, app: Any, config: Config | None = None, *,
                 state_dir: str | None = None, owners: tuple[int, ...] = ()) -> None:
        self.app = app
        if state_dir is None:
            state_dir = getattr(app, "state_dir", None)
        self.store = PauseStore(state_dir) if state_dir is not None else None
        self.pauses = PauseKeeper(app, self.store)
        self.reloader = Reloader(app, config, owners=owners)

    @property
    def config(self) -> Config | None:
        """The Config the app runs now (a reload changes it); None: no YAML file."""
        return self.reloader.config

    @property
    def owners(self) -> tuple[int, ...]:
        return self.reloader.owners

    @property
    def reconfigure_log(self) -> Callable[[LogSettings], None] | None:
        return self.reloader.reconfigure_log

    @reconfigure_log.setter
    def reconfigure_log(self, value: Callable[[LogSettings], None] | None) -> None:
        self.reloader.reconfigure_log = value

    @property
    def _scheduler(self) -> Any:
        return self.app.scheduler

    # ----------------------------------------------------------------- service

    def startService(self) -> None:
        """Pause the daemons paused in an earlier life (before they start)."""
        super().startService()  # type: ignore[no-untyped-call]
        self.pauses.start()
        if self.config is not None:
            self.app.on_reopen_logs(self._on_sighup)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        self.pauses.stop()
        return None

    def on_reload(self, begin: Callable[[], object], end: Callable[[], object]) -> None:
        """Call ``begin()`` when a reload begins and ``end()`` when it is over (applied
        or refused): systemd's RELOADING=1 and READY=1."""
        self.reloader.on_reload(begin, end)

    # ---------------------------------------------------------------- commands

    def handle(self, request: dict[str, Any], peer: Peer) -> Reply:
        """Carry out one request from ``peer``; the reply, or a Deferred of it (a
        reload), logged either way."""
        command = str(request.get("command"))
        target = request.get("daemon")
        about = f"{command} {target}" if isinstance(target, str) else command
        if not self.permitted(peer):
            log.warn("control: {what} refused: uid {uid} (pid {pid}) may not command "
                     "this app", what=about, uid=peer.uid, pid=peer.pid)
            return refusal("not_permitted",
                           f"uid {peer.uid} may not command this app: only uid "
                           f"{os.geteuid()} (its own) or root may")
        try:
            reply: Reply = getattr(self, "_" + command)(request)
        except Exception:
            return self._logged(self._failed(Failure(), command, about, peer), about, peer)
        if isinstance(reply, Deferred):
            return reply.addErrback(self._failed, command, about, peer).addCallback(
                self._logged, about, peer)
        return self._logged(reply, about, peer)

    @staticmethod
    def _failed(failure: Failure, command: str, about: str, peer: Peer) -> dict[str, Any]:
        log.failure("control: {what} from uid {uid} (pid {pid}) failed", failure,
                    what=about, uid=peer.uid, pid=peer.pid)
        return refusal("unavailable", f"{command} failed inside the app (see its log)")

    @staticmethod
    def _logged(reply: dict[str, Any], about: str, peer: Peer) -> dict[str, Any]:
        if reply.get("ok"):
            log.info("control: {what} from uid {uid} (pid {pid}): {result}", what=about,
                     uid=peer.uid, pid=peer.pid, result=_summary(reply))
        else:
            log.warn("control: {what} from uid {uid} (pid {pid}) refused: {error}",
                     what=about, uid=peer.uid, pid=peer.pid, error=reply.get("error"))
        return reply

    @staticmethod
    def permitted(peer: Peer) -> bool:
        """Only the app's own (effective) uid and root may command it."""
        return peer.uid >= 0 and peer.uid in (0, os.geteuid())

    def _daemon(self, request: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        name = request.get("daemon")
        if not isinstance(name, str) or not name:
            return None, refusal("bad_request", "\"daemon\" must be a daemon's name")
        daemon = self.app.daemons.get(name)
        if daemon is None:
            return None, self._unknown(name)
        return daemon, None

    def _unknown(self, name: str) -> dict[str, Any]:
        names = sorted(self.app.daemons)
        shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
        return refusal("unknown_daemon", f"no daemon named {name[:200]!r} in this app"
                                         f" (daemons: {shown or 'none'})", daemon=name)

    def _stopping(self) -> dict[str, Any] | None:
        if self.app.lifetime.stopping:
            return refusal("unavailable", "the app is stopping: "
                                          f"{self.app.stop_reason or 'a graceful stop'}")
        return None

    def _trigger(self, request: dict[str, Any]) -> dict[str, Any]:
        daemon, refused = self._daemon(request)
        if refused is not None:
            return refused
        stopping = self._stopping()
        if stopping is not None:
            return stopping
        leaving = self.reloader.leaving(daemon.name)
        if leaving == "removed":
            return refusal("unavailable", f"daemon {daemon.name!r} is being removed by a "
                                          "reload: it finishes its run in flight and runs "
                                          "no more", daemon=daemon.name)
        if leaving == "replaced":
            # The daemon now under this name stops after its run; its replacement runs.
            state = self.reloader.trigger_replacement(daemon.name)
            return _reply(True, daemon=daemon.name, state=state, running=True,
                          paused=self._scheduler.pause_of(daemon.name) is not None)
        try:
            state = self._scheduler.trigger(daemon)
        except ValueError as e:
            return refusal("unavailable", str(e), daemon=daemon.name)
        return _reply(True, daemon=daemon.name, state=state, running=bool(daemon.running),
                      paused=self._scheduler.pause_of(daemon.name) is not None)

    def _pause(self, request: dict[str, Any]) -> dict[str, Any]:
        daemon, refused = self._daemon(request)
        if refused is not None:
            return refused
        duration = request.get("for")
        if duration is not None:
            seconds = number(duration)
            if seconds is None or not 0 < seconds <= MAX_PAUSE_SECONDS:
                return refusal("bad_request", f"\"for\" must be a number of seconds above "
                                              f"0 and at most {MAX_PAUSE_SECONDS:g}")
            duration = seconds
        reason = request.get("reason")
        if reason is not None:
            if not isinstance(reason, str):
                return refusal("bad_request", "\"reason\" must be a string")
            reason = " ".join(reason.split())[:MAX_REASON] or None
        pause, was, warning = self.pauses.pause(daemon.name, duration, reason)
        return _reply(True, daemon=daemon.name, running=bool(daemon.running),
                      already=was is not None, **pause_fields(pause),
                      **({"warning": warning} if warning else {}))

    def _resume(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("daemon")
        if not isinstance(name, str) or not name:
            return refusal("bad_request", "\"daemon\" must be a daemon's name")
        if name not in self.app.daemons and self._scheduler.pause_of(name) is None:
            return self._unknown(name)
        pause, warning = self.pauses.resume(name)
        return _reply(True, daemon=name, was_paused=pause is not None,
                      **({"warning": warning} if warning else {}))

    # ------------------------------------------------------------------ reload

    def _reload(self, request: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self.reload("daemonapp reload")

    def _on_sighup(self) -> None:
        self.reload("SIGHUP")

    def reload(self, source: str) -> Deferred[dict[str, Any]]:
        """Re-read the YAML file and apply the difference (DESIGN §9); the reply.

        The one place where a reload begins and ends: the `on_reload` hooks run
        around it, whatever its result (daemonapp.reload's `Reloader.reload`).
        """
        return self.reloader.reload(source).addCallback(_reload_reply)


def _reload_reply(result: Difference | Refused) -> dict[str, Any]:
    if isinstance(result, Refused):
        extra = {"errors": list(result.errors)} if result.errors else {}
        return refusal(result.code, result.error, **extra)
    return _reply(True, **dataclasses.asdict(result))


def controller_of(app: Any) -> Controller | None:
    """The app's Controller (the service named "control"), if it has one."""
    try:
        service = app.getServiceNamed(Controller.name)
    except (KeyError, AttributeError):
        return None
    return service if isinstance(service, Controller) else None


def _summary(reply: dict[str, Any]) -> str:
    if "state" in reply:
        return str(reply["state"])
    if "paused_since" in reply:
        until = reply.get("paused_until")
        return "paused" + (f" until {iso_time(until)}" if isinstance(until, float) else "")
    if "was_paused" in reply:
        return "resumed" if reply["was_paused"] else "was not paused"
    return ", ".join(f"{key} {len(reply[key])}" for key in
                     ("added", "removed", "replaced", "unchanged", "needs_restart")
                     if key in reply)


# ---------------------------------------------------------------------- client


def connect_unix(path: str, timeout: float) -> socket.socket:
    """A stream socket connected to ``path`` within ``timeout`` seconds.

    With a timeout, a Unix socket's connect fails at once (EAGAIN) while the app's
    backlog is full; a burst of clients is no reason to give up, so it is tried again.
    """
    deadline = time.monotonic() + timeout
    while True:
        skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        skt.settimeout(timeout)
        try:
            skt.connect(path)
        except BlockingIOError:
            skt.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{path}: the app accepts no connection (backlog "
                                   f"full for {timeout:g} s)") from None
            time.sleep(0.01)
            continue
        except BaseException:
            skt.close()
            raise
        return skt


def send_request(path: str, request: dict[str, Any], *, timeout: float = 30.0,
                 max_bytes: int = 16 * 1024 * 1024) -> dict[str, Any]:
    """Send one request to the app whose status socket (or state_dir) is ``path``.

    A command answered with the status instead was not read: the app takes a client
    whose line has not come `REQUEST_GRACE` after its connect for one that only reads
    (a client the machine's load kept from running between its connect and its write
    is one), so it is sent again on a new connection, `COMMAND_TRIES` times in all. An
    app from before commands answers every try with its status.

    Raises OSError when nothing answers, ValueError for an answer that is not one
    JSON object.
    """
    if os.path.isdir(path):
        from daemonapp.status import status_socket_path

        path = status_socket_path(path)
    line = json.dumps({"v": PROTOCOL_VERSION, **request}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    tries = 1 if request.get("command") == "status" else COMMAND_TRIES
    for tried in range(1, tries + 1):
        reply = _exchange(path, line, deadline, timeout, max_bytes)
        if "ok" in reply or tried == tries or time.monotonic() >= deadline:
            break
    return reply


def _exchange(path: str, line: bytes, deadline: float, timeout: float,
              max_bytes: int) -> dict[str, Any]:
    """One connection: ``line`` sent, the answer read until the app closes."""
    with connect_unix(path, max(0.01, deadline - time.monotonic())) as skt:
        skt.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            skt.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (with the status) and closed before the line came: read it
        return read_answer(skt, deadline, timeout, max_bytes, "answer")


def read_answer(skt: socket.socket, deadline: float, timeout: float, max_bytes: int,
                what: str) -> dict[str, Any]:
    """Read the app's one JSON object until it closes (or resets after it): at most
    ``max_bytes``, by ``deadline`` (``time.monotonic()``; ``timeout`` is its length, for
    the message). Raises TimeoutError, ValueError (too large, not a JSON object), or
    the OSError of a connection the app reset before answering."""
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        skt.settimeout(left)
        try:
            chunk = skt.recv(65536)
        except ConnectionResetError:
            if not chunks:  # (the answer, if any, comes before the reset)
                raise
            break
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"{what} larger than {max_bytes} bytes")
        chunks.append(chunk)
    value = json.loads(b"".join(chunks))
    if not isinstance(value, dict):
        raise ValueError(f"the {what} is not a JSON object")
    return value
