"""The dispatcher end to end: a real app, real child processes, a real store."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from daemonapp.jobs import open_store
from tests.jobs._helpers import pid_alive, read_pid, wait_for

pytestmark = pytest.mark.integration


def _state(store: Any, job_id: int, *states: str) -> Any:
    record = store.get(job_id)
    return record if record is not None and record.state in states else None


@pytest.fixture
def sqlite_target(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def store(sqlite_target: str) -> Any:
    opened = open_store(sqlite_target)
    yield opened
    opened.close()


def test_job_runs_to_done(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """A submitted job is run in a child and marked done."""
    job_id = store.submit("echo", {"a": 1})
    dispatchers(sqlite_target)
    record = wait_for(lambda: _state(store, job_id, "done", "failed"))
    assert (record.state, record.attempts) == ("done", 1)


def test_failure_retried_then_failed(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """A raising job is retried up to max_attempts, then failed with its traceback."""
    job_id = store.submit("fail", {"message": "no luck"})
    dispatchers(sqlite_target, max_attempts=2, retry_delay=0.05)
    record = wait_for(lambda: _state(store, job_id, "failed"))
    assert record.attempts == 2
    assert "Traceback" in record.error
    assert record.error.rstrip().endswith("ValueError: no luck")


def test_sigkilled_child_retried_and_completed(store: Any, sqlite_target: str,
                                               dispatchers: Any, tmp_path: Path) -> None:
    """A child SIGKILLed mid-job spends one attempt; the retry completes the job."""
    pidfile, donefile = tmp_path / "pid", tmp_path / "done"
    job_id = store.submit("crash_first", {"pidfile": str(pidfile), "donefile": str(donefile)})
    dispatchers(sqlite_target, retry_delay=0.05)
    pid = wait_for(lambda: read_pid(pidfile))
    os.kill(pid, signal.SIGKILL)
    record = wait_for(lambda: _state(store, job_id, "done", "failed"))
    assert (record.state, record.attempts) == ("done", 2)
    assert donefile.read_text() == f"{job_id} 2"


def test_memory_limit_fails_cleanly(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """A job allocating past memory_limit fails with a MemoryError naming the limit,
    and the app lives on to run the next job."""
    job_id = store.submit("hog", {})
    dispatcher = dispatchers(sqlite_target, memory_limit="200MiB", max_attempts=1)
    record = wait_for(lambda: _state(store, job_id, "failed", "done"))
    assert record.state == "failed"
    assert "MemoryError: the job exceeded its memory_limit of 209715200 bytes" in record.error
    next_id = store.submit("echo", {})
    assert wait_for(lambda: _state(store, next_id, "done")) is not None
    assert dispatcher.process.poll() is None


def test_sigkilled_app_job_reclaimed_after_lease(store: Any, sqlite_target: str,
                                                 dispatchers: Any, tmp_path: Path) -> None:
    """After the app is SIGKILLed mid-job, a restarted app reclaims the job once its
    lease expired and completes it: the job's effect happens exactly once."""
    pidfile, effects = tmp_path / "pid", tmp_path / "effects.log"
    job_id = store.submit("effect", {"pidfile": str(pidfile), "log": str(effects)})
    first = dispatchers(sqlite_target, lease=1)
    pid = wait_for(lambda: read_pid(pidfile))
    os.kill(first.pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), timeout=5) is True
    assert store.get(job_id).state == "running"
    dispatchers(sqlite_target, lease=1)
    record = wait_for(lambda: _state(store, job_id, "done", "failed"))
    assert (record.state, record.attempts) == ("done", 2)
    assert effects.read_text() == f"{job_id} 2\n"


def test_timeout(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """A job running past timeout is killed and failed with "timed out after N s"."""
    job_id = store.submit("sleep", {"seconds": 60})
    dispatchers(sqlite_target, timeout=0.5, kill_grace=0.5, max_attempts=1)
    record = wait_for(lambda: _state(store, job_id, "failed", "done"))
    assert record.state == "failed"
    assert record.error.startswith("timed out after 0.5 s")


def test_progress_storm_bounded_writes(store: Any, sqlite_target: str,
                                       dispatchers: Any) -> None:
    """100,000 progress calls reach the store at most 3 times per second, final included."""
    job_id = store.submit("storm", {"count": 100_000})
    dispatcher = dispatchers(sqlite_target, count=True, probe=True, progress_persist_hz=2)
    record = wait_for(lambda: _state(store, job_id, "done", "failed"))
    assert (record.state, record.percent, record.message) == ("done", 100.0, "finished")
    report = dispatcher.stop()
    writes = report["progress_writes"][str(job_id)]
    assert len(writes) >= 1
    for first in writes:
        assert len([t for t in writes if first <= t < first + 1.0]) <= 3
    # The loop stays responsive: a daemon due every 10 ms starts < 50 ms late.
    assert len(report["lateness"]) >= 10
    assert max(report["lateness"]) < 0.05


def test_last_progress_reaches_store_while_job_goes_on(store: Any, sqlite_target: str,
                                                       dispatchers: Any) -> None:
    """The value of the last of 100,000 progress() calls reaches the dispatcher (and the
    store) while the job then sleeps without reporting again."""
    job_id = store.submit("storm_then_sleep", {"count": 100_000, "seconds": 60})
    dispatcher = dispatchers(sqlite_target, progress_persist_hz=2)

    def last_value_stored() -> Any:
        record = _state(store, job_id, "running")
        return record if record is not None and record.message == "step 99999" else None

    record = wait_for(last_value_stored, timeout=20)
    assert record is not None, (store.get(job_id), dispatcher.log_text())
    assert (record.state, record.percent) == ("running", 99.999)
    store.cancel(job_id)


def test_child_environment_is_clean(store: Any, sqlite_target: str, dispatchers: Any,
                                    tmp_path: Path, monkeypatch: Any) -> None:
    """The child sees PATH, locale variables and PYTHONPATH only."""
    out = tmp_path / "env.txt"
    job_id = store.submit("env", {"file": str(out)})
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    dispatchers(sqlite_target)
    assert wait_for(lambda: _state(store, job_id, "done", "failed")).state == "done"
    names = set(out.read_text().split())
    assert {"PATH", "PYTHONPATH"} <= names
    assert [n for n in names - {"PATH", "PYTHONPATH"}
            if not (n.startswith("LC_") or n in ("LANG", "LANGUAGE"))] == []


def test_cancel_kills_child(store: Any, sqlite_target: str, dispatchers: Any,
                            tmp_path: Path) -> None:
    """Cancelling a running job kills its child within a heartbeat; it stays cancelled."""
    pidfile = tmp_path / "pid"
    job_id = store.submit("sleep", {"seconds": 60, "pidfile": str(pidfile)})
    dispatchers(sqlite_target, lease=0.6)
    pid = wait_for(lambda: read_pid(pidfile))
    assert store.cancel(job_id) is True
    assert wait_for(lambda: not pid_alive(pid), timeout=5) is True
    assert store.get(job_id).state == "cancelled"


def test_graceful_stop_puts_job_back(store: Any, sqlite_target: str, dispatchers: Any,
                                     tmp_path: Path) -> None:
    """A graceful stop kills a child after stop_timeout and gives its attempt back."""
    pidfile = tmp_path / "pid"
    job_id = store.submit("sleep", {"seconds": 60, "pidfile": str(pidfile)})
    dispatcher = dispatchers(sqlite_target, stop_timeout=0.2)
    pid = wait_for(lambda: read_pid(pidfile))
    report = dispatcher.stop()
    assert report["stats"]["jobs_released"] == 1
    record = store.get(job_id)
    assert (record.state, record.attempts) == ("pending", 0)
    assert wait_for(lambda: not pid_alive(pid), timeout=5) is True


def test_children_die_with_sigkilled_app(store: Any, sqlite_target: str, dispatchers: Any,
                                         tmp_path: Path) -> None:
    """When the app is SIGKILLed, its job children die too (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "pid"
    store.submit("sleep", {"seconds": 60, "pidfile": str(pidfile)})
    dispatcher = dispatchers(sqlite_target)
    pid = wait_for(lambda: read_pid(pidfile))
    os.kill(dispatcher.pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), timeout=5) is True


@pytest.mark.postgres
def test_two_dispatchers_run_each_job_once(pg_url: str, dispatchers: Any,
                                           tmp_path: Path) -> None:
    """Two dispatcher processes on one PostgreSQL store run every job exactly once."""
    count = 120
    out = tmp_path / "runs.txt"
    pg = open_store(pg_url)
    try:
        ids = [pg.submit("record", {"file": str(out)}) for _ in range(count)]
        first = dispatchers(pg_url, max_children=2)
        second = dispatchers(pg_url, max_children=2)
        assert wait_for(lambda: pg.counts()["done"] == count, timeout=40) is True
        lines = out.read_text().split()
        assert sorted(int(x) for x in lines) == sorted(ids)
        assert {r.attempts for r in pg.list(limit=count)} == {1}
        done = [d.stop()["stats"]["jobs_done"] for d in (first, second)]
        assert sum(done) == count
    finally:
        pg.close()


@pytest.mark.postgres
def test_notify_wakes_idle_dispatcher(pg_url: str, dispatchers: Any) -> None:
    """A submit on PostgreSQL wakes a dispatcher that polls only every 5 s."""
    pg = open_store(pg_url)
    try:
        dispatchers(pg_url, run_every=5, maximum_idle=5)
        job_id = pg.submit("echo", {})
        record = wait_for(lambda: _state(pg, job_id, "done"), timeout=3)
        assert record is not None and record.state == "done"
    finally:
        pg.close()


def test_child_output_logged(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """What a job prints is logged with its job id, stdout and stderr alike."""
    job_id = store.submit("chatty", {})
    dispatcher = dispatchers(sqlite_target)
    assert wait_for(lambda: _state(store, job_id, "done", "failed")).state == "done"
    dispatcher.stop()
    text = dispatcher.log_text()
    assert f"job {job_id} stdout: hello from the job" in text
    assert f"job {job_id} stderr: warning from the job" in text


def test_on_failure_webhook(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """After the last attempt, the on_failure webhook gets the failure as JSON."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    bodies: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            bodies.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        job_id = store.submit("fail", {"message": "webhook me"})
        url = f"http://127.0.0.1:{server.server_port}/hook"
        dispatchers(sqlite_target, max_attempts=1, on_failure={"webhook": url})
        assert wait_for(lambda: bodies) == bodies
        assert [(b["id"], b["kind"], b["attempts"]) for b in bodies] == [(job_id, "fail", 1)]
        assert bodies[0]["error"].endswith("ValueError: webhook me")
    finally:
        server.shutdown()
        server.server_close()


def test_on_failure_mail(store: Any, sqlite_target: str, dispatchers: Any) -> None:
    """After the last attempt, on_failure mail sends a message over SMTP."""
    import socketserver
    import threading

    messages: list[bytes] = []

    class Smtp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"220 test ESMTP\r\n")
            while line := self.rfile.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    self.wfile.write(b"354 go on\r\n")
                    body = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        body += chunk
                    messages.append(body)
                    self.wfile.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 ok\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Smtp)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job_id = store.submit("fail", {"message": "mail me"})
        dispatchers(sqlite_target, max_attempts=1, on_failure={"mail": {
            "to": "ops@example.org", "from": "jobs@example.org", "host": "127.0.0.1",
            "port": server.server_address[1]}})
        assert wait_for(lambda: messages) == messages
        text = messages[0].decode()
        assert f"Subject: daemonapp job {job_id} (fail) failed" in text
        assert "ValueError: mail me" in text
    finally:
        server.shutdown()
        server.server_close()
