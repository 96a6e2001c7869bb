"""daemonapp.control on a task.Clock: the protocol of the status socket, and the
Controller's commands (trigger, pause, resume, reload) and the pauses it keeps."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.config import build_app, load_config
from daemonapp.control import (
    COMMAND_TRIES,
    MAX_REQUEST_BYTES,
    REQUEST_GRACE,
    REQUEST_TIMEOUT,
    ControlFactory,
    Controller,
    Peer,
    controller_of,
    send_request,
)
from daemonapp.pauses import PauseStore
from daemonapp.reload import in_thread
from daemonapp.scheduler import Pause

ME = Peer(pid=4242, uid=os.geteuid(), gid=0)
STRANGER = Peer(pid=4343, uid=os.geteuid() + 12345, gid=0)


class _Handle:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return struct.pack("3i", self.peer.pid, self.peer.uid, self.peer.gid)

    def recv(self, size: int, flags: int = 0) -> bytes:
        raise BlockingIOError


class PeerTransport(StringTransport):
    """A StringTransport whose socket says who the peer is (SO_PEERCRED)."""

    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.handle = _Handle(peer)
        self.aborted = False

    def getHandle(self) -> Any:
        return self.handle

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class FakeController:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], Peer]] = []

    def handle(self, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.requests.append((request, peer))
        return {"v": 1, "ok": True, "echo": request}


class ProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.controller = FakeController()
        self.factory = ControlFactory(lambda: {"pid": 1}, self.clock,
                                      self.controller)  # type: ignore[arg-type]

    def connect(self, peer: Peer = ME) -> tuple[Any, PeerTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = PeerTransport(peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def answer(self, transport: PeerTransport) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(transport.value())
        self.assertTrue(transport.disconnecting)
        return value

    def test_a_command_line_reaches_the_controller_with_the_peer(self) -> None:
        """One request line in, the controller's reply out as one line, then close."""
        protocol, transport = self.connect()
        protocol.dataReceived(b'{"v": 1, "command": "trigger",')
        protocol.dataReceived(b' "daemon": "x"}\n')
        self.assertEqual(self.answer(transport)["echo"],
                         {"v": 1, "command": "trigger", "daemon": "x"})
        self.assertEqual(self.controller.requests[0][1], ME)

    def test_garbage_is_a_bad_request(self) -> None:
        """A line that is not a JSON object is answered with an error, nothing else."""
        for line in (b"\xff\xfe garbage\n", b"[1, 2]\n", b'{"command": "rm -rf"}\n',
                     b'{"v": 2, "command": "status"}\n'):
            protocol, transport = self.connect()
            protocol.dataReceived(line)
            self.assertEqual(self.answer(transport)["refused"], "bad_request")
        self.assertEqual(self.controller.requests, [])

    def test_an_overlong_line_is_refused_before_its_end(self) -> None:
        """A request without a newline within MAX_REQUEST_BYTES is refused at once."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"x" * (MAX_REQUEST_BYTES + 10))
        self.assertIn("longer than", self.answer(transport)["error"])

    def test_a_slow_request_times_out(self) -> None:
        """A partial line gets the rest of REQUEST_TIMEOUT, then an error; then it is cut off."""
        protocol, transport = self.connect()
        protocol.dataReceived(b'{"command": ')
        self.clock.advance(REQUEST_GRACE)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(REQUEST_TIMEOUT - REQUEST_GRACE)
        self.assertIn("no complete request line", self.answer(transport)["error"])
        self.clock.advance(10)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.clients, 0)

    def test_status_is_answered_without_the_controller(self) -> None:
        """Reading the status is no command: the snapshot, for any peer."""
        protocol, transport = self.connect(STRANGER)
        protocol.dataReceived(b'{"v": 1, "command": "status"}\n')
        self.assertEqual(self.answer(transport), {"pid": 1})
        self.assertEqual(self.controller.requests, [])

    def test_a_bad_request_is_logged_with_the_peer_and_a_flood_in_few_lines(self) -> None:
        """Garbage is logged with the peer's uid and pid; more within a minute are
        counted, and the next line (a minute on) says how many."""
        with capturedLogs() as events:
            for _ in range(50):
                protocol, _transport = self.connect(STRANGER)
                protocol.dataReceived(b"garbage\n")
            self.clock.advance(60)
            protocol, _transport = self.connect(ME)
            protocol.dataReceived(b'{"v": 1, "command": "rm"}\n')
        lines = [formatEvent(event) for event in events
                 if "bad request" in str(event.get("log_format"))]
        self.assertEqual(lines, [
            f"control: bad request from uid {STRANGER.uid} (pid {STRANGER.pid}) refused: "
            "the request is not a line of JSON",
            f"control: bad request from uid {ME.uid} (pid {ME.pid}) refused: unknown "
            "command 'rm'; expected status, trigger, pause, resume, reload (and 49 more "
            "since the last such line)"])

    def test_a_client_that_closes_its_side_at_once_gets_the_status(self) -> None:
        """EOF before any byte (``socat ... < /dev/null``): the status, at once."""
        protocol, transport = self.connect(STRANGER)
        protocol.readConnectionLost()
        self.assertEqual(self.answer(transport), {"pid": 1})

    def test_eof_ends_a_request_line_without_its_newline(self) -> None:
        """``printf '{...}' | socat``: the line EOF ends is the request."""
        protocol, transport = self.connect()
        protocol.dataReceived(b'{"v": 1, "command": "trigger", "daemon": "x"}')
        protocol.readConnectionLost()
        self.assertEqual(self.answer(transport)["echo"]["daemon"], "x")

    def test_a_socket_without_controller_takes_no_commands(self) -> None:
        """A process spawned by a web server answers commands with a refusal."""
        self.factory.controller = None
        protocol, transport = self.connect()
        protocol.dataReceived(b'{"command": "reload"}\n')
        self.assertEqual(self.answer(transport)["refused"], "unavailable")


def write_config(directory: Path, daemons: str, extra: str = "") -> str:
    path = directory / "app.yaml"
    path.write_text(f"app:\n  state_dir: ./var\n{extra}daemons:\n{daemons}")
    return str(path)


TWO = """\
  a:
    type: daemonapp.testing:FakeDaemon
    run_every: 10s
  b:
    type: daemonapp.testing:FakeDaemon
    run_every: 20s
"""


class ControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        import shutil
        import tempfile

        # Short: a unix socket path in state_dir must fit in 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="dctl"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def build(self, daemons: str = TWO, extra: str = "") -> tuple[Any, Controller]:
        path = write_config(self.dir, daemons, extra)
        app = build_app(load_config(path, check_state_dir=True), clock=self.clock,
                        status_server=False, handle_signals=False, stop_reactor=False)
        controller = controller_of(app)
        assert controller is not None
        app.startService()
        self.addCleanup(lambda: app.stop("test"))
        return app, controller

    def command(self, controller: Controller, command: str, peer: Peer = ME,
                **fields: Any) -> dict[str, Any]:
        reply = controller.handle({"v": 1, "command": command, **fields}, peer)
        if isinstance(reply, Deferred):  # a reload (on a Clock: read at once)
            result: dict[str, Any] = self.successResultOf(reply)
            return result
        return reply

    def test_another_uid_is_refused_and_nothing_happens(self) -> None:
        """Only the app's own uid or root may command it."""
        app, controller = self.build()
        reply = self.command(controller, "pause", STRANGER, daemon="a")
        self.assertEqual(reply["refused"], "not_permitted")
        self.assertIsNone(app.scheduler.pause_of("a"))

    def test_unknown_daemon(self) -> None:
        """A name the app does not run is refused, with the names it does."""
        _, controller = self.build()
        reply = self.command(controller, "trigger", daemon="nope")
        self.assertEqual(reply["refused"], "unknown_daemon")
        self.assertIn("daemons: a, b", reply["error"])

    def test_pause_is_kept_in_state_dir_and_shown_in_the_snapshot(self) -> None:
        """A pause is written to state_dir/pauses.json and the snapshot shows it."""
        app, controller = self.build()
        now = self.clock.seconds()
        reply = self.command(controller, "pause", daemon="a", reason="migration",
                             **{"for": 3600})
        self.assertTrue(reply["ok"])
        store = PauseStore(str(self.dir / "var"))
        self.assertEqual(store.load(), {"a": Pause(since=now, until=now + 3600,
                                                   reason="migration")})
        entry = next(d for d in app.snapshot()["daemons"] if d["name"] == "a")
        self.assertEqual((entry["paused"], entry["paused_since"], entry["paused_until"],
                          entry["paused_reason"]), (True, now, now + 3600, "migration"))
        other = next(d for d in app.snapshot()["daemons"] if d["name"] == "b")
        self.assertEqual(other["paused"], False)

    def test_pause_for_ends_by_itself(self) -> None:
        """--for: the pause ends when its time is up, and the file forgets it."""
        app, controller = self.build()
        self.command(controller, "pause", daemon="a", **{"for": 60})
        runs = app.daemons["a"].stats["runs"]
        self.clock.advance(59)
        self.assertEqual(app.daemons["a"].stats["runs"], runs)
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertIsNone(app.scheduler.pause_of("a"))
        self.assertEqual(app.daemons["a"].stats["runs"], runs + 1)
        self.assertEqual(PauseStore(str(self.dir / "var")).load(), {})

    def test_pauses_survive_a_restart(self) -> None:
        """A new app on the same state_dir starts the daemon paused."""
        app, controller = self.build()
        self.command(controller, "pause", daemon="b", reason="disk full")
        self.successResultOf(app.stop("test"))
        app2, _ = self.build()
        self.clock.advance(0)
        self.assertEqual(app2.daemons["b"].stats["runs"], 0)
        self.assertEqual(app2.scheduler.pause_of("b").reason, "disk full")

    def test_a_resume_after_a_restart_while_paused_is_one_catch_up_run(self) -> None:
        """Paused across a restart, a clock-scheduled daemon owes a make-up for the fire
        times missed while down; at resume, catch_up once makes one run for those and
        the ones the pause skipped (DESIGN §8, §9)."""
        clocked = ('  q:\n    type: daemonapp.testing:FakeDaemon\n'
                   '    schedule: "*/15 * * * *"\n    timezone: UTC\n')

        def step_to(at: float) -> None:  # a minute at a time at most, as the timer wakes
            while self.clock.seconds() < at:
                self.clock.advance(min(30.0, at - self.clock.seconds()))

        quarter = 1_700_000_100.0  # 22:15:00 UTC
        app, controller = self.build(clocked)
        step_to(quarter + 60)
        self.assertEqual(app.daemons["q"].stats["runs"], 1)
        self.command(controller, "pause", daemon="q")
        step_to(quarter + 300)
        self.successResultOf(app.stop("test"))
        self.clock.advance(quarter + 35 * 60 - self.clock.seconds())  # down until 22:50
        app2, controller2 = self.build(clocked)  # 22:30 and 22:45 missed while down
        q = app2.daemons["q"]
        step_to(quarter + 50 * 60)  # 23:05: 23:00 skipped by the pause
        self.assertEqual(q.stats["runs"], 0)
        self.command(controller2, "resume", daemon="q")
        step_to(quarter + 55 * 60)
        self.assertEqual(q.stats["runs"], 1)
        self.assertEqual(q.stats["misfires"], {"downtime": 2, "paused": 1})

    def test_resume_of_a_daemon_not_paused_says_so(self) -> None:
        """resume on a running daemon succeeds and says it was not paused."""
        _, controller = self.build()
        reply = self.command(controller, "resume", daemon="a")
        self.assertEqual((reply["ok"], reply["was_paused"]), (True, False))

    def test_bad_for_is_a_bad_request(self) -> None:
        """--for must be a positive number of seconds."""
        _, controller = self.build()
        for value in (0, -5, "1h", True, float("inf")):
            reply = self.command(controller, "pause", daemon="a", **{"for": value})
            self.assertEqual(reply["refused"], "bad_request", value)

    def test_reload_applies_the_difference(self) -> None:
        """Unchanged daemons keep their instance and stats; changed ones are replaced,
        new ones added, removed ones stopped; listener/app keys are named, not applied."""
        app, controller = self.build()
        self.clock.advance(0)
        kept = app.daemons["a"]
        write_config(self.dir, """\
  a:
    type: daemonapp.testing:FakeDaemon
    run_every: 10s
  c:
    type: daemonapp.testing:FakeDaemon
    run_every: 5s
""".replace("  a:", "  # moved down a line\n  a:"), extra="  stop_timeout: 5s\n")
        reply = self.command(controller, "reload")
        self.assertEqual({key: reply[key] for key in ("added", "removed", "replaced",
                                                      "unchanged", "needs_restart")},
                         {"added": ["c"], "removed": ["b"], "replaced": [], "unchanged": ["a"],
                          "needs_restart": ["app.stop_timeout"]})
        self.assertIs(app.daemons["a"], kept)
        self.assertEqual(sorted(app.daemons), ["a", "c"])
        self.assertEqual(app.stop_timeout, 30.0)

    def test_a_key_moved_to_another_line_needs_no_restart(self) -> None:
        """Where a key sits in the file is no setting: app keys moved down a line by one
        added above them (app.log, applied at once) are no key to restart for."""
        _, controller = self.build(extra="  processes: 1\n")
        write_config(self.dir, TWO, extra="  log: {level: debug}\n  processes: 1\n")
        reply = self.command(controller, "reload")
        self.assertEqual((reply["ok"], reply["needs_restart"]), (True, []))

    def test_reload_applies_app_log_at_once(self) -> None:
        """A changed app.log is handed to reconfigure_log, logged, and answered
        "applied"; the daemons' difference is applied with it."""
        app, controller = self.build()
        given: list[Any] = []
        controller.reconfigure_log = given.append
        write_config(self.dir, TWO.split("  b:", maxsplit=1)[0],
                     extra="  log: {format: json, level: warn}\n")
        with capturedLogs() as events:
            reply = self.command(controller, "reload")
        self.assertEqual((reply["ok"], reply["log"], reply["removed"]), (True, "applied", ["b"]))
        self.assertEqual([(s.format, s.level) for s in given], [("json", "warn")])
        self.assertIn("reload: app.log applied (format json, level warn, file stderr)",
                      [formatEvent(event) for event in events])
        self.assertEqual(sorted(app.daemons), ["a"])

    def test_reload_replaces_a_changed_daemon_after_its_run(self) -> None:
        """A changed daemon in a run is replaced once the run has ended."""
        app, controller = self.build(TWO.replace("daemonapp.testing:FakeDaemon\n    run_every: 20s",
                                                 "daemonapp.testing:PendingDaemon\n"
                                                 "    run_every: 20s\n    jobs: [1]"))
        self.clock.advance(0)
        old = app.daemons["b"]
        self.assertTrue(old.running)
        write_config(self.dir, TWO)
        reply = self.command(controller, "reload")
        self.assertEqual(reply["replaced"], ["b"])
        self.assertIs(app.daemons["b"], old)  # still finishing its run
        old.pending[0].callback(None)
        self.assertIsNot(app.daemons["b"], old)
        self.assertEqual(type(app.daemons["b"]).__name__, "FakeDaemon")

    def test_an_invalid_file_changes_nothing(self) -> None:
        """Every error of an invalid file is in the reply; the daemons stay as they were."""
        app, controller = self.build()
        before = dict(app.daemons)
        write_config(self.dir, TWO.replace("10s", "soon").replace("20s", "never"))
        reply = self.command(controller, "reload")
        self.assertEqual(reply["refused"], "invalid_config")
        self.assertEqual(len(reply["errors"]), 2)
        self.assertIn("daemons.a.run_every", reply["errors"][0])
        self.assertEqual(app.daemons, before)
        self.flushLoggedErrors()

    def test_reload_hooks_run_around_a_reload_even_an_invalid_one(self) -> None:
        """on_reload's begin and end run around each reload (systemd's RELOADING/READY)."""
        _, controller = self.build()
        calls: list[str] = []
        controller.on_reload(lambda: calls.append("begin"), lambda: calls.append("end"))
        self.command(controller, "reload")
        write_config(self.dir, "  a: 1\n")
        self.command(controller, "reload")
        self.assertEqual(calls, ["begin", "end", "begin", "end"])

    def test_an_app_without_a_file_cannot_reload(self) -> None:
        """A Python-built app (no YAML file) refuses reload."""
        from daemonapp.testing import make_app

        app, _ = make_app(self.clock)
        controller = Controller(app)
        controller.setServiceParent(app)
        app.startService()
        self.assertEqual(self.command(controller, "reload")["refused"], "unavailable")
        self.successResultOf(app.stop("test"))

    def test_a_trigger_during_a_run_says_a_run_is_in_flight(self) -> None:
        """A trigger's answer says whether a run is in flight (which it then follows)."""
        _, controller = self.build(PENDING_B)
        self.clock.advance(0)
        replies = [self.command(controller, "trigger", daemon=name) for name in "bba"]
        self.assertEqual([(r["state"], r["running"]) for r in replies],
                         [("after-run", True), ("merged", True), ("queued", False)])

    def test_a_trigger_of_a_daemon_a_reload_removes_is_refused(self) -> None:
        """A daemon a reload removes, still finishing its run: a trigger is refused
        (it would never run), and no run follows."""
        app, controller = self.build(PENDING_B)
        self.clock.advance(0)
        old = app.daemons["b"]
        self.assertTrue(old.running)
        write_config(self.dir, TWO.split("  b:", maxsplit=1)[0])
        self.assertEqual(self.command(controller, "reload")["removed"], ["b"])
        reply = self.command(controller, "trigger", daemon="b")
        self.assertEqual((reply["ok"], reply["refused"]), (False, "unavailable"))
        self.assertIn("removed by a reload", reply["error"])
        old.pending[0].callback(None)
        self.clock.advance(3600)
        self.assertNotIn("b", app.daemons)
        self.assertEqual(old.stats["runs"], 1)

    def test_a_trigger_of_a_daemon_a_reload_replaces_runs_its_replacement(self) -> None:
        """A daemon a reload replaces, still finishing its run: a trigger answers
        after-run (a second one merged), and the replacement runs once as it starts."""
        app, controller = self.build(PENDING_B)
        self.clock.advance(0)
        old = app.daemons["b"]
        write_config(self.dir, TWO.replace("20s", "1h\n    start_delay: 1h"))
        self.assertEqual(self.command(controller, "reload")["replaced"], ["b"])
        self.assertEqual(self.command(controller, "trigger", daemon="b")["state"], "after-run")
        self.assertEqual(self.command(controller, "trigger", daemon="b")["state"], "merged")
        old.pending[0].callback(None)
        new = app.daemons["b"]
        self.assertIsNot(new, old)
        self.clock.advance(0)
        self.assertEqual(new.stats["runs"], 1)  # at once, not after its start_delay of 1 h
        self.clock.advance(1800)
        self.assertEqual(new.stats["runs"], 1)  # once

    def test_a_trigger_before_a_reload_that_replaces_the_daemon_runs_its_replacement(
            self) -> None:
        """A trigger accepted during a run (after-run), then a reload that replaces the
        daemon: the trigger is not lost, the replacement runs once as it starts."""
        app, controller = self.build(PENDING_B)
        self.clock.advance(0)
        old = app.daemons["b"]
        self.assertEqual(self.command(controller, "trigger", daemon="b")["state"], "after-run")
        write_config(self.dir, TWO.replace("20s", "1h\n    start_delay: 1h"))
        self.assertEqual(self.command(controller, "reload")["replaced"], ["b"])
        self.assertEqual(self.command(controller, "trigger", daemon="b")["state"], "merged")
        old.pending[0].callback(None)
        new = app.daemons["b"]
        self.assertIsNot(new, old)
        self.clock.advance(0)
        self.assertEqual((old.stats["runs"], new.stats["runs"]), (1, 1))  # at once
        self.clock.advance(1800)
        self.assertEqual(new.stats["runs"], 1)  # once

    def test_a_queued_trigger_then_a_reload_that_replaces_the_daemon(self) -> None:
        """A trigger queued (not yet started) when a reload replaces the daemon: the
        replacement runs once at once instead."""
        app, controller = self.build()
        self.clock.advance(0)
        old = app.daemons["b"]
        self.assertEqual(old.stats["runs"], 1)
        self.assertEqual(self.command(controller, "trigger", daemon="b")["state"], "queued")
        write_config(self.dir, TWO.replace("20s", "1h\n    start_delay: 1h"))
        self.assertEqual(self.command(controller, "reload")["replaced"], ["b"])
        new = app.daemons["b"]
        self.assertIsNot(new, old)
        self.clock.advance(0)
        self.assertEqual((old.stats["runs"], new.stats["runs"]), (1, 1))
        self.clock.advance(1800)
        self.assertEqual(new.stats["runs"], 1)

    def test_a_reload_that_changes_nothing_keeps_a_pending_trigger(self) -> None:
        """A trigger accepted during a run stays with its daemon across a reload that
        leaves that daemon unchanged: it runs once after its run, as it would have."""
        app, controller = self.build(PENDING_B)
        self.clock.advance(0)
        old = app.daemons["b"]
        self.assertEqual(self.command(controller, "trigger", daemon="b")["state"], "after-run")
        self.assertEqual(self.command(controller, "reload")["unchanged"], ["a", "b"])
        old.pending[0].callback(None)
        self.assertIs(app.daemons["b"], old)
        self.clock.advance(0)
        self.assertEqual(old.stats["runs"], 2)

    def test_the_file_is_read_in_a_thread_and_applied_on_the_reactor(self) -> None:
        """A reload checks the file away from the reactor thread; the difference is
        applied when its result comes back to the reactor."""
        import threading

        from daemonapp import configcheck

        readers: list[int] = []
        real_load = configcheck.load_config

        def load_config(*args: Any, **kw: Any) -> Any:
            readers.append(threading.get_ident())
            return real_load(*args, **kw)

        self.patch(configcheck, "load_config", load_config)
        app, controller = self.build()
        calls = ThreadCalls()
        controller.reloader.run_in_thread = partial(in_thread, calls)
        write_config(self.dir, TWO + "  c:\n    type: daemonapp.testing:FakeDaemon\n")
        reply = controller.handle({"v": 1, "command": "reload"}, ME)
        self.assertIsInstance(reply, Deferred)
        calls.run_one()  # the thread's result, delivered on this (the reactor's) thread
        self.assertEqual(self.successResultOf(reply)["added"], ["c"])
        self.assertEqual(len(readers), 1)
        self.assertNotEqual(readers[0], threading.get_ident())
        self.assertIn("c", app.daemons)

    def test_a_reload_asked_during_a_reload_follows_it(self) -> None:
        """Reloads asked while one reads the file share one more reload after it (the
        file may have changed since it was read); the hooks frame each."""
        app, controller = self.build()
        calls = ThreadCalls()
        controller.reloader.run_in_thread = partial(in_thread, calls)
        frames: list[str] = []
        controller.on_reload(lambda: frames.append("begin"), lambda: frames.append("end"))
        first = controller.handle({"v": 1, "command": "reload"}, ME)
        function, args = calls.calls.get(timeout=30)  # the first read is over
        write_config(self.dir, TWO + "  c:\n    type: daemonapp.testing:FakeDaemon\n")
        second = controller.handle({"v": 1, "command": "reload"}, ME)
        third = controller.handle({"v": 1, "command": "reload"}, ME)
        assert isinstance(first, Deferred) and isinstance(second, Deferred)
        assert isinstance(third, Deferred)
        self.assertNoResult(first)
        function(*args)
        self.assertEqual(self.successResultOf(first)["added"], [])  # the file it read
        self.assertNoResult(second)
        calls.run_one()
        self.assertEqual(self.successResultOf(second)["added"], ["c"])
        self.assertEqual(self.successResultOf(third)["added"], ["c"])
        self.assertEqual(frames, ["begin", "end", "begin", "end"])
        self.assertEqual(sorted(app.daemons), ["a", "b", "c"])

    def test_a_stop_during_the_read_changes_nothing(self) -> None:
        """A graceful stop that began while the file was read: the reload is refused."""
        app, controller = self.build()
        calls = ThreadCalls()
        controller.reloader.run_in_thread = partial(in_thread, calls)
        write_config(self.dir, TWO + "  c:\n    type: daemonapp.testing:FakeDaemon\n")
        reply = controller.handle({"v": 1, "command": "reload"}, ME)
        app.stop("test")
        calls.run_one()
        assert isinstance(reply, Deferred)
        self.assertEqual(self.successResultOf(reply)["refused"], "unavailable")
        self.assertNotIn("c", app.daemons)


PENDING_B = TWO.replace("daemonapp.testing:FakeDaemon\n    run_every: 20s",
                        "daemonapp.testing:PendingDaemon\n    run_every: 20s\n    jobs: [1]")


class ThreadCalls:
    """A reactor's callFromThread for a test: what a thread hands over is queued, and
    the test runs it on its own thread (waiting for it with a bound)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Any, tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, function: Any, *args: Any) -> None:
        self.calls.put((function, args))

    def run_one(self) -> None:
        function, args = self.calls.get(timeout=30)
        function(*args)


class ProtocolLaterTests(SynchronousTestCase):
    def test_an_answer_that_comes_later_is_written_then(self) -> None:
        """A reply that is a Deferred (a reload) is written when it fires; the request
        timeout no longer applies to it."""
        later: Deferred[dict[str, Any]] = Deferred()
        controller = FakeController()
        controller.handle = lambda request, peer: later  # type: ignore[method-assign,assignment,return-value]
        clock = Clock()
        factory = ControlFactory(lambda: {"pid": 1}, clock, controller)  # type: ignore[arg-type]
        protocol = factory.buildProtocol(None)
        transport = PeerTransport(ME)
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"v": 1, "command": "reload"}\n')
        clock.advance(REQUEST_TIMEOUT * 2)
        self.assertEqual(transport.value(), b"")
        later.callback({"v": 1, "ok": True, "added": []})
        self.assertEqual(json.loads(transport.value())["added"], [])
        self.assertTrue(transport.disconnecting)

    def test_a_client_gone_before_the_answer_gets_nothing_written(self) -> None:
        """A client that left before a reload's answer: nothing is written, nothing fails."""
        later: Deferred[dict[str, Any]] = Deferred()
        controller = FakeController()
        controller.handle = lambda request, peer: later  # type: ignore[method-assign,assignment,return-value]
        clock = Clock()
        factory = ControlFactory(lambda: {"pid": 1}, clock, controller)  # type: ignore[arg-type]
        protocol = factory.buildProtocol(None)
        transport = PeerTransport(ME)
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"v": 1, "command": "reload"}\n')
        protocol.connectionLost(None)
        later.callback({"v": 1, "ok": True})
        self.assertEqual(transport.value(), b"")
        self.assertEqual((factory.clients, clock.getDelayedCalls()), (0, []))


# ------------------------------------------------------------------ the client


class FakeApp(threading.Thread):
    """A status socket that answers its connections in turn: ``None`` reads the request
    line and answers it as a command; a dict is a status answered without reading (as
    the app does once REQUEST_GRACE has passed with no line)."""

    def __init__(self, path: str, answers: list[dict[str, Any] | None]) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.server.settimeout(30)
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    def run(self) -> None:
        with self.server:
            for answer in self.answers:
                conn, _ = self.server.accept()
                with conn:
                    if answer is None:
                        line = conn.makefile("rb").readline()
                        self.requests.append(json.loads(line))
                        answer = {"v": 1, "ok": True, "daemon": "d", "state": "queued"}
                    conn.sendall(json.dumps(answer).encode() + b"\n")


@pytest.fixture
def socket_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="dcc")  # short: unix socket paths are limited
    yield os.path.join(directory, "status.sock")
    shutil.rmtree(directory, ignore_errors=True)


def test_a_command_answered_with_the_status_is_sent_again(socket_path: str) -> None:
    """A command whose line came after the grace (the app answered with its status,
    unread) is sent again on a new connection, and that answer is the reply."""
    app = FakeApp(socket_path, [{"pid": 7, "daemons": []}, None])
    app.start()
    reply = send_request(socket_path, {"command": "trigger", "daemon": "d"}, timeout=30)
    app.join(30)
    assert reply == {"v": 1, "ok": True, "daemon": "d", "state": "queued"}
    assert app.requests == [{"v": 1, "command": "trigger", "daemon": "d"}]


def test_an_app_without_commands_gets_a_command_a_few_times(socket_path: str) -> None:
    """An app from before commands answers every try with its status: that is the
    reply after COMMAND_TRIES connections."""
    app = FakeApp(socket_path, [{"pid": 7, "daemons": []}] * COMMAND_TRIES)
    app.start()
    reply = send_request(socket_path, {"command": "pause", "daemon": "d"}, timeout=30)
    app.join(30)
    assert (reply, app.is_alive()) == ({"pid": 7, "daemons": []}, False)
