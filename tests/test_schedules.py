"""Schedules: the backoff policy alone, and a new policy through the real scheduler."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from daemonapp.interfaces import ISchedule
from daemonapp.schedules import FAILED, IDLE, LOCKED_OUT, WORKED, YIELDED, BackoffSchedule
from daemonapp.testing import FakeDaemon, make_app


class BackoffScheduleTests(SynchronousTestCase):
    def test_provides_ischedule(self) -> None:
        """BackoffSchedule provides ISchedule."""
        verifyObject(ISchedule, BackoffSchedule(FakeDaemon(run_every=30)))

    def test_first_delay_is_start_delay(self) -> None:
        """The first run is start_delay after the start."""
        schedule = BackoffSchedule(FakeDaemon(run_every=30, start_delay=7))
        self.assertEqual(schedule.first_delay(1000.0), 7.0)

    def test_idle_streak_and_reset(self) -> None:
        """Idle, failed and locked-out runs back off; worked resets; yielded is 0."""
        schedule = BackoffSchedule(FakeDaemon(run_every=30, increase_idle_by=10))
        outcomes = [IDLE, FAILED, LOCKED_OUT, IDLE, WORKED, IDLE, YIELDED, IDLE]
        self.assertEqual([schedule.next_delay(o, 0.0) for o in outcomes],
                         [40.0, 50.0, 60.0, 60.0, 30.0, 40.0, 0.0, 40.0])


@implementer(ISchedule)
class FixedTimes:
    """A test-only policy: run at these absolute times, then no more."""

    def __init__(self, times: list[float]) -> None:
        self.times = sorted(times)

    def first_delay(self, now: float) -> float:
        return next(t for t in self.times if t >= now) - now

    def next_delay(self, outcome: str, now: float) -> float | None:
        later = [t for t in self.times if t > now]
        return later[0] - now if later else None


class Listed(FakeDaemon):
    """A daemon on FixedTimes: no change to daemon.py or app.py was needed for it."""

    def __init__(self, times: list[float], jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.times = times

    def make_schedule(self) -> ISchedule:
        return FixedTimes(self.times)


class NewPolicyTests(SynchronousTestCase):
    def test_fixed_times_run_through_the_real_scheduler(self) -> None:
        """A daemon with a test-only policy runs at exactly its times, then stops."""
        app, clock = make_app()
        daemon = Listed([5.0, 7.0, 20.0], ["a", "b", "c", "d"], name="listed", run_every=1,
                        max_items=1)
        app.add(daemon)
        app.startService()
        for _ in range(30):
            clock.advance(1)
        self.assertEqual([t for t, _ in daemon.done], [5.0, 7.0, 20.0])
        self.assertEqual(daemon.stats["next_run_at"], None)
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing left to run: no timer
        self.successResultOf(app.stop("test"))

    def test_one_timer_for_many_policies(self) -> None:
        """Daemons on other policies share the scheduler's one timer (DESIGN §2)."""
        app, clock = make_app()
        for i in range(50):
            app.add(Listed([10.0 + i, 100.0 + i], name=f"d{i}", run_every=1))
        app.startService()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(10)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.successResultOf(app.stop("test"))
