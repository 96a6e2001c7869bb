"""The health decision of GET /healthz and its loop-lag probe (DESIGN §10), on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.health import HealthCheck, LoopLag, expected_interval
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app


class LoopLagTests(SynchronousTestCase):
    def test_one_timer_every_half_second(self) -> None:
        """The probe keeps exactly one timer armed, due every 0.5 s, and none once stopped."""
        clock = Clock()
        probe = LoopLag(clock)
        probe.start()
        probe.start()
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [0.5])
        clock.advance(0.5)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [1.0])
        probe.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(probe.running)

    def test_lag_is_the_lateness_of_the_last_tick(self) -> None:
        """A tick 2.5 s late gives a lag of 2.5 s; the next tick on time gives 0 again."""
        clock = Clock()
        probe = LoopLag(clock)
        probe.start()
        clock.advance(0.5)
        self.assertEqual(probe.lag(), 0.0)
        clock.advance(3.0)  # the loop was stuck for 3 s: the tick due at 1.0 runs at 3.5
        self.assertEqual(probe.lag(), 2.5)
        clock.advance(0.5)
        self.assertEqual(probe.lag(), 0.0)

    def test_an_overdue_tick_counts_before_it_runs(self) -> None:
        """While its tick is overdue (the loop is stuck), the lag is how overdue it is."""
        clock = Clock()
        now = [0.0]
        probe = LoopLag(clock, monotonic=lambda: now[0])
        probe.start()
        now[0] = 1.75  # monotonic time passed, the reactor ran no timer
        self.assertEqual(probe.lag(), 1.25)


def _started(*daemons: Any) -> tuple[Any, Clock]:
    app, clock = make_app()
    for daemon in daemons:
        app.add(daemon)
    app.startService()
    clock.advance(0)
    return app, clock


class HealthCheckTests(SynchronousTestCase):
    def test_healthy_while_running(self) -> None:
        """A running app with nothing in alert is healthy, with an "ok" body."""
        app, clock = _started(FakeDaemon(name="mail"))
        clock.advance(12)
        healthy, body = HealthCheck(app).report()
        self.assertTrue(healthy)
        self.assertEqual({key: body[key] for key in ("status", "reasons", "uptime", "daemons",
                                                     "in_alert", "loop_lag")},
                         {"status": "ok", "reasons": [], "uptime": 12.0, "daemons": 1,
                          "in_alert": 0, "loop_lag": None})

    def test_not_started(self) -> None:
        """An app that has not started is not healthy."""
        app, _ = make_app()
        self.assertEqual(HealthCheck(app).report()[1]["reasons"], ["not started"])

    def test_daemon_in_alert(self) -> None:
        """A daemon in alert makes the app unhealthy, named with its failure streak."""
        mail = FakeDaemon(name="mail")
        app, _ = _started(mail, FakeDaemon(name="other"))
        mail.stats["in_alert"] = True
        mail.stats["consecutive_failures"] = 5
        healthy, body = HealthCheck(app).report()
        self.assertFalse(healthy)
        self.assertEqual((body["status"], body["reasons"], body["in_alert"]),
                         ("unavailable", ["daemon mail in alert: 5 failed run(s) in a row"], 1))
        mail.stats["in_alert"] = False  # recovered
        self.assertTrue(HealthCheck(app).report()[0])

    def test_many_daemons_in_alert_are_counted_past_twenty(self) -> None:
        """Past 20 daemons in alert, the rest are counted, not named: the body stays small."""
        daemons = [FakeDaemon(name=f"d{i:02}") for i in range(25)]
        app, _ = _started(*daemons)
        for daemon in daemons:
            daemon.stats["in_alert"] = True
        reasons = HealthCheck(app).report()[1]["reasons"]
        self.assertEqual(len(reasons), 21)
        self.assertEqual(reasons[-1], "5 more daemon(s) in alert")

    def test_loop_lag_of_a_second_or_more(self) -> None:
        """A loop lag of 1 s or more makes the app unhealthy; under 1 s it does not."""
        app, clock = _started()
        check = HealthCheck(app)
        check.probe.start()
        clock.advance(1.4)  # the tick due at 0.5 runs at 1.4: 0.9 s late
        self.assertEqual(check.report()[1]["reasons"], [])
        clock.advance(1.6)  # due at 1.9, runs at 3.0: 1.1 s late
        healthy, body = check.report()
        self.assertFalse(healthy)
        self.assertEqual(body["reasons"], ["loop lag 1.100 s (limit 1 s)"])
        check.probe.stop()

    def test_stopping(self) -> None:
        """Once a graceful stop has begun the app is unhealthy, whatever is left to do."""
        daemon = PendingDaemon(["job"], name="slow")
        app, _ = _started(daemon)
        app.stop("signal SIGTERM")
        self.assertEqual(app.health_report()[1]["reasons"], ["stopping: signal SIGTERM"])
        daemon.pending[0].callback(None)
        self.assertEqual(app.health_report()[1]["reasons"], ["stopping: signal SIGTERM"])


class ExpectedIntervalTests(SynchronousTestCase):
    def test_backoff_daemon(self) -> None:
        """A backoff daemon's expected interval is maximum_idle, stretched by its jitter."""
        app, _ = make_app()
        self.assertEqual(expected_interval(FakeDaemon(run_every=30, increase_idle_by=10), app),
                         60.0)
        self.assertEqual(expected_interval(FakeDaemon(run_every=30, maximum_idle=100,
                                                      jitter=0.5), app), 150.0)

    def test_clock_schedule_without_state(self) -> None:
        """Without a state_dir, a clock schedule's interval is the delay chosen after its
        last run (none before its first run)."""
        daemon = FakeDaemon(name="hourly", schedule="0 * * * *", timezone="UTC")
        app, clock = make_app()
        clock.advance(1_800_000_000)  # 2027-01-15T08:00:00Z, on a fire time
        app.add(daemon)
        app.startService()
        clock.advance(0)
        self.assertIsNone(expected_interval(daemon, app))
        clock.advance(3600)  # the 09:00 run
        self.assertEqual(expected_interval(daemon, app), 3600.0)

    def test_clock_schedule_with_state(self) -> None:
        """With a state_dir, it is the gap from the last fire served to the next run."""
        daemon = FakeDaemon(name="hourly", schedule="0 * * * *", timezone="UTC")
        app, clock = make_app(state_dir=self.mktemp())
        clock.advance(1_800_000_000)
        app.add(daemon)
        app.startService()
        clock.advance(3600)  # the 09:00 run
        self.assertEqual(expected_interval(daemon, app), 3600.0)
