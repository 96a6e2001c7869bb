"""The garbage collector's freeze while an app runs (daemonapp.gcfreeze)."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any
from unittest import mock

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp import DaemonApp, gcfreeze
from daemonapp.testing import FakeDaemon


class Box:
    """An object in a cycle of its own."""

    me: Box | None = None


class Reactor(Clock):
    """A Clock that the tests install as the process's reactor."""


def installed(test: SynchronousTestCase, reactor: Any) -> None:
    """Make ``reactor`` the installed reactor for the test; undo every freeze after it."""
    patcher = mock.patch.dict(sys.modules, {"twisted.internet.reactor": reactor})
    patcher.start()
    test.addCleanup(patcher.stop)

    def undo() -> None:
        while gcfreeze.frozen():
            gcfreeze.thaw()
        gc.unfreeze()

    test.addCleanup(undo)


def app_on(reactor: Clock) -> DaemonApp:
    app = DaemonApp(reactor=reactor, handle_signals=False, stop_reactor=False)
    app.add(FakeDaemon([], name="d", run_every=10))
    return app


class FreezeTests(SynchronousTestCase):
    def test_an_app_on_the_installed_reactor_freezes_until_it_ends(self) -> None:
        """Start-up's objects are frozen while the app runs, handed back when it ends."""
        reactor = Reactor()
        installed(self, reactor)
        app = app_on(reactor)
        self.assertEqual(gc.get_freeze_count(), 0)
        app.startService()
        self.assertTrue(gcfreeze.frozen())
        self.assertGreater(gc.get_freeze_count(), 0)
        app.stop("test")
        reactor.advance(0)
        self.assertEqual(self.successResultOf(app.when_ended()), 0)
        self.assertFalse(gcfreeze.frozen())
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_an_app_on_another_clock_leaves_the_collector_alone(self) -> None:
        """A test's Clock is not the process's reactor: no freeze."""
        installed(self, Reactor())
        app = app_on(Clock())
        app.startService()
        self.assertFalse(gcfreeze.frozen())
        self.assertEqual(gc.get_freeze_count(), 0)
        app.stop("test")

    def test_the_last_app_to_end_thaws(self) -> None:
        """Two apps in one process: the freeze holds until both have ended."""
        reactor = Reactor()
        installed(self, reactor)
        first, second = app_on(reactor), app_on(reactor)
        first.startService()
        second.startService()
        first.stop("test")
        reactor.advance(0)
        self.assertTrue(gcfreeze.frozen())
        self.assertGreater(gc.get_freeze_count(), 0)
        second.stop("test")
        reactor.advance(0)
        self.assertFalse(gcfreeze.frozen())
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_a_removal_hands_frozen_cycles_to_the_collector_then_freezes_again(self) -> None:
        """A cycle frozen at the start (as a removed daemon's is) is freed by the
        collector's next full pass after a removal; then the freeze is made again."""
        reactor = Reactor()
        installed(self, reactor)
        app = app_on(reactor)
        box = Box()
        box.me = box  # a cycle that becomes garbage while frozen
        gone = weakref.ref(box)
        app.startService()
        del box
        gc.collect()
        self.assertIsNotNone(gone())  # frozen: not collected
        self.successResultOf(app.remove(app.daemons["d"]))
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertTrue(gcfreeze.frozen())  # the app still holds it
        gc.collect(1)  # a younger pass: no freeze yet
        self.assertEqual(gc.get_freeze_count(), 0)
        gc.collect()
        self.assertIsNone(gone())
        self.assertGreater(gc.get_freeze_count(), 0)
        app.stop("test")
        reactor.advance(0)
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertNotIn(gcfreeze._refreeze, gc.callbacks)  # (gone with the freeze)

    def test_thaw_without_freeze_is_harmless(self) -> None:
        """A thaw with no holder leaves the collector as it is."""
        gcfreeze.thaw()
        self.assertFalse(gcfreeze.frozen())
        gcfreeze.release()
        self.assertNotIn(gcfreeze._refreeze, gc.callbacks)


class GcCallbackTests(SynchronousTestCase):
    def test_the_refreeze_leaves_other_gc_callbacks_their_calls(self) -> None:
        """After a daemon's removal the refreeze waits on gc.callbacks; the pass that
        refreezes still reaches every callback after it, 'start' and 'stop' alike
        (the collector walks that list by index while it calls it)."""
        reactor = Reactor()
        installed(self, reactor)
        app = app_on(reactor)
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
        reactor.advance(0)
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertNotIn(gcfreeze._refreeze, gc.callbacks)
