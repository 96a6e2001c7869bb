"""JobDispatcher's logic on a task.Clock, with a real SQLite store and fake children."""

from __future__ import annotations

import marshal
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from daemonapp.app import DaemonApp
from daemonapp.daemon import OptionError
from daemonapp.interfaces import IDaemon
from daemonapp.jobs import open_store
from daemonapp.jobs.dispatcher import JobDispatcher
from tests.jobs._helpers import PipeNotifier


class FakeProcess:
    """What spawnProcess returns: a pid and a record of signals."""

    def __init__(self, protocol: Any, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: list[Any] = []
        self.written = b""
        protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, signal: Any) -> None:
        self.signals.append(signal)

    def finish(self, result: dict[str, Any] | None = None, code: int = 0,
               signal: int | None = None) -> None:
        """Pretend the child wrote ``result`` on fd 3 and exited."""
        if result is not None:
            self.protocol.childDataReceived(3, marshal.dumps(result))
        if signal is None and code == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code if signal is None else None, signal))
        self.protocol.processEnded(reason)


class FakeReactor(Clock):
    """A Clock that spawns fake processes and runs callFromThread at once."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], *,
                     env: Any = None, path: Any = None, childFDs: Any = None,
                     **kw: Any) -> FakeProcess:
        self.env = env
        self.args = args
        self.childFDs = childFDs
        process = FakeProcess(protocol, 1000 + len(self.processes))
        self.processes.append(process)
        return process

    def addReader(self, reader: Any) -> None:
        pass

    def removeReader(self, reader: Any) -> None:
        pass


class SyncPool:
    """A thread pool that runs the call at once, in the caller's thread."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class CountingStore:
    """A real store that records the clock time of each progress write."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.progress_at: list[float] = []

    def set_progress(self, *args: Any) -> None:
        self.progress_at.append(self.clock.seconds())
        self.inner.set_progress(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = open_store(str(tmp_path / "state"))
    yield opened
    opened.close()


def start(reactor: FakeReactor, store: Any, **options: Any) -> tuple[DaemonApp, JobDispatcher]:
    app = DaemonApp(clock=reactor, threadpool=SyncPool(), handle_signals=False,
                    stop_timeout=30)
    dispatcher = JobDispatcher(name="jobs", store=store, modules=["sample_jobs"], **options)
    app.add(dispatcher)
    app.startService()
    reactor.advance(0)
    return app, dispatcher


def test_provides_idaemon(store: Any) -> None:
    """A JobDispatcher provides IDaemon."""
    assert verifyObject(IDaemon, JobDispatcher(store=store))


@pytest.mark.parametrize(("key", "value"), [
    ("max_children", 0),
    ("max_attempts", "three"),
    ("timeout", "soon"),
    ("memory_limit", "lots"),
    ("progress_persist_hz", 0),
    ("on_failure", {"sms": "+123"}),
    ("modules", ["not a module"]),
    ("lease", 0),
])
def test_bad_option(key: str, value: Any) -> None:
    """A bad option value raises OptionError naming the key."""
    with pytest.raises(OptionError) as raised:
        JobDispatcher(**{key: value})
    assert raised.value.key == key


def test_options_parsed() -> None:
    """Durations and sizes are parsed at construction."""
    dispatcher = JobDispatcher(timeout="1m", memory_limit="512MiB", lease="45s",
                               retry_delay="2s", kill_grace=1)
    assert (dispatcher.timeout, dispatcher.memory_limit, dispatcher.lease,
            dispatcher.retry_delay, dispatcher.kill_grace) == (60.0, 536870912, 45.0, 2.0, 1.0)


def test_claims_up_to_max_children(reactor: FakeReactor, store: Any) -> None:
    """With three jobs pending and max_children 2, two children start."""
    for _ in range(3):
        store.submit("echo", {})
    start(reactor, store, max_children=2)
    assert len(reactor.processes) == 2
    assert [r.state for r in store.list()] == ["pending", "running", "running"]


def test_child_gets_job_on_stdin_not_argv(reactor: FakeReactor, store: Any) -> None:
    """The job goes to the child on stdin; argv holds only the parent pid and limits."""
    job_id = store.submit("echo", {"secret": "s3"})
    start(reactor, store, memory_limit="64MiB")
    description = marshal.loads(reactor.processes[0].written)
    assert (description["id"], description["payload"]) == (job_id, {"secret": "s3"})
    assert reactor.args[1:4] == ["-m", "daemonapp.jobs.child", "--parent"]
    assert reactor.args[4] == str(os.getpid())
    assert reactor.args[5:] == ["--memory-limit", "67108864"]
    assert "s3" not in " ".join(reactor.args) + repr(reactor.env)
    assert reactor.childFDs == {0: "w", 1: "r", 2: "r", 3: "r", 4: "r"}


def test_success_marks_done(reactor: FakeReactor, store: Any) -> None:
    """A child that reports success and exits 0 completes the job; the slot is freed."""
    job_id = store.submit("echo", {})
    app, _ = start(reactor, store)
    assert app._activity == {"job": 1}
    reactor.processes[0].finish({"ok": True, "result": None})
    assert store.get(job_id).state == "done"
    assert app._activity == {"job": 0}


def test_crash_retries_with_backoff(reactor: FakeReactor, store: Any) -> None:
    """A child killed by a signal spends the attempt; the job is pending again later."""
    job_id = store.submit("echo", {})
    start(reactor, store, retry_delay=60)
    reactor.processes[0].finish(signal=9)
    record = store.get(job_id)
    assert (record.state, record.attempts) == ("pending", 1)
    assert record.error.startswith("the job child was killed by signal 9 (SIGKILL)")
    assert record.run_after > record.updated_at + 50


def test_last_failure_calls_hook_once(reactor: FakeReactor, store: Any) -> None:
    """After the last attempt the job is failed and on_failure is called once."""
    events: list[dict[str, Any]] = []
    job_id = store.submit("fail", {})
    start(reactor, store, max_attempts=1, on_failure=events.append)
    reactor.processes[0].finish({"ok": False, "error": "ValueError: x",
                                 "traceback": "Traceback ...\nValueError: x\n"})
    assert store.get(job_id).state == "failed"
    assert [(e["id"], e["kind"], e["attempts"], e["error"]) for e in events] == [
        (job_id, "fail", 1, "Traceback ...\nValueError: x")]


def test_progress_persisted_at_bounded_rate(reactor: FakeReactor, store: Any) -> None:
    """Progress every 10 ms for 1 s is written at 2 Hz, plus the final value."""
    counting = CountingStore(store, reactor)
    job_id = store.submit("storm", {})
    start(reactor, counting, progress_persist_hz=2)
    process = reactor.processes[0]
    for i in range(100):
        process.protocol.childDataReceived(4, f"{i}.0\tstep {i}\n".encode())
        reactor.advance(0.01)
    process.finish({"ok": True})
    assert counting.progress_at == pytest.approx([0.0, 0.5, 1.0])
    record = store.get(job_id)
    assert (record.state, record.percent, record.message) == ("done", 99.0, "step 99")


def test_status_from_memory_while_running(reactor: FakeReactor, store: Any) -> None:
    """job_status() answers from memory while the job runs here."""
    job_id = store.submit("storm", {})
    _, dispatcher = start(reactor, store, progress_persist_hz=0.001)
    process = reactor.processes[0]
    process.protocol.childDataReceived(4, b"10.0\tfirst\n")
    process.protocol.childDataReceived(4, b"42.0\thalf")
    process.protocol.childDataReceived(4, b"way\n")
    status = []
    dispatcher.job_status(job_id).addCallback(status.append)
    assert status == [{"id": job_id, "kind": "storm", "state": "running", "percent": 42.0,
                       "message": "halfway", "attempts": 1, "max_attempts": 3,
                       "error": None}]
    assert store.get(job_id).message == "first"


def test_status_from_store(reactor: FakeReactor, store: Any) -> None:
    """job_status() of a job not running here comes from the store; unknown is None."""
    job_id = store.submit("echo", {}, run_after=3600)
    _, dispatcher = start(reactor, store)
    status: list[Any] = []
    dispatcher.job_status(job_id).addCallback(status.append)
    dispatcher.job_status(999).addCallback(status.append)
    dispatcher.job_status("x").addCallback(status.append)
    assert status == [{"id": job_id, "kind": "echo", "state": "pending", "percent": 0.0,
                       "message": "", "attempts": 0, "max_attempts": 3, "error": None},
                      None, None]


def test_cancel_noticed_by_heartbeat(reactor: FakeReactor, store: Any) -> None:
    """A cancel is noticed at the next heartbeat (lease/3) and the child is killed."""
    job_id = store.submit("sleep", {})
    start(reactor, store, lease=3)
    process = reactor.processes[0]
    store.cancel(job_id)
    reactor.advance(0.9)
    assert process.signals == []
    reactor.advance(0.1)
    assert process.signals == ["KILL"]
    process.finish(signal=9)
    assert store.get(job_id).state == "cancelled"


def test_timeout_term_then_kill(reactor: FakeReactor, store: Any) -> None:
    """At timeout the child gets SIGTERM, SIGKILL after kill_grace; the error says so."""
    job_id = store.submit("sleep", {})
    start(reactor, store, timeout=2, kill_grace=1, max_attempts=1)
    process = reactor.processes[0]
    reactor.advance(2)
    assert process.signals == [15]
    reactor.advance(1)
    assert process.signals == [15, "KILL"]
    process.finish(signal=9)
    record = store.get(job_id)
    assert (record.state, record.error) == ("failed", "timed out after 2 s")


def test_graceful_stop_releases(reactor: FakeReactor, store: Any) -> None:
    """A stop waits stop_timeout, kills the child, and gives the attempt back."""
    job_id = store.submit("sleep", {})
    _, dispatcher = start(reactor, store, stop_timeout=5)
    process = reactor.processes[0]
    stopped: list[Any] = []
    dispatcher.stop().addCallback(stopped.append)
    reactor.advance(4.9)
    assert (process.signals, stopped) == ([], [])
    reactor.advance(0.1)
    assert process.signals == ["KILL"]
    process.finish(signal=9)
    record = store.get(job_id)
    assert (record.state, record.attempts, stopped) == ("pending", 0, [None])


def test_a_stop_waits_the_apps_stop_timeout_less_a_margin(reactor: FakeReactor,
                                                          store: Any) -> None:
    """Without a stop_timeout of its own, a stop waits the app's (30 s) less 1 s to put
    the jobs back before the app gives up (DESIGN §6: up to stop_timeout)."""
    store.submit("sleep", {})
    _, dispatcher = start(reactor, store)
    process = reactor.processes[0]
    dispatcher.stop()
    reactor.advance(28.9)
    assert process.signals == []
    reactor.advance(0.1)
    assert process.signals == ["KILL"]
    process.finish(signal=9)


def test_stop_claims_nothing_new(reactor: FakeReactor, store: Any) -> None:
    """After stop() no job is claimed."""
    _, dispatcher = start(reactor, store)
    dispatcher.stop()
    store.submit("echo", {})
    reactor.advance(10)
    assert reactor.processes == []


def test_in_thread_refused() -> None:
    """in_thread makes no sense for the dispatcher: an OptionError."""
    with pytest.raises(OptionError) as raised:
        JobDispatcher(in_thread=True)
    assert raised.value.key == "in_thread"


def test_job_counts(reactor: FakeReactor, store: Any) -> None:
    """job_counts() gives the store's number of jobs per state."""
    store.submit("echo", {}, run_after=3600)
    _, dispatcher = start(reactor, store)
    counts: list[Any] = []
    dispatcher.job_counts().addCallback(counts.append)
    assert counts == [{"pending": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 0}]


class FlakyStore:
    """A real store that raises as on a full disk for some methods while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in ("claim", "heartbeat", "set_progress", "complete", "fail", "release"):
            return method

        def call(*args: Any, **kw: Any) -> Any:
            self.calls.append(name)
            if self.down:
                raise sqlite3.OperationalError("database or disk is full")
            return method(*args, **kw)

        return call


@pytest.fixture
def logged() -> Any:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _lines(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import LogLevel, formatEvent

    return [formatEvent(e) for e in events
            if e.get("log_namespace", "").startswith("daemonapp.jobs")
            and e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)]


def test_outcome_kept_and_retried_through_outage(reactor: FakeReactor, store: Any,
                                                 logged: Any) -> None:
    """A completion the store cannot take is kept, retried, and written once it is back;
    the outage is logged once, the job's slot stays taken meanwhile."""
    job_id = store.submit("echo", {})
    flaky = FlakyStore(store)
    _, dispatcher = start(reactor, flaky, lease=30, max_children=1)
    assert store.get(job_id).state == "running"
    flaky.down = True
    reactor.processes[0].finish({"ok": True, "result": None})
    for _ in range(20):
        reactor.advance(0.5)
    assert store.get(job_id).state == "running"
    assert flaky.calls.count("complete") >= 5
    assert list(dispatcher._runs) == [job_id]
    flaky.down = False
    reactor.advance(2.0)
    assert store.get(job_id).state == "done"
    assert dispatcher.stats["jobs_done"] == 1 and not dispatcher._runs
    lines = _lines(logged)
    assert len(lines) == 1 and "the job store is unavailable" in lines[0]
    assert not [e for e in logged if e.get("log_failure") is not None]


def test_failure_kept_and_retried_through_outage(reactor: FakeReactor, store: Any) -> None:
    """A failed attempt recorded after the outage still goes back to pending, attempt
    counted once."""
    job_id = store.submit("echo", {})
    flaky = FlakyStore(store)
    start(reactor, flaky, lease=30, max_children=1, retry_delay=60)
    flaky.down = True
    reactor.processes[0].finish({"ok": False, "error": "ValueError: x", "traceback": ""})
    reactor.advance(3.0)
    flaky.down = False
    reactor.advance(2.0)
    record = store.get(job_id)
    assert (record.state, record.attempts, record.error) == ("pending", 1, "ValueError: x")


def test_listen_reopened_soon_after_loss(reactor: FakeReactor, store: Any) -> None:
    """A lost LISTEN connection is opened again within a second, then pokes again."""
    notifiers: list[PipeNotifier] = []

    class ListeningStore(FlakyStore):
        def listener(self) -> PipeNotifier:
            notifiers.append(PipeNotifier([OSError("gone"), False]))
            return notifiers[-1]

    _, dispatcher = start(reactor, ListeningStore(store))
    dispatcher._start_listening()  # as it does for a PostgreSQL store of its own
    assert len(notifiers) == 1
    listener = dispatcher._listener
    reader = listener.reader
    why = reader.doRead()
    reader.connectionLost(Failure(why))
    assert listener.reader is None
    reactor.advance(1.0)
    assert len(notifiers) == 2 and listener.reader is not None
    listener.reader.close()


def test_jobs_snapshot(reactor: FakeReactor, store: Any) -> None:
    """jobs_snapshot() shows the running jobs at once and the counts after a heartbeat."""
    job_id = store.submit("sleep", {})
    _, dispatcher = start(reactor, store, lease=3, max_children=2)
    snapshot = dispatcher.jobs_snapshot()
    assert snapshot["by_state"] is None
    assert [(j["id"], j["state"], j["pid"]) for j in snapshot["running"]] == [
        (job_id, "running", 1000)]
    reactor.advance(1)
    assert dispatcher.jobs_snapshot()["by_state"] == {
        "pending": 0, "running": 1, "done": 0, "failed": 0, "cancelled": 0}


def test_retry_backoff_doubles_and_caps(reactor: FakeReactor, store: Any) -> None:
    """Retries wait retry_delay, then double, capped at retry_max_delay."""
    import time

    job_id = store.submit("fail", {})
    _, dispatcher = start(reactor, store, retry_delay=10, retry_max_delay=15,
                          max_attempts=4)
    delays = []
    for attempt in range(3):
        reactor.processes[attempt].finish({"ok": False, "error": "E", "traceback": ""})
        record = store.get(job_id)
        delays.append(round(record.run_after - time.time()))
        with store._tx() as conn:  # due now: the next run claims it again
            conn.execute("UPDATE jobs SET run_after = 0 WHERE id = ?", (job_id,))
        dispatcher.poke()
        reactor.advance(0)
    assert delays == [10, 15, 15]


def test_stop_timeout_zero_kills_at_once(reactor: FakeReactor, store: Any) -> None:
    """With stop_timeout 0 (under a web server), a stop kills the children at once."""
    job_id = store.submit("sleep", {})
    _, dispatcher = start(reactor, store, stop_timeout=0)
    dispatcher.stop()
    reactor.advance(0)
    process = reactor.processes[0]
    assert process.signals == ["KILL"]
    process.finish(signal=9)
    assert store.get(job_id).attempts == 0


def test_claim_landing_during_stop_is_released(reactor: FakeReactor, store: Any) -> None:
    """A job claimed just as the stop begins is given back, not started."""
    _, dispatcher = start(reactor, store)
    job_id = store.submit("echo", {})
    job = store.claim("elsewhere", max_attempts=3)
    dispatcher._closing = True
    dispatcher.do_work(job)
    record = store.get(job_id)
    assert (record.state, record.attempts, reactor.processes) == ("pending", 0, [])


_NO_LATE_IMPORTS = r"""
import sys, tempfile
from daemonapp.app import DaemonApp
from daemonapp.jobs import open_store
from daemonapp.jobs.dispatcher import JobDispatcher
from tests.jobs.test_dispatcher_unit import FakeReactor, SyncPool

class Reactor(FakeReactor):
    def connectTCP(self, *args, **kw):
        raise ConnectionRefusedError("nobody listens in this test")

store = open_store(tempfile.mkdtemp())
reactor = Reactor()
app = DaemonApp(clock=reactor, threadpool=SyncPool(), handle_signals=False, stop_timeout=30)
app.add(JobDispatcher(name="jobs", store=store, modules=["sample_jobs"], max_attempts=1,
                      on_failure=["http://127.0.0.1:9/hook", {"mail": {"to": "ops@example.org"}},
                                  print]))
app.privilegedStartService()          # twistd switches --uid/--gid after this
before = set(sys.modules)
app.startService()
store.submit("fail", {})
reactor.advance(1)
child = reactor.processes[0]
child.protocol.childDataReceived(4, b"50.0\thalf way\n")
child.protocol.childDataReceived(1, b"some output\n")
child.finish({"ok": False, "error": "ValueError: x", "traceback": ""})
reactor.advance(1)
assert store.get(1).state == "failed"
print(sorted(set(sys.modules) - before))
"""


def test_runs_import_nothing_after_the_uid_switch() -> None:
    """DESIGN §2: a job's run (claim, child, progress, failure and its on_failure
    webhook, mail and callable) imports no module after privilegedStartService."""
    import subprocess
    import sys

    from tests.jobs._helpers import ROOT

    result = subprocess.run([sys.executable, "-c", _NO_LATE_IMPORTS], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.splitlines()[-1] == "[]"
