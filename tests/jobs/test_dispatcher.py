"""The dispatcher end to end: a real app, real child processes, a real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemonapp.jobs import open_store
from tests._processes import (
    DAEMONAPP,
    ROOT,
    child_env,
    free_port,
    popen_run,
    run_process,
    running,
    stop_process,
    wait_until,
    write_file,
)
from tests.jobs._helpers import pid_alive, read_pid, stored_job, wait_for

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


# ------------------------------ DESIGN §6 through `daemonapp run` and `daemonapp jobs`


JOBS_MODULE = """\
import json, os, resource, time
from daemonapp.jobs import job, progress, current_job

@job("write")
def write_file(payload):
    for i in range(5):
        progress(i * 20, "step %d" % i)
    cj = current_job()
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    with open(payload["out"], "w") as f:
        json.dump({"env": sorted(os.environ), "id": cj.id, "attempt": cj.attempt,
                   "token": cj.token, "rlimit_as": soft}, f)
    progress(100, "finished")

@job("boom")
def boom(payload):
    raise ValueError("kaboom")

@job("crash")
def crash(payload):
    os._exit(3)

@job("sleepy")
def sleepy(payload):
    progress(50, "half")
    time.sleep(payload["seconds"])
    progress(100, "slept")

@job("huge")
def huge(payload):
    raise ValueError("x" * 300000)

@job("slow")
def slow(payload):
    if payload.get("pidfile"):
        with open(payload["pidfile"], "w") as f:
            f.write(str(os.getpid()))
    time.sleep(600)
"""


def dispatcher_config(port: int, *, stop_timeout: str = "30s", lease: str = "30s",
                      timeout: str = "1s") -> str:
    return (
        "app:\n  state_dir: ./var\n  stop_timeout: " + stop_timeout + "\n"
        "listeners:\n"
        "  - protocol: http\n"
        f"    endpoint: tcp:{port}:interface=127.0.0.1\n"
        "    jobs: true\n"
        "daemons:\n  jobs:\n    type: job_dispatcher\n    run_every: 0.2s\n"
        "    modules: [jobsmod]\n    max_attempts: 2\n    retry_delay: 0.1s\n"
        f"    timeout: {timeout}\n    kill_grace: 0.5s\n    memory_limit: 512MiB\n"
        f"    lease: {lease}\n")


class RunningApp:
    """A `daemonapp run` of a job dispatcher config in a temp dir."""

    def __init__(self, root: Path, **config: str) -> None:
        self.root = root
        self.port = free_port()
        write_file(root / "jobsmod.py", JOBS_MODULE)
        self.config = write_file(root / "d.yaml", dispatcher_config(self.port, **config))
        self.proc: subprocess.Popen[str] | None = None

    def jobs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_process([str(DAEMONAPP), "jobs", "-c", str(self.config), *args], cwd=self.root,
                           env={"PYTHONPATH": str(ROOT)})

    def submit(self, kind: str, payload: dict[str, Any]) -> int:
        result = self.jobs("submit", kind, json.dumps(payload))
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    def show(self, job_id: int) -> dict[str, Any]:
        result = self.jobs("show", str(job_id))
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def start(self) -> None:
        # Logs go to a file: a full, unread pipe would block the app.
        with open(self.root / "app.log", "w") as log_file:
            self.proc = subprocess.Popen([str(DAEMONAPP), "run", str(self.config)],
                                         cwd=self.root, env=child_env(FOO_SECRET="leak"),
                                         stdout=log_file, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture(scope="module")
def finished_jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("jobs_e2e")
    app = RunningApp(root)
    ids = {
        "write": app.submit("write", {"out": str(root / "out.json")}),
        "boom": app.submit("boom", {}),
        "crash": app.submit("crash", {}),
        "slow": app.submit("slow", {}),
        "huge": app.submit("huge", {}),
    }
    app.start()
    try:
        def all_ended() -> bool:
            return all(app.show(i)["state"] in ("done", "failed") for i in ids.values())

        ended = wait_until(all_ended, timeout=40)
        http: dict[str, Any] = {}
        if ended:
            import urllib.request

            for kind in ("boom", "huge"):
                url = f"http://127.0.0.1:{app.port}/jobs/{ids[kind]}"
                with urllib.request.urlopen(url, timeout=5) as response:
                    http[kind] = {"status": response.status,
                                  "type": response.headers.get("Content-Type", ""),
                                  "body": json.loads(response.read())}
        yield {"app": app, "ids": ids, "ended": ended, "http": http,
               "records": {k: app.show(i) for k, i in ids.items()}}
    finally:
        app.stop()


@pytest.mark.integration
def test_e2e_job_done_with_final_progress(finished_jobs: dict[str, Any]) -> None:
    """A @job function runs in a child: done, attempts 1, final progress persisted."""
    assert finished_jobs["ended"]
    rec = finished_jobs["records"]["write"]
    assert (rec["state"], rec["attempts"]) == ("done", 1)
    assert (rec["percent"], rec["message"]) == (100, "finished")


@pytest.mark.integration
def test_e2e_current_job(finished_jobs: dict[str, Any]) -> None:
    """current_job() gives the job's id, attempt and token in the child."""
    out = json.loads((finished_jobs["app"].root / "out.json").read_text())
    assert out["id"] == finished_jobs["ids"]["write"]
    assert out["attempt"] == 1
    assert isinstance(out["token"], int)


@pytest.mark.integration
def test_e2e_child_environment(finished_jobs: dict[str, Any]) -> None:
    """The child's environment holds PATH, locale and PYTHONPATH, nothing else of the app's."""
    out = json.loads((finished_jobs["app"].root / "out.json").read_text())
    leaked = [k for k in out["env"] if k in os.environ or k == "FOO_SECRET"]
    allowed = {"PATH", "PYTHONPATH", "LANG", "LANGUAGE"}
    assert [k for k in leaked if k not in allowed and not k.startswith("LC_")] == []
    assert "PATH" in out["env"]


@pytest.mark.integration
def test_e2e_memory_limit(finished_jobs: dict[str, Any]) -> None:
    """memory_limit sets RLIMIT_AS in the child."""
    out = json.loads((finished_jobs["app"].root / "out.json").read_text())
    assert out["rlimit_as"] == 512 * 1024 * 1024


@pytest.mark.integration
def test_e2e_failure_traceback_and_attempts(finished_jobs: dict[str, Any]) -> None:
    """A raising job is retried up to max_attempts, then failed with the traceback."""
    rec = finished_jobs["records"]["boom"]
    assert (rec["state"], rec["attempts"]) == ("failed", 2)
    assert "Traceback" in rec["error"] and "ValueError: kaboom" in rec["error"]


@pytest.mark.integration
def test_e2e_crash_spends_attempts(finished_jobs: dict[str, Any]) -> None:
    """A crashing child spends one attempt each time."""
    rec = finished_jobs["records"]["crash"]
    assert (rec["state"], rec["attempts"]) == ("failed", 2)


@pytest.mark.integration
def test_e2e_timeout_message(finished_jobs: dict[str, Any]) -> None:
    """A job over its timeout is killed; the error says "timed out after N s"."""
    rec = finished_jobs["records"]["slow"]
    assert (rec["state"], rec["attempts"]) == ("failed", 2)
    assert "timed out after 1 s" in rec["error"]


@pytest.mark.integration
def test_e2e_http_jobs_endpoint(finished_jobs: dict[str, Any]) -> None:
    """A listener with jobs: true serves GET /jobs/<id> as JSON with the documented keys."""
    http = finished_jobs["http"]["boom"]
    assert http["status"] == 200
    assert "json" in http["type"]
    body = http["body"]
    for key in ("id", "kind", "state", "percent", "message", "attempts", "error"):
        assert key in body
    assert (body["id"], body["kind"], body["state"]) == (finished_jobs["ids"]["boom"], "boom",
                                                          "failed")


@pytest.mark.integration
def test_e2e_http_traceback_capped(finished_jobs: dict[str, Any]) -> None:
    """Tracebacks served by /jobs/<id> are capped at 64 KiB."""
    body = finished_jobs["http"]["huge"]["body"]
    assert body["state"] == "failed"
    assert "ValueError" in body["error"]
    assert len(body["error"].encode()) <= 64 * 1024


@pytest.mark.integration
def test_e2e_cancel_kills_child_and_stop_puts_back(tmp_path: Path) -> None:
    """Cancel kills the child within a heartbeat; a graceful stop puts a job back to pending
    without spending an attempt and kills its child."""
    app = RunningApp(tmp_path, stop_timeout="1s", lease="1.5s", timeout="10m")
    first = app.submit("slow", {"pidfile": str(tmp_path / "one.pid")})
    app.start()
    try:
        assert wait_until((tmp_path / "one.pid").exists, timeout=20)
        pid = int((tmp_path / "one.pid").read_text())
        assert app.jobs("cancel", str(first)).returncode == 0
        assert wait_until(lambda: not pid_alive(pid), timeout=3)
        assert app.show(first)["state"] == "cancelled"

        second = app.submit("slow", {"pidfile": str(tmp_path / "two.pid")})
        assert wait_until((tmp_path / "two.pid").exists, timeout=20)
        pid2 = int((tmp_path / "two.pid").read_text())
        assert app.proc is not None
        app.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: app.proc is not None and app.proc.poll() is not None, timeout=15)
        assert wait_until(lambda: not pid_alive(pid2), timeout=5)
        rec = app.show(second)
        assert (rec["state"], rec["attempts"]) == ("pending", 0)
    finally:
        app.stop()


@pytest.mark.integration
def test_e2e_children_die_with_sigkilled_app(tmp_path: Path) -> None:
    """Job children die with the app, even when it is SIGKILLed."""
    app = RunningApp(tmp_path)
    app.submit("slow", {"pidfile": str(tmp_path / "k.pid")})
    app.start()
    try:
        assert wait_until((tmp_path / "k.pid").exists, timeout=20)
        pid = int((tmp_path / "k.pid").read_text())
        assert app.proc is not None
        app.proc.send_signal(signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), timeout=5)
    finally:
        app.stop()


@pytest.mark.postgres
@pytest.mark.integration
def test_dispatcher_with_postgres_store(pg_url: str, tmp_path: Path) -> None:
    """A job_dispatcher with store: URL runs jobs submitted with `daemonapp jobs --store URL`."""
    write_file(tmp_path / "jobsmod.py", JOBS_MODULE)
    cfg = write_file(tmp_path / "d.yaml",
                     "app:\n  state_dir: ./var\n  shutdown_after: 20s\n"
                     "daemons:\n  jobs:\n    type: job_dispatcher\n    run_every: 0.2s\n"
                     f"    store: '{pg_url}'\n    modules: [jobsmod]\n")
    sub = run_process([str(DAEMONAPP), "jobs", "--store", pg_url, "submit", "write",
                       json.dumps({"out": str(tmp_path / "out.json")})], cwd=tmp_path,
                      env={"PYTHONPATH": str(ROOT)})
    assert sub.returncode == 0, sub.stderr
    job_id = int(sub.stdout.strip())
    with running(popen_run(tmp_path, cfg)):
        assert wait_until((tmp_path / "out.json").exists, timeout=20)

        def done() -> bool:
            shown = run_process([str(DAEMONAPP), "jobs", "--store", pg_url, "show", str(job_id)],
                                cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
            return shown.returncode == 0 and json.loads(shown.stdout)["state"] == "done"

        assert wait_until(done, timeout=20)


@pytest.mark.integration
def test_on_failure_webhook_after_last_attempt_only(tmp_path: Path) -> None:
    """on_failure is called once, after the last attempt only."""
    import http.server
    import threading

    posts: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            posts.append(self.rfile.read(length))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        write_file(tmp_path / "jobsmod.py", JOBS_MODULE)
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        cfg = write_file(tmp_path / "d.yaml",
                         "app:\n  state_dir: ./var\n"
                         "daemons:\n  jobs:\n    type: job_dispatcher\n    run_every: 0.2s\n"
                         "    modules: [jobsmod]\n    max_attempts: 3\n    retry_delay: 0.1s\n"
                         f"    on_failure: {{webhook: '{url}'}}\n")
        sub = run_process([str(DAEMONAPP), "jobs", "-c", str(cfg), "submit", "boom", "{}"],
                          cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
        job_id = int(sub.stdout.strip())
        proc = popen_run(tmp_path, cfg)
        try:
            assert wait_until(lambda: bool(posts), timeout=30)
            # A second (wrong) call would come right after the first: watch a second for it.
            wait_until(lambda: len(posts) > 1, timeout=1.0)
            assert len(posts) == 1
            rec = stored_job(tmp_path / "var", job_id)
            assert (rec.state, rec.attempts) == ("failed", 3)
        finally:
            stop_process(proc)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_idle_exit_waits_for_job_child_and_progress_is_live(tmp_path: Path) -> None:
    """A running job child keeps the app from its idle exit; /jobs/<id> shows live progress."""
    import urllib.request

    port = free_port()
    write_file(tmp_path / "jobsmod.py", JOBS_MODULE)
    cfg = write_file(tmp_path / "d.yaml",
                     "app:\n  state_dir: ./var\n  stay_alive_for: 0.5s\n  shutdown_if_idle: 1s\n"
                     f"listeners:\n  - protocol: http\n"
                     f"    endpoint: tcp:{port}:interface=127.0.0.1\n"
                     "    jobs: true\n"
                     "daemons:\n  jobs:\n    type: job_dispatcher\n    run_every: 30s\n"
                     "    modules: [jobsmod]\n")
    sub = run_process([str(DAEMONAPP), "jobs", "-c", str(cfg), "submit", "sleepy",
                       '{"seconds": 3}'], cwd=tmp_path)
    job_id = int(sub.stdout.strip())
    with running(popen_run(tmp_path, cfg)) as proc:
        live: list[dict[str, Any]] = []

        def half() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs/{job_id}",
                                            timeout=2) as r:
                    live[:] = [json.loads(r.read())]
            except OSError:
                return proc.poll() is not None
            return live[0]["state"] == "running" and live[0]["percent"] == 50

        assert wait_until(half, timeout=20)
        assert live[0]["message"] == "half"
        assert wait_until(lambda: proc.poll() is not None, timeout=30)
        assert proc.returncode == 0
        rec = stored_job(tmp_path / "var", job_id)
        assert (rec.state, rec.percent, rec.message) == ("done", 100, "slept")
