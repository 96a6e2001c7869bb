"""The scheduler's side of an operator's commands: trigger, pause and resume (DESIGN §9),
on a task.Clock, for backoff daemons and clock schedules."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daemonapp.scheduler import MANUAL, Pause
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app
from tests.test_schedules import Ticker, advance_to, clock_at, epoch


class Recorder(FakeDaemon):
    """Records the trigger of each run it starts (what a run history would read)."""

    def __init__(self, jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.triggers: list[tuple[float, str | None]] = []

    def get_work(self) -> Any:
        assert self.app is not None
        if not self.get_work_calls or self.get_work_calls[-1] != self.app.seconds():
            self.triggers.append((self.app.seconds(),
                                  self.app.scheduler.trigger_of(self)))  # type: ignore[attr-defined]
        return super().get_work()


class TriggerTests(SynchronousTestCase):
    def test_trigger_runs_an_idle_daemon_at_once_as_manual(self) -> None:
        """A trigger makes a waiting daemon run within one slice, its run marked manual."""
        app, clock = make_app()
        daemon = Recorder(name="r", run_every=30, start_delay=100)
        app.add(daemon)
        app.startService()
        clock.advance(10)
        self.assertEqual(app.scheduler.trigger(daemon), "queued")
        clock.advance(0)
        self.assertEqual(daemon.triggers, [(10.0, MANUAL)])
        self.assertIsNone(app.scheduler.trigger_of(daemon))
        # An idle run: the backoff decides the next one as after any run (30 s later).
        self.assertEqual(daemon.stats["next_run_at"], 40.0)
        clock.advance(30)
        self.assertEqual(daemon.triggers, [(10.0, MANUAL), (40.0, None)])
        self.successResultOf(app.stop("test"))

    def test_triggers_during_a_run_merge_into_one_run_after_it(self) -> None:
        """Three triggers during a run make exactly one more run, right after it."""
        app, clock = make_app()
        daemon = PendingDaemon(["a", "b"], name="p", run_every=30)
        app.add(daemon)
        app.startService()
        clock.advance(0)
        self.assertTrue(daemon.running)
        self.assertEqual([app.scheduler.trigger(daemon) for _ in range(3)],
                         ["after-run", "merged", "merged"])
        clock.advance(5)
        daemon.pending.pop(0).callback(None)  # item a done: the run goes on with b
        daemon.pending.pop(0).callback(None)  # b done; get_work finds nothing: worked
        # The manual run followed at once, in the same slice (an idle one: no work left).
        self.assertEqual(daemon.stats["runs"], 2)
        self.assertEqual(daemon.stats["last_outcome"], "idle")
        self.assertIsNone(app.scheduler.trigger_of(daemon))
        self.assertEqual(daemon.get_work_calls, [0.0, 5.0, 5.0, 5.0])
        clock.advance(29)
        self.assertEqual(daemon.stats["runs"], 2)  # nothing more: one run per trigger
        clock.advance(1)
        self.assertEqual(daemon.stats["runs"], 3)
        self.successResultOf(app.stop("test"))

    def test_trigger_of_a_daemon_due_now_merges(self) -> None:
        """A daemon already due runs once, not twice, and that run is the manual one."""
        app, clock = make_app()
        daemon = Recorder(name="r", run_every=30)
        app.add(daemon)
        app.startService()
        self.assertEqual(app.scheduler.trigger(daemon), "merged")
        clock.advance(0)
        self.assertEqual(daemon.triggers, [(0.0, MANUAL)])
        self.assertEqual(daemon.stats["runs"], 1)
        self.successResultOf(app.stop("test"))

    def test_trigger_pending_until_the_manual_run_starts(self) -> None:
        """trigger_pending: true from a trigger until its manual run has started, for
        a trigger queued and one after the run in flight; false otherwise."""
        app, clock = make_app()
        idle = Recorder(name="r", run_every=30, start_delay=100)
        busy = PendingDaemon(["a"], name="p", run_every=30)
        app.add(idle)
        app.add(busy)
        app.startService()
        clock.advance(0)
        self.assertEqual((app.scheduler.trigger_pending(idle),
                          app.scheduler.trigger_pending(busy)), (False, False))
        self.assertEqual(app.scheduler.trigger(idle), "queued")
        self.assertEqual(app.scheduler.trigger(busy), "after-run")
        self.assertEqual((app.scheduler.trigger_pending(idle),
                          app.scheduler.trigger_pending(busy)), (True, True))
        clock.advance(0)
        busy.pending.pop(0).callback(None)  # its run ends; the manual one follows at once
        self.assertEqual((idle.stats["runs"], busy.stats["runs"]), (1, 2))
        self.assertEqual((app.scheduler.trigger_pending(idle),
                          app.scheduler.trigger_pending(busy)), (False, False))
        self.successResultOf(app.stop("test"))

    def test_trigger_of_a_daemon_not_started_is_refused(self) -> None:
        """Only a started daemon can be triggered."""
        app, _ = make_app()
        daemon = FakeDaemon(name="f")
        app.add(daemon)
        with self.assertRaises(ValueError):
            app.scheduler.trigger(daemon)


class PauseTests(SynchronousTestCase):
    def test_a_paused_daemon_starts_no_run_and_runs_at_resume(self) -> None:
        """Paused, a backoff daemon misses its due times; at resume it runs at once."""
        app, clock = make_app()
        daemon = FakeDaemon(name="f", run_every=30)
        app.add(daemon)
        app.startService()
        clock.advance(0)
        self.assertEqual(daemon.stats["runs"], 1)
        app.scheduler.pause("f", Pause(since=0.0, reason="migration"))
        self.assertEqual(clock.getDelayedCalls(), [])  # its timer is gone: nothing else is due
        clock.advance(100)
        self.assertEqual(daemon.stats["runs"], 1)
        self.assertEqual(app.scheduler.pause_of("f"), Pause(since=0.0, reason="migration"))
        self.assertEqual(app.scheduler.resume("f"), Pause(since=0.0, reason="migration"))
        clock.advance(0)
        self.assertEqual(daemon.stats["runs"], 2)
        self.assertEqual(daemon.get_work_calls, [0.0, 100.0])
        self.assertIsNone(app.scheduler.pause_of("f"))
        self.successResultOf(app.stop("test"))

    def test_a_run_in_flight_finishes_and_then_waits(self) -> None:
        """A pause during a run lets the run finish and starts no other."""
        app, clock = make_app()
        daemon = PendingDaemon(["a", "b"], name="p", run_every=10)
        app.add(daemon)
        app.startService()
        clock.advance(0)
        app.scheduler.pause("p", Pause(since=0.0))
        daemon.pending.pop(0).callback(None)
        daemon.pending.pop(0).callback(None)
        self.assertEqual(daemon.stats["runs"], 1)
        clock.advance(60)
        self.assertEqual(daemon.stats["runs"], 1)
        app.scheduler.resume("p")
        clock.advance(0)
        self.assertEqual(daemon.stats["runs"], 2)
        self.successResultOf(app.stop("test"))

    def test_a_daemon_started_under_a_paused_name_starts_paused(self) -> None:
        """A pause is kept by name: a daemon added later under it starts paused."""
        app, clock = make_app()
        app.scheduler.pause("later", Pause(since=0.0))
        app.startService()
        daemon = FakeDaemon(name="later", run_every=30)
        app.add(daemon)
        clock.advance(120)
        self.assertEqual(daemon.stats["runs"], 0)
        app.scheduler.resume("later")
        clock.advance(0)
        self.assertEqual(daemon.stats["runs"], 1)
        self.successResultOf(app.stop("test"))

    def test_a_paused_daemon_triggered_runs_once_and_stays_paused(self) -> None:
        """A trigger runs a paused daemon once; it stays paused afterwards."""
        app, clock = make_app()
        daemon = Recorder(name="r", run_every=30, start_delay=50)
        app.add(daemon)
        app.startService()
        app.scheduler.pause("r", Pause(since=0.0))
        clock.advance(10)
        self.assertEqual(app.scheduler.trigger(daemon), "queued")
        clock.advance(0)
        clock.advance(200)
        self.assertEqual(daemon.triggers, [(10.0, MANUAL)])
        self.assertIsNotNone(app.scheduler.pause_of("r"))
        self.successResultOf(app.stop("test"))

    def test_pause_twice_keeps_since_replaces_until_and_reason(self) -> None:
        """Pausing a paused daemon replaces the record and changes nothing else."""
        app, clock = make_app()
        daemon = FakeDaemon(name="f", run_every=30)
        app.add(daemon)
        app.startService()
        app.scheduler.pause("f", Pause(since=0.0, reason="a"))
        app.scheduler.pause("f", Pause(since=0.0, until=90.0, reason="b"))
        self.assertEqual(app.scheduler.pauses(), {"f": Pause(since=0.0, until=90.0, reason="b")})
        clock.advance(60)
        self.assertEqual(daemon.stats["runs"], 0)
        self.successResultOf(app.stop("test"))


class ClockPauseTests(SynchronousTestCase):
    """Clock schedules count fire times passed during a pause as misfires ("paused")."""

    def run_paused(self, catch_up: str) -> Ticker:
        clock = clock_at("2026-01-01T00:07:00+00:00")
        app, _ = make_app(clock)
        daemon = Ticker(["x"] * 10, name="q", schedule="*/15 * * * *", timezone="UTC",
                        catch_up=catch_up)
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-01-01T00:20:00+00:00")  # ran at 00:15
        app.scheduler.pause("q", Pause(since=clock.seconds()))
        advance_to(clock, "2026-01-01T01:05:00+00:00")  # 00:30, 00:45, 01:00 pass
        app.scheduler.resume("q")
        clock.advance(0)
        advance_to(clock, "2026-01-01T01:20:00+00:00")
        self.successResultOf(app.stop("test"))
        return daemon

    def test_catch_up_once_runs_once_at_resume(self) -> None:
        """catch_up once: the three skipped fire times make one run at resume."""
        daemon = self.run_paused("once")
        self.assertEqual([t for t, _ in daemon.done],
                         [epoch("2026-01-01T00:15:00+00:00"), epoch("2026-01-01T01:05:00+00:00"),
                          epoch("2026-01-01T01:15:00+00:00")])
        self.assertEqual(daemon.stats["misfires"], {"paused": 3})

    def test_catch_up_none_waits_for_the_next_fire_time(self) -> None:
        """catch_up none: nothing at resume; the next fire time runs as planned."""
        daemon = self.run_paused("none")
        self.assertEqual([t for t, _ in daemon.done],
                         [epoch("2026-01-01T00:15:00+00:00"), epoch("2026-01-01T01:15:00+00:00")])
        self.assertEqual(daemon.stats["misfires"], {"paused": 3})

    def test_resume_before_the_next_fire_time_changes_nothing(self) -> None:
        """A pause that skipped no fire time leaves the schedule as it was."""
        clock = clock_at("2026-01-01T00:07:00+00:00")
        app, _ = make_app(clock)
        daemon = Ticker(["x"] * 10, name="q", schedule="*/15 * * * *", timezone="UTC")
        app.add(daemon)
        app.startService()
        app.scheduler.pause("q", Pause(since=clock.seconds()))
        advance_to(clock, "2026-01-01T00:10:00+00:00")
        app.scheduler.resume("q")
        advance_to(clock, "2026-01-01T00:20:00+00:00")
        self.assertEqual([t for t, _ in daemon.done], [epoch("2026-01-01T00:15:00+00:00")])
        self.assertEqual(daemon.stats["misfires"], {})
        self.successResultOf(app.stop("test"))

    def test_a_manual_run_leaves_the_next_fire_time(self) -> None:
        """A trigger between fire times runs now and the next fire time still runs."""
        clock = clock_at("2026-01-01T00:07:00+00:00")
        app, _ = make_app(clock)
        daemon = Ticker(["x"] * 10, name="q", schedule="*/15 * * * *", timezone="UTC")
        app.add(daemon)
        app.startService()
        self.assertEqual(app.scheduler.trigger(daemon), "queued")
        clock.advance(0)
        advance_to(clock, "2026-01-01T00:20:00+00:00")
        self.assertEqual([t for t, _ in daemon.done],
                         [epoch("2026-01-01T00:07:00+00:00"), epoch("2026-01-01T00:15:00+00:00")])
        self.assertEqual(daemon.stats["next_fire"], "2026-01-01T00:30:00+00:00")
        self.assertEqual(daemon.stats["misfires"], {})
        self.successResultOf(app.stop("test"))
