"""The WSGI adapter: environ, start_response, write, streaming input, threads."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.fastcgi import FCGI_STDIN, record
from tests.listeners import apps
from tests.listeners.helpers import (
    ThreadReactor,
    begin,
    connect,
    make_listener,
    params,
    request,
    stdin,
    stdout_of,
)

#: what conformance_wsgi answers for the body b"abc": size, SHA-256, input_terminated
_ANSWER_ABC = b"3 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad True"


def _serve(app: str, data: bytes, **options: object) -> bytes:
    listener = make_listener(wsgi=f"tests.listeners.apps:{app}", threads=0, **options)
    proto, transport = connect(listener)
    proto.dataReceived(data)
    return bytes(transport.value())


class OnLoopTests(SynchronousTestCase):
    def test_environ(self) -> None:
        """The environ has the CGI params and the wsgi.* keys PEP 3333 asks for."""
        out = stdout_of(_serve("environ_wsgi", request(
            1, body=b"abc", PATH_INFO="/p", QUERY_STRING="a=1", SERVER_PROTOCOL="HTTP/1.1",
            HTTP_X_TEST="yes")))
        self.assertEqual(out.split(b"\r\n\r\n", 1)[1],
                         b"REQUEST_METHOD=POST\nSCRIPT_NAME=\nPATH_INFO=/p\nQUERY_STRING=a=1\n"
                         b"CONTENT_LENGTH=3\nSERVER_PROTOCOL=HTTP/1.1\nwsgi.url_scheme=http\n"
                         b"HTTP_X_TEST=yes\n")

    def test_https_scheme(self) -> None:
        """HTTPS=on makes wsgi.url_scheme https."""
        out = stdout_of(_serve("environ_wsgi", request(1, HTTPS="on")))
        self.assertIn(b"wsgi.url_scheme=https\n", out)

    def test_write_and_iterable_stream_in_order(self) -> None:
        """write() output comes first, then the iterable's chunks; empty chunks are skipped."""
        out = stdout_of(_serve("streaming_wsgi", request(1)))
        self.assertEqual(out, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\none,two,three")

    def test_exception_before_start_response_gets_500(self) -> None:
        """An app raising before any output is answered 500."""
        out = stdout_of(_serve("failing_wsgi", request(1)))
        self.assertTrue(out.startswith(b"Status: 500 Internal Server Error\r\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_exc_info_replaces_headers_before_output(self) -> None:
        """start_response with exc_info before output replaces status and headers."""
        out = stdout_of(_serve("exc_info_wsgi", request(1)))
        self.assertEqual(out, b"Status: 500 Internal Server Error\r\n"
                              b"Content-Type: text/plain\r\n\r\nreplaced")

    def test_close_is_called(self) -> None:
        """The result's close() is called after it was sent."""
        apps.CLOSED.clear()
        out = stdout_of(_serve("closing_wsgi", request(1)))
        self.assertTrue(out.endswith(b"\r\n\r\nab"))
        self.assertEqual(apps.CLOSED, ["closed"])

    def test_wsgi_errors_logged(self) -> None:
        """Text written to wsgi.errors goes to the log, one event per line."""
        from twisted.logger import globalLogPublisher

        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            _serve("errors_wsgi", request(1))
        finally:
            globalLogPublisher.removeObserver(events.append)
        texts = [e.get("text") for e in events if e.get("log_format", "").startswith(
            "wsgi.errors")]
        self.assertEqual(texts, ["first line", "second"])

    def test_readline_iteration(self) -> None:
        """wsgi.input can be iterated line by line."""
        out = stdout_of(_serve("readline_wsgi", request(1, body=b"a\nb\nc")))
        self.assertTrue(out.endswith(b"\r\n\r\n3:cb\na\n"))

    def test_content_headers_only_as_cgi_variables(self) -> None:
        """HTTP_CONTENT_TYPE / HTTP_CONTENT_LENGTH from the web server never reach the app.

        wsgiref.validate wraps the app: PEP 3333 wants CONTENT_TYPE and CONTENT_LENGTH.
        """
        out = stdout_of(_serve("conformance_wsgi", request(
            1, body=b"abc", QUERY_STRING="mode=readall", CONTENT_TYPE="text/plain",
            HTTP_CONTENT_TYPE="text/plain", HTTP_CONTENT_LENGTH="3")))
        self.assertEqual(out.split(b"\r\n\r\n", 1)[1], _ANSWER_ABC)

    def test_a_whole_body_without_length_gets_one(self) -> None:
        """A chunked body (no CONTENT_LENGTH) already whole: CONTENT_LENGTH is its size."""
        data = (begin(1) + params(1, REQUEST_METHOD="POST", PATH_INFO="/", CONTENT_LENGTH="",
                                  HTTP_TRANSFER_ENCODING="chunked", HTTP_X_TEST="t")
                + stdin(1, b"abcde"))
        out = stdout_of(_serve("environ_wsgi", data))
        self.assertIn(b"CONTENT_LENGTH=5\n", out)

    def test_params_not_copied_into_os_environ(self) -> None:
        """Request params (HTTP_PROXY) never reach os.environ (httpoxy)."""
        import os

        _serve("environ_wsgi", request(1, HTTP_PROXY="http://evil:1"))
        self.assertNotEqual(os.environ.get("HTTP_PROXY"), "http://evil:1")


class ThreadedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadReactor()

    def _listener(self, app: str, **options: object) -> object:
        options.setdefault("threads", 2)
        listener = make_listener(self.reactor, wsgi=f"tests.listeners.apps:{app}", **options)
        self.addCleanup(listener.app.stop)
        return listener

    def test_hello_in_a_thread(self) -> None:
        """A WSGI app in the pool answers through callFromThread."""
        listener = self._listener("hello_wsgi")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        self.reactor.run_posted(lambda: listener.in_flight == 0)
        self.assertEqual(stdout_of(transport.value()),
                         b"Status: 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 14\r\n\r\nHello, world!\n")

    def test_streaming_input(self) -> None:
        """Without request buffering, the app starts before the body is complete and
        reads it as it arrives."""
        listener = self._listener("echo_wsgi", request_buffering=False)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", PATH_INFO="/e")
                           + record(FCGI_STDIN, 1, b"first-"))
        self.assertEqual(listener.in_flight, 1)
        proto.dataReceived(record(FCGI_STDIN, 1, b"second") + record(FCGI_STDIN, 1))
        self.reactor.run_posted(lambda: listener.in_flight == 0)
        self.assertTrue(stdout_of(transport.value()).endswith(b"\r\n\r\nfirst-second"))

    def test_a_body_still_arriving_holds_no_thread(self) -> None:
        """With request buffering (the default) a request takes a thread only once its
        body is complete: bodies that never end leave the pool to normal requests."""
        listener = self._listener("echo_wsgi", threads=1)
        greedy, _ = connect(listener)
        for rid in (1, 2, 3):  # more endless bodies than threads
            greedy.dataReceived(begin(rid) + params(rid, REQUEST_METHOD="POST",
                                                    CONTENT_LENGTH="1000000")
                                + record(FCGI_STDIN, rid, b"x" * 1000))
        self.assertEqual((listener.in_flight, listener.dispatcher.queued), (0, 0))
        proto, transport = connect(listener)
        proto.dataReceived(request(1, PATH_INFO="/normal"))
        self.reactor.run_posted(lambda: b"X-Path: /normal" in stdout_of(transport.value()))
        self.assertEqual(listener.in_flight, 0)

    def test_a_buffered_body_reaches_the_app_whole(self) -> None:
        """A body that arrived in pieces is read whole by the app once it is complete."""
        listener = self._listener("echo_wsgi")
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", PATH_INFO="/e")
                           + record(FCGI_STDIN, 1, b"first-"))
        self.assertEqual(listener.in_flight, 0)
        proto.dataReceived(record(FCGI_STDIN, 1, b"second") + record(FCGI_STDIN, 1))
        self.reactor.run_posted(lambda: listener.in_flight == 0 and transport.value() != b"")
        self.assertTrue(stdout_of(transport.value()).endswith(b"\r\n\r\nfirst-second"))

    def test_streamed_answer_held_until_the_body_ends(self) -> None:
        """A streamed answer begun before the body ended is sent once the body is complete."""
        listener = self._listener("early_wsgi", request_buffering=False)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST")
                           + record(FCGI_STDIN, 1, b"body"))
        exchange = proto.requests[1]
        self.reactor.run_posted(lambda: exchange._held is not None and exchange._held[2] != [])
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(record(FCGI_STDIN, 1))
        self.reactor.run_posted(lambda: listener.in_flight == 0)
        self.assertEqual(stdout_of(transport.value()),
                         b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nearly,body")

    def test_big_streamed_response(self) -> None:
        """A 1 MiB response written in 16 chunks arrives whole."""
        listener = self._listener("big_wsgi")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        self.reactor.run_posted(lambda: listener.in_flight == 0)
        self.assertTrue(stdout_of(transport.value()).endswith(b"\r\n\r\n" + apps.BIG))

    def _send_while_read(self, proto: Any, transport: Any, pieces: list[bytes]) -> None:
        """Deliver ``pieces`` as a socket would: only while the listener reads (bounded)."""
        for piece in pieces:
            self.reactor.run_posted(lambda: transport.producerState == "producing",
                                    timeout=5)
            proto.dataReceived(piece)

    def test_read_past_the_high_water_mark(self) -> None:
        """read(CONTENT_LENGTH) of a 2 MB body returns it (the peer is not left paused)."""
        listener = self._listener("conformance_wsgi")
        proto, transport = connect(listener)
        body = b"x" * 2_000_000
        pieces = stdin(1, body)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", PATH_INFO="/",
                                             QUERY_STRING="mode=readn",
                                             CONTENT_LENGTH=str(len(body))))
        self._send_while_read(proto, transport,
                              [pieces[pos:pos + 65536] for pos in range(0, len(pieces), 65536)])
        self.reactor.run_posted(lambda: listener.in_flight == 0, timeout=5)
        self.assertEqual(stdout_of(transport.value()).split(b"\r\n\r\n", 1)[1],
                         b"2000000 " + hashlib.sha256(body).hexdigest().encode() + b" True")

    def test_readline_past_the_high_water_mark(self) -> None:
        """readline() on a 2 MB SCGI body without a newline returns the whole body."""
        listener = self._listener("conformance_wsgi", protocol="scgi")
        proto, transport = connect(listener)
        body = b"y" * 2_000_000
        header = (b"CONTENT_LENGTH\x002000000\x00SCGI\x001\x00REQUEST_METHOD\x00POST\x00"
                  b"QUERY_STRING\x00mode=readline\x00")
        proto.dataReceived(b"%d:%s," % (len(header), header))
        self._send_while_read(proto, transport,
                              [body[pos:pos + 65536] for pos in range(0, len(body), 65536)])
        self.reactor.run_posted(lambda: listener.in_flight == 0, timeout=5)
        self.assertEqual(transport.value().split(b"\r\n\r\n", 1)[1],
                         b"2000000 " + hashlib.sha256(body).hexdigest().encode() + b" True")

    def test_timeout_reads_a_paused_peer_again(self) -> None:
        """After a 504, a peer paused for an app that did not read is read again.

        Left paused, the connection never saw the rest of its record nor its peer's
        close: it stayed open, and the next drain waited for it until stop_timeout.
        """
        release = threading.Event()
        self.addCleanup(release.set)
        apps.GATE = release
        listener = self._listener("gated_wsgi", request_timeout="1s", request_buffering=False)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", PATH_INFO="/",
                                             CONTENT_LENGTH="2000000"))
        for _ in range(20):
            proto.dataReceived(record(FCGI_STDIN, 1, b"z" * 65535))
        self.assertEqual(transport.producerState, "paused")
        self.reactor.advance(1)
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 504 "))
        self.assertEqual(transport.producerState, "producing")

    def test_default_max_concurrent_is_threads(self) -> None:
        """Without max_concurrent, a WSGI listener admits as many requests as threads."""
        listener = self._listener("hello_wsgi")
        self.assertEqual(listener.snapshot()["max_concurrent"], 2)


class PoolTests(SynchronousTestCase):
    def test_restart_after_stop(self) -> None:
        """A stopped pool runs work again after start()."""
        import threading

        from daemonapp.listeners.wsgi import WorkerPool

        pool = WorkerPool(2)
        done = threading.Event()
        pool.submit(done.set)
        self.assertTrue(done.wait(10))
        pool.stop()
        pool.start()
        again = threading.Event()
        pool.submit(again.set)
        self.assertTrue(again.wait(10))
        pool.stop()

    def test_work_beyond_size_waits_its_turn(self) -> None:
        """More work than threads is queued and all of it runs."""
        import threading

        from daemonapp.listeners.wsgi import WorkerPool

        pool = WorkerPool(2)
        lock = threading.Lock()
        count = [0]
        finished = threading.Event()

        def work() -> None:
            with lock:
                count[0] += 1
                if count[0] == 20:
                    finished.set()

        for _ in range(20):
            pool.submit(work)
        self.assertTrue(finished.wait(10))
        self.assertEqual(count[0], 20)
        pool.stop()
