"""A FastCGI client on a real socket, written from the specification alone (not from
daemonapp's own encoder), for black-box tests of `daemonapp run`; and the native app
those tests serve (FCGI_APP: "hello", a 200,000-byte body at /big, no answer at /hang).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from tests._processes import write_file

FCGI_APP = """\
from twisted.internet.defer import Deferred

def handle(request):
    if request.path.endswith("/big"):
        return b"x" * 200000
    if request.path.endswith("/hang"):
        return Deferred()
    return b"hello"
"""


def fcgi_record(rtype: int, request_id: int, content: bytes = b"", version: int = 1) -> bytes:
    """One record of type ``rtype``, padded to 8 bytes."""
    padding = (8 - len(content) % 8) % 8
    return struct.pack("!BBHHBx", version, rtype, request_id, len(content), padding) + \
        content + b"\0" * padding


def fcgi_pairs(pairs: dict[str, str]) -> bytes:
    """Name-value pairs in FastCGI's length-prefixed encoding."""
    out = b""
    for name, value in pairs.items():
        for part in (name.encode(), value.encode()):
            n = len(part)
            out += bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)
        out += name.encode() + value.encode()
    return out


def fcgi_begin(request_id: int, keep: bool = True) -> bytes:
    """A BEGIN_REQUEST record for the responder role."""
    return fcgi_record(1, request_id, struct.pack("!HB5x", 1, 1 if keep else 0))


def fcgi_read(sock: Any, until_end: int | set[int] | None = None,
              timeout: float = 5.0) -> list[tuple[int, int, bytes]]:
    """Read records until END_REQUEST for ``until_end`` (ids; or EOF / timeout)."""
    waiting = {until_end} if isinstance(until_end, int) else set(until_end or ())

    sock.settimeout(timeout)
    buf = b""
    records: list[tuple[int, int, bytes]] = []
    while True:
        while len(buf) >= 8:
            _, rtype, rid, clen, plen = struct.unpack("!BBHHBx", buf[:8])
            if len(buf) < 8 + clen + plen:
                break
            records.append((rtype, rid, buf[8:8 + clen]))
            buf = buf[8 + clen + plen:]
            if rtype == 3:
                waiting.discard(rid)
                if not waiting:
                    return records
            if rtype in (10, 11) and until_end is None:
                return records
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return records
        if not chunk:
            records.append((-1, 0, b""))
            return records
        buf += chunk


def fcgi_connect(path: Path) -> Any:
    """A socket connected to the unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def fcgi_request(request_id: int, path: str, extra: dict[str, str] | None = None) -> bytes:
    """A whole GET request for ``path``: BEGIN, PARAMS (and ``extra``), empty STDIN."""
    params = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
              "QUERY_STRING": "", "SERVER_NAME": "x", "SERVER_PORT": "80",
              "SERVER_PROTOCOL": "HTTP/1.1", **(extra or {})}
    return (fcgi_begin(request_id) + fcgi_record(4, request_id, fcgi_pairs(params)) +
            fcgi_record(4, request_id) + fcgi_record(5, request_id))


def fcgi_get(path: Path, request_path: str, timeout: float = 5.0) -> list[tuple[int, int, bytes]]:
    """One request for ``request_path`` on a new connection, read up to its END_REQUEST."""
    with fcgi_connect(path) as sock:
        sock.sendall(fcgi_request(1, request_path))
        return fcgi_read(sock, until_end=1, timeout=timeout)


def unix_listener(path: Path) -> Any:
    """A listening unix socket at ``path``, as a web server that spawns apps on fd 0 has."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    return listener


def write_fd0_fcgi_app(root: Path) -> Path:
    """root/d.yaml: one fastcgi listener with no endpoint (the inherited fd 0) on FCGI_APP."""
    write_file(root / "fcgiapp.py", FCGI_APP)
    return write_file(root / "d.yaml", "app:\n  state_dir: ./var\nlisteners:\n"
                      "  - protocol: fastcgi\n    native: fcgiapp:handle\n")

