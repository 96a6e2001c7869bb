"""Run timeouts (DESIGN §10): a Deferred cancelled at exactly ``timeout``, a thread run
that blocks the next one, the outcome and the delay after, one timer for all."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from daemonapp.daemon import TIMED_OUT
from daemonapp.testing import FakeDaemon, PendingDaemon
from tests._apps import start_app


def timed_out_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("outcome") == TIMED_OUT]


class Cancellable(FakeDaemon):
    """do_work returns a Deferred that records when it is cancelled."""

    def __init__(self, jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.cancelled_at: list[float] = []

    def do_work(self, job: Any) -> Deferred[None]:
        assert self.app is not None
        seconds = self.app.seconds
        return Deferred(lambda d: self.cancelled_at.append(seconds()))


def test_a_deferred_is_cancelled_at_exactly_the_timeout(events: list[dict[str, Any]]) -> None:
    """The Deferred a run waits on is cancelled at start + timeout, not before."""
    daemon = Cancellable(["a"], run_every=30, timeout=5)
    _app, clock = start_app(daemon)
    clock.advance(1)  # the run starts at 1
    clock.advance(4.999)
    assert (daemon.cancelled_at, daemon.running) == ([], True)
    clock.advance(0.001)
    assert daemon.cancelled_at == [6]
    assert not daemon.running
    [line] = timed_out_lines(events)
    assert (line["daemon"], line["phase"], line["job"]) == ("Cancellable", "do_work", "'a'")


def test_a_timed_out_run_has_its_outcome_and_a_failures_delay() -> None:
    """The run is timed-out, counted, and the next waits as after a failure."""
    daemon = PendingDaemon(["a"], run_every=30, increase_idle_by=10, timeout=5)
    _app, clock = start_app(daemon)
    clock.advance(0)
    clock.advance(5)
    stats = daemon.stats
    assert (stats["last_outcome"], stats["current_delay"], stats["next_run_at"]) == (
        "timed-out", 40, 45)
    assert stats["outcomes"]["timed-out"] == 1
    assert (stats["failures"], stats["consecutive_failures"]) == (0, 1)
    clock.advance(39.9)
    assert len(daemon.get_work_calls) == 1
    clock.advance(0.1)
    assert len(daemon.get_work_calls) == 2


def test_a_run_that_ends_in_time_is_not_timed_out() -> None:
    """A run that ends before its timeout keeps its outcome, and a later run gets its
    own deadline (not the first run's)."""
    daemon = PendingDaemon(["a", "b"], run_every=3, timeout=5)
    _app, clock = start_app(daemon)
    clock.advance(0)
    clock.advance(4)
    daemon.pending[0].callback(None)
    daemon.pending[1].callback(None)
    assert daemon.stats["last_outcome"] == "worked"
    daemon.add_jobs("c")
    clock.advance(3)  # the second run starts at 7: its deadline is 12, not 5
    clock.advance(4.9)
    assert not daemon.pending[2].called
    clock.advance(0.1)
    assert daemon.pending[2].called
    assert daemon.stats["last_outcome"] == "timed-out"


def test_a_coroutine_is_logged_with_where_it_waits(events: list[dict[str, Any]]) -> None:
    """A timed-out coroutine's log line carries its suspended stack (the slowlog)."""
    never: Deferred[None] = Deferred()

    class Slow(FakeDaemon):
        async def do_work(self, job: Any) -> None:
            await slow_inner_step()

    async def slow_inner_step() -> None:
        await never

    daemon = Slow(["a"], timeout=2)
    _app, clock = start_app(daemon)
    clock.advance(0)
    clock.advance(2)
    [line] = timed_out_lines(events)
    assert "slow_inner_step" in line["where"]
    assert "do_work" in line["where"]
    assert daemon.stats["last_outcome"] == "timed-out"


def test_one_timer_for_many_deadlines() -> None:
    """100 runs in flight with timeouts arm one timer, for the earliest deadline."""
    daemons = [PendingDaemon(["a"], run_every=60, timeout=10 + i, name=f"d{i}")
               for i in range(100)]
    _app, clock = start_app(*daemons)
    clock.advance(0)
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10]
    clock.advance(10)
    assert daemons[0].stats["last_outcome"] == "timed-out"
    assert len(clock.getDelayedCalls()) == 1


def test_a_busy_daemon_keeps_one_deadline_entry() -> None:
    """Thousands of short runs with a timeout leave at most one timed entry."""
    daemon = FakeDaemon(["x"] * 3000, run_every=1, max_items=1, timeout=60)
    app, clock = start_app(daemon)
    clock.advance(0)
    assert daemon.stats["runs"] >= 3000
    assert len(app.scheduler._timed) <= 1
    assert daemon.stats["outcomes"]["timed-out"] == 0


class HeldThreadPool:
    """A thread pool of real threads whose results the test hands back to the loop."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[tuple[Any, bool, Any]] = []

    def callInThreadWithCallback(self, on_result: Any, func: Any, *args: Any) -> None:
        def work() -> None:
            try:
                result = func(*args)
            except BaseException:
                self.results.append((on_result, False, Failure()))
            else:
                self.results.append((on_result, True, result))

        thread = threading.Thread(target=work, daemon=True)
        self.threads.append(thread)
        thread.start()

    def deliver(self) -> None:
        """Join the threads and hand their results over, as callFromThread would."""
        for thread in self.threads:
            thread.join(10)
        results, self.results = self.results, []
        for on_result, ok, result in results:
            on_result(ok, result)


def test_a_thread_run_blocks_the_next_until_it_returns(events: list[dict[str, Any]]) -> None:
    """A thread cannot be killed: its stack is logged, no run starts until it returns,
    then the run is timed-out and its delay counts from the return."""
    release = threading.Event()
    started = threading.Event()

    class Blocking(FakeDaemon):
        in_thread = True

        def do_work(self, job: Any) -> None:
            started.set()
            blocked_in_the_worker(release)

    def blocked_in_the_worker(event: threading.Event) -> None:
        event.wait(10)

    pool = HeldThreadPool()
    daemon = Blocking(["a", "b"], run_every=30, increase_idle_by=10, timeout=5)
    _app, clock = start_app(daemon, threadpool=pool)
    clock.advance(0)
    assert started.wait(10)
    clock.advance(5)
    [line] = timed_out_lines(events)
    assert "blocked_in_the_worker" in line["stack"]
    assert daemon.running
    clock.advance(100)  # long past its next due time: still the same run
    assert (daemon.running, len(daemon.get_work_calls), daemon.stats["runs"]) == (True, 1, 0)
    release.set()
    pool.deliver()  # the thread returns at 105
    stats = daemon.stats
    assert (daemon.running, stats["last_outcome"], stats["current_delay"]) == (
        False, "timed-out", 40)
    assert stats["next_run_at"] == 145
    assert len(daemon.get_work_calls) == 1  # the item after it was not fetched


def test_no_timeout_no_deadline() -> None:
    """Without a timeout a run may wait for ever and no deadline is armed."""
    daemon = PendingDaemon(["a"], run_every=30)
    _app, clock = start_app(daemon)
    clock.advance(0)
    assert clock.getDelayedCalls() == []
    clock.advance(10 * 86400)
    assert daemon.running
