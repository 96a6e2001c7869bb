"""Steps for tests that drive a DaemonApp on a task.Clock, on top of daemonapp.testing.

daemonapp.testing gives the fakes (FakeDaemon, PendingDaemon, make_app); these helpers
start an app with its daemons, walk its clock timer by timer, and read Deferreds in
plain pytest functions.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from daemonapp import Daemon, DaemonApp
from daemonapp.testing import FakeDaemon, make_app


class GetWorkFails(FakeDaemon):
    """A FakeDaemon whose get_work raises a scripted exception (FakeDaemon's do_work would)."""

    def get_work(self) -> Any:
        job = super().get_work()
        if isinstance(job, BaseException):
            raise job
        return job


def start_app(*daemons: Daemon, **app_kw: Any) -> tuple[DaemonApp, Clock]:
    """make_app(**app_kw) with ``daemons`` added and the app started (the clock not advanced)."""
    app, clock = make_app(**app_kw)
    for daemon in daemons:
        app.add(daemon)
    app.startService()
    return app, clock


def result_of(d: Deferred[Any]) -> Any:
    """The result ``d`` has fired with (it must have fired)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def fired(d: Deferred[Any]) -> bool:
    """Whether ``d`` has fired (its result is passed on untouched)."""
    box: list[Any] = []
    d.addBoth(lambda r: box.append(r) or r)
    return bool(box)


def advance_to(clock: Clock, when: float) -> None:
    """Advance the clock timer by timer up to ``when`` (so each timer sees its own time)."""
    for _ in range(100_000):
        calls = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= when]
        if not calls:
            break
        clock.advance(max(0.0, min(calls) - clock.seconds()))
    clock.advance(max(0.0, when - clock.seconds()))


def idle_run_delays(daemon: Daemon, clock: Clock, count: int) -> list[float]:
    """The current_delay after each of the daemon's next ``count`` runs."""
    delays = []
    for _ in range(count):
        nxt = daemon.stats["next_run_at"]
        advance_to(clock, nxt)
        delays.append(daemon.stats["current_delay"])
    return delays
