"""Commands to a running app over its status socket: trigger, pause, resume, reload.

The protocol (DESIGN §9, docs/operations.md "Operating a live app"): a client sends
one line of JSON, ``{"v": 1, "command": ...}``, and gets one line of JSON back, then
the app closes the connection. A client that sends nothing within `REQUEST_GRACE`
gets the status snapshot, as every client did before commands existed. Requests are
bounded (`MAX_REQUEST_BYTES`, `REQUEST_TIMEOUT`); the status is for anyone who can
reach the socket, commands only for the app's own uid or root (SO_PEERCRED), and
every command and refusal is logged with the peer's uid and pid.

`Controller` (a service named "control" in the app) carries the commands out: the
pauses it keeps in ``state_dir/pauses.json``, and `Controller.reload`, the one place
where a reload begins and ends (`Controller.on_reload` hooks: systemd's
RELOADING=1 / READY=1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from twisted.application.service import Service
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.configmodel import Config, ConfigError, DaemonSpec, LogSettings
from daemonapp.scheduler import Pause

__all__ = [
    "COMMANDS",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_GRACE",
    "REQUEST_TIMEOUT",
    "ControlFactory",
    "Controller",
    "PauseStore",
    "Peer",
    "connect_unix",
    "controller_of",
    "pause_fields",
    "peer_credentials",
    "refusal",
    "restart_keys",
    "same_spec",
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
#: The longest pause reason kept, in characters.
MAX_REASON = 500
#: The longest ``--for``: ten years.
MAX_PAUSE_SECONDS = 10 * 365 * 86400.0
#: How many daemon names an "unknown daemon" answer lists.
_NAMES_SHOWN = 20

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


class _ControlProtocol(Protocol):
    """One connection: at most one request line, one answer line, then close."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._answered = False
        self._timer: Any = None
        self._counted = False
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
                self._answer(refusal("bad_request", f"request line longer than "
                                                    f"{MAX_REQUEST_BYTES} bytes"))
            return
        if newline >= MAX_REQUEST_BYTES:
            self._answer(refusal("bad_request",
                                 f"request line longer than {MAX_REQUEST_BYTES} bytes"))
            return
        line = bytes(self._buffer[:newline])
        self._buffer.clear()
        self._answer(self._factory.answer(line, self.peer))

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
            self._answer(refusal("bad_request", f"no complete request line within "
                                                f"{REQUEST_TIMEOUT:g} s"))

    def _answer(self, reply: dict[str, Any] | bytes) -> None:
        self._answered = True
        self._buffer = bytearray()
        self._cancel_timer()
        if isinstance(reply, dict):
            data = json.dumps(reply, default=repr).encode() + b"\n"
        else:
            data = reply
        transport = self.transport
        if transport is None:
            return
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

    def answer_status(self) -> bytes:
        """The snapshot as one line (an error object when it cannot be made)."""
        try:
            return json.dumps(self.snapshot(), default=repr).encode() + b"\n"
        except Exception:
            log.failure("status snapshot failed")
            return json.dumps({"error": "snapshot failed"}).encode() + b"\n"

    def answer(self, line: bytes, peer: Peer) -> dict[str, Any] | bytes:
        """The answer to one request line from ``peer``."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return refusal("bad_request", "the request is not a line of JSON")
        if not isinstance(request, dict):
            return refusal("bad_request", "the request is not a JSON object")
        version = request.get("v", PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            return refusal("bad_request", f"protocol version {version!r} is not "
                                          f"supported; this app speaks {PROTOCOL_VERSION}")
        command = request.get("command")
        if command == "status":
            return self.answer_status()
        if not isinstance(command, str) or command not in COMMANDS:
            return refusal("bad_request", f"unknown command {str(command)[:50]!r}; "
                                          f"expected status, {', '.join(COMMANDS)}")
        if self.controller is None:
            log.warn("control: {command} refused (uid {uid}, pid {pid}): this process "
                     "takes no commands", command=command, uid=peer.uid, pid=peer.pid)
            return refusal("unavailable", "this process takes no commands (one spawned "
                                          "by a web server)")
        return self.controller.handle(request, peer)


# ------------------------------------------------------------------ the pauses


class PauseStore:
    """The pauses of an app, kept in ``state_dir/pauses.json`` (one small JSON file,
    written atomically, mode 0600), so that they survive a restart."""

    FILE = "pauses.json"
    #: A larger file is not read (a pause record is well under 1 KiB).
    MAX_BYTES = 4 * 1024 * 1024

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, self.FILE)

    def load(self) -> dict[str, Pause]:
        """The pauses kept (an unreadable file is logged and read as none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warn("cannot read {path} ({error}): no daemon starts paused",
                     path=self.path, error=e)
            return {}
        try:
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read(self.MAX_BYTES + 1)[:self.MAX_BYTES])
        except (OSError, ValueError, RecursionError) as e:
            log.warn("cannot read {path} ({error}): no daemon starts paused",
                     path=self.path, error=e)
            return {}
        pauses: dict[str, Pause] = {}
        if isinstance(data, dict):
            for name, record in data.items():
                pause = _pause_from_json(record)
                if isinstance(name, str) and pause is not None:
                    pauses[name] = pause
        return pauses

    def save(self, pauses: Mapping[str, Pause]) -> None:
        """Write ``pauses`` (atomically: a temp file renamed over the file)."""
        data = {name: dataclasses.asdict(pause) for name, pause in sorted(pauses.items())}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _pause_from_json(record: object) -> Pause | None:
    if not isinstance(record, dict):
        return None
    since = _number(record.get("since"))
    until = record.get("until")
    reason = record.get("reason")
    if since is None or (until is not None and _number(until) is None) \
            or (reason is not None and not isinstance(reason, str)):
        return None
    return Pause(since=since, until=None if until is None else _number(until),
                 reason=None if reason is None else reason[:MAX_REASON])


def pause_fields(pause: Pause | None) -> dict[str, Any]:
    """What `daemonapp status --json` shows of a daemon's pause."""
    if pause is None:
        return {"paused": False, "paused_since": None, "paused_until": None,
                "paused_reason": None}
    return {"paused": True, "paused_since": pause.since, "paused_until": pause.until,
            "paused_reason": pause.reason}


# -------------------------------------------------------------- the controller


class Controller(Service):
    """Carries out an operator's commands on ``app`` (see the module's docstring).

    ``config``: the Config the app was built from (None: not started from a YAML file,
    so it cannot reload). ``reconfigure_log(settings)``: applies ``app.log`` (set by
    `daemonapp run`; None: the log is not ours, e.g. twistd's). ``owners``: the uids
    that may own state_dir besides us, as for the first load (twistd's --uid).
    """

    name = "control"

    def __init__(self, app: Any, config: Config | None = None, *,
                 state_dir: str | None = None, owners: tuple[int, ...] = ()) -> None:
        self.app = app
        self.config = config
        self.owners = owners
        if state_dir is None:
            state_dir = getattr(app, "state_dir", None)
        self.store = PauseStore(state_dir) if state_dir is not None else None
        self.reconfigure_log: Callable[[LogSettings], None] | None = None
        self._reload_hooks: list[tuple[Callable[[], object], Callable[[], object]]] = []
        self._expiry: Any = None
        #: Per daemon name, what runs under it once its current daemon has stopped
        #: (None: nothing); names whose current daemon is stopping for a reload.
        self._wanted: dict[str, DaemonSpec | None] = {}
        self._leaving: set[str] = set()

    @property
    def _scheduler(self) -> Any:
        return self.app.scheduler

    def _seconds(self) -> float:
        return float(self.app.seconds())

    # ----------------------------------------------------------------- service

    def startService(self) -> None:
        """Pause the daemons paused in an earlier life (before they start)."""
        super().startService()  # type: ignore[no-untyped-call]
        if self.store is not None:
            now = self._seconds()
            pauses = self.store.load()
            ended = sorted(name for name, pause in pauses.items()
                           if pause.until is not None and pause.until <= now)
            for name in ended:
                del pauses[name]
                log.info("pause of daemon {daemon} ended while the app was down",
                         daemon=name)
            for name, pause in sorted(pauses.items()):
                self._scheduler.pause(name, pause)
                log.info("daemon {daemon} stays paused (since {since}{reason})",
                         daemon=name, since=_iso(pause.since),
                         reason=f": {pause.reason}" if pause.reason else "")
            if ended:
                self._save()
            self._arm_expiry()
        if self.config is not None:
            self.app.on_reopen_logs(self._on_sighup)

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        return None

    def on_reload(self, begin: Callable[[], object], end: Callable[[], object]) -> None:
        """Call ``begin()`` when a reload begins and ``end()`` when it is over (applied
        or refused): systemd's RELOADING=1 and READY=1."""
        self._reload_hooks.append((begin, end))

    # ---------------------------------------------------------------- commands

    def handle(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """Carry out one request from ``peer``; the reply (logged either way)."""
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
            reply: dict[str, Any] = getattr(self, "_" + command)(request)
        except Exception:
            log.failure("control: {what} from uid {uid} (pid {pid}) failed", what=about,
                        uid=peer.uid, pid=peer.pid)
            reply = refusal("unavailable", f"{command} failed inside the app (see its log)")
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
        try:
            state = self._scheduler.trigger(daemon)
        except ValueError as e:
            return refusal("unavailable", str(e), daemon=daemon.name)
        return _reply(True, daemon=daemon.name, state=state,
                      paused=self._scheduler.pause_of(daemon.name) is not None)

    def _pause(self, request: dict[str, Any]) -> dict[str, Any]:
        daemon, refused = self._daemon(request)
        if refused is not None:
            return refused
        duration = request.get("for")
        if duration is not None:
            seconds = _number(duration)
            if seconds is None or not 0 < seconds <= MAX_PAUSE_SECONDS:
                return refusal("bad_request", f"\"for\" must be a number of seconds above "
                                              f"0 and at most {MAX_PAUSE_SECONDS:g}")
            duration = seconds
        reason = request.get("reason")
        if reason is not None:
            if not isinstance(reason, str):
                return refusal("bad_request", "\"reason\" must be a string")
            reason = " ".join(reason.split())[:MAX_REASON] or None
        now = self._seconds()
        was = self._scheduler.pause_of(daemon.name)
        pause = Pause(since=was.since if was is not None else now,
                      until=None if duration is None else now + duration, reason=reason)
        self._scheduler.pause(daemon.name, pause)
        warning = self._save()
        self._arm_expiry()
        return _reply(True, daemon=daemon.name, running=bool(daemon.running),
                      already=was is not None, **pause_fields(pause),
                      **({"warning": warning} if warning else {}))

    def _resume(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("daemon")
        if not isinstance(name, str) or not name:
            return refusal("bad_request", "\"daemon\" must be a daemon's name")
        if name not in self.app.daemons and self._scheduler.pause_of(name) is None:
            return self._unknown(name)
        pause = self._scheduler.resume(name)
        warning = self._save() if pause is not None else None
        self._arm_expiry()
        return _reply(True, daemon=name, was_paused=pause is not None,
                      **({"warning": warning} if warning else {}))

    def _save(self) -> str | None:
        """Keep the pauses in state_dir; the words of a failure (None: kept)."""
        if self.store is None:
            return "the app has no state_dir: the pause ends with the process"
        try:
            self.store.save(self._scheduler.pauses())
        except OSError as e:
            log.warn("cannot write {path}: {error}", path=self.store.path, error=e)
            return f"cannot write {self.store.path} ({e}): the pause ends with the process"
        return None

    def _arm_expiry(self) -> None:
        """One timer, for the earliest end of a pause given ``--for``."""
        ends = [pause.until for pause in self._scheduler.pauses().values()
                if pause.until is not None]
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if ends and self.running:
            delay = max(0.0, min(ends) - self._seconds())
            self._expiry = self.app.reactor.callLater(delay, self._pauses_expired)

    def _pauses_expired(self) -> None:
        self._expiry = None
        now = self._seconds()
        ended = sorted(name for name, pause in self._scheduler.pauses().items()
                       if pause.until is not None and pause.until <= now)
        for name in ended:
            self._scheduler.resume(name)
            log.info("pause of daemon {daemon} ended (--for)", daemon=name)
        if ended:
            self._save()
        self._arm_expiry()

    # ------------------------------------------------------------------ reload

    def _reload(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.reload("daemonapp reload")

    def _on_sighup(self) -> None:
        self.reload("SIGHUP")

    def reload(self, source: str) -> dict[str, Any]:
        """Re-read the YAML file and apply the difference (DESIGN §9); the reply.

        The one place where a reload begins and ends: the `on_reload` hooks run
        around it, whatever its result.
        """
        for begin, _ in self._reload_hooks:
            _call_hook(begin)
        try:
            reply = self._reload_now(source)
        finally:
            for _, end in self._reload_hooks:
                _call_hook(end)
        return reply

    def _reload_now(self, source: str) -> dict[str, Any]:
        old = self.config
        if old is None:
            return refusal("unavailable", "this app was not started from a YAML file: "
                                          "there is nothing to reload")
        stopping = self._stopping()
        if stopping is not None:
            return stopping
        from daemonapp.configcheck import load_config

        try:
            new = load_config(old.path, check_state_dir=True, owners=self.owners)
        except ConfigError as e:
            for message in e.messages:
                log.error("reload ({source}): {message}", source=source, message=message)
            log.error("reload ({source}): {count} error(s) in {path}; nothing changed",
                      source=source, count=len(e.messages), path=old.path)
            return refusal("invalid_config", f"{len(e.messages)} error(s) in {old.path}; "
                                             "nothing changed", errors=list(e.messages))
        needs_restart = restart_keys(old, new)
        log_result = self._apply_log(old.app.log, new.app.log)
        olds = {spec.name: spec for spec in old.daemons}
        news = {spec.name: spec for spec in new.daemons}
        added = sorted(set(news) - set(olds))
        removed = sorted(set(olds) - set(news))
        replaced = sorted(name for name in set(olds) & set(news)
                          if not same_spec(olds[name], news[name]))
        unchanged = sorted(set(olds) & set(news) - set(replaced))
        # What runs now is the new file's daemons and log with the old file's rest.
        self.config = dataclasses.replace(
            old, daemons=new.daemons,
            app=dataclasses.replace(old.app, log=new.app.log))
        for name in removed:
            self._swap(name, None)
        for name in replaced + added:
            self._swap(name, news[name])
        log.info("reload ({source}): {added} added, {removed} removed, {replaced} replaced, "
                 "{unchanged} unchanged{restart}", source=source, added=len(added),
                 removed=len(removed), replaced=len(replaced), unchanged=len(unchanged),
                 restart="; needs a restart to apply: " + ", ".join(needs_restart)
                 if needs_restart else "")
        return _reply(True, added=added, removed=removed, replaced=replaced,
                      unchanged=unchanged, needs_restart=needs_restart, log=log_result)

    def _apply_log(self, old: LogSettings, new: LogSettings) -> str:
        if old == new:
            return "unchanged"
        if self.reconfigure_log is None:
            return "not applied: this app's log is not daemonapp's (twistd's options apply)"
        try:
            self.reconfigure_log(new)
        except (OSError, ValueError) as e:
            log.error("reload: cannot apply app.log ({error}); the log stays as it was",
                      error=e)
            return f"not applied: {e}"
        log.info("reload: app.log applied (format {log_format}, level {level}, file {file})",
                 log_format=new.format, level=new.level, file=new.file or "stderr")
        return "applied"

    def _swap(self, name: str, spec: DaemonSpec | None) -> None:
        """Make ``spec`` (None: nothing) what runs under ``name``: the daemon there now
        stops after its run in flight, then the new one starts."""
        self._wanted[name] = spec
        current = self.app.daemons.get(name)
        if current is None:
            self._start_wanted(name)
            return
        if name in self._leaving:
            return  # its stop is under way; the wanted one starts when it is over
        self._leaving.add(name)
        self.app.remove(current).addBoth(self._left, name)

    def _left(self, result: object, name: str) -> None:
        self._leaving.discard(name)
        if isinstance(result, Failure):
            log.failure("reload: stopping daemon {daemon} failed", result, daemon=name)
        self._start_wanted(name)

    def _start_wanted(self, name: str) -> None:
        spec = self._wanted.pop(name, None)
        if spec is None or self.app.lifetime.stopping:
            return
        try:
            daemon = spec()
            self.app.add(daemon)
        except Exception:
            log.failure("reload: daemon {daemon} could not be started", daemon=name)


def controller_of(app: Any) -> Controller | None:
    """The app's Controller (the service named "control"), if it has one."""
    try:
        service = app.getServiceNamed(Controller.name)
    except (KeyError, AttributeError):
        return None
    return service if isinstance(service, Controller) else None


def _call_hook(hook: Callable[[], object]) -> None:
    try:
        hook()
    except Exception:
        log.failure("error in a reload hook")


def _summary(reply: dict[str, Any]) -> str:
    if "state" in reply:
        return str(reply["state"])
    if "paused_since" in reply:
        until = reply.get("paused_until")
        return "paused" + (f" until {_iso(until)}" if isinstance(until, float) else "")
    if "was_paused" in reply:
        return "resumed" if reply["was_paused"] else "was not paused"
    return ", ".join(f"{key} {len(reply[key])}" for key in
                     ("added", "removed", "replaced", "unchanged", "needs_restart")
                     if key in reply)


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- reload


def same_spec(old: DaemonSpec, new: DaemonSpec) -> bool:
    """True when a reload keeps the daemon: same class, type and options (where in the
    file it is does not matter)."""
    return (old.cls is new.cls and old.type_name == new.type_name
            and _same_value(old.options, new.options))


def _same_value(old: object, new: object) -> bool:
    if isinstance(old, DaemonSpec) and isinstance(new, DaemonSpec):
        return same_spec(old, new)
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(_same_value(old[k], new[k]) for k in old)
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        return len(old) == len(new) and all(_same_value(a, b) for a, b in zip(old, new,
                                                                               strict=True))
    try:
        return type(old) is type(new) and bool(old == new)
    except Exception:
        return False


def restart_keys(old: Config, new: Config) -> list[str]:
    """The keys whose change a reload leaves alone: they need a restart."""
    keys = [f"app.{field.name}" for field in dataclasses.fields(old.app)
            if field.name not in ("log", "state_dir_line")
            and not _same_value(getattr(old.app, field.name), getattr(new.app, field.name))]
    if len(old.listeners) != len(new.listeners):
        keys.append("listeners")
    else:
        keys += [f"listeners[{index}]" for index, (a, b)
                 in enumerate(zip(old.listeners, new.listeners, strict=True))
                 if not _same_value(dict(a.options), dict(b.options))]
    if old.cgi != new.cgi or old.cgi_configured != new.cgi_configured:
        keys.append("cgi")
    return keys


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

    Raises OSError when nothing answers, ValueError for an answer that is not one
    JSON object.
    """
    if os.path.isdir(path):
        from daemonapp.status import status_socket_path

        path = status_socket_path(path)
    line = json.dumps({"v": PROTOCOL_VERSION, **request}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with connect_unix(path, timeout) as skt:
        skt.sendall(line)
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {timeout:g} s")
            skt.settimeout(left)
            chunk = skt.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"answer larger than {max_bytes} bytes")
            chunks.append(chunk)
    value = json.loads(b"".join(chunks))
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    return value
