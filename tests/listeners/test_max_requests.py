"""max_requests through nginx and the real `daemonapp run` (DESIGN §4, issue 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._processes import CGI_WSGI, free_port, popen_run, running, wait_until, write_file
from tests.listeners.test_integration import ROOT, TIMEOUT, Nginx


@pytest.mark.integration
@pytest.mark.parametrize("app", ["native: tests.listeners.apps:hello_native",
                                 "wsgi: tests.listeners.apps:hello_wsgi"])
def test_max_requests_50_all_answered_then_exit_0(tmp_path: Path, app: str) -> None:
    """max_requests 50: all 50 requests through nginx get 200, then the app exits 0."""
    sock = tmp_path / "run" / "app.sock"
    config = tmp_path / "app.yaml"
    config.write_text(
        "app: {state_dir: ./var, stop_timeout: 10s}\n"
        "listeners:\n"
        f"  - {{protocol: fastcgi, endpoint: 'unix:{sock}', {app}, max_requests: 50}}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    nginx = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while not sock.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the socket never appeared"
            time.sleep(0.05)
        nginx = Nginx(tmp_path, sock)
        statuses = [nginx.request("GET", f"/n/{i}")[0] for i in range(50)]
        assert statuses == [200] * 50
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, output
        assert "max_requests" in output
    finally:
        if nginx is not None:
            nginx.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


@pytest.mark.integration
def test_max_requests_graceful_stop_exit_0(tmp_path: Path) -> None:
    """max_requests reached: graceful stop, exit status 0."""
    import urllib.request

    port = free_port()
    write_file(tmp_path / "cgiwsgi.py", CGI_WSGI)
    cfg = write_file(tmp_path / "d.yaml", "app:\n  state_dir: ./var\nlisteners:\n"
                     f"  - protocol: http\n    endpoint: tcp:{port}:interface=127.0.0.1\n"
                     "    wsgi: cgiwsgi:application\n    max_requests: 2\n")
    with running(popen_run(tmp_path, cfg)) as proc:
        def get() -> bytes:
            url = f"http://127.0.0.1:{port}/"
            with urllib.request.urlopen(url, timeout=5) as r:
                body: bytes = r.read()
                return body

        def up() -> bool:
            try:
                get()
            except OSError:
                return proc.poll() is not None
            return True

        assert wait_until(up)
        try:
            get()
        except OSError:
            pass
        assert wait_until(lambda: proc.poll() is not None, timeout=15)
        assert proc.returncode == 0
