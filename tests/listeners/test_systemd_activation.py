"""systemd socket activation through `daemonapp run` (DESIGN §4: `systemd:` endpoints)."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.listeners.test_integration import ROOT, TIMEOUT


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def _activate(tmp_path: Path, config: Path, listening: socket.socket) -> subprocess.Popen[str]:
    """`daemonapp run config` handed ``listening`` as systemd does: fd 3, LISTEN_FDS,
    LISTEN_FDNAMES, and LISTEN_PID the pid of the process that reads it (execv keeps
    the pid)."""
    # systemd 227+ sets LISTEN_FDNAMES with LISTEN_FDS; Twisted wants both.
    env = dict(os.environ, PYTHONPATH=str(ROOT), LISTEN_FDS="1", LISTEN_FDNAMES="web")
    fd = listening.fileno()
    exec_as_systemd = (
        "import os, sys; "
        f"os.dup2({fd}, 3); os.close({fd}); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        f"os.execv(sys.executable, [sys.executable, '-m', 'daemonapp.cli', 'run', {str(config)!r}])"
    )
    return subprocess.Popen([sys.executable, "-c", exec_as_systemd], cwd=tmp_path, env=env,
                            pass_fds=(fd,), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _first_answer(proc: subprocess.Popen[str], path: str) -> tuple[int, bytes]:
    """The first answer to GET / on ``path`` once ``proc`` serves it (polled, bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no answer on the activated socket"
        try:
            conn = _UnixHTTPConnection(path)
            conn.request("GET", "/")
            response = conn.getresponse()
            answer = response.status, response.read()
            conn.close()
            return answer
        except OSError:
            select.select([], [], [], 0.05)


@pytest.mark.integration
def test_systemd_socket_activation(tmp_path: Path) -> None:
    """A socket passed as systemd does (fd 3, LISTEN_FDS, LISTEN_PID) is served."""
    path = str(tmp_path / "activated.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(16)
    config = tmp_path / "app.yaml"
    config.write_text(
        "app: {state_dir: ./var}\n"
        "listeners:\n"
        "  - {protocol: http, endpoint: 'systemd:domain=UNIX:index=0',"
        " native: tests.listeners.apps:hello_native}\n")
    proc = _activate(tmp_path, config, listening)
    listening.close()  # the child holds it now
    try:
        status, body = _first_answer(proc, path)
        assert status == 200
        assert body
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


@pytest.mark.integration
def test_the_activated_socket_outlives_a_restart(tmp_path: Path) -> None:
    """After a SIGTERM the socket systemd handed over is still at its path and still
    listening (neither unlinked nor shut down): a connection made between two runs
    waits in its queue and the next run, handed the same socket, answers it."""
    path = str(tmp_path / "activated.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(16)
    config = tmp_path / "app.yaml"
    config.write_text(
        "app: {state_dir: ./var}\n"
        "listeners:\n"
        "  - {protocol: http, endpoint: 'systemd:domain=UNIX:index=0',"
        " native: tests.listeners.apps:hello_native}\n")
    waiting = None
    try:  # the test keeps the socket open, as systemd does between service restarts
        first = _activate(tmp_path, config, listening)
        try:
            assert _first_answer(first, path)[0] == 200
            first.send_signal(signal.SIGTERM)
            output, _ = first.communicate(timeout=TIMEOUT)
            assert first.returncode == 0, output
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(timeout=TIMEOUT)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        waiting = _UnixHTTPConnection(path)
        # queued (a socket shut down would refuse it): nobody accepts until the next run
        waiting.request("GET", "/")
        second = _activate(tmp_path, config, listening)
        try:
            response = waiting.getresponse()
            assert (response.status, response.read()) == (200, b"Hello, world!\n")
            second.send_signal(signal.SIGTERM)
            output, _ = second.communicate(timeout=TIMEOUT)
            assert second.returncode == 0, output
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(timeout=TIMEOUT)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        if waiting is not None:
            waiting.close()
        listening.close()
