"""The lifetime: deadlines, idle exit and the graceful stop, alone with a scheduler,
then through DaemonApp on a task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp import DaemonApp
from daemonapp.lifetime import Lifetime
from daemonapp.scheduler import Scheduler
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app
from tests._apps import advance_to, fired, result_of, start_app


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


# ------------------------------------------------ through DaemonApp on a task.Clock


def test_no_options_runs_until_signalled() -> None:
    """Unset deadlines and idle exit: the app does not end by itself."""
    app, clock = start_app(FakeDaemon(run_every=10))
    ended = app.when_ended()
    advance_to(clock, 100_000)
    assert not fired(ended)


def test_nothing_to_do_exits_at_soft_deadline() -> None:
    """An app with nothing to do exits at its soft deadline, with status 0."""
    app, clock = start_app(stay_alive_for=60, shutdown_if_idle=5)
    ended = app.when_ended()
    advance_to(clock, 59.9)
    assert not fired(ended)
    advance_to(clock, 60)
    assert result_of(ended) == 0


def test_idle_exit_decided_at_start_without_soft_deadline() -> None:
    """Without stay_alive_for, idle exit is decided at start."""
    app, clock = start_app(shutdown_if_idle=5)
    ended = app.when_ended()
    clock.advance(0)
    assert result_of(ended) == 0
    assert clock.seconds() == 0


def test_idle_exit_at_soft_deadline_with_gap() -> None:
    """At the soft deadline the app stops when the next due time is >= threshold away."""
    # idle delays 20, 30, 40: runs at 0, 20, 50, 90
    app, clock = start_app(FakeDaemon(run_every=10, increase_idle_by=10, maximum_idle=100),
                           stay_alive_for=60, shutdown_if_idle=30)
    ended = app.when_ended()
    advance_to(clock, 59.9)
    assert not fired(ended)
    advance_to(clock, 60)
    assert result_of(ended) == 0


def test_no_idle_exit_before_soft_deadline() -> None:
    """No idle exit before stay_alive_for, even with a large gap."""
    app, clock = start_app(FakeDaemon(run_every=1000), stay_alive_for=60, shutdown_if_idle=1)
    ended = app.when_ended()
    advance_to(clock, 59)
    assert not fired(ended)


def test_idle_exit_decided_when_a_run_ends() -> None:
    """Idle exit is decided when a run ends: the gap to the next due time counts."""
    # runs at 0 (worked, next 5), 5 (idle, +15 -> 20), 20 (idle, +25 -> 45 → gap 25 >= 20)
    d = FakeDaemon(["a"], run_every=5, increase_idle_by=10, maximum_idle=100)
    app, clock = start_app(d, stay_alive_for=10, shutdown_if_idle=20)
    ended = app.when_ended()
    advance_to(clock, 19.9)
    assert not fired(ended)
    advance_to(clock, 20)
    assert result_of(ended) == 0
    assert d.get_work_calls == [0, 0, 5, 20]


def test_idle_exit_waits_for_run_in_flight() -> None:
    """A run in flight keeps the app alive past its soft deadline."""
    d = PendingDaemon(["a"], run_every=1000, start_delay=9)
    app, clock = start_app(d, stay_alive_for=10, shutdown_if_idle=5)
    ended = app.when_ended()
    advance_to(clock, 12)
    assert not fired(ended)
    d.pending[0].callback(None)
    assert result_of(ended) == 0


def test_idle_exit_at_last_request_end_plus_threshold() -> None:
    """Idle exit is decided at last request end + threshold (requests count as activity)."""
    app, clock = make_app(shutdown_if_idle=10)
    app.add(FakeDaemon(run_every=1000, start_delay=1000))
    app.begin("request")
    app.startService()
    ended = app.when_ended()
    clock.advance(5)
    app.end("request")
    advance_to(clock, 14.9)
    assert not fired(ended)
    advance_to(clock, 15)
    assert result_of(ended) == 0


def test_a_request_ended_before_the_soft_deadline_is_waited_for_after_it() -> None:
    """A request that ended within the threshold before the soft deadline: idle exit
    comes at its end + threshold, with nothing else ending meanwhile (no daemon)."""
    app, clock = make_app(stay_alive_for=10, shutdown_if_idle=5)
    app.startService()
    ended = app.when_ended()
    clock.advance(7)
    app.begin("request")
    clock.advance(1)
    app.end("request")  # at 8: idle from 13 on
    advance_to(clock, 12.9)
    assert not fired(ended)
    advance_to(clock, 13)
    assert result_of(ended) == 0


def test_hard_deadline_stops_whatever_the_work() -> None:
    """shutdown_after starts a graceful stop then, whatever the work; exit status 0."""
    app, clock = start_app(FakeDaemon(["x"] * 10_000, run_every=1, max_items=1),
                           shutdown_after=100)
    ended = app.when_ended()
    for _ in range(1000):
        if fired(ended) or clock.seconds() >= 100:
            break
        clock.advance(1)
    clock.advance(0)
    assert result_of(ended) == 0
    assert clock.seconds() == 100


def test_graceful_stop_ends_run_after_current_item() -> None:
    """A graceful stop starts no new run; the run in flight ends after its current item."""
    d = PendingDaemon(["a", "b", "c"], run_every=30)
    app, clock = start_app(d)
    clock.advance(0)
    stopped = app.stopService()
    ended = app.when_ended()
    assert not fired(stopped)
    d.pending[0].callback(None)
    assert fired(stopped)
    assert result_of(ended) == 0
    assert [job for _, job in d.done] == ["a"]
    advance_to(clock, 1000)
    assert [job for _, job in d.done] == ["a"]


def test_stop_timeout_counts_from_stop() -> None:
    """stop_timeout counts from the stop; abandoned work exits 1."""
    d = PendingDaemon(["a"], run_every=30)
    app, clock = start_app(d, stop_timeout=30)
    clock.advance(0)
    clock.advance(100)
    stopped = app.stopService()
    ended = app.when_ended()
    clock.advance(29.9)
    assert not fired(ended)
    clock.advance(0.1)
    assert result_of(ended) == 1
    assert fired(stopped)


def test_stop_service_idempotent() -> None:
    """stopService() can be called twice; both Deferreds fire and the status stays 0."""
    app, clock = start_app(FakeDaemon(run_every=30))
    clock.advance(0)
    first = app.stopService()
    second = app.stopService()
    assert fired(first) and fired(second)
    assert result_of(app.when_ended()) == 0


def test_when_ended_after_end() -> None:
    """when_ended() called after the end fires at once with the exit status."""
    app, clock = start_app(shutdown_after=1)
    clock.advance(1)
    assert result_of(app.when_ended()) == 0


def test_stop_reactor_default_stops_it() -> None:
    """By default the app stops its reactor when it ends."""
    reactor = MemoryReactorClock()
    reactor.running = True
    app = DaemonApp(reactor=reactor, shutdown_after=5, handle_signals=False)
    app.startService()
    reactor.advance(5)
    assert result_of(app.when_ended()) == 0
    assert reactor.hasStopped


def test_stop_reactor_false_leaves_it() -> None:
    """Embedders pass stop_reactor=False and the reactor is left running."""
    reactor = MemoryReactorClock()
    reactor.running = True
    app = DaemonApp(reactor=reactor, shutdown_after=5, handle_signals=False, stop_reactor=False)
    app.startService()
    reactor.advance(5)
    assert result_of(app.when_ended()) == 0
    assert not reactor.hasStopped


def test_clock_without_stop_is_fine() -> None:
    """A reactor without stop (task.Clock) is simply not stopped."""
    clock = Clock()
    app = DaemonApp(clock=clock, shutdown_after=1, handle_signals=False)
    app.startService()
    clock.advance(1)
    assert result_of(app.when_ended()) == 0
