"""The HTTP listener (twisted.web) feeding the shared adapters."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.listeners.helpers import make_listener


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
