"""Schedules: the policies that pick when a daemon runs next.

A schedule answers two questions, asked through the daemon that owns it: how long
after its start the first run is due, and how long after the end of a run (with that
run's outcome) the next one is. `BackoffSchedule` is DESIGN §1's run_every with the
idle backoff; clock schedules (§8) are the next policy. A daemon gets its schedule
from `Daemon.make_schedule()`, so a new policy needs no change to the daemon or the
scheduler.
"""

from __future__ import annotations

import random
from typing import Any

from zope.interface import implementer

from daemonapp.interfaces import ISchedule

__all__ = [
    "FAILED",
    "IDLE",
    "LOCKED_OUT",
    "OUTCOMES",
    "WORKED",
    "YIELDED",
    "BackoffSchedule",
    "default_maximum_idle",
    "idle_delays",
    "next_idle_delay",
]

WORKED = "worked"
YIELDED = "yielded"
IDLE = "idle"
FAILED = "failed"
LOCKED_OUT = "locked-out"
#: Every outcome of a run (DESIGN §1), in its order.
OUTCOMES = (WORKED, YIELDED, IDLE, FAILED, LOCKED_OUT)


def default_maximum_idle(run_every: float, increase_idle_by: float,
                         multiply_idle_by: float) -> float:
    """The cap on the idle delay when maximum_idle is not set (DESIGN §1)."""
    if multiply_idle_by > 1:
        return 8 * run_every
    return run_every + 3 * increase_idle_by


def next_idle_delay(previous: float | None, run_every: float, increase_idle_by: float,
                    multiply_idle_by: float, maximum_idle: float) -> float:
    """The delay after one more idle (or failed, or locked-out) run.

    ``previous`` is the delay chosen after the last run of the idle streak, None
    when the streak starts: d1 = min(max, run_every * mult + inc), then
    dk = min(max, dk-1 * mult + inc).
    """
    base = run_every if previous is None else previous
    return min(maximum_idle, base * multiply_idle_by + increase_idle_by)


def idle_delays(run_every: float, increase_idle_by: float = 0.0, multiply_idle_by: float = 1.0,
                maximum_idle: float | None = None, count: int = 5) -> list[float]:
    """The first ``count`` delays of an idle streak (for `daemonapp check` and docs)."""
    if maximum_idle is None:
        maximum_idle = default_maximum_idle(run_every, increase_idle_by, multiply_idle_by)
    delays: list[float] = []
    previous: float | None = None
    for _ in range(count):
        previous = next_idle_delay(previous, run_every, increase_idle_by, multiply_idle_by,
                                   maximum_idle)
        delays.append(previous)
    return delays


@implementer(ISchedule)
class BackoffSchedule:
    """run_every after a run that worked, 0 after a yield, the idle backoff otherwise.

    It reads the daemon's attributes (run_every, increase_idle_by, multiply_idle_by,
    maximum_idle, jitter, start_delay) at each decision, so a change to them applies
    from the next run on; it keeps the idle streak itself.
    """

    __slots__ = ("daemon", "idle_delay")

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        #: The un-jittered delay after the last run of the idle streak; None: no streak.
        self.idle_delay: float | None = None

    def first_delay(self, now: float) -> float:
        """start_delay: start times are not spread by themselves (DESIGN §1)."""
        delay: float = self.daemon.start_delay
        return delay

    def next_delay(self, outcome: str, now: float) -> float:
        """The delay after a run with ``outcome``: jittered, except after a yield."""
        daemon = self.daemon
        if outcome in (WORKED, YIELDED):
            self.idle_delay = None
            delay: float = daemon.run_every if outcome == WORKED else 0.0
        else:
            self.idle_delay = delay = next_idle_delay(
                self.idle_delay, daemon.run_every, daemon.increase_idle_by,
                daemon.multiply_idle_by, daemon.maximum_idle)
        jitter = daemon.jitter
        if jitter and outcome != YIELDED:
            delay *= 1.0 + jitter * (2.0 * random.random() - 1.0)  # noqa: S311
        return delay
