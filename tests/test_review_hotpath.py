"""Review of the scheduler's hot path (3136ac5..5c4d13b): what the review found, on a
task.Clock (the collector's freeze's finding is in tests/test_gcfreeze.py)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daemonapp.testing import FakeDaemon


class FakeClocks:
    """Monotonic and boot time for a ClockWatch on a task.Clock: the test moves them."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.boot = 1000.0


class Slow(FakeDaemon):
    """Each item takes 0.3 s of the clock's time; the jobs of each run by its start."""

    def __init__(self, jobs: Any, **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.runs: dict[float | None, list[Any]] = {}

    def do_work(self, job: Any) -> Any:
        self.runs.setdefault(self.run_started_at, []).append(job)
        super().do_work(job)
        assert self.app is not None
        self.app.reactor.rightNow += 0.3
        return None


class RunStartTests(SynchronousTestCase):
    def test_a_run_starts_after_the_clock_watchers_of_its_slice(self) -> None:
        """The wake-up after a suspend tells the clock watchers first (0.5 s of work
        here); a run starting in that slice starts after them: its max_seconds budget
        (DESIGN §1: reactor.seconds() against the run's start) and its start as
        recorded count from then."""
        from daemonapp.clockwatch import ClockWatch
        from daemonapp.testing import make_app

        app, clock = make_app()
        fake = FakeClocks()
        told: list[float] = []

        def watcher(events: list[tuple[str, float, float]], now: float) -> None:
            told.append(now)
            clock.rightNow += 0.5  # (many clock schedules making up what they missed)

        app.scheduler.watch_clock(watcher, 60.0)
        app.scheduler.watch = ClockWatch(clock.seconds, lambda: fake.mono, lambda: fake.boot)
        daemon = Slow(["a", "b", "c", "d", "e"], name="slow", run_every=30, start_delay=100,
                      max_seconds=1.0)
        app.add(daemon)
        app.startService()
        fake.mono += 60.0
        fake.boot += 60.0
        clock.advance(60)  # a wake-up (max_sleep): the clocks agree, nothing to tell
        clock.rightNow += 40.0  # asleep from 60 to 100: the daemon is due at the wake-up
        fake.boot += 40.0
        clock.advance(0)
        self.assertEqual(told, [100.0])
        self.assertEqual(daemon.get_work_calls[0], 100.5)
        # 0.3 s per item: 1.2 s >= max_seconds after the fourth, then one more run.
        self.assertEqual(list(daemon.runs), [100.5, daemon.get_work_calls[4]])
        self.assertEqual(list(daemon.runs.values()), [["a", "b", "c", "d"], ["e"]])
        self.successResultOf(app.stop("test"))
