"""Conformance: every listener by every body shape, with wsgiref.validate around the app.

Each listener runs in-process on its own real reactor (tests/listeners/live.py) and is
driven through real sockets by clients that speak as nginx (FastCGI, SCGI) and curl
(HTTP) do; the last tests put real nginx in front. The app reads its body as the
query string says (``read(CONTENT_LENGTH)``, ``read(-1)``, ``readline()``, iteration)
and answers its size, its SHA-256 and ``wsgi.input_terminated``.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.listeners.live import (
    LiveListener,
    cgi_answer,
    exchange,
    fastcgi_answer,
    fastcgi_request,
    http_request,
    nginx_params,
    scgi_request,
)
from tests.listeners.nginx import config_head, free_port, start_nginx

PROTOCOLS = ["fastcgi", "scgi", "http"]
MODES = ["readn", "readall", "readline", "iter"]
FRAMINGS = ["length", "chunked"]
#: bytes 0-255 except the newline: readline() must return the whole body as one line
_NO_NEWLINE = bytes(b for b in range(256) if b != 10)
BODIES = {
    "empty": b"",
    "small": b"first line\nsecond line\nno newline at the end",
    "2mb": (_NO_NEWLINE * 8300)[:2_000_000],
    "20mb": (_NO_NEWLINE * 83000)[:20_000_000],
}
APP = "tests.listeners.apps:conformance_wsgi"


def _expected(body: bytes) -> bytes:
    return f"{len(body)} {hashlib.sha256(body).hexdigest()} True".encode()


def _request(protocol: str, body: bytes, *, mode: str, chunked: bool,
             method: str = "POST") -> list[bytes]:
    """The bytes a web server (or curl, for http) sends for this request."""
    query = f"mode={mode}"
    content_type = "application/octet-stream" if body else ""
    if protocol == "http":
        return http_request(method, f"/read?{query}", body, chunked=chunked,
                            content_type=content_type)
    if protocol == "fastcgi":
        # nginx with fastcgi_request_buffering off streams a chunked body: no length,
        # the body ends with the empty STDIN record
        params = nginx_params(method, "/read", length=None if chunked else len(body),
                              content_type=content_type, query=query)
        return fastcgi_request(params, body)
    # nginx always buffers a chunked body for SCGI (it must send CONTENT_LENGTH) but
    # keeps passing Transfer-Encoding: chunked as HTTP_TRANSFER_ENCODING
    params = nginx_params(method, "/read", length=len(body), content_type=content_type,
                          query=query)
    if chunked:
        params["HTTP_TRANSFER_ENCODING"] = "chunked"
        del params["HTTP_CONTENT_LENGTH"]
    return scgi_request(params, body)


def _answer(protocol: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    if protocol == "fastcgi":
        stdout, ended = fastcgi_answer(data)
        assert ended, f"no END_REQUEST in {data[:200]!r}"
        data = stdout
    return cgi_answer(data)


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, LiveListener]]:
    """One live listener per protocol serving the validated app (max_body_bytes 32 MiB)."""
    base = tempfile.mkdtemp(prefix="conf-")
    listeners: dict[str, LiveListener] = {}
    try:
        for protocol in PROTOCOLS:
            listeners[protocol] = LiveListener(base, protocol=protocol, wsgi=APP, threads=4,
                                               max_body_bytes="32MiB")
        yield listeners
    finally:
        for live in listeners.values():
            live.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(BODIES))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_body_reaches_the_app_whole(served: dict[str, LiveListener], protocol: str,
                                    shape: str, mode: str, framing: str) -> None:
    """The app reads the whole body, however it reads and however it was framed."""
    body = BODIES[shape]
    live = served[protocol]
    data = exchange(live.port, _request(protocol, body, mode=mode,
                                        chunked=framing == "chunked"))
    status, _headers, answer = _answer(protocol, data)
    assert (status, answer) == (200, _expected(body))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_abort_mid_body(served: dict[str, LiveListener], protocol: str) -> None:
    """A client gone mid-body ends its request; the next request is answered."""
    live = served[protocol]
    before = live.snapshot()["cancelled"]
    body = BODIES["2mb"]
    parts = _request(protocol, body, mode="readn", chunked=False)
    half = b"".join(parts)[:len(b"".join(parts)) // 2]
    exchange(live.port, [half], abort_after=True)
    assert live.wait(lambda: live.listener.dispatcher.active == 0
                     and not live.listener.factory.connections)
    # FastCGI and SCGI start the app while the body streams in; it is cancelled.
    # twisted.web receives the whole body first: the app never started.
    assert live.snapshot()["cancelled"] == before + (protocol != "http")
    data = exchange(live.port, _request(protocol, b"again", mode="readall", chunked=False))
    assert _answer(protocol, data)[::2] == (200, _expected(b"again"))


NGINX_SERVERS = """\
  upstream fastcgi {{ server unix:{tmp}/fastcgi.sock; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location /fastcgi/ {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param PATH_INFO $fastcgi_script_name;
      fastcgi_param SCRIPT_NAME "";
      fastcgi_keep_conn on;
      fastcgi_request_buffering {buffering};
      fastcgi_pass fastcgi;
    }}
    location /scgi/ {{
      include /etc/nginx/scgi_params;
      scgi_request_buffering {buffering};
      scgi_pass unix:{tmp}/scgi.sock;
    }}
    location /http/ {{
      proxy_http_version 1.1;
      proxy_request_buffering {buffering};
      proxy_pass http://unix:{tmp}/http.sock:;
    }}
  }}
}}
"""


class _Nginx:
    """nginx in the foreground in front of the three listeners' unix sockets in ``tmp``."""

    def __init__(self, tmp: str, *, buffering: bool) -> None:
        self.port: int = free_port()
        conf = config_head(tmp, connections=256, max_body="32m") + NGINX_SERVERS.format(
            tmp=tmp, port=self.port, buffering="on" if buffering else "off")
        self.proc = start_nginx(tmp, conf, self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture(scope="module", params=["buffered", "streamed"])
def behind_nginx(request: Any) -> Iterator[_Nginx]:
    """The three listeners behind nginx, its request buffering on or off."""
    tmp = tempfile.mkdtemp(prefix="ngx-", dir="/tmp")  # short: unix socket paths
    started: list[Any] = []
    try:
        for protocol in PROTOCOLS:
            started.append(LiveListener(tmp, protocol=protocol, wsgi=APP, threads=4,
                                        max_body_bytes="32MiB",
                                        endpoint=f"unix:{tmp}/{protocol}.sock"))
        nginx = _Nginx(tmp, buffering=request.param == "buffered")
        started.append(nginx)
        yield nginx
    finally:
        for item in reversed(started):
            item.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("mode", ["readn", "readline"])
@pytest.mark.parametrize("shape", ["small", "2mb", "20mb"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_through_nginx(behind_nginx: _Nginx, protocol: str, shape: str, mode: str,
                       framing: str) -> None:
    """Through nginx, buffered or streamed, the app reads the whole body."""
    body = BODIES[shape]
    data = exchange(behind_nginx.port, http_request(
        "POST", f"/{protocol}/read?mode={mode}", body, chunked=framing == "chunked",
        content_type="application/octet-stream"))
    status, _headers, answer = cgi_answer(data)
    assert (status, answer) == (200, _expected(body))


def test_drain_after_a_timeout_with_unread_body(tmp_path: Any) -> None:
    """After a 504 for an app that did not read its body, a drain ends within seconds.

    The peer (FastCGI, keep-alive) stays connected and silent after the answer, as
    nginx may; the listener had paused it mid-record for the app.
    """
    import threading

    from tests.listeners import apps

    release = threading.Event()
    apps.GATE = release
    live = LiveListener(str(tmp_path), protocol="fastcgi",
                        wsgi="tests.listeners.apps:gated_wsgi", threads=2,
                        request_timeout="0.5s", request_buffering=False)
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    try:
        params = nginx_params("POST", "/slow", length=2_000_000)
        parts = fastcgi_request(params, BODIES["2mb"][:1_500_000], keep_conn=True, end=False)
        data = b""
        sock.settimeout(2)
        for part in parts:
            for pos in range(0, len(part), 65536):
                try:
                    sock.sendall(part[pos:pos + 65536])
                except TimeoutError:
                    break  # paused by the listener: the kernel buffers are full
        sock.settimeout(0.2)
        deadline = time.monotonic() + 10
        while b"\x01\x03\x00\x01" not in data and time.monotonic() < deadline:
            try:
                data += sock.recv(65536)
            except TimeoutError:
                pass
        status, _, _ = cgi_answer(fastcgi_answer(data)[0])
        assert status == 504
        started = time.monotonic()
        assert live.drain(timeout=5.0)
        assert time.monotonic() - started < 3.0
    finally:
        release.set()
        sock.close()
        live.stop()
