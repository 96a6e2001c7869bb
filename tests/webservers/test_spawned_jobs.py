"""Jobs of an app that a web server spawned (DESIGN §4 and §6), the web server
played by the test: it binds a unix socket and passes it as fd 0, as spawn-fcgi,
lighttpd and mod_fcgid do.

- SIGKILL of the spawned app while a job runs: the job's child dies within 1 s, and
  the next spawn (the web server starts a fresh process on the next request)
  reclaims the job once its lease expired and completes it exactly once.
- SIGTERM (what lighttpd and mod_fcgid send): the child is killed at once, the job
  goes back to pending with its attempt given back, and the app exits 0 within ~2 s.
- Two siblings spawned at once on one state_dir: a daemon with `lock:` never runs in
  both at once, every job runs exactly once, and neither stops the other.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonapp.jobs import open_store
from tests.jobs._helpers import pid_alive, read_pid, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
app: {state_dir: ./var, stop_timeout: 10s}
listeners:
  - {protocol: fastcgi, native: "tests.listeners.apps:hello_native"}
daemons:
  jobs:
    type: job_dispatcher
    modules: [sample_jobs]
    run_every: 50ms
    maximum_idle: 200ms
    lease: 1s
    retry_delay: 50ms
    stop_timeout: 10s  # spawned: children are killed at once all the same
"""


class WebServer:
    """Binds a listening unix socket and spawns `daemonapp run` on it, as fd 0."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "app.yaml"
        self.config.write_text(CONFIG)
        self.listening = socket.socket(socket.AF_UNIX)
        self.listening.bind(str(workdir / "app.sock"))
        self.listening.listen(16)
        self.spawned: list[subprocess.Popen[bytes]] = []

    def spawn(self, config: Path | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, DAEMONAPP_CONFIG=str(config or self.config),
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "jobs")]))
        process = subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run"],
                                   stdin=self.listening.fileno(), stdout=subprocess.DEVNULL,
                                   stderr=open(self.workdir / "app.log", "ab"),  # noqa: SIM115
                                   cwd=self.workdir, env=env)
        self.spawned.append(process)
        return process

    def close(self) -> None:
        for process in self.spawned:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.listening.close()


@pytest.fixture
def web_server() -> Iterator[WebServer]:
    workdir = Path(tempfile.mkdtemp(prefix="dspj-", dir="/tmp"))
    server = WebServer(workdir)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _log(server: WebServer) -> str:
    return (server.workdir / "app.log").read_text(errors="replace")


def test_sigkilled_spawned_app_job_child_dies_and_the_next_spawn_completes_it_once(
        web_server: WebServer) -> None:
    """SIGKILL mid-job: child gone within 1 s; the next spawn completes the job once."""
    pidfile, effects = web_server.workdir / "pid", web_server.workdir / "effects.log"
    store = open_store(str(web_server.workdir / "var"))
    try:
        job_id = store.submit("effect", {"pidfile": str(pidfile), "log": str(effects)})
        first = web_server.spawn()
        child = wait_for(lambda: read_pid(pidfile))
        assert child is not None, _log(web_server)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        assert wait_for(lambda: not pid_alive(child), timeout=1.0) is True, \
            "the job child outlived the SIGKILLed app by more than 1 s"
        assert time.monotonic() - killed_at < 1.0
        assert store.get(job_id).state == "running"  # its lease is still held

        web_server.spawn()  # the web server's next request spawns a fresh process
        record = wait_for(lambda: (r := store.get(job_id)) and r.state in ("done", "failed")
                          and r, timeout=20)
        assert record, _log(web_server)
        assert (record.state, record.attempts) == ("done", 2)
        assert effects.read_text() == f"{job_id} 2\n"  # the effect happened exactly once
    finally:
        store.close()


def test_sigterm_kills_the_job_child_at_once_and_gives_the_attempt_back(
        web_server: WebServer) -> None:
    """SIGTERM mid-job: exit 0 within ~2 s, child killed, job pending with attempt back."""
    pidfile = web_server.workdir / "pid"
    store = open_store(str(web_server.workdir / "var"))
    try:
        job_id = store.submit("sleep", {"seconds": 60, "pidfile": str(pidfile)})
        app = web_server.spawn()
        child = wait_for(lambda: read_pid(pidfile))
        assert child is not None, _log(web_server)
        started = time.monotonic()
        app.send_signal(signal.SIGTERM)
        status = app.wait(timeout=10)
        took = time.monotonic() - started
        assert status == 0, _log(web_server)
        assert took < 2.5, f"took {took:.2f} s to stop; mod_fcgid SIGKILLs a few s after SIGTERM"
        assert wait_for(lambda: not pid_alive(child), timeout=1.0) is True
        record = store.get(job_id)
        assert (record.state, record.attempts) == ("pending", 0)
    finally:
        store.close()


SIBLINGS = CONFIG + """\
  exclusive:
    type: tests.webservers.spawned_app:Exclusive
    lock: exclusive
    log_file: {log}
    hold: 0.02
"""


def _overlaps(log: str) -> tuple[int, list[str]]:
    """(runs, overlaps) of an Exclusive daemon's log: runs of different pids that overlap."""
    spans: list[tuple[float, float, str]] = []
    started: dict[str, float] = {}
    for line in log.splitlines():
        what, pid, at = line.split()
        if what == "start":
            started[pid] = float(at)
        else:
            spans.append((started.pop(pid), float(at), pid))
    spans.sort()
    overlaps: list[str] = []
    latest: tuple[float, float, str] | None = None  # the span reaching furthest so far
    for span in spans:
        if latest is not None and span[0] < latest[1] and span[2] != latest[2]:
            overlaps.append(f"{latest} and {span}")
        if latest is None or span[1] > latest[1]:
            latest = span
    return len(spans), overlaps


def test_two_siblings_share_state_dir_safely(web_server: WebServer) -> None:
    """Two spawned processes: lock held by one at a time, each job once, both alive."""
    runs_log, records = web_server.workdir / "exclusive.log", web_server.workdir / "records"
    config = web_server.workdir / "siblings.yaml"
    config.write_text(SIBLINGS.replace("{log}", str(runs_log)))
    store = open_store(str(web_server.workdir / "var"))
    try:
        ids = [store.submit("record", {"file": str(records)}) for _ in range(40)]
        first, second = web_server.spawn(config), web_server.spawn(config)
        done = wait_for(lambda: store.counts().get("done") == len(ids), timeout=40)
        assert done, (store.counts(), _log(web_server))
        assert sorted(int(line) for line in records.read_text().split()) == sorted(ids)
        assert {r.attempts for r in store.list(limit=len(ids))} == {1}
        # Let the lock change hands a few times, then check the runs never overlapped.
        holders = wait_for(lambda: len({line.split()[1]
                                        for line in runs_log.read_text().splitlines()}) == 2,
                           timeout=10)
        assert holders, "the lock never changed hands"
        runs, overlaps = _overlaps(runs_log.read_text())
        assert runs >= 5 and overlaps == [], (runs, overlaps)
        assert first.poll() is None and second.poll() is None, _log(web_server)
        pids = sorted(p.name for p in (web_server.workdir / "var" / "pids").iterdir())
        assert pids == sorted([f"{first.pid}.json", f"{second.pid}.json"])
    finally:
        store.close()
