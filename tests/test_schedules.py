"""Schedules: the backoff policy alone, and a new policy through the real scheduler."""

from __future__ import annotations

from typing import Any

from croniter import croniter
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import daemonapp.crontimes
import daemonapp.schedules
from daemonapp.interfaces import ISchedule
from daemonapp.schedules import (
    FAILED,
    IDLE,
    LOCKED_OUT,
    WORKED,
    YIELDED,
    BackoffSchedule,
    yield_delay_of,
)
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app


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


@implementer(ISchedule)
class Asked:
    """A test-only policy that records each question: 0 after a yield, else 10 s."""

    def __init__(self, yield_delay: float | None) -> None:
        self.asked: list[str] = []
        if yield_delay is not None:
            self.yield_delay = yield_delay

    def first_delay(self, now: float) -> float:
        return 0.0

    def next_delay(self, outcome: str, now: float) -> float | None:
        self.asked.append(outcome)
        return 0.0 if outcome == YIELDED else 10.0


class AskedDaemon(FakeDaemon):
    def __init__(self, schedule: Asked, jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.policy = schedule

    def make_schedule(self) -> ISchedule:
        return self.policy


class YieldDelayTests(SynchronousTestCase):
    def runs(self, yield_delay: float | None) -> tuple[AskedDaemon, list[str]]:
        """Three yields, a worked run, two yields and an idle run; what the policy heard."""
        app, clock = make_app()
        daemon = AskedDaemon(Asked(yield_delay), ["a", "b", "c", "d"], name="asked",
                             run_every=10, max_items=1)
        app.add(daemon)
        app.startService()
        clock.advance(0)  # a, b, c, d: one yield each; then an idle run (nothing left)
        daemon.max_items = 2
        daemon.add_jobs("e", "f", "g")
        clock.advance(10)  # e f (yield), g (worked)
        self.successResultOf(app.stop("test"))
        return daemon, daemon.policy.asked

    def test_asked_every_time_without_it(self) -> None:
        """A policy without yield_delay hears of every run's outcome."""
        _, asked = self.runs(None)
        self.assertEqual(asked, [YIELDED] * 4 + [IDLE, YIELDED, WORKED])

    def test_yield_after_yield_not_asked(self) -> None:
        """With yield_delay, a yield that follows a yield is not asked about: its delay
        is yield_delay; the first yield of a streak and every other outcome are."""
        daemon, asked = self.runs(0.0)
        self.assertEqual(asked, [YIELDED, IDLE, YIELDED, WORKED])
        self.assertEqual([job for _, job in daemon.done], list("abcdefg"))
        self.assertEqual(daemon.stats["outcomes"][YIELDED], 5)


class Quicker(BackoffSchedule):
    """A subclass with its own next_delay and no yield_delay of its own."""

    def next_delay(self, outcome: str, now: float) -> float:
        return 1.0 if outcome == YIELDED else super().next_delay(outcome, now)


class Declared(Quicker):
    yield_delay = 1.0


class YieldDelayOfTests(SynchronousTestCase):
    def test_where_declared(self) -> None:
        """yield_delay counts where it speaks for the next_delay in use: on the class
        that defines next_delay, or on the policy itself; an inherited one does not."""
        daemon = FakeDaemon(run_every=30)
        self.assertEqual(yield_delay_of(BackoffSchedule(daemon)), 0.0)
        self.assertIsNone(yield_delay_of(Quicker(daemon)))
        self.assertEqual(yield_delay_of(Declared(daemon)), 1.0)
        self.assertEqual(yield_delay_of(Asked(0.0)), 0.0)
        self.assertIsNone(yield_delay_of(Asked(None)))
        self.assertIsNone(yield_delay_of(FixedTimes([1.0])))


def epoch(text: str) -> float:
    """Epoch seconds of an ISO 8601 time with its offset."""
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def clock_at(text: str) -> Any:
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(epoch(text))
    return clock


def advance_to(clock: Any, text: str, step: float = 30.0) -> None:
    """Advance in steps (a Clock runs everything due within one advance() at once)."""
    target = epoch(text)
    while clock.seconds() < target:
        clock.advance(min(step, target - clock.seconds()))


class Ticker(FakeDaemon):
    """One item per run (the next job), then nothing: a run per fire time shows as one item."""

    def __init__(self, jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self._given_in_run = -1

    def get_work(self) -> Any:
        if self._given_in_run == self.stats["runs"]:
            return None
        self._given_in_run = self.stats["runs"]
        return super().get_work()


class ClockScheduleTests(SynchronousTestCase):
    """DESIGN §8 through the real scheduler, on a task.Clock read as epoch seconds."""

    def make(self, start: str, **kw: Any) -> tuple[Any, Any]:
        clock = clock_at(start)
        app, _ = make_app(clock, **kw)
        return app, clock

    def test_runs_at_each_fire_time(self) -> None:
        """A */15 schedule runs at :15, :30, :45, and its timer sleeps at most 60 s."""
        app, clock = self.make("2026-01-01T00:07:00+00:00")
        daemon = Ticker(["a", "b", "c", "d"], name="q", schedule="*/15 * * * *",
                            timezone="UTC")
        app.add(daemon)
        app.startService()
        self.assertLessEqual(max(c.getTime() for c in clock.getDelayedCalls())
                             - clock.seconds(), 60.0)
        advance_to(clock, "2026-01-01T00:50:00+00:00")
        self.assertEqual([t for t, _ in daemon.done],
                         [epoch("2026-01-01T00:15:00+00:00"), epoch("2026-01-01T00:30:00+00:00"),
                          epoch("2026-01-01T00:45:00+00:00")])
        self.assertEqual(daemon.stats["schedule"], "*/15 * * * *")
        self.assertEqual(daemon.stats["next_fire"], "2026-01-01T01:00:00+00:00")
        self.assertEqual(daemon.stats["misfires"], {})
        self.successResultOf(app.stop("test"))

    def test_berlin_spring_forward_fixed_time(self) -> None:
        """02:30 Berlin runs at 02:30 CET, at 03:00 CEST on the skipped day, then 02:30 CEST."""
        app, clock = self.make("2026-03-28T00:00:00+00:00")
        daemon = Ticker(["a", "b", "c", "d"], name="nightly", schedule="30 2 * * *",
                            timezone="Europe/Berlin")
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-03-31T00:00:00+00:00", step=60.0)
        self.assertEqual([t for t, _ in daemon.done],
                         [epoch("2026-03-28T02:30:00+01:00"), epoch("2026-03-29T03:00:00+02:00"),
                          epoch("2026-03-30T02:30:00+02:00")])
        self.successResultOf(app.stop("test"))

    def test_app_timezone_is_the_default(self) -> None:
        """A daemon without its own zone reads its schedule in app.timezone."""
        app, _ = self.make("2026-01-01T00:00:00+00:00", timezone="America/New_York")
        daemon = FakeDaemon(["a"], name="d", schedule="0 9 * * *")
        app.add(daemon)
        app.startService()
        self.assertEqual(daemon.stats["next_fire"], "2026-01-01T09:00:00-05:00")
        self.successResultOf(app.stop("test"))

    def test_yield_continues_at_once(self) -> None:
        """A yielded run continues at once (round robin), not at the next fire time."""
        app, clock = self.make("2026-01-01T00:07:00+00:00")
        daemon = FakeDaemon(["a", "b", "c"], name="q", schedule="*/15 * * * *",
                            timezone="UTC", max_items=1)
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-01-01T00:16:00+00:00")
        fire = epoch("2026-01-01T00:15:00+00:00")
        self.assertEqual(daemon.done, [(fire, "a"), (fire, "b"), (fire, "c")])
        self.assertEqual(daemon.stats["last_outcome"], "idle")
        self.assertEqual(daemon.stats["next_fire"], "2026-01-01T00:30:00+00:00")
        self.successResultOf(app.stop("test"))

    def test_overrun_makes_up_one_run(self) -> None:
        """Fire times passing during a run are misfires (overrun); one run follows at once."""
        app, clock = self.make("2026-01-01T00:07:00+00:00")
        daemon = PendingDaemon(["a"], name="q", schedule="*/15 * * * *", timezone="UTC")
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-01-01T00:55:00+00:00")
        self.assertEqual(daemon.done, [(epoch("2026-01-01T00:15:00+00:00"), "a")])
        self.assertEqual(daemon.stats["runs"], 0)  # the 00:15 run is still going
        daemon.pending.pop().callback(None)
        # 00:30 and 00:45 passed during it: two misfires, made up by one run at once.
        self.assertEqual(daemon.stats["misfires"], {"overrun": 2})
        self.assertEqual(daemon.stats["runs"], 2)
        self.assertEqual(daemon.stats["last_run_at"], epoch("2026-01-01T00:55:00+00:00"))
        self.assertEqual(daemon.stats["next_fire"], "2026-01-01T01:00:00+00:00")
        self.successResultOf(app.stop("test"))

    def test_failure_waits_for_the_next_fire_time(self) -> None:
        """A failed run waits for the next fire time, not a backoff."""
        app, clock = self.make("2026-01-01T00:07:00+00:00")
        daemon = FakeDaemon([ValueError("boom"), "b"], name="q", schedule="*/15 * * * *",
                            timezone="UTC")
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-01-01T00:31:00+00:00")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual([t for t, _ in daemon.done], [epoch("2026-01-01T00:30:00+00:00")])
        self.successResultOf(app.stop("test"))

    def test_backward_jump_never_runs_a_time_twice(self) -> None:
        """After the clock goes back an hour, the 00:15 run is not run again."""
        app, clock = self.make("2026-01-01T00:07:00+00:00")
        daemon = Ticker(["a", "b"], name="q", schedule="*/15 * * * *", timezone="UTC")
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-01-01T00:16:00+00:00")
        clock.rightNow -= 3600.0
        advance_to(clock, "2026-01-01T00:31:00+00:00")
        self.assertEqual([t for t, _ in daemon.done],
                         [epoch("2026-01-01T00:15:00+00:00"), epoch("2026-01-01T00:30:00+00:00")])
        self.successResultOf(app.stop("test"))

    def test_jitter_is_never_early(self) -> None:
        """With jitter, each run starts at its fire time or later, within jitter x the gap."""
        app, clock = self.make("2026-01-01T00:00:30+00:00")
        daemon = Ticker(["x"] * 30, name="q", schedule="*/10 * * * *", timezone="UTC",
                            jitter=0.5)
        app.add(daemon)
        app.startService()
        advance_to(clock, "2026-01-01T05:00:00+00:00", step=5.0)
        base = epoch("2026-01-01T00:00:00+00:00")
        offsets = [(t - base) % 600 for t, _ in daemon.done]
        self.assertEqual(len(daemon.done), 29)  # 00:10 ... 04:50
        self.assertTrue(all(0 <= o < 300 + 5 for o in offsets), offsets)
        self.successResultOf(app.stop("test"))

    def fifty_until(self, start: str, until: str) -> tuple[Any, list[Ticker]]:
        """50 daemons on one */15 schedule in UTC, run from ``start`` to ``until``."""
        app, clock = self.make(start)
        daemons = [Ticker(["x"] * 5, name=f"q{i}", schedule="*/15 * * * *", timezone="UTC")
                   for i in range(50)]
        for daemon in daemons:
            app.add(daemon)
        app.startService()
        advance_to(clock, until)
        return app, daemons

    def test_daemons_on_one_schedule_share_its_fire_times(self) -> None:
        """50 daemons on one expression and zone walk croniter once per fire time, not 50 times."""
        class Counting(croniter):
            made = 0

            def __init__(self, *args: Any, **kw: Any) -> None:
                Counting.made += 1
                super().__init__(*args, **kw)

        self.patch(daemonapp.crontimes, "croniter", Counting)
        app, daemons = self.fifty_until("2031-03-04T00:07:00+00:00", "2031-03-04T00:50:00+00:00")
        self.assertEqual({tuple(t for t, _ in d.done) for d in daemons},
                         {(epoch("2031-03-04T00:15:00+00:00"), epoch("2031-03-04T00:30:00+00:00"),
                           epoch("2031-03-04T00:45:00+00:00"))})
        # The first fire time, then the one after each of the three: 4 walks (200 unshared).
        self.assertLessEqual(Counting.made, 4)
        self.successResultOf(app.stop("test"))

    def test_daemons_on_one_schedule_format_its_next_fire_once(self) -> None:
        """50 daemons on one schedule format each next fire time once for stats, not 50 times."""
        from datetime import datetime

        made = []

        class Counting(datetime):
            @classmethod
            def fromtimestamp(cls, t: float, tz: Any = None) -> Any:
                made.append(t)
                return datetime.fromtimestamp(t, tz)

        self.patch(daemonapp.schedules, "datetime", Counting)
        app, daemons = self.fifty_until("2032-05-06T00:07:00+00:00", "2032-05-06T00:50:00+00:00")
        self.assertEqual({d.stats["next_fire"] for d in daemons}, {"2032-05-06T01:00:00+00:00"})
        self.assertEqual(sum(d.stats["runs"] for d in daemons), 150)
        # 00:15, 00:30, 00:45, 01:00: each formatted once (200 without the cache).
        self.assertEqual(len(made), 4)
        self.successResultOf(app.stop("test"))

    def test_idle_exit_counts_the_next_fire_time(self) -> None:
        """An app whose next fire is further than shutdown_if_idle exits; a closer one does not."""
        far, clock = self.make("2026-01-01T00:00:00+00:00", shutdown_if_idle=300.0)
        far.add(FakeDaemon(name="hourly", schedule="0 * * * *", timezone="UTC"))
        far.startService()
        self.assertEqual(self.successResultOf(far.when_ended()), 0)
        near, clock = self.make("2026-01-01T00:00:00+00:00", shutdown_if_idle=300.0)
        near.add(FakeDaemon(name="often", schedule="*/2 * * * *", timezone="UTC"))
        near.startService()
        advance_to(clock, "2026-01-01T00:30:00+00:00")
        self.assertNoResult(near.when_ended())
        self.successResultOf(near.stop("test"))


class ClockCatchUpTests(SynchronousTestCase):
    """Fire times missed while the app was down, made up as catch_up says."""

    def setUp(self) -> None:
        import shutil
        import tempfile

        self.state_dir = tempfile.mkdtemp(prefix="daemonapp-clock-")
        self.addCleanup(shutil.rmtree, self.state_dir, True)

    def life(self, start: str, until: str, catch_up: str, grace: float = 3600.0) -> Any:
        """One life of an app on state_dir: start, run until, stop; its daemon."""
        clock = clock_at(start)
        app, _ = make_app(clock, state_dir=self.state_dir)
        daemon = Ticker(["x"] * 10, name="q", schedule="*/15 * * * *", timezone="UTC",
                            catch_up=catch_up, misfire_grace=grace)
        app.add(daemon)
        app.startService()
        clock.advance(0)
        advance_to(clock, until)
        self.successResultOf(app.stop("test"))
        return daemon

    def test_once_runs_one_make_up_run(self) -> None:
        """catch_up once: one run at the restart for the fire times missed while down."""
        self.life("2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "once")
        second = self.life("2026-01-01T00:47:00+00:00", "2026-01-01T00:48:00+00:00", "once")
        self.assertEqual([t for t, _ in second.done], [epoch("2026-01-01T00:47:00+00:00")])
        self.assertEqual(second.stats["misfires"], {"downtime": 2})
        self.assertEqual(second.stats["next_fire"], "2026-01-01T01:00:00+00:00")

    def test_all_runs_one_per_missed_time(self) -> None:
        """catch_up all: one run per missed fire time, at once."""
        self.life("2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "all")
        second = self.life("2026-01-01T00:47:00+00:00", "2026-01-01T00:48:00+00:00", "all")
        self.assertEqual([t for t, _ in second.done], [epoch("2026-01-01T00:47:00+00:00")] * 2)
        self.assertEqual(second.stats["misfires"], {"downtime": 2})

    def test_none_skips_them(self) -> None:
        """catch_up none: no make-up run; the missed times still count as misfires."""
        self.life("2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "none")
        second = self.life("2026-01-01T00:47:00+00:00", "2026-01-01T00:48:00+00:00", "none")
        self.assertEqual(second.done, [])
        self.assertEqual(second.stats["misfires"], {"downtime": 2})

    def test_misses_older_than_the_grace_are_never_run(self) -> None:
        """Only misses within misfire_grace are made up; older ones are counted and logged."""
        self.life("2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "all",
                  grace=1200.0)
        second = self.life("2026-01-01T01:10:00+00:00", "2026-01-01T01:11:00+00:00", "all",
                           grace=1200.0)
        # Missed: 00:30, 00:45, 01:00; only 01:00 is within 20 minutes of 01:10.
        self.assertEqual(len(second.done), 1)
        self.assertEqual(second.stats["misfires"], {"downtime": 3})


class ClockOptionTests(SynchronousTestCase):
    def test_bad_expression_keyword_names_the_field(self) -> None:
        """A bad expression given as a keyword is a ValueError naming the field."""
        with self.assertRaisesRegex(ValueError, "hour field '25'"):
            FakeDaemon(name="d", schedule="0 25 * * *")

    def test_bad_zone_keyword(self) -> None:
        """An unknown zone given as a keyword is a ValueError naming it."""
        with self.assertRaisesRegex(ValueError, "Nowhere/Land"):
            FakeDaemon(name="d", schedule="@daily", timezone="Nowhere/Land")

    def test_schedule_excludes_run_every(self) -> None:
        """schedule with run_every (or the idle options) is an error naming both."""
        from daemonapp.daemon import OptionError

        for key, value in (("run_every", 30), ("increase_idle_by", 5), ("maximum_idle", 60),
                           ("multiply_idle_by", 2)):
            with self.assertRaises(OptionError) as caught:
                FakeDaemon(name="d", schedule="@daily", **{key: value})
            self.assertEqual(caught.exception.key, key)
            self.assertIn("schedule", caught.exception.message)

    def test_catch_up_choices(self) -> None:
        """catch_up takes none, once or all."""
        with self.assertRaisesRegex(ValueError, "none, once, all"):
            FakeDaemon(name="d", schedule="@daily", catch_up="twice")


class FakeClocks:
    """Monotonic and boot time for a ClockWatch on a task.Clock: the test moves them."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.boot = 1000.0


def watched_app(catch_up: str) -> tuple[Any, Any, FakeClocks, Ticker]:
    """A started app at 00:07 whose ClockWatch reads fake clocks, with a */15 daemon."""
    from daemonapp.clockwatch import ClockWatch

    clock = clock_at("2026-01-01T00:07:00+00:00")
    fake = FakeClocks()
    app, _ = make_app(clock)
    app.scheduler.watch = ClockWatch(clock.seconds, lambda: fake.mono, lambda: fake.boot)
    daemon = Ticker(["x"] * 10, name="q", schedule="*/15 * * * *", timezone="UTC",
                    catch_up=catch_up)
    app.add(daemon)
    app.startService()
    return app, clock, fake, daemon


class FakeClockJumpTests(SynchronousTestCase):
    """On a test's Clock there is no ClockWatch (time moves when the test says): a timer
    firing more than TOLERANCE after its time is a forward clock jump (DESIGN §8)."""

    def setUp(self) -> None:
        self.clock = clock_at("2026-01-01T00:07:00+00:00")
        self.app, _ = make_app(self.clock)
        self.daemon = Ticker(["x"] * 20, name="q", schedule="*/15 * * * *", timezone="UTC")
        self.app.add(self.daemon)
        self.app.startService()
        self.clock.advance(60)  # 00:08

    def tearDown(self) -> None:
        self.successResultOf(self.app.stop("test"))

    def test_a_jump_is_counted_and_made_up_once(self) -> None:
        """00:08 -> 01:08 at once: 00:15 ... 01:00 are four clock_jump misfires, one run."""
        self.clock.advance(3600)
        self.assertEqual(self.daemon.stats["misfires"], {"clock_jump": 4})
        self.assertEqual([t for t, _ in self.daemon.done], [epoch("2026-01-01T01:08:00+00:00")])
        self.assertEqual(self.daemon.stats["next_fire"], "2026-01-01T01:15:00+00:00")

    def test_misses_older_than_the_grace_are_never_run(self) -> None:
        """00:08 -> 03:08: twelve misses counted, the 1 h grace's four made up by one run."""
        self.clock.advance(3 * 3600)
        self.assertEqual(self.daemon.stats["misfires"], {"clock_jump": 12})
        self.assertEqual([t for t, _ in self.daemon.done], [epoch("2026-01-01T03:08:00+00:00")])

    def test_steps_of_the_timer_are_no_jump(self) -> None:
        """Advancing a minute at a time (the timer's cap) is time passing: runs on time."""
        for _ in range(60):
            self.clock.advance(60)
        self.assertEqual(self.daemon.stats["misfires"], {})
        self.assertEqual(len(self.daemon.done), 4)

    def test_steps_of_a_minute_off_the_fire_times_are_no_jump(self) -> None:
        """Steps of a minute that land 30 s past each fire time are time passing too:
        no misfire, and a catch_up none schedule runs each fire time."""
        clock = clock_at("2026-01-01T00:07:30+00:00")
        app, _ = make_app(clock)
        daemon = Ticker(["x"] * 20, name="q", schedule="*/15 * * * *", timezone="UTC",
                        catch_up="none")
        app.add(daemon)
        app.startService()
        for _ in range(60):
            clock.advance(60)
        self.assertEqual((daemon.stats["misfires"], len(daemon.done)), ({}, 4))
        self.successResultOf(app.stop("test"))


class ClockChangeTests(SynchronousTestCase):
    """Suspends and clock jumps, told apart by comparing the wall clock with monotonic
    and boot time (DESIGN §8), through the real scheduler."""

    def setUp(self) -> None:
        self.app, self.clock, self.fake, self.daemon = watched_app("once")

    def tearDown(self) -> None:
        self.successResultOf(self.app.stop("test"))

    def sleep_machine(self, seconds: float, *, suspended: bool) -> None:
        """Wall time jumps ahead; boot time too when it was a suspend, monotonic never."""
        self.clock.rightNow += seconds
        if suspended:
            self.fake.boot += seconds
        self.clock.advance(0)

    def test_a_suspend_is_counted_and_made_up_once(self) -> None:
        """Fire times slept through are misfires "suspend"; catch_up once runs one at once."""
        self.clock.advance(60)  # a wake-up: the watch takes its first look
        self.sleep_machine(3600, suspended=True)  # 00:08 -> 01:08: 00:15 ... 01:00 slept
        self.assertEqual(self.daemon.stats["misfires"], {"suspend": 4})
        self.assertEqual([t for t, _ in self.daemon.done], [epoch("2026-01-01T01:08:00+00:00")])
        self.assertEqual(self.daemon.stats["next_fire"], "2026-01-01T01:15:00+00:00")

    def test_after_a_suspend_catch_up_all_and_none(self) -> None:
        """catch_up all runs once per slept fire time; none runs none; both count them."""
        for catch_up, runs in (("all", 4), ("none", 0)):
            app, clock, fake, daemon = watched_app(catch_up)
            clock.advance(60)
            clock.rightNow += 3600
            fake.boot += 3600
            clock.advance(0)
            self.assertEqual(daemon.stats["misfires"], {"suspend": 4}, catch_up)
            self.assertEqual(len(daemon.done), runs, catch_up)
            self.successResultOf(app.stop("test"))

    def test_a_suspend_and_a_jump_at_once_make_up_one_run(self) -> None:
        """Misses of two reasons in one wake-up are counted by reason; once is one run."""
        self.clock.advance(60)
        self.clock.rightNow += 5400  # 00:08 -> 01:38 on the wall ...
        self.fake.boot += 3600  # ... of which one hour asleep, and half an hour jumped
        self.clock.advance(0)
        self.assertEqual(self.daemon.stats["misfires"], {"suspend": 4, "clock_jump": 2})
        self.assertEqual(len(self.daemon.done), 1)

    def test_a_forward_jump_is_a_clock_jump(self) -> None:
        """The wall clock moving ahead of boot time is a clock jump, not a suspend."""
        self.clock.advance(60)
        self.sleep_machine(1800, suspended=False)  # 00:08 -> 00:38: 00:15, 00:30 skipped
        self.assertEqual(self.daemon.stats["misfires"], {"clock_jump": 2})
        self.assertEqual(len(self.daemon.done), 1)

    def test_no_event_no_misfire(self) -> None:
        """When the clocks agree, nothing is counted and the runs are on time."""
        for _ in range(40):
            self.clock.advance(60)
            self.fake.mono += 60
            self.fake.boot += 60
        self.assertEqual(self.daemon.stats["misfires"], {})
        self.assertEqual([t for t, _ in self.daemon.done],
                         [epoch("2026-01-01T00:15:00+00:00"), epoch("2026-01-01T00:30:00+00:00"),
                          epoch("2026-01-01T00:45:00+00:00")])
