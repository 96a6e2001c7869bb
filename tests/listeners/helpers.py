"""Shared helpers for the listener tests: FastCGI records, fake reactors, listeners."""

from __future__ import annotations

import queue
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport

from daemonapp.listeners import build_listener
from daemonapp.listeners.budget import BodyBudget, BodyBuffer, FdLimits
from daemonapp.listeners.fastcgi import (
    FCGI_BEGIN_REQUEST,
    FCGI_PARAMS,
    FCGI_STDIN,
    encode_pairs,
    record,
)

HEADER = struct.Struct("!BBHHBx")


class ThreadReactor(MemoryReactorClock):
    """A MemoryReactorClock whose callFromThread queues calls for the test to run."""

    def __init__(self) -> None:
        super().__init__()
        self.posted: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.posted.put((f, args))

    def run_posted(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        """Run calls posted by threads until ``until()`` holds (bounded wait)."""
        while not until():
            f, args = self.posted.get(timeout=timeout)
            f(*args)


def begin(rid: int = 1, keep_conn: bool = True, role: int = 1) -> bytes:
    """A BEGIN_REQUEST record."""
    return record(FCGI_BEGIN_REQUEST, rid, struct.pack("!HB5x", role, 1 if keep_conn else 0))


def params(rid: int = 1, **values: str) -> bytes:
    """PARAMS records for ``values`` followed by the empty PARAMS record."""
    pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in values.items()]
    return record(FCGI_PARAMS, rid, encode_pairs(pairs)) + record(FCGI_PARAMS, rid)


def stdin(rid: int = 1, body: bytes = b"") -> bytes:
    """STDIN records carrying ``body``, then the empty STDIN record."""
    out = b""
    for pos in range(0, len(body), 65535):
        out += record(FCGI_STDIN, rid, body[pos:pos + 65535])
    return out + record(FCGI_STDIN, rid)


def request(rid: int = 1, body: bytes = b"", keep_conn: bool = True, **values: str) -> bytes:
    """A whole request: BEGIN, PARAMS, STDIN."""
    values.setdefault("REQUEST_METHOD", "POST" if body else "GET")
    values.setdefault("SCRIPT_NAME", "")
    values.setdefault("PATH_INFO", "/")
    if body:
        values.setdefault("CONTENT_LENGTH", str(len(body)))
    return begin(rid, keep_conn) + params(rid, **values) + stdin(rid, body)


def parse_records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, request id, content) of each record in ``data`` (padding skipped)."""
    out = []
    pos = 0
    while pos < len(data):
        version, rtype, rid, clen, plen = HEADER.unpack_from(data, pos)
        assert version == 1
        out.append((rtype, rid, data[pos + 8:pos + 8 + clen]))
        pos += 8 + clen + plen
    assert pos == len(data)
    return out


def stdout_of(data: bytes, rid: int = 1) -> bytes:
    """The concatenated STDOUT content for ``rid``."""
    return b"".join(c for t, r, c in parse_records(data) if t == 6 and r == rid)


def make_listener(reactor: Any = None, fds: FdLimits | None = None, **options: Any) -> Any:
    """A listener built from ``options`` (not started) on a memory reactor.

    It counts its connections in ``fds``, by default its own FdLimits (the tests leave
    connections open, which must not count against the process's cap).
    """
    options.setdefault("protocol", "fastcgi")
    options.setdefault("endpoint", "tcp:0")
    return build_listener(options, reactor=reactor or MemoryReactorClock(), base_dir="/tmp",
                          fds=fds or FdLimits(limit=1 << 16))


def connect(listener: Any, transport: StringTransport | None = None) -> tuple[Any, Any]:
    """A protocol of ``listener`` connected to a StringTransport (or ``transport``)."""
    proto = listener.factory.buildProtocol(None)
    transport = transport if transport is not None else StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class NonReader(StringTransport):
    """The transport of a peer that reads nothing until :meth:`drain`.

    Past ``room`` bytes not read its buffer is full and it pauses its producer, as
    Twisted's FileDescriptor does; :meth:`drain` (the peer read it all) resumes it.
    """

    room = 65536

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read_upto = 0
        self.full = False

    def write(self, data: Any) -> None:
        super().write(bytes(data))
        if (not self.full and self.producer is not None
                and len(self.value()) - self.read_upto > self.room):
            self.full = True
            self.producer.pauseProducing()

    def unread(self) -> int:
        """Bytes written and not read by the peer yet."""
        return len(self.value()) - self.read_upto

    def drain(self) -> None:
        """The peer reads all that was written: the buffer empties, the producer resumes."""
        self.read_upto = len(self.value())
        if self.full and self.producer is not None:
            self.full = False
            self.producer.resumeProducing()


class Monitor:
    """An IActivityMonitor that records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def begin(self, kind: str) -> None:
        self.calls.append(("begin", kind))

    def end(self, kind: str) -> None:
        self.calls.append(("end", kind))

    def request_limit_reached(self, reason: str) -> None:
        self.calls.append(("limit", reason))


def spooled(budget: BodyBudget, body: bytes) -> BodyBuffer:
    """A body written to ``budget``, which is too small for it: on disk."""
    buffer = BodyBuffer(budget, None)
    buffer.write(body)
    assert buffer.spool is not None
    return buffer


def spool_file_of(buffer: BodyBuffer) -> Any:
    """The open file of a body on disk."""
    assert buffer.spool is not None
    return buffer.spool.file
