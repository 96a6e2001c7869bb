"""Tests for daemonapp.systemd: sd_notify datagrams to a socket the test binds.

As systemd's own tests do, each test binds the datagram socket NOTIFY_SOCKET names
(a path, or a name in the abstract namespace) and reads what the app sent. The unit
tests drive the app on a task.Clock; tests/test_systemd_run.py runs `daemonapp run`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemonapp.app import DaemonApp
from daemonapp.systemd import (
    FAILURE_LOG_EVERY,
    Notifier,
    SystemdNotifier,
    monotonic_usec,
    notifier_of,
    notify_address,
    status_line,
)
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app


class Listener:
    """The test's end of NOTIFY_SOCKET: a bound datagram socket, read without blocking."""

    def __init__(self, abstract: bool = False) -> None:
        self.directory = tempfile.mkdtemp(prefix="dsd")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"daemonapp-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + name)
            self.env_value = "@" + name
        else:
            path = os.path.join(self.directory, "notify")
            self.socket.bind(path)
            self.env_value = path
        self.socket.setblocking(False)

    def messages(self) -> list[str]:
        """Every message that arrived since the last call."""
        found = []
        while True:
            try:
                found.append(self.socket.recv(4096).decode())
            except BlockingIOError:
                return found

    def close(self) -> None:
        self.socket.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[Listener]:
    bound = Listener()
    yield bound
    bound.close()


ONE_DAEMON = """\
app: {state_dir: ./var}
daemons:
  a: {type: "daemonapp.testing:FakeDaemon", run_every: 7200, start_delay: 7200}
"""


def fields(message: str) -> dict[str, str]:
    """A message's ``KEY=value`` lines as a dict."""
    return dict(line.split("=", 1) for line in message.splitlines())


# ------------------------------------------------------------------ addresses


def test_a_path_is_a_socket_file() -> None:
    """NOTIFY_SOCKET=/run/systemd/notify is that path."""
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"


def test_an_at_sign_is_the_abstract_namespace() -> None:
    """NOTIFY_SOCKET=@name is name in the abstract namespace (a leading NUL)."""
    assert notify_address("@systemd/notify") == "\0systemd/notify"


def test_other_addresses_are_not_used() -> None:
    """vsock addresses, relative paths and a bare @ are not socket addresses we use."""
    assert [notify_address(v) for v in ("vsock:2:1234", "notify", "@", "")] == [
        None, None, None, None]


def test_monotonic_usec_is_clock_monotonic_in_microseconds() -> None:
    """MONOTONIC_USEC is CLOCK_MONOTONIC in whole microseconds."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= value <= after


# ------------------------------------------------------------------- Notifier


def test_notifier_sends_to_a_socket_file(listener: Listener) -> None:
    """A message is one datagram of newline-ended KEY=value lines."""
    notifier = Notifier(listener.env_value)
    assert notifier.send("READY=1", "STATUS=up") is True
    notifier.close()
    assert listener.messages() == ["READY=1\nSTATUS=up\n"]


def test_notifier_sends_to_an_abstract_socket() -> None:
    """NOTIFY_SOCKET=@name reaches a socket bound in the abstract namespace."""
    bound = Listener(abstract=True)
    try:
        notifier = Notifier(notify_address(bound.env_value) or "")
        notifier.send("READY=1")
        notifier.close()
        assert bound.messages() == ["READY=1\n"]
    finally:
        bound.close()


def test_a_failed_send_never_raises_and_is_logged_once() -> None:
    """Nobody listening: send returns False; one warning per FAILURE_LOG_EVERY, then
    one that counts the failures it did not log."""
    now = [0.0]
    directory = tempfile.mkdtemp(prefix="dsd")
    try:
        notifier = Notifier(os.path.join(directory, "nobody"), now=lambda: now[0])
        with capturedLogs() as events:
            results = [notifier.send("WATCHDOG=1") for _ in range(3)]
            now[0] = FAILURE_LOG_EVERY
            results.append(notifier.send("STATUS=x"))
        notifier.close()
    finally:
        shutil.rmtree(directory)
    assert results == [False, False, False, False]
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2
    assert "WATCHDOG=1 was not sent" in warnings[0]
    assert "nobody" in warnings[0]
    assert "STATUS=x was not sent (nor 2 more since the last warning)" in warnings[1]


# ---------------------------------------------------------------- environment


def test_without_notify_socket_there_is_no_notifier() -> None:
    """No NOTIFY_SOCKET: no notifier (the app sends nothing)."""
    app, _ = make_app()
    assert SystemdNotifier.from_environ(app, {}) is None


def test_the_variables_are_taken_out_of_the_environment(listener: Listener) -> None:
    """NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID leave the environment (children
    must not speak for the app); the watchdog is WATCHDOG_USEC in seconds."""
    app, _ = make_app()
    environ = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "3000000",
               "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = SystemdNotifier.from_environ(app, environ)
    assert notifier is not None
    assert environ == {"PATH": "/bin"}
    assert notifier.notifier.address == listener.env_value
    assert notifier.watchdog == 3.0
    assert notifier.watchdog_interval == 1.5


def test_watchdog_pid_of_another_process_means_no_pings(listener: Listener) -> None:
    """WATCHDOG_PID naming another process: this one sends no WATCHDOG=1."""
    app, _ = make_app()
    environ = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "3000000",
               "WATCHDOG_PID": "1"}
    notifier = SystemdNotifier.from_environ(app, environ)
    assert notifier is not None
    assert notifier.watchdog_interval is None


def test_a_bad_watchdog_usec_is_logged_and_ignored(listener: Listener) -> None:
    """WATCHDOG_USEC that is no positive number: a warning, no watchdog."""
    app, _ = make_app()
    with capturedLogs() as events:
        notifier = SystemdNotifier.from_environ(
            app, {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "soon"})
    assert notifier is not None
    assert notifier.watchdog is None
    assert any("WATCHDOG_USEC='soon'" in formatEvent(e) for e in events)


def test_an_unusable_notify_socket_is_logged(listener: Listener) -> None:
    """NOTIFY_SOCKET=vsock:...: a warning, no notifier."""
    app, _ = make_app()
    with capturedLogs() as events:
        assert SystemdNotifier.from_environ(app, {"NOTIFY_SOCKET": "vsock:2:1"}) is None
    assert any("vsock:2:1" in formatEvent(e) for e in events)


# ---------------------------------------------------------- the app on a Clock


class NotifierTests(SynchronousTestCase):
    """The messages of an app on a task.Clock."""

    def setUp(self) -> None:
        self.listener = Listener()
        self.addCleanup(self.listener.close)

    def notifier(self, app: DaemonApp, *, watchdog: float | None = None,
                 watchdog_pid: int | None = None) -> SystemdNotifier:
        notifier = SystemdNotifier(app, Notifier(self.listener.env_value), watchdog=watchdog,
                                   watchdog_pid=watchdog_pid)
        notifier.setServiceParent(app)
        return notifier

    def collect(self, clock: Clock, steps: int, step: float) -> list[tuple[float, str]]:
        """Advance ``clock`` by ``step``, ``steps`` times: (time, message) received."""
        seen = []
        for _ in range(steps):
            clock.advance(step)
            seen += [(clock.seconds(), m) for m in self.listener.messages()]
        return seen

    def test_is_a_service(self) -> None:
        """The notifier is an IService, named "systemd" in its app."""
        app, _ = make_app()
        notifier = self.notifier(app)
        self.assertTrue(verifyObject(IService, notifier))
        self.assertIs(notifier_of(app), notifier)
        self.assertIsNone(notifier_of(make_app()[0]))

    def test_ready_once_the_app_started(self) -> None:
        """READY=1 comes once, after the app's start, with the first STATUS=."""
        app, clock = make_app()
        app.add(FakeDaemon(name="a", run_every=7200, start_delay=3600))
        app.add(FakeDaemon(name="b", run_every=7200, start_delay=7200))
        self.notifier(app)
        app.startService()
        self.assertEqual(self.listener.messages(), [])
        clock.advance(0)
        self.assertEqual(self.listener.messages(), [
            "READY=1\nSTATUS=2 daemons, 0 runs in flight, 0 requests in flight, "
            "next run in 1h\n"])
        clock.advance(0)
        self.assertEqual(self.listener.messages(), [])

    def test_no_ready_when_the_app_stops_at_start(self) -> None:
        """An app that stops before it is up (nothing to do) says STOPPING=1, never READY."""
        app, clock = make_app(shutdown_if_idle=60)
        self.notifier(app)
        app.startService()
        clock.advance(0)
        messages = self.listener.messages()
        self.assertEqual([m.splitlines()[0] for m in messages], ["STOPPING=1"])

    def test_no_ready_when_a_listener_is_not_bound(self) -> None:
        """A listener that did not bind: no READY=1 (the assembly stops the app)."""

        class Unbound:
            name = "http:tcp:80"
            running = False
            health = False

        app, clock = make_app()
        self.notifier(app)
        app.listeners.append(Unbound())  # type: ignore[arg-type]
        app.startService()
        clock.advance(0)
        self.assertEqual(self.listener.messages(), [])

    def test_status_at_most_once_a_second(self) -> None:
        """STATUS= follows the countdown to the next run, never more than once a second."""
        app, clock = make_app()
        app.add(FakeDaemon(name="a", run_every=10))
        self.notifier(app)
        app.startService()
        clock.advance(0)
        self.listener.messages()  # READY=1
        seen = self.collect(clock, 40, 0.125)
        times = [at for at, _ in seen]
        self.assertEqual([m for _, m in seen][:3], [
            "STATUS=1 daemon, 0 runs in flight, 0 requests in flight, next run in 9s\n",
            "STATUS=1 daemon, 0 runs in flight, 0 requests in flight, next run in 8s\n",
            "STATUS=1 daemon, 0 runs in flight, 0 requests in flight, next run in 7s\n"])
        self.assertEqual(len(seen), 5)
        self.assertTrue(all(b - a >= 0.999 for a, b in itertools.pairwise(times)))

    def test_status_only_when_it_changes(self) -> None:
        """A summary that stays the same is not sent again."""
        app, clock = make_app()
        app.add(FakeDaemon(name="a", run_every=7200, start_delay=7200))
        self.notifier(app)
        app.startService()
        clock.advance(0)
        self.assertEqual(len(self.listener.messages()), 1)  # READY=1
        self.assertEqual(self.collect(clock, 100, 0.1), [])

    def test_status_counts_runs_and_requests_in_flight(self) -> None:
        """A run in flight and two requests show in the next STATUS=."""
        app, clock = make_app()
        daemon = PendingDaemon(["job"], name="slow", run_every=7200)
        app.add(daemon)
        self.notifier(app)
        app.startService()
        clock.advance(0)
        app.begin("request")
        app.begin("request")
        self.listener.messages()
        clock.advance(1)
        self.assertEqual(self.listener.messages(), [
            "STATUS=1 daemon, 1 run in flight, 2 requests in flight\n"])

    def test_status_counts_paused_daemons(self) -> None:
        """Daemons an operator paused are counted in the summary."""
        from daemonapp.scheduler import Pause

        app, _ = make_app()
        app.add(FakeDaemon(name="a", run_every=7200, start_delay=7200))
        app.add(FakeDaemon(name="b", run_every=7200, start_delay=7200))
        app.startService()
        app.scheduler.pause("b", Pause(since=0.0))
        self.assertEqual(status_line(app), "2 daemons (1 paused), 0 runs in flight, "
                                           "0 requests in flight, next run in 2h")

    def test_status_line_while_stopping(self) -> None:
        """While a stop drains, the summary says so and why."""
        app, clock = make_app()
        app.add(PendingDaemon(["job"], name="slow", run_every=7200))
        app.startService()
        clock.advance(0)
        app.stop("signal SIGTERM")
        self.assertEqual(status_line(app), "stopping (signal SIGTERM): 1 daemon, 1 run in "
                                           "flight, 0 requests in flight")

    def test_stopping_then_extend_while_draining(self) -> None:
        """STOPPING=1 with EXTEND_TIMEOUT_USEC when a stop begins, EXTEND_TIMEOUT_USEC
        every 5 s while a run drains, nothing more once the stop is over."""
        app, clock = make_app(stop_timeout=60)
        daemon = PendingDaemon(["job"], name="slow", run_every=7200)
        app.add(daemon)
        self.notifier(app)
        app.startService()
        clock.advance(0)
        self.listener.messages()
        app.stop("signal SIGTERM")
        first = fields(self.listener.messages()[0])
        self.assertEqual(first["STOPPING"], "1")
        self.assertEqual(first["EXTEND_TIMEOUT_USEC"], "15000000")
        seen = self.collect(clock, 12, 1.0)
        extends = [at for at, m in seen if m.startswith("EXTEND_TIMEOUT_USEC=15000000")]
        self.assertEqual(extends, [5.0, 10.0])
        daemon.pending[0].callback(None)
        self.assertTrue(app.lifetime.ended)
        self.assertEqual(self.collect(clock, 20, 1.0), [])

    def test_reloading_then_ready(self) -> None:
        """RELOADING=1 carries MONOTONIC_USEC; READY=1 follows when the reload is over."""
        app, clock = make_app()
        notifier = self.notifier(app)
        app.startService()
        clock.advance(0)
        self.listener.messages()
        before = monotonic_usec()
        notifier.reloading()
        notifier.reloaded()
        reloading, ready = self.listener.messages()
        values = fields(reloading)
        self.assertEqual(values["RELOADING"], "1")
        self.assertTrue(before <= int(values["MONOTONIC_USEC"]) <= monotonic_usec())
        self.assertEqual(fields(ready)["READY"], "1")

    def test_overlapping_reloads_send_one_ready_after_the_last(self) -> None:
        """Two reloads under way: READY=1 only once both are over."""
        app, clock = make_app()
        notifier = self.notifier(app)
        app.startService()
        clock.advance(0)
        self.listener.messages()
        notifier.reloading()
        notifier.reloading()
        notifier.reloaded()
        self.assertEqual([m.splitlines()[0] for m in self.listener.messages()],
                         ["RELOADING=1", "RELOADING=1"])
        notifier.reloaded()
        self.assertEqual([m.splitlines()[0] for m in self.listener.messages()], ["READY=1"])

    def test_no_ready_after_a_reload_once_stopping(self) -> None:
        """A stop that began during a reload: no READY=1 after STOPPING=1."""
        app, clock = make_app()
        notifier = self.notifier(app)
        app.startService()
        clock.advance(0)
        notifier.reloading()
        app.stop("signal SIGTERM")
        self.listener.messages()
        notifier.reloaded()
        self.assertEqual(self.listener.messages(), [])

    def test_sighup_is_a_reload_for_systemd(self) -> None:
        """SIGHUP: RELOADING=1, then READY=1 once the logs are reopened."""
        app, clock = make_app()
        self.notifier(app)
        app.startService()
        clock.advance(0)
        self.listener.messages()
        app.lifetime.handle_signal(signal.SIGHUP)
        self.assertEqual([m.splitlines()[0] for m in self.listener.messages()], ["RELOADING=1"])
        clock.advance(0)
        self.assertEqual([m.splitlines()[0] for m in self.listener.messages()], ["READY=1"])

    def test_a_reload_of_the_yaml_file_is_framed_once(self) -> None:
        """An app of a YAML file reloads it on SIGHUP: one RELOADING=1, then one READY=1
        whose STATUS= counts the new file's daemons."""
        from daemonapp.config import build_app, load_config

        directory = Path(self.listener.directory)
        path = directory / "app.yaml"
        path.write_text(ONE_DAEMON)
        app = build_app(load_config(str(path), check_state_dir=True), clock=Clock(),
                        status_server=False, handle_signals=False, stop_reactor=False)
        clock = app.reactor
        self.notifier(app)
        app.startService()
        self.addCleanup(app.stop, "test")
        clock.advance(0)
        self.listener.messages()
        path.write_text(ONE_DAEMON + '  b: {type: "daemonapp.testing:FakeDaemon", '
                        "run_every: 7200}\n")
        app.lifetime.handle_signal(signal.SIGHUP)
        clock.advance(0)
        reloading, ready = self.listener.messages()
        self.assertEqual(fields(reloading)["RELOADING"], "1")
        self.assertEqual(fields(ready)["READY"], "1")
        self.assertTrue(fields(ready)["STATUS"].startswith("2 daemons, "))

    def test_watchdog_pings_every_half_watchdog_usec(self) -> None:
        """WATCHDOG_USEC=2 s: WATCHDOG=1 at start, then every second."""
        app, clock = make_app()
        self.notifier(app, watchdog=2.0)
        app.startService()
        pings = [0.0] if "WATCHDOG=1\n" in self.listener.messages() else []
        pings += [at for at, m in self.collect(clock, 20, 0.25) if m == "WATCHDOG=1\n"]
        self.assertEqual(pings, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])

    def test_a_stalled_reactor_withholds_the_ping(self) -> None:
        """The reactor ran nothing for 1.5 s (> WATCHDOG_USEC/2): that ping is withheld,
        so systemd restarts the app; pings resume after a healthy interval."""
        app, clock = make_app()
        self.notifier(app, watchdog=2.0)
        app.startService()
        clock.advance(0)
        self.listener.messages()  # the first ping, READY=1
        pings = [at for at, m in self.collect(clock, 4, 0.25) if m == "WATCHDOG=1\n"]
        self.assertEqual(pings, [1.0])
        with capturedLogs() as events:
            clock.advance(1.5)  # a daemon blocks the reactor
        self.assertEqual(self.listener.messages(), [])
        self.assertTrue(any("watchdog ping withheld" in formatEvent(e) for e in events))
        pings = [at for at, m in self.collect(clock, 8, 0.25) if m == "WATCHDOG=1\n"]
        self.assertEqual(pings, [3.5, 4.5])

    def test_a_short_stall_withholds_nothing(self) -> None:
        """A stall under WATCHDOG_USEC/2 is no reason to restart: the ping goes out."""
        app, clock = make_app()
        self.notifier(app, watchdog=2.0)
        app.startService()
        clock.advance(0)
        self.listener.messages()  # the first ping, READY=1
        clock.advance(0.9)
        self.assertEqual(self.listener.messages(), ["WATCHDOG=1\n"])

    def test_no_pings_for_another_watchdog_pid(self) -> None:
        """WATCHDOG_PID of another process: no WATCHDOG=1 at all."""
        app, clock = make_app()
        self.notifier(app, watchdog=2.0, watchdog_pid=os.getpid() + 1)
        app.startService()
        seen = [m for _, m in self.collect(clock, 20, 0.25)]
        self.assertNotIn("WATCHDOG=1\n", seen)
        self.assertTrue(seen)  # READY=1 went out

    def test_stopped_notifier_sends_nothing_more(self) -> None:
        """Once the app ended, no timer of the notifier is left armed."""
        app, clock = make_app()
        self.notifier(app, watchdog=2.0)
        app.startService()
        clock.advance(0)
        self.successResultOf(app.stopService())
        self.listener.messages()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_failing_socket_never_disturbs_the_app(self) -> None:
        """Nobody listens on NOTIFY_SOCKET: the app runs and stops as ever."""
        app, clock = make_app()
        daemon = FakeDaemon(["a", "b"], name="a", run_every=1)
        app.add(daemon)
        notifier = SystemdNotifier(app, Notifier(self.listener.env_value + ".gone"),
                                   watchdog=2.0)
        notifier.setServiceParent(app)
        with capturedLogs() as events:
            app.startService()
            self.collect(clock, 30, 0.5)
            self.successResultOf(app.stopService())
        self.assertEqual([job for _, job in daemon.done], ["a", "b"])
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)

