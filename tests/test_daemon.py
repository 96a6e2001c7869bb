"""Daemon: attributes, the outcome table of DESIGN §1 and its exact rules."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemonapp import Daemon, IDaemon
from daemonapp.daemon import OptionError, default_maximum_idle, idle_delays, next_idle_delay
from daemonapp.testing import FakeDaemon, ImmediateThreadPool, PendingDaemon, make_app
from tests._apps import GetWorkFails, advance_to, fired, idle_run_delays, start_app
from tests._processes import run_script


def delays_of(daemon: Daemon, clock: Any, runs: int) -> list[float]:
    """Advance from run to run and collect the delay chosen after each."""
    out = []
    clock.advance(0)
    for _ in range(runs):
        out.append(daemon.stats["current_delay"])
        clock.advance(daemon.stats["current_delay"])
    return out


class Replicator(Daemon):
    run_every = 30
    increase_idle_by = 10

    def __init__(self, *, record_count: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.record_count = record_count


class AttributeTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """A Daemon provides IDaemon."""
        verifyObject(IDaemon, FakeDaemon(run_every=1))

    def test_defaults(self) -> None:
        """Unset attributes take DESIGN's defaults."""
        d = FakeDaemon(run_every=30)
        self.assertEqual(
            (d.increase_idle_by, d.multiply_idle_by, d.maximum_idle, d.priority, d.max_items,
             d.max_seconds, d.jitter, d.in_thread, d.lock, d.start_delay),
            (0.0, 1.0, 30.0, 0, None, None, 0.0, False, None, 0.0))

    def test_default_maximum_idle_additive(self) -> None:
        """maximum_idle defaults to run_every + 3 x increase_idle_by."""
        self.assertEqual(FakeDaemon(run_every=30, increase_idle_by=10).maximum_idle, 60.0)

    def test_default_maximum_idle_multiplicative(self) -> None:
        """maximum_idle defaults to 8 x run_every when multiply_idle_by > 1."""
        d = FakeDaemon(run_every=10, multiply_idle_by=2, increase_idle_by=5)
        self.assertEqual(d.maximum_idle, 80.0)

    def test_durations_as_strings(self) -> None:
        """Durations accept strings like "10s", "5m", "1h30m"."""
        d = FakeDaemon(run_every="1h30m", increase_idle_by="10s", maximum_idle="5m")
        self.assertEqual((d.run_every, d.increase_idle_by, d.maximum_idle),
                         (5400.0, 10.0, 300.0))

    def test_subclass_parameters(self) -> None:
        """Keywords go to the subclass's __init__ and to the Daemon attributes."""
        d = Replicator(record_count=10, name="collective", maximum_idle="2m")
        self.assertEqual((d.record_count, d.name, d.maximum_idle, d.run_every),
                         (10, "collective", 120.0, 30.0))

    def test_unknown_keyword(self) -> None:
        """A key unknown to Daemon and to the subclass is a TypeError that names it."""
        with self.assertRaises(TypeError) as e:
            Replicator(record_cuont=3)
        self.assertIn("record_cuont", str(e.exception))

    def test_name_defaults_to_class(self) -> None:
        """Without a name, a daemon is named after its class."""
        self.assertEqual(Replicator().name, "Replicator")

    def test_run_every_required(self) -> None:
        """run_every must be set and above zero."""
        with self.assertRaises(OptionError) as e:
            Daemon()
        self.assertEqual(e.exception.key, "run_every")

    def test_bad_duration(self) -> None:
        """A bad duration is an OptionError that names the key."""
        with self.assertRaises(OptionError) as e:
            FakeDaemon(run_every="soon")
        self.assertEqual(str(e.exception),
                         "run_every: expected a duration like \"30s\", \"5m\" or \"1h30m\", "
                         "got 'soon'")

    def test_bad_jitter(self) -> None:
        """jitter must lie in [0, 1)."""
        with self.assertRaises(OptionError):
            FakeDaemon(jitter=1.5)

    def test_bad_lock_name(self) -> None:
        """A lock name must match [A-Za-z0-9][A-Za-z0-9._-]*."""
        with self.assertRaises(OptionError) as e:
            FakeDaemon(lock="../etc")
        self.assertEqual(e.exception.key, "lock")

    def test_stats_keys(self) -> None:
        """stats holds the documented keys."""
        self.assertEqual(set(FakeDaemon().stats),
                         {"runs", "items", "failures", "last_outcome", "last_run_at",
                          "next_run_at", "current_delay", "last_duration", "run_seconds",
                          "consecutive_failures", "in_alert", "last_success_at", "outcomes"})

    def test_start_without_app(self) -> None:
        """start() outside an app says how to add the daemon."""
        with self.assertRaises(RuntimeError) as e:
            FakeDaemon().start()
        self.assertIn("DaemonApp.add", str(e.exception))


class BackoffRuleTests(SynchronousTestCase):
    def test_additive(self) -> None:
        """run_every 30, increase 10 → 40, 50, 60, 60."""
        self.assertEqual(idle_delays(30, 10, count=4), [40.0, 50.0, 60.0, 60.0])

    def test_multiplicative(self) -> None:
        """run_every 10, multiply 2 → 20, 40, 80, 80 (cap 8 x run_every)."""
        self.assertEqual(idle_delays(10, 0, 2, count=4), [20.0, 40.0, 80.0, 80.0])

    def test_both(self) -> None:
        """run_every 10, multiply 2, increase 5 → 25, 55, 80."""
        self.assertEqual(idle_delays(10, 5, 2, count=3), [25.0, 55.0, 80.0])

    @settings(max_examples=200, deadline=None)
    @given(
        run_every=st.floats(0.01, 1e4),
        increase=st.floats(0, 1e4),
        multiply=st.floats(1, 10),
        cap=st.one_of(st.none(), st.floats(0.01, 1e5)),
    )
    def test_properties(self, run_every: float, increase: float, multiply: float,
                        cap: float | None) -> None:
        """Idle delays never exceed the cap, never shrink, and follow the recurrence."""
        maximum = cap if cap is not None else default_maximum_idle(run_every, increase, multiply)
        delays = idle_delays(run_every, increase, multiply, cap, count=12)
        assert all(d <= maximum for d in delays)
        assert delays[0] == min(maximum, run_every * multiply + increase)
        for prev, cur in itertools.pairwise(delays):
            assert cur == min(maximum, prev * multiply + increase)
            if delays[0] < maximum:
                assert cur >= prev

    @settings(max_examples=60, deadline=None)
    @given(run_every=st.integers(1, 100), increase=st.integers(0, 50),
           multiply=st.sampled_from([1.0, 1.5, 2.0]), runs=st.integers(1, 8))
    def test_scheduler_follows_rule(self, run_every: int, increase: int, multiply: float,
                                    runs: int) -> None:
        """The delays an idle daemon really gets on a Clock are the rule's."""
        app, clock = make_app()
        d = FakeDaemon(run_every=run_every, increase_idle_by=increase, multiply_idle_by=multiply)
        app.add(d)
        app.startService()
        expected = idle_delays(run_every, increase, multiply, count=runs)
        self.assertEqual(delays_of(d, clock, runs), expected)
        self.assertEqual(d.stats["runs"], runs + 1)  # delays_of ends by starting one more


class OutcomeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app, self.clock = make_app()

    def start(self, daemon: Daemon) -> Daemon:
        self.app.add(daemon)
        self.app.startService()
        self.clock.advance(0)
        return daemon

    def test_idle_sequence(self) -> None:
        """An idle daemon with run_every 30 and increase 10 waits 40, 50, 60, 60."""
        d = FakeDaemon(run_every=30, increase_idle_by=10)
        self.app.add(d)
        self.app.startService()
        self.assertEqual(delays_of(d, self.clock, 4), [40.0, 50.0, 60.0, 60.0])
        self.assertEqual(d.get_work_calls, [0.0, 40.0, 90.0, 150.0, 210.0])
        self.assertEqual(d.stats["last_outcome"], "idle")

    def test_worked_resets_streak(self) -> None:
        """A run that worked waits run_every and resets the idle streak."""
        d = FakeDaemon(run_every=30, increase_idle_by=10)
        self.start(d)
        self.clock.advance(40)  # idle twice: 40, then 50
        d.add_jobs("a")
        self.clock.advance(50)
        self.assertEqual((d.stats["last_outcome"], d.stats["current_delay"]), ("worked", 30.0))
        self.clock.advance(30)
        self.assertEqual((d.stats["last_outcome"], d.stats["current_delay"]), ("idle", 40.0))

    def test_delay_counts_from_end_of_run(self) -> None:
        """A 5 s run that worked is followed by a run 35 s after it began."""
        d = self.start(PendingDaemon(["job"], run_every=30))
        self.clock.advance(5)
        d.pending.pop().callback(None)
        self.assertEqual(d.stats["next_run_at"], 35.0)
        self.clock.advance(30)
        self.assertEqual(d.get_work_calls, [0.0, 5.0, 35.0])

    def test_run_durations(self) -> None:
        """stats keeps the last run's duration and the sum of all runs' durations."""
        d = self.start(PendingDaemon(["a", "b"], run_every=30))
        self.clock.advance(5)
        d.pending.pop().callback(None)
        self.clock.advance(2)
        d.pending.pop().callback(None)
        self.assertEqual((d.stats["last_duration"], d.stats["run_seconds"]), (7.0, 7.0))
        self.clock.advance(30)  # an idle run, on a clock that stands still
        self.assertEqual((d.stats["last_duration"], d.stats["run_seconds"]), (0.0, 7.0))

    def test_yielded_max_items(self) -> None:
        """Reaching max_items ends the run as yielded, with no extra get_work."""
        d = FakeDaemon(["a", "b", "c", "d", "e"], run_every=30, max_items=3)
        self.app.add(d)
        self.app.startService()
        seen = []
        d.get_work_calls = []
        original = d._end

        def spy(outcome: str, *args: bool) -> int:
            seen.append((outcome, len(d.done), len(d.get_work_calls)))
            return original(outcome, *args)

        d._end = spy  # type: ignore[method-assign]
        self.clock.advance(0)
        self.assertEqual(seen, [("yielded", 3, 3), ("worked", 5, 6)])
        self.assertEqual(d.stats["current_delay"], 30.0)

    def test_yield_is_due_at_once(self) -> None:
        """A yielded run's next delay is 0."""
        d = FakeDaemon(["a", "b"], run_every=30, max_items=1)
        self.app.add(d)
        self.app.startService()
        outcomes = []
        original = d._end
        d._end = lambda o, *a: (outcomes.append((o, d.stats["current_delay"])), original(o, *a))[1]  # type: ignore[method-assign]
        self.clock.advance(0)
        self.assertEqual([o for o, _ in outcomes], ["yielded", "yielded", "idle"])
        self.assertEqual([t for t, _ in d.done], [0.0, 0.0])

    def test_yield_resets_streak(self) -> None:
        """A yielded run did work, so the idle streak starts over."""
        d = self.start(FakeDaemon(run_every=30, increase_idle_by=10, max_items=1))
        self.clock.advance(40)
        self.assertEqual(d.stats["current_delay"], 50.0)
        d.add_jobs("a", "b")
        self.clock.advance(50)
        self.assertEqual(d.stats["last_outcome"], "idle")  # yielded, yielded, idle
        self.assertEqual(d.stats["current_delay"], 40.0)

    def test_max_seconds(self) -> None:
        """max_seconds compares reactor.seconds() with the run's start after each item."""
        clock = self.clock

        class Slow(FakeDaemon):
            def do_work(self, job: Any) -> Any:
                clock.rightNow += 2  # each item takes 2 s of the clock
                return super().do_work(job)

        d = self.start(Slow(["a", "b", "c", "d"], run_every=30, max_seconds=3))
        self.assertEqual([job for _, job in d.done], ["a", "b", "c", "d"])
        # Two yielded runs of two items (no extra get_work), then an idle run.
        self.assertEqual(len(d.get_work_calls), 5)
        self.assertEqual(d.stats["runs"], 3)
        self.assertEqual(d.stats["last_outcome"], "idle")

    def test_failed_get_work(self) -> None:
        """A raising get_work is logged with daemon, phase and job, counted, and backs off."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        class Broken(FakeDaemon):
            def get_work(self) -> Any:
                raise RuntimeError("db down")

        d = Broken(run_every=30, increase_idle_by=10, name="broken")
        self.app.add(d)
        self.app.startService()
        self.assertEqual(delays_of(d, self.clock, 3), [40.0, 50.0, 60.0])
        self.assertEqual(d.stats["failures"], 4)  # delays_of starts a fourth run
        self.assertEqual(d.stats["last_outcome"], "failed")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 4)
        failures = [e for e in events if "log_failure" in e and e.get("daemon") == "broken"]
        self.assertEqual((failures[0]["phase"], failures[0]["job"]), ("get_work", "None"))

    def test_failed_do_work(self) -> None:
        """A raising do_work logs the job's repr and the phase do_work."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        d = self.start(FakeDaemon(["ok", ValueError("bad job")], run_every=30, name="f"))
        self.assertEqual(d.stats["last_outcome"], "failed")
        self.assertEqual(d.stats["items"], 1)
        self.assertEqual(d.stats["current_delay"], 30.0)  # idle rule: min(30, 30 + 0)
        self.flushLoggedErrors(ValueError)
        failure = next(e for e in events if "log_failure" in e and e.get("daemon") == "f")
        self.assertEqual(failure["phase"], "do_work")
        self.assertEqual(failure["job"], "ValueError('bad job')")

    def test_failure_continues_idle_streak(self) -> None:
        """idle, failed, idle → 40, 50, 60: a failure continues the streak like an idle run."""
        d = self.start(FakeDaemon(run_every=30, increase_idle_by=10))
        d.add_jobs(RuntimeError("boom"))
        self.clock.advance(40)
        self.clock.advance(50)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(d.stats["current_delay"], 60.0)

    def test_failed_deferred(self) -> None:
        """A Deferred that fails counts as a failed run and the app keeps running."""

        class Broken(FakeDaemon):
            def do_work(self, job: Any) -> Any:
                return Deferred.fromCoroutine(self.boom())

            async def boom(self) -> None:
                raise KeyError("x")

        d = self.start(Broken(["a"], run_every=30))
        self.assertEqual(d.stats["last_outcome"], "failed")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertTrue(self.app.running)

    def test_jitter_bounds(self) -> None:
        """Jitter spreads the delay within [1 - jitter, 1 + jitter] of the chosen one."""
        random.seed(7)
        d = FakeDaemon(run_every=100, jitter=0.1)
        self.app.add(d)
        self.app.startService()
        delays = delays_of(d, self.clock, 50)
        assert all(90.0 <= x <= 110.0 for x in delays)
        assert len(set(delays)) > 1

    def test_jitter_not_on_start_delay_or_yield(self) -> None:
        """start_delay and a yield are never jittered."""
        d = FakeDaemon(["a", "b"], run_every=100, jitter=0.5, start_delay=7, max_items=1)
        self.app.add(d)
        self.app.startService()
        self.clock.advance(7)
        self.assertEqual([t for t, _ in d.done], [7.0, 7.0])

    def test_locked_out(self) -> None:
        """A run whose lock is held elsewhere is locked-out and backs off like an idle one."""

        class Busy:
            name = "x"

            def acquire(self, timeout: float) -> Deferred[bool]:
                return succeed(False)

            def release(self) -> None:
                raise AssertionError("never held")

        self.app, self.clock = make_app(lock_wait=0)
        self.app.lock_for = lambda name: Busy()  # type: ignore[assignment,method-assign,return-value]
        d = FakeDaemon(["a"], run_every=30, increase_idle_by=10, lock="x")
        self.app.add(d)
        self.app.startService()
        self.assertEqual(delays_of(d, self.clock, 2), [40.0, 50.0])
        self.assertEqual(d.stats["last_outcome"], "locked-out")
        self.assertEqual(d.done, [])

    def test_lock_wait_polls_through_the_scheduler(self) -> None:
        """A daemon waiting for its lock tries every 20 ms up to lock_wait, arming no timer."""
        tries: list[float] = []
        clock = self.clock

        class Busy:
            name = "x"

            def acquire(self, timeout: float) -> Deferred[bool]:
                tries.append(round(clock.seconds(), 3))
                return succeed(len(tries) >= 4)

            def release(self) -> None:
                pass

        self.app.lock_for = lambda name: Busy()  # type: ignore[assignment,method-assign,return-value]
        d = FakeDaemon(["a"], run_every=30, lock="x")
        self.start(d)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for _ in range(10):
            self.clock.advance(0.01)
        self.assertEqual(tries, [0.0, 0.02, 0.04, 0.06])
        self.assertEqual(d.stats["last_outcome"], "worked")

    def test_lock_held_for_the_run(self) -> None:
        """The lock is taken before the first get_work and released after the last hook."""
        trace: list[str] = []
        waiting: list[Deferred[bool]] = []

        class Lock:
            name = "x"

            def acquire(self, timeout: float) -> Deferred[bool]:
                trace.append(f"acquire {timeout:g}")
                d: Deferred[bool] = Deferred()
                waiting.append(d)
                return d

            def release(self) -> None:
                trace.append("release")

        class Traced(FakeDaemon):
            def get_work(self) -> Any:
                trace.append("get_work")
                return super().get_work()

        self.app.lock_for = lambda name: Lock()  # type: ignore[assignment,method-assign,return-value]
        d = Traced(["a"], run_every=30, lock="x")
        self.start(d)
        self.assertEqual(trace, ["acquire 0"])  # one try at a time, never a wait inside
        waiting.pop().callback(True)
        self.assertEqual(trace, ["acquire 0", "get_work", "get_work", "release"])
        self.assertEqual(d.stats["last_outcome"], "worked")


class HookStyleTests(SynchronousTestCase):
    def test_deferred_hooks(self) -> None:
        """get_work and do_work may return Deferreds that fire later."""
        app, clock = make_app()
        jobs: list[Deferred[Any]] = []
        done = []

        class Later(Daemon):
            run_every = 10

            def get_work(self) -> Any:
                d: Deferred[Any] = Deferred()
                jobs.append(d)
                return d

            def do_work(self, job: Any) -> Any:
                done.append(job)
                return succeed(None)

        d = Later()
        app.add(d)
        app.startService()
        clock.advance(0)
        jobs.pop().callback("x")
        jobs.pop().callback(None)
        self.assertEqual(done, ["x"])
        self.assertEqual(d.stats["last_outcome"], "worked")

    def test_async_hooks(self) -> None:
        """async def hooks work (through Deferred.fromCoroutine)."""
        app, clock = make_app()
        gate: Deferred[None] = Deferred()
        done = []

        class Async(Daemon):
            run_every = 10
            left = 2

            async def get_work(self) -> Any:
                await gate
                self.left -= 1
                return self.left if self.left >= 0 else None

            async def do_work(self, job: Any) -> None:
                done.append(job)

        d = Async()
        app.add(d)
        app.startService()
        clock.advance(0)
        self.assertEqual(done, [])
        gate.callback(None)
        self.assertEqual(done, [1, 0])
        self.assertEqual(d.stats["items"], 2)

    def test_in_thread(self) -> None:
        """in_thread hooks run through the app's thread pool."""
        pool = ImmediateThreadPool()
        app, clock = make_app(threadpool=pool)
        d = FakeDaemon(["a", "b"], run_every=10, in_thread=True)
        app.add(d)
        app.startService()
        clock.advance(0)
        self.assertEqual([j for _, j in d.done], ["a", "b"])
        self.assertEqual(pool.calls, 3)  # two items and the empty get_work
        self.assertEqual(d.stats["last_outcome"], "worked")

    def test_in_thread_failure(self) -> None:
        """A hook failing in a thread is logged with its phase and job."""
        pool = ImmediateThreadPool()
        app, clock = make_app(threadpool=pool)
        d = FakeDaemon([ValueError("x")], run_every=10, in_thread=True)
        app.add(d)
        app.startService()
        clock.advance(0)
        self.assertEqual(d.stats["last_outcome"], "failed")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class NoOverlapTests(SynchronousTestCase):
    def test_never_overlaps_itself(self) -> None:
        """A run still in progress is not started again when its next time comes."""
        app, clock = make_app()
        d = PendingDaemon(["a", "b"], run_every=1)
        app.add(d)
        app.startService()
        clock.advance(0)
        clock.advance(100)
        self.assertEqual(d.get_work_calls, [0.0])
        d.pending.pop().callback(None)
        self.assertEqual(d.get_work_calls, [0.0, 100.0])

    def test_stop_waits_for_run(self) -> None:
        """daemon.stop() fires once the run in progress ended, after its current item."""
        app, clock = make_app()
        d = PendingDaemon(["a", "b", "c"], run_every=1)
        app.add(d)
        app.startService()
        clock.advance(0)
        stopped = d.stop()
        self.assertNoResult(stopped)
        d.pending.pop().callback(None)
        self.successResultOf(stopped)
        self.assertEqual(d.get_work_calls, [0.0])
        self.assertEqual(list(d.jobs), ["b", "c"])
        clock.advance(10)
        self.assertEqual(d.get_work_calls, [0.0])


def test_next_idle_delay_starts_from_run_every() -> None:
    """The first idle delay builds on run_every."""
    assert next_idle_delay(None, 30, 10, 1, 60) == 40


def test_reserved_internal_names() -> None:
    """A subclass that redefines one of Daemon's internals is refused when defined."""
    import pytest

    with pytest.raises(TypeError, match="_end"):
        class Clumsy(Daemon):
            run_every = 1

            def _end(self, outcome: str) -> int:
                return 0


# ------------------------------------------------- DESIGN §1's exact rules, from outside


def test_idle_delays_written_out() -> None:
    """run_every 30, increase_idle_by 10 gives idle delays 40, 50, 60, 60 (default cap 60)."""
    d = FakeDaemon(run_every=30, increase_idle_by=10)
    _, clock = start_app(d)
    clock.advance(0)
    assert d.stats["current_delay"] == 40
    assert [40.0, *idle_run_delays(d, clock, 3)] == [40, 50, 60, 60]
    assert d.maximum_idle == 60


def test_multiply_idle_default_cap() -> None:
    """multiply_idle_by 2 caps at 8 x run_every: run_every 10 gives 20, 40, 80, 80."""
    d = FakeDaemon(run_every=10, multiply_idle_by=2)
    _, clock = start_app(d)
    clock.advance(0)
    assert [d.stats["current_delay"], *idle_run_delays(d, clock, 3)] == [20, 40, 80, 80]


def test_multiply_and_increase() -> None:
    """d1 = run_every x mult + inc, dk = dk-1 x mult + inc, capped: 10, x2, +5 -> 25, 55, 80."""
    d = FakeDaemon(run_every=10, multiply_idle_by=2, increase_idle_by=5)
    _, clock = start_app(d)
    clock.advance(0)
    assert [d.stats["current_delay"], *idle_run_delays(d, clock, 2)] == [25, 55, 80]


def test_durations_accept_strings() -> None:
    """Duration attributes accept "10s", "5m", "1h30m"."""
    d = FakeDaemon(run_every="5m", increase_idle_by="10s", maximum_idle="1h30m")
    assert (d.run_every, d.increase_idle_by, d.maximum_idle) == (300, 10, 5400)


def test_delay_counts_from_end_of_run() -> None:
    """With run_every 30, a 5 s run that worked is followed by a run 35 s after it began."""
    d = PendingDaemon(["a"], run_every=30)
    _, clock = start_app(d)
    clock.advance(0)
    assert d.done == [(0, "a")]
    clock.advance(5)
    d.pending[0].callback(None)
    assert d.stats["last_outcome"] == "worked"
    assert d.stats["next_run_at"] == 35
    d.jobs.append("b")
    advance_to(clock, 34.9)
    assert len(d.done) == 1
    advance_to(clock, 35)
    assert d.done[1] == (35, "b")


def test_first_run_at_start_delay() -> None:
    """The first run is start_delay after the app starts."""
    d = FakeDaemon(["a"], run_every=30, start_delay=7)
    _, clock = start_app(d)
    advance_to(clock, 6.9)
    assert d.get_work_calls == []
    advance_to(clock, 7)
    assert d.get_work_calls[0] == 7


def test_first_run_after_add_on_running_app() -> None:
    """A daemon added to a running app first runs start_delay after add()."""
    app, clock = make_app()
    app.startService()
    clock.advance(100)
    d = FakeDaemon(["a"], run_every=30, start_delay=4)
    app.add(d)
    advance_to(clock, 103.9)
    assert d.get_work_calls == []
    advance_to(clock, 104)
    assert d.get_work_calls == [104, 104]


def test_max_items_yielded_stats() -> None:
    """max_items ends the run as yielded (delay 0) with no extra get_work call."""

    class Watch(FakeDaemon):
        outcomes: list[tuple[str, float, int]]

        def get_work(self) -> Any:
            if self.stats["runs"] and not self.outcomes:
                self.outcomes.append((self.stats["last_outcome"], self.stats["current_delay"],
                                      len(self.get_work_calls)))
            return super().get_work()

    d = Watch(["a", "b", "c"], run_every=30, max_items=2)
    d.outcomes = []
    _, clock = start_app(d)
    clock.advance(0)
    assert d.outcomes == [("yielded", 0, 2)]
    assert [job for _, job in d.done] == ["a", "b", "c"]
    assert d.stats["last_outcome"] == "worked"
    assert d.stats["runs"] == 2


def test_max_seconds_budget() -> None:
    """max_seconds compares reactor.seconds() with the run's start after each do_work."""
    d = PendingDaemon(["a", "b", "c", "d"], run_every=30, max_seconds=5)
    _, clock = start_app(d)
    clock.advance(0)
    clock.advance(3)
    d.pending[0].callback(None)  # 3 s: under budget, go on
    assert len(d.get_work_calls) == 2
    clock.advance(3)
    d.pending[1].callback(None)  # 6 s >= 5: yielded, no extra get_work in this run
    assert d.stats["last_outcome"] == "yielded"
    assert d.stats["items"] == 2
    assert d.stats["runs"] == 1


def test_yielded_resets_idle_streak() -> None:
    """A yielded run did work, so the idle streak starts again: 40, then 40 again."""
    d = FakeDaemon(run_every=30, increase_idle_by=10, max_items=1)
    _, clock = start_app(d)
    clock.advance(0)
    assert d.stats["current_delay"] == 40
    advance_to(clock, 40)
    assert d.stats["current_delay"] == 50
    d.jobs.append("a")
    advance_to(clock, 90)  # runs a -> yielded; due at once; then idle
    assert [job for _, job in d.done] == ["a"]
    assert d.stats["last_outcome"] == "idle"
    assert d.stats["current_delay"] == 40


def test_failed_continues_idle_streak() -> None:
    """A failed run continues the idle streak exactly as an idle run: 40, 50, 60."""
    d = GetWorkFails(run_every=30, increase_idle_by=10)
    _, clock = start_app(d)
    clock.advance(0)  # idle -> 40
    d.jobs.append(RuntimeError("boom"))
    advance_to(clock, 40)  # get_work raises -> failed -> 50
    assert d.stats["last_outcome"] == "failed"
    assert d.stats["current_delay"] == 50
    advance_to(clock, 90)  # idle -> 60
    assert d.stats["current_delay"] == 60
    assert d.stats["failures"] == 1


def test_worked_resets_to_run_every() -> None:
    """A worked run's next delay is run_every, and the idle streak resets."""
    d = FakeDaemon(run_every=30, increase_idle_by=10)
    _, clock = start_app(d)
    clock.advance(0)
    advance_to(clock, 40)
    d.jobs.append("x")
    advance_to(clock, 90)
    assert d.stats["last_outcome"] == "worked"
    assert d.stats["current_delay"] == 30
    advance_to(clock, 120)
    assert d.stats["current_delay"] == 40


def test_stats_keys_and_values() -> None:
    """stats holds runs, items, failures, last_outcome, last_run_at, next_run_at, current_delay,
    last_duration, run_seconds and the supervision keys (DESIGN §10)."""
    d = PendingDaemon(["a", "b"], run_every=30)
    _, clock = start_app(d)
    clock.advance(0)
    assert d.get_work_calls[0] == 0
    clock.advance(10)
    d.pending[0].callback(None)
    clock.advance(2)
    d.pending[1].callback(None)
    assert d.stats == {
        "runs": 1,
        "items": 2,
        "failures": 0,
        "last_outcome": "worked",
        "last_run_at": 0,
        "next_run_at": 42,
        "current_delay": 30,
        "last_duration": 12,
        "run_seconds": 12,
        "consecutive_failures": 0,
        "in_alert": False,
        "last_success_at": 12,
        "outcomes": {"worked": 1, "yielded": 0, "idle": 0, "failed": 0, "locked-out": 0,
                     "timed-out": 0},
    }


def test_jitter_range() -> None:
    """Jitter multiplies the capped delay by a factor in [1 - j, 1 + j], never a yield."""
    d = FakeDaemon(["x"] * 200, run_every=100, jitter=0.1, max_items=1)
    _, clock = start_app(d)
    clock.advance(0)
    d.jobs.clear()
    delays = []
    for _ in range(50):
        advance_to(clock, d.stats["next_run_at"])
        delays.append(d.stats["current_delay"])
    assert all(90 <= x <= 110 for x in delays)
    assert len(set(delays)) > 1


def test_jitter_never_on_start_delay_or_yield() -> None:
    """start_delay is exact and a yielded run is due at once, even with jitter."""
    d = FakeDaemon(["a", "b"], run_every=100, jitter=0.5, start_delay=10, max_items=1)
    _, clock = start_app(d)
    assert d.stats["next_run_at"] == 10
    advance_to(clock, 10)
    assert [t for t, _ in d.done] == [10, 10]


def test_unknown_keyword_is_type_error_naming_it() -> None:
    """Daemon(**kw) rejects an unknown key with a TypeError that names it."""
    with pytest.raises(TypeError, match="frobnicate"):
        FakeDaemon(run_every=1, frobnicate=3)


def test_subclass_parameters_and_name_accepted() -> None:
    """name, table attributes and the subclass's own __init__ parameters are accepted."""
    d = FakeDaemon(["j"], name="n", run_every=1, increase_idle_by=2, multiply_idle_by=1.5,
                 maximum_idle=9, priority=3, max_items=4, max_seconds=5, jitter=0.1,
                 in_thread=False, lock=None, start_delay=6)
    assert d.name == "n"
    assert (d.priority, d.max_items, d.max_seconds, d.start_delay) == (3, 4, 5, 6)
    assert FakeDaemon(run_every=1).name == "FakeDaemon"


def test_failure_log_fields(events: list[dict[str, Any]]) -> None:
    """A failure is logged with fields daemon, phase, job (repr) and the failure."""

    class Breaks(FakeDaemon):
        def do_work(self, job: Any) -> Any:
            raise ValueError("bad job")

    d = Breaks([("k", 1)], name="breaker", run_every=30)
    app, clock = start_app(d)
    clock.advance(0)
    failures = [e for e in events if "log_failure" in e and e.get("daemon") == "breaker"]
    assert len(failures) == 1
    event = failures[0]
    assert event["phase"] == "do_work"
    assert event["job"] == "('k', 1)"
    assert event["log_failure"].check(ValueError)
    assert d.stats["failures"] == 1
    assert app.running


def test_failure_in_get_work_phase(events: list[dict[str, Any]]) -> None:
    """get_work raising is logged with phase "get_work"."""
    d = GetWorkFails([KeyError("x")], name="gw", run_every=30)
    _, clock = start_app(d)
    clock.advance(0)
    failures = [e for e in events if "log_failure" in e and e.get("daemon") == "gw"]
    assert [e["phase"] for e in failures] == ["get_work"]


def test_failed_deferred_counts_as_failed(events: list[dict[str, Any]]) -> None:
    """A hook whose Deferred fails makes a failed run."""
    d = PendingDaemon(["a"], name="slow", run_every=30)
    _, clock = start_app(d)
    clock.advance(0)
    d.pending[0].errback(RuntimeError("later"))
    assert d.stats["last_outcome"] == "failed"
    assert d.stats["current_delay"] == 30  # idle delay: run_every + 0


def test_async_def_hooks() -> None:
    """async def hooks work (via Deferred.fromCoroutine)."""

    class Coro(Daemon):
        run_every = 30

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.left = ["a", "b"]
            self.done: list[str] = []

        async def get_work(self) -> Any:
            return self.left.pop(0) if self.left else None

        async def do_work(self, job: Any) -> Any:
            self.done.append(job)

    d = Coro()
    _, clock = start_app(d)
    clock.advance(0)
    assert d.done == ["a", "b"]
    assert d.stats["last_outcome"] == "worked"


def test_daemon_never_overlaps_and_others_go_on() -> None:
    """A run in progress does not block other daemons, and a daemon never overlaps itself."""
    slow = PendingDaemon(["a"], name="slow", run_every=1)
    fast = FakeDaemon(["x"], name="fast", run_every=1, increase_idle_by=0)
    _, clock = start_app(slow, fast)
    clock.advance(0)
    advance_to(clock, 10)
    assert len(slow.get_work_calls) == 1
    assert len(fast.get_work_calls) > 5


def test_in_thread_uses_injected_pool() -> None:
    """in_thread hooks run through DaemonApp(threadpool=...)."""
    pool = ImmediateThreadPool()
    d = FakeDaemon(["a"], run_every=30, in_thread=True)
    _, clock = start_app(d, threadpool=pool)
    clock.advance(0)
    assert pool.calls >= 1
    assert [job for _, job in d.done] == ["a"]


def test_stop_waits_for_run_in_progress() -> None:
    """daemon.stop() returns a Deferred that fires once the run in progress has ended."""
    d = PendingDaemon(["a", "b"], run_every=30)
    _, clock = start_app(d)
    clock.advance(0)
    stopped = d.stop()
    assert not fired(stopped)
    d.pending[0].callback(None)
    assert fired(stopped)
    assert [job for _, job in d.done] == ["a"]


def test_scheduled_from_start_until_stop_is_called() -> None:
    """daemon.scheduled is True from start() and False once stop() is called, while its
    run in flight still finishes."""
    d = PendingDaemon(["a"], run_every=30)
    seen = [d.scheduled]
    _, clock = start_app(d)
    clock.advance(0)
    seen += [d.scheduled, d.running]
    stopped = d.stop()
    seen += [d.scheduled, d.running]
    d.pending[0].callback(None)
    assert fired(stopped)
    assert [*seen, d.scheduled, d.running] == [False, True, True, False, True, False, False]


def test_attribute_defaults() -> None:
    """The attribute defaults of DESIGN §1's table."""

    class Minimal(Daemon):
        run_every = 10

    d = Minimal()
    assert (d.increase_idle_by, d.multiply_idle_by, d.priority, d.max_items, d.max_seconds,
            d.jitter, d.in_thread, d.lock, d.start_delay) == (0, 1.0, 0, None, None, 0, False,
                                                              None, 0)
    assert d.maximum_idle == 10
    assert d.stats["runs"] == 0


@pytest.mark.parametrize("value", [None, 0, -5])
def test_run_every_required_positive(value: Any) -> None:
    """run_every is required and above zero."""

    class NoRunEvery(Daemon):
        pass

    with pytest.raises((TypeError, ValueError)):
        if value is None:
            NoRunEvery()
        else:
            NoRunEvery(run_every=value)


@pytest.mark.integration
def test_in_thread_runs_in_pool_thread(tmp_path: Path) -> None:
    """On a real reactor in_thread hooks run outside the reactor thread."""
    result = run_script(tmp_path, (
        "import sys, threading\n"
        "from daemonapp import Daemon, DaemonApp\n"
        "seen = []\n"
        "class D(Daemon):\n"
        "    run_every = 0.05\n"
        "    in_thread = True\n"
        "    def get_work(self):\n"
        "        seen.append(threading.current_thread() is threading.main_thread())\n"
        "app = DaemonApp(shutdown_after=0.3)\n"
        "app.add(D())\n"
        "status = app.run()\n"
        "print(seen[0] if seen else 'none', status)\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0"]

