"""Bounded by default (DESIGN §4): body memory, spooling, request ids, output, connections."""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.internet import tcp
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners import budget as budget_module
from daemonapp.listeners.budget import (
    BODY_READ_SIZE,
    KEEP_SPOOLS,
    SPOOL_REUSE_FOR,
    BodyBudget,
    BodyBuffer,
    ConnectionBuffer,
    FdLimits,
    Spool,
)
from daemonapp.listeners.fastcgi import FCGI_END_REQUEST, FCGI_STDIN, FCGI_STDOUT, record
from daemonapp.listeners.wsgi import StreamingInput
from daemonapp.metrics import render_metrics
from tests.listeners import apps
from tests.listeners.helpers import (
    ThreadReactor,
    begin,
    connect,
    make_listener,
    params,
    parse_records,
    request,
    spool_file_of,
    spooled,
    stdout_of,
)


def _post(rid: int, length: int) -> bytes:
    return begin(rid) + params(rid, REQUEST_METHOD="POST", CONTENT_LENGTH=str(length))


class BodyBudgetTests(SynchronousTestCase):
    """Bodies nobody reads yet stay within the memory budget; the rest goes to disk."""

    def test_body_over_the_connection_budget_is_spooled_to_a_private_file(self) -> None:
        """Past max_buffer_bytes the body moves to a 0600 file without a name, in a
        0700 directory, and the memory it held is given back."""
        listener = make_listener(native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=1000)
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, 3000) + record(FCGI_STDIN, 1, b"a" * 800))
        budget = listener.dispatcher.budget
        self.assertEqual((budget.used, budget.spooled), (800, 0))
        proto.dataReceived(record(FCGI_STDIN, 1, b"b" * 800))
        self.assertEqual((budget.used, budget.spooled), (0, 1))
        spool = proto.requests[1].spool
        info = os.fstat(spool.file.fileno())
        self.assertEqual((stat.S_IMODE(info.st_mode), info.st_nlink), (0o600, 0))
        directory = os.stat(budget._dir)
        self.assertEqual(stat.S_IMODE(directory.st_mode), 0o700)
        proto.dataReceived(record(FCGI_STDIN, 1, b"c" * 1400) + record(FCGI_STDIN, 1))
        self.assertEqual(stdout_of(transport.value()).split(b"\r\n\r\n", 1)[1],
                         b"a" * 800 + b"b" * 800 + b"c" * 1400)
        self.assertEqual((budget.used, budget.fds.spools), (0, 0))

    def test_a_body_declared_over_the_budget_goes_to_disk_once_a_part_is_in(self) -> None:
        """A CONTENT_LENGTH over max_buffer_bytes: the body is spooled once
        DECLARED_SPILL_AFTER bytes are in, never held in memory up to the budget; a peer
        that declares a long body and sends a few bytes takes no spool file."""
        self.patch(budget_module, "DECLARED_SPILL_AFTER", 100)
        listener = make_listener(native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=1000)
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, 1500) + record(FCGI_STDIN, 1, b"a" * 10))
        budget = listener.dispatcher.budget
        self.assertEqual((budget.used, budget.spooled, budget.fds.spools), (10, 0, 0))
        proto.dataReceived(record(FCGI_STDIN, 1, b"b" * 90))
        self.assertEqual((budget.used, budget.spooled, budget.fds.spools), (0, 1, 1))
        proto.dataReceived(record(FCGI_STDIN, 1, b"c" * 1400) + record(FCGI_STDIN, 1))
        self.assertEqual(stdout_of(transport.value()).split(b"\r\n\r\n", 1)[1],
                         b"a" * 10 + b"b" * 90 + b"c" * 1400)

    def test_an_scgi_body_over_the_connection_budget_is_spooled(self) -> None:
        """An SCGI connection's body counts against max_buffer_bytes too, not only
        against the listener's budget (20 endless bodies held 32 MiB)."""
        from tests.listeners.test_scgi import scgi_request

        listener = make_listener(protocol="scgi", native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=1000)
        proto, transport = connect(listener)
        data = scgi_request(b"a" * 3000, REQUEST_METHOD="POST")
        proto.dataReceived(data[:-2200])
        budget = listener.dispatcher.budget
        self.assertEqual((budget.used, budget.spooled), (800, 0))
        proto.dataReceived(data[-2200:-1400])
        self.assertEqual((budget.used, budget.spooled), (0, 1))
        proto.dataReceived(data[-1400:])
        self.assertTrue(transport.value().endswith(b"\r\n\r\n" + b"a" * 3000))
        self.assertEqual((budget.used, budget.fds.spools), (0, 0))

    def test_the_listener_budget_is_shared_by_its_connections(self) -> None:
        """Each connection under max_buffer_bytes, together over
        max_listener_buffer_bytes: the body that does not fit is spooled."""
        listener = make_listener(native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=1000, max_listener_buffer_bytes=1500)
        first, _ = connect(listener)
        second, _ = connect(listener)
        first.dataReceived(_post(1, 2000) + record(FCGI_STDIN, 1, b"x" * 900))
        second.dataReceived(_post(1, 2000) + record(FCGI_STDIN, 1, b"y" * 900))
        budget = listener.dispatcher.budget
        self.assertEqual((budget.used, budget.spooled), (900, 1))
        self.assertIsNone(first.requests[1].spool)
        self.assertIsNotNone(second.requests[1].spool)

    def test_memory_is_given_back_when_the_request_ends(self) -> None:
        """A connection that goes away gives its buffered bytes back to the budget."""
        listener = make_listener(native="tests.listeners.apps:echo_native")
        proto, _ = connect(listener)
        proto.dataReceived(_post(1, 5000) + record(FCGI_STDIN, 1, b"x" * 4000))
        self.assertEqual(listener.dispatcher.budget.used, 4000)
        proto.connectionLost(None)
        self.assertEqual(listener.dispatcher.budget.used, 0)

    def test_a_body_that_cannot_be_spooled_is_answered_503(self) -> None:
        """No descriptor to spare for a spool file: 503 with Retry-After, not RAM."""
        listener = make_listener(native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=100, fds=FdLimits(limit=64))
        listener.dispatcher.budget.fds.spools = 16  # half the reserve of 32 in use
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, 3000) + record(FCGI_STDIN, 1, b"x" * 200))
        out = stdout_of(transport.value())
        self.assertTrue(out.startswith(b"Status: 503 "), out)
        self.assertIn(b"Retry-After: 10\r\n", out)
        self.assertEqual(listener.dispatcher.budget.used, 0)
        self.assertEqual(listener.dispatcher.snapshot()["spool_failed"], 1)

    def test_a_spool_that_fails_to_write_is_answered_503(self) -> None:
        """A body already on disk whose next bytes cannot be written (the disk is full):
        503, and its spool file closed."""
        listener = make_listener(native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=100)
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, 3000) + record(FCGI_STDIN, 1, b"x" * 200))
        spool = proto.requests[1].spool
        spool.file.close()
        spool.file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 - writes: ENOSPC
        proto.dataReceived(record(FCGI_STDIN, 1, b"y" * 200))
        out = stdout_of(transport.value())
        self.assertTrue(out.startswith(b"Status: 503 "), out)
        budget = listener.dispatcher.budget
        self.assertEqual((budget.used, budget.fds.spools, budget.spool_failed), (0, 0, 1))
        self.assertEqual((budget.fds.idle_spools, spool.file), (0, None))  # not kept

    def test_wsgi_input_reads_the_spool_then_what_arrives_later(self) -> None:
        """A body partly spooled before the app started reads as one stream."""

        class Partial:
            _hold_paused = False
            body_complete = False

            def __init__(self, spool: Spool) -> None:
                self.spool = spool
                self.body: list[bytes] = []

            def _pause_input(self) -> None:
                pass

            def _resume_input(self) -> None:
                pass

        spool = Spool(BodyBudget(fds=FdLimits(limit=1000)))
        spool.write(b"line one\nline tw")
        stream = StreamingInput(Partial(spool), lambda f, *a: f(*a))  # type: ignore[arg-type]
        stream.feed(b"o\nrest")
        stream.feed_eof()
        self.assertEqual(stream.readline(), b"line one\n")
        self.assertEqual(stream.readline(), b"line two\n")
        self.assertEqual(stream.read(), b"rest")


class SpoolReuseTests(SynchronousTestCase):
    """A spool file whose body is done with is overwritten by the next bodies, for
    SPOOL_REUSE_FOR seconds (a new file costs the kernel a page, buffer heads and a block
    reservation per 4 KiB, and freeing them at the close)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fds = FdLimits(limit=1000)
        self.budget = BodyBudget(per_listener=10, fds=self.fds, clock=self.clock)

    def test_the_next_body_overwrites_the_kept_file_and_reads_only_itself(self) -> None:
        """The second body goes to the first one's file, and reads back as itself though
        shorter (the first body's tail is cut off)."""
        first = spooled(self.budget, b"a" * 100)
        file = spool_file_of(first)
        first.close()
        self.assertEqual((self.fds.spools, self.fds.idle_spools, file.closed), (0, 1, False))
        second = spooled(self.budget, b"b" * 30)
        self.assertIs(spool_file_of(second), file)
        self.assertEqual((self.fds.spools, self.fds.idle_spools, self.budget.spooled),
                         (1, 0, 2))
        assert second.spool is not None
        self.assertEqual(second.spool.read_all(), b"b" * 30)

    def test_a_kept_file_is_closed_before_the_kernel_would_write_it_back(self) -> None:
        """SPOOL_REUSE_FOR seconds after its creation a kept file is closed (dirty pages
        go to the disk after 30 s by default; a file closed before never gets there),
        and the next body gets a new file."""
        body = spooled(self.budget, b"a" * 100)
        file = spool_file_of(body)
        self.clock.advance(4)
        body.close()
        self.clock.advance(SPOOL_REUSE_FOR - 4.5)
        self.assertEqual((self.fds.idle_spools, file.closed), (1, False))
        self.clock.advance(0.5)
        self.assertEqual((self.fds.idle_spools, file.closed, self.clock.getDelayedCalls()),
                         (0, True, []))
        self.assertIsNot(spool_file_of(spooled(self.budget, b"b" * 100)), file)

    def test_a_file_given_back_past_its_reuse_time_is_closed(self) -> None:
        """A kept file reused near the end of its time is closed when its second body is
        done with, not kept again."""
        first = spooled(self.budget, b"a" * 100)
        file = spool_file_of(first)
        first.close()
        self.clock.advance(SPOOL_REUSE_FOR - 1)
        second = spooled(self.budget, b"b" * 100)
        self.assertIs(spool_file_of(second), file)
        self.clock.advance(1)
        second.close()
        self.assertEqual((self.fds.spools, self.fds.idle_spools, file.closed), (0, 0, True))

    def test_at_most_keep_spools_files_are_kept(self) -> None:
        """Bodies done with at once keep KEEP_SPOOLS files; the others are closed."""
        bodies = [spooled(self.budget, b"x" * 100) for _ in range(KEEP_SPOOLS + 2)]
        files = [spool_file_of(body) for body in bodies]
        for body in bodies:
            body.close()
        self.assertEqual((self.fds.spools, self.fds.idle_spools), (0, KEEP_SPOOLS))
        self.assertEqual([file.closed for file in files],
                         [False] * KEEP_SPOOLS + [True, True])

    def test_kept_files_count_against_the_spool_descriptors(self) -> None:
        """A kept file holds one of the descriptors spool files may have (half the fd
        reserve): another listener of the process cannot open a new spool file then,
        this one reuses its kept file."""
        fds = FdLimits(limit=64)  # reserve 32: 16 spool files
        budget = BodyBudget(per_listener=10, fds=fds, clock=self.clock)
        other = BodyBudget(per_listener=10, fds=fds, clock=self.clock)
        spooled(budget, b"a" * 100).close()
        fds.spools = fds.max_spools - 1  # the other spool files of the process
        self.assertEqual((budget.can_spool(), other.can_spool()), (True, False))
        with self.assertRaises(OSError):
            spooled(other, b"b" * 100)
        self.assertEqual(spooled(budget, b"c" * 100).size, 100)
        self.assertEqual((fds.spools, fds.idle_spools), (fds.max_spools, 0))

    def test_a_stopped_listener_keeps_no_file(self) -> None:
        """close() (the listener stopped) closes the kept files and cancels their timer;
        a body done with afterwards is closed, not kept, until open()."""
        kept = spooled(self.budget, b"a" * 100)
        late = spooled(self.budget, b"b" * 100)
        kept_file, late_file = spool_file_of(kept), spool_file_of(late)
        kept.close()
        self.budget.close()
        late.close()
        self.assertEqual((kept_file.closed, late_file.closed, self.fds.idle_spools,
                          self.clock.getDelayedCalls()), (True, True, 0, []))
        self.budget.open()
        spooled(self.budget, b"c" * 100).close()
        self.assertEqual(self.fds.idle_spools, 1)

    def test_the_app_reads_its_body_then_gives_the_file_back(self) -> None:
        """wsgi.input of a spooled body (Spool.reader) reads it by lines and pieces; the
        file stays the app's after its request ended, and its close() gives it back
        through the reactor (callFromThread) for the next body."""
        body = spooled(self.budget, b"one\ntwo\nthree and the rest")
        posted: list[tuple[Any, tuple[Any, ...]]] = []
        assert body.spool is not None
        stream = body.spool.reader(lambda f, *args: posted.append((f, args)))
        self.assertEqual((stream.readline(), next(stream), stream.read(5), stream.read()),
                         (b"one\n", b"two\n", b"three", b" and the rest"))
        body.close()  # the request ended; the app has not given the file back yet
        self.assertEqual((self.fds.spools, self.fds.idle_spools), (0, 0))
        stream.close()
        [(call, args)] = posted
        call(*args)
        self.assertEqual((self.fds.spools, self.fds.idle_spools), (0, 1))

    def test_a_body_kept_past_its_request_reads_nothing_more(self) -> None:
        """Once given back, the stream reads nothing (ValueError, as a closed file): the
        next body written to the same file is never seen through it."""
        body = spooled(self.budget, b"a" * 100)
        assert body.spool is not None
        stream = body.spool.reader(lambda f, *args: f(*args))
        self.assertEqual(stream.read(10), b"a" * 10)
        body.close()
        stream.close()
        spooled(self.budget, b"secret" * 20)
        self.assertTrue(stream.closed)
        with self.assertRaises(ValueError):
            stream.read()

    def test_fastcgi_writes_the_records_of_one_read_at_once(self) -> None:
        """A spooled body's STDIN records that arrive in one read go to its file in one
        write (nginx sends 32 KiB records: a write each cost 2 ms more per 20 MB)."""
        listener = make_listener(native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=100)
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, 1000) + record(FCGI_STDIN, 1, b"a" * 200))
        spool = proto.requests[1].spool
        writes: list[int] = []
        writev = spool.writev
        spool.writev = lambda pieces: (writes.append(len(pieces)), writev(pieces))
        proto.dataReceived(record(FCGI_STDIN, 1, b"b" * 300) + record(FCGI_STDIN, 1, b"c" * 300)
                           + record(FCGI_STDIN, 1, b"d" * 200) + record(FCGI_STDIN, 1))
        self.assertEqual(writes, [3])
        self.assertEqual(stdout_of(transport.value()).split(b"\r\n\r\n", 1)[1],
                         b"a" * 200 + b"b" * 300 + b"c" * 300 + b"d" * 200)

    def test_a_wsgi_thread_gives_the_file_back_for_the_next_request(self) -> None:
        """A WSGI app in a thread reads its spooled body; once it is done the file is
        kept, and the next request's shorter body, written to it, reads as itself."""
        reactor = ThreadReactor()
        listener = make_listener(reactor, threads=1, max_buffer_bytes=100,
                                 wsgi="tests.listeners.apps:echo_wsgi")
        fds = listener.dispatcher.budget.fds
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, 3000) + record(FCGI_STDIN, 1, b"a" * 3000)
                           + record(FCGI_STDIN, 1))
        reactor.run_posted(lambda: fds.idle_spools == 1)
        self.assertTrue(stdout_of(transport.value()).endswith(b"a" * 3000))
        transport.clear()
        proto.dataReceived(_post(2, 2000) + record(FCGI_STDIN, 2, b"b" * 2000)
                           + record(FCGI_STDIN, 2))
        reactor.run_posted(lambda: fds.idle_spools == 1)
        self.assertEqual(stdout_of(transport.value(), rid=2).split(b"\r\n\r\n", 1)[1],
                         b"b" * 2000)


class BodyBufferTests(SynchronousTestCase):
    """A body as it arrives: in memory within the budget, past it on disk."""

    def test_a_body_over_the_budget_moves_to_disk_and_gives_its_memory_back(self) -> None:
        """The bytes held in memory are written to the spool before the new ones, and
        the budget gets them back; close() deletes the spool."""
        budget = BodyBudget(per_connection=1000, per_listener=10_000,
                            fds=FdLimits(limit=1000))
        conn = ConnectionBuffer()
        body = BodyBuffer(budget, conn)
        body.write(b"a" * 600)
        self.assertEqual((budget.used, conn.used, body.chunks, body.spool),
                         (600, 600, [b"a" * 600], None))
        body.write(b"b" * 600)
        self.assertEqual((budget.used, conn.used, body.chunks, budget.fds.spools),
                         (0, 0, [], 1))
        body.write(b"c")
        assert body.spool is not None
        self.assertEqual((body.spool.read_all(), body.size),
                         (b"a" * 600 + b"b" * 600 + b"c", 1201))
        body.close()
        self.assertEqual((body.spool, budget.fds.spools), (None, 0))

    def test_close_gives_the_memory_back(self) -> None:
        """A body that stayed in memory gives its bytes back to the connection and the
        listener when closed."""
        budget = BodyBudget(fds=FdLimits(limit=1000))
        conn = ConnectionBuffer()
        body = BodyBuffer(budget, conn)
        body.write(b"x" * 10)
        body.write(b"y" * 5)
        self.assertEqual((budget.used, conn.used), (15, 15))
        body.close()
        self.assertEqual((budget.used, conn.used, body.chunks), (0, 0, []))


class RequestIdCapTests(SynchronousTestCase):
    """FCGI_MAX_REQS is enforced per connection, with a 503 nginx relays."""

    def test_request_ids_past_fcgi_max_reqs_get_503_with_retry_after(self) -> None:
        """With max_concurrent 1 and backlog 1 (FCGI_MAX_REQS 2), a third open id
        on one connection is answered 503 with Retry-After, never FCGI_OVERLOADED."""
        listener = make_listener(native="tests.listeners.apps:pending_native",
                                 max_concurrent=1, backlog=1, queue_timeout="3s")
        proto, transport = connect(listener)
        proto.dataReceived(b"".join(_post(rid, 10) for rid in (1, 2, 3)))
        records = parse_records(transport.value())
        self.assertEqual([(t, r) for t, r, _ in records],
                         [(FCGI_STDOUT, 3), (FCGI_STDOUT, 3), (FCGI_END_REQUEST, 3)])
        self.assertTrue(records[0][2].startswith(b"Status: 503 Service Unavailable\r\n"))
        self.assertIn(b"Retry-After: 3\r\n", records[0][2])
        self.assertEqual(records[2][2][4], 0)  # FCGI_REQUEST_COMPLETE
        self.assertEqual(sorted(proto.requests), [1, 2])
        self.assertEqual(listener.dispatcher.rejected_503, 1)


class OutputPausedTests(SynchronousTestCase):
    """A peer that reads none of its answers gets nothing more read nor answered."""

    def test_input_is_paused_while_the_output_is_paused(self) -> None:
        """pauseProducing (the transport's buffer is full) stops reading the peer;
        resumeProducing reads it again."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_requests_read_while_paused_wait_for_the_peer_to_read(self) -> None:
        """Requests parsed while the output is paused are answered only on resume."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        proto.pauseProducing()
        proto.dataReceived(request(1) + request(2))
        self.assertEqual(transport.value(), b"")
        proto.resumeProducing()
        self.assertEqual(stdout_of(transport.value(), 2).split(b"\r\n\r\n", 1)[1],
                         b"Hello, world!\n")

    def test_a_big_answer_is_not_copied_while_the_peer_does_not_read(self) -> None:
        """A 1 MiB answer goes out a record at a time: paused after the first, the rest
        waits as the app's own bytes; resumed, the whole answer arrives in order."""
        listener = make_listener(native="tests.listeners.apps:big_native")
        proto, transport = connect(listener)
        real_write = transport.write

        def write(data: Any) -> None:  # a transport whose buffer fills at once
            real_write(bytes(data))
            proto.pauseProducing()

        transport.write = write  # type: ignore[method-assign]
        proto.dataReceived(request(1))
        self.assertLess(len(transport.value()), 70_000)
        self.assertIs(proto._out[0][1].obj, apps.BIG)  # the app's bytes, not a copy
        for _ in range(40):
            proto.resumeProducing()
        records = parse_records(transport.value())
        self.assertEqual(records[-1][:2], (FCGI_END_REQUEST, 1))
        self.assertEqual(len(stdout_of(transport.value()).split(b"\r\n\r\n", 1)[1]),
                         1024 * 1024)

    def test_a_peer_that_never_reads_is_cut_off_after_send_timeout(self) -> None:
        """Paused for send_timeout without reading anything: the connection is aborted."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:hello_native",
                                 send_timeout="5s")
        proto, transport = connect(listener)
        proto.pauseProducing()
        for _ in range(4):
            clock.advance(1)
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(listener.snapshot()["timed_out"]["send"], 1)


class ConnectionCapTests(SynchronousTestCase):
    """Connections stay below the fd limit: past the cap, accept and close."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def _refusal_lines(self) -> list[str]:
        return [e["log_format"] for e in self.events if "accepted and closed" in
                str(e.get("log_format", ""))]

    def test_the_default_cap_leaves_a_reserve_below_the_fd_limit(self) -> None:
        """A quarter of the fd limit (at least 32) is kept for the app's own files."""
        self.assertEqual([FdLimits(limit=n).max_connections for n in (1024, 256, 64)],
                         [768, 192, 32])

    def test_past_max_connections_a_connection_is_refused_and_logged_once_a_minute(
            self) -> None:
        """Past the cap buildProtocol refuses (the port closes the socket); one log line
        a minute gives the count; once a connection closes, connections are served."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:hello_native",
                                 max_connections=2)
        factory = listener.factory
        first, _ = connect(listener)
        connect(listener)
        self.assertEqual([factory.buildProtocol(None) for _ in range(5)], [None] * 5)
        self.assertEqual((factory.refused, len(self._refusal_lines())), (5, 1))
        clock.advance(60)
        self.assertEqual(len(self._refusal_lines()), 2)
        self.assertEqual(self.events[-1]["refused"], 4)
        first.connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(None))
        self.assertEqual(listener.snapshot()["refused"], 5)

    def test_the_cap_counts_every_listener_of_the_process(self) -> None:
        """Two listeners sharing a limit of 40 fds (reserve 32) hold 8 connections
        together."""
        fds = FdLimits(limit=40)
        one = make_listener(native="tests.listeners.apps:hello_native", fds=fds)
        two = make_listener(native="tests.listeners.apps:hello_native", fds=fds,
                            protocol="scgi", endpoint="tcp:0")
        for _ in range(4):
            connect(one)
            connect(two)
        self.assertIsNone(one.factory.buildProtocol(None))
        self.assertIsNone(two.factory.buildProtocol(None))

    def test_twisted_emfile_lines_are_counted_not_logged(self) -> None:
        """Twisted's accept loop logs three lines per connection it closes on EMFILE:
        on a listener's port they become a count in the once-a-minute line."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        port = tcp.Port(0, listener.factory)
        listener.factory.quiet_accept_errors(port)
        for _ in range(1000):
            port._logger.info("EMFILE encountered; releasing reserved file descriptor.")
            port._logger.info("EMFILE recovery: Closed socket from {address}", address="x")
            port._logger.info("Re-reserving EMFILE recovery file descriptor.")
        self.assertEqual([e for e in self.events
                          if "EMFILE recovery" in str(e.get("log_format"))], [])
        self.assertEqual(listener.factory.accept_errors, 1000)
        self.assertEqual(len(self._refusal_lines()), 1)


class CountersTests(SynchronousTestCase):
    """The hardening counters reach `daemonapp status` and the Prometheus text."""

    def test_snapshot_and_metrics_carry_the_new_counters(self) -> None:
        """timed_out, bad_request_400, spooled and refused are in both."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=10, max_connections=1, idle_timeout="1s")
        proto, _ = connect(listener)
        proto.dataReceived(_post(1, 100) + record(FCGI_STDIN, 1, b"x" * 20))
        proto.dataReceived(record(FCGI_STDIN, 1))  # answered: idle from now on
        listener.factory.buildProtocol(None)  # refused
        clock.advance(3)
        snap = listener.snapshot()
        self.assertEqual((snap["timed_out"], snap["spooled"], snap["refused"],
                          snap["bad_request_400"]),
                         ({"header": 0, "body": 0, "idle": 1, "send": 0}, 1, 1, 0))
        text = render_metrics({"state": "running", "listeners": [snap]}).decode()
        for line in ('daemonapp_listener_timed_out_total{listener="%s",waiting="idle"} 1.0',
                     'daemonapp_listener_spooled_total{listener="%s"} 1.0',
                     'daemonapp_listener_refused_total{listener="%s"} 1.0',
                     'daemonapp_listener_bad_request_400_total{listener="%s"} 0.0'):
            self.assertIn(line % snap["name"], text)


class LargeReadTests(SynchronousTestCase):
    """While a body of BODY_READ_SIZE or more arrives, the socket is read in pieces of
    that size (a 20 MB upload: ~80 turns of the reactor, not ~320); then as before."""

    def test_fastcgi_reads_large_pieces_until_the_body_ends(self) -> None:
        listener = make_listener(native="tests.listeners.apps:echo_native")
        proto, transport = connect(listener)
        proto.dataReceived(_post(1, BODY_READ_SIZE) + record(FCGI_STDIN, 1, b"x" * 100))
        self.assertEqual(transport.bufferSize, BODY_READ_SIZE)
        proto.dataReceived(record(FCGI_STDIN, 1))
        self.assertNotIn("bufferSize", vars(transport))
        proto.dataReceived(_post(2, 1000))
        self.assertNotIn("bufferSize", vars(transport))

    def test_scgi_reads_large_pieces_for_a_large_body(self) -> None:
        from tests.listeners.test_scgi import scgi_request

        listener = make_listener(protocol="scgi", native="tests.listeners.apps:echo_native")
        small, small_transport = connect(listener)
        small.dataReceived(scgi_request(b"x" * 1000)[:-990])
        self.assertNotIn("bufferSize", vars(small_transport))
        proto, transport = connect(listener)
        proto.dataReceived(scgi_request(b"x" * (BODY_READ_SIZE + 10))[:-BODY_READ_SIZE])
        self.assertEqual(transport.bufferSize, BODY_READ_SIZE)

    def test_http_reads_large_pieces_until_the_body_ends(self) -> None:
        listener = make_listener(protocol="http", native="tests.listeners.apps:echo_native")
        proto, transport = connect(listener)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\nabc\r\n")
        self.assertEqual(transport.bufferSize, BODY_READ_SIZE)
        proto.dataReceived(b"0\r\n\r\n")
        self.assertNotIn("bufferSize", vars(transport))
        self.assertTrue(transport.value().endswith(b"abc"))
