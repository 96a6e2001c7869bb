"""A listener on a real reactor running in a thread, and raw clients for its three protocols.

Each :class:`LiveListener` gets a reactor of its own (never the global one), so a test
drives real sockets in-process and ends by draining the listener. The clients speak
FastCGI, SCGI and HTTP/1.1 the way nginx and curl do, with a bound on every wait.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python.failure import Failure

from daemonapp.listeners import build_listener
from daemonapp.listeners.fastcgi import (
    FCGI_BEGIN_REQUEST,
    FCGI_END_REQUEST,
    FCGI_PARAMS,
    FCGI_STDIN,
    FCGI_STDOUT,
    encode_pairs,
    record,
)

TIMEOUT = 20.0
_HEADER = struct.Struct("!BBHHBx")


class LiveListener:
    """``build_listener(options)`` served on its own reactor in a daemon thread."""

    def __init__(self, base_dir: str, **options: Any) -> None:
        options.setdefault("endpoint", "tcp:0:interface=127.0.0.1")
        self.reactor: Any = EPollReactor()
        self._thread = threading.Thread(target=self.reactor.run,
                                        kwargs={"installSignalHandlers": False},
                                        name="live-listener-reactor", daemon=True)
        self._thread.start()
        self.listener: Any = self.call(build_listener, options, reactor=self.reactor,
                                       base_dir=base_dir)
        self.call(self.listener.startService)

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on the reactor and return its result (bounded wait)."""
        done: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                done.put((True, function(*args, **kwargs)))
            except BaseException:
                done.put((False, Failure()))

        self.reactor.callFromThread(run)
        ok, value = done.get(timeout=TIMEOUT)
        if not ok:
            value.raiseException()
        return value

    @property
    def port(self) -> int:
        """The tcp port listened on."""
        port: int = self.call(lambda: self.listener.port.getHost().port)
        return port

    def snapshot(self) -> dict[str, Any]:
        """The listener's status snapshot."""
        snapshot: dict[str, Any] = self.call(self.listener.snapshot)
        return snapshot

    def wait(self, until: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        """Poll ``until`` on the reactor every 10 ms; True once it holds."""
        stop = threading.Event()
        deadline = [timeout]
        while deadline[0] > 0:
            if self.call(until):
                return True
            stop.wait(0.01)
            deadline[0] -= 0.01
        return False

    def drain(self, timeout: float = TIMEOUT) -> bool:
        """Drain the listener; True when it finished within ``timeout``."""
        finished = threading.Event()
        self.call(lambda: self.listener.drain().addBoth(lambda _: finished.set()))
        return finished.wait(timeout)

    def stop(self) -> None:
        """Drain (bounded), stop the reactor and join its thread."""
        if not self._thread.is_alive():
            return
        try:
            self.drain(5.0)
        finally:
            self.reactor.callFromThread(self.reactor.stop)
            self._thread.join(TIMEOUT)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


class _Sender(threading.Thread):
    """Sends request bytes while the caller reads the answer (an early answer is legal)."""

    def __init__(self, sock: socket.socket, parts: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.parts = parts
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            for part in self.parts:
                self.sock.sendall(part)
        except OSError as err:  # the server answered early and closed
            self.error = err


def exchange(port: int, parts: list[bytes], *, abort_after: bool = False) -> bytes:
    """Send ``parts`` on a new connection and read until the server closes it.

    With ``abort_after`` the client closes right after sending (a client gone
    mid-body) and b"" is returned.
    """
    sock = _connect(port)
    try:
        if abort_after:
            for part in parts:
                sock.sendall(part)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        sender = _Sender(sock, parts)
        sender.start()
        data = _read_all(sock)
        sender.join(TIMEOUT)
        return data
    finally:
        sock.close()


def _split(body: bytes, size: int) -> list[bytes]:
    return [body[pos:pos + size] for pos in range(0, len(body), size)]


def nginx_params(method: str, path: str, *, length: int | None, content_type: str = "",
                 query: str = "", extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CGI params nginx's stock fastcgi_params / scgi_params send, with headers.

    Like nginx, the Content-Type and Content-Length request headers come twice:
    as CONTENT_TYPE / CONTENT_LENGTH and as HTTP_CONTENT_TYPE / HTTP_CONTENT_LENGTH.
    ``length`` None is a chunked request body (nginx's CONTENT_LENGTH is then empty).
    """
    params = {
        "CONTENT_LENGTH": "" if length is None else str(length),
        "QUERY_STRING": query, "REQUEST_METHOD": method, "CONTENT_TYPE": content_type,
        "SCRIPT_NAME": "", "PATH_INFO": path,
        "REQUEST_URI": path + ("?" + query if query else ""), "DOCUMENT_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_SCHEME": "http",
        "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_SOFTWARE": "nginx/1.22.1",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_NAME": "localhost", "HTTP_HOST": "localhost",
    }
    if content_type:
        params["HTTP_CONTENT_TYPE"] = content_type
    if length is None:
        params["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        params["HTTP_CONTENT_LENGTH"] = str(length)
    params.update(extra or {})
    return params


def fastcgi_request(params: dict[str, str], body: bytes, rid: int = 1,
                    keep_conn: bool = False, end: bool = True) -> list[bytes]:
    """The records of one FastCGI request; without ``end``, no empty STDIN record."""
    pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in params.items()]
    head = (record(FCGI_BEGIN_REQUEST, rid, struct.pack("!HB5x", 1, int(keep_conn)))
            + record(FCGI_PARAMS, rid, encode_pairs(pairs)) + record(FCGI_PARAMS, rid))
    parts = [head]
    for piece in _split(body, 1 << 20):
        parts.append(b"".join(record(FCGI_STDIN, rid, chunk)
                              for chunk in _split(piece, 65535)))
    if end:
        parts.append(record(FCGI_STDIN, rid))
    return parts


def fastcgi_answer(data: bytes, rid: int = 1) -> tuple[bytes, bool]:
    """The STDOUT content for ``rid`` and whether END_REQUEST came."""
    out = []
    ended = False
    pos = 0
    while pos + 8 <= len(data):
        _version, rtype, got, clen, plen = _HEADER.unpack_from(data, pos)
        if got == rid and rtype == FCGI_STDOUT:
            out.append(data[pos + 8:pos + 8 + clen])
        elif got == rid and rtype == FCGI_END_REQUEST:
            ended = True
        pos += 8 + clen + plen
    return b"".join(out), ended


def scgi_request(params: dict[str, str], body: bytes) -> list[bytes]:
    """An SCGI request: the header netstring (CONTENT_LENGTH first), then the body."""
    items = dict(params)
    first = items.pop("CONTENT_LENGTH")
    header = b"CONTENT_LENGTH\0" + first.encode("latin-1") + b"\0" + b"".join(
        k.encode("latin-1") + b"\0" + v.encode("latin-1") + b"\0" for k, v in items.items())
    return [b"%d:%s," % (len(header), header), *_split(body, 1 << 20)]


def http_request(method: str, path: str, body: bytes, *, chunked: bool,
                 content_type: str = "", end: bool = True) -> list[bytes]:
    """An HTTP/1.1 request with Connection: close, the body as is or chunked."""
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if chunked:
        head.append("Transfer-Encoding: chunked")
    else:
        head.append(f"Content-Length: {len(body)}")
    parts = [("\r\n".join(head) + "\r\n\r\n").encode("latin-1")]
    for piece in _split(body, 1 << 20):
        if chunked:
            parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            parts.append(piece)
    if chunked and end:
        parts.append(b"0\r\n\r\n")
    return parts


def cgi_answer(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (last wins) and body of a CGI answer (``Status:``) or HTTP one."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    status = 200
    if lines and lines[0].startswith("HTTP/"):
        status = int(lines[0].split()[1])
        lines = lines[1:]
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "status" in headers:
        status = int(headers["status"].split()[0])
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2:]
    return b"".join(out)
