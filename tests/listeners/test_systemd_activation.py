"""systemd socket activation through `daemonapp run` (DESIGN §4: `systemd:` endpoints)."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
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
    # systemd 227+ sets LISTEN_FDNAMES with LISTEN_FDS; Twisted wants both.
    env = dict(os.environ, PYTHONPATH=str(ROOT), LISTEN_FDS="1", LISTEN_FDNAMES="web")
    # As systemd does: the socket is fd 3 (SD_LISTEN_FDS_START) and LISTEN_PID is the
    # pid of the process that reads it (execv keeps the pid).
    fd = listening.fileno()
    exec_as_systemd = (
        "import os, sys; "
        f"os.dup2({fd}, 3); os.close({fd}); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        f"os.execv(sys.executable, [sys.executable, '-m', 'daemonapp.cli', 'run', {str(config)!r}])"
    )
    proc = subprocess.Popen([sys.executable, "-c", exec_as_systemd], cwd=tmp_path, env=env,
                            pass_fds=(fd,), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    listening.close()  # the child holds it now
    try:
        deadline = time.monotonic() + TIMEOUT
        status = body = None
        while status is None:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no answer on the activated socket"
            try:
                conn = _UnixHTTPConnection(path)
                conn.request("GET", "/")
                response = conn.getresponse()
                status, body = response.status, response.read()
                conn.close()
            except OSError:
                select.select([], [], [], 0.05)
        assert status == 200
        assert body
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
