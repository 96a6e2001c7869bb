"""ClockWatch: a suspend and a clock jump told apart by three clocks."""

from __future__ import annotations

from daemonapp.clockwatch import ClockWatch


class Clocks:
    def __init__(self) -> None:
        self.wall, self.mono, self.boot = 1_000_000.0, 50.0, 50.0

    def watch(self) -> ClockWatch:
        return ClockWatch(lambda: self.wall, lambda: self.mono, lambda: self.boot)

    def tick(self, wall: float, mono: float, boot: float) -> None:
        self.wall += wall
        self.mono += mono
        self.boot += boot


def test_clocks_that_agree_are_no_event() -> None:
    """Sixty seconds on every clock (and a little noise) is nothing."""
    clocks = Clocks()
    watch = clocks.watch()
    clocks.tick(60, 60, 60.5)
    assert watch.look() == []


def test_suspend() -> None:
    """Boot time and the wall clock ahead of monotonic: a suspend, with its wall span."""
    clocks = Clocks()
    watch = clocks.watch()
    clocks.tick(3660, 60, 3660)
    assert watch.look() == [("suspend", 1_000_000.0, 1_003_660.0)]


def test_forward_and_backward_jumps() -> None:
    """The wall clock ahead of, or behind, boot time: a clock jump."""
    clocks = Clocks()
    watch = clocks.watch()
    clocks.tick(1860, 60, 60)
    assert watch.look() == [("clock_jump", 1_000_000.0, 1_001_860.0)]
    clocks.tick(-3540, 60, 60)
    assert watch.look() == [("clock_jump", 1_001_860.0, 998_320.0)]


def test_no_watch_for_a_test_clock() -> None:
    """A reactor whose time is not the wall clock (a task.Clock) gets no watch."""
    from twisted.internet import reactor
    from twisted.internet.task import Clock

    assert ClockWatch.for_reactor(Clock()) is None
    assert isinstance(ClockWatch.for_reactor(reactor), ClockWatch)
