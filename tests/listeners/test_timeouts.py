"""Read timeouts on FastCGI and SCGI connections: header, body and idle (60 s by default)."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.fastcgi import FCGI_PARAMS, FCGI_STDIN, encode_pairs, record
from tests.listeners.helpers import begin, connect, make_listener, params, request


class FastCGITimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def _connect(self, **options: Any) -> tuple[Any, Any, Any]:
        listener = make_listener(self.clock, native="tests.listeners.apps:echo_native",
                                 **options)
        proto, transport = connect(listener)
        return listener, proto, transport

    def test_half_a_header_is_closed_after_header_timeout(self) -> None:
        """Params never completed: closed after 60 s of silence, not before."""
        listener, proto, transport = self._connect()
        proto.dataReceived(begin(1) + record(FCGI_PARAMS, 1, encode_pairs(
            [(b"REQUEST_METHOD", b"GET")])))
        self.clock.pump([1.0] * 59)
        self.assertFalse(transport.disconnecting)
        self.clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(listener.factory.timed_out["header"], 1)

    def test_a_body_that_stops_is_closed_after_body_timeout(self) -> None:
        """A body silent for body_timeout: the connection closes, the request ends."""
        listener, proto, transport = self._connect(body_timeout="10s")
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="10")
                           + record(FCGI_STDIN, 1, b"12345"))
        self.clock.pump([1.0] * 9)
        self.assertFalse(transport.disconnecting)
        self.clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(listener.factory.timed_out["body"], 1)

    def test_each_read_restarts_the_body_timeout(self) -> None:
        """A slow body that keeps coming is not cut."""
        _listener, proto, transport = self._connect(body_timeout="10s")
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="20"))
        for _ in range(20):
            self.clock.pump([1.0] * 8)
            proto.dataReceived(record(FCGI_STDIN, 1, b"x"))
        self.assertFalse(transport.disconnecting)

    def test_idle_keep_alive_is_closed_after_idle_timeout(self) -> None:
        """A keep-alive connection without a request is closed after idle_timeout."""
        listener, proto, transport = self._connect(idle_timeout="30s")
        proto.dataReceived(request(1))
        self.clock.pump([1.0] * 29)
        self.assertFalse(transport.disconnecting)
        self.clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(listener.factory.timed_out["idle"], 1)

    def test_the_sweep_stops_without_connections(self) -> None:
        """No timer stays armed once the last connection is gone."""
        _listener, proto, _transport = self._connect()
        proto.connectionLost(None)
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SCGITimeoutTests(SynchronousTestCase):
    def test_half_a_header_is_closed_after_header_timeout(self) -> None:
        """An SCGI connection that sent half its netstring is closed after 60 s."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="scgi",
                                 native="tests.listeners.apps:echo_native")
        proto, transport = connect(listener)
        proto.dataReceived(b"70:CONTENT_LENGTH\x000\x00")
        clock.pump([1.0] * 59)
        self.assertFalse(transport.disconnecting)
        clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnecting)


class WholeHeaderTests(SynchronousTestCase):
    """header_timeout bounds the whole header, however slowly it trickles in (nginx's
    client_header_timeout); body_timeout stays a bound on silence between reads."""

    def _trickle(self, proto: Any, clock: MemoryReactorClock, data: bytes,
                 transport: Any, seconds: int) -> None:
        for index in range(min(seconds, len(data))):
            if transport.disconnecting:
                return
            proto.dataReceived(data[index:index + 1])
            clock.advance(1.0)

    def test_fastcgi_header_sent_a_byte_a_second_is_closed(self) -> None:
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:echo_native",
                                 header_timeout="10s")
        proto, transport = connect(listener)
        data = request(1, HTTP_X_PAD="x" * 200)
        self._trickle(proto, clock, data, transport, 9)
        self.assertFalse(transport.disconnecting)
        self._trickle(proto, clock, data[9:], transport, 3)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(listener.factory.timed_out["header"], 1)

    def test_fastcgi_header_counts_from_its_first_byte_on_keep_alive(self) -> None:
        """A keep-alive connection idle a while, then a request in one piece: no timeout;
        a request split into records over reads counts from its first byte."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:echo_native",
                                 header_timeout="10s", idle_timeout="60s")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        clock.pump([1.0] * 30)
        data = request(2)
        proto.dataReceived(data[:5])  # half a record header
        clock.pump([1.0] * 8)
        proto.dataReceived(data[5:20])
        clock.pump([1.0] * 1)
        self.assertFalse(transport.disconnecting)
        clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnecting)

    def test_a_fastcgi_body_sent_slowly_is_not_cut(self) -> None:
        """The body's own timeout is silence: a body trickling in keeps going."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:echo_native",
                                 header_timeout="10s", body_timeout="10s")
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="30"))
        for _ in range(30):
            clock.advance(1.0)
            proto.dataReceived(record(FCGI_STDIN, 1, b"x"))
        self.assertFalse(transport.disconnecting)

    def test_scgi_header_counts_from_the_accept(self) -> None:
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="scgi",
                                 native="tests.listeners.apps:echo_native", header_timeout="10s")
        proto, transport = connect(listener)
        self._trickle(proto, clock, b"70:CONTENT_LENGTH\x000\x00SCGI\x001\x00", transport, 9)
        self.assertFalse(transport.disconnecting)
        self._trickle(proto, clock, b"REQUEST_METHOD\x00GET", transport, 3)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(listener.factory.timed_out["header"], 1)

    def test_http_header_sent_a_byte_a_second_is_closed(self) -> None:
        """twisted.web's own timeout counts silence only: the header bound is ours."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="http",
                                 native="tests.listeners.apps:echo_native", header_timeout="10s")
        proto, transport = connect(listener)
        data = b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"x" * 100 + b"\r\n\r\n"
        self._trickle(proto, clock, data, transport, 9)
        self.assertFalse(transport.disconnecting)
        self._trickle(proto, clock, data[9:], transport, 3)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(listener.factory.timed_out["header"], 1)

    def test_http_keep_alive_request_in_one_piece_is_not_cut(self) -> None:
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="http",
                                 native="tests.listeners.apps:echo_native", header_timeout="10s")
        proto, transport = connect(listener)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        clock.pump([1.0] * 30)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        clock.pump([1.0] * 5)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
