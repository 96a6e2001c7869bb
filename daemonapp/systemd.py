"""Telling systemd how the app is doing: sd_notify's datagrams, without libsystemd.

Under a ``Type=notify`` or ``Type=notify-reload`` unit (``NOTIFY_SOCKET`` set) the app
sends ``READY=1`` once its listeners accept and its daemons started, a one-line
``STATUS=``, ``RELOADING=1``/``READY=1`` around a reload, ``STOPPING=1`` (and
``EXTEND_TIMEOUT_USEC`` while it drains) and, under ``WatchdogSec=``, ``WATCHDOG=1``
while its reactor turns (DESIGN §9). A message that cannot be sent is logged, rate
limited, and never disturbs the app.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.logger import Logger

from daemonapp.ratelog import Episode, RateLog

if TYPE_CHECKING:
    from daemonapp.app import DaemonApp

__all__ = [
    "EXTEND_EVERY",
    "EXTEND_FOR",
    "STATUS_EVERY",
    "Notifier",
    "SystemdNotifier",
    "monotonic_usec",
    "notifier_of",
    "notify_address",
    "status_line",
]

log = Logger()

#: Seconds between two STATUS= checks: one is sent at most this often, when it changed.
STATUS_EVERY = 1.0
#: Seconds between two EXTEND_TIMEOUT_USEC= messages while a graceful stop drains.
EXTEND_EVERY = 5.0
#: How long each EXTEND_TIMEOUT_USEC= gives: room for two missed ones, no more, so a
#: drain whose reactor hangs is still killed soon after TimeoutStopSec.
EXTEND_FOR = 3 * EXTEND_EVERY
#: The longest watchdog tick: how finely a stall of the reactor is measured.
WATCHDOG_TICK = 1.0
#: A failure to send is logged once per this many seconds (with a count of the others).
FAILURE_LOG_EVERY = 300.0
#: The longest STATUS= text sent (systemctl shows one line).
MAX_STATUS_CHARS = 200


def notify_address(value: str) -> str | None:
    """The socket address of a ``NOTIFY_SOCKET`` value; None when it is not one we use.

    An absolute path is a socket file; ``@name`` is ``name`` in Linux's abstract
    namespace (a leading NUL byte). systemd's ``vsock:`` addresses are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(0, round(seconds))}s"
    if seconds < 3600:
        return f"{round(seconds / 60)}m"
    return f"{round(seconds / 3600)}h"


def status_line(app: DaemonApp) -> str:
    """A one-line summary of ``app`` for ``STATUS=`` (what ``systemctl status`` shows).

    ``3 daemons, 1 run in flight, 0 requests in flight, next run in 12s``
    (``3 daemons (1 paused), ...`` while an operator paused some); while a graceful
    stop drains it starts with ``stopping (REASON):``.
    """
    scheduler = app.scheduler
    activity = app.lifetime.activity
    daemons = _plural(len(app.daemons), "daemon")
    paused = sum(1 for name in scheduler.pauses() if name in app.daemons)
    if paused:
        daemons += f" ({paused} paused)"
    parts = [daemons,
             _plural(scheduler.runs_in_flight, "run") + " in flight",
             _plural(activity.get("request", 0), "request") + " in flight"]
    parts += [_plural(count, kind) + " in flight"
              for kind, count in sorted(activity.items()) if kind != "request" and count]
    if scheduler.has_ready():
        parts.append("next run now")
    else:
        due = scheduler.next_due()
        if due != float("inf"):
            parts.append("next run in " + _duration(due - app.seconds()))
    line = ", ".join(parts)
    if app.lifetime.stopping:
        line = f"stopping ({app.stop_reason}): {line}"
    line = " ".join(line.split())  # one line, whatever a reason holds
    return line[:MAX_STATUS_CHARS]


def notifier_of(app: DaemonApp) -> SystemdNotifier | None:
    """The app's SystemdNotifier (None when systemd did not ask for one)."""
    try:
        service = app.getServiceNamed(SystemdNotifier.name)  # type: ignore[no-untyped-call]
    except KeyError:
        return None
    return service if isinstance(service, SystemdNotifier) else None


class Notifier:
    """Sends sd_notify messages to one datagram socket; never raises.

    ``address`` is a path or an abstract name (a leading NUL), as `notify_address`
    gives. The socket is non-blocking (a full queue at systemd's end drops the message
    rather than stalling the reactor) and close-on-exec (job children never hold it).
    """

    def __init__(self, address: str, *, now: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        # failures never end an episode: a warning at most every FAILURE_LOG_EVERY
        self._failures = RateLog(now, every=FAILURE_LOG_EVERY)
        #: How many messages went out.
        self.sent = 0

    def send(self, *fields: str) -> bool:
        """Send one message made of ``fields`` (``"READY=1"``, ...); True when it went."""
        data = ("\n".join(fields) + "\n").encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(data, self.address)
        except OSError as e:
            self._failed(fields, e)
            return False
        self.sent += 1
        return True

    def _failed(self, fields: tuple[str, ...], error: OSError) -> None:
        def line(episode: Episode) -> None:
            others = episode.count - 1
            log.warn("cannot notify systemd at {address} ({error}); {message} was not sent"
                     "{others}", address=self.address.replace("\0", "@", 1),
                     error=error.strerror or error, message=fields[0],
                     others=f" (nor {others} more since the last warning)" if others else "")

        self._failures.occurred("send", line)

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class SystemdNotifier(Service):
    """The app's messages to systemd: a small service composed into a DaemonApp.

    ``watchdog`` is WATCHDOG_USEC in seconds (None: no watchdog); ``watchdog_pid`` the
    pid WATCHDOG_PID names (None: this process). ``now`` measures the reactor's stalls:
    CLOCK_MONOTONIC on a real reactor, the reactor's own clock for a test's Clock.
    """

    name = "systemd"

    def __init__(self, app: DaemonApp, notifier: Notifier, *, watchdog: float | None = None,
                 watchdog_pid: int | None = None,
                 now: Callable[[], float] | None = None) -> None:
        self.app = app
        self.reactor: Any = app.reactor
        self.notifier = notifier
        self.watchdog = watchdog
        self.watchdog_pid = watchdog_pid
        if now is None:
            now = time.monotonic if self.reactor.seconds is time.time else self.reactor.seconds
        self._now = now
        self.ready_sent = False
        self._last_status: str | None = None
        self._status_call: Any = None
        self._extend_call: Any = None
        self._watchdog_call: Any = None
        self._last_tick = 0.0
        self._last_ping = 0.0
        self._stall = 0.0
        self._reloads = 0
        self._hooked = False

    @classmethod
    def from_environ(cls, app: DaemonApp, environ: MutableMapping[str, str] | None = None,
                     ) -> SystemdNotifier | None:
        """The notifier ``environ`` asks for (default ``os.environ``); None without one.

        NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are taken out of ``environ``, as
        sd_notify's ``unset_environment`` does: job children and commands must not
        speak to systemd for the app (nor keep a hung app's watchdog fed).
        """
        if environ is None:
            environ = os.environ
        value = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        if not value:
            return None
        address = notify_address(value)
        if address is None:
            log.warn("NOTIFY_SOCKET={value!r} is not a socket path or @name; systemd will "
                     "not hear from this app", value=value)
            return None
        watchdog = watchdog_pid = None
        if usec:
            try:
                watchdog = int(usec) / 1e6
                watchdog_pid = int(pid) if pid else None
            except ValueError:
                watchdog = None
            if watchdog is None or watchdog <= 0:
                log.warn("WATCHDOG_USEC={usec!r} / WATCHDOG_PID={pid!r} is not a positive "
                         "number of microseconds and a pid; no watchdog pings",
                         usec=usec, pid=pid)
                watchdog = None
        return cls(app, Notifier(address), watchdog=watchdog, watchdog_pid=watchdog_pid)

    # ---------------------------------------------------------------- messages

    def send(self, *fields: str) -> bool:
        """Send one message to systemd; never raises (a failure is logged)."""
        return self.notifier.send(*fields)

    def ready(self) -> None:
        """Tell systemd the app is up (once): READY=1 with the first STATUS=."""
        if self.ready_sent or self.app.lifetime.stopping:
            return
        self.ready_sent = True
        line = self._last_status = status_line(self.app)
        self.send("READY=1", f"STATUS={line}")

    def reloading(self) -> None:
        """A reload begins: RELOADING=1 with MONOTONIC_USEC= (Type=notify-reload)."""
        self._reloads += 1
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                  "STATUS=reloading the configuration")

    def reloaded(self) -> None:
        """The reload is over (applied or refused): READY=1 with a fresh STATUS=."""
        self._reloads = max(0, self._reloads - 1)
        if self._reloads or self.app.lifetime.stopping:
            return  # READY=1 after the last reload under way; none once stopping
        line = self._last_status = status_line(self.app)
        self.send("READY=1", f"STATUS={line}")

    def _follow_reloads(self) -> None:
        """Frame each reload with RELOADING=1 and READY=1.

        An app started from a YAML file reloads it (SIGHUP, `daemonapp reload`) through
        its Controller, the one place a reload begins and ends. Any other app only
        reopens its logs on SIGHUP: that is its reload (Type=notify-reload sends SIGHUP
        and waits for both messages).
        """
        from daemonapp.control import controller_of

        controller = controller_of(self.app)
        if controller is not None and controller.config is not None:
            controller.on_reload(self.reloading, self.reloaded)
        else:
            self.app.on_reopen_logs(self._on_sighup)

    def _on_sighup(self) -> None:
        self.reloading()
        self.reactor.callLater(0, self.reloaded)  # once the other hooks reopened the logs

    def stopping(self, reason: str) -> None:
        """A graceful stop begins: STOPPING=1, then EXTEND_TIMEOUT_USEC= while it drains."""
        line = self._last_status = status_line(self.app)
        self.send("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int(EXTEND_FOR * 1e6)}",
                  f"STATUS={line}")
        if self.running and self._extend_call is None:
            self._extend_call = self.reactor.callLater(EXTEND_EVERY, self._extend)

    def _extend(self) -> None:
        self._extend_call = None
        if self.app.lifetime.ended:
            return
        self.send(f"EXTEND_TIMEOUT_USEC={int(EXTEND_FOR * 1e6)}")
        self._extend_call = self.reactor.callLater(EXTEND_EVERY, self._extend)

    def _update_status(self) -> None:
        self._status_call = self.reactor.callLater(STATUS_EVERY, self._update_status)
        if not self.ready_sent or self._reloads:
            return  # READY=1 and reloaded() send their own
        line = status_line(self.app)
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    # ---------------------------------------------------------------- watchdog

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two WATCHDOG=1 (WATCHDOG_USEC/2); None when none are sent."""
        if self.watchdog is None:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None  # the watchdog is another process's (twistd forked, or a child)
        return self.watchdog / 2

    def _start_watchdog(self, interval: float) -> None:
        now = self._now()
        self._last_tick = self._last_ping = now
        self._stall = 0.0
        self.send("WATCHDOG=1")
        self._watchdog_call = self.reactor.callLater(self._tick_every(interval),
                                                     self._watchdog_tick, interval)

    @staticmethod
    def _tick_every(interval: float) -> float:
        return min(interval / 4, WATCHDOG_TICK)

    def _watchdog_tick(self, interval: float) -> None:
        """Ping every ``interval`` unless the reactor stalled longer than that since the
        last ping. Ticks come several times per interval: the gap between two of them
        is how long the reactor ran no timer."""
        now = self._now()
        gap = now - self._last_tick
        self._last_tick = now
        if gap > interval:
            self._stall = max(self._stall, gap)
        tick = self._tick_every(interval)
        if now - self._last_ping >= interval - tick / 2:
            self._last_ping = now
            if self._stall:
                log.warn("the reactor ran nothing for {stall:.1f} s (more than WATCHDOG_USEC/2,"
                         " {interval:g} s): watchdog ping withheld, systemd will restart a "
                         "hung app", stall=self._stall, interval=interval)
                self._stall = 0.0
            else:
                self.send("WATCHDOG=1")
        self._watchdog_call = self.reactor.callLater(tick, self._watchdog_tick, interval)

    # --------------------------------------------------------------- IService

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if not self._hooked:
            self._hooked = True
            self.app.on_stopping(self.stopping)
            self._follow_reloads()
        interval = self.watchdog_interval
        if interval is not None:
            self._start_watchdog(interval)
        self._status_call = self.reactor.callLater(STATUS_EVERY, self._update_status)
        # After the app's own start: its listeners are bound, its daemons started.
        when_running = getattr(self.reactor, "callWhenRunning", None)
        if when_running is not None:
            when_running(self.reactor.callLater, 0, self._started)
        else:  # a test's Clock: it runs already
            self.reactor.callLater(0, self._started)

    def _started(self) -> None:
        from daemonapp.assembly import not_listening

        if self.running and self.app.stop_reason is None and not not_listening(self.app):
            self.ready()
        # else: the app stops (a listener did not bind): systemd hears STOPPING=1

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        for call in (self._status_call, self._extend_call, self._watchdog_call):
            if call is not None and call.active():
                call.cancel()
        self._status_call = self._extend_call = self._watchdog_call = None
        self.notifier.close()
