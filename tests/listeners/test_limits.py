"""Listener limits: concurrency, backlog, timeouts, max_requests, activity, routing."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.fastcgi import FCGI_ABORT_REQUEST, FCGI_STDIN, record
from daemonapp.listeners.limits import Dispatcher
from tests._processes import (
    free_port,
    listener_load,
    popen_run_logged,
    running,
    wait_until,
    write_file,
)
from tests.listeners import apps
from tests.listeners.helpers import (
    Monitor,
    begin,
    connect,
    make_listener,
    params,
    request,
    stdout_of,
)
from tests.listeners.raw_fcgi import FCGI_APP


class ConcurrencyTests(SynchronousTestCase):
    def setUp(self) -> None:
        apps.PENDING.clear()
        self.clock = MemoryReactorClock()
        self.listener = make_listener(self.clock, native="tests.listeners.apps:pending_native",
                                      max_concurrent=2, backlog=1, queue_timeout="5s")
        self.proto, self.transport = connect(self.listener)

    def test_over_concurrency_and_backlog_gets_503_with_retry_after(self) -> None:
        """Past max_concurrent and backlog, a request is answered 503 with Retry-After."""
        for rid in (1, 2, 3, 4):
            self.proto.dataReceived(request(rid))
        self.assertEqual(len(apps.PENDING), 2)
        self.assertEqual(stdout_of(self.transport.value(), 4),
                         b"Status: 503 Service Unavailable\r\n"
                         b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n\r\n"
                         b"Service Unavailable\n")
        self.assertEqual(self.listener.snapshot()["rejected_503"], 1)
        self.assertFalse(self.transport.disconnecting)

    def test_queued_request_starts_when_a_slot_frees(self) -> None:
        """A queued request runs as soon as a running one ends."""
        for rid in (1, 2, 3):
            self.proto.dataReceived(request(rid))
        self.assertEqual(self.listener.snapshot()["queued"], 1)
        apps.PENDING[0].callback(b"one")
        self.assertEqual(len(apps.PENDING), 3)
        self.assertEqual(self.listener.snapshot()["queued"], 0)
        self.assertEqual(self.listener.in_flight, 2)

    def test_queue_timeout_gets_503(self) -> None:
        """A request queued longer than queue_timeout is answered 503."""
        for rid in (1, 2, 3):
            self.proto.dataReceived(request(rid))
        self.clock.advance(4.9)
        self.assertEqual(stdout_of(self.transport.value(), 3), b"")
        self.clock.advance(0.2)
        self.assertTrue(stdout_of(self.transport.value(), 3).startswith(b"Status: 503 "))
        apps.PENDING[0].callback(b"one")
        self.assertEqual(len(apps.PENDING), 2)

    def test_zero_backlog_rejects_at_once(self) -> None:
        """With backlog 0, a request past max_concurrent is answered 503 immediately."""
        listener = make_listener(self.clock, native="tests.listeners.apps:pending_native",
                                 max_concurrent=1, backlog=0)
        proto, transport = connect(listener)
        proto.dataReceived(request(1) + request(2))
        self.assertTrue(stdout_of(transport.value(), 2).startswith(b"Status: 503 "))


class ReceivingTests(SynchronousTestCase):
    """A request whose body still arrives is counted as receiving, not in flight."""

    def setUp(self) -> None:
        apps.PENDING.clear()
        self.listener = make_listener(native="tests.listeners.apps:pending_native",
                                      max_concurrent=1, backlog=1)
        self.proto, self.transport = connect(self.listener)

    def _counts(self) -> tuple[object, object, object]:
        snap = self.listener.snapshot()
        return snap["receiving"], snap["in_flight"], snap["queued"]

    def _upload(self, rid: int) -> None:
        """A POST of 10 bytes of which 4 arrived."""
        self.proto.dataReceived(begin(rid) + params(rid, REQUEST_METHOD="POST",
                                                    CONTENT_LENGTH="10", PATH_INFO="/")
                                + record(FCGI_STDIN, rid, b"half"))

    def test_an_upload_is_receiving_until_its_body_is_complete(self) -> None:
        """Receiving while the body arrives, then in flight, then queued behind it."""
        self._upload(1)
        self._upload(2)
        self.assertEqual(self._counts(), (2, 0, 0))
        self.proto.dataReceived(record(FCGI_STDIN, 1, b"whole!") + record(FCGI_STDIN, 1))
        self.assertEqual(self._counts(), (1, 1, 0))
        self.proto.dataReceived(record(FCGI_STDIN, 2, b"whole!") + record(FCGI_STDIN, 2))
        self.assertEqual(self._counts(), (0, 1, 1))
        self.assertEqual(len(apps.PENDING), 1)

    def test_an_upload_the_peer_gives_up_is_no_longer_receiving(self) -> None:
        """The web server aborting the request (or going away) ends it."""
        self._upload(1)
        self._upload(2)
        self.proto.dataReceived(record(FCGI_ABORT_REQUEST, 1))
        self.assertEqual(self._counts(), (1, 0, 0))
        self.proto.connectionLost(None)
        self.assertEqual(self._counts(), (0, 0, 0))
        self.assertEqual(apps.PENDING, [])


class TimeoutTests(SynchronousTestCase):
    def test_request_timeout_gets_504(self) -> None:
        """A request running longer than request_timeout is answered 504 and cancelled."""
        apps.PENDING.clear()
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:pending_native",
                                 request_timeout="2s")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        clock.advance(2)
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 504 Gateway Timeout"))
        self.assertTrue(apps.PENDING[0].called)
        self.assertEqual(listener.snapshot()["timeouts_504"], 1)
        self.assertEqual(listener.in_flight, 0)

    def test_timeout_after_headers_ends_the_request(self) -> None:
        """Once headers are sent, a timed-out request is ended (connection closed)."""
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:pending_native",
                                 request_timeout="1s")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        proto.requests[1].send_head("200 OK", [])
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"504", transport.value())
        self.assertEqual(listener.in_flight, 0)
        self.flushLoggedErrors()


class RequestLimitTests(SynchronousTestCase):
    def test_max_requests_reported_once(self) -> None:
        """Reaching max_requests calls request_limit_reached once, and requests still run."""
        monitor = Monitor()
        listener = make_listener(native="tests.listeners.apps:hello_native", max_requests=2)
        listener.set_activity_monitor(monitor)
        proto, transport = connect(listener)
        for rid in (1, 2, 3):
            proto.dataReceived(request(rid))
        limits = [call for call in monitor.calls if call[0] == "limit"]
        self.assertEqual(limits, [("limit", "max_requests (2) reached")])
        self.assertIn(b"Hello, world!", stdout_of(transport.value(), 3))

    def test_jitter_adds_up_to_its_value(self) -> None:
        """max_requests_jitter adds a random 0..jitter to the limit."""
        limits = {Dispatcher(None, reactor=None, max_requests=100, max_requests_jitter=5,
                             rng=random.Random(seed)).request_limit for seed in range(50)}
        self.assertEqual(limits, {100, 101, 102, 103, 104, 105})

    def test_no_jitter_by_default(self) -> None:
        """Without jitter the limit is max_requests exactly."""
        self.assertEqual(Dispatcher(None, reactor=None, max_requests=10).request_limit, 10)

    def test_activity_reported(self) -> None:
        """Each request is reported to the monitor as begin/end "request"."""
        monitor = Monitor()
        listener = make_listener(native="tests.listeners.apps:hello_native")
        listener.set_activity_monitor(monitor)
        proto, _ = connect(listener)
        proto.dataReceived(request(1) + request(2))
        self.assertEqual(monitor.calls, [("begin", "request"), ("end", "request")] * 2)

    def test_rejected_requests_are_reported_as_ended(self) -> None:
        """A 503 request is reported ended too, so idle exit still works."""
        apps.PENDING.clear()
        monitor = Monitor()
        listener = make_listener(native="tests.listeners.apps:pending_native",
                                 max_concurrent=1, backlog=0)
        listener.set_activity_monitor(monitor)
        # two connections: on one, FCGI_MAX_REQS (1 here) would refuse the second id
        connect(listener)[0].dataReceived(request(1))
        connect(listener)[0].dataReceived(request(2))
        self.assertEqual(monitor.calls, [("begin", "request"), ("begin", "request"),
                                         ("end", "request")])


class ScriptNameTests(SynchronousTestCase):
    def _environ(self, **options: str) -> bytes:
        listener = make_listener(wsgi="tests.listeners.apps:environ_wsgi", threads=0,
                                 **options)
        proto, transport = connect(listener)
        proto.dataReceived(request(1, SCRIPT_NAME="/app/items/7", PATH_INFO="",
                                   REQUEST_URI="/app/items/7?x=1",
                                   DOCUMENT_URI="/app/items/7", QUERY_STRING="x=1"))
        return stdout_of(transport.value())

    def test_fix_up_splits_at_the_mount_path(self) -> None:
        """script_name "/app" turns nginx's SCRIPT_NAME=URI into /app + /items/7."""
        out = self._environ(script_name="/app")
        self.assertIn(b"SCRIPT_NAME=/app\nPATH_INFO=/items/7\nQUERY_STRING=x=1\n", out)

    def test_root_mount(self) -> None:
        """script_name "" puts the whole path in PATH_INFO."""
        out = self._environ(script_name="")
        self.assertIn(b"SCRIPT_NAME=\nPATH_INFO=/app/items/7\n", out)

    def test_without_option_params_are_untouched(self) -> None:
        """Without script_name, SCRIPT_NAME and PATH_INFO are what the server sent."""
        out = self._environ()
        self.assertIn(b"SCRIPT_NAME=/app/items/7\nPATH_INFO=\n", out)

    def test_fix_up_uses_request_uri_without_document_uri(self) -> None:
        """Without DOCUMENT_URI, the percent-decoded REQUEST_URI path is used."""
        listener = make_listener(wsgi="tests.listeners.apps:environ_wsgi", threads=0,
                                 script_name="/app")
        proto, transport = connect(listener)
        proto.dataReceived(request(1, SCRIPT_NAME="/x", REQUEST_URI="/app/a%20b?q"))
        self.assertIn(b"SCRIPT_NAME=/app\nPATH_INFO=/a b\n", stdout_of(transport.value()))


class JobsRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        from daemonapp.listeners import build_listener

        self.listener = build_listener(
            {"protocol": "fastcgi", "endpoint": "tcp:0", "jobs": True},
            reactor=MemoryReactorClock(), base_dir="/tmp", jobs_status=apps.jobs_status)
        self.proto, self.transport = connect(self.listener)

    def test_known_job_as_json(self) -> None:
        """/jobs/7 answers the job's record as JSON."""
        self.proto.dataReceived(request(1, PATH_INFO="/jobs/7"))
        head, body = stdout_of(self.transport.value()).split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertEqual(json.loads(body), {"id": 7, "percent": 40, "state": "running"})

    def test_unknown_job_is_404(self) -> None:
        """An unknown job id answers 404."""
        self.proto.dataReceived(request(1, PATH_INFO="/jobs/8"))
        self.assertTrue(stdout_of(self.transport.value()).startswith(b"Status: 404 Not Found"))

    def test_other_paths_are_404_without_an_app(self) -> None:
        """With only jobs served, other paths answer 404."""
        self.proto.dataReceived(request(1, PATH_INFO="/other"))
        self.assertTrue(stdout_of(self.transport.value()).startswith(b"Status: 404 Not Found"))


class AllowFromTests(SynchronousTestCase):
    def test_fastcgi_tcp_peer_outside_allow_from_is_refused(self) -> None:
        """A FastCGI tcp peer outside allow_from gets no protocol; IPv4-mapped IPv6 counts."""
        from twisted.internet.address import IPv4Address, IPv6Address

        listener = make_listener(native="tests.listeners.apps:hello_native",
                                 allow_from="127.0.0.1")
        factory = listener.factory
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertEqual(listener.snapshot()["denied"], 1)

    def test_fcgi_web_server_addrs_is_the_default_allow_list(self) -> None:
        """FCGI_WEB_SERVER_ADDRS (set by a spawning web server) filters FastCGI tcp peers."""
        from twisted.internet.address import IPv4Address, UNIXAddress

        self.patch(os, "environ", {**os.environ, "FCGI_WEB_SERVER_ADDRS": "127.0.0.2,10.1.1.1"})
        listener = make_listener(native="tests.listeners.apps:hello_native")
        factory = listener.factory
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 1)))
        self.assertIsNotNone(factory.buildProtocol(UNIXAddress(None)))

    def test_allow_from_wins_over_fcgi_web_server_addrs(self) -> None:
        """An item's own allow_from wins over the environment's list."""
        from twisted.internet.address import IPv4Address

        self.patch(os, "environ", {**os.environ, "FCGI_WEB_SERVER_ADDRS": "127.0.0.2"})
        listener = make_listener(native="tests.listeners.apps:hello_native",
                                 allow_from="127.0.0.1")
        factory = listener.factory
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1)))

    def test_a_bad_fcgi_web_server_addrs_is_an_error_naming_it(self) -> None:
        """A malformed FCGI_WEB_SERVER_ADDRS refuses to build, saying where it came from."""
        self.patch(os, "environ", {**os.environ, "FCGI_WEB_SERVER_ADDRS": "localhost"})
        with self.assertRaises(ValueError) as caught:
            make_listener(native="tests.listeners.apps:hello_native")
        self.assertIn("FCGI_WEB_SERVER_ADDRS from the environment", str(caught.exception))
        self.assertIn("'localhost'", str(caught.exception))


class WSGITimeoutTests(SynchronousTestCase):
    def test_wsgi_timeout_drops_the_late_answer(self) -> None:
        """A WSGI request over request_timeout gets 504; the app's late answer is dropped."""
        import threading

        from tests.listeners.helpers import ThreadReactor

        reactor = ThreadReactor()
        release = threading.Event()
        apps.GATE = release
        listener = make_listener(reactor, wsgi="tests.listeners.apps:gated_wsgi", threads=1,
                                 request_timeout="1s")
        self.addCleanup(listener.app.stop)
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        reactor.advance(1)
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 504 "))
        written = transport.value()
        release.set()
        f, args = reactor.posted.get(timeout=10)  # the app's answer, posted to the loop
        f(*args)
        self.assertTrue(apps.GATED_DONE.is_set())
        self.assertEqual(transport.value(), written)


class IOTickTests(SynchronousTestCase):
    """The no-op timer that makes a busy scheduler look at the sockets every IO_TICK."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.listener = make_listener(self.clock, native="tests.listeners.apps:hello_native")
        self.proto, self.transport = connect(self.listener)

    def ticks(self) -> list[float]:
        """When the dispatcher's tick timers are due (not the read-timeout sweep)."""
        tick = self.listener.dispatcher._io_tick
        return [call.getTime() for call in self.clock.getDelayedCalls() if call.func == tick]

    def test_no_timer_without_an_app(self) -> None:
        """A listener that reports to no app arms no timer."""
        self.proto.dataReceived(request(1))
        self.assertEqual(self.ticks(), [])

    def test_a_request_arms_one_timer_every_2ms_while_requests_flow(self) -> None:
        """With an app, requests keep one timer 2 ms ahead; it stops 0.25 s after the last."""
        self.listener.set_activity_monitor(Monitor())
        self.proto.dataReceived(request(1))
        self.proto.dataReceived(request(2))
        self.assertEqual(self.ticks(), [0.002])
        self.clock.advance(0.5)
        self.proto.dataReceived(request(3))
        self.clock.pump([0.002] * 120)
        self.assertEqual(len(self.ticks()), 1)
        self.clock.pump([0.002] * 10)
        self.assertEqual(self.ticks(), [])

    def test_drained_listener_cancels_its_timer(self) -> None:
        """The timer is cancelled once the listener has drained."""
        self.listener.set_activity_monitor(Monitor())
        self.proto.dataReceived(request(1))
        self.proto.connectionLost()
        self.assertEqual(self.ticks(), [0.002])
        self.listener.drain()
        self.assertEqual(self.ticks(), [])


# ------------------------------------------ the limits against a real `daemonapp run`


@pytest.fixture(scope="module")
def http_limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """Two HTTP listeners of one `daemonapp run` on FCGI_APP: (port with a 0.5 s timeout and a
    100-byte body cap, port with max_concurrent 1 and backlog 1, the app's state_dir)."""
    root = tmp_path_factory.mktemp("limits")
    write_file(root / "fcgiapp.py", FCGI_APP)
    p1, p2 = free_port(), free_port()
    while p2 == p1:  # two listeners cannot share a port
        p2 = free_port()
    cfg = write_file(root / "d.yaml", "app:\n  state_dir: ./var\nlisteners:\n"
                     f"  - protocol: http\n    endpoint: tcp:{p1}:interface=127.0.0.1\n"
                     "    native: fcgiapp:handle\n    request_timeout: 0.5s\n"
                     "    max_body_bytes: 100\n"
                     f"  - protocol: http\n    endpoint: tcp:{p2}:interface=127.0.0.1\n"
                     "    native: fcgiapp:handle\n    max_concurrent: 1\n    backlog: 1\n"
                     "    queue_timeout: 5s\n    request_timeout: 3s\n")
    with running(popen_run_logged(root, cfg)) as proc:
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", p2), timeout=1).close()
                socket.create_connection(("127.0.0.1", p1), timeout=1).close()
            except OSError:
                return proc.poll() is not None
            return True

        assert wait_until(up)
        assert proc.poll() is None, (root / "app.log").read_text()
        yield p1, p2, root / "var"


def http_status(port: int, path: str, body: bytes | None = None) -> tuple[int, dict[str, str]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


@pytest.mark.integration
def test_request_timeout_504(http_limits: tuple[int, int, Path]) -> None:
    """A request running longer than request_timeout is answered 504."""
    assert http_status(http_limits[0], "/hang")[0] == 504


@pytest.mark.integration
def test_max_body_bytes_413(http_limits: tuple[int, int, Path]) -> None:
    """A body over max_body_bytes is answered 413."""
    assert http_status(http_limits[0], "/a", b"z" * 1000)[0] == 413
    assert http_status(http_limits[0], "/a", b"z" * 10)[0] == 200


@pytest.mark.integration
def test_backlog_full_503_retry_after(http_limits: tuple[int, int, Path]) -> None:
    """With max_concurrent and backlog full, a request gets 503 with Retry-After."""
    import concurrent.futures

    port, state_dir = http_limits[1], http_limits[2]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(http_status, port, "/hang")
        assert wait_until(lambda: listener_load(state_dir, 1) == (1, 0), timeout=10)
        second = pool.submit(http_status, port, "/hang")
        assert wait_until(lambda: listener_load(state_dir, 1) == (1, 1), timeout=10)
        third = pool.submit(http_status, port, "/a")
        status, headers = third.result(timeout=10)
        assert status == 503
        assert {k.lower() for k in headers} >= {"retry-after"}
        first.result(timeout=10)
        second.result(timeout=15)
