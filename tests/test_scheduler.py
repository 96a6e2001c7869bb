"""The scheduler through DaemonApp on a task.Clock: time slices, order, one timer."""

from __future__ import annotations

import heapq
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from daemonapp.testing import FakeDaemon, PendingDaemon, make_app
from tests._apps import advance_to, fired, start_app


class Traced(FakeDaemon):
    """A FakeDaemon whose do_work only appends its name to the shared ``trace``."""

    def __init__(self, trace: list[str], jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.trace = trace

    def do_work(self, job: Any) -> Any:
        self.trace.append(self.name)
        return None


def test_time_slice_yields_to_reactor() -> None:
    """Ready work runs for at most time_slice (reactor.seconds()), then other calls run."""
    app, clock = make_app(time_slice=0.01)
    trace: list[Any] = []

    class Busy(FakeDaemon):
        def do_work(self, job: Any) -> Any:
            trace.append(job)
            clock.rightNow += 0.004  # each item takes 4 ms of "wall" time
            return None

    app.add(Busy(list(range(10)), run_every=30))
    app.startService()
    clock.callLater(0, trace.append, "io")
    clock.advance(0)
    assert trace == [0, 1, 2, "io", 3, 4, 5, 6, 7, 8, 9]


def test_time_slice_zero_still_runs_one_item_per_slice() -> None:
    """Each slice runs at least one item, even with time_slice 0."""
    d = FakeDaemon(list(range(5)), run_every=30)
    _, clock = start_app(d, time_slice=0)
    for _ in range(20):
        clock.advance(0)
    assert [job for _, job in d.done] == [0, 1, 2, 3, 4]


def test_clock_runs_ready_work_in_order() -> None:
    """On a task.Clock time stands still, so ready work runs in priority, then FIFO order."""
    trace: list[str] = []
    _, clock = start_app(Traced(trace, ["x", "y"], name="a", run_every=5),
                         Traced(trace, ["x", "y"], name="b", run_every=5, priority=1),
                         Traced(trace, ["x"], name="c", run_every=5))
    clock.advance(0)
    assert trace == ["b", "b", "a", "a", "c"]


def test_one_timer_for_many_daemons() -> None:
    """With nothing due, exactly one timer is armed however many daemons there are."""
    daemons = [FakeDaemon(name=f"d{i}", run_every=10 + i, start_delay=1 + i) for i in range(50)]
    _, clock = start_app(*daemons)
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1
    advance_to(clock, 30.5)
    assert len(clock.getDelayedCalls()) == 1


def test_timers_besides_deadlines() -> None:
    """Deadline timers come on top of the one scheduling timer."""
    daemons = [FakeDaemon(name=f"d{i}", run_every=10, start_delay=1 + i) for i in range(20)]
    _, clock = start_app(*daemons, stay_alive_for=100, shutdown_after=200)
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 3


def test_round_robin_of_yielded_daemons() -> None:
    """A yielded run is due at once behind equal-priority daemons already due (round robin)."""
    trace: list[str] = []
    _, clock = start_app(
        Traced(trace, ["x"] * 3, name="a", run_every=30, max_items=1),
        Traced(trace, ["x"] * 3, name="b", run_every=30, max_items=1),
        Traced(trace, ["x"] * 1, name="hi", run_every=30, max_items=1, priority=1, start_delay=0))
    clock.advance(0)
    assert trace == ["hi", "a", "b", "a", "b", "a", "b"]


def test_higher_priority_yielded_runs_again_first() -> None:
    """A yielded higher-priority daemon runs again before lower-priority work."""
    trace: list[str] = []
    _, clock = start_app(Traced(trace, ["x"] * 2, name="low", run_every=30, max_items=1),
                         Traced(trace, ["x"] * 3, name="high", run_every=30, max_items=1,
                                priority=5))
    clock.advance(0)
    assert trace == ["high", "high", "high", "low", "low"]


def test_stop_starts_no_new_run_while_another_drains() -> None:
    """During a graceful stop, a daemon that comes due does not start a run."""
    busy = PendingDaemon(["a"], name="busy", run_every=30)
    later = FakeDaemon(["b"], name="later", run_every=30, start_delay=5)
    app, clock = start_app(busy, later)
    clock.advance(0)
    clock.advance(1)
    stopped = app.stopService()
    advance_to(clock, 10)
    assert later.get_work_calls == []
    busy.pending[0].callback(None)
    assert fired(stopped)
    assert later.get_work_calls == []



@given(st.lists(st.tuples(st.sampled_from(["push", "pop"]), st.integers(-2, 2),
                          st.integers(0, 5)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_ready_queue_order_is_the_heap_order(ops: list[tuple[str, int, int]]) -> None:
    """The ready queue pops in (priority desc, due, sequence) order, as a heap would."""
    from daemonapp.scheduler import Scheduler, Slot, _enqueue

    scheduler = Scheduler(Clock(), 0.01)
    reference: list[tuple[int, float, int]] = []
    popped: list[tuple[float, int]] = []
    expected: list[tuple[float, int]] = []
    for index, (op, priority, due) in enumerate(ops):
        seq = index * 37 % 61  # unique, in no order: a woken run keeps its old one
        if op == "push":
            slot = Slot(FakeDaemon(run_every=1))
            _enqueue(scheduler._queue_for(priority), (float(due), seq, slot))
            heapq.heappush(reference, (-priority, float(due), seq))
        elif reference:
            expected.append(heapq.heappop(reference)[1:])
            queue = next(q for q in scheduler._levels if q)
            popped.append(queue.popleft()[:2])
    assert popped == expected
    assert scheduler.has_ready() == bool(reference)
