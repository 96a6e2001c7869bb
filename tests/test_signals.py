"""Real signals against app.run() on the real reactor (integration: real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._processes import (
    LOG_TO_FILE,
    log_shows,
    running,
    signal_and_wait,
    start_script,
    wait_started,
    wait_until,
)

SCRIPT = Path(__file__).parent / "scripts" / "slow_app.py"
ROOT = Path(__file__).parent.parent


def wait_for(proc: subprocess.Popen[str], text: str) -> str:
    """Read the child's output until a line holds ``text`` (bounded: 20 s)."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
        assert time.monotonic() < deadline, f"never saw {text!r}"
    raise AssertionError(f"exited before {text!r}: {''.join(seen)}")


def start(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    wait_for(proc, "started")
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


@pytest.mark.integration
def test_sigterm_waits_for_slow_item_and_exits_zero() -> None:
    """SIGTERM during a slow do_work waits for it, then app.run() returns 0."""
    proc = start("1.0", "30", "thread")
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert "finished" in out
    assert "status 0" in out
    assert code == 0


@pytest.mark.integration
def test_stop_timeout_exits_one() -> None:
    """A hung in_thread item past stop_timeout makes the process exit 1."""
    proc = start("30", "0.5", "thread")
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert "finished" not in out
    assert "abandoned work after stop_timeout" in out
    assert code == 1


@pytest.mark.integration
def test_second_sigint_stops_at_once() -> None:
    """A second SIGINT ends the app at once with a non-zero status."""
    proc = start("30", "60", "thread")
    proc.send_signal(signal.SIGINT)
    wait_for(proc, "daemonapp stopping")
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 1
    assert "finished" not in out
    assert "abandoned work second SIGINT" in out


# ------------------------------------------------ DESIGN §2's signal rules, from outside


HUNG_APP = """\
import sys
from twisted.internet.defer import Deferred
from daemonapp import Daemon, DaemonApp

class Hung(Daemon):
    run_every = 10
    def get_work(self):
        open("started", "w").close()
        return Deferred()  # never fires

app = DaemonApp(stop_timeout={stop_timeout})
app.add(Hung())
sys.exit(10 + app.run())
"""


TICKING_APP = """\
import sys
from daemonapp import Daemon, DaemonApp
class D(Daemon):
    run_every = 0.05
    def get_work(self):
        open('started', 'w').close()
app = DaemonApp()
app.add(D())
sys.exit(10 + app.run())
"""


@pytest.mark.integration
def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    """A second SIGTERM stops at once (abandoned work: exit status 1)."""
    with running(start_script(tmp_path, LOG_TO_FILE + HUNG_APP.format(stop_timeout=60))) as proc:
        assert wait_started(proc, tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: log_shows(tmp_path / "app.log", "stopping: signal SIGTERM"))
        assert proc.poll() is None
        assert signal_and_wait(proc, signal.SIGTERM, timeout=10)
        assert proc.returncode == 11


@pytest.mark.integration
def test_stop_timeout_abandons_with_status_1(tmp_path: Path) -> None:
    """After stop_timeout the app abandons what is left and exits 1."""
    with running(start_script(tmp_path, LOG_TO_FILE + HUNG_APP.format(stop_timeout=0.5))) as proc:
        assert wait_started(proc, tmp_path)
        assert signal_and_wait(proc, signal.SIGTERM, timeout=10)
        assert proc.returncode == 11


@pytest.mark.integration
def test_hung_thread_exits_after_stop_timeout(tmp_path: Path) -> None:
    """A hung in_thread hook does not block exit: after stop_timeout the process exits 1."""
    body = (
        "import sys, threading\n"
        "from daemonapp import Daemon, DaemonApp\n"
        "class Hung(Daemon):\n"
        "    run_every = 10\n"
        "    in_thread = True\n"
        "    def get_work(self):\n"
        "        open('started', 'w').close()\n"
        "        threading.Event().wait()\n"
        "app = DaemonApp(stop_timeout=0.5)\n"
        "app.add(Hung())\n"
        "sys.exit(10 + app.run())\n")
    with running(start_script(tmp_path, body)) as proc:
        assert wait_started(proc, tmp_path)
        assert signal_and_wait(proc, signal.SIGTERM, timeout=15)
        assert proc.returncode in (1, 11)


@pytest.mark.integration
def test_sighup_does_not_kill(tmp_path: Path) -> None:
    """SIGHUP reopens logs and the process keeps running; SIGTERM then exits 0."""
    with running(start_script(tmp_path, LOG_TO_FILE + TICKING_APP)) as proc:
        assert wait_started(proc, tmp_path)
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: log_shows(tmp_path / "app.log", "SIGHUP: reopening log files"))
        assert proc.poll() is None
        assert signal_and_wait(proc, signal.SIGTERM, timeout=10)
        assert proc.returncode == 10


@pytest.mark.integration
def test_sigint_is_planned_stop(tmp_path: Path) -> None:
    """SIGINT is a planned stop: exit status 0."""
    with running(start_script(tmp_path, LOG_TO_FILE + TICKING_APP)) as proc:
        assert wait_started(proc, tmp_path)
        assert signal_and_wait(proc, signal.SIGINT, timeout=10)
        assert proc.returncode == 10
