"""Telling a suspend from a clock jump: three clocks compared at each wake-up.

The wall clock (``reactor.seconds()``) moves with suspends and with clock changes;
CLOCK_BOOTTIME moves with suspends only; CLOCK_MONOTONIC with neither. Between two
looks, boottime running ahead of monotonic is a suspend, and the wall clock running
ahead of (or behind) boottime is a clock jump (DESIGN §8). The scheduler looks at
every wake-up, at least once a minute while clock schedules exist, and tells the
schedules that asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["CLOCK_JUMP", "SUSPEND", "ClockWatch"]

SUSPEND = "suspend"
CLOCK_JUMP = "clock_jump"
#: Discrepancies below this are scheduling noise, not events.
TOLERANCE = 2.0


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class ClockWatch:
    """Compares the wall clock with monotonic and boot time at each ``look()``.

    ``look()`` returns the events since the last look: a list of (reason, wall time
    before, wall time after), reason "suspend" or "clock_jump" (empty when the clocks
    agreed). A machine without CLOCK_BOOTTIME tells no suspend from a jump: both read
    as a clock jump.
    """

    def __init__(self, wall: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic,
                 boottime: Callable[[], float] | None = None) -> None:
        if boottime is None and hasattr(time, "CLOCK_BOOTTIME"):
            boottime = _boottime
        self.wall = wall
        self.monotonic = monotonic
        self.boottime = boottime or monotonic
        self._last = self._read()

    @classmethod
    def for_reactor(cls, reactor: Any) -> ClockWatch | None:
        """A watch for a reactor whose clock is the wall clock; None for a test's Clock
        (its time moves only when the test says so: there is nothing to watch)."""
        if getattr(reactor, "seconds", None) is not time.time:
            return None
        return cls(time.time)

    def _read(self) -> tuple[float, float, float]:
        return self.wall(), self.monotonic(), self.boottime()

    def look(self) -> list[tuple[str, float, float]]:
        """What happened to the clocks since the last look."""
        before = self._last
        now = self._last = self._read()
        wall = now[0] - before[0]
        mono = now[1] - before[1]
        boot = now[2] - before[2]
        events: list[tuple[str, float, float]] = []
        if boot - mono > TOLERANCE:
            events.append((SUSPEND, before[0], before[0] + boot))
        if abs(wall - boot) > TOLERANCE:
            events.append((CLOCK_JUMP, before[0], now[0]))
        return events
