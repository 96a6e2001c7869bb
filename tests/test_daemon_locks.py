"""A daemon's `lock:` through the app's default flock provider (DESIGN §5)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from daemonapp.testing import FakeDaemon, PendingDaemon, make_app


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
