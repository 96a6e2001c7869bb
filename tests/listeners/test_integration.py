"""Integration: the listeners behind real nginx and real cgi-fcgi.

The listener runs in a subprocess (tests/listeners/serve.py) on the real reactor;
nginx is started on a free loopback port with a config written to tmp_path.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests._env import unavailable
from tests.listeners.apps import BIG
from tests.listeners.nginx import config_head, free_port, start_nginx

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "tests" / "listeners" / "serve.py"
TIMEOUT = 15.0


def _need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (apt-get install {package})"
        unavailable(message)
    return path


class Served:
    """A listener subprocess."""

    def __init__(self, options: dict[str, Any], cwd: Path, stdin: Any = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), LISTENER_TEST_MARK=str(cwd / "mark"))
        self.proc = subprocess.Popen([sys.executable, str(SERVE), json.dumps(options)],
                                     cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.ready = json.loads(self._line("READY "))

    def _line(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(prefix):
                    return line[len(prefix):]
                if not line:
                    break
        stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
        raise AssertionError(f"listener did not print {prefix!r}: {stderr}")

    def stop(self) -> dict[str, Any]:
        """SIGTERM: drain; the final snapshot."""
        if self.proc.poll() is not None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        snapshot: dict[str, Any] = json.loads(self._line("DONE "))
        assert self.proc.wait(timeout=TIMEOUT) == 0
        return snapshot

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


NGINX_SERVERS = """\
  upstream app {{ server unix:{sock}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      include /etc/nginx/fastcgi_params;
      fastcgi_keep_conn on;
      fastcgi_pass app;
    }}
  }}
  server {{
    listen 127.0.0.1:{scgi_port};
    location / {{
      include /etc/nginx/scgi_params;
      scgi_pass unix:{sock};
    }}
  }}
}}
"""


class Nginx:
    """nginx in the foreground, in front of ``sock``."""

    def __init__(self, tmp: Path, sock: Path) -> None:
        self.port = free_port()
        self.scgi_port = free_port()
        self.error_log = tmp / "nginx-error.log"
        conf = config_head(tmp, connections=512, max_body="20m") + NGINX_SERVERS.format(
            sock=sock, port=self.port, scgi_port=self.scgi_port)
        self.proc = start_nginx(tmp, conf, self.port, timeout=TIMEOUT, stderr=subprocess.PIPE)

    def request(self, method: str, path: str, body: bytes | None = None,
                port: int | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Any]:
    """A function starting a listener with options and nginx in front of it."""
    started: list[Any] = []

    def start(**options: Any) -> tuple[Served, Nginx]:
        _need("nginx", "nginx")
        sock = tmp_path / "run" / "app.sock"
        options.setdefault("protocol", "fastcgi")
        options.setdefault("endpoint", f"unix:{sock}")
        served = Served(options, tmp_path)
        started.append(served)
        nginx = Nginx(tmp_path, sock)
        started.append(nginx)
        return served, nginx

    yield start
    for item in reversed(started):
        if isinstance(item, Nginx):
            item.stop()
        else:
            item.kill()


@pytest.mark.parametrize("app", ["native=hello_native", "wsgi=hello_wsgi"])
def test_get(stack: Any, app: str) -> None:
    """GET through nginx is answered by the listener."""
    kind, name = app.split("=")
    served, nginx = stack(**{kind: f"tests.listeners.apps:{name}"})
    status, _headers, body = nginx.request("GET", "/hello?x=1")
    assert (status, body) == (200, b"Hello, world!\n")
    assert served.stop()["answered"] == 1


@pytest.mark.parametrize("app", ["native=echo_native", "wsgi=echo_wsgi"])
def test_post_1mib_echo(stack: Any, app: str) -> None:
    """A 1 MiB POST body comes back whole."""
    kind, name = app.split("=")
    _, nginx = stack(**{kind: f"tests.listeners.apps:{name}"})
    status, _, body = nginx.request("POST", "/echo", body=BIG)
    assert status == 200
    assert body == BIG


@pytest.mark.parametrize("app", ["native=big_native", "wsgi=big_wsgi"])
def test_response_1mib(stack: Any, app: str) -> None:
    """A 1 MiB response arrives whole."""
    kind, name = app.split("=")
    _, nginx = stack(**{kind: f"tests.listeners.apps:{name}"})
    status, _, body = nginx.request("GET", "/big")
    assert status == 200
    assert body == BIG


def test_keep_alive(stack: Any) -> None:
    """With fastcgi_keep_conn, 30 sequential requests use one upstream connection."""
    served, nginx = stack(native="tests.listeners.apps:hello_native")
    for _ in range(30):
        assert nginx.request("GET", "/")[0] == 200
    snapshot = served.stop()
    assert snapshot["answered"] == 30
    assert snapshot["connections_total"] == 1


@pytest.mark.parametrize("app", ["native=slower_native", "wsgi=slower_wsgi"])
def test_overload_gets_503_never_502(stack: Any, app: str) -> None:
    """20 slow requests against max_concurrent 2 + backlog 2: extras get 503, none 502."""
    kind, name = app.split("=")
    served, nginx = stack(**{kind: f"tests.listeners.apps:{name}"}, max_concurrent=2,
                          backlog=2, queue_timeout="5s", threads=2)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: nginx.request("GET", "/slow"), range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * 4 + [503] * 16
    for status, headers, _ in results:
        if status == 503:
            assert headers["Retry-After"] == "5"
    assert served.stop()["rejected_503"] == 16


def test_scgi_through_nginx(stack: Any) -> None:
    """An SCGI listener behind nginx's scgi_pass echoes a POST."""
    _, nginx = stack(protocol="scgi", native="tests.listeners.apps:echo_native")
    status, _headers, body = nginx.request("POST", "/s", body=b"scgi body",
                                          port=nginx.scgi_port)
    assert (status, body) == (200, b"scgi body")


def test_http_listener(tmp_path: Path) -> None:
    """The HTTP listener answers a WSGI app over tcp."""
    port = free_port()
    served = Served({"protocol": "http", "endpoint": f"tcp:{port}:interface=127.0.0.1",
                     "wsgi": "tests.listeners.apps:echo_wsgi"}, tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("POST", "/h", body=b"over http")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"over http")
        conn.close()
    finally:
        served.kill()


def test_cgi_fcgi(tmp_path: Path) -> None:
    """cgi-fcgi (libfcgi) gets a CGI response from the listener."""
    binary = _need("cgi-fcgi", "libfcgi-bin")
    sock = tmp_path / "app.sock"
    served = Served({"protocol": "fastcgi", "endpoint": f"unix:{sock}",
                     "wsgi": "tests.listeners.apps:environ_wsgi"}, tmp_path)
    try:
        env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/cgi",
               "QUERY_STRING": "a=b", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH": os.environ.get("PATH", "")}
        out = subprocess.run([binary, "-bind", "-connect", str(sock)], env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                             check=True).stdout
        assert out.startswith(b"Status: 200 OK\r\n")
        assert b"PATH_INFO=/cgi\nQUERY_STRING=a=b\n" in out
    finally:
        served.kill()


def test_cgi_fcgi_post(tmp_path: Path) -> None:
    """cgi-fcgi forwards a POST body on stdin; the listener echoes it."""
    binary = _need("cgi-fcgi", "libfcgi-bin")
    sock = tmp_path / "app.sock"
    served = Served({"protocol": "fastcgi", "endpoint": f"unix:{sock}",
                     "native": "tests.listeners.apps:echo_native"}, tmp_path)
    try:
        body = b"x" * 100000
        env = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
               "SCRIPT_NAME": "/e", "PATH": os.environ.get("PATH", "")}
        out = subprocess.run([binary, "-bind", "-connect", str(sock)], env=env, input=body,
                             capture_output=True, timeout=TIMEOUT, check=True).stdout
        assert out.endswith(b"\r\n\r\n" + body)
    finally:
        served.kill()


def test_zero_downtime_takeover(stack: Any, tmp_path: Path) -> None:
    """A second process takes the socket over and the first drains: no request fails."""
    import threading

    old, nginx = stack(native="tests.listeners.apps:hello_native")
    statuses: list[int] = []
    stop = threading.Event()

    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                statuses.append(nginx.request("GET", "/")[0])
            except Exception as err:
                errors.append(repr(err))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        while len(statuses) < 50:
            select.select([], [], [], 0.01)
        new = Served({"protocol": "fastcgi", "endpoint": f"unix:{tmp_path / 'run/app.sock'}",
                      "native": "tests.listeners.apps:hello_native"}, tmp_path)
        try:
            before = len(statuses)
            old_snapshot = old.stop()
            while len(statuses) < before + 100:
                select.select([], [], [], 0.01)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=TIMEOUT)
        assert (tmp_path / "run/app.sock").exists()
        new_snapshot = new.stop()
    finally:
        stop.set()
    assert errors == []
    assert set(statuses) == {200}
    assert old_snapshot["answered"] > 0
    assert new_snapshot["answered"] > 0
    assert old_snapshot["answered"] + new_snapshot["answered"] == len(statuses)


def test_drain_answers_requests_in_flight(stack: Any, tmp_path: Path) -> None:
    """SIGTERM while slow requests run: each is still answered 200."""
    served, nginx = stack(native="tests.listeners.apps:marked_slow_native")
    mark = tmp_path / "mark"
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(nginx.request, "GET", "/slow") for _ in range(4)]
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if mark.exists() and mark.read_text().count("called") == 4:
                break
            select.select([], [], [], 0.02)
        snapshot = served.stop()
        results = [future.result() for future in futures]
    assert [status for status, _, _ in results] == [200] * 4
    assert snapshot["answered"] == 4


def test_inherited_fd0(tmp_path: Path) -> None:
    """Started the way spawn-fcgi does (a blocking listening socket on fd 0), it serves."""
    binary = _need("cgi-fcgi", "libfcgi-bin")
    sock = tmp_path / "web.sock"
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(sock))
    listening.listen(16)
    served = Served({"protocol": "fastcgi", "native": "tests.listeners.apps:hello_native"},
                    tmp_path, stdin=listening.fileno())
    listening.close()
    try:
        assert served.ready["endpoint"] == "fd:0"
        env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/", "PATH": os.environ.get("PATH", "")}
        out = subprocess.run([binary, "-bind", "-connect", str(sock)], env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                             check=True).stdout
        assert out.endswith(b"\r\n\r\nHello, world!\n")
        served.stop()
        assert sock.exists()  # the web server's path is never unlinked
    finally:
        served.kill()
