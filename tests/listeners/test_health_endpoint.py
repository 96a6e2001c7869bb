"""GET /healthz and GET /metrics on a listener (DESIGN §10), for the three protocols."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.testing import FakeDaemon, PendingDaemon, make_app
from tests.listeners import apps
from tests.listeners.helpers import Monitor, connect, make_listener, request, stdout_of
from tests.listeners.test_scgi import scgi_request

NATIVE = "tests.listeners.apps:hello_native"


def _split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, body) of a CGI answer (``Status: ...``)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return headers.pop("Status"), headers, body


class _AppCase(SynchronousTestCase):
    """A started app on a MemoryReactorClock with one daemon and one listener."""

    options: dict[str, Any] = {"health": True, "metrics": True, "native": NATIVE}

    def setUp(self) -> None:
        apps.PENDING.clear()
        self.clock = MemoryReactorClock()
        self.app, _ = make_app(clock=self.clock)
        self.daemon = FakeDaemon(name="mail")
        self.app.add(self.daemon)
        self.listener = make_listener(self.clock, **self.options)
        self.app.add_listener(self.listener)
        self.app.startService()
        self.clock.advance(0)

    def fastcgi(self, path: str, rid: int = 1, **params: str) -> tuple[str, dict[str, str],
                                                                       bytes]:
        proto, transport = connect(self.listener)
        proto.dataReceived(request(rid, PATH_INFO=path, **params))
        return _split(stdout_of(transport.value(), rid))


class HealthzTests(_AppCase):
    def test_healthy_200_json(self) -> None:
        """GET /healthz: 200 and a JSON body while the app runs and nothing is in alert."""
        status, headers, body = self.fastcgi("/healthz")
        self.assertEqual((status, headers["Content-Type"], headers["Cache-Control"]),
                         ("200 OK", "application/json", "no-store"))
        answer = json.loads(body)
        self.assertEqual((answer["status"], answer["reasons"], answer["daemons"]),
                         ("ok", [], 1))
        self.assertEqual(answer["loop_lag"], 0.0)

    def test_daemon_in_alert_503(self) -> None:
        """A daemon in alert: 503 with the reason in the body."""
        self.daemon.stats.update(in_alert=True, consecutive_failures=3)
        status, _, body = self.fastcgi("/healthz")
        self.assertEqual(status, "503 Service Unavailable")
        self.assertEqual(json.loads(body)["reasons"],
                         ["daemon mail in alert: 3 failed run(s) in a row"])

    def test_loop_lag_503(self) -> None:
        """The probe runs while a listener has health: true; a lag of 1 s or more: 503."""
        self.assertTrue(self.app.health_check.probe.running)
        self.clock.advance(2.0)  # the tick due at 0.5 runs at 2.0
        status, _, body = self.fastcgi("/healthz")
        self.assertEqual(status, "503 Service Unavailable")
        self.assertEqual(json.loads(body)["reasons"], ["loop lag 1.500 s (limit 1 s)"])

    def test_not_a_request_of_the_app(self) -> None:
        """/healthz is counted apart: no request, no activity, answered past max_concurrent."""
        monitor = Monitor()
        self.listener.set_activity_monitor(monitor)
        self.listener.dispatcher.health_source = self.app
        self.listener.dispatcher._limit = 0  # every slot taken
        self.assertEqual(self.fastcgi("/healthz")[0], "200 OK")
        snap = self.listener.snapshot()
        self.assertEqual((snap["requests"], snap["health_checks"], monitor.calls), (0, 1, []))

    def test_other_methods_405(self) -> None:
        """POST /healthz is answered 405 with Allow."""
        status, headers, _ = self.fastcgi("/healthz", REQUEST_METHOD="POST")
        self.assertEqual((status, headers["Allow"]), ("405 Method Not Allowed", "GET, HEAD"))

    def test_other_paths_go_to_the_app(self) -> None:
        """Other paths are the application's."""
        self.assertEqual(self.fastcgi("/healthz/x")[2], b"Hello, world!\n")

    def test_script_name(self) -> None:
        """/healthz is matched after the script_name fix-up, like /jobs/<id>."""
        listener = make_listener(self.clock, health=True, native=NATIVE, script_name="/app",
                                 endpoint="tcp:8001")
        self.app.add_listener(listener)
        proto, transport = connect(listener)
        proto.dataReceived(request(1, SCRIPT_NAME="", PATH_INFO="",
                                   DOCUMENT_URI="/app/healthz"))
        self.assertEqual(_split(stdout_of(transport.value()))[0], "200 OK")


class MetricsTests(_AppCase):
    def test_metrics_text(self) -> None:
        """GET /metrics: the app's metrics as Prometheus text, parsed by prometheus_client."""
        status, headers, body = self.fastcgi("/metrics")
        self.assertEqual((status, headers["Content-Type"]),
                         ("200 OK", "text/plain; version=0.0.4; charset=utf-8"))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode())
                   for s in family.samples}
        self.assertEqual(samples[("daemonapp_daemon_runs_total", (("daemon", "mail"),))], 1.0)
        self.assertEqual(samples[("daemonapp_up", ())], 1.0)
        self.assertEqual(self.listener.snapshot()["scrapes"], 1)

    def test_same_numbers_as_the_snapshot(self) -> None:
        """/metrics renders the same snapshot as `daemonapp status --metrics`."""
        from daemonapp.metrics import render_metrics

        self.assertEqual(self.fastcgi("/metrics")[2], render_metrics(self.app.snapshot()))


class NotServedTests(_AppCase):
    options = {"native": NATIVE}

    def test_paths_are_the_apps_without_the_options(self) -> None:
        """Without health: true / metrics: true, /healthz and /metrics go to the app."""
        self.assertEqual(self.fastcgi("/healthz")[2], b"Hello, world!\n")
        self.assertEqual(self.fastcgi("/metrics")[2], b"Hello, world!\n")
        self.assertFalse(self.app.health_check.probe.running)


class ProtocolTests(SynchronousTestCase):
    """SCGI and HTTP answer /healthz too (FastCGI: above)."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.app, _ = make_app(clock=self.clock)

    def _listener(self, protocol: str) -> Any:
        listener = make_listener(self.clock, protocol=protocol, health=True, metrics=True)
        self.app.add_listener(listener)
        self.app.startService()
        return listener

    def test_scgi(self) -> None:
        """An SCGI listener with only health: true answers /healthz."""
        proto, transport = connect(self._listener("scgi"))
        proto.dataReceived(scgi_request(REQUEST_METHOD="GET", PATH_INFO="/healthz"))
        status, _, body = _split(transport.value())
        self.assertEqual((status, json.loads(body)["status"]), ("200 OK", "ok"))

    def test_http(self) -> None:
        """An HTTP listener answers /healthz and /metrics; other paths 404."""
        listener = self._listener("http")
        peer = IPv4Address("TCP", "127.0.0.1", 5555)
        channel = listener.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b'"status": "ok", "uptime": 0.0}\n'))
        transport.clear()
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertIn(b"\r\n\r\n# HELP daemonapp_up ", transport.value())
        transport.clear()
        channel.dataReceived(b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404 Not Found\r\n"))


class StopTests(SynchronousTestCase):
    """A graceful stop: the health listener keeps accepting and answers 503 until the
    rest has drained; the others stop listening at once."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.app, _ = make_app(clock=self.clock)
        self.daemon = PendingDaemon(["job"], name="slow")
        self.app.add(self.daemon)
        self.health = make_listener(self.clock, health=True, native=NATIVE)
        self.plain = make_listener(self.clock, native=NATIVE, endpoint="tcp:8001")
        self.app.add_listener(self.health)
        self.app.add_listener(self.plain)
        self.app.startService()
        self.clock.advance(0)  # the run is in flight
        self.stopped = self.app.stop("signal SIGTERM")

    def _ask(self, path: str) -> tuple[str, dict[str, str], bytes]:
        proto, transport = connect(self.health)
        proto.dataReceived(request(1, PATH_INFO=path))
        return _split(stdout_of(transport.value()))

    def test_healthz_503_while_the_run_drains(self) -> None:
        """/healthz answers 503 "stopping" while the run in flight finishes."""
        status, _, body = self._ask("/healthz")
        self.assertEqual(status, "503 Service Unavailable")
        self.assertEqual(json.loads(body)["reasons"], ["stopping: signal SIGTERM"])

    def test_other_paths_503_with_retry_after(self) -> None:
        """Other paths on the health listener get 503 + Retry-After during the stop."""
        status, headers, _ = self._ask("/")
        self.assertEqual((status, headers["Retry-After"]), ("503 Service Unavailable", "10"))

    def test_health_listener_drains_last(self) -> None:
        """The health listener listens until the run ends, then drains; the app ends."""
        self.assertEqual(len(self.clock.tcpServers), 2)
        self.assertTrue(self.health.snapshot()["listening"])
        self.assertFalse(self.plain.snapshot()["listening"])
        self.assertNoResult(self.stopped)
        self.daemon.pending[0].callback(None)
        self.clock.advance(0.1)
        self.assertFalse(self.health.snapshot()["listening"])
        self.successResultOf(self.stopped)
        self.assertFalse(self.app.health_check.probe.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
