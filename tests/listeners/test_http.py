"""The HTTP listener (twisted.web) feeding the shared adapters."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners import budget as budget_module
from daemonapp.listeners.budget import FdLimits
from tests.listeners import apps
from tests.listeners.helpers import NonReader, ThreadReactor, connect, make_listener


def _serve(data: bytes, peer: object = None, **options: object) -> StringTransport:
    options.setdefault("native", "tests.listeners.apps:echo_native")
    listener = make_listener(MemoryReactorClock(), protocol="http", **options)
    peer = peer or IPv4Address("TCP", "127.0.0.1", 5555)
    channel = listener.factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport


class HTTPTests(SynchronousTestCase):
    def test_native_answer(self) -> None:
        """A native handler's answer is sent as an HTTP response."""
        out = _serve(b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc").value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"X-Path: /p\r\n", out)
        self.assertTrue(out.endswith(b"\r\n\r\nabc"))

    def test_unix_peer_wsgi(self) -> None:
        """A WSGI app works for a UNIX-socket peer (twisted.web.wsgi's .host trap)."""
        out = _serve(b"GET /u HTTP/1.1\r\nHost: h\r\nX-Test: 1\r\n\r\n",
                     peer=UNIXAddress(None), native=None,
                     wsgi="tests.listeners.apps:environ_wsgi", threads=0).value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"PATH_INFO=/u\n", out)
        self.assertIn(b"HTTP_X_TEST=1\n", out)

    def test_body_over_the_limit_gets_413(self) -> None:
        """A Content-Length over max_body_bytes is answered 413."""
        out = _serve(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n" + b"x" * 20,
                     max_body_bytes=10).value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "))

    def test_allow_from_refuses_other_peers(self) -> None:
        """A tcp peer outside allow_from gets no protocol (the connection is refused)."""
        listener = make_listener(protocol="http", native="tests.listeners.apps:echo_native",
                                 allow_from=["10.0.0.0/8"])
        self.assertIsNone(listener.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertIsNotNone(listener.factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1)))
        self.assertEqual(listener.snapshot()["denied"], 1)

    def test_headers_over_the_limit_get_431(self) -> None:
        """Headers over max_param_bytes are answered 431 and the connection closes."""
        transport = _serve(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * 300 + b"\r\n\r\n",
                           max_param_bytes=200)
        self.assertTrue(transport.value().startswith(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_huge_content_length_gets_413_at_once(self) -> None:
        """Content-Length over max_body_bytes: 413 right after the headers, no 100 Continue.

        Then the write side is closed and the rest of the body is dropped.
        """
        transport = _serve(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                           b"Content-Length: 100000000000000\r\n\r\n" + b"x" * 1000,
                           max_body_bytes=10)
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), out)
        self.assertNotIn(b"100 Continue", out)
        self.assertTrue(out.endswith(b"\r\n\r\nRequest body too large\n"))
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_growing_past_the_limit_gets_413_at_once(self) -> None:
        """A chunked body is answered 413 as soon as it grows past max_body_bytes."""
        transport = _serve(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"8\r\n12345678\r\n8\r\n12345678\r\n", max_body_bytes=10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"))

    def test_chunked_body_reaches_the_app(self) -> None:
        """A chunked body is decoded; the app sees its length and input_terminated."""
        out = _serve(b"POST /p?mode=readall HTTP/1.1\r\nHost: h\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n",
                     native=None, wsgi="tests.listeners.apps:conformance_wsgi",
                     threads=0).value()
        self.assertTrue(out.endswith(
            b"\r\n\r\n3 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad True"),
            out)

    def test_multipart_body_is_left_to_the_app(self) -> None:
        """twisted.web does not parse form bodies itself (its parser answered some 400)."""
        body = b"--XYZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--XYZ--\r\n"
        out = _serve(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Type: multipart/form-data\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body)).value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\n" + body))


class NeverReadTests(SynchronousTestCase):
    """A client that pipelines GETs and reads none of its answers (issue 14: +594 MiB)."""

    def _channel(self) -> tuple[Any, NonReader]:
        listener = make_listener(MemoryReactorClock(), protocol="http",
                                 native="tests.listeners.apps:big_native")
        peer = IPv4Address("TCP", "127.0.0.1", 5555)
        channel = listener.factory.buildProtocol(peer)
        transport = NonReader(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def test_no_byte_is_read_while_the_client_reads_no_answer(self) -> None:
        """Once the transport's buffer is full the connection is no longer read (twisted.web
        kept reading while a request was handled and buffered every pipelined GET)."""
        channel, transport = self._channel()
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n" * 3)
        self.assertTrue(transport.full)
        self.assertEqual(transport.producerState, "paused")

    def test_a_big_answer_is_written_a_piece_at_a_time(self) -> None:
        """The 1 MiB answer waits as the app's bytes: the transport holds a piece or two;
        the client reading, every answer arrives whole and in order."""
        channel, transport = self._channel()
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n" * 2)
        self.assertLess(transport.unread(), 200_000)
        for _ in range(100):
            transport.drain()
        out = transport.value()
        self.assertEqual(out.count(b"HTTP/1.1 200 OK\r\n"), 2)
        self.assertEqual(len(out.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1 200")[0]),
                         1024 * 1024)
        self.assertTrue(out.endswith(apps.BIG[-100:]))
        self.assertEqual(transport.producerState, "producing")

    def test_a_client_that_never_reads_is_cut_off_after_send_timeout(self) -> None:
        """send_timeout (nginx's) applies to HTTP too: twisted.web's own timeout is off
        while a request is handled, so the connection stayed open for ever."""
        listener = make_listener(MemoryReactorClock(), protocol="http",
                                 native="tests.listeners.apps:big_native", send_timeout="5s")
        channel, transport = connect(listener, NonReader())
        channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        listener.reactor.pump([1.0] * 4)
        self.assertFalse(transport.disconnected)
        listener.reactor.pump([1.0] * 2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(listener.snapshot()["timed_out"]["send"], 1)


class BodyFileTests(SynchronousTestCase):
    """HTTP bodies are kept as FastCGI and SCGI keep them: in memory within the budget,
    past it in a spool file; twisted.web's own temporary file is never made."""

    def _channel(self, listener: Any) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "127.0.0.1", 5555)
        channel = listener.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def _budgeted(self) -> tuple[FdLimits, Any]:
        """An HTTP listener with a 1,000-byte memory budget and its fd limits (reserve 50:
        25 spool files at most)."""
        fds = FdLimits(limit=200)
        listener = make_listener(MemoryReactorClock(), protocol="http", fds=fds,
                                 native="tests.listeners.apps:echo_native",
                                 max_buffer_bytes=1000)
        return fds, listener

    def test_a_body_announced_but_not_sent_holds_no_file(self) -> None:
        """123 chunked POSTs that sent no body filled a 256-fd table with twisted.web's
        temporary files (the daemons' open() and the status socket failed); now such a
        request holds no descriptor."""
        fds = FdLimits(limit=200)  # reserve 50: 25 spool files at most
        listener = make_listener(MemoryReactorClock(), protocol="http", fds=fds,
                                 native="tests.listeners.apps:echo_native")
        chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for _ in range(30):
            channel, transport = self._channel(listener)
            channel.dataReceived(chunked)
            self.assertEqual(transport.value(), b"")
        self.assertEqual(fds.spools, 0)

    def test_a_big_body_is_spooled_in_memory_up_to_the_budget(self) -> None:
        """A body within max_buffer_bytes stays in memory (counted); the one that goes over
        it moves to a spool file, whose descriptor is given back with the request."""
        fds, listener = self._budgeted()
        budget = listener.dispatcher.budget
        channel, transport = self._channel(listener)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1500\r\n\r\n"
                             + b"a" * 800)
        self.assertEqual((budget.used, fds.spools), (800, 0))
        channel.dataReceived(b"b" * 300)
        self.assertEqual((budget.used, fds.spools, budget.spooled), (0, 1, 1))
        channel.dataReceived(b"c" * 400)
        self.assertTrue(transport.value().endswith(b"\r\n\r\n" + b"a" * 800 + b"b" * 300
                                                   + b"c" * 400))
        self.assertEqual((budget.used, fds.spools), (0, 0))

    def test_a_body_declared_over_the_budget_goes_to_disk_once_a_part_is_in(self) -> None:
        """A Content-Length over max_buffer_bytes: spooled once DECLARED_SPILL_AFTER
        bytes are in (no spool file for a peer that declares much and sends little)."""
        self.patch(budget_module, "DECLARED_SPILL_AFTER", 100)
        fds, listener = self._budgeted()
        budget = listener.dispatcher.budget
        channel, transport = self._channel(listener)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1500\r\n\r\n"
                             + b"a" * 10)
        self.assertEqual((budget.used, fds.spools, budget.spooled), (10, 0, 0))
        channel.dataReceived(b"b" * 90)
        self.assertEqual((budget.used, fds.spools, budget.spooled), (0, 1, 1))
        channel.dataReceived(b"b" * 1400)
        self.assertTrue(transport.value().endswith(b"\r\n\r\n" + b"a" * 10 + b"b" * 1490))
        self.assertEqual((budget.used, fds.spools), (0, 0))

    def test_a_body_that_cannot_be_spooled_is_answered_503(self) -> None:
        """Over the budget with half the fd reserve taken by spools: 503 at once for a
        Content-Length over max_buffer_bytes, and when a chunked body outgrows it."""
        fds, listener = self._budgeted()
        fds.spools = fds.max_spools
        channel, transport = self._channel(listener)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1500\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        channel, transport = self._channel(listener)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\n3e8\r\n" + b"x" * 1000 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"1\r\nx\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertEqual(listener.snapshot()["spool_failed"], 2)
        self.assertEqual((listener.dispatcher.budget.used, fds.spools), (0, fds.max_spools))

    def test_a_client_gone_mid_body_gives_the_memory_back(self) -> None:
        """The budget counted for a body is given back when its client leaves."""
        listener = make_listener(MemoryReactorClock(), protocol="http",
                                 native="tests.listeners.apps:echo_native")
        channel, _transport = self._channel(listener)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1500\r\n\r\n"
                             + b"a" * 800)
        self.assertEqual(listener.dispatcher.budget.used, 800)
        channel.connectionLost(None)
        self.assertEqual(listener.dispatcher.budget.used, 0)

    def test_an_empty_chunked_body_is_answered(self) -> None:
        fds = FdLimits(limit=200)
        listener = make_listener(MemoryReactorClock(), protocol="http", fds=fds,
                                 native="tests.listeners.apps:echo_native")
        channel, transport = self._channel(listener)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(fds.spools, 0)


class ClientGoneTests(SynchronousTestCase):
    def test_the_body_file_is_not_closed_under_the_app(self) -> None:
        """A client that leaves while the app has not read its 200 KB body yet: twisted.web
        closed the body's temporary file under the app ("ValueError: read of closed file"
        from wsgi.input.read(), bench/README.md's uploads section). The app reads the body
        it was given; its answer goes nowhere."""
        apps.GATE = threading.Event()
        apps.READ_OUTCOME.clear()
        reactor = ThreadReactor()
        listener = make_listener(reactor, protocol="http", threads=1,
                                 wsgi="tests.listeners.apps:gated_reading_wsgi")
        peer = IPv4Address("TCP", "127.0.0.1", 5555)
        channel = listener.factory.buildProtocol(peer)
        channel.makeConnection(StringTransport(peerAddress=peer))
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n"
                             + b"x" * 200_000)
        channel.connectionLost(Failure(ConnectionDone()))
        apps.GATE.set()
        self.assertTrue(apps.READ_DONE.wait(10))
        self.assertEqual(apps.READ_OUTCOME, ["200000"])
