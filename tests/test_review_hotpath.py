"""Review of the scheduler's hot path and the collector's freeze (3136ac5..5c4d13b):
what the review found, each on a task.Clock."""

from __future__ import annotations

import gc
import sys
from typing import Any
from unittest import mock

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp import DaemonApp, gcfreeze
from daemonapp.testing import FakeDaemon


class Installed(Clock):
    """A Clock installed as the process's reactor for one test."""


class GcCallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        reactor = self.reactor = Installed()
        patcher = mock.patch.dict(sys.modules, {"twisted.internet.reactor": reactor})
        patcher.start()
        self.addCleanup(patcher.stop)

        def undo() -> None:
            while gcfreeze.frozen():
                gcfreeze.thaw()
            gc.unfreeze()

        self.addCleanup(undo)

    def test_the_refreeze_leaves_other_gc_callbacks_their_calls(self) -> None:
        """After a daemon's removal the refreeze waits on gc.callbacks; the pass that
        refreezes still reaches every callback after it, 'start' and 'stop' alike
        (the collector walks that list by index while it calls it)."""
        app = DaemonApp(reactor=self.reactor, handle_signals=False, stop_reactor=False)
        app.add(FakeDaemon([], name="d", run_every=10))
        app.startService()
        self.successResultOf(app.remove(app.daemons["d"]))
        seen: list[tuple[str, int]] = []

        def other(phase: str, info: dict[str, Any]) -> None:
            seen.append((phase, info["generation"]))

        gc.callbacks.append(other)
        self.addCleanup(gc.callbacks.remove, other)
        gc.collect()
        self.assertEqual(seen, [("start", 2), ("stop", 2)])
        self.assertGreater(gc.get_freeze_count(), 0)  # frozen again
        app.stop("test")
        self.reactor.advance(0)
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertNotIn(gcfreeze._refreeze, gc.callbacks)

