"""systemd notifications of real `daemonapp run` (and twistd) processes.

Each test binds the datagram socket NOTIFY_SOCKET names, as systemd's own tests do,
starts the app with it (and WATCHDOG_USEC / WATCHDOG_PID when the test is about the
watchdog) and reads what arrives, timestamped on CLOCK_MONOTONIC (the same clock in
every process). Every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._processes import finish

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WAIT = 20.0

BLOCKER = '''
import json
import os
import time

from daemonapp import Daemon


class Blocker(Daemon):
    """Blocks the reactor (time.sleep in do_work) once for each "block" file."""

    run_every = 0.1

    def __init__(self, *, directory, seconds=3.0, **kw):
        super().__init__(**kw)
        self.directory = directory
        self.seconds = seconds

    def get_work(self):
        flag = os.path.join(self.directory, "block")
        if not os.path.exists(flag):
            return None
        os.remove(flag)
        return "block"

    def do_work(self, job):
        start = time.monotonic()
        time.sleep(self.seconds)
        end = time.monotonic()
        path = os.path.join(self.directory, "blocked.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"start": start, "end": end}, f)
        os.rename(path + ".tmp", path)
'''


class Systemd:
    """The test's end of NOTIFY_SOCKET: (monotonic time, {KEY: value}) per message."""

    def __init__(self, directory: Path, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"daemonapp-run-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + name)
            self.address = "@" + name
        else:
            path = str(directory / "notify")
            self.socket.bind(path)
            self.address = path
        self.received: list[tuple[float, dict[str, str]]] = []

    def read(self, timeout: float) -> dict[str, str] | None:
        """The next message within ``timeout`` seconds (None: none came)."""
        self.socket.settimeout(max(0.001, timeout))
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            return None
        at = time.monotonic()
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append((at, message))
        return message

    def wait_for(self, key: str, timeout: float = WAIT) -> dict[str, str]:
        """Read until a message holds ``key`` (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.read(left)
            if message is not None and key in message:
                return message
        raise AssertionError(f"no {key} within {timeout} s; got {self.received}")

    def collect(self, seconds: float) -> None:
        """Read whatever comes for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.read(left)

    def times_of(self, key: str) -> list[float]:
        return [at for at, message in self.received if key in message]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to ~107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="dsdr"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def write_config(directory: Path, text: str) -> str:
    (directory / "blocker.py").write_text(BLOCKER)
    path = directory / "daemons.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def start(directory: Path, systemd: Systemd, *args: str,
          **env: str) -> subprocess.Popen[bytes]:
    environ = dict(os.environ)
    for key in ("DAEMONAPP_CONFIG", "GATEWAY_INTERFACE", "WATCHDOG_USEC", "WATCHDOG_PID"):
        environ.pop(key, None)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(directory)])
    environ["NOTIFY_SOCKET"] = systemd.address
    environ.update(env)
    return subprocess.Popen([*args], cwd=directory, env=environ, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(directory: Path, systemd: Systemd, path: str, **env: str) -> subprocess.Popen[bytes]:
    return start(directory, systemd, str(BIN / "daemonapp"), "run", path, **env)


def stop(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return finish(process)


@pytest.fixture
def systemd(short_tmp: Path) -> Iterator[Systemd]:
    bound = Systemd(short_tmp)
    yield bound
    bound.close()


LISTENING_YAML = """
    app: {stop_timeout: 10s}
    listeners:
      - {protocol: http, endpoint: "unix:./app.sock", wsgi: "tests.test_config:app"}
    daemons:
      blocker: {type: "blocker:Blocker", directory: "DIR"}
"""


def http_get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        client.sendall(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


@pytest.mark.integration
def test_ready_once_the_listeners_accept(short_tmp: Path, systemd: Systemd) -> None:
    """READY=1 arrives once the listener accepts: a request sent then is answered."""
    path = write_config(short_tmp, LISTENING_YAML.replace("DIR", str(short_tmp)))
    process = run(short_tmp, systemd, path)
    try:
        ready = systemd.wait_for("READY")
        answer = http_get(short_tmp / "app.sock")
    finally:
        status, out = stop(process)
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("1 daemon, ")
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer
    assert b"hello from config" in answer
    assert status == 0, out


@pytest.mark.integration
def test_stopping_at_sigterm(short_tmp: Path) -> None:
    """SIGTERM: STOPPING=1 with EXTEND_TIMEOUT_USEC, then a clean exit (abstract socket)."""
    systemd = Systemd(short_tmp, abstract=True)
    try:
        path = write_config(short_tmp, LISTENING_YAML.replace("DIR", str(short_tmp)))
        process = run(short_tmp, systemd, path)
        try:
            systemd.wait_for("READY")
            process.send_signal(signal.SIGTERM)
            stopping = systemd.wait_for("STOPPING")
        finally:
            status, out = finish(process)  # one SIGTERM only: a second stops at once
    finally:
        systemd.close()
    assert stopping["STOPPING"] == "1"
    assert stopping["EXTEND_TIMEOUT_USEC"] == "15000000"
    assert stopping["STATUS"].startswith("stopping (signal SIGTERM): ")
    assert status == 0, out


@pytest.mark.integration
def test_watchdog_pings_stop_while_a_daemon_blocks_the_reactor(short_tmp: Path,
                                                               systemd: Systemd) -> None:
    """WATCHDOG_USEC=2 s: a ping about every second; a daemon that blocks the reactor
    for 3 s leaves a gap longer than WATCHDOG_USEC (systemd would restart the app), and
    the first tick after the block withholds its ping."""
    path = write_config(short_tmp, LISTENING_YAML.replace("DIR", str(short_tmp)))
    process = run(short_tmp, systemd, path, WATCHDOG_USEC="2000000")
    try:
        systemd.wait_for("READY")
        systemd.collect(3.5)
        healthy = systemd.times_of("WATCHDOG")
        (short_tmp / "block").write_text("")
        deadline = time.monotonic() + WAIT
        while not (short_tmp / "blocked.json").exists():
            assert time.monotonic() < deadline, "the daemon never blocked"
            systemd.collect(0.1)
        systemd.collect(2.5)
    finally:
        status, out = stop(process)
    blocked = json.loads((short_tmp / "blocked.json").read_text())
    pings = systemd.times_of("WATCHDOG")
    gaps = [b - a for a, b in itertools.pairwise(healthy)]
    assert len(gaps) >= 2, pings
    assert all(0.5 < gap < 1.8 for gap in gaps), gaps
    before = [at for at in pings if at <= blocked["start"]]
    after = [at for at in pings if at >= blocked["end"]]
    assert not [at for at in pings if blocked["start"] < at < blocked["end"]]
    assert after, pings
    assert after[0] - before[-1] > 2.0  # longer than WATCHDOG_USEC: systemd restarts
    assert after[0] - blocked["end"] > 0.5  # withheld, not sent as the loop came back
    assert "watchdog ping withheld" in out
    assert status == 0, out


@pytest.mark.integration
def test_no_pings_when_watchdog_pid_is_another_process(short_tmp: Path,
                                                       systemd: Systemd) -> None:
    """WATCHDOG_PID naming another process: READY=1 and STATUS=, never WATCHDOG=1."""
    path = write_config(short_tmp, LISTENING_YAML.replace("DIR", str(short_tmp)))
    process = run(short_tmp, systemd, path, WATCHDOG_USEC="400000", WATCHDOG_PID="1")
    try:
        systemd.wait_for("READY")
        systemd.collect(2.0)  # ten pings' worth, had the watchdog been ours
    finally:
        status, out = stop(process)
    assert systemd.times_of("READY")
    assert not systemd.times_of("WATCHDOG")
    assert status == 0, out


HELLO = '      hello: {type: "daemonapp.examples.hello:Hello"}\n'


@pytest.mark.integration
def test_sighup_sends_reloading_then_ready(short_tmp: Path, systemd: Systemd) -> None:
    """SIGHUP (Type=notify-reload's reload signal) reloads the file: RELOADING=1 with
    MONOTONIC_USEC of the moment it began, then READY=1 once the new daemon runs."""
    text = LISTENING_YAML.replace("DIR", str(short_tmp))
    path = write_config(short_tmp, text)
    process = run(short_tmp, systemd, path)
    try:
        systemd.wait_for("READY")
        write_config(short_tmp, text + HELLO)
        sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        process.send_signal(signal.SIGHUP)
        reloading = systemd.wait_for("RELOADING")
        received = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        ready = systemd.wait_for("READY")
    finally:
        status, out = stop(process)
    assert reloading["RELOADING"] == "1"
    assert sent <= int(reloading["MONOTONIC_USEC"]) <= received
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("2 daemons, ")
    assert status == 0, out


def reload_command(directory: Path, path: str) -> subprocess.CompletedProcess[bytes]:
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(directory)]))
    environ.pop("NOTIFY_SOCKET", None)
    return subprocess.run([str(BIN / "daemonapp"), "reload", "--app", path], env=environ,
                          capture_output=True, timeout=WAIT, check=False)


@pytest.mark.integration
def test_daemonapp_reload_is_framed_even_when_refused(short_tmp: Path,
                                                      systemd: Systemd) -> None:
    """`daemonapp reload` (ExecReload= of a Type=notify unit): RELOADING=1 and READY=1
    around it, for a valid file (exit 0) and an invalid one (exit 1, nothing changed),
    so systemd never waits for a READY=1 that does not come."""
    text = LISTENING_YAML.replace("DIR", str(short_tmp))
    path = write_config(short_tmp, text)
    process = run(short_tmp, systemd, path)
    try:
        systemd.wait_for("READY")
        write_config(short_tmp, text + HELLO)
        valid = reload_command(short_tmp, path)
        systemd.wait_for("RELOADING")
        after_valid = systemd.wait_for("READY")
        write_config(short_tmp, text + "      broken: {type: nosuch}\n")
        invalid = reload_command(short_tmp, path)
        systemd.wait_for("RELOADING")
        after_invalid = systemd.wait_for("READY")
    finally:
        status, out = stop(process)
    assert valid.returncode == 0, valid.stderr
    assert after_valid["STATUS"].startswith("2 daemons, ")
    assert invalid.returncode == 1, invalid.stdout + invalid.stderr
    assert after_invalid["STATUS"].startswith("2 daemons, ")
    assert status == 0, out


@pytest.mark.integration
def test_twistd_sends_ready_and_stopping(short_tmp: Path, systemd: Systemd) -> None:
    """`twistd -n daemonapp` goes through the same assembly: READY=1, then STOPPING=1."""
    path = write_config(short_tmp, LISTENING_YAML.replace("DIR", str(short_tmp)))
    process = start(short_tmp, systemd, str(BIN / "twistd"), "--nodaemon", "--pidfile=",
                    "daemonapp", "-c", path)
    try:
        systemd.wait_for("READY")
        assert http_get(short_tmp / "app.sock").endswith(b"hello from config\n")
        process.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING")
    finally:
        status, out = finish(process)
    assert status == 0, out
