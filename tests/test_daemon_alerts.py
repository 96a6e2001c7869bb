"""Daemon alerts (DESIGN §10): alert_after N failed or timed-out runs raise one alert,
the next good run one recovery; skipped clock fire times alert at once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from daemonapp.app import DaemonApp
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app
from tests._apps import start_app

ROOT = Path(__file__).resolve().parent.parent


def run_once(daemon: FakeDaemon, clock: Clock, job: Any) -> None:
    """Give the daemon one job and advance to its next run (which ends at once)."""
    daemon.add_jobs(job)
    clock.advance(daemon.stats["next_run_at"] - clock.seconds())


def boom() -> Exception:
    return RuntimeError("boom")


def alerting(alert_after: int = 3) -> tuple[FakeDaemon, Clock, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    daemon = FakeDaemon(run_every=10, alert_after=alert_after, name="sync")
    _app, clock = start_app(daemon, alerts=[sent.append])
    clock.advance(0)  # a first, idle run
    return daemon, clock, sent


def test_n_minus_one_failures_raise_no_alert() -> None:
    """N-1 failed runs in a row: no alert yet."""
    daemon, clock, sent = alerting(3)
    for _ in range(2):
        run_once(daemon, clock, boom())
    assert (sent, daemon.stats["consecutive_failures"], daemon.stats["in_alert"]) == (
        [], 2, False)


def test_n_failures_raise_one_alert_and_more_raise_none() -> None:
    """The Nth failed run raises one alert; N+5 failures still one."""
    daemon, clock, sent = alerting(3)
    for _ in range(3):
        run_once(daemon, clock, boom())
    assert sent == [{"event": "alert", "daemon": "sync", "count": 3,
                     "error": "do_work: RuntimeError: boom"}]
    assert daemon.stats["in_alert"]
    for _ in range(5):
        run_once(daemon, clock, boom())
    assert len(sent) == 1
    assert daemon.stats["consecutive_failures"] == 8


def test_a_good_run_sends_one_recovery() -> None:
    """After an alert the next run that works sends one recovery; later ones none."""
    daemon, clock, sent = alerting(3)
    for _ in range(4):
        run_once(daemon, clock, boom())
    run_once(daemon, clock, "ok")
    run_once(daemon, clock, "ok")
    assert [e["event"] for e in sent] == ["alert", "recovery"]
    assert sent[1] == {"event": "recovery", "daemon": "sync", "count": 4, "error": None}
    assert (daemon.stats["consecutive_failures"], daemon.stats["in_alert"]) == (0, False)
    assert daemon.stats["last_success_at"] == daemon.stats["last_run_at"]


def test_idle_runs_neither_break_the_streak_nor_recover() -> None:
    """Idle runs between failures keep the streak; idle runs after the alert do not
    recover it."""
    daemon, clock, sent = alerting(3)
    run_once(daemon, clock, boom())
    clock.advance(daemon.stats["next_run_at"] - clock.seconds())  # idle
    run_once(daemon, clock, boom())
    clock.advance(daemon.stats["next_run_at"] - clock.seconds())  # idle
    run_once(daemon, clock, boom())
    assert [e["event"] for e in sent] == ["alert"]
    for _ in range(3):
        clock.advance(daemon.stats["next_run_at"] - clock.seconds())  # idle
    assert [e["event"] for e in sent] == ["alert"]
    assert daemon.stats["in_alert"]


def test_a_streak_broken_before_n_raises_nothing() -> None:
    """A good run before the Nth failure resets the count; no alert, no recovery."""
    daemon, clock, sent = alerting(3)
    run_once(daemon, clock, boom())
    run_once(daemon, clock, boom())
    run_once(daemon, clock, "ok")
    run_once(daemon, clock, boom())
    run_once(daemon, clock, boom())
    assert sent == []
    assert daemon.stats["consecutive_failures"] == 2


def test_timed_out_runs_count_in_the_streak() -> None:
    """Timed-out runs count as failed ones for alert_after."""
    sent: list[dict[str, Any]] = []
    daemon = PendingDaemon(["a", "b"], run_every=10, timeout=5, alert_after=2, name="slow")
    _app, clock = start_app(daemon, alerts=[sent.append])
    clock.advance(0)
    clock.advance(5)
    clock.advance(daemon.stats["next_run_at"] - clock.seconds())
    clock.advance(5)
    assert sent == [{"event": "alert", "daemon": "slow", "count": 2,
                     "error": "timed out after 5 s in do_work"}]


def test_without_alert_after_no_alert_but_the_count() -> None:
    """Without alert_after failures are counted and nothing is sent."""
    sent: list[dict[str, Any]] = []
    daemon = FakeDaemon(run_every=10)
    _app, clock = start_app(daemon, alerts=[sent.append])
    clock.advance(0)
    for _ in range(10):
        run_once(daemon, clock, boom())
    assert (sent, daemon.stats["consecutive_failures"]) == ([], 10)


def test_a_failing_or_slow_target_does_not_stop_the_others() -> None:
    """A target that raises is logged; one that never answers holds nothing up."""
    sent: list[dict[str, Any]] = []
    never: list[Deferred[None]] = []

    def raising(event: dict[str, Any]) -> None:
        raise RuntimeError("target down")

    def hanging(event: dict[str, Any]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        never.append(d)
        return d

    daemon = FakeDaemon(run_every=10, alert_after=1, name="x")
    _app, clock = start_app(daemon, alerts=[raising, hanging, sent.append])
    clock.advance(0)
    run_once(daemon, clock, boom())
    run_once(daemon, clock, "ok")
    assert [e["event"] for e in sent] == ["alert", "recovery"]
    assert len(never) == 2
    assert daemon.stats["runs"] == 3


def test_bad_alert_targets_are_refused() -> None:
    """DaemonApp(alerts=...) checks its targets when it is built."""
    with pytest.raises(ValueError, match=r"app\.alerts"):
        make_app(alerts=[42])


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="daemonapp-alerts-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def clock_life(state_dir: str, start: str, until: str, catch_up: str, *,
               sent: list[dict[str, Any]], grace: float = 3600.0) -> DaemonApp:
    clock = Clock()
    clock.advance(epoch(start))
    app, _ = make_app(clock, state_dir=state_dir, alerts=[sent.append])
    app.add(FakeDaemon(name="q", schedule="*/15 * * * *", timezone="UTC", catch_up=catch_up,
                       misfire_grace=grace))
    app.startService()
    while clock.seconds() < epoch(until):
        clock.advance(min(30.0, epoch(until) - clock.seconds()))
    app.stop("test")
    return app


def test_skipped_fire_times_raise_an_alert_at_once(state_dir: str) -> None:
    """Fire times that will never run (catch_up none) raise one alert at the start."""
    sent: list[dict[str, Any]] = []
    clock_life(state_dir, "2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "none",
               sent=sent)
    assert sent == []
    clock_life(state_dir, "2026-01-01T00:47:00+00:00", "2026-01-01T00:48:00+00:00", "none",
               sent=sent)
    assert sent == [{"event": "alert", "daemon": "q", "count": 2,
                     "error": "2 fire time(s) skipped (downtime); the last was "
                              "2026-01-01T00:45:00+00:00"}]


def test_fire_times_made_up_raise_no_alert(state_dir: str) -> None:
    """Missed fire times that catch_up once makes up raise no alert."""
    sent: list[dict[str, Any]] = []
    clock_life(state_dir, "2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "once",
               sent=sent)
    clock_life(state_dir, "2026-01-01T00:47:00+00:00", "2026-01-01T00:48:00+00:00", "once",
               sent=sent)
    assert sent == []


def test_fire_times_past_the_grace_raise_an_alert(state_dir: str) -> None:
    """Misses older than misfire_grace are skipped and alerted, the recent one made up."""
    sent: list[dict[str, Any]] = []
    clock_life(state_dir, "2026-01-01T00:10:00+00:00", "2026-01-01T00:16:00+00:00", "all",
               sent=sent, grace=1200.0)
    clock_life(state_dir, "2026-01-01T01:10:00+00:00", "2026-01-01T01:11:00+00:00", "all",
               sent=sent, grace=1200.0)
    assert [(e["count"], e["error"]) for e in sent] == [
        (2, "2 fire time(s) skipped (downtime); the last was 2026-01-01T00:45:00+00:00")]


ALERT_APP = """
import json, sys, time
from daemonapp.app import DaemonApp
from daemonapp.testing import FakeDaemon

class Broken(FakeDaemon):
    def get_work(self):
        raise RuntimeError("database down")

app = DaemonApp(shutdown_after=2.0, alerts=sys.argv[2:])
daemon = Broken(name="broken", run_every=0.1, alert_after=2)
app.add(daemon)
started = time.monotonic()
status = app.run()
ended = time.monotonic()
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "runs": daemon.stats["runs"], "started": started,
               "ended": ended}, f)
"""


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[str, float, dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        _Recorder.received.append((self.path, time.monotonic(),
                                   json.loads(self.rfile.read(length))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.integration
def test_a_webhook_alert_reaches_a_real_server_and_dead_ones_delay_nothing(
        tmp_path: Path) -> None:
    """The alert is POSTed to a live local HTTP server while the app runs, while a
    webhook that never answers and one whose port refuses hold up neither it nor the
    daemon's runs: the app runs as many as the same app with the live webhook only,
    beside it at the same time (so that a loaded machine slows both alike)."""
    _Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the backlog) and never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    script = tmp_path / "alert_app.py"
    script.write_text(ALERT_APP)
    live = f"http://127.0.0.1:{server.server_address[1]}"
    hooks = {"dead": [f"http://127.0.0.1:{silent.getsockname()[1]}/hook",
                      f"http://127.0.0.1:{closed.getsockname()[1]}/hook", f"{live}/dead"],
             "control": [f"{live}/control"]}
    procs = {name: subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / f"{name}.json"), *urls],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True) for name, urls in hooks.items()}
    try:
        errors = {name: proc.communicate(timeout=60)[1] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.shutdown()
        silent.close()
        closed.close()
    for name, proc in procs.items():
        assert proc.returncode == 0, errors[name][-3000:]
    dead, control = (json.loads((tmp_path / f"{name}.json").read_text())
                     for name in ("dead", "control"))
    assert dead["status"] == control["status"] == 0
    arrived = {path: (at, event) for path, at, event in _Recorder.received}
    assert sorted(path for path, _, _ in _Recorder.received) == ["/control", "/dead"]
    assert arrived["/dead"][1] == {"event": "alert", "daemon": "broken", "count": 2,
                                   "error": "get_work: RuntimeError: database down"}
    # While the app ran: one held up by the hook that never answers would come never.
    assert dead["started"] < arrived["/dead"][0] < dead["ended"]
    # Every 0.1 s for 2 s: a loop held up by the dead hooks would run far fewer.
    assert control["runs"] >= 5, control
    assert dead["runs"] >= control["runs"] // 2, (dead, control)
