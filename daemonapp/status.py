"""The status socket of a running app (state_dir/status.sock) and its client.

A client asks for the status with ``{"v": 1, "command": "status"}`` (or sends
nothing, and gets it after a short grace) and gets ``app.snapshot()`` as one line of
JSON, then the server closes it; the same socket takes an operator's commands
(daemonapp.control has the protocol). ``daemonapp status`` reads it and prints a table.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from daemonapp.unixsocket import PreparedUnix

__all__ = [
    "MAX_STATUS_BYTES",
    "StatusService",
    "fetch_status",
    "format_status",
    "spawned_status_sockets",
    "status_socket_path",
]

log = Logger()

STATUS_SOCKET = "status.sock"
#: The most a client reads from a status socket.
MAX_STATUS_BYTES = 16 * 1024 * 1024
#: The request for the status (daemonapp.control's protocol, version 1).
STATUS_REQUEST = b'{"v": 1, "command": "status"}\n'


#: The listener snapshot keys `daemonapp status` shows, with their column titles.
_LISTENER_COLUMNS = {
    "name": "NAME",
    "listening": "LISTENING",
    "draining": "DRAINING",
    "connections": "CONNECTIONS",
    "receiving": "RECEIVING",
    "in_flight": "IN_FLIGHT",
    "queued": "QUEUED",
    "requests": "REQUESTS",
    "rejected_503": "503",
    "timeouts_504": "504",
    "errors_500": "500",
    "bad_request_400": "400",
    "spooled": "SPOOLED",
    "refused": "REFUSED",
}


def status_socket_path(state_dir: str, pid: int | None = None) -> str:
    """Where the status socket of the app using ``state_dir`` lives.

    With ``pid``: the socket of one process a web server spawned (siblings share
    the state_dir, so each serves its own, ``status.<pid>.sock``).
    """
    if pid is None:
        return os.path.join(state_dir, STATUS_SOCKET)
    return os.path.join(state_dir, f"status.{pid}.sock")


def spawned_status_sockets(state_dir: str) -> list[tuple[int, str]]:
    """(pid, path) of the per-process status sockets in ``state_dir``, by pid."""
    found = []
    try:
        names = os.listdir(state_dir)
    except OSError:
        return []
    for name in names:
        middle = name[len("status."):-len(".sock")]
        if (name.startswith("status.") and name.endswith(".sock") and middle.isascii()
                and middle.isdigit()):
            found.append((int(middle), os.path.join(state_dir, name)))
    return sorted(found)


#: Connections the kernel queues before the app accepts them: a burst of clients
#: (a monitoring loop, a script commanding many daemons) waits, none is refused.
STATUS_BACKLOG = 128


class StatusService(Service):
    """Serves ``app.snapshot()`` as JSON on a Unix socket (mode 0600), and the commands
    of ``controller`` (a daemonapp.control.Controller; None: no commands)."""

    def __init__(self, app: Any, path: str, controller: Any = None) -> None:
        self.app = app
        self.path = path
        self.controller = controller
        self._port: Any = None  # an OwnedUNIXPort (Twisted's ports are untyped)
        self._prepared: PreparedUnix | None = None

    def prepare(self) -> None:
        """Bind ``path.new`` (the app prepares every socket before it takes any over)."""
        if self._prepared is None:
            self._prepared = PreparedUnix(self.path, 0o600, STATUS_BACKLOG)

    def abandon(self) -> None:
        """Undo `prepare`: a failed start leaves the running app's status socket alone."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.abandon()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        try:
            self.prepare()
            prepared, self._prepared = self._prepared, None
            assert prepared is not None
            from daemonapp.control import ControlFactory

            factory = ControlFactory(self.app.snapshot, self.app.reactor, self.controller)
            self._port = prepared.commit(factory, self.app.reactor)
        except Exception:
            log.failure("status socket {path} unavailable", path=self.path)
            return
        log.info("status socket on {path}", path=self.path)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)


# ------------------------------------------------------------------------ client


def fetch_status(path: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The snapshot served at ``path`` (a state_dir or a socket path).

    Raises OSError when nothing answers, ValueError for a bad answer.
    """
    if os.path.isdir(path):
        path = status_socket_path(path)
    deadline = time.monotonic() + timeout
    from daemonapp.control import connect_unix, read_answer

    with connect_unix(path, timeout) as skt:
        # Asked for at once: a client that says nothing gets it only after a grace. (An
        # app older than the request closes without reading it: what it sent counts.)
        try:
            skt.sendall(STATUS_REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_answer(skt, deadline, timeout, MAX_STATUS_BYTES, "status answer")


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    value = float(value)
    if value < 0:
        return "-" + _seconds(-value)
    if value < 1:
        return f"{value * 1000:.0f}ms" if value else "0s"
    if value < 60:
        return f"{value:.3g}s"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i])
              for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def _utc(text: object) -> str:
    """An ISO 8601 time with an offset, in UTC ("-" for anything else)."""
    if not isinstance(text, str):
        return "-"
    try:
        return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="seconds")
    except ValueError:
        return "-"


def _paused(entry: dict[str, Any], now: object) -> str:
    """A daemon's pause in a few words: "-", "yes", "12m00s left", with its reason."""
    if not entry.get("paused"):
        return "-"
    until = entry.get("paused_until")
    text = "yes"
    if isinstance(until, int | float) and isinstance(now, int | float):
        text = _seconds(max(0.0, until - now)) + " left"
    reason = entry.get("paused_reason")
    if isinstance(reason, str) and reason:
        text += f" ({reason[:40]}{'...' if len(reason) > 40 else ''})"
    return text


def format_status(snapshot: dict[str, Any]) -> str:
    """A human-readable table of a snapshot: the app, its daemons, listeners, jobs."""
    now = snapshot.get("now")
    lines = [f"pid {snapshot.get('pid')}  state {snapshot.get('state')}  "
             f"uptime {_seconds(snapshot.get('uptime'))}"]
    if snapshot.get("stop_reason"):
        lines.append(f"stopping: {snapshot['stop_reason']}")
    processes = snapshot.get("processes")
    if processes:  # app.processes > 1 (daemonapp.workers); the listeners' counts are sums
        lines.append("")
        lines.append(f"processes ({len(processes)})")
        lines += _table(["PID", "ROLE", "STATE", "REQUESTS", "IN_FLIGHT", "UPTIME"],
                        [[str(p.get("pid")), str(p.get("role")), str(p.get("state")),
                          str(p.get("requests", 0)), str(p.get("in_flight", 0)),
                          _seconds(p.get("uptime"))] for p in processes])
    daemons = snapshot.get("daemons") or []
    lines.append("")
    lines.append(f"daemons ({len(daemons)})")
    rows = []
    for entry in daemons:
        next_run = entry.get("next_run_at")
        if entry.get("running"):
            when = "running"
        elif entry.get("paused"):
            when = "paused"
        elif isinstance(next_run, int | float) and isinstance(now, int | float):
            when = "in " + _seconds(next_run - now)
        else:
            when = "-"
        rows.append([
            str(entry.get("name")), str(entry.get("type", "-")).rsplit(":", 1)[-1],
            str(entry.get("last_outcome") or "-"), str(entry.get("runs", 0)),
            str(entry.get("items", 0)), str(entry.get("failures", 0)),
            _seconds(entry.get("current_delay")), when, _paused(entry, now),
        ])
    lines += _table(["NAME", "TYPE", "LAST", "RUNS", "ITEMS", "FAILURES", "DELAY", "NEXT RUN",
                     "PAUSED"], rows)
    clocked = [entry for entry in daemons if entry.get("schedule")]
    if clocked:
        lines.append("")
        lines.append(f"clock schedules ({len(clocked)})")
        lines += _table(
            ["NAME", "SCHEDULE", "NEXT FIRE", "NEXT FIRE (UTC)", "MISFIRES"],
            [[str(entry.get("name")), str(entry.get("schedule")),
              str(entry.get("next_fire") or "-"), _utc(entry.get("next_fire")),
              ", ".join(f"{reason} {count}" for reason, count
                        in sorted((entry.get("misfires") or {}).items())) or "-"]
             for entry in clocked])
    listeners = snapshot.get("listeners") or []
    if listeners:
        lines.append("")
        lines.append(f"listeners ({len(listeners)})")
        keys = [key for key in _LISTENER_COLUMNS if any(key in entry for entry in listeners)]
        if not keys:
            keys = sorted({key for entry in listeners for key, value in entry.items()
                           if not isinstance(value, dict | list)})
        lines += _table([_LISTENER_COLUMNS.get(key, key.upper()) for key in keys],
                        [[str(entry.get(key, "-")) for key in keys] for entry in listeners])
    jobs = snapshot.get("jobs")
    if jobs:
        lines.append("")
        lines.append("jobs")
        if isinstance(jobs, dict):
            lines += _table(["KEY", "VALUE"], [[str(k), json.dumps(v, default=repr)]
                                               for k, v in jobs.items()])
        else:
            lines.append(json.dumps(jobs, default=repr))
    return "\n".join(lines)
