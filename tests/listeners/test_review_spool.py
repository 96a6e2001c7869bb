"""Review of the kept spool files (issue 14): what the reuse must not break."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.budget import SPOOL_REUSE_FOR, BodyBudget, BodyBuffer, FdLimits


def _spooled(budget: BodyBudget, body: bytes) -> BodyBuffer:
    """A body written to ``budget``, which is too small for it: on disk."""
    buffer = BodyBuffer(budget, None)
    buffer.write(body)
    assert buffer.spool is not None
    return buffer


def _file_of(buffer: BodyBuffer) -> Any:
    assert buffer.spool is not None
    return buffer.spool.file


class KeptFileAgeTests(SynchronousTestCase):
    def test_an_older_file_kept_after_a_younger_one_is_closed_on_time(self) -> None:
        """A file created first but given back after a younger one (a longer upload)
        is closed SPOOL_REUSE_FOR seconds after its creation, not when the younger
        one's timer fires, and is not handed to a body past that age."""
        clock = Clock()
        fds = FdLimits(limit=1000)
        budget = BodyBudget(per_listener=10, fds=fds, clock=clock)
        old = _spooled(budget, b"a" * 100)
        old_file = _file_of(old)
        clock.advance(5)
        _spooled(budget, b"b" * 100).close()  # its timer: at 15 s
        clock.advance(1)
        old.close()
        clock.advance(SPOOL_REUSE_FOR - 6)
        self.assertEqual((old_file.closed, fds.idle_spools), (True, 1))
        clock.advance(0.5)
        self.assertIsNot(_file_of(_spooled(budget, b"c" * 100)), old_file)
