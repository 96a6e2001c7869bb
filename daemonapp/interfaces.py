"""The zope.interface contracts between daemonapp's parts.

Each interface here has several implementations (or is the seam through which one
part talks to another without importing it), and each implementation is checked
with ``verifyObject`` in its tests.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from zope.interface import Attribute, Interface

# The lock interfaces live in a Twisted-free module so that daemonapp.locks (used by
# CGI scripts) can declare them without importing Twisted; they are public here.
from daemonapp._lock_interfaces import IAsyncLock, ILockBackend, ILockProvider, LockUnavailable

__all__ = [
    "IActivityMonitor", "IAppHealth", "IAsyncLock", "IDaemon", "IJobStore", "IListener",
    "ILockBackend", "ILockProvider", "ISchedule", "IScheduler", "LockUnavailable",
]


class IDaemon(Interface):
    """A unit of periodic work scheduled by a DaemonApp."""

    name = Attribute("str: the daemon's name (YAML section, or the class name)")
    priority = Attribute("int: higher runs first when several daemons are due")
    stats = Attribute("dict: runs, items, failures, last_outcome, last_run_at, "
                      "next_run_at, current_delay")

    def get_work() -> object:
        """Return a job, None when there is nothing to do, or a Deferred of either."""

    def do_work(job: object) -> object:
        """Handle one job; may return a Deferred."""

    def start() -> None:
        """Schedule the first run start_delay from now."""

    def stop() -> object:
        """Stop scheduling; return a Deferred that fires when a run in flight ended."""


class ISchedule(Interface):
    """When a daemon runs next: one policy object per daemon (``Daemon.make_schedule``).

    Delays are seconds from ``now`` (the scheduler's clock, ``reactor.seconds()``,
    read as epoch seconds by clock schedules).

    Optional hooks, called by the scheduler when a policy has them (ClockSchedule
    does): ``paused(since)`` when an operator pauses the daemon; ``resumed(now)`` when
    the pause ends, returning the delay to the next run (None: the one planned; without
    the hook the daemon runs at once); ``triggered(now)`` before a manual run, which
    serves no scheduled time.

    Optional attribute ``yield_delay``: the delay a policy answers to a yield that
    follows a yield, when that answer never changes and changes nothing in the policy
    (both bundled ones: 0.0). The daemon then does not ask: a busy daemon's every run.
    """

    def first_delay(now: float) -> float:
        """The delay from the daemon's start to its first run."""

    def next_delay(outcome: str, now: float) -> float | None:
        """The delay from the end of a run with ``outcome`` to the next run.

        None: the schedule has no more runs; the daemon stops.
        """


class IScheduler(Interface):
    """What a Daemon needs from the app that schedules it (implemented by DaemonApp)."""

    reactor = Attribute("the injected reactor or task.Clock")
    threadpool = Attribute("the thread pool for in_thread daemons")
    lock_wait = Attribute("float: seconds a daemon waits for its lock before a locked-out run")
    timezone = Attribute("str | None: the zone of clock schedules without their own")
    schedule_state = Attribute("the last fire time of each clock-scheduled daemon "
                               "(daemonapp.schedules.ScheduleState), or None")
    run_history = Attribute("the last runs of each daemon (daemonapp.history.RunHistory), "
                            "or None")

    def seconds() -> float:
        """The scheduler's clock, ``reactor.seconds()``."""

    def daemon_started(daemon: Any, delay: float) -> None:
        """Make ``daemon`` due ``delay`` seconds from now."""

    def daemon_stopped(daemon: Any) -> None:
        """Forget ``daemon``: it will not be run again."""

    def run_ended(daemon: Any, delay: float | None, now: float | None = None) -> None:
        """A run ended: due again ``delay`` seconds from now (None: the daemon stopped).

        ``now``: the ``seconds()`` the daemon read as its run ended, if it has one."""

    def wake(daemon: Any) -> None:
        """A daemon that waited on a Deferred or a thread can go on with its run."""

    def reschedule(daemon: Any, delay: float) -> None:
        """Make a waiting daemon due ``delay`` seconds from now instead."""

    def watch_clock(watcher: Any, max_sleep: float) -> None:
        """Call ``watcher(events, now)`` when a wake-up finds that the machine slept or
        the wall clock jumped (events: (reason, wall before, wall after)); never sleep
        longer than ``max_sleep`` from now on."""

    def unwatch_clock(watcher: Any) -> None:
        """Stop calling ``watcher``."""

    def sleep(daemon: Any, delay: float) -> None:
        """Go on with the daemon's run ``delay`` seconds from now (a wait for its
        lock), through the scheduler's own timer: waiting daemons arm no timers."""

    def lock_for(name: str) -> IAsyncLock:
        """A lock handle for a daemon's ``lock:`` option."""

    def add(daemon: Any) -> None:
        """Add (and, when the app runs, start) another daemon."""

    def remove(daemon: Any) -> object:
        """Stop and forget a daemon; a Deferred fires when its run in flight ended."""


class IActivityMonitor(Interface):
    """How listeners and job runners tell the app about work in flight.

    The app counts these for its idle exit; listeners never import the app.
    """

    def begin(kind: str) -> None:
        """Something of ``kind`` ("request", "job", ...) started."""

    def end(kind: str) -> None:
        """Something of ``kind`` ended; a "request" also sets the last-request time."""

    def request_limit_reached(reason: str) -> None:
        """A listener reached max_requests: start a graceful stop (exit status 0)."""


class IAppHealth(Interface):
    """What a listener's ``GET /healthz`` and ``GET /metrics`` ask the app (DESIGN §10).

    The app provides it along with IActivityMonitor; listeners never import the app.
    """

    def health_report() -> tuple[bool, dict[str, object]]:
        """(healthy, a JSON-able body: ``status``, ``reasons``, ...), cheap to ask."""

    def metrics_text() -> Any:
        """The Prometheus text of the app's status (as ``daemonapp status --metrics``):
        bytes, or a Deferred of them."""


class IListener(IService):
    """A network listener (FastCGI, SCGI, HTTP) served on the app's reactor."""

    protocol_name = Attribute("str: 'fastcgi', 'scgi' or 'http'")
    in_flight = Attribute("int: requests being answered now")
    health = Attribute("bool: serves GET /healthz, and keeps accepting while the app "
                       "drains (then drains last)")

    def set_activity_monitor(monitor: IActivityMonitor) -> None:
        """Report requests to ``monitor`` (the app calls this in add_listener)."""

    def drain() -> object:
        """Stop accepting, answer what is in flight; a Deferred fires when done."""

    def refuse_new() -> None:
        """A graceful stop began, this listener keeps accepting until ``drain()``: new
        requests get 503 + Retry-After, /healthz 503."""

    def snapshot() -> dict[str, object]:
        """A JSON-able status of this listener for ``daemonapp status``."""


class IJobStore(Interface):
    """Where jobs live: SQLite in state_dir, or PostgreSQL."""

    def submit(kind: str, payload: dict[str, object], unique_key: str | None = None,
               priority: int = 0, run_after: float | None = None) -> object:
        """Add a job; return (a Deferred of) its id."""

    def claim(holder: str, lease: float = 30.0) -> object:
        """Mark the best due pending job running; return it or None."""

    def heartbeat(job_id: int, token: int, lease: float = 30.0) -> object:
        """Extend the lease; raises StaleLease when the token is old."""

    def complete(job_id: int, token: int) -> object:
        """Mark done; raises StaleLease when the token is old."""

    def fail(job_id: int, token: int, error: str, retry_at: float | None = None) -> object:
        """Record a failed attempt: pending again (at retry_at, else at once) while
        attempts are left, else failed."""

    def cancel(job_id: int) -> object:
        """Mark cancelled."""

    def retry(job_id: int) -> object:
        """Make a failed job pending with a fresh budget."""

    def set_progress(job_id: int, token: int, percent: float, message: str = "") -> object:
        """Persist the latest progress; raises StaleLease when the token is old."""

    def release(job_id: int, token: int) -> object:
        """Put a running job back to pending and give its attempt back (graceful stop)."""

    def list(state: str | None = None, limit: int = 100) -> object:
        """The newest jobs, optionally only those in ``state``."""

    def get(job_id: int) -> object:
        """The job's record (state, attempts, error, percent, message), or None."""

    def close() -> object:
        """Release connections."""
