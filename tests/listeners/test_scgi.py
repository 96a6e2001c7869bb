"""The SCGI protocol on a StringTransport."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from daemonapp import cgi_frontend
from daemonapp.listeners import scgi
from tests.listeners import apps
from tests.listeners.helpers import NonReader, ThreadReactor, connect, make_listener


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
        """A netstring length that is not a number is answered 400, then closed."""
        self.proto.dataReceived(b"12x:")
        self.assertTrue(self.transport.disconnecting)

    def test_length_not_in_ascii_digits_gets_400(self) -> None:
        """CONTENT_LENGTH "²" (str.isdigit() says yes, int() says no) is answered 400."""
        header = "CONTENT_LENGTH\x00\u00b2\x00SCGI\x001\x00".encode("latin-1")
        self.proto.dataReceived(b"%d:%s," % (len(header), header))
        self.assertTrue(self.transport.value().startswith(b"Status: 400 Bad Request\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_netstring_length_not_in_ascii_digits_gets_400(self) -> None:
        """A netstring length in other digits ("²" in UTF-8) is answered 400."""
        self.proto.dataReceived("\u00b2:".encode())
        self.assertTrue(self.transport.value().startswith(b"Status: 400 Bad Request\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_unbuffered_nginx_length_is_the_clients(self) -> None:
        """CONTENT_LENGTH 0 with HTTP_CONTENT_LENGTH 4 (nginx, scgi_request_buffering off,
        before nginx/nginx#1118): the body is the client's 4 bytes."""
        self.proto.dataReceived(scgi_request(REQUEST_METHOD="POST", HTTP_CONTENT_LENGTH="4"))
        self.proto.dataReceived(b"body")
        self.assertTrue(self.transport.value().endswith(b"Content-Length: 4\r\n\r\nbody"))

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


class LingerTests(SynchronousTestCase):
    """Answered before its body ended, the connection closes once the body is in (or
    after LINGER_TIMEOUT): closing under the web server's writes fails its request."""

    def _early_413(self) -> tuple[Any, Any, Any, bytes]:
        listener = make_listener(protocol="scgi", native="tests.listeners.apps:echo_native",
                                 max_body_bytes=3)
        proto, transport = connect(listener)
        data = scgi_request(b"x" * 20, REQUEST_METHOD="POST")
        proto.dataReceived(data[:-15])  # the header and 5 bytes of the body
        self.assertTrue(transport.value().startswith(b"Status: 413 "))
        return listener, proto, transport, data[-15:]

    def test_early_answer_closes_after_the_rest_of_the_body(self) -> None:
        """413 at once; the connection closes when the declared body is all in."""
        _listener, proto, transport, rest = self._early_413()
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(rest[:-1])
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(rest[-1:])
        self.assertTrue(transport.disconnecting)

    def test_a_body_that_never_comes_is_waited_for_a_bounded_time(self) -> None:
        """Without the rest of the body the connection closes after LINGER_TIMEOUT."""
        from daemonapp.listeners.connections import LINGER_TIMEOUT

        listener, _proto, transport, _rest = self._early_413()
        listener.reactor.advance(LINGER_TIMEOUT)
        self.assertTrue(transport.disconnecting)


class FrontendTests(SynchronousTestCase):
    """Requests carrying DAEMONAPP_CGI_FRONTEND=1: whole answers with a length, or nothing."""

    def serve(self, app: str, **options: object) -> tuple[object, StringTransport]:
        listener = make_listener(protocol="scgi", wsgi=app, threads=0, **options)
        return connect(listener)

    def test_the_parameter_name_is_the_frontends(self) -> None:
        """The listener looks for the very parameter the CGI frontend sends."""
        self.assertEqual(scgi.FRONTEND_PARAM.encode(), cgi_frontend.FRONTEND_PARAM)

    def test_streamed_answer_is_sent_whole_with_its_length(self) -> None:
        """A streamed WSGI answer without Content-Length comes as one piece with one."""
        proto, transport = self.serve("tests.listeners.apps:streaming_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET", DAEMONAPP_CGI_FRONTEND="1"))
        self.assertEqual(transport.value(),
                         b"Status: 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 13\r\n\r\none,two,three")
        self.assertTrue(transport.disconnecting)

    def test_an_app_failing_mid_answer_sends_nothing(self) -> None:
        """A WSGI app that raises after streaming a chunk: no byte, the connection aborted."""
        proto, transport = self.serve("tests.listeners.apps:failing_stream_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET", DAEMONAPP_CGI_FRONTEND="1"))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_an_answer_over_the_buffer_limit_sends_nothing(self) -> None:
        """A streamed answer larger than MAX_BUFFERED_ANSWER is dropped: no byte sent."""
        self.patch(scgi, "MAX_BUFFERED_ANSWER", 5)
        proto, transport = self.serve("tests.listeners.apps:streaming_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET", DAEMONAPP_CGI_FRONTEND="1"))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnected)

    def test_the_apps_own_length_is_kept(self) -> None:
        """An answer that declares its Content-Length keeps it, once."""
        proto, transport = self.serve("tests.listeners.apps:hello_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET", DAEMONAPP_CGI_FRONTEND="1"))
        self.assertEqual(transport.value(),
                         b"Status: 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 14\r\n\r\nHello, world!\n")

    def test_head_gets_no_length(self) -> None:
        """A HEAD answer gets no made-up Content-Length: 0."""
        proto, transport = self.serve("tests.listeners.apps:head_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="HEAD", DAEMONAPP_CGI_FRONTEND="1"))
        self.assertEqual(transport.value(),
                         b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n")

    def test_without_the_parameter_a_stream_is_streamed(self) -> None:
        """Other SCGI clients (nginx) get a streamed answer as it comes, without a length."""
        proto, transport = self.serve("tests.listeners.apps:streaming_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET"))
        self.assertEqual(transport.value(),
                         b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\none,two,three")

    def test_a_whole_answer_always_gets_its_length(self) -> None:
        """Without the parameter too, an answer in one piece gets a Content-Length."""
        proto, transport = self.serve("tests.listeners.apps:environ_wsgi")
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET", PATH_INFO="/x"))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertEqual(head, b"Status: 200 OK\r\nContent-Type: text/plain\r\n"
                               b"Content-Length: %d" % len(body))
        self.assertTrue(body.startswith(b"REQUEST_METHOD=GET\n"))


class NeverReadTests(SynchronousTestCase):
    """A peer that reads none of its answer (issue 14: +79 MiB for 20 such peers)."""

    def _answered(self) -> tuple[Any, NonReader]:
        listener = make_listener(protocol="scgi", native="tests.listeners.apps:big_native")
        proto, transport = connect(listener, NonReader())
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET"))
        return proto, transport

    def test_a_big_answer_waits_uncopied_and_the_peer_is_not_read(self) -> None:
        """The 1 MiB answer goes out a piece at a time: paused after the first pieces, the
        rest waits as the app's own bytes and the peer is read no more."""
        proto, transport = self._answered()
        self.assertLess(transport.unread(), 200_000)
        self.assertIs(proto._out[0].obj, apps.BIG)
        self.assertEqual(transport.producerState, "paused")
        self.assertFalse(transport.disconnecting)

    def test_the_whole_answer_arrives_once_read_then_the_connection_closes(self) -> None:
        _proto, transport = self._answered()
        for _ in range(40):
            transport.drain()
        head, body = transport.value().split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: 1048576", head)
        self.assertEqual(body, apps.BIG)
        self.assertTrue(transport.disconnecting)

    def test_a_peer_that_never_reads_is_cut_off_after_send_timeout(self) -> None:
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="scgi", native="tests.listeners.apps:big_native",
                                 send_timeout="5s")
        proto, transport = connect(listener, NonReader())
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET"))
        clock.pump([1.0] * 4)
        self.assertFalse(transport.disconnected)
        clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(listener.snapshot()["timed_out"]["send"], 1)

    def test_a_peer_that_never_reads_the_end_of_its_answer_is_cut_off(self) -> None:
        """The whole answer handed to the transport, the connection closing: Twisted would
        wait for ever for the peer to read the rest; after send_timeout it is aborted."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="scgi", native="tests.listeners.apps:big_native",
                                 send_timeout="5s")
        proto, transport = connect(listener, NonReader())
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET"))
        while not transport.disconnecting:
            transport.drain()  # the peer reads all but the last piece
        clock.pump([1.0] * 4)
        self.assertFalse(transport.disconnected)
        clock.pump([1.0] * 2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(listener.snapshot()["timed_out"]["send"], 1)
        clock.pump([1.0] * 3)
        self.assertEqual(listener.snapshot()["timed_out"]["send"], 1)

    def test_a_slow_reader_is_not_cut_off(self) -> None:
        """send_timeout bounds the time between two reads by the peer (nginx's), not the
        whole answer: a peer emptying the transport's buffer slowly is kept; once it stops,
        it is cut off send_timeout later."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, protocol="scgi", native="tests.listeners.apps:big_native",
                                 send_timeout="60s")
        transport = NonReader()
        # Twisted's write-buffer fields, read by the sweep (the buffer Twisted empties)
        transport.dataBuffer = b"x" * 100_000  # type: ignore[attr-defined]
        transport.offset = 0  # type: ignore[attr-defined]
        transport._tempDataLen = 0  # type: ignore[attr-defined]
        proto, transport = connect(listener, transport)
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET"))
        for _ in range(8):  # 1 KB every 30 s for 240 s
            clock.pump([1.0] * 30)
            transport.offset += 1000
        self.assertFalse(transport.disconnected)
        clock.pump([1.0] * 59)
        self.assertFalse(transport.disconnected)
        clock.pump([1.0] * 3)
        self.assertTrue(transport.disconnected)


class BufferedBodyTests(SynchronousTestCase):
    def test_a_body_still_arriving_holds_no_thread(self) -> None:
        """A body one byte short of its CONTENT_LENGTH holds no WSGI thread (request
        buffering): a normal request on another connection is answered meanwhile."""
        reactor = ThreadReactor()
        listener = make_listener(reactor, protocol="scgi", threads=1,
                                 wsgi="tests.listeners.apps:hello_wsgi")
        self.addCleanup(listener.app.stop)
        for _ in range(3):  # more endless bodies than threads
            greedy, _transport = connect(listener)
            greedy.dataReceived(scgi_request(b"x" * 1000, REQUEST_METHOD="POST")
                                .replace(b"CONTENT_LENGTH\x001000", b"CONTENT_LENGTH\x001001"))
        self.assertEqual((listener.in_flight, listener.dispatcher.queued), (0, 0))
        proto, transport = connect(listener)
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET"))
        reactor.run_posted(lambda: transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"Hello, world!\n"))
