"""Helpers for testing daemons and apps on a ``task.Clock`` (like treq.testing).

``FakeDaemon`` hands out a scripted list of jobs and records what happened;
``make_app`` builds a DaemonApp on a Clock with signals and reactor stops off;
``run_until_idle`` advances the clock until no run is due within a horizon.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from daemonapp.app import DaemonApp
from daemonapp.daemon import Daemon

__all__ = ["FakeDaemon", "ImmediateThreadPool", "PendingDaemon", "make_app", "run_until_idle"]


class FakeDaemon(Daemon):
    """A daemon whose get_work pops scripted jobs, recording every call.

    ``jobs`` is consumed in order; a job that is an exception instance is
    raised from do_work. ``runs`` lists (start time, items) per finished run.
    """

    run_every = 30.0

    def __init__(self, jobs: Iterable[Any] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.jobs: deque[Any] = deque(jobs)
        self.done: list[tuple[float, Any]] = []
        self.get_work_calls: list[float] = []

    def add_jobs(self, *jobs: Any) -> None:
        """Queue more jobs for later runs."""
        self.jobs.extend(jobs)

    def get_work(self) -> Any:
        assert self.app is not None
        self.get_work_calls.append(self.app.seconds())
        return self.jobs.popleft() if self.jobs else None

    def do_work(self, job: Any) -> Any:
        assert self.app is not None
        if isinstance(job, BaseException):
            raise job
        self.done.append((self.app.seconds(), job))
        return None


class PendingDaemon(FakeDaemon):
    """A FakeDaemon whose do_work returns a Deferred that the test fires.

    Each item's Deferred is appended to ``pending``; fire it to finish the item.
    Use it to test what happens while a run is in flight.
    """

    def __init__(self, jobs: Iterable[Any] = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.pending: list[Deferred[None]] = []

    def do_work(self, job: Any) -> Any:
        super().do_work(job)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


def make_app(clock: Clock | None = None, **kw: Any) -> tuple[DaemonApp, Clock]:
    """A DaemonApp on a Clock that installs no signal handlers and stops no reactor."""
    clock = clock or Clock()
    kw.setdefault("handle_signals", False)
    kw.setdefault("stop_reactor", False)
    return DaemonApp(clock=clock, **kw), clock


def run_until_idle(app: DaemonApp, clock: Clock, *, horizon: float = 3600.0,
                   max_steps: int = 100_000) -> float:
    """Advance ``clock`` from timer to timer until nothing is due within ``horizon``.

    Starts the app when needed. Returns the clock's time. Stops after
    ``max_steps`` timer firings, since a busy app on a Clock never stops by itself.
    """
    if not app.running:
        app.startService()
    limit = clock.seconds() + horizon
    for _ in range(max_steps):
        clock.advance(0)
        calls = [c.getTime() for c in clock.getDelayedCalls()]
        if not calls:
            break
        nxt = min(calls)
        if nxt > limit:
            break
        clock.advance(max(0.0, nxt - clock.seconds()))
    return clock.seconds()


class ImmediateThreadPool:
    """A stand-in thread pool that runs each call at once, in the calling thread.

    Pair it with a ``task.Clock`` (which has no ``callFromThread``) to test
    ``in_thread`` daemons deterministically: ``make_app(threadpool=ImmediateThreadPool())``.
    """

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, on_result: Any, func: Any, *args: Any,
                                 **kw: Any) -> None:
        self.calls += 1
        try:
            result = func(*args, **kw)
        except BaseException:
            on_result(False, Failure())  # type: ignore[no-untyped-call]
        else:
            on_result(True, result)
