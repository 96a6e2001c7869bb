"""Tests for daemonapp.lock_provider: the reactor adapter over the blocking locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemonapp.interfaces import IAsyncLock, ILockProvider, LockUnavailable
from daemonapp.lock_provider import LockProvider
from daemonapp.locks import highlander

ROOT = Path(__file__).resolve().parent.parent


class AsyncFlockTests(SynchronousTestCase):
    """The reactor adapter over flock, on a task.Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.state_dir = self.mktemp()
        self.provider = LockProvider(reactor=self.clock, state_dir=self.state_dir)

    def tearDown(self) -> None:
        self.provider.close()

    def test_provides_interfaces(self) -> None:
        """The provider and its handles provide ILockProvider and IAsyncLock."""
        self.assertTrue(verifyObject(ILockProvider, self.provider))
        self.assertTrue(verifyObject(IAsyncLock, self.provider.lock_for("job")))

    def test_lock_for_rejects_bad_names(self) -> None:
        """lock_for validates the name."""
        self.assertRaises(ValueError, self.provider.lock_for, "../job")

    def test_free_lock_is_held_at_once(self) -> None:
        """acquire on a free lock fires True without the clock moving."""
        lock = self.provider.lock_for("job")
        self.assertIs(self.successResultOf(lock.acquire(10)), True)
        self.assertEqual(lock.token, 1)

    def test_waiter_gets_the_lock_after_release(self) -> None:
        """A second handle waits without blocking and gets the lock once it is released."""
        first = self.provider.lock_for("job")
        second = self.provider.lock_for("job")
        self.successResultOf(first.acquire(10))
        waiting = second.acquire(10)
        self.clock.advance(1)
        self.assertNoResult(waiting)
        self.assertIsNone(first.release())
        self.clock.advance(0.02)
        self.assertIs(self.successResultOf(waiting), True)
        self.assertEqual(second.token, 2)

    def test_timeout_fires_false(self) -> None:
        """acquire fires False once the timeout passed with the lock still held."""
        holder = highlander("job", state_dir=self.state_dir)
        self.assertTrue(holder.acquire(timeout=0))
        waiting = self.provider.lock_for("job").acquire(0.5)
        self.clock.pump([0.02] * 24)
        self.assertNoResult(waiting)
        self.clock.pump([0.02] * 2)
        self.assertIs(self.successResultOf(waiting), False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        holder.release()

    def test_cancel_stops_polling(self) -> None:
        """Cancelling a waiting acquire stops its polling."""
        first = self.provider.lock_for("job")
        self.successResultOf(first.acquire(10))
        waiting: Deferred[bool] = self.provider.lock_for("job").acquire(10)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_error_fails_with_lock_unavailable_and_logs(self) -> None:
        """A failing backend (a symlink) fails acquire with LockUnavailable at once, logged once."""
        os.makedirs(os.path.join(self.state_dir, "locks"))
        os.symlink("elsewhere", os.path.join(self.state_dir, "locks", "job.lock"))
        self.failureResultOf(self.provider.lock_for("job").acquire(1), LockUnavailable)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_release_unheld_is_a_no_op(self) -> None:
        """Releasing a handle that holds nothing returns None."""
        self.assertIsNone(self.provider.lock_for("job").release())

    def test_close_releases_held_locks(self) -> None:
        """close() releases every held handle."""
        self.successResultOf(self.provider.lock_for("job").acquire(1))
        self.assertIsNone(self.provider.close())
        other = highlander("job", state_dir=self.state_dir)
        self.assertTrue(other.acquire(timeout=0))
        other.release()


def test_adapter_names_stay_importable_from_locks() -> None:
    """daemonapp.locks still gives LockProvider, AsyncLock and OutageLog, loaded on first
    use: importing daemonapp.locks alone loads neither Twisted nor the adapter."""
    code = (
        "import sys\n"
        "import daemonapp.locks as locks\n"
        "before = sorted(m for m in sys.modules\n"
        "                if m.split('.')[0] == 'twisted' or m == 'daemonapp.lock_provider')\n"
        "from daemonapp.locks import AsyncLock, LockProvider, OutageLog\n"
        "import daemonapp.lock_provider as lp\n"
        "print(before, (AsyncLock, LockProvider, OutageLog) == (lp.AsyncLock, lp.LockProvider,"
        " lp.OutageLog))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=20, check=True)
    assert result.stdout == "[] True\n"
