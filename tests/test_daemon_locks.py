"""A daemon's `lock:` through the app's default flock provider (DESIGN §5)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.locks import AsyncLock, OutageLog, highlander
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app
from tests._apps import advance_to, fired, result_of, start_app


class DaemonLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="daemonapp-locks-"))
        self.addCleanup(shutil.rmtree, self.state_dir, True)
        self.app, self.clock = make_app(state_dir=str(self.state_dir), lock_wait=10)

    def tearDown(self) -> None:
        self.app.stop("test over")
        self.clock.advance(0)

    def test_two_daemons_exclude_each_other(self) -> None:
        """Two daemons of one app with the same lock never run at once."""
        a = PendingDaemon(["a1"], name="a", run_every=60, lock="queue")
        b = PendingDaemon(["b1"], name="b", run_every=60, lock="queue")
        self.app.add(a)
        self.app.add(b)
        self.app.startService()
        self.clock.advance(0)
        self.assertEqual((len(a.pending), len(b.pending)), (1, 0))
        self.clock.advance(1)
        self.assertEqual(len(b.pending), 0)  # b waits for the lock without blocking
        a.pending.pop().callback(None)
        self.clock.advance(0.05)
        self.assertEqual(len(b.pending), 1)
        self.assertTrue((self.state_dir / "locks" / "queue.lock").exists())

    def test_locked_out_after_wait(self) -> None:
        """A daemon that cannot get its lock within lock_wait has a locked-out run."""
        a = PendingDaemon(["a1"], name="a", run_every=60, lock="queue")
        b = PendingDaemon(["b1"], name="b", run_every=30, increase_idle_by=10, lock="queue")
        self.app.add(a)
        self.app.add(b)
        self.app.startService()
        self.clock.advance(0)
        for _ in range(12):
            self.clock.advance(1)
        self.assertEqual(b.stats["last_outcome"], "locked-out")
        self.assertEqual(b.stats["current_delay"], 40.0)
        a.pending.pop().callback(None)

    def test_yield_pauses_before_retaking_lock(self) -> None:
        """After a yielded run, a locked daemon waits 50 ms before it takes the lock again."""
        d = FakeDaemon(["x", "y"], name="d", run_every=60, max_items=1, lock="queue")
        self.app.add(d)
        self.app.startService()
        self.clock.advance(0)
        self.assertEqual([t for t, _ in d.done], [0.0])
        self.assertEqual(d.stats["current_delay"], 0.05)
        self.clock.advance(0.05)
        self.assertEqual([j for _, j in d.done], ["x", "y"])


class _FlakyBackend:
    """A lock backend that is down (raises) while ``down`` is set, like PostgreSQL."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.token: int | None = None
        self.down = True
        self.tries = 0
        self.held = False
        self.lost_after_items: int | None = None

    def acquire(self, timeout: float | None = None) -> bool:
        self.tries += 1
        if self.down:
            raise OSError(111, "connection refused")
        self.held = True
        return True

    def release(self) -> None:
        self.held = False

    def locked(self) -> bool:
        return self.held

    def still_held(self) -> bool:
        return self.held

    def close(self) -> None:
        self.held = False


class _FlakyProvider:
    """An ILockProvider over one _FlakyBackend, sharing one OutageLog as LockProvider does."""

    def __init__(self, clock: Any) -> None:
        self.backend = _FlakyBackend("queue")
        self.clock = clock
        self.outage = OutageLog(clock)

    def lock_for(self, name: str) -> AsyncLock:
        return AsyncLock(self.backend, reactor=self.clock,  # type: ignore[arg-type]
                         outage=self.outage)

    def close(self) -> None:
        return None


class LockOutageTests(SynchronousTestCase):
    """DESIGN §5: a lock backend outage is locked-out runs and a few log lines."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.provider = _FlakyProvider(self.clock)
        self.app, _ = make_app(self.clock, locks=self.provider, lock_wait=10)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def tearDown(self) -> None:
        self.app.stop("test over")
        self.clock.advance(0)

    def lines(self, text: str) -> int:
        return sum(1 for e in self.events if text in str(e.get("log_format", "")))

    def run_for(self, seconds: float, step: float = 0.02) -> None:
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def test_outage_runs_are_locked_out_on_the_idle_backoff(self) -> None:
        """While the backend is down each run is locked-out at once; retries follow the backoff."""
        d = FakeDaemon(["x"], name="d", run_every=1, increase_idle_by=1, maximum_idle=4,
                       lock="queue")
        self.app.add(d)
        self.app.startService()
        self.run_for(22)
        self.assertEqual(d.stats["last_outcome"], "locked-out")
        self.assertEqual(d.stats["failures"], 0)
        # Runs at 0, 2, 5, 9, 13, 17, 21 s: one try each, not one per 20 ms tick.
        self.assertEqual(d.stats["runs"], 7)
        self.assertEqual(self.provider.backend.tries, 7)
        self.assertEqual(d.stats["current_delay"], 4.0)
        self.assertEqual(d.jobs[0], "x")
        self.flushLoggedErrors(OSError)

    def test_outage_logs_first_error_then_a_line_a_minute_then_recovery(self) -> None:
        """An outage logs one traceback, at most one line a minute, and 'reachable again'."""
        d = FakeDaemon(["x"], name="d", run_every=1, maximum_idle=1, lock="queue")
        self.app.add(d)
        self.app.startService()
        self.run_for(150, step=0.1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.lines("still unreachable"), 2)  # at 60 s and 120 s
        self.assertEqual(self.lines("reachable again"), 0)
        self.assertGreater(self.provider.backend.tries, 100)
        self.provider.backend.down = False
        self.run_for(2, step=0.1)
        self.assertEqual(self.lines("reachable again"), 1)
        self.assertEqual([job for _, job in d.done], ["x"])
        self.assertEqual(d.stats["last_outcome"], "worked")
        # A second outage is logged again from its first error.
        self.provider.backend.down = True
        d.add_jobs("y")
        self.run_for(5, step=0.1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_lost_lease_ends_the_run_after_the_current_item(self) -> None:
        """A hold lost mid-run (a lease not renewed) ends the run after its current item."""
        self.provider.backend.down = False
        d = PendingDaemon(["a", "b", "c"], name="d", run_every=10, lock="queue")
        self.app.add(d)
        self.app.startService()
        self.clock.advance(0)
        self.assertEqual(len(d.pending), 1)
        self.provider.backend.held = False  # the renewal thread gave the lease up
        d.pending.pop().callback(None)
        self.assertEqual(d.stats["last_outcome"], "locked-out")
        self.assertEqual([job for _, job in d.done], ["a"])
        self.assertEqual(self.lines("lost lock"), 1)


# ----------------------------------- DESIGN §5's rules for a daemon's lock, from outside


def test_locked_out_run(tmp_path: Path) -> None:
    """A run whose lock is held elsewhere is locked-out and backs off like idle."""
    other = highlander("nightly", state_dir=tmp_path)
    assert other.acquire(timeout=0)
    try:
        d = FakeDaemon(["a"], run_every=30, increase_idle_by=10, lock="nightly")
        app, clock = start_app(d, state_dir=str(tmp_path), lock_wait=0)
        clock.advance(0)
        assert d.stats["last_outcome"] == "locked-out"
        assert d.stats["current_delay"] == 40
        assert d.done == []
    finally:
        other.release()
    advance_to(clock, 40)
    assert [job for _, job in d.done] == ["a"]
    # Released between runs: someone else can take it now.
    assert other.acquire(timeout=0)
    other.release()
    result_of(app.stopService())


def test_lock_yield_pause(tmp_path: Path) -> None:
    """After a yielded run a daemon holding a lock lets 50 ms pass before the next run."""
    d = FakeDaemon(["a", "b"], run_every=30, max_items=1, lock="turns")
    app, clock = start_app(d, state_dir=str(tmp_path), lock_wait=0)
    clock.advance(0)
    assert [job for _, job in d.done] == ["a"]
    assert d.stats["last_outcome"] == "yielded"
    assert d.stats["next_run_at"] == pytest.approx(0.05)
    advance_to(clock, 0.05)
    assert [job for _, job in d.done] == ["a", "b"]
    result_of(app.stopService())


def test_graceful_stop_releases_lock(tmp_path: Path) -> None:
    """A graceful stop finishes the run in flight and releases its lock."""
    d = PendingDaemon(["a", "b"], run_every=30, lock="held")
    app, clock = start_app(d, state_dir=str(tmp_path), lock_wait=0)
    clock.advance(0)
    other = highlander("held", state_dir=tmp_path)
    assert other.acquire(timeout=0) is False
    stopped = app.stopService()
    d.pending[0].callback(None)
    assert fired(stopped)
    assert other.acquire(timeout=0) is True
    other.release()


def test_lock_held_for_whole_run_only(tmp_path: Path) -> None:
    """A daemon's lock is held from before the first get_work until after the last hook."""
    seen: list[tuple[str, bool]] = []
    probe = highlander("whole", state_dir=tmp_path)

    def free() -> bool:
        if probe.acquire(timeout=0):
            probe.release()
            return True
        return False

    class Probe(FakeDaemon):
        def get_work(self) -> Any:
            seen.append(("get_work", free()))
            return super().get_work()

        def do_work(self, job: Any) -> Any:
            seen.append(("do_work", free()))
            return super().do_work(job)

    _, clock = start_app(Probe(["a"], run_every=30, lock="whole"),
                         state_dir=str(tmp_path), lock_wait=0)
    clock.advance(0)
    assert seen == [("get_work", False), ("do_work", False), ("get_work", False)]
    assert free()


def test_two_daemons_same_lock_exclude(tmp_path: Path) -> None:
    """Two daemons of one app with the same lock exclude each other."""
    a = PendingDaemon(["a"], name="a", run_every=30, lock="same")
    b = FakeDaemon(["b"], name="b", run_every=30, lock="same", increase_idle_by=10)
    _, clock = start_app(a, b, state_dir=str(tmp_path), lock_wait=0)
    clock.advance(0)
    assert b.stats["last_outcome"] == "locked-out"
    assert b.done == []
    a.pending[0].callback(None)
    advance_to(clock, 40)
    assert [job for _, job in b.done] == ["b"]


def test_lock_wait_without_blocking(tmp_path: Path) -> None:
    """The daemon waits up to lock wait for its lock on the clock, then runs."""
    other = highlander("waited", state_dir=tmp_path)
    assert other.acquire(timeout=0)
    d = FakeDaemon(["a"], run_every=30, lock="waited")
    _, clock = start_app(d, state_dir=str(tmp_path), lock_wait=10)
    clock.advance(0)
    advance_to(clock, 3)
    assert d.done == []
    other.release()
    advance_to(clock, 3.5)
    assert len(d.done) == 1
    assert 3 <= d.done[0][0] <= 3.5


def test_lock_wait_runs_out_locked_out(tmp_path: Path) -> None:
    """After waiting lock wait in vain, the run is locked-out."""
    other = highlander("never", state_dir=tmp_path)
    assert other.acquire(timeout=0)
    try:
        d = FakeDaemon(["a"], run_every=30, lock="never")
        _, clock = start_app(d, state_dir=str(tmp_path), lock_wait=10)
        advance_to(clock, 9.9)
        assert d.stats["runs"] == 0
        advance_to(clock, 10.1)
        assert d.stats["last_outcome"] == "locked-out"
    finally:
        other.release()


def test_one_timer_while_daemons_wait_for_locks(tmp_path: Path) -> None:
    """Daemons waiting for a lock held elsewhere do not arm a timer each."""
    other = highlander("contended", state_dir=tmp_path)
    assert other.acquire(timeout=0)
    try:
        daemons = [FakeDaemon(["a"], name=f"w{i}", run_every=30, lock="contended")
                   for i in range(5)]
        _, clock = start_app(*daemons, state_dir=str(tmp_path), lock_wait=10)
        clock.advance(0)
        clock.advance(1)
        assert len(clock.getDelayedCalls()) <= 1
    finally:
        other.release()
