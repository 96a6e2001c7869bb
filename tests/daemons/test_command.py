"""Command: one execution per run, a clean environment, output to the log, timeouts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from daemonapp import IDaemon
from daemonapp.app import DaemonApp
from daemonapp.daemon import OptionError
from daemonapp.daemons.command import _DIE_WITH_PARENT, MAX_LINE, Command, die_with_parent
from daemonapp.testing import make_app
from tests.daemons._helpers import failures
from tests.jobs._helpers import pid_alive

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FakeProcess:
    """The transport a ProcessClock hands to the protocol: records signals."""

    protocol: ProcessProtocol
    executable: str
    args: list[str]
    env: dict[str, str]
    path: str | None
    signals: list[str] = field(default_factory=list)
    stdin_closed: bool = False
    lost: bool = False
    exited: bool = False

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        self.lost = True

    def exit(self, code: int = 0, signal: int | None = None, *, ended: bool = True) -> None:
        """The process exits (and, with ``ended``, its pipes close too)."""
        self.exited = True
        if code == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(exitCode=None if signal else code,
                                               signal=signal))
        self.protocol.processExited(reason)
        if ended:
            self.protocol.processEnded(reason)


class ProcessClock(Clock):
    """A task.Clock that also 'spawns' processes, recording them."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, protocol: ProcessProtocol, executable: str, args: list[str],
                     env: dict[str, str], path: str | None = None) -> FakeProcess:
        # Record the program behind the die-with-parent trampoline (tested on its own).
        if args[1:4] == ["-I", "-S", "-c"]:
            assert executable == sys.executable and args[4] == _DIE_WITH_PARENT
            assert args[5] == str(os.getpid())
            executable, args = args[6], args[7:]
        process = FakeProcess(protocol, executable, list(args), dict(env), path)
        self.spawned.append(process)
        protocol.makeConnection(process)  # type: ignore[arg-type]
        return process


@pytest.fixture
def proc_app() -> tuple[DaemonApp, ProcessClock]:
    clock = ProcessClock()
    app, _ = make_app(clock)
    return app, clock


def start(proc_app: tuple[DaemonApp, ProcessClock], **kw: Any) -> tuple[Command, ProcessClock]:
    app, clock = proc_app
    kw.setdefault("argv", ["sh", "-c", "true"])
    kw.setdefault("run_every", 30)
    kw.setdefault("name", "job")
    daemon = Command(**kw)
    app.add(daemon)
    app.startService()
    clock.advance(0)
    return daemon, clock


def lines(events: list[Any]) -> list[tuple[str, str]]:
    return [(e["stream"], e["line"]) for e in events if "stream" in e]


def test_provides_idaemon() -> None:
    """Command provides IDaemon."""
    verifyObject(IDaemon, Command(argv="true", run_every=10))


def test_argv_string_is_split_like_a_shell() -> None:
    """A string argv is split with shlex, quotes included."""
    assert Command(argv="backup --dir 'my files' -v", run_every=10).argv == (
        "backup", "--dir", "my files", "-v")


def test_spawns_the_program_found_in_path(proc_app: Any) -> None:
    """The program is looked up in PATH and spawned with argv, stdin closed."""
    _, clock = start(proc_app, argv=["sh", "-c", "echo hi"], cwd="/tmp")
    [process] = clock.spawned
    assert (process.executable, process.args, process.path) == (
        shutil.which("sh"), ["sh", "-c", "echo hi"], "/tmp")
    assert process.stdin_closed


def test_environment_is_clean(proc_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program sees only PATH and LANG of the app, plus env (values as strings)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("SECRET_TOKEN", "do not leak")
    _, clock = start(proc_app, env={"MODE": "nightly", "RETRIES": 3})
    assert clock.spawned[0].env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                    "MODE": "nightly", "RETRIES": "3"}


def test_one_execution_per_run(proc_app: Any) -> None:
    """Each run spawns the program once; a run ends when it exits 0 and is "worked"."""
    daemon, clock = start(proc_app)
    assert (len(clock.spawned), daemon.running) == (1, True)
    clock.spawned[0].exit(0)
    assert (daemon.stats["runs"], daemon.stats["items"], daemon.stats["last_outcome"]) == (
        1, 1, "worked")
    clock.advance(29)
    assert len(clock.spawned) == 1
    clock.advance(1)
    assert len(clock.spawned) == 2


def test_non_zero_exit_fails_the_run(proc_app: Any, events: list[Any]) -> None:
    """A non-zero exit status makes a failed run that names the status."""
    daemon, clock = start(proc_app)
    clock.spawned[0].exit(3)
    assert daemon.stats["last_outcome"] == "failed"
    assert daemon.stats["exit_code"] == 3
    [event] = failures(events)
    assert "sh exited with status 3" in str(event["log_failure"].value)


def test_killed_by_a_signal_fails_the_run(proc_app: Any, events: list[Any]) -> None:
    """A program killed by a signal makes a failed run that names the signal."""
    daemon, clock = start(proc_app)
    clock.spawned[0].exit(signal=9)
    assert daemon.stats["last_outcome"] == "failed"
    assert "sh was killed by signal 9" in str(failures(events)[0]["log_failure"].value)


def test_a_failed_run_does_not_skip_the_next(proc_app: Any) -> None:
    """After a failed run the next run executes the program again."""
    _daemon, clock = start(proc_app, increase_idle_by=0)
    clock.spawned[0].exit(1)
    clock.advance(30)
    assert len(clock.spawned) == 2


def test_timeout_sends_term_then_kill(proc_app: Any, events: list[Any]) -> None:
    """At the timeout the program gets SIGTERM, kill_grace later SIGKILL; the run is
    timed-out."""
    daemon, clock = start(proc_app, timeout=5, kill_grace=2)
    process = clock.spawned[0]
    clock.advance(4.9)
    assert process.signals == []
    clock.advance(0.1)
    assert process.signals == ["TERM"]
    clock.advance(2)
    assert process.signals == ["TERM", "KILL"]
    process.exit(signal=9)
    assert daemon.stats["last_outcome"] == "timed-out"
    assert (daemon.stats["timeouts"], daemon.stats["failures"]) == (1, 0)
    assert "sh timed out after 5 s and was killed by signal 9" in str(
        failures(events)[0]["log_failure"].value)


def test_kill_after_is_the_old_name_of_kill_grace(proc_app: Any) -> None:
    """kill_after still sets the grace between SIGTERM and SIGKILL."""
    daemon, clock = start(proc_app, timeout=5, kill_after=3)
    assert (daemon.kill_grace, daemon.kill_after) == (3.0, 3.0)
    process = clock.spawned[0]
    clock.advance(5)
    clock.advance(2.9)
    assert process.signals == ["TERM"]
    clock.advance(0.1)
    assert process.signals == ["TERM", "KILL"]


def test_a_timed_out_run_is_delayed_as_a_failure(proc_app: Any) -> None:
    """After a timed-out run the next run waits as after a failure (the idle backoff)."""
    daemon, clock = start(proc_app, timeout=5, kill_grace=2, run_every=30,
                          increase_idle_by=10)
    clock.advance(5)
    clock.spawned[0].exit(signal=15)
    assert (daemon.stats["last_outcome"], daemon.stats["current_delay"]) == ("timed-out", 40)
    clock.advance(39.9)
    assert len(clock.spawned) == 1
    clock.advance(0.1)
    assert len(clock.spawned) == 2


def test_term_that_works_needs_no_kill(proc_app: Any) -> None:
    """A program that ends on SIGTERM gets no SIGKILL."""
    _daemon, clock = start(proc_app, timeout=5, kill_after=2)
    process = clock.spawned[0]
    clock.advance(5)
    process.exit(signal=15)
    clock.advance(10)
    assert process.signals == ["TERM"]


def test_no_timeout(proc_app: Any) -> None:
    """With timeout null the program may run as long as it likes."""
    _daemon, clock = start(proc_app, timeout=None)
    clock.advance(10 * 86400)
    assert clock.spawned[0].signals == []


def test_pipes_held_open_do_not_hold_the_run(proc_app: Any) -> None:
    """When the program exited but its pipes stay open, the run ends kill_after later."""
    daemon, clock = start(proc_app, kill_after=3)
    process = clock.spawned[0]
    process.exit(0, ended=False)
    assert daemon.running
    clock.advance(3)
    assert process.lost
    assert (daemon.running, daemon.stats["last_outcome"]) == (False, "worked")


def test_output_lines_are_logged(proc_app: Any, events: list[Any]) -> None:
    """stdout and stderr are logged line by line, with the stream; a last partial line too."""
    _daemon, clock = start(proc_app)
    protocol = clock.spawned[0].protocol
    protocol.childDataReceived(1, b"hello\nwor")
    protocol.childDataReceived(2, b"oops\r\n")
    protocol.childDataReceived(1, b"ld\nno newline")
    clock.spawned[0].exit(0)
    assert lines(events) == [("stdout", "hello"), ("stderr", "oops"), ("stdout", "world"),
                             ("stdout", "no newline")]
    assert {e["daemon"] for e in events if "stream" in e} == {"job"}


def test_output_is_bounded(proc_app: Any, events: list[Any]) -> None:
    """At most max_output_lines lines are logged per run; the rest are counted."""
    _daemon, clock = start(proc_app, max_output_lines=2)
    clock.spawned[0].protocol.childDataReceived(1, b"1\n2\n3\n4\n")
    clock.spawned[0].exit(0)
    assert lines(events) == [("stdout", "1"), ("stdout", "2")]
    assert [e["dropped"] for e in events if "dropped" in e] == [2]


def test_long_lines_are_cut(proc_app: Any, events: list[Any]) -> None:
    """Only the first MAX_LINE bytes of a longer line are logged, marked as cut."""
    _daemon, clock = start(proc_app)
    protocol = clock.spawned[0].protocol
    protocol.childDataReceived(1, b"x" * (MAX_LINE + 5) + b"\nshort\n")
    protocol.childDataReceived(2, b"y" * MAX_LINE)
    protocol.childDataReceived(2, b"y" * 10)
    protocol.childDataReceived(2, b"y" * 10 + b"\nnext\n")
    clock.spawned[0].exit(0)
    assert lines(events) == [("stdout", "x" * MAX_LINE + " [cut]"), ("stdout", "short"),
                             ("stderr", "y" * MAX_LINE + " [cut]"), ("stderr", "next")]


def test_program_not_found_fails_the_run(proc_app: Any, events: list[Any]) -> None:
    """A program that is not in PATH makes a failed run, and nothing is spawned."""
    daemon, clock = start(proc_app, argv=["no-such-program-daemonapp"])
    assert clock.spawned == []
    assert daemon.stats["last_outcome"] == "failed"
    assert "not found in PATH" in str(failures(events)[0]["log_failure"].value)


def test_missing_cwd_fails_the_run(proc_app: Any, tmp_path: Any, events: list[Any]) -> None:
    """A cwd that does not exist makes a failed run that says so, and nothing is spawned."""
    daemon, clock = start(proc_app, cwd=str(tmp_path / "gone"))
    assert (clock.spawned, daemon.stats["last_outcome"]) == ([], "failed")
    assert "no such directory" in str(failures(events)[0]["log_failure"].value)


def test_relative_program_is_found_from_cwd(proc_app: Any, tmp_path: Any) -> None:
    """A program given with a '/' is looked up relative to cwd."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    _daemon, clock = start(proc_app, argv="./run.sh", cwd=str(tmp_path))
    assert clock.spawned[0].executable == str(tmp_path / "run.sh")


def test_stop_terminates_a_running_program(proc_app: Any, events: list[Any]) -> None:
    """Stopping the daemon sends SIGTERM; the stop ends with the program, not as a failure."""
    daemon, clock = start(proc_app)
    process = clock.spawned[0]
    stopped = daemon.stop()
    assert process.signals == ["TERM"]
    assert not stopped.called
    process.exit(signal=15)
    assert stopped.called
    assert failures(events) == []


@pytest.mark.parametrize(("kw", "key"), [
    ({"argv": ""}, "argv"),
    ({"argv": "'unclosed"}, "argv"),
    ({"argv": []}, "argv"),
    ({"argv": ["ls", True]}, "argv"),
    ({"argv": 42}, "argv"),
    ({"timeout": "soon"}, "timeout"),
    ({"timeout": 0}, "timeout"),
    ({"kill_after": 0}, "kill_after"),
    ({"kill_grace": "soon"}, "kill_grace"),
    ({"kill_grace": 1, "kill_after": 1}, "kill_after"),
    ({"env": {"A=B": "1"}}, "env"),
    ({"env": {"A": None}}, "env"),
    ({"env": ["A=1"]}, "env"),
    ({"max_output_lines": -1}, "max_output_lines"),
    ({"cwd": ""}, "cwd"),
    ({"in_thread": True}, "in_thread"),
])
def test_bad_options_name_their_key(kw: dict[str, Any], key: str) -> None:
    """A bad option value raises OptionError naming the key."""
    options: dict[str, Any] = {"argv": "true", "run_every": 10, **kw}
    with pytest.raises(OptionError) as info:
        Command(**options)
    assert info.value.key == key


def test_durations_are_parsed() -> None:
    """timeout and kill_after accept duration strings."""
    daemon = Command(argv="true", run_every=10, timeout="1m30s", kill_after="500ms")
    assert (daemon.timeout, daemon.kill_after) == (90.0, 0.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_trampoline_runs_the_program_with_its_argv_and_status(tmp_path: Any) -> None:
    """Through the trampoline the program keeps its argv[0], arguments and exit status."""
    script = 'tr "\\0" " " < /proc/$$/cmdline; echo "/$0/$1/"; exit 3'
    executable, args = die_with_parent("/bin/sh", ["my-sh", "-c", script, "zero", "one"])
    done = subprocess.run(args, executable=executable, capture_output=True, text=True,
                          timeout=30, check=False)
    assert (done.returncode, done.stdout) == (3, f"my-sh -c {script} zero one /zero/one/\n")


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_command_dies_with_the_app_even_when_the_app_is_sigkilled(tmp_path: Any) -> None:
    """SIGKILL the app while its command runs: the program is gone within 1 s."""
    config = tmp_path / "app.yaml"
    pid_file = tmp_path / "sleeper.pid"
    config.write_text(
        "app: {state_dir: ./var}\n"
        "daemons:\n"
        "  sleeper:\n"
        "    type: command\n"
        "    run_every: 1h\n"
        f"    argv: [sh, -c, 'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} "
        "&& exec sleep 60']\n")
    app = subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=tmp_path,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists():
            assert app.poll() is None and time.monotonic() < deadline, "the command never ran"
            time.sleep(0.02)
        sleeper = int(pid_file.read_text())
        assert pid_alive(sleeper)
        app.send_signal(signal.SIGKILL)
        app.wait(timeout=10)
        deadline = time.monotonic() + 1.0
        while pid_alive(sleeper) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pid_alive(sleeper), "the command outlived the SIGKILLed app"
    finally:
        app.kill()
        app.wait()

