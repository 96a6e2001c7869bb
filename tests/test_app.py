"""DaemonApp: the scheduler's order, its one timer, deadlines, idle exit and graceful stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemonapp import DaemonApp, IActivityMonitor, IScheduler
from daemonapp.daemon import SeedDaemon
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app, run_until_idle
from tests._apps import advance_to, fired, result_of, start_app
from tests._processes import run_script


class Recorder(FakeDaemon):
    """A FakeDaemon that appends its name to a shared list for each item."""

    def __init__(self, trace: list[str], jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.trace = trace

    def do_work(self, job: Any) -> Any:
        self.trace.append(self.name)
        return super().do_work(job)


class InterfaceTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """DaemonApp is an IService, an IScheduler and an IActivityMonitor."""
        app, _ = make_app()
        verifyObject(IService, app)
        verifyObject(IScheduler, app)
        verifyObject(IActivityMonitor, app)

    def test_duplicate_name(self) -> None:
        """Two daemons cannot share a name."""
        app, _ = make_app()
        app.add(FakeDaemon(name="a"))
        with self.assertRaises(ValueError):
            app.add(FakeDaemon(name="a"))


class OrderTests(SynchronousTestCase):
    def test_priority_order(self) -> None:
        """When several daemons are due, higher priority runs first."""
        trace: list[str] = []
        app, clock = make_app()
        for name, prio in [("low", 0), ("high", 5), ("mid", 1)]:
            app.add(Recorder(trace, ["x"], name=name, priority=prio, run_every=10))
        app.startService()
        clock.advance(0)
        self.assertEqual(trace, ["high", "mid", "low"])

    def test_fifo_among_equals(self) -> None:
        """Daemons of equal priority and due time run in the order they were added."""
        trace: list[str] = []
        app, clock = make_app()
        for name in "abc":
            app.add(Recorder(trace, ["x"], name=name, run_every=10))
        app.startService()
        clock.advance(0)
        self.assertEqual(trace, ["a", "b", "c"])

    def test_earlier_due_first(self) -> None:
        """Among equal priorities, the daemon due earlier runs first."""
        trace: list[str] = []
        app, clock = make_app()
        app.add(Recorder(trace, ["x"], name="late", run_every=10, start_delay=5))
        app.add(Recorder(trace, ["x"], name="early", run_every=10, start_delay=3))
        app.startService()
        clock.advance(10)
        self.assertEqual(trace, ["early", "late"])

    def test_round_robin_of_yielded(self) -> None:
        """A yielded daemon goes behind equal-priority daemons already due."""
        trace: list[str] = []
        app, clock = make_app()
        app.add(Recorder(trace, [1, 2, 3], name="a", max_items=1, run_every=10))
        app.add(Recorder(trace, [1, 2, 3], name="b", max_items=1, run_every=10))
        app.startService()
        clock.advance(0)
        self.assertEqual(trace, ["a", "b", "a", "b", "a", "b"])

    def test_in_flight_run_does_not_block_others(self) -> None:
        """A run waiting on a Deferred does not hold up other daemons."""
        trace: list[str] = []
        app, clock = make_app()
        slow = PendingDaemon(["x"], name="slow", run_every=1)
        app.add(slow)
        app.add(Recorder(trace, ["a", "b"], name="fast", run_every=1, max_items=1))
        app.startService()
        clock.advance(0)
        self.assertEqual(trace, ["fast", "fast"])
        self.assertEqual(len(slow.pending), 1)

    def test_time_slice_yields_to_reactor(self) -> None:
        """After time_slice of reactor.seconds(), the scheduler lets other calls run."""
        app, clock = make_app(time_slice=0.010)
        seen: list[int] = []

        class Busy(FakeDaemon):
            def do_work(self, job: Any) -> Any:
                clock.rightNow += 0.004  # each item costs 4 ms of the clock
                return super().do_work(job)

        d = Busy(list(range(10)), run_every=10)
        app.add(d)
        app.startService()
        clock.callLater(0, lambda: seen.append(len(d.done)))
        clock.advance(0)
        self.assertEqual(seen, [3])  # 4, 8, 12 ms: the slice ended after the third item
        self.assertEqual(len(d.done), 10)

    def test_slice_ends_when_another_timer_is_due(self) -> None:
        """A slice ends early when another reactor timer comes due within it."""

        class TimedClock(Clock):
            def timeout(self) -> float | None:
                calls = self.getDelayedCalls()
                return min(c.getTime() for c in calls) - self.seconds() if calls else None

        clock = TimedClock()
        app, _ = make_app(clock, time_slice=0.010)
        seen: list[int] = []

        class Busy(FakeDaemon):
            def do_work(self, job: Any) -> Any:
                clock.rightNow += 0.001
                return super().do_work(job)

        d = Busy(list(range(20)), run_every=10)
        app.add(d)
        clock.callLater(0.005, lambda: seen.append(len(d.done)))
        app.startService()
        clock.advance(0)
        self.assertEqual(seen, [5])
        self.assertEqual(len(d.done), 20)

    def test_one_item_per_slice_at_least(self) -> None:
        """Each slice runs at least one item, however long it takes."""
        app, clock = make_app(time_slice=0.001)

        class Huge(FakeDaemon):
            def do_work(self, job: Any) -> Any:
                clock.rightNow += 1.0
                return super().do_work(job)

        d = Huge(["a", "b"], run_every=10)
        app.add(d)
        app.startService()
        clock.advance(0)
        self.assertEqual([j for _, j in d.done], ["a", "b"])


class TimerTests(SynchronousTestCase):
    def test_one_timer_for_ten_thousand_idle_daemons(self) -> None:
        """With 10,000 backed-off daemons and nothing due, exactly one timer is armed."""
        app, clock = make_app()
        for i in range(10_000):
            app.add(FakeDaemon(name=f"d{i}", run_every=1 + i % 7, increase_idle_by=i % 5,
                               start_delay=i % 13))
        app.startService()
        for _ in range(20):
            clock.advance(1)
            self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertTrue(all(d.stats["runs"] > 0 for d in app.daemons.values()))

    def test_timer_for_earliest_due(self) -> None:
        """The one timer fires at the earliest due time."""
        app, clock = make_app()
        app.add(FakeDaemon(name="a", run_every=50))
        app.add(FakeDaemon(name="b", run_every=20))
        app.startService()
        clock.advance(0)
        (call,) = clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 20.0)

    def test_add_while_running(self) -> None:
        """A daemon added to a running app first runs start_delay later."""
        app, clock = make_app()
        app.startService()
        clock.advance(100)
        d = FakeDaemon(name="late", run_every=10, start_delay=5)
        app.add(d)
        clock.advance(5)
        self.assertEqual(d.get_work_calls, [105.0])


class DeadlineTests(SynchronousTestCase):
    def test_hard_deadline(self) -> None:
        """shutdown_after stops the app whatever the work, with exit status 0."""
        app, clock = make_app(shutdown_after=100)
        app.add(FakeDaemon(run_every=1))
        app.startService()
        ended = app.when_ended()
        clock.advance(99)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(self.successResultOf(ended), 0)
        self.assertEqual(app.stop_reason, "hard deadline (shutdown_after)")

    def test_no_settings_runs_forever(self) -> None:
        """Without deadlines or idle exit, the app runs until it is stopped."""
        app, clock = make_app()
        app.add(FakeDaemon(run_every=30, increase_idle_by=1000))
        app.startService()
        ended = app.when_ended()
        clock.advance(10**7)
        self.assertNoResult(ended)

    def test_nothing_to_do_exits_at_soft_deadline(self) -> None:
        """An app with nothing to do exits at its soft deadline."""
        app, clock = make_app(stay_alive_for=50, shutdown_if_idle=10)
        app.startService()
        ended = app.when_ended()
        clock.advance(49)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(self.successResultOf(ended), 0)

    def test_no_idle_exit_before_soft_deadline(self) -> None:
        """stay_alive_for is a minimum life: no idle exit before it."""
        app, clock = make_app(stay_alive_for=500, shutdown_if_idle=10)
        app.add(FakeDaemon(run_every=1000))
        app.startService()
        ended = app.when_ended()
        clock.advance(499)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(self.successResultOf(ended), 0)

    def test_idle_exit_at_computed_moment(self) -> None:
        """Idle exit comes at the first run end whose next gap reaches the threshold."""
        app, clock = make_app(shutdown_if_idle=100)
        d = FakeDaemon(run_every=30, increase_idle_by=10, maximum_idle=120)
        app.add(d)
        app.startService()
        ended = app.when_ended()
        # Runs at 0, 40, 90, 150, 220, 300, 390; after the run at 390 the gap is 100.
        clock.advance(0)
        for _ in range(389):
            clock.advance(1)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(self.successResultOf(ended), 0)
        self.assertEqual(d.get_work_calls, [0.0, 40.0, 90.0, 150.0, 220.0, 300.0, 390.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_exit_waits_for_run_in_flight(self) -> None:
        """A run in flight keeps the app alive past the idle threshold."""
        app, clock = make_app(shutdown_if_idle=10)
        d = PendingDaemon(["x"], run_every=1000)
        app.add(d)
        app.startService()
        ended = app.when_ended()
        clock.advance(500)
        self.assertNoResult(ended)
        d.pending.pop().callback(None)
        self.assertEqual(self.successResultOf(ended), 0)

    def test_idle_exit_counts_requests(self) -> None:
        """The last request must have ended at least the threshold ago."""
        app, clock = make_app(shutdown_if_idle=60)
        app.add(FakeDaemon(run_every=1000))
        app.startService()
        ended = app.when_ended()
        app.begin("request")
        self.assertNoResult(ended)  # a request in flight at start
        clock.advance(30)
        app.end("request")
        clock.advance(59)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(self.successResultOf(ended), 0)

    def test_request_limit(self) -> None:
        """A listener's max_requests ends the app gracefully with status 0."""
        app, _ = make_app()
        app.startService()
        app.request_limit_reached("50 requests")
        self.assertEqual(self.successResultOf(app.when_ended()), 0)


class LifetimeSettingTests(SynchronousTestCase):
    def test_settings_set_after_construction_apply_at_start(self) -> None:
        """Lifetime settings set on the app before start are the ones the app lives by."""
        app, clock = make_app()
        app.stay_alive_for = "50s"
        app.shutdown_if_idle = 10
        app.shutdown_after = "2m"
        app.stop_timeout = "5s"
        self.assertEqual((app.stay_alive_for, app.shutdown_if_idle, app.shutdown_after,
                          app.stop_timeout), (50.0, 10.0, 120.0, 5.0))
        app.startService()
        ended = app.when_ended()
        clock.advance(49)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(self.successResultOf(ended), 0)
        self.assertEqual(app.stop_reason, "idle: nothing due within 10 s")

    def test_hard_deadline_set_after_construction(self) -> None:
        """shutdown_after set before start arms the hard deadline."""
        app, clock = make_app()
        app.add(FakeDaemon(run_every=1))
        app.shutdown_after = 30
        app.startService()
        ended = app.when_ended()
        clock.advance(30)
        self.assertEqual(self.successResultOf(ended), 0)
        self.assertEqual(app.stop_reason, "hard deadline (shutdown_after)")

    def test_bad_setting_is_refused(self) -> None:
        """A setting that is no duration is a ValueError naming it, and changes nothing."""
        app, _ = make_app(shutdown_if_idle=10)
        with self.assertRaises(ValueError) as caught:
            app.shutdown_if_idle = "soon"
        self.assertIn("shutdown_if_idle", str(caught.exception))
        self.assertEqual(app.shutdown_if_idle, 10.0)


class StopTests(SynchronousTestCase):
    def test_graceful_stop_finishes_current_item(self) -> None:
        """A graceful stop lets the run in flight end after its current item."""
        app, clock = make_app()
        d = PendingDaemon(["a", "b", "c"], run_every=10)
        app.add(d)
        app.startService()
        clock.advance(0)
        stopped = app.stopService()
        self.assertNoResult(stopped)
        d.pending.pop().callback(None)
        self.successResultOf(stopped)
        self.assertEqual([j for _, j in d.done], ["a"])
        self.assertEqual(self.successResultOf(app.when_ended()), 0)

    def test_stop_starts_no_new_run(self) -> None:
        """After the stop began, no daemon starts a run."""
        app, clock = make_app()
        slow = PendingDaemon(["a"], name="slow", run_every=10)
        other = FakeDaemon(name="other", run_every=10, start_delay=5)
        app.add(slow)
        app.add(other)
        app.startService()
        clock.advance(0)
        app.stop("test")
        clock.advance(10)
        self.assertEqual(other.get_work_calls, [])

    def test_stop_timeout_abandons(self) -> None:
        """After stop_timeout the app abandons what is left and ends with status 1."""
        app, clock = make_app(stop_timeout=30)
        d = PendingDaemon(["a"], run_every=10)
        app.add(d)
        app.startService()
        clock.advance(0)
        stopped = app.stopService()
        clock.advance(29)
        self.assertNoResult(stopped)
        clock.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(app.when_ended()), 1)

    def test_stop_service_idempotent(self) -> None:
        """stopService can be called twice (twistd and MultiService both do)."""
        app, _ = make_app()
        app.startService()
        first = app.stopService()
        second = app.stopService()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(app.stopService())

    def test_stop_hooks_run_after_daemons(self) -> None:
        """Stop hooks run once the daemons have stopped."""
        app, clock = make_app()
        order: list[str] = []
        d = PendingDaemon(["a"], run_every=10)
        app.add(d)
        app.add_stop_hook(lambda: order.append("hook"))
        app.startService()
        clock.advance(0)
        app.stop("test")
        order.append("item done")
        d.pending.pop().callback(None)
        self.assertEqual(order, ["item done", "hook"])

    def test_stops_its_reactor(self) -> None:
        """By default the app stops its reactor when it ends."""
        reactor = MemoryReactorClock()
        app = DaemonApp(reactor=reactor, handle_signals=False, shutdown_after=5)
        reactor.running = True
        app.startService()
        reactor.advance(5)
        self.assertTrue(reactor.hasStopped)

    def test_embedders_keep_reactor(self) -> None:
        """stop_reactor=False leaves the reactor running."""
        reactor = MemoryReactorClock()
        app = DaemonApp(reactor=reactor, handle_signals=False, shutdown_after=5,
                        stop_reactor=False)
        app.startService()
        reactor.advance(5)
        self.assertFalse(reactor.hasStopped)
        self.assertEqual(self.successResultOf(app.when_ended()), 0)

    def test_second_signal_stops_at_once(self) -> None:
        """A second SIGTERM ends the app at once, abandoning the run in flight."""
        import signal

        app, clock = make_app()
        d = PendingDaemon(["a"], run_every=10)
        app.add(d)
        app.startService()
        clock.advance(0)
        app._handle_signal(signal.SIGTERM)
        ended = app.when_ended()
        self.assertNoResult(ended)
        app._handle_signal(signal.SIGTERM)
        self.assertEqual(self.successResultOf(ended), 1)

    def test_sighup_reopens_logs(self) -> None:
        """SIGHUP calls the reopen hooks and does not stop the app."""
        import signal

        app, _ = make_app()
        calls: list[int] = []
        app.on_reopen_logs(lambda: calls.append(1))
        app.startService()
        app._handle_signal(signal.SIGHUP)
        self.assertEqual(calls, [1])
        self.assertNoResult(app.when_ended())


class SeedTests(SynchronousTestCase):
    def test_reconcile_starts_and_stops_children(self) -> None:
        """A seed daemon adds new children and removes vanished ones."""
        wanted = {"a", "b"}

        class Seed(SeedDaemon):
            run_every = 10

            def reconcile(self) -> Any:
                return {k: (lambda: FakeDaemon(run_every=5)) for k in wanted}

        app, clock = make_app()
        app.add(Seed(name="seed"))
        app.startService()
        clock.advance(0)
        self.assertEqual(sorted(app.daemons), ["seed", "seed/a", "seed/b"])
        wanted.discard("a")
        wanted.add("c")
        clock.advance(10)
        self.assertEqual(sorted(app.daemons), ["seed", "seed/b", "seed/c"])

    def test_unchanged_is_idle(self) -> None:
        """A reconcile that changes nothing is an idle run, so the seed backs off."""

        class Seed(SeedDaemon):
            run_every = 10
            increase_idle_by = 10

            def reconcile(self) -> Any:
                return {}

        app, clock = make_app()
        seed = Seed()
        app.add(seed)
        app.startService()
        clock.advance(0)
        self.assertEqual((seed.stats["last_outcome"], seed.stats["current_delay"]),
                         ("idle", 20.0))


class TestingHelperTests(SynchronousTestCase):
    def test_run_until_idle(self) -> None:
        """run_until_idle drives the clock until nothing is due within the horizon."""
        app, clock = make_app()
        d = FakeDaemon(["a", "b"], run_every=10, increase_idle_by=100)
        app.add(d)
        now = run_until_idle(app, clock, horizon=50)
        self.assertEqual([j for _, j in d.done], ["a", "b"])
        self.assertEqual(now, 10.0)


class StartTests(SynchronousTestCase):
    def test_idle_at_start_without_soft_deadline(self) -> None:
        """Without stay_alive_for, an app with nothing to do ends as it starts."""
        app, _ = make_app(shutdown_if_idle=10)
        app.startService()
        self.assertEqual(self.successResultOf(app.when_ended()), 0)

    def test_due_daemon_keeps_app_at_start(self) -> None:
        """A daemon due at start keeps the app from an idle exit at start."""
        app, clock = make_app(shutdown_if_idle=10)
        d = FakeDaemon(["a"], run_every=5)
        app.add(d)
        app.startService()
        self.assertNoResult(app.when_ended())
        clock.advance(0)
        self.assertEqual([j for _, j in d.done], ["a"])


class SeedFailureTests(SynchronousTestCase):
    def test_failed_reconcile_retried_next_run(self) -> None:
        """A reconcile() that raised is tried again on the next run."""
        calls: list[float] = []

        class Flaky(SeedDaemon):
            run_every = 10

            def reconcile(self) -> Any:
                assert self.app is not None
                calls.append(self.app.seconds())
                if len(calls) == 1:
                    raise OSError("base directory unreadable")
                return {"a": lambda: FakeDaemon(run_every=5)}

        app, clock = make_app()
        seed = Flaky(name="seed")
        app.add(seed)
        app.startService()
        clock.advance(0)
        self.assertEqual(seed.stats["last_outcome"], "failed")
        self.flushLoggedErrors(OSError)
        clock.advance(10)
        self.assertEqual(calls, [0.0, 10.0])
        self.assertIn("seed/a", app.daemons)

    def test_stopping_seed_removes_children(self) -> None:
        """Stopping a seed stops and removes its children."""

        class Seed(SeedDaemon):
            run_every = 10

            def reconcile(self) -> Any:
                return {"a": lambda: FakeDaemon(run_every=5)}

        app, clock = make_app()
        seed = Seed(name="seed")
        app.add(seed)
        app.startService()
        clock.advance(0)
        self.successResultOf(app.remove(seed))
        self.assertEqual(sorted(app.daemons), [])


class _BadRepr:
    """A job whose repr raises: the failure being logged must still be logged."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class FrameworkFailureTests(SynchronousTestCase):
    """DESIGN §1: an exception around a run ends that run; it never wedges the app."""

    def test_job_whose_repr_raises_fails_only_its_run(self) -> None:
        """A do_work failure on a job whose repr raises is a failed run; others go on."""
        app, clock = make_app()
        bad = FakeDaemon([_BadRepr(), _BadRepr()], name="bad", run_every=10)
        bad.do_work = lambda job: 1 / 0  # type: ignore[method-assign]
        good = FakeDaemon(["a", "b", "c"], name="good", run_every=10, max_items=1)
        app.add(bad)
        app.add(good)
        app.startService()
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual((bad.stats["last_outcome"], bad.stats["failures"]), ("failed", 1))
        self.assertFalse(bad.running)
        clock.advance(0)
        clock.advance(0)
        self.assertEqual([job for _, job in good.done], ["a", "b", "c"])
        self.assertEqual(bad.stats["next_run_at"], 10.0)  # rescheduled as after a failure
        clock.advance(10)
        self.assertEqual(bad.stats["runs"], 2)
        self.flushLoggedErrors(ZeroDivisionError)
        self.successResultOf(app.stop("test"))

    def test_exception_around_a_run_ends_it_as_failed(self) -> None:
        """An exception raised by the framework around a run fails it (phase scheduler)."""
        app, clock = make_app()
        broken = FakeDaemon(["x"], name="broken", run_every=10)

        def advance(deadline: float, now: float | None = None) -> int:
            raise KeyError("scheduler bug")

        broken.run_step = advance  # type: ignore[method-assign]
        good = FakeDaemon(["y"], name="good", run_every=10)
        app.add(broken)
        app.add(good)
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        app.startService()
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual([e.get("phase") for e in events if e.get("daemon") == "broken"],
                         ["scheduler"])
        self.assertEqual((broken.stats["last_outcome"], broken.running), ("failed", False))
        self.assertEqual([job for _, job in good.done], ["y"])
        self.assertEqual(broken.stats["current_delay"], 10.0)
        # Nothing is in flight: a stop ends at once, with status 0.
        self.successResultOf(app.stop("test"))
        self.assertEqual(self.successResultOf(app.when_ended()), 0)

    def test_lock_provider_that_raises_fails_the_run(self) -> None:
        """A lock_for that raises (an import error after a uid switch) fails the run."""

        class BrokenProvider:
            def lock_for(self, name: str) -> Any:
                raise ModuleNotFoundError("No module named 'daemonapp.locks'")

            def close(self) -> None:
                return None

        app, clock = make_app(locks=BrokenProvider())  # type: ignore[arg-type]
        d = FakeDaemon(["x"], name="locked", run_every=10, lock="queue")
        app.add(d)
        app.startService()
        clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ModuleNotFoundError)), 1)
        self.assertEqual((d.stats["last_outcome"], d.running), ("failed", False))
        self.assertEqual(d.jobs[0], "x")  # no hook ran without the lock
        self.successResultOf(app.stop("test"))
        self.assertEqual(self.successResultOf(app.when_ended()), 0)


_NO_LATE_IMPORTS = r"""
import sys, tempfile
from twisted.internet.task import Clock
from daemonapp.testing import FakeDaemon, make_app

state_dir = tempfile.mkdtemp()
app, clock = make_app(state_dir=state_dir)
app.add(FakeDaemon(["a", "b"], name="locked", run_every=1, lock="queue"))
app.privilegedStartService()          # twistd switches --uid/--gid after this
before = set(sys.modules)
app.startService()
for _ in range(50):
    clock.advance(0.5)
app.stop("test")
clock.advance(0)
d = app.daemons["locked"]
assert d.stats["runs"] > 10 and d.stats["failures"] == 0, d.stats
print(sorted(set(sys.modules) - before))
"""


class PrivilegedStartTests(SynchronousTestCase):
    def test_runs_import_nothing_after_the_uid_switch(self) -> None:
        """DESIGN §2: runs of a lock: daemon import no module after privilegedStartService."""
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-c", _NO_LATE_IMPORTS], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        self.assertEqual(out.strip(), "[]")


class TwoStepBindTests(SynchronousTestCase):
    """DESIGN §4: every socket is bound before any path is taken over."""

    def test_a_child_that_cannot_bind_abandons_the_others(self) -> None:
        """When one child cannot prepare, those prepared are abandoned and none started."""
        from twisted.application.service import Service

        trace: list[str] = []

        class Child(Service):
            def __init__(self, name: str, fails: bool = False) -> None:
                self.setName(name)
                self.fails = fails

            def prepare(self) -> None:
                if self.fails:
                    raise OSError(98, "Address already in use")
                trace.append(f"prepare {self.name}")

            def abandon(self) -> None:
                trace.append(f"abandon {self.name}")

            def startService(self) -> None:
                trace.append(f"start {self.name}")
                super().startService()

        app, _ = make_app()
        for child in (Child("a"), Child("b"), Child("tcp", fails=True)):
            child.setServiceParent(app)
        with self.assertRaises(OSError):
            app.startService()
        self.assertEqual(trace, ["prepare a", "prepare b", "abandon a", "abandon b"])
        self.assertFalse(app.running)


# ------------------------------------------- DESIGN §2's rules, from outside


def test_app_accepts_duration_strings() -> None:
    """DaemonApp takes durations as strings: stay_alive_for="15m", shutdown_after="30m"."""
    app, clock = start_app(FakeDaemon(run_every="10m"),
                           stay_alive_for="15m", shutdown_after="30m", shutdown_if_idle="1m")
    ended = app.when_ended()
    advance_to(clock, 15 * 60 - 1)
    assert not fired(ended)
    advance_to(clock, 30 * 60)
    assert result_of(ended) == 0


def test_testing_helpers() -> None:
    """daemonapp.testing ships FakeDaemon and run_until_idle(app, clock)."""
    app, clock = make_app()
    fake = FakeDaemon(["a", "b"], run_every=10)
    app.add(fake)
    run_until_idle(app, clock, horizon=5)
    assert [job for _, job in fake.done] == ["a", "b"]


@pytest.mark.integration
def test_app_run_returns_exit_status(tmp_path: Path) -> None:
    """app.run() returns the exit status and the process ends at its hard deadline."""
    result = run_script(tmp_path, (
        "import sys\n"
        "from daemonapp import Daemon, DaemonApp\n"
        "class D(Daemon):\n"
        "    run_every = 0.05\n"
        "    def get_work(self):\n"
        "        return None\n"
        "app = DaemonApp(shutdown_after=0.3)\n"
        "app.add(D())\n"
        "sys.exit(10 + app.run())\n"))
    assert result.returncode == 10, result.stderr


@pytest.mark.integration
def test_app_run_signal_exit_zero(tmp_path: Path) -> None:
    """SIGTERM is a planned stop: app.run() returns 0."""
    result = run_script(tmp_path, (
        "import os, signal, sys\n"
        "from daemonapp import DaemonApp\n"
        "from twisted.internet import reactor\n"
        "app = DaemonApp()\n"
        # Once the reactor runs (the app's handlers are in), not after a guessed time.
        "reactor.callWhenRunning(reactor.callLater, 0, os.kill, os.getpid(), signal.SIGTERM)\n"
        "sys.exit(10 + app.run())\n"))
    assert result.returncode == 10, result.stderr
