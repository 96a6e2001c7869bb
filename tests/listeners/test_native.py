"""Native handlers: the Request type and the shapes of their answers."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.native import Request, normalize_response
from tests.listeners.helpers import connect, make_listener, request, stdout_of


class RequestTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """A Request exposes method, path, query, lower-case headers and the body."""
        req = Request({"REQUEST_METHOD": "PUT", "QUERY_STRING": "a=1", "HTTP_X_TOKEN": "t",
                       "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "2"}, b"hi", "/p")
        self.assertEqual((req.method, req.path, req.query, req.body), ("PUT", "/p", "a=1", b"hi"))
        self.assertEqual(req.headers, {"x-token": "t", "content-type": "text/plain",
                                       "content-length": "2"})


class NormalizeTests(SynchronousTestCase):
    def test_bytes(self) -> None:
        """Bytes are a 200 text/plain answer with Content-Length."""
        self.assertEqual(normalize_response(b"hi"),
                         ("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", "2")], b"hi"))

    def test_tuple_with_int_status_and_dict(self) -> None:
        """(404, dict, str) becomes a status line, pairs, UTF-8 body and a length."""
        self.assertEqual(normalize_response((404, {"X-A": "1"}, "né")),
                         ("404 Not Found", [("X-A", "1"), ("Content-Length", "3")],
                          "né".encode()))

    def test_status_line_kept(self) -> None:
        """A status line string is kept as given."""
        self.assertEqual(normalize_response(("299 Custom", [], b""))[0], "299 Custom")

    def test_status_in_other_digits_raises(self) -> None:
        """A status of "²00" (str.isdigit() says yes) is refused, not sent as a status."""
        self.assertRaises(TypeError, normalize_response, ("\u00b200 OK", [], b""))
        self.assertRaises(TypeError, normalize_response, ("\u00b2", [], b""))

    def test_other_types_raise(self) -> None:
        """Anything else is a TypeError."""
        self.assertRaises(TypeError, normalize_response, 42)


class HandlerTests(SynchronousTestCase):
    def test_handler_failure_is_500(self) -> None:
        """A handler that raises is answered 500 and logged."""
        listener = make_listener(native="tests.listeners.apps:failing_native")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        self.assertTrue(stdout_of(transport.value()).startswith(
            b"Status: 500 Internal Server Error\r\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(listener.snapshot()["errors_500"], 1)

    def test_tuple_answer(self) -> None:
        """(status, headers, body) is sent as given."""
        listener = make_listener(native="tests.listeners.apps:echo_native")
        proto, transport = connect(listener)
        proto.dataReceived(request(1, body=b"xyz", PATH_INFO="/q"))
        self.assertEqual(stdout_of(transport.value()),
                         b"Status: 200 OK\r\nX-Method: POST\r\nX-Path: /q\r\n"
                         b"Content-Length: 3\r\n\r\nxyz")
