"""DESIGN's Exact rules, checked from the outside: public names and their documented behaviour only.

Each test reads like a hidden acceptance test would: it uses the public facade, a
``task.Clock`` for time, and real subprocesses only for the command line.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from daemonapp import Daemon, DaemonApp, HighlanderBusy
from daemonapp.locks import highlander
from daemonapp.testing import make_app

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
PYTHON = BIN / "python"
DAEMONAPP = BIN / "daemonapp"
TWISTD = BIN / "twistd"
SUBPROCESS_TIMEOUT = 60


# ----------------------------------------------------------------------------- helpers


class Scripted(Daemon):
    """A daemon that hands out scripted jobs and records when each hook ran."""

    run_every = 30

    def __init__(self, jobs: Any = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.jobs = list(jobs)
        self.get_work_at: list[float] = []
        self.done: list[tuple[float, Any]] = []

    def get_work(self) -> Any:
        self.get_work_at.append(self.reactor.seconds())
        if not self.jobs:
            return None
        job = self.jobs.pop(0)
        if isinstance(job, BaseException):
            raise job
        return job

    def do_work(self, job: Any) -> Any:
        self.done.append((self.reactor.seconds(), job))
        return None


class Slow(Scripted):
    """Each do_work takes ``took`` seconds of clock time (a Deferred fired by the test)."""

    def __init__(self, jobs: Any = (), **kw: Any) -> None:
        super().__init__(jobs, **kw)
        self.pending: list[Deferred[None]] = []

    def do_work(self, job: Any) -> Any:
        super().do_work(job)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d


def start_app(*daemons: Daemon, **app_kw: Any) -> tuple[DaemonApp, Clock]:
    """make_app(**app_kw) with ``daemons`` added and the app started (the clock not advanced)."""
    app, clock = make_app(**app_kw)
    for daemon in daemons:
        app.add(daemon)
    app.startService()
    return app, clock


def result_of(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def fired(d: Deferred[Any]) -> bool:
    box: list[Any] = []
    d.addBoth(lambda r: box.append(r) or r)
    return bool(box)


def advance_to(clock: Clock, when: float) -> None:
    """Advance the clock timer by timer up to ``when`` (so each timer sees its own time)."""
    for _ in range(100_000):
        calls = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= when]
        if not calls:
            break
        clock.advance(max(0.0, min(calls) - clock.seconds()))
    clock.advance(max(0.0, when - clock.seconds()))


def idle_run_delays(daemon: Daemon, clock: Clock, count: int) -> list[float]:
    delays = []
    for _ in range(count):
        nxt = daemon.stats["next_run_at"]
        advance_to(clock, nxt)
        delays.append(daemon.stats["current_delay"])
    return delays


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


# ------------------------------------------------------------------ processes and files


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def child_env(*paths: Path, **extra: str) -> dict[str, str]:
    """os.environ without DAEMONAPP_CONFIG, PYTHONPATH the working tree then ``paths``, and
    ``extra`` on top."""
    # The working tree first, as pytest imports it (the venv may hold an older install).
    env = dict(os.environ)
    env.pop("DAEMONAPP_CONFIG", None)
    env["PYTHONPATH"] = ":".join(str(p) for p in (ROOT, *paths))
    env.update(extra)
    return env


def run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=child_env(**(env or {})), capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_script(root: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Write ``body`` to root/main.py and run it to the end."""
    script = write(root / "main.py", body)
    return run([str(PYTHON), str(script)], cwd=root)


def check_config(root: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Write ``text`` to root/d.yaml and run `daemonapp check d.yaml` there."""
    write(root / "d.yaml", text)
    return run([str(DAEMONAPP), "check", "d.yaml"], cwd=root, env=env)


def start_script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "main.py"
    script.write_text(body)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([str(PYTHON), str(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def popen_run(root: Path, cfg: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(DAEMONAPP), "run", str(cfg), *extra], cwd=root,
                            env=child_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def popen_run_logged(root: Path, cfg: Path) -> subprocess.Popen[str]:
    """popen_run with the output in root/app.log: a full, unread pipe would block the app."""
    with open(root / "app.log", "w") as log_file:
        return subprocess.Popen([str(DAEMONAPP), "run", str(cfg)], cwd=root,
                                env=child_env(root), stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)


def popen_twistd(root: Path) -> subprocess.Popen[str]:
    """`twistd -n daemonapp -c d.yaml` in root."""
    return subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "daemonapp", "-c", "d.yaml"],
                            cwd=root, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def write_cleanup_app(root: Path, *, app: str = "", name: str = "c") -> Path:
    """root/d.yaml: state_dir ./var plus ``app`` lines, one file_cleanup daemon on root/s."""
    (root / "s").mkdir()
    return write(root / "d.yaml", "app:\n  state_dir: ./var\n" + app +
                 f"daemons:\n  {name}:\n    type: file_cleanup\n    run_every: 5m\n"
                 "    directory: ./s\n    remove_older_than: 1h\n")


def write_scgi_app(root: Path, endpoint: str = "unix:./run/app.sock") -> Path:
    """root/d.yaml: one scgi listener on ``endpoint`` serving CGI_WSGI (root/cgiwsgi.py)."""
    write(root / "cgiwsgi.py", CGI_WSGI)
    return write(root / "d.yaml", "app:\n  state_dir: ./var\nlisteners:\n"
                 f"  - protocol: scgi\n    endpoint: {endpoint}\n"
                 "    wsgi: cgiwsgi:application\n")


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def wait_ready(proc: subprocess.Popen[str], path: Path) -> bool:
    """Wait until ``path`` exists (the app is up) or ``proc`` has ended; True unless timed out."""
    return wait_for(lambda: path.exists() or proc.poll() is not None)


def wait_started(root: Path) -> bool:
    """Wait for the script's root/started, then let its reactor install the signal handlers
    (callWhenRunning); True unless timed out."""
    if not wait_for((root / "started").exists):
        return False
    time.sleep(0.2)
    return True


def signal_and_wait(proc: subprocess.Popen[str], sig: int, timeout: float) -> bool:
    """Send ``sig`` to ``proc``; True once it has ended within ``timeout`` seconds."""
    proc.send_signal(sig)
    return wait_for(lambda: proc.poll() is not None, timeout=timeout)


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@contextmanager
def running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``with running(Popen(...)) as proc:`` kills ``proc`` (if still running) on the way out."""
    try:
        yield proc
    finally:
        stop_process(proc)


# ======================================================================== §1 Daemon


def test_facade_names() -> None:
    """The public names of DESIGN import from where DESIGN says."""
    import daemonapp
    import daemonapp.jobs
    import daemonapp.locks
    import daemonapp.testing

    assert daemonapp.Daemon is Daemon
    assert daemonapp.DaemonApp is DaemonApp
    assert daemonapp.locks.highlander is highlander
    assert daemonapp.locks.HighlanderBusy is HighlanderBusy
    for name in ("open_store", "StaleLease", "job", "progress", "current_job"):
        assert getattr(daemonapp.jobs, name) is not None
    assert issubclass(daemonapp.jobs.StaleLease, Exception)
    assert {"Daemon", "DaemonApp"} <= set(daemonapp.__all__)


# =================================================================== §2 DaemonApp


# ==================================================================== §3 config / CLI


# One file_cleanup daemon (six lines): a test appends the key it is about as line 7.


# ================================================================= §5 highlander


@pytest.mark.integration
def test_cgi_frontend_imports_no_twisted() -> None:
    """Importing daemonapp.cgi_frontend pulls in no Twisted, yaml or zope."""
    code = ("import sys, daemonapp.cgi_frontend\n"
            "print([m for m in ('twisted', 'yaml', 'zope') if m in sys.modules])\n")
    result = run([str(PYTHON), "-c", code], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_daemonapp_cgi_is_plain_script() -> None:
    """daemonapp-cgi is shipped as a plain script (no console-script wrapper importing re)."""
    script = BIN / "daemonapp-cgi"
    assert script.exists()
    text = script.read_text()
    assert "import re\n" not in text


# ======================================================================= §6 jobs


# -------------------------------------------------------------- `daemonapp jobs`


# ====================================================================== more §1/§2


# =================================================================== §2 signals


# An app whose daemon touches ./started on each run (every 50 ms); it exits 10 + status.


# ====================================================================== more §3


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# =================================================================== more §5


# ============================================================ §6 end to end (real app)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


# ===================================================================== §5 leases


# ============================================================ §4/§5 CGI entry points


CGI_WSGI = """\
import os

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    leaked = os.environ.get("HTTP_X_SECRET", "-")
    return [("hello %s env=%s" % (environ.get("QUERY_STRING", ""), leaked)).encode()]
"""

CGI_CONFIG = """\
app:
  state_dir: ./var
  stay_alive_for: 2s
  shutdown_if_idle: 1s
listeners:
  - protocol: scgi
    endpoint: unix:./run/app.sock
    wsgi: cgiwsgi:application
cgi:
  min_load: 1
  max_load: 2
  start_timeout: 15s
"""


def cgi_env(root: Path, **extra: str) -> dict[str, str]:
    env = {
        "DAEMONAPP_CONFIG": str(root / "d.yaml"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": "x=1",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_X_SECRET": "s3cret",
        "PYTHONPATH": f"{ROOT}:{root}",
    }
    env.update(extra)
    return env


def cgi_setup(root: Path) -> None:
    write(root / "cgiwsgi.py", CGI_WSGI)
    write(root / "d.yaml", CGI_CONFIG)
    (root / "run").mkdir(exist_ok=True)


def kill_spawned(root: Path) -> None:
    pids = root / "var" / "pids"
    if not pids.is_dir():
        return
    for entry in pids.iterdir():
        try:
            os.kill(int(entry.stem), 9)
        except (ValueError, OSError):
            pass


def run_cgi(root: Path, args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=root, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                               **cgi_env(root, **extra)},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


@pytest.mark.integration
def test_cgi_frontend_503_above_max_load(tmp_path: Path) -> None:
    """daemonapp-cgi answers 503 with Retry-After when the load is above max_load."""
    cgi_setup(tmp_path)
    result = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="5")
    assert result.stdout.startswith("Status: 503")
    assert "Retry-After: " in result.stdout


@pytest.mark.integration
def test_cgi_frontend_in_process_below_min_load(tmp_path: Path) -> None:
    """Below min_load daemonapp-cgi serves the request in-process as plain CGI."""
    cgi_setup(tmp_path)
    result = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="0.5")
    assert result.stdout.startswith("Status: 200")
    assert result.stdout.endswith("hello x=1 env=s3cret") or "hello x=1" in result.stdout


@pytest.mark.integration
def test_cgi_frontend_starts_daemon_with_clean_env(tmp_path: Path) -> None:
    """Between min and max load daemonapp-cgi starts the daemon and relays; the daemon's
    environment holds no HTTP_* variables."""
    cgi_setup(tmp_path)
    try:
        first = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="1.5")
        assert first.stdout.startswith("Status: 200"), first.stdout + first.stderr
        assert "hello x=1 env=-" in first.stdout
        second = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="1.5",
                         QUERY_STRING="y=2")
        assert "hello y=2 env=-" in second.stdout
    finally:
        kill_spawned(tmp_path)


# ======================================================================== signatures


# ================================================================ a few more rules


# ============================================================ process lifetime (CLI)


# ==================================================================== bundled daemons


@pytest.mark.integration
def test_command_daemon_runs_every_n_seconds_with_timeout(tmp_path: Path) -> None:
    """`command` runs a program every N seconds; a program over its timeout is killed."""
    cfg = write(tmp_path / "d.yaml",
                "app:\n  state_dir: ./var\n  shutdown_after: 1.5s\n  stop_timeout: 5s\n"
                "daemons:\n"
                "  tick:\n    type: command\n    run_every: 0.2s\n"
                "    argv: [/bin/sh, -c, 'echo x >> ticks']\n"
                "  hang:\n    type: command\n    run_every: 10m\n    timeout: 0.3s\n"
                "    kill_after: 0.2s\n"
                "    argv: [/bin/sh, -c, 'echo $$ > hang.pid; exec sleep 100']\n")
    started = time.monotonic()
    result = run([str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    ticks = (tmp_path / "ticks").read_text().splitlines()
    assert len(ticks) >= 3
    pid = int((tmp_path / "hang.pid").read_text())
    assert not pid_alive(pid)


# ============================================================ §5/§6 with PostgreSQL


# ===================================================================== §4 FastCGI wire


# ======================================================================= §4 limits


HTTPOXY_WSGI = """\
import os

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    seen = [k for k in ("HTTP_PROXY", "HTTP_X_SECRET") if k in os.environ]
    return [("header=%s os.environ=%s" % (environ.get("HTTP_X_SECRET"), ",".join(seen) or "-"))
            .encode()]
"""


@pytest.mark.integration
def test_cgi_frontend_in_process_scrubs_http_env(tmp_path: Path) -> None:
    """daemonapp-cgi serving in-process keeps HTTP_* out of os.environ (httpoxy)."""
    cgi_setup(tmp_path)
    write(tmp_path / "cgiwsgi.py", HTTPOXY_WSGI)
    result = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="0.5",
                     HTTP_PROXY="http://evil.example:1")
    assert result.stdout.startswith("Status: 200"), result.stdout + result.stderr
    assert "header=s3cret os.environ=-" in result.stdout


CRASHING_WSGI = """\
import os

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    if "crash" in environ.get("QUERY_STRING", ""):
        def body():
            yield b"partial " * 1000
            os._exit(1)
        return body()
    return [b"fine"]
"""


@pytest.mark.integration
def test_cgi_frontend_daemon_crash_is_503_not_truncated_200(tmp_path: Path) -> None:
    """A daemon that dies mid-answer gives a 503 from daemonapp-cgi, never a truncated 200."""
    cgi_setup(tmp_path)
    write(tmp_path / "cgiwsgi.py", CRASHING_WSGI)
    try:
        first = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="1.5")
        assert first.stdout.startswith("Status: 200"), first.stdout + first.stderr
        assert first.stdout.endswith("fine")
        crashed = run_cgi(tmp_path, [str(BIN / "daemonapp-cgi")], DAEMONAPP_CGI_LOADAVG="1.5",
                          QUERY_STRING="crash=1")
        assert crashed.stdout.startswith("Status: 503"), crashed.stdout[:200]
        assert "partial" not in crashed.stdout
    finally:
        kill_spawned(tmp_path)


