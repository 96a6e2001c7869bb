"""Helpers for the tests where a web server starts `daemonapp run` (DESIGN §4).

A test gets a `Site`: a short directory under /tmp, a marker put in the environment of
every process it starts (so that a scan of /proc finds whatever is left behind), and a
`finally` that kills them all. lighttpd runs under a small *reaper*: a process that is
the child subreaper of everything below it, so when lighttpd exits and its FastCGI
children are orphaned, the reaper collects their exit status and writes it down.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._env import unavailable

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.webservers.spawned_app"
#: An app with only the fastcgi listener on fd 0.
PLAIN_CONFIG = ("app: {state_dir: ./var}\n"
                "listeners:\n"
                f'  - {{protocol: fastcgi, wsgi: "{APP}:application"}}\n')
#: The same with the Ticker daemon (it runs between hits).
TICKER_CONFIG = PLAIN_CONFIG + f'daemons:\n  ticker: {{type: "{APP}:Ticker"}}\n'
MARK = "DAEMONAPP_WS_TEST"
TIMEOUT = 20.0
MIB = 1024 * 1024

#: The reaper: child subreaper of lighttpd and of whatever lighttpd spawns. It writes one
#: JSON line per process it reaps ({"pid": N, "status": exit status or -signal}) to
#: argv[1], then exits once no descendant is left.
REAPER = r"""
import ctypes, json, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
out = open(sys.argv[1], "a", buffering=1)
server = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL)
out.write(json.dumps({"server": server.pid}) + "\n")
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    out.write(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}) + "\n")
"""


def tool(name: str) -> str:
    """The program's path; missing, the test fails under CI=true and skips elsewhere."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        unavailable(f"{name} is not installed (.ci/run installs it)")
    return path


def daemonapp_argv() -> list[str]:
    """The `daemonapp` command of the interpreter running the tests."""
    script = Path(sys.executable).parent / "daemonapp"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "daemonapp.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it is true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def accepting(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def unix_listening(path: Path) -> bool:
    """Whether a socket listens on ``path`` (read from /proc/net/unix: no connection made).

    A probe connection would count as a client of the app under test.
    """
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
                return True
    return False


def tcp_listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (from /proc/net/tcp: no connection made)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                return True
    return False


def marked_pids(marker: str) -> list[int]:
    """The live processes whose environment holds ``MARK=marker`` (zombies excluded)."""
    needle = f"{MARK}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != b"Z":
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@dataclass
class Answer:
    """An HTTP answer."""

    status: int
    body: bytes


def fetch(port: int, path: str, body: bytes | None = None) -> Answer:
    """One request to 127.0.0.1:port (POST when ``body`` is given)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET" if body is None else "POST", path, body=body,
                     headers={"Content-Type": "application/octet-stream"} if body else {})
        response = conn.getresponse()
        return Answer(response.status, response.read())
    finally:
        conn.close()


def echo_expected(body: bytes) -> bytes:
    """What ``POST /echo`` of spawned_app answers for ``body``."""
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()


def hello_pid(answer: Answer) -> int:
    """The pid in a ``GET /`` answer of spawned_app."""
    assert answer.status == 200, answer
    text = answer.body.decode()
    assert text.startswith("hello pid="), text
    return int(text.removeprefix("hello pid=").strip())


@dataclass
class Site:
    """A test's directory, marker and processes (all killed by ``cleanup``)."""

    root: Path
    marker: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The test's environment plus the marker and ``extra``."""
        return {**os.environ, MARK: self.marker, **extra}

    def write_config(self, text: str, name: str = "app.yaml") -> Path:
        """Write an app configuration into the site; its path."""
        path = self.root / name
        path.write_text(text)
        return path

    def start(self, argv: list[str], *, log: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session, stdout and stderr into ``log``."""
        with open(self.root / log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def read(self, name: str) -> str:
        """The text of a file of the site ('' when missing)."""
        try:
            return (self.root / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        """Kill every process of the site (process groups first, then marked stragglers)."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in marked_pids(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def site(prefix: str) -> Iterator[Site]:
    """A Site in a fresh short directory under /tmp, cleaned up at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    current = Site(root=root, marker=root.name)
    try:
        yield current
    finally:
        current.cleanup()
        shutil.rmtree(root, ignore_errors=True)


class Lighttpd:
    """lighttpd -D under the reaper, on a free loopback port."""

    def __init__(self, where: Site, conf_body: str, *, modules: tuple[str, ...]) -> None:
        self.site = where
        self.binary = tool("lighttpd")
        self.port = free_port()
        htdocs = where.root / "htdocs"
        htdocs.mkdir(exist_ok=True)
        self.conf = where.root / "lighttpd.conf"
        self.conf.write_text(
            f'server.document-root = "{htdocs}"\n'
            f"server.port = {self.port}\n"
            'server.bind = "127.0.0.1"\n'
            f'server.errorlog = "{where.root / "error.log"}"\n'
            f"server.modules = ({', '.join(json.dumps(m) for m in modules)})\n"
            + conf_body)
        self.exits = where.root / "exits.jsonl"
        self.reaper = where.start(
            [sys.executable, "-c", REAPER, str(self.exits), self.binary, "-D", "-f",
             str(self.conf)],
            log="server.log", env=where.env(), cwd=str(where.root))
        wait_until(lambda: self.server_pid is not None, "the reaper to start lighttpd")
        wait_until(self._up, "lighttpd to listen")

    def _up(self) -> bool:
        if self.reaper.poll() is not None:
            pytest.fail(f"lighttpd ended at once:\n{self.site.read('server.log')}"
                        f"{self.site.read('error.log')}")
        return accepting(self.port)

    def _records(self) -> list[dict[str, int]]:
        try:
            text = self.exits.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    @property
    def server_pid(self) -> int | None:
        """lighttpd's pid."""
        return next((r["server"] for r in self._records() if "server" in r), None)

    def exit_status(self, pid: int) -> int | None:
        """The exit status of a reaped process (None while it has not been reaped)."""
        return next((r["status"] for r in self._records() if r.get("pid") == pid), None)

    def stop(self, timeout: float = 10.0) -> float:
        """SIGTERM to lighttpd (its normal stop); wait until every descendant is gone.

        Returns the seconds it took for the last one to go.
        """
        pid = self.server_pid
        assert pid is not None
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        try:
            self.reaper.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"processes still running {timeout:g} s after lighttpd's SIGTERM: "
                        f"{marked_pids(self.site.marker)}\n{self.site.read('server.log')}")
        return time.monotonic() - started

    def get(self, path: str) -> Answer:
        """GET ``path`` through lighttpd."""
        return fetch(self.port, path)

    def post(self, path: str, body: bytes) -> Answer:
        """POST ``body`` to ``path`` through lighttpd."""
        return fetch(self.port, path, body)
