"""A daemon's stats as its runs leave them: counted at a run's end (daemonapp.runstats's
RunTally), put into the dict when it is read. Whenever and however often the dict is
read, it holds what a dict written at every run's end would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.testing import FakeDaemon, make_app

#: What a run does, for the scripted daemon below.
WORK, NOTHING, BOOM = "work", "nothing", "boom"


class Scripted(FakeDaemon):
    """Each run does what the next script entry says: one item, none, or a failure."""

    def __init__(self, script: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.script = list(script)
        self.given = False

    def get_work(self) -> Any:
        if self.given or not self.script:
            self.given = False
            return None
        self.given = True
        step = self.script.pop(0)
        if step != WORK:  # no second get_work in this run: the next run takes the next step
            self.given = False
        if step == NOTHING:
            return None
        return RuntimeError("boom") if step == BOOM else step


def expected(script: list[str], ends: list[float]) -> dict[str, Any]:
    """The stats a dict written at every run's end holds after ``script``'s runs."""
    outcomes = {"worked": 0, "idle": 0, "failed": 0}
    last_success = None
    for step, end in zip(script, ends, strict=True):
        outcome = {WORK: "worked", NOTHING: "idle", BOOM: "failed"}[step]
        outcomes[outcome] += 1
        if outcome == "worked":
            last_success = end
    streak, in_alert = 0, False
    for step in script:  # DESIGN §10: an idle run neither breaks the streak nor recovers
        if step == BOOM:
            streak += 1
            in_alert = in_alert or streak == ALERT_AFTER
        elif step == WORK:
            streak, in_alert = 0, False
    return {"runs": len(script), "items": script.count(WORK), "failures": script.count(BOOM),
            "last_success_at": last_success, "outcomes": outcomes,
            "consecutive_failures": streak, "in_alert": in_alert}


#: The daemons' alert_after in these tests.
ALERT_AFTER = 2


def events_of(script: list[str]) -> list[tuple[str, int]]:
    """The alerts and recoveries (event, count) that ``script``'s runs send."""
    events, streak, alerted = [], 0, False
    for step in script:
        if step == BOOM:
            streak += 1
            if streak == ALERT_AFTER:
                events.append(("alert", streak))
                alerted = True
        elif step == WORK:
            if alerted:
                events.append(("recovery", streak))
            streak, alerted = 0, False
    return events


class TallyTests(SynchronousTestCase):
    def run_script(self, script: list[str], read_after: set[int]) -> tuple[Scripted, list[Any]]:
        """Run ``script`` one run per 10 s (run_every 10, no backoff), reading the stats
        after the runs in ``read_after``; the ends of the runs."""
        self.events: list[tuple[str, int]] = []
        app, clock = make_app(alerts=[lambda e: self.events.append((e["event"], e["count"]))])
        daemon = Scripted(script, name="s", run_every=10, alert_after=ALERT_AFTER)
        app.add(daemon)
        app.startService()
        ends = []
        for i in range(len(script)):
            clock.advance(0 if i == 0 else 10)
            ends.append(clock.seconds())
            if i in read_after:
                self.assertEqual(daemon.stats["runs"], i + 1)
        self.addCleanup(app.stopService)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), script.count(BOOM))
        return daemon, ends

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from([WORK, NOTHING, BOOM]), min_size=1, max_size=12),
           st.sets(st.integers(0, 11)))
    def test_read_any_time(self, script: list[str], read_after: set[int]) -> None:
        """Counts, runs by outcome and the last success come out the same whenever the
        stats are read in between."""
        daemon, ends = self.run_script(script, read_after)
        stats = daemon.stats
        want = expected(script, ends)
        got = {key: stats[key] for key in want}
        got["outcomes"] = {key: stats["outcomes"][key] for key in want["outcomes"]}
        self.assertEqual(got, want)
        self.assertEqual(sum(stats["outcomes"].values()), len(script))
        self.assertEqual(self.events, events_of(script))
        self.assertEqual(stats["last_outcome"],
                         {WORK: "worked", NOTHING: "idle", BOOM: "failed"}[script[-1]])
        self.assertEqual(stats["last_run_at"], ends[-1])
        self.assertEqual(stats["next_run_at"], ends[-1] + 10)

    def test_own_keys_kept(self) -> None:
        """A key the daemon's code (or a test) sets keeps its value, plus the runs since:
        counts are added to the dict, never copied over it."""
        daemon, _ = self.run_script([WORK, WORK], set())
        daemon.stats["runs"] = 100
        daemon.stats["handled"] = 7
        clock = daemon.reactor
        daemon.script.append(WORK)
        clock.advance(10)
        self.assertEqual((daemon.stats["runs"], daemon.stats["handled"]), (101, 7))

    def test_reschedule_wins_over_the_run(self) -> None:
        """next_run_at: a reschedule after the run beats the run's own next due time."""
        daemon, ends = self.run_script([WORK], set())
        app = daemon.app
        assert app is not None
        app.reschedule(daemon, 3)
        self.assertEqual(daemon.stats["next_run_at"], ends[-1] + 3)

    def test_busy_daemon_counts(self) -> None:
        """A daemon that yields after every item (the scheduler queues it again itself,
        without run_ended) counts every run and item, and ends idle."""
        app, clock = make_app()
        daemon = FakeDaemon(list(range(50)), name="busy", run_every=10, max_items=1)
        app.add(daemon)
        app.startService()
        self.addCleanup(app.stopService)
        clock.advance(0)
        stats = daemon.stats
        self.assertEqual((stats["runs"], stats["items"], stats["outcomes"]["yielded"],
                          stats["outcomes"]["idle"], stats["last_outcome"],
                          stats["current_delay"]), (51, 50, 50, 1, "idle", 10.0))
        self.assertEqual(len(daemon.done), 50)


class AlertTimeTests(SynchronousTestCase):
    def run_runs(self, app: Any, clock: Any, daemon: FakeDaemon, steps: int) -> None:
        """Start ``daemon`` in ``app`` and advance ``clock`` 10 s ``steps`` times (its
        scripted RuntimeError logged and flushed)."""
        app.add(daemon)
        app.startService()
        self.addCleanup(app.stopService)
        for _ in range(steps):
            clock.advance(10)
        self.flushLoggedErrors(RuntimeError)

    def test_alert_target_sees_the_run(self) -> None:
        """An alert target reading the stats sees the run that raised the alert (or the
        recovery) counted: runs, last outcome, runs by outcome, last success."""
        seen: list[tuple[Any, ...]] = []
        daemon = FakeDaemon([1, RuntimeError("x"), None, 2], name="d", run_every=10,
                            alert_after=1)

        def target(event: dict[str, Any]) -> None:
            stats = daemon.stats
            seen.append((event["event"], stats["runs"], stats["last_outcome"],
                         stats["outcomes"]["failed"], stats["outcomes"]["worked"],
                         stats["last_success_at"], stats["last_run_at"]))

        app, clock = make_app(alerts=[target], history=0)
        self.run_runs(app, clock, daemon, 4)
        self.assertEqual(seen, [("alert", 1, "failed", 1, 0, None, 10.0),
                                ("recovery", 3, "worked", 1, 1, 30.0, 30.0)])

    def test_slow_alert_is_not_the_next_runs_time(self) -> None:
        """A yield whose end sends a recovery that takes 5 s: the next run starts after
        it (its start in the history is 5 s on), not at the yield's end."""
        app, clock = make_app(alerts=[lambda e: clock.advance(5) if e["event"] == "recovery"
                                      else None])
        daemon = FakeDaemon([RuntimeError("x"), 1, 2], name="d", run_every=10,
                            alert_after=1, max_items=1)
        self.run_runs(app, clock, daemon, 3)
        self.assertEqual(daemon.done, [(20.0, 1), (25.0, 2)])
        runs = [run[:3] for run in app.run_history.runs("d")][::-1]  # oldest first
        self.assertEqual(runs[:3], [(10.0, 10.0, "failed"), (20.0, 20.0, "yielded"),
                                    (25.0, 25.0, "yielded")])
        self.assertEqual(daemon.stats["run_seconds"], 0.0)
