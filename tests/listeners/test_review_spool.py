"""Review of the kept spool files (issue 14): what the reuse must not break."""

from __future__ import annotations

import io
import threading
from typing import IO, Any, cast

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.budget import (
    SPOOL_REUSE_FOR,
    BodyBudget,
    FdLimits,
    SpoolReader,
)
from tests.listeners.helpers import spool_file_of, spooled


class KeptFileAgeTests(SynchronousTestCase):
    def test_an_older_file_kept_after_a_younger_one_is_closed_on_time(self) -> None:
        """A file created first but given back after a younger one (a longer upload)
        is closed SPOOL_REUSE_FOR seconds after its creation, not when the younger
        one's timer fires, and is not handed to a body past that age."""
        clock = Clock()
        fds = FdLimits(limit=1000)
        budget = BodyBudget(per_listener=10, fds=fds, clock=clock)
        old = spooled(budget, b"a" * 100)
        old_file = spool_file_of(old)
        clock.advance(5)
        spooled(budget, b"b" * 100).close()  # its timer: at 15 s
        clock.advance(1)
        old.close()
        clock.advance(SPOOL_REUSE_FOR - 6)
        self.assertEqual((old_file.closed, fds.idle_spools), (True, 1))
        clock.advance(0.5)
        self.assertIsNot(spool_file_of(spooled(budget, b"c" * 100)), old_file)


class _SlowFile(io.RawIOBase):
    """A spool file whose second read waits for ``go``: a read in flight."""

    def __init__(self) -> None:
        self.fill = b"A"
        self.reads = 0
        self.in_read = threading.Event()
        self.go = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        if self.reads == 2:
            self.in_read.set()
            self.go.wait(10)
        size = min(len(buffer), 4096)
        buffer[:size] = self.fill * size
        return size


class ReaderThreadTests(SynchronousTestCase):
    def test_a_read_in_flight_ends_before_the_file_is_given_back(self) -> None:
        """An app reading its body in a thread of its own while the WSGI call closes
        wsgi.input: the read finishes on its own body, then the file goes back (before,
        the buffer was detached under the read: the interpreter crashed, or the read
        went on in the next request's body)."""
        raw = _SlowFile()
        given: list[object] = []

        def give_back(function: Any, spool: Any, born: float) -> None:
            given.append(spool)
            raw.fill = b"B"  # the next body, written once the file is back

        reader = SpoolReader(cast(IO[bytes], raw), BodyBudget(fds=FdLimits(limit=100)),
                             0.0, give_back)
        read: list[bytes] = []
        app_thread = threading.Thread(target=lambda: read.append(reader.read(20000)))
        app_thread.start()
        self.assertTrue(raw.in_read.wait(10))
        closing = threading.Event()
        closer = threading.Thread(target=lambda: (closing.set(), reader.close()))
        closer.start()
        self.assertTrue(closing.wait(10))
        raw.go.set()
        app_thread.join(10)
        closer.join(10)
        self.assertEqual((read, given), ([b"A" * 20000], [raw]))
        with self.assertRaises(ValueError):
            reader.read()
