"""daemonapp.workers on a Clock: how the supervisor starts, restarts, recycles and stops
its workers, what a worker tells it, and the app.processes setting."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from daemonapp.config import ConfigError, load_config
from daemonapp.configmodel import LogSettings
from daemonapp.control import Controller
from daemonapp.testing import FakeDaemon, make_app
from daemonapp.worker import (
    CONTROL_FD,
    MAX_LINE_BYTES,
    REPORT_FD,
    WorkerChannel,
    read_plan,
)
from daemonapp.workers import Supervisor, WorkerProcess, restart_delay
from tests._processes import write_file


class FakeTransport:
    """What spawnProcess gives a ProcessProtocol, recording what is done to it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[dict[str, Any]] = []
        self.signals: list[str] = []
        self.stdin_closed = False

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == CONTROL_FD
        self.written += [json.loads(line) for line in data.splitlines()]

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class SpawningClock(Clock):
    """A Clock with a spawnProcess that records each worker, and the reactor's system
    event triggers (recorded, fired by the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, list[str], dict[str, str], dict[int, Any]]] = []
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, callable: Any) -> None:
        self.triggers.append((phase, event, callable))

    def spawnProcess(self, protocol: WorkerProcess, executable: str, args: list[str],
                     env: dict[str, str], childFDs: dict[int, Any]) -> FakeTransport:
        transport = FakeTransport(1000 + len(self.spawned))
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        self.spawned.append((protocol, args, env, childFDs))
        return transport


class FakePort:
    def __init__(self, skt: socket.socket) -> None:
        self.skt = skt

    def fileno(self) -> int:
        return self.skt.fileno()


class FakeListener:
    def __init__(self, skt: socket.socket) -> None:
        self.port: FakePort | None = FakePort(skt)
        self.drained = 0

    def drain(self) -> Deferred[None]:
        self.drained += 1
        return succeed(None)


class FakeApp:
    """The hooks of a DaemonApp the supervisor uses."""

    def __init__(self, reactor: Clock, listeners: list[FakeListener]) -> None:
        self.reactor = reactor
        self.listeners = listeners
        self.daemons: dict[str, Any] = {}
        self.stopping_hooks: list[Any] = []
        self.stop_hooks: list[Any] = []
        self.snapshot_hooks: list[Any] = []
        self.reopen_hooks: list[Any] = []
        self.alert_hooks: list[Any] = []
        self.request_limit: Any = None
        self.controller: Controller | None = None
        self.lifetime = SimpleNamespace(stopping=False)
        self.stop_reason: str | None = None
        self.ended: Deferred[int] = Deferred()

    def when_ended(self) -> Deferred[int]:
        return self.ended

    def render_metrics(self) -> bytes:
        """The supervisor's own rendering (what its snapshot hooks sum over)."""
        return b"daemonapp_up 1\n"

    def getServiceNamed(self, name: str) -> Controller:
        if name != "control" or self.controller is None:
            raise KeyError(name)
        return self.controller

    def on_reopen_logs(self, hook: Any) -> None:
        self.reopen_hooks.append(hook)

    def on_stopping(self, hook: Any) -> None:
        self.stopping_hooks.append(hook)

    def add_stop_hook(self, hook: Any) -> None:
        self.stop_hooks.append(hook)

    def on_request_limit(self, hook: Any) -> None:
        self.request_limit = hook

    def on_alert(self, hook: Any) -> None:
        self.alert_hooks.append(hook)

    def add_snapshot_hook(self, hook: Any) -> None:
        self.snapshot_hooks.append(hook)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made = []
    for _ in range(2):
        skt = socket.socket()
        skt.bind(("127.0.0.1", 0))
        skt.listen(8)
        made.append(skt)
    yield made
    for skt in made:
        skt.close()


def _supervisor(tmp_path: Path, sockets: list[socket.socket], processes: int = 3,
                controller: bool = False) -> tuple[Supervisor, FakeApp, SpawningClock]:
    cfg = write_file(tmp_path / "d.yaml", _yaml(processes))
    clock = SpawningClock()
    app = FakeApp(clock, [FakeListener(skt) for skt in sockets])
    config = load_config(cfg)
    if controller:  # as daemonapp run has it: reloads apply app.log in this process
        app.controller = Controller(app, config)
        app.controller.reconfigure_log = lambda settings: None
        app.controller.reloader.run_in_thread = lambda function, *args: succeed(
            function(*args))
    supervisor = Supervisor(app, config, reactor=clock,
                            command=["python", "-m", "daemonapp.workers"])
    supervisor.startService()
    clock.advance(0)
    clock.advance(0)
    clock.advance(0)
    return supervisor, app, clock


def _yaml(processes: int, level: str = "info") -> str:
    return f"""\
app:
  state_dir: ./var
  processes: {processes}
  log: {{level: {level}}}
listeners:
  - protocol: fastcgi
    endpoint: unix:./run/app.sock
    native: tests.listeners.workers_apps:pid_native
  - protocol: http
    endpoint: tcp:8080
    native: tests.listeners.workers_apps:pid_native
"""


def _ready(worker: WorkerProcess) -> None:
    worker.childDataReceived(REPORT_FD, b'{"t": "ready"}\n')


def _end(worker: WorkerProcess, code: int | None = 0, sig: int | None = None) -> None:
    reason = (ProcessDone(0) if code == 0 and sig is None
              else ProcessTerminated(exitCode=code, signal=sig))
    worker.processEnded(Failure(reason))


def _orders(worker: WorkerProcess) -> list[str]:
    """What the supervisor told ``worker`` after its plan."""
    transport: Any = worker.transport
    return [message["t"] for message in transport.written[1:]]


def _plan(worker: WorkerProcess) -> tuple[Any, dict[int, int], bytes]:
    """The plan ``worker`` was sent, read as the worker reads it (and what followed)."""
    transport: Any = worker.transport
    read, write = os.pipe()
    try:
        os.write(write, b"".join(json.dumps(m).encode() + b"\n" for m in transport.written))
        os.close(write)
        return read_plan(read)
    finally:
        os.close(read)


def test_restart_delays_double_up_to_thirty_seconds() -> None:
    """A worker dying young is restarted after 0.5 s, then 1, 2, 4 ... at most 30 s."""
    assert [restart_delay(n) for n in range(9)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0,
                                                    30.0, 30.0]


def test_the_supervisor_starts_n_minus_one_workers_on_its_sockets(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """processes: 3 starts two workers, each given every listening socket from fd 5 on,
    the pipes on fds 3 and 4, and first on its pipe the plan: the supervisor's listeners
    (no daemons) and the fd of each."""
    supervisor, _, clock = _supervisor(tmp_path, sockets)
    assert len(clock.spawned) == 2
    worker, args, env, child_fds = clock.spawned[0]
    assert args == ["python", "-m", "daemonapp.workers", str(tmp_path / "d.yaml")]
    config, fds, rest = _plan(worker)
    assert fds == {0: 5, 1: 6}
    assert config.listeners == supervisor.config.listeners
    assert config.daemons == ()
    assert rest == b""
    assert child_fds[CONTROL_FD] == "w"
    assert child_fds[REPORT_FD] == "r"
    for fd, skt in zip((5, 6), sockets, strict=True):
        dup = socket.socket(fileno=child_fds[fd])
        try:
            assert dup.getsockname() == skt.getsockname()
        finally:
            dup.detach()
    assert "LISTEN_FDS" not in env
    assert [w.state for w in supervisor.workers] == ["starting", "starting"]


def test_a_worker_that_dies_is_restarted_with_backoff(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A young death restarts after 0.5 s, the next after 1 s; one that lived 10 s at once."""
    supervisor, _, clock = _supervisor(tmp_path, sockets)
    first = supervisor.workers[0]
    _ready(first)
    _end(first, None, 9)
    clock.advance(0.4)
    assert len(clock.spawned) == 2
    clock.advance(0.1)
    assert len(clock.spawned) == 3
    again = clock.spawned[-1][0]
    _end(again, 1)
    clock.advance(0.9)
    assert len(clock.spawned) == 3
    clock.advance(0.1)
    assert len(clock.spawned) == 4
    clock.advance(10)
    _end(clock.spawned[-1][0], None, 9)
    clock.advance(0)
    assert len(clock.spawned) == 5
    assert len(supervisor.workers) == 2


def test_max_requests_starts_the_replacement_before_draining(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A worker at max_requests serves until its replacement is ready, then drains; a
    second one waits until the first has ended."""
    supervisor, _, clock = _supervisor(tmp_path, sockets)
    one, two = supervisor.workers
    _ready(one)
    _ready(two)
    one.childDataReceived(REPORT_FD, b'{"t": "retire"}\n')
    two.childDataReceived(REPORT_FD, b'{"t": "retire"}\n')
    clock.advance(0)
    assert len(clock.spawned) == 3
    assert _orders(one) == [] and _orders(two) == []
    _ready(clock.spawned[2][0])
    assert _orders(one) == ["drain"]
    assert _orders(two) == []
    clock.advance(1)
    assert len(clock.spawned) == 3  # one at a time: nothing new while one drains
    _end(one)
    clock.advance(0)
    assert len(clock.spawned) == 4
    _ready(clock.spawned[3][0])
    assert _orders(two) == ["drain"]
    _end(two)
    assert [w.state for w in supervisor.workers] == ["serving", "serving"]


def test_the_supervisors_own_max_requests_hands_its_share_to_a_worker(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """Its own max_requests: one more worker starts, then its listeners drain; it keeps
    running (the daemons live there) and N workers serve."""
    supervisor, app, clock = _supervisor(tmp_path, sockets)
    for worker in supervisor.workers:
        _ready(worker)
    app.request_limit("max_requests (10) reached")
    clock.advance(0)
    assert len(clock.spawned) == 3
    assert [listener.drained for listener in app.listeners] == [0, 0]
    _ready(clock.spawned[2][0])
    assert [listener.drained for listener in app.listeners] == [1, 1]
    assert supervisor.serving is False
    assert len(supervisor.workers) == 3


def test_a_stop_drains_every_worker_and_waits(tmp_path: Path,
                                              sockets: list[socket.socket]) -> None:
    """A graceful stop tells each worker to drain, restarts none, and its hook fires once
    all have ended."""
    supervisor, app, clock = _supervisor(tmp_path, sockets)
    one, two = supervisor.workers
    _ready(one)
    for hook in app.stopping_hooks:
        hook("signal SIGTERM")
    assert _orders(one) == ["drain"] and _orders(two) == ["drain"]
    ended = app.stop_hooks[0]()
    _end(one)
    assert not ended.called
    _end(two, None, 9)
    clock.advance(60)
    assert ended.called
    assert len(clock.spawned) == 2


def _real_app_with_workers(tmp_path: Path) -> tuple[Any, Supervisor, SpawningClock]:
    """A DaemonApp (stop_timeout 30 s) whose supervisor has two workers serving."""
    clock = SpawningClock()
    app, _ = make_app(clock, stop_timeout=30)
    config = load_config(write_file(tmp_path / "d.yaml", _yaml(3)))
    supervisor = Supervisor(app, config, reactor=clock,
                            command=["python", "-m", "daemonapp.workers"])
    supervisor.setServiceParent(app)  # type: ignore[no-untyped-call]
    app.startService()
    clock.advance(0)
    for _ in range(2):  # (the app has no listener of its own here to hand them)
        _ready(supervisor.spawn())
    return app, supervisor, clock


def _reap_trigger(clock: SpawningClock) -> Any:
    """The one 'before shutdown' trigger the supervisor added."""
    [(phase, event, trigger)] = clock.triggers
    assert (phase, event) == ("before", "shutdown")
    return trigger


def test_an_abandoned_stop_kills_the_workers_still_draining(tmp_path: Path) -> None:
    """When the app abandons its stop at stop_timeout, each worker still draining is sent
    SIGKILL (one that ended is not), and the reactor's shutdown waits until they are
    reaped."""
    app, supervisor, clock = _real_app_with_workers(tmp_path)
    one, two = supervisor.workers
    statuses: list[int] = []
    app.when_ended().addCallback(statuses.append)
    app.stop("signal SIGTERM")
    assert _orders(one) == ["drain"] and _orders(two) == ["drain"]
    _end(one)
    clock.advance(29.9)
    transports: list[Any] = [one.transport, two.transport]
    assert [t.signals for t in transports] == [[], []]
    assert clock.triggers == []
    clock.advance(0.1)
    assert statuses == [1]
    assert [t.signals for t in transports] == [[], ["KILL"]]
    reaped = _reap_trigger(clock)()
    assert not reaped.called
    _end(two, None, 9)
    assert reaped.called
    assert supervisor.workers == []
    assert len(clock.spawned) == 2


def test_a_second_sigterm_kills_the_workers_still_draining(tmp_path: Path) -> None:
    """A second SIGTERM ends the app at once: its workers too, by SIGKILL."""
    app, supervisor, clock = _real_app_with_workers(tmp_path)
    transports: list[Any] = [worker.transport for worker in supervisor.workers]
    app.lifetime.handle_signal(signal.SIGTERM)
    assert [t.signals for t in transports] == [[], []]
    app.lifetime.handle_signal(signal.SIGTERM)
    assert [t.signals for t in transports] == [["KILL"], ["KILL"]]
    assert _reap_trigger(clock) is not None


def test_workers_never_reaped_end_the_wait_after_its_bound(tmp_path: Path) -> None:
    """A killed worker whose end never comes holds the reactor's shutdown 5 s at most."""
    app, _, clock = _real_app_with_workers(tmp_path)
    app.stop("signal SIGTERM")
    clock.advance(30)
    reaped = _reap_trigger(clock)()
    clock.advance(4.9)
    assert not reaped.called
    clock.advance(0.1)
    assert reaped.called


def test_the_snapshot_lists_processes_and_sums_counts(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """Status lists each process; listener counts are the sum of all, ended ones kept."""
    supervisor, app, _ = _supervisor(tmp_path, sockets, processes=2)
    worker = supervisor.workers[0]
    _ready(worker)
    report = {"t": "snapshot", "snapshot": {"listeners": [
        {"requests": 5, "in_flight": 1, "name": "fastcgi:fd:5"}, {"requests": 2}]}}
    worker.childDataReceived(REPORT_FD, json.dumps(report).encode() + b"\n")
    snap: dict[str, Any] = {"state": "running", "uptime": 3.0,
                            "listeners": [{"requests": 10, "in_flight": 0, "name": "a"},
                                          {"requests": 1, "name": "b"}]}
    app.snapshot_hooks[0](snap)
    assert [(p["role"], p["requests"], p["state"]) for p in snap["processes"]] == [
        ("supervisor", 11, "running"), ("worker", 7, "serving")]
    assert [entry["requests"] for entry in snap["listeners"]] == [15, 3]
    assert snap["listeners"][0]["in_flight"] == 1
    assert snap["listeners"][0]["name"] == "a"
    _end(worker, None, 9)
    snap = {"state": "running", "listeners": [{"requests": 10}, {"requests": 1}]}
    app.snapshot_hooks[0](snap)
    assert [entry["requests"] for entry in snap["listeners"]] == [15, 3]


def test_uploads_in_progress_are_summed_and_not_kept_once_a_worker_ended(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """receiving is the sum over the processes, and a gauge: an ended worker's is dropped."""
    supervisor, app, _ = _supervisor(tmp_path, sockets, processes=2)
    worker = supervisor.workers[0]
    _ready(worker)
    report = {"t": "snapshot", "snapshot": {"listeners": [{"requests": 5, "receiving": 2}]}}
    worker.childDataReceived(REPORT_FD, json.dumps(report).encode() + b"\n")
    snap: dict[str, Any] = {"state": "running", "listeners": [{"receiving": 1}]}
    app.snapshot_hooks[0](snap)
    assert snap["listeners"][0]["receiving"] == 3
    _end(worker, None, 9)
    snap = {"state": "running", "listeners": [{"receiving": 1}]}
    app.snapshot_hooks[0](snap)
    assert snap["listeners"][0]["receiving"] == 1


def test_timed_out_counts_and_work_in_flight_are_summed_too(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """Connections timed out (by waiting state), bytes buffered and the work in flight
    by kind are sums over the processes as well; of a worker that ended, only the
    counters are kept (docs/listeners.md: the counts and the metrics are the sums)."""
    supervisor, app, _ = _supervisor(tmp_path, sockets, processes=2)
    worker = supervisor.workers[0]
    _ready(worker)
    report = {"t": "snapshot", "snapshot": {"in_flight": {"request": 3}, "listeners": [
        {"timed_out": {"header": 3, "body": 1}, "buffered_bytes": 100, "in_flight": 3}]}}
    worker.childDataReceived(REPORT_FD, json.dumps(report).encode() + b"\n")
    snap: dict[str, Any] = {"state": "running", "in_flight": {"request": 1, "job": 2},
                            "listeners": [{"timed_out": {"header": 1}, "buffered_bytes": 10,
                                           "in_flight": 1}]}
    app.snapshot_hooks[0](snap)
    assert snap["listeners"][0]["timed_out"] == {"header": 4, "body": 1}
    assert (snap["listeners"][0]["buffered_bytes"], snap["listeners"][0]["in_flight"]) == (
        110, 4)
    assert snap["in_flight"] == {"request": 4, "job": 2}
    _end(worker, None, 9)
    snap = {"state": "running", "in_flight": {"request": 1},
            "listeners": [{"timed_out": {}, "buffered_bytes": 10}]}
    app.snapshot_hooks[0](snap)
    assert snap["listeners"][0]["timed_out"] == {"header": 3, "body": 1}
    assert snap["listeners"][0]["buffered_bytes"] == 10
    assert snap["in_flight"] == {"request": 1}


def test_a_restarted_worker_serves_the_config_the_supervisor_runs(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A worker started after the file was edited (here: broken) gets the listeners the
    supervisor bound, not the file's."""
    supervisor, _, clock = _supervisor(tmp_path, sockets)
    write_file(tmp_path / "d.yaml", "app: [this is not\n")
    _end(supervisor.workers[0], None, 9)
    clock.advance(0.5)
    config, fds, _ = _plan(clock.spawned[-1][0])
    assert len(clock.spawned) == 3
    assert config.listeners == supervisor.config.listeners
    assert fds == {0: 5, 1: 6}


def test_sighup_has_every_worker_reopen_its_log(tmp_path: Path,
                                                sockets: list[socket.socket]) -> None:
    """SIGHUP in the supervisor (logrotate signals the main process) reaches each worker."""
    supervisor, app, _ = _supervisor(tmp_path, sockets)
    for hook in app.reopen_hooks:
        hook()
    assert [_orders(worker) for worker in supervisor.workers] == [["reopen"], ["reopen"]]


def test_a_reload_sends_a_new_app_log_to_every_worker(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A reload that changes app.log sends it to each worker and to workers started later;
    one that leaves it alone sends nothing."""
    supervisor, app, clock = _supervisor(tmp_path, sockets, controller=True)
    assert app.controller is not None
    write_file(tmp_path / "d.yaml", _yaml(3, level="debug"))
    assert app.controller.reload("SIGHUP").result["log"] == "applied"
    transport: Any = supervisor.workers[0].transport
    assert transport.written[1:] == [
        {"t": "log", "format": "text", "level": "debug", "file": None}]
    assert _orders(supervisor.workers[1]) == ["log"]
    app.controller.reload("daemonapp reload")
    assert _orders(supervisor.workers[1]) == ["log"]
    _end(supervisor.workers[0], None, 9)
    clock.advance(0.5)
    config, _, _ = _plan(clock.spawned[-1][0])
    assert config.app.log == LogSettings(level="debug")


def test_a_report_line_over_the_bound_kills_the_worker(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A worker sending a line longer than 1 MiB is killed, not buffered."""
    supervisor, _, _ = _supervisor(tmp_path, sockets)
    worker = supervisor.workers[0]
    worker.childDataReceived(REPORT_FD, b"x" * (MAX_LINE_BYTES + 1))
    transport: Any = worker.transport
    assert transport.signals == ["KILL"]


class StoppingApp:
    def __init__(self) -> None:
        self.stop_reason: str | None = None

    def stop(self, reason: str, status: int = 0) -> None:
        self.stop_reason = self.stop_reason or reason

    def snapshot(self) -> dict[str, Any]:
        return {"listeners": []}


class LineTransport:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.lines += [json.loads(line) for line in data.splitlines()]


def _channel() -> tuple[WorkerChannel, StoppingApp, LineTransport]:
    channel = WorkerChannel(Clock())
    app = StoppingApp()
    channel.app = app
    transport = LineTransport()
    channel.makeConnection(transport)  # type: ignore[arg-type]
    return channel, app, transport


def test_a_worker_drains_when_its_supervisor_is_gone() -> None:
    """EOF on the control pipe (the supervisor died, even by SIGKILL) stops the worker."""
    channel, app, _ = _channel()
    channel.connectionLost(Failure(EOFError()))
    assert app.stop_reason == "the supervisor is gone"


def test_a_worker_drains_when_told() -> None:
    """The supervisor's drain order stops the worker gracefully."""
    channel, app, _ = _channel()
    channel.dataReceived(b'{"t": "drain"}\n')
    assert app.stop_reason == "the supervisor asked this worker to drain"


def test_a_worker_at_max_requests_asks_once_and_serves_on() -> None:
    """max_requests in a worker asks for a replacement once and does not stop it."""
    channel, app, transport = _channel()
    channel.retire("max_requests (5) reached")
    channel.retire("max_requests (5) reached")
    assert [line["t"] for line in transport.lines] == ["retire"]
    assert app.stop_reason is None


def test_a_workers_job_status_comes_from_the_supervisor() -> None:
    """/jobs/<id> in a worker asks the supervisor and answers what it says."""
    channel, _, transport = _channel()
    answer = channel.job_status(7)
    assert transport.lines == [{"t": "job", "id": 1, "job": "7"}]
    channel.dataReceived(b'{"t": "job", "id": 1, "status": {"state": "done"}}\n')
    assert answer.result == {"state": "done"}


def test_a_workers_metrics_are_the_supervisors(tmp_path: Path,
                                               sockets: list[socket.socket]) -> None:
    """/metrics in a worker serves what its supervisor renders (the daemons, every
    process's counts: DESIGN §10 "the app's"); its own when none comes (the supervisor
    gone, or a text over a line)."""
    supervisor, app, _ = _supervisor(tmp_path, sockets, processes=2)
    worker = supervisor.workers[0]
    _ready(worker)
    channel, worker_app = _worker_app()
    worker_app.metrics_from = channel.metrics_text
    asked = worker_app.metrics_text()
    request = channel.transport.lines[-1]  # type: ignore[union-attr]
    assert request == {"t": "metrics", "id": 1}
    worker.childDataReceived(REPORT_FD, json.dumps(request).encode() + b"\n")
    answer = worker.transport.written[-1]  # type: ignore[union-attr]
    assert answer["t"] == "metrics" and answer["status"] == app.render_metrics().decode()
    channel.dataReceived(json.dumps(answer).encode() + b"\n")
    assert asked.result == app.render_metrics()
    own = worker_app.metrics_text()
    channel.dataReceived(b'{"t": "metrics", "id": 2, "status": null}\n')
    assert own.result == worker_app.render_metrics()


def test_a_worker_carries_out_log_orders() -> None:
    """``reopen`` reopens the worker's log file; ``log`` applies the settings sent."""
    channel, _, _ = _channel()
    done: list[Any] = []
    channel.reopen_logs = lambda: done.append("reopened")
    channel.reconfigure_log = done.append
    channel.dataReceived(b'{"t": "reopen"}\n{"t": "log", "format": "json", "level": "warn",'
                         b' "file": "/tmp/app.log"}\n')
    assert done == ["reopened", LogSettings(format="json", level="warn", file="/tmp/app.log")]


def test_a_log_order_that_fails_leaves_the_worker_serving() -> None:
    """A log file the worker cannot open is logged; the worker goes on."""
    channel, app, _ = _channel()

    def refuse(settings: LogSettings) -> None:
        raise PermissionError("/var/log/app.log")

    channel.reconfigure_log = refuse
    channel.dataReceived(b'{"t": "log", "format": "text", "level": "info", "file": "x"}\n')
    assert app.stop_reason is None


# ------------------------------------------------- /healthz in every process (§10)


def _in_alert_app(app: FakeApp) -> tuple[Any, Clock, FakeDaemon]:
    """The supervisor's daemons: a real app on a Clock whose daemon fails 3 runs, then
    works; its alerts reach the FakeApp's hooks, as DaemonApp.on_alert does."""
    real, clock = make_app()
    daemon = FakeDaemon([RuntimeError("db down")] * 3 + ["ok"], name="flaky", run_every=1.0,
                        maximum_idle=1.0, alert_after=2)
    real.add(daemon)
    real.on_alert(lambda event: [hook(event) for hook in app.alert_hooks])
    app.daemons = real.daemons
    real.startService()
    return real, clock, daemon


def _health_orders(worker: WorkerProcess) -> list[dict[str, Any]]:
    transport: Any = worker.transport
    return [message for message in transport.written if message["t"] == "health"]


def test_workers_are_told_which_daemons_are_in_alert_when_it_changes(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """An alert and a recovery reach every worker at once; nothing is sent while the
    state stays the same; a worker's report brings a newer failure count."""
    supervisor, app, _ = _supervisor(tmp_path, sockets)
    real, clock, daemon = _in_alert_app(app)
    clock.advance(0)  # failure 1: no alert
    assert [_health_orders(worker) for worker in supervisor.workers] == [[], []]
    clock.advance(1)  # failure 2: the alert
    alert = {"t": "health", "alerts": [["flaky", 2]], "in_alert": 1}
    assert [_health_orders(worker) for worker in supervisor.workers] == [[alert], [alert]]
    supervisor.share_alerts()
    assert len(_health_orders(supervisor.workers[0])) == 1
    clock.advance(1)  # failure 3: no event; the next report from a worker brings it
    worker = supervisor.workers[0]
    worker.childDataReceived(REPORT_FD, b'{"t": "snapshot", "snapshot": {}}\n')
    assert _health_orders(worker)[-1]["alerts"] == [["flaky", 3]]
    clock.advance(1)  # the run that works: the recovery
    healthy = {"t": "health", "alerts": [], "in_alert": 0}
    assert [_health_orders(worker)[-1] for worker in supervisor.workers] == [healthy] * 2
    assert daemon.stats["in_alert"] is False
    real.stopService()


def test_a_worker_started_during_an_alert_is_told_after_its_plan(
        tmp_path: Path, sockets: list[socket.socket]) -> None:
    """A worker that replaces a dead one while a daemon is in alert gets the state right
    after its plan; one started with nothing in alert is told nothing."""
    supervisor, app, clock = _supervisor(tmp_path, sockets)
    assert [_orders(worker) for worker in supervisor.workers] == [[], []]
    real, real_clock, _ = _in_alert_app(app)
    real_clock.advance(0)
    real_clock.advance(1)
    _end(supervisor.workers[0], None, 9)
    clock.advance(0.5)
    transport: Any = clock.spawned[-1][0].transport
    assert transport.written[1:] == [{"t": "health", "alerts": [["flaky", 2]], "in_alert": 1}]
    real.stopService()


def test_a_stop_tells_each_worker_its_reason() -> None:
    """The drain of the supervisor's own stop carries the stop's reason; a recycle's
    drain does not."""
    supervisor = SimpleNamespace(reactor=Clock())
    worker = WorkerProcess(supervisor, 1)  # type: ignore[arg-type]
    worker.makeConnection(FakeTransport(1001))  # type: ignore[arg-type]
    worker.drain("signal SIGTERM")
    worker.drain()
    transport: Any = worker.transport
    assert transport.written == [{"t": "drain", "stopping": "signal SIGTERM"}, {"t": "drain"}]


def _worker_app() -> tuple[WorkerChannel, Any]:
    app, _ = make_app()
    app.startService()
    channel = WorkerChannel(Clock())
    channel.app = app
    channel.makeConnection(LineTransport())  # type: ignore[arg-type]
    return channel, app


def test_every_process_answers_healthz_the_same(tmp_path: Path,
                                                sockets: list[socket.socket]) -> None:
    """A worker fed what its supervisor sends answers /healthz as the supervisor does: 503
    with the same reasons while a daemon is in alert, 200 after its recovery, 503 with
    the supervisor's reason once it stops."""
    supervisor, app, _ = _supervisor(tmp_path, sockets, processes=2)
    real, clock, _ = _in_alert_app(app)
    channel, worker_app = _worker_app()
    worker = supervisor.workers[0]
    transport: Any = worker.transport
    fed = [1]  # the plan is not the channel's

    def answers() -> tuple[tuple[bool, list[str]], tuple[bool, list[str]]]:
        for message in transport.written[fed[0]:]:
            channel.dataReceived(json.dumps(message).encode() + b"\n")
        fed[0] = len(transport.written)
        mine, theirs = real.health_report(), worker_app.health_report()
        return (mine[0], mine[1]["reasons"]), (theirs[0], theirs[1]["reasons"])

    clock.advance(0)
    assert answers() == ((True, []), (True, []))
    clock.advance(1)
    in_alert = (False, ["daemon flaky in alert: 2 failed run(s) in a row"])
    assert answers() == (in_alert, in_alert)
    assert worker_app.health_report()[1]["in_alert"] == 1
    clock.advance(1)
    clock.advance(1)
    assert answers() == ((True, []), (True, []))
    real.stop("signal SIGTERM")
    for hook in app.stopping_hooks:
        hook("signal SIGTERM")
    stopping = (False, ["stopping: signal SIGTERM"])
    assert answers() == (stopping, stopping)
    assert worker_app.stop_reason == "the supervisor asked this worker to drain"


def test_a_malformed_health_order_changes_nothing() -> None:
    """A health line of the wrong shape is ignored; names and their number are bounded."""
    channel, app = _worker_app()
    channel.dataReceived(b'{"t": "health", "alerts": "flaky", "in_alert": 1}\n'
                         b'{"t": "health", "alerts": [["x", "two"]], "in_alert": true}\n')
    assert app.health_report()[0] is True
    many = [[f"d{i:02}", 2] for i in range(30)]
    channel.dataReceived(json.dumps({"t": "health", "alerts": many, "in_alert": 30}).encode()
                         + b"\n")
    reasons = app.health_report()[1]["reasons"]
    assert (len(reasons), reasons[-1]) == (21, "10 more daemon(s) in alert")


def _check(tmp_path: Path, text: str) -> list[str]:
    cfg = write_file(tmp_path / "d.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    return caught.value.messages


@pytest.mark.parametrize("value", ["0", "two", "true", "1000"])
def test_processes_must_be_a_number_of_processes(tmp_path: Path, value: str) -> None:
    """app.processes takes a whole number from 1 to 256."""
    messages = _check(tmp_path, f"app:\n  processes: {value}\n")
    assert len(messages) == 1
    assert messages[0].startswith(f"{tmp_path / 'd.yaml'}:2: app.processes: expected a "
                                  "number of processes from 1 to 256")


def test_processes_default_to_one(tmp_path: Path) -> None:
    """Without app.processes the app is one process."""
    cfg = write_file(tmp_path / "d.yaml", "app:\n  state_dir: ./var\n")
    assert load_config(cfg).app.processes == 1


def test_processes_refuse_the_web_servers_fd0(tmp_path: Path) -> None:
    """processes > 1 with a listener on fd 0 (the web server owns the processes) is an
    error naming the key."""
    messages = _check(tmp_path, "app:\n  processes: 2\nlisteners:\n  - protocol: fastcgi\n"
                                "    endpoint: fd:0\n"
                                "    native: tests.listeners.workers_apps:pid_native\n")
    assert len(messages) == 1
    assert "d.yaml:2: app.processes: processes: 2 cannot serve the fd 0" in messages[0]


def test_processes_exclude_idle_exit(tmp_path: Path) -> None:
    """processes > 1 with shutdown_if_idle is an error naming both."""
    messages = _check(tmp_path, "app:\n  processes: 2\n  shutdown_if_idle: 1m\n")
    assert messages == [f"{tmp_path / 'd.yaml'}:2: app.processes: processes: 2 and "
                        "shutdown_if_idle exclude each other (an app of several processes "
                        "runs until it is stopped or shutdown_after); remove one of them"]
