"""Real signals against app.run() on the real reactor (integration: real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
