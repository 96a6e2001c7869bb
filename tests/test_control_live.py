"""Operating a live app (DESIGN §9) with real `daemonapp run` processes: trigger, pause and
resume, reload and SIGHUP, and the status socket under idle, garbage and many clients.

Every wait polls with a bound (tests/_processes.py); a daemon writes one line per run to
ticks.log, so the tests read what ran, and when, from the file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._processes import (
    DAEMONAPP,
    PYTHON,
    child_env,
    stop_process,
    wait_until,
    write_file,
)

TICKS = '''\
"""A daemon that writes one line per run to ticks.log: NAME START END."""

import time

from twisted.internet.defer import Deferred

from daemonapp import Daemon


class Tick(Daemon):
    def __init__(self, *, hold: float = 0.0, **kw):
        super().__init__(**kw)
        self.hold = hold
        self._given = -1

    def get_work(self):
        if self._given == self.stats["runs"]:
            return None
        self._given = self.stats["runs"]
        return time.time()

    def do_work(self, started):
        if not self.hold:
            return self._write(None, started)
        d = Deferred()
        self.reactor.callLater(self.hold, d.callback, None)
        return d.addCallback(self._write, started)

    def _write(self, _, started):
        with open("ticks.log", "a") as f:
            f.write(f"{self.name} {started:.3f} {time.time():.3f}\\n")
'''


def yaml(daemons: dict[str, dict[str, Any]], app: str = "") -> str:
    lines = ["app:", "  state_dir: ./var", "  stop_timeout: 10s", *app.splitlines(),
             "daemons:"]
    for name, options in daemons.items():
        lines.append(f"  {name}:")
        lines.append("    type: ticks:Tick")
        lines += [f"    {key}: {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def root() -> Iterator[Path]:
    """A short directory (the status socket's path must fit in 107 bytes) with ticks.py."""
    directory = Path(tempfile.mkdtemp(prefix="dlive"))
    write_file(directory / "ticks.py", TICKS)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class App:
    """One `daemonapp run app.yaml` in ``root``, its output in run.log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "var"
        with open(root / "run.log", "a") as out:
            self.proc = subprocess.Popen([str(DAEMONAPP), "run", "app.yaml"], cwd=root,
                                         env=child_env(root), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert wait_until(lambda: self.status() is not None or self.proc.poll() is not None), \
            self.log()
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return (self.root / "run.log").read_text(errors="replace")

    def status(self) -> dict[str, Any] | None:
        """The snapshot (asked in-process: a `daemonapp status` costs its imports)."""
        from daemonapp.status import fetch_status

        try:
            return fetch_status(str(self.state_dir))
        except (OSError, ValueError):
            return None

    def daemon(self, name: str) -> dict[str, Any]:
        status = self.status()
        assert status is not None
        return next(d for d in status["daemons"] if d["name"] == name)

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return daemonapp(*args, "--app", str(self.state_dir), cwd=self.root)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if not wait_until(lambda: self.proc.poll() is not None, timeout=20):
                stop_process(self.proc)
        assert self.proc.returncode == 0, self.log()


def daemonapp(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DAEMONAPP), *args], cwd=cwd, env=child_env(cwd),
                          capture_output=True, text=True, timeout=60, check=False)


def ticks(root: Path, name: str) -> list[tuple[float, float]]:
    """(start, end) of each finished run of daemon ``name``."""
    try:
        lines = (root / "ticks.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(float(start), float(end)) for who, start, end in
            (line.split() for line in lines if line.strip()) if who == name]


@pytest.fixture
def running(root: Path) -> Iterator[Any]:
    """Start an app on ``daemons`` (a dict), stopped at the end of the test."""
    apps: list[App] = []

    def start(daemons: dict[str, dict[str, Any]], app: str = "") -> App:
        write_file(root / "app.yaml", yaml(daemons, app))
        started = App(root)
        apps.append(started)
        return started

    yield start
    for app in apps:
        if app.proc.poll() is None:
            app.stop()


# --------------------------------------------------------------------- trigger


def test_trigger_runs_a_daemon_now(root: Path, running: Any) -> None:
    """`daemonapp trigger NAME` runs a daemon due in an hour at once, once."""
    app = running({"hourly": {"run_every": "1h", "start_delay": "1h"}})
    result = app.command("trigger", "hourly")
    assert result.returncode == 0, result.stderr
    assert "hourly: runs now" in result.stdout
    assert wait_until(lambda: len(ticks(root, "hourly")) == 1, timeout=10)
    assert "control: trigger hourly from uid" in app.log()
    app.stop()
    assert len(ticks(root, "hourly")) == 1


def test_triggers_during_a_run_merge_into_one_run_after_it(root: Path, running: Any) -> None:
    """Triggers while a run is in flight make one more run, right after it."""
    app = running({"slow": {"run_every": "1h", "hold": 4}})
    assert wait_until(lambda: app.daemon("slow")["running"], timeout=10)
    first = app.command("trigger", "slow", "--json")
    second = app.command("trigger", "slow", "--json")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert json.loads(first.stdout)["state"] == "after-run"
    assert json.loads(second.stdout)["state"] == "merged"
    assert wait_until(lambda: len(ticks(root, "slow")) == 2, timeout=15)
    runs = ticks(root, "slow")
    assert runs[1][0] - runs[0][1] < 1.0  # right after the first one
    # A wrong third run would start at once and hold 4 s before its line: the status
    # shows it (as it showed the first run in flight above), the file would not yet.
    time.sleep(0.5)
    status = app.status()
    assert status is not None
    slow = next(d for d in status["daemons"] if d["name"] == "slow")
    assert (slow["running"], slow["runs"]) == (False, 2)
    assert slow["next_run_at"] - status["now"] > 1800  # the schedule's next, 1 h away


def test_trigger_of_an_unknown_daemon_is_refused(root: Path, running: Any) -> None:
    """An unknown name exits 1 and names the daemons there are."""
    app = running({"hourly": {"run_every": "1h"}})
    result = app.command("trigger", "nope")
    assert result.returncode == 1
    assert "no daemon named 'nope'" in result.stderr and "hourly" in result.stderr


def test_commands_with_no_app_running(root: Path) -> None:
    """With no app answering, a command exits 1 and says so."""
    (root / "var").mkdir(mode=0o700)
    result = daemonapp("trigger", "x", "--app", str(root / "var"), cwd=root)
    assert result.returncode == 1
    assert "no app answers" in result.stderr


def test_a_bad_for_is_a_usage_error(root: Path) -> None:
    """`pause --for soon` exits 2 before it talks to any app."""
    result = daemonapp("pause", "x", "--for", "soon", "--app", str(root), cwd=root)
    assert result.returncode == 2
    assert "--for" in result.stderr


PYTHON_APP = """\
from daemonapp import DaemonApp
from ticks import Tick

app = DaemonApp(state_dir="var", shutdown_after="60s", stop_timeout="10s")
app.add(Tick(name="fast", run_every=0.2))
raise SystemExit(app.run())
"""


def test_an_app_built_in_python_takes_commands(root: Path) -> None:
    """DaemonApp(state_dir=...).run(), the Python invocation, serves the status socket
    as `daemonapp run` does: status and pause answer (DESIGN §3, §9)."""
    write_file(root / "app.py", PYTHON_APP)
    with open(root / "run.log", "a") as out:
        proc = subprocess.Popen([str(PYTHON), "app.py"], cwd=root, env=child_env(root),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: (root / "var" / "status.sock").exists()
                          or proc.poll() is not None), (root / "run.log").read_text()
        assert oct((root / "var").stat().st_mode & 0o777) == "0o700"
        result = daemonapp("pause", "fast", "--app", str(root / "var"), cwd=root)
        assert result.returncode == 0, result.stderr
        status = daemonapp("status", str(root / "var"), "--json", cwd=root)
        assert status.returncode == 0, status.stderr
        fast = next(d for d in json.loads(status.stdout)["daemons"] if d["name"] == "fast")
        assert fast["paused"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        if not wait_until(lambda: proc.poll() is not None, timeout=20):
            stop_process(proc)
    assert proc.returncode == 0, (root / "run.log").read_text()


# ---------------------------------------------------------------- pause, resume


def test_pause_and_resume_across_a_restart(root: Path, running: Any) -> None:
    """A paused daemon starts no run, stays paused after a restart, and runs at resume."""
    app = running({"fast": {"run_every": "0.2s"}, "other": {"run_every": "0.2s"}})
    assert wait_until(lambda: len(ticks(root, "fast")) >= 2, timeout=10)
    result = app.command("pause", "fast", "--reason", "migration")
    assert result.returncode == 0, result.stderr
    entry = app.daemon("fast")
    assert (entry["paused"], entry["paused_reason"], entry["paused_until"]) == \
        (True, "migration", None)
    assert isinstance(entry["paused_since"], float)
    count = len(ticks(root, "fast"))
    others = len(ticks(root, "other"))
    assert wait_until(lambda: len(ticks(root, "other")) >= others + 5, timeout=10)
    assert len(ticks(root, "fast")) == count
    app.stop()

    app = App(root)  # a restart
    assert wait_until(lambda: len(ticks(root, "other")) >= others + 10, timeout=10)
    assert len(ticks(root, "fast")) == count
    assert app.daemon("fast")["paused"] is True
    assert "paused" in daemonapp("status", str(root / "var"), cwd=root).stdout
    result = app.command("resume", "fast")
    assert result.returncode == 0, result.stderr
    assert "fast: resumed" in result.stdout
    assert wait_until(lambda: len(ticks(root, "fast")) > count, timeout=10)
    assert app.daemon("fast")["paused"] is False
    app.stop()


def test_pause_for_ends_by_itself(root: Path, running: Any) -> None:
    """`pause --for 1s`: no run while it lasts, runs again once it is over."""
    app = running({"fast": {"run_every": "0.2s"}, "other": {"run_every": "0.2s"}})
    assert wait_until(lambda: len(ticks(root, "fast")) >= 1, timeout=10)
    result = app.command("pause", "fast", "--for", "1.5s", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    since, until = reply["paused_since"], reply["paused_until"]
    assert until == pytest.approx(since + 1.5)
    # Judged on the pause's own times (the app's clock, which the ticks use too), not on
    # a window of the test's: on a loaded machine the command's exit alone can take
    # most of the pause.
    assert wait_until(lambda: any(start >= until - 1e-3 for start, _ in ticks(root, "fast")),
                      timeout=15)
    # (a tick's start is rounded to the millisecond; the pause's times are not)
    within = [start for start, _ in ticks(root, "fast") if since + 1e-3 < start < until - 1e-3]
    assert within == []
    # The window was one in which runs were seen: the daemon beside it ran meanwhile.
    assert len([start for start, _ in ticks(root, "other") if since < start < until]) >= 2
    assert wait_until(lambda: app.daemon("fast")["paused"] is False, timeout=5)


# ---------------------------------------------------------------------- reload


RELOAD_BEFORE = {"keep": {"run_every": "0.2s"}, "change": {"run_every": "0.2s"},
                 "gone": {"run_every": "0.2s"}}
RELOAD_AFTER = {"keep": {"run_every": "0.2s"}, "change": {"run_every": "0.3s"},
                "new": {"run_every": "0.2s"}}


def check_reloaded(root: Path, app: App, before_runs: int) -> None:
    """After a reload from RELOAD_BEFORE to RELOAD_AFTER: keep counted on without a
    reset or a gap, gone stopped, new started."""
    assert wait_until(lambda: len(ticks(root, "new")) >= 2, timeout=10), app.log()
    gone = len(ticks(root, "gone"))
    status = app.status()
    assert status is not None
    names = sorted(d["name"] for d in status["daemons"])
    assert names == ["change", "keep", "new"]
    keep = app.daemon("keep")
    assert keep["runs"] > before_runs  # the same daemon: its stats go on
    assert app.daemon("change")["runs"] >= 1  # the new instance (the old one's stats are gone)
    starts = [start for start, _ in ticks(root, "keep")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(gaps) < 1.5, gaps  # 0.2 s apart, give or take a busy machine
    kept = len(ticks(root, "keep"))
    time.sleep(0.6)  # a window for a wrong run of the removed daemon
    assert len(ticks(root, "gone")) == gone
    assert len(ticks(root, "keep")) >= kept + 2  # a window in which runs were seen


def test_reload_applies_the_difference(root: Path, running: Any) -> None:
    """`daemonapp reload`: added, removed, replaced and unchanged daemons, and listeners
    that need a restart named and left alone."""
    app = running(RELOAD_BEFORE)
    assert wait_until(lambda: len(ticks(root, "keep")) >= 3, timeout=10)
    before_runs = app.daemon("keep")["runs"]
    write_file(root / "app.yaml", yaml(RELOAD_AFTER, app="  time_slice: 20ms"))
    result = app.command("reload", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert {key: reply[key] for key in ("added", "removed", "replaced", "unchanged",
                                        "needs_restart")} == \
        {"added": ["new"], "removed": ["gone"], "replaced": ["change"], "unchanged": ["keep"],
         "needs_restart": ["app.time_slice"]}
    check_reloaded(root, app, before_runs)
    assert "reload (daemonapp reload): 1 added, 1 removed, 1 replaced" in app.log()


def test_an_invalid_file_leaves_the_daemons_running(root: Path, running: Any) -> None:
    """An invalid file: exit 1, every error printed, the old daemons run on."""
    app = running({"keep": {"run_every": "0.2s"}})
    write_file(root / "app.yaml", yaml({"keep": {"run_every": "soon"},
                                        "new": {"run_every": "0.2s", "nonsense": 1}}))
    result = app.command("reload")
    assert result.returncode == 1
    assert "daemons.keep.run_every" in result.stderr
    assert "daemons.new.nonsense" in result.stderr
    count = len(ticks(root, "keep"))
    assert wait_until(lambda: len(ticks(root, "keep")) > count + 2, timeout=10)
    assert ticks(root, "new") == []
    assert "nothing changed" in app.log()


def test_sighup_reloads_too(root: Path, running: Any) -> None:
    """SIGHUP reopens the logs and reloads the file: the same difference applies."""
    app = running(RELOAD_BEFORE)
    assert wait_until(lambda: len(ticks(root, "keep")) >= 3, timeout=10)
    before_runs = app.daemon("keep")["runs"]
    write_file(root / "app.yaml", yaml(RELOAD_AFTER))
    app.proc.send_signal(signal.SIGHUP)
    check_reloaded(root, app, before_runs)
    assert "reload (SIGHUP)" in app.log()
    # An invalid file on SIGHUP changes nothing either.
    write_file(root / "app.yaml", yaml({"keep": {"run_every": "never"}}))
    app.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "nothing changed" in app.log(), timeout=10)
    assert sorted(d["name"] for d in app.status()["daemons"]) == ["change", "keep", "new"]


# ------------------------------------------------------------ the socket itself


def test_idle_garbage_and_many_clients_never_block_status(root: Path, running: Any) -> None:
    """A client holding the socket open, one sending garbage, and 200 connections at
    once: `daemonapp status` still answers, and the daemons run on."""
    app = running({"fast": {"run_every": "0.2s"}})
    path = str(root / "var" / "status.sock")
    holder = socket.socket(socket.AF_UNIX)
    holder.connect(path)
    holder.sendall(b'{"v": 1, "command": "trig')  # and never the rest
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(path)
    garbage.sendall(b"\x00\xff" * 1000 + b"\n")
    many = []
    try:
        for _ in range(200):
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)  # blocking: it waits while the backlog is full
            client.settimeout(10)
            many.append(client)
        begun = time.monotonic()
        result = daemonapp("status", "--json", str(root / "var"), cwd=root)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pid"] == app.proc.pid
        assert time.monotonic() - begun < 15
        garbage.settimeout(10)
        assert json.loads(garbage.recv(65536))["refused"] == "bad_request"
        count = len(ticks(root, "fast"))
        assert wait_until(lambda: len(ticks(root, "fast")) > count + 2, timeout=10)
        # The silent 200 got the status (after the grace) and were closed.
        for client in many[:5]:
            data = b""
            while chunk := client.recv(65536):
                data += chunk
            assert json.loads(data)["pid"] == app.proc.pid
        holder.settimeout(15)
        assert json.loads(holder.recv(65536))["refused"] == "bad_request"  # after 5 s
    finally:
        for client in [holder, garbage, *many]:
            client.close()


def _as_nobody(request: dict[str, Any], path: str) -> dict[str, Any]:
    """Send ``request`` from a child process running as nobody; its answer."""
    import pwd

    from daemonapp.control import send_request

    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, ask, write the answer, leave
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            reply = send_request(path, request, timeout=10)
            os.write(write, json.dumps(reply).encode())
        except BaseException as e:
            os.write(write, json.dumps({"child_error": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    return answer


def test_a_command_from_another_uid_is_refused(root: Path, running: Any) -> None:
    """Another uid that can reach the socket may read the status, never command."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run this as root: it switches a child to nobody")
        pytest.skip("needs root, to run a client as nobody")
    app = running({"hourly": {"run_every": "1h", "start_delay": "1h"}})
    # The socket is private (0600 in a 0700 state_dir): open the way for the test only.
    os.chmod(root, 0o711)
    os.chmod(root / "var", 0o711)
    os.chmod(root / "var" / "status.sock", 0o666)
    path = str(root / "var" / "status.sock")
    reply = _as_nobody({"command": "trigger", "daemon": "hourly"}, path)
    assert reply.get("refused") == "not_permitted", reply
    assert _as_nobody({"command": "status"}, path).get("pid") == app.proc.pid
    import pwd

    uid = pwd.getpwnam("nobody").pw_uid
    assert wait_until(lambda: f"trigger hourly refused: uid {uid}" in app.log(), timeout=5)
    time.sleep(0.5)  # a window for a wrong run
    assert ticks(root, "hourly") == []
    # Our own trigger finds no run queued or in flight (else: "merged", "after-run"),
    # and runs once: so would have the refused one.
    result = app.command("trigger", "hourly", "--json")
    assert json.loads(result.stdout)["state"] == "queued", result.stdout + result.stderr
    assert wait_until(lambda: len(ticks(root, "hourly")) == 1, timeout=10)
