"""Command on the real reactor: real programs, real signals, in a child DaemonApp process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests._processes import DAEMONAPP, ROOT, run_process, write_file
from tests.jobs._helpers import pid_alive

SCRIPT = Path(__file__).with_name("command_app.py")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run command_app.py (shutdown_after 3 s) once and load what it wrote."""
    out = tmp_path_factory.mktemp("command") / "out.json"
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8",
           "SECRET_TOKEN": "must not reach the commands"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "3"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the app did not end within 60 s of its 3 s shutdown_after")
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded poll for stray programs
    alive = group_alive(proc.pid)
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr.decode(errors="replace")[-4000:]
    data: dict[str, Any] = json.loads(out.read_text())
    data["stray_processes"] = alive
    return data


def events_of(result: dict[str, Any], daemon: str) -> list[dict[str, Any]]:
    return [e for e in result["events"] if e["daemon"] == daemon]


@pytest.mark.integration
def test_app_exits_with_status_zero(result: dict[str, Any]) -> None:
    """The app ends at its deadline with exit status 0 and leaves no program running."""
    assert (result["status"], result["stray_processes"]) == (0, False)


@pytest.mark.integration
def test_program_runs_every_run_and_logs_its_output(result: dict[str, Any]) -> None:
    """A program exiting 0 runs once per run; its stdout lines reach the log."""
    stats = result["stats"]["echo"]
    assert stats["runs"] >= 2
    assert stats["runs"] == stats["items"]
    assert (stats["failures"], stats["last_outcome"]) == (0, "worked")
    stdout = {e["line"] for e in events_of(result, "echo") if e["stream"] == "stdout"}
    assert stdout == {"hello"}


@pytest.mark.integration
def test_program_gets_a_clean_environment(result: dict[str, Any]) -> None:
    """The program sees PATH, LANG and its env only, not the app's other variables."""
    seen = {e["line"] for e in events_of(result, "echo") if e["stream"] == "stderr"}
    assert seen == {"GREETING,LANG,PATH"}


@pytest.mark.integration
def test_non_zero_exit_is_a_failed_run(result: dict[str, Any]) -> None:
    """A program exiting 3 makes failed runs whose failure names the status."""
    stats = result["stats"]["fail"]
    assert stats["runs"] >= 2
    # The last run may have been in flight at the stop, which terminates it quietly.
    assert stats["failures"] in (stats["runs"], stats["runs"] - 1)
    messages = {e["failure"].split(" after ")[0] for e in events_of(result, "fail")
                if e["failure"]}
    assert messages == {f"{sys.executable} exited with status 3"}


@pytest.mark.integration
def test_timeout_kills_a_program_that_ignores_term(result: dict[str, Any]) -> None:
    """A program ignoring SIGTERM is SIGKILLed kill_grace after its timeout; the run is
    timed-out."""
    stats = result["stats"]["stubborn"]
    assert (stats["runs"], stats["timeouts"], stats["last_outcome"]) == (1, 1, "timed-out")
    [message] = [e["failure"] for e in events_of(result, "stubborn") if e["failure"]]
    assert message.startswith(f"{sys.executable} timed out after 0.5 s and was killed by "
                              f"signal 9")


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups: Linux's")
def test_timeout_kills_the_programs_process_group(result: dict[str, Any]) -> None:
    """At the timeout the program's whole process group goes: a child that ignores
    SIGTERM too is SIGKILLed with it after kill_grace."""
    stats = result["stats"]["stubborn_group"]
    assert (stats["runs"], stats["last_outcome"]) == (1, "timed-out")
    [child] = [int(e["line"]) for e in events_of(result, "stubborn_group")
               if e["stream"] == "stdout"]
    assert not pid_alive(child)


@pytest.mark.integration
def test_stop_terminates_a_running_program(result: dict[str, Any]) -> None:
    """At the app's stop a program still running is terminated, not waited for."""
    stats = result["stats"]["long"]
    assert (stats["runs"], stats["failures"]) == (1, 0)
    assert [e["line"] for e in events_of(result, "long") if e["stream"]] == ["started"]


@pytest.mark.integration
def test_command_daemon_runs_every_n_seconds_with_timeout(tmp_path: Path) -> None:
    """`command` runs a program every N seconds; a program over its timeout is killed."""
    cfg = write_file(tmp_path / "d.yaml",
                     "app:\n  state_dir: ./var\n  shutdown_after: 1.5s\n  stop_timeout: 5s\n"
                     "daemons:\n"
                     "  tick:\n    type: command\n    run_every: 0.2s\n"
                     "    argv: [/bin/sh, -c, 'echo x >> ticks']\n"
                     "  hang:\n    type: command\n    run_every: 10m\n    timeout: 0.3s\n"
                     "    kill_after: 0.2s\n"
                     "    argv: [/bin/sh, -c, 'echo $$ > hang.pid; exec sleep 100']\n")
    started = time.monotonic()
    result = run_process([str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    ticks = (tmp_path / "ticks").read_text().splitlines()
    assert len(ticks) >= 3
    pid = int((tmp_path / "hang.pid").read_text())
    assert not pid_alive(pid)
