"""Helpers for tests that run the real thing: the checkout's commands in a child process,
files to feed them, and bounded polling instead of fixed sleeps.

Every wait here polls a condition with a deadline and says whether it came true, so a
test asserts on what it waited for and never sleeps for a guessed time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The venv the suite runs in (./dev test's, or DAEMONAPP_VENV's): its commands are the
# installed, non-editable ones the tests mean to drive.
BIN = Path(sys.executable).parent
PYTHON = BIN / "python"
DAEMONAPP = BIN / "daemonapp"
TWISTD = BIN / "twistd"
SUBPROCESS_TIMEOUT = 60

# Prepended to a script so that its twisted.logger events land in ./app.log, flushed per
# event: a test polls that file to know a signal has been handled.
LOG_TO_FILE = ("from twisted.logger import globalLogBeginner, textFileLogObserver\n"
               "globalLogBeginner.beginLoggingTo([textFileLogObserver(open('app.log', 'a'))],"
               " redirectStandardIO=False)\n")


# ------------------------------------------------------------------------ polling


def wait_until(predicate: Callable[[], object], timeout: float = 20.0,
               interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stays_up(procs: list[subprocess.Popen[str]], seconds: float) -> bool:
    """Watch ``procs`` for ``seconds``: False as soon as one ends, True if none did.

    For the rules that something must *not* happen (a process is not taken over), where
    only a window of time can tell; a death ends the wait at once.
    """
    return not wait_until(lambda: any(p.poll() is not None for p in procs), timeout=seconds)


def catches(pid: int, sig: int) -> bool:
    """True once process ``pid`` has a handler installed for ``sig`` (SigCgt, Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def wait_catching(proc: subprocess.Popen[str], sig: int, timeout: float = 20.0) -> bool:
    """Wait until ``proc`` handles ``sig`` (or has ended); True unless timed out.

    DaemonApp installs its SIGTERM, SIGINT and SIGHUP handlers once its reactor runs, and
    `daemonapp run` its SIGUSR1 one: Python catches neither SIGHUP nor SIGUSR1 by itself.
    """
    return wait_until(lambda: catches(proc.pid, sig) or proc.poll() is not None, timeout)


def log_shows(path: Path, text: str) -> bool:
    """True once the file at ``path`` holds ``text``."""
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def listener_load(state_dir: Path, index: int) -> tuple[int, int]:
    """(in_flight, queued) of the running app's listener ``index``, from its status socket."""
    from daemonapp.status import fetch_status, status_socket_path

    listener = fetch_status(status_socket_path(str(state_dir)))["listeners"][index]
    return int(listener["in_flight"]), int(listener["queued"])


def wait_ready(proc: subprocess.Popen[str], path: Path) -> bool:
    """Wait until ``path`` exists (the app is up) or ``proc`` has ended; True unless timed out."""
    return wait_until(lambda: path.exists() or proc.poll() is not None)


def accepts(path: Path) -> bool:
    """True once a unix socket at ``path`` accepts a connection (bound *and* listening)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def wait_listening(proc: subprocess.Popen[str], path: Path) -> bool:
    """Wait until the unix socket at ``path`` accepts connections or ``proc`` has ended;
    True unless timed out (the path alone shows up between bind and listen)."""
    return wait_until(lambda: accepts(path) or proc.poll() is not None)


def wait_started(proc: subprocess.Popen[str], root: Path) -> bool:
    """Wait for the script's root/started, then until its app handles signals (its
    reactor installs the handlers when it runs); True unless timed out."""
    return wait_until((root / "started").exists) and wait_catching(proc, signal.SIGHUP)


def signal_and_wait(proc: subprocess.Popen[str], sig: int, timeout: float) -> bool:
    """Send ``sig`` to ``proc``; True once it has ended within ``timeout`` seconds."""
    proc.send_signal(sig)
    return wait_until(lambda: proc.poll() is not None, timeout=timeout)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- files and commands


def write_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its directory; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(*paths: Path, **extra: str) -> dict[str, str]:
    """os.environ without DAEMONAPP_CONFIG, PYTHONPATH the working tree then ``paths``, and
    ``extra`` on top."""
    # The working tree first, as pytest imports it (the venv may hold an older install).
    env = dict(os.environ)
    env.pop("DAEMONAPP_CONFIG", None)
    env["PYTHONPATH"] = ":".join(str(p) for p in (ROOT, *paths))
    env.update(extra)
    return env


def run_process(args: list[str], *, cwd: Path | None = None,
                env: dict[str, str] | None = None,
                timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to the end in child_env(**env), output captured."""
    return subprocess.run(args, cwd=cwd, env=child_env(**(env or {})), capture_output=True,
                          text=True, timeout=timeout, check=False)


def run_script(root: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Write ``body`` to root/main.py and run it to the end."""
    script = write_file(root / "main.py", body)
    return run_process([str(PYTHON), str(script)], cwd=root)


def check_config(root: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Write ``text`` to root/d.yaml and run `daemonapp check d.yaml` there."""
    write_file(root / "d.yaml", text)
    return run_process([str(DAEMONAPP), "check", "d.yaml"], cwd=root, env=env)


def start_script(root: Path, body: str) -> subprocess.Popen[str]:
    """Start root/main.py holding ``body`` (output piped)."""
    script = root / "main.py"
    script.write_text(body)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([str(PYTHON), str(script)], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def popen_run(root: Path, cfg: Path, *extra: str) -> subprocess.Popen[str]:
    """Start `daemonapp run CFG` in ``root`` (output piped)."""
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
    """`twistd -n daemonapp -c d.yaml` in root, its log in root/twistd.log."""
    with open(root / "twistd.log", "w") as log_file:
        return subprocess.Popen([str(TWISTD), "-n", "--pidfile=", "daemonapp", "-c", "d.yaml"],
                                cwd=root, env=child_env(), stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
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


# ------------------------------------------------------------------ config files


# Two daemons with one error each: line 6 (a bad duration) and line 14 (an unknown key).
BAD_CONFIG = """\
app:
  state_dir: ./var
daemons:
  collective:
    type: file_cleanup
    run_every: soon
    directory: ./sessions
    remove_older_than: 1h
  other:
    type: file_cleanup
    run_every: 5m
    directory: ./sessions
    remove_older_than: 1h
    no_such_key: 3
"""


# One file_cleanup daemon (six lines): a test appends the key it is about as line 7.
CLEANUP_TMP_DAEMON = ("daemons:\n  c:\n    type: file_cleanup\n    run_every: 5m\n"
                      "    directory: /tmp\n    remove_older_than: 1h\n")


def write_cleanup_app(root: Path, *, app: str = "", name: str = "c") -> Path:
    """root/d.yaml: state_dir ./var plus ``app`` lines, one file_cleanup daemon on root/s."""
    (root / "s").mkdir()
    return write_file(root / "d.yaml", "app:\n  state_dir: ./var\n" + app +
                      f"daemons:\n  {name}:\n    type: file_cleanup\n    run_every: 5m\n"
                      "    directory: ./s\n    remove_older_than: 1h\n")


# A WSGI app that echoes the query string and whether HTTP_X_SECRET leaked into os.environ.
CGI_WSGI = """\
import os

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    leaked = os.environ.get("HTTP_X_SECRET", "-")
    return [("hello %s env=%s" % (environ.get("QUERY_STRING", ""), leaked)).encode()]
"""


# A WSGI app that shows HTTP_X_SECRET from its environ and which HTTP_* reached os.environ.
HTTPOXY_WSGI = """\
import os

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    seen = [k for k in ("HTTP_PROXY", "HTTP_X_SECRET") if k in os.environ]
    return [("header=%s os.environ=%s" % (environ.get("HTTP_X_SECRET"), ",".join(seen) or "-"))
            .encode()]
"""


def write_scgi_app(root: Path, endpoint: str = "unix:./run/app.sock") -> Path:
    """root/d.yaml: one scgi listener on ``endpoint`` serving CGI_WSGI (root/cgiwsgi.py)."""
    write_file(root / "cgiwsgi.py", CGI_WSGI)
    return write_file(root / "d.yaml", "app:\n  state_dir: ./var\nlisteners:\n"
                      f"  - protocol: scgi\n    endpoint: {endpoint}\n"
                      "    wsgi: cgiwsgi:application\n")


# ------------------------------------------------------------- CGI requests


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
    """The environment a web server gives a CGI program for GET /app/?x=1 (config root/d.yaml)."""
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
    """root/cgiwsgi.py (CGI_WSGI), root/d.yaml (CGI_CONFIG) and root/run/."""
    write_file(root / "cgiwsgi.py", CGI_WSGI)
    write_file(root / "d.yaml", CGI_CONFIG)
    (root / "run").mkdir(exist_ok=True)


def kill_spawned(root: Path) -> None:
    """SIGKILL every process with a pid entry in root/var/pids."""
    pids = root / "var" / "pids"
    if not pids.is_dir():
        return
    for entry in pids.iterdir():
        try:
            os.kill(int(entry.stem), 9)
        except (ValueError, OSError):
            pass


def run_as_cgi(root: Path, args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` as a web server runs a CGI program: cgi_env(root, **extra), no stdin."""
    return subprocess.run(args, cwd=root, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                               **cgi_env(root, **extra)},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, check=False)


def finish(process: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int, str]:
    """Wait for ``process`` (killed if it outlives ``timeout``): its exit status and
    output, decoded."""
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out.decode(errors="replace")
