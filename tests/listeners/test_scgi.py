"""The SCGI protocol on a StringTransport."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.listeners.helpers import connect, make_listener


def scgi_request(body: bytes = b"", **headers: str) -> bytes:
    """An SCGI request: CONTENT_LENGTH first, SCGI=1, then ``headers``."""
    items = [("CONTENT_LENGTH", str(len(body))), ("SCGI", "1"), *headers.items()]
    header = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in items)
    return str(len(header)).encode() + b":" + header + b"," + body


class SCGITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = make_listener(protocol="scgi",
                                      native="tests.listeners.apps:echo_native",
                                      max_param_bytes=200)
        self.proto, self.transport = connect(self.listener)

    def test_request_answered_and_connection_closed(self) -> None:
        """A request is answered with a CGI response, then the connection closes."""
        self.proto.dataReceived(scgi_request(b"body", REQUEST_METHOD="POST", PATH_INFO="/s"))
        self.assertEqual(self.transport.value(),
                         b"Status: 200 OK\r\nX-Method: POST\r\nX-Path: /s\r\n"
                         b"Content-Length: 4\r\n\r\nbody")
        self.assertTrue(self.transport.disconnecting)

    def test_split_at_every_byte(self) -> None:
        """Byte-by-byte delivery gives the same answer."""
        data = scgi_request(b"body", REQUEST_METHOD="POST", PATH_INFO="/s")
        for index in range(len(data)):
            self.proto.dataReceived(data[index:index + 1])
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\nbody"))

    def test_content_length_must_come_first(self) -> None:
        """Headers not starting with CONTENT_LENGTH close the connection unanswered."""
        header = b"SCGI\x001\x00CONTENT_LENGTH\x000\x00"
        self.proto.dataReceived(str(len(header)).encode() + b":" + header + b",")
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)

    def test_bad_netstring_closes(self) -> None:
        """A netstring length that is not a number closes the connection."""
        self.proto.dataReceived(b"12x:")
        self.assertTrue(self.transport.disconnecting)

    def test_header_over_the_limit_gets_431(self) -> None:
        """A header netstring over max_param_bytes is answered 431, then closed."""
        self.proto.dataReceived(b"500:")
        self.assertTrue(self.transport.value().startswith(
            b"Status: 431 Request Header Fields Too Large\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_body_over_the_limit_gets_413(self) -> None:
        """A CONTENT_LENGTH over max_body_bytes is answered 413."""
        listener = make_listener(protocol="scgi", native="tests.listeners.apps:echo_native",
                                 max_body_bytes=3)
        proto, transport = connect(listener)
        proto.dataReceived(scgi_request(b"four", REQUEST_METHOD="POST"))
        self.assertTrue(transport.value().startswith(b"Status: 413 "))
