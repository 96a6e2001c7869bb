"""The app's health for ``GET /healthz`` (DESIGN §10): running, nothing in alert, a live loop.

`LoopLag` is the probe that measures the loop: one timer, every half second, whose
lateness is the lag. `HealthCheck` makes the decision a listener with ``health: true``
serves, from the app's state, its daemons' ``in_alert`` and the probe: cheap enough to
be asked every second by a load balancer (no snapshot is built). With ``app.processes``
> 1 the daemons live in the supervisor only: it sends `alert_state` to its workers when
it changes, and their `HealthCheck` takes it in (`share`), so that every process
answers the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "MAX_LAG",
    "MAX_REASONS",
    "PROBE_EVERY",
    "HealthCheck",
    "LoopLag",
    "alert_state",
    "expected_interval",
]

#: Seconds between two ticks of the loop-lag probe.
PROBE_EVERY = 0.5
#: A loop lag at or over this many seconds makes the app unhealthy.
MAX_LAG = 1.0
#: Daemons named in a 503's reasons at most (the rest are counted), so that the body
#: stays small whatever the number of daemons in alert.
MAX_REASONS = 20


class LoopLag:
    """One timer every ``every`` seconds; how late it fires is the loop's lag.

    On the real reactor the lateness is measured on the monotonic clock (a wall-clock
    change is no lag); on a test's Clock, on the Clock. A tick that is overdue counts
    as it is asked, so a loop stuck since the last tick shows at once.
    """

    def __init__(self, reactor: Any, every: float = PROBE_EVERY,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.reactor = reactor
        self.every = every
        if monotonic is None:
            monotonic = time.monotonic if reactor.seconds is time.time else reactor.seconds
        self.monotonic = monotonic
        #: The lateness of the last tick, in seconds.
        self.last = 0.0
        self._due: float | None = None
        self._call: Any = None

    @property
    def running(self) -> bool:
        """True while the probe's timer is armed."""
        return self._call is not None

    def start(self) -> None:
        """Arm the timer (once: a second start changes nothing)."""
        if self._call is None:
            self._arm()

    def stop(self) -> None:
        """Disarm the timer."""
        call, self._call = self._call, None
        self._due = None
        if call is not None and call.active():
            call.cancel()

    def lag(self) -> float:
        """The loop's lag now: the last tick's lateness, or the overdue tick's."""
        due = self._due
        if due is None:
            return self.last
        return max(self.last, self.monotonic() - due)

    def _arm(self) -> None:
        self._due = self.monotonic() + self.every
        self._call = self.reactor.callLater(self.every, self._tick)

    def _tick(self) -> None:
        due = self._due
        self.last = max(0.0, self.monotonic() - due) if due is not None else 0.0
        self._arm()


class HealthCheck:
    """The decision ``GET /healthz`` serves for ``app`` (a DaemonApp).

    Healthy (200) while the app runs, no stop has begun, no daemon is in alert and the
    loop lag is under MAX_LAG; otherwise 503 with the reasons. The probe runs only
    while a listener serves health (the app starts and stops it).
    """

    def __init__(self, app: Any, max_lag: float = MAX_LAG) -> None:
        self.app = app
        self.max_lag = max_lag
        self.probe = LoopLag(app.reactor)
        #: Set in a worker of app.processes > 1 by its supervisor (`share`): the daemons
        #: in alert there, and the reason of the stop it drains this worker for.
        self.shared_alerts: tuple[list[tuple[str, int]], int] | None = None
        self.shared_stopping: str | None = None

    def share(self, state: Any) -> None:
        """Take in what another process decides for this one (a worker: its supervisor's
        `alert_state`, or its stop reason as ``{"stopping": reason}``). A malformed state
        is ignored (the pipe is ours, but a bound is kept)."""
        if not isinstance(state, dict):
            return
        stopping = state.get("stopping")
        if isinstance(stopping, str):
            self.shared_stopping = stopping[:500]
        alerts = state.get("alerts")
        total = state.get("in_alert")
        if isinstance(alerts, list) and isinstance(total, int) and not isinstance(total, bool):
            named = [(str(entry[0])[:500], entry[1]) for entry in alerts[:MAX_REASONS]
                     if isinstance(entry, list) and len(entry) == 2
                     and isinstance(entry[1], int)]
            self.shared_alerts = (named, max(total, len(named)))

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the JSON-able body)."""
        app = self.app
        reasons: list[str] = []
        lifetime = app.lifetime
        if lifetime.stopping or self.shared_stopping is not None:
            reasons.append(f"stopping: {self.shared_stopping or app.stop_reason}")
        elif not app.running:
            reasons.append("not started")
        named, total = alert_state(app.daemons)
        if self.shared_alerts is not None:
            named = (named + self.shared_alerts[0])[:MAX_REASONS]
            total += self.shared_alerts[1]
        for name, count in named:
            reasons.append(f"daemon {name} in alert: {count} failed run(s) in a row")
        if total > len(named):
            reasons.append(f"{total - len(named)} more daemon(s) in alert")
        lag = self.probe.lag() if self.probe.running else None
        if lag is not None and lag >= self.max_lag:
            reasons.append(f"loop lag {lag:.3f} s (limit {self.max_lag:g} s)")
        now = app.seconds()
        started = app.started_at
        body: dict[str, Any] = {
            "status": "unavailable" if reasons else "ok",
            "reasons": reasons,
            "pid": os.getpid(),
            "uptime": None if started is None else round(now - started, 3),
            "loop_lag": None if lag is None else round(lag, 6),
            "daemons": len(app.daemons),
            "in_alert": total,
        }
        return not reasons, body


def alert_state(daemons: Any) -> tuple[list[tuple[str, int]], int]:
    """The daemons in alert among ``daemons`` (a name -> Daemon mapping): the first
    MAX_REASONS as (name, consecutive failures), and how many there are."""
    alerts = [daemon for daemon in daemons.values() if daemon.stats.get("in_alert")]
    named = [(daemon.name, int(daemon.stats.get("consecutive_failures") or 0))
             for daemon in alerts[:MAX_REASONS]]
    return named, len(alerts)


def expected_interval(daemon: Any, app: Any) -> float | None:
    """The longest a healthy ``daemon`` waits between two runs now, in seconds.

    A backoff daemon: maximum_idle (the longest delay its schedule picks), stretched by
    its jitter.
    A clock schedule: the gap from the fire time it served last (kept in the app's
    schedule state) to its next run; without that state, the delay chosen after its
    last run. The metric ``daemonapp_daemon_expected_interval_seconds`` shows it, so
    one alert rule fits every daemon (docs/operations.md).
    """
    stats = daemon.stats
    if getattr(daemon, "schedule", None):
        state = getattr(app, "schedule_state", None)
        last = state.last_fire(daemon.name) if state is not None else None
        next_run = stats.get("next_run_at")
        if last is not None and next_run is not None and next_run > last:
            return float(next_run - last)
        delay = stats.get("current_delay")
        return None if delay is None else float(delay)
    maximum = daemon.maximum_idle
    if maximum is None:
        return None
    return float(max(maximum, daemon.run_every) * (1.0 + (daemon.jitter or 0.0)))
