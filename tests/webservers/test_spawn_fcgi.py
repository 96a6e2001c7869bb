"""spawn-fcgi starts `daemonapp run` on a socket it binds (DESIGN §4).

spawn-fcgi binds the socket, passes it as fd 0 and, with ``-n``, execs the app in its
own place; afterwards it sends nothing, so ``shutdown_if_idle`` or ``max_requests``
end the process, and the web server's socket path stays where it is. Requests come
through lighttpd (mod_fastcgi with ``socket`` and no ``bin-path``), through
``cgi-fcgi``, and through a raw FastCGI client when the test needs to hold a
request in flight.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from daemonapp.listeners.fastcgi import FCGI_STDIN, record
from tests.listeners.helpers import HEADER, begin, params, stdout_of
from tests.webservers._lighttpd import (
    APP,
    MIB,
    PLAIN_CONFIG,
    ROOT,
    TIMEOUT,
    Lighttpd,
    Site,
    daemonapp_argv,
    echo_expected,
    free_port,
    hello_pid,
    marked_pids,
    site,
    tcp_listening,
    tool,
    unix_listening,
    wait_until,
)

pytestmark = pytest.mark.integration

FCGI_END_REQUEST = 3
FCGI_STDOUT = 6


def spawn(where: Site, config: Path, *where_to: str, **env: str) -> subprocess.Popen[bytes]:
    """`spawn-fcgi WHERE_TO -n -- daemonapp run CONFIG`; the process is the app (exec)."""
    return where.start([tool("spawn-fcgi"), *where_to, "-n", "--", *daemonapp_argv(), "run",
                        str(config)], log="app.log",
                       env=where.env(PYTHONPATH=str(ROOT), **env), cwd=str(where.root))


def exit_status(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> int:
    """Wait for ``proc`` (bounded); its exit status."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pid {proc.pid} still running after {timeout:g} s")


def fcgi_connect(path: Path) -> socket.socket:
    """A FastCGI connection to the unix socket ``path``."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    return sock


def complete_records(data: bytes) -> list[tuple[int, bytes]]:
    """(type, content) of each whole FastCGI record at the start of ``data``."""
    records = []
    pos = 0
    while pos + 8 <= len(data):
        _, kind, _, length, padding = HEADER.unpack_from(data, pos)
        if pos + 8 + length + padding > len(data):
            break
        records.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 8 + length + padding
    return records


def read_all(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_unix_socket_through_lighttpd_then_idle_exit() -> None:
    """GET and 1 MiB POST through lighttpd; the app leaves by itself, the socket stays."""
    with site("dwss-") as where:
        config = where.write_config(
            "app: {state_dir: ./var, stay_alive_for: 2s, shutdown_if_idle: 1s}\n"
            "listeners:\n"
            f'  - {{protocol: fastcgi, wsgi: "{APP}:application"}}\n')
        sock = where.root / "app.sock"
        app = spawn(where, config, "-s", str(sock))
        wait_until(lambda: unix_listening(sock), "spawn-fcgi's socket")
        bound = os.lstat(sock)
        server = Lighttpd(where, (
            'fastcgi.server = ("/app" => ((\n'
            f'    "socket" => "{sock}",\n'
            '    "check-local" => "disable",\n'
            ")))\n"), modules=("mod_fastcgi",))

        assert hello_pid(server.get("/app/")) == app.pid  # spawn-fcgi -n execs the app
        body = os.urandom(MIB)
        echo = server.post("/app/echo", body)
        assert (echo.status, echo.body) == (200, echo_expected(body))
        big = server.get("/app/big")
        assert (big.status, len(big.body)) == (200, MIB)
        last = time.monotonic()

        assert exit_status(app) == 0, where.read("app.log")  # nobody signalled it
        assert time.monotonic() - last >= 0.9  # not before shutdown_if_idle after the last
        log = where.read("app.log")
        assert "daemonapp stopping: idle" in log
        assert "daemonapp ended with exit status 0" in log
        after = os.lstat(sock)  # spawn-fcgi's socket: never the app's to unlink
        assert (after.st_dev, after.st_ino) == (bound.st_dev, bound.st_ino)
        server.stop()
        assert marked_pids(where.marker) == []


def cgi_fcgi(port: int, path: str, body: bytes = b"") -> bytes:
    """One request through `cgi-fcgi -bind -connect 127.0.0.1:PORT`: its CGI answer."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GATEWAY_INTERFACE": "CGI/1.1",
           "REQUEST_METHOD": "POST" if body else "GET", "SCRIPT_NAME": "",
           "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
           "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    result = subprocess.run([tool("cgi-fcgi"), "-bind", "-connect", f"127.0.0.1:{port}"],
                            input=body, capture_output=True, env=env, timeout=TIMEOUT,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tcp_socket_with_web_server_addrs_and_max_requests() -> None:
    """TCP: FCGI_WEB_SERVER_ADDRS refuses other peers; max_requests 2 ends it, status 0."""
    with site("dwst-") as where:
        config = where.write_config(
            "app: {state_dir: ./var}\n"
            "listeners:\n"
            f'  - {{protocol: fastcgi, wsgi: "{APP}:application", max_requests: 2}}\n')
        port = free_port()
        app = spawn(where, config, "-a", "127.0.0.1", "-p", str(port),
                    FCGI_WEB_SERVER_ADDRS="127.0.0.1")
        wait_until(lambda: tcp_listening(port), "spawn-fcgi's TCP socket")

        # a peer outside FCGI_WEB_SERVER_ADDRS (127.0.0.2 is loopback too) gets nothing
        with socket.socket() as stranger:
            stranger.settimeout(TIMEOUT)
            stranger.bind(("127.0.0.2", 0))
            stranger.connect(("127.0.0.1", port))
            try:
                stranger.sendall(begin(1, False) + params(
                    1, REQUEST_METHOD="GET", PATH_INFO="/", SCRIPT_NAME="")
                    + record(FCGI_STDIN, 1))
                refused = read_all(stranger)
            except (ConnectionResetError, BrokenPipeError):
                refused = b""  # closed with our request unread
            assert refused == b""

        hello = cgi_fcgi(port, "/")
        assert hello.endswith(f"\r\n\r\nhello pid={app.pid}\n".encode()), hello
        body = os.urandom(MIB)
        echo = cgi_fcgi(port, "/echo", body)
        assert echo.startswith(b"Status: 200 OK\r\n")
        assert echo.endswith(b"\r\n\r\n" + echo_expected(body))

        assert exit_status(app) == 0, where.read("app.log")  # the 2nd request was the last
        assert "ended with exit status 0" in where.read("app.log")
        assert marked_pids(where.marker) == []


def _held_upload(sock: Path, body: bytes) -> socket.socket:
    """A FastCGI POST /echo of ``body`` whose second half is not sent yet."""
    conn = fcgi_connect(sock)
    half = len(body) // 2
    records = b"".join(record(FCGI_STDIN, 1, body[pos:min(pos + 65535, half)])
                       for pos in range(0, half, 65535))
    conn.sendall(begin(1, False) + params(1, REQUEST_METHOD="POST", SCRIPT_NAME="",
                                          PATH_INFO="/echo", CONTENT_LENGTH=str(len(body)))
                 + records)
    return conn


def test_sigterm_with_a_request_in_flight_finishes_it_and_exits_0() -> None:
    """SIGTERM mid-upload: the upload still gets its answer, then exit 0 within ~2 s."""
    with site("dwsi-") as where:
        config = where.write_config(PLAIN_CONFIG)
        sock = where.root / "app.sock"
        app = spawn(where, config, "-s", str(sock))
        wait_until(lambda: unix_listening(sock), "spawn-fcgi's socket")
        body = os.urandom(MIB)
        with _held_upload(sock, body) as conn:
            app.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining: 1 request(s) in flight" in where.read("app.log"),
                       "the app to drain with the upload in flight")
            half = len(body) // 2
            conn.sendall(b"".join(record(FCGI_STDIN, 1, body[pos:pos + 65535])
                                  for pos in range(half, len(body), 65535))
                         + record(FCGI_STDIN, 1))
            answer = read_all(conn)
        assert stdout_of(answer).endswith(b"\r\n\r\n" + echo_expected(body))
        # the drain budget of a spawned app is 2 s: exit 0 means it finished within it
        assert exit_status(app, timeout=5.0) == 0, where.read("app.log")
        assert marked_pids(where.marker) == []


def test_sigterm_after_an_answer_not_yet_read_still_delivers_it() -> None:
    """SIGTERM while a 1 MiB answer waits for its reader: the reader still gets it whole."""
    with site("dwsb-") as where:
        config = where.write_config(PLAIN_CONFIG)
        sock = where.root / "app.sock"
        app = spawn(where, config, "-s", str(sock))
        wait_until(lambda: unix_listening(sock), "spawn-fcgi's socket")
        with fcgi_connect(sock) as conn:
            conn.sendall(begin(1, False) + params(1, REQUEST_METHOD="GET", SCRIPT_NAME="",
                                                  PATH_INFO="/big") + record(FCGI_STDIN, 1))
            first = conn.recv(65536)  # the answer has started: the app wrote it all out
            time.sleep(0.3)  # let the app finish writing what the socket takes
            app.send_signal(signal.SIGTERM)
            # The reader comes back after the drain's DRAIN_IDLE (0.5 s) and well within
            # the 2 s budget: the answer must still be there for it.
            time.sleep(1.0)
            answer = first + read_all(conn)
        assert exit_status(app, timeout=5.0) == 0, where.read("app.log")
        records = complete_records(answer)
        assert FCGI_END_REQUEST in {kind for kind, _ in records}
        stdout = b"".join(content for kind, content in records if kind == FCGI_STDOUT)
        assert len(stdout.partition(b"\r\n\r\n")[2]) == MIB
