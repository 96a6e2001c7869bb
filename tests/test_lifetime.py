"""The lifetime alone: deadlines and the graceful stop, with a scheduler and no app."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.lifetime import Lifetime
from daemonapp.scheduler import Scheduler


def make_lifetime(clock: Clock, shut_down: Any, **kw: Any) -> tuple[Lifetime, list[str]]:
    """A Lifetime on ``clock`` whose parts are recorded in the returned list."""
    trace: list[str] = []
    options: dict[str, Any] = {"stay_alive_for": None, "shutdown_after": None,
                               "shutdown_if_idle": None, "stop_timeout": 30.0}
    options.update(kw)
    lifetime = Lifetime(clock, Scheduler(clock, 0.01), stop_reactor=False,
                        handle_signals=False, shut_down=shut_down,
                        force_down=lambda: trace.append("force_down"),
                        is_running=lambda: True, **options)
    return lifetime, trace


class LifetimeTests(SynchronousTestCase):
    def test_hard_deadline_shuts_down_and_ends_with_0(self) -> None:
        """At shutdown_after the parts are shut down, and the lifetime ends with 0."""
        clock = Clock()
        calls: list[float] = []

        def shut_down() -> Deferred[Any]:
            calls.append(clock.seconds())
            return succeed(None)

        lifetime, _ = make_lifetime(clock, shut_down, shutdown_after=60.0)
        lifetime.start()
        ended = lifetime.when_ended()
        clock.advance(59)
        self.assertNoResult(ended)
        clock.advance(1)
        self.assertEqual(calls, [60.0])
        self.assertEqual(self.successResultOf(ended), 0)
        self.assertEqual(lifetime.stop_reason, "hard deadline (shutdown_after)")

    def test_stop_timeout_abandons_with_1(self) -> None:
        """A shut-down that never ends is abandoned after stop_timeout: force_down, exit 1."""
        clock = Clock()
        lifetime, trace = make_lifetime(clock, Deferred, stop_timeout=5.0)
        lifetime.start()
        ended = lifetime.when_ended()
        lifetime.stop("test", 0)
        clock.advance(4.9)
        self.assertNoResult(ended)
        clock.advance(0.1)
        self.assertEqual(trace, ["force_down"])
        self.assertEqual(self.successResultOf(ended), 1)
        self.flushLoggedErrors()

    def test_idle_exit_at_the_soft_deadline(self) -> None:
        """With nothing due or in flight, the lifetime stops at its soft deadline."""
        clock = Clock()
        lifetime, _ = make_lifetime(clock, lambda: succeed(None), stay_alive_for=10.0,
                                    shutdown_if_idle=5.0)
        lifetime.start()
        lifetime.start_soft_deadline()
        ended = lifetime.when_ended()
        lifetime.begin("request")
        clock.advance(10)
        self.assertNoResult(ended)  # a request is in flight
        lifetime.end("request")
        clock.advance(4.9)
        self.assertNoResult(ended)  # the last request ended less than 5 s ago
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(ended), 0)
