"""The fd 0 rules end to end through `daemonapp run` (DESIGN §4, started by a web server).

A fastcgi item without endpoint (or with fd:0, in any spelling) serves the listening
socket inherited as fd 0, at most one item may; an explicit unix endpoint wins, with a
warning. The web server is played by this test: it binds a unix socket and passes it
as the child's stdin, as spawn-fcgi does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._processes import (
    DAEMONAPP,
    child_env,
    signal_and_wait,
    stays_up,
    stop_process,
)
from tests.listeners.helpers import request, stdout_of
from tests.listeners.raw_fcgi import fcgi_get, unix_listener, write_fd0_fcgi_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
HANDLER = "native: tests.listeners.apps:hello_native"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temp directory (unix socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dfd0-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _get(path: Path) -> bytes:
    """One FastCGI GET on the unix socket ``path``: its stdout."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(request(1, keep_conn=False, REQUEST_METHOD="GET", PATH_INFO="/"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return stdout_of(data)


def _run(workdir: Path, listeners: str) -> subprocess.Popen[str]:
    """`daemonapp run` with fd 0 a listening socket at workdir/inherited.sock."""
    config = workdir / "app.yaml"
    config.write_text("app: {state_dir: ./var, stop_timeout: 2s}\nlisteners:\n" + listeners)
    with socket.socket(socket.AF_UNIX) as inherited:
        inherited.bind(str(workdir / "inherited.sock"))
        inherited.listen(16)
        return subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                                stdin=inherited.fileno(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=workdir,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _served(proc: subprocess.Popen[str], path: Path) -> bytes:
    """Poll ``path`` until it answers (bounded); the answer."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            return _get(path)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[str], signal_it: bool = True) -> tuple[int, str]:
    """SIGTERM (unless not ``signal_it``); the exit status and the output."""
    if signal_it and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output = proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate()[0]
    return proc.returncode, output


@pytest.mark.parametrize("endpoint", ["", "endpoint: fd:0, ", "endpoint: 'fd:fileno=0', "])
def test_a_fastcgi_item_serves_the_inherited_fd0(workdir: Path, endpoint: str) -> None:
    """No endpoint, fd:0 and fd:fileno=0 all serve the socket inherited as fd 0."""
    proc = _run(workdir, f"  - {{protocol: fastcgi, {endpoint}{HANDLER}}}\n")
    try:
        answer = _served(proc, workdir / "inherited.sock")
    finally:
        status, output = _stop(proc)
    assert answer.startswith(b"Status: 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nHello, world!\n")
    assert status == 0, output
    assert "listening on inherited fd 0" in output
    assert "no fastcgi listener serves it" not in output


def test_an_explicit_unix_endpoint_wins_with_a_warning(workdir: Path) -> None:
    """fd 0 is a listening socket, the item names a unix path: that path, and a warning."""
    own = workdir / "own.sock"
    proc = _run(workdir, f"  - {{protocol: fastcgi, endpoint: 'unix:{own}', {HANDLER}}}\n")
    try:
        answer = _served(proc, own)
    finally:
        status, output = _stop(proc)
    assert answer.endswith(b"\r\n\r\nHello, world!\n")
    assert status == 0, output
    assert ("fd 0 is a listening socket, but no fastcgi listener serves it "
            "(an explicit endpoint wins)") in output
    assert "listening on inherited fd 0" not in output


def test_two_items_on_fd0_are_a_config_error(workdir: Path) -> None:
    """No endpoint plus fd:fileno=0: two items on fd 0, refused before anything starts."""
    proc = _run(workdir, f"  - {{protocol: fastcgi, {HANDLER}}}\n"
                         f"  - {{protocol: fastcgi, endpoint: 'fd:fileno=0', {HANDLER}}}\n")
    status, output = _stop(proc, signal_it=False)
    assert status == 2
    assert (f"{workdir / 'app.yaml'}:4: listeners[1].endpoint: only one listener "
            "may serve the inherited fd 0") in output


# ------------------------------------------- spawned on fd 0 as a web server does


@pytest.mark.integration
def test_fd0_fastcgi_spawned_by_web_server(tmp_path: Path) -> None:
    """With a listening socket on fd 0, `daemonapp run` (config from DAEMONAPP_CONFIG) serves
    FastCGI on it; SIGTERM drains and exits 0; the web server's socket path is kept."""
    cfg = write_fd0_fcgi_app(tmp_path)
    path = tmp_path / "ws.sock"
    listener = unix_listener(path)
    env = child_env(tmp_path, DAEMONAPP_CONFIG=str(cfg))
    with open(tmp_path / "app.log", "w") as log_file:
        proc = subprocess.Popen([str(DAEMONAPP), "run"], cwd=tmp_path, env=env,
                                stdin=listener.fileno(), stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)
    listener.close()
    try:
        records = fcgi_get(path, "/a", timeout=20)
        assert records and records[-1][0] == 3, (tmp_path / "app.log").read_text()
        assert b"".join(c for t, _, c in records if t == 6).endswith(b"hello")
        started = time.monotonic()
        assert signal_and_wait(proc, signal.SIGTERM, timeout=10)
        assert proc.returncode == 0
        assert time.monotonic() - started < 5
        assert path.exists()
    finally:
        stop_process(proc)


@pytest.mark.integration
def test_fd0_spawned_processes_never_take_over_siblings(tmp_path: Path) -> None:
    """Two processes spawned on the same inherited socket both keep running."""
    cfg = write_fd0_fcgi_app(tmp_path)
    path = tmp_path / "ws.sock"
    listener = unix_listener(path)
    env = child_env(tmp_path)
    procs = []
    try:
        for n in range(2):
            with open(tmp_path / f"app{n}.log", "w") as log_file:
                procs.append(subprocess.Popen(
                    [str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path, env=env,
                    stdin=listener.fileno(), stdout=log_file, stderr=subprocess.STDOUT,
                    text=True))
            # Let the first settle before its sibling starts.
            records = fcgi_get(path, "/a", timeout=20)
            assert records and records[-1][0] == 3
        stays_up(procs, 1.0)  # a wrong takeover would end the first within this second
        assert [p.poll() for p in procs] == [None, None]
    finally:
        listener.close()
        for p in procs:
            stop_process(p)
