"""Small WSGI and native applications the listener tests serve."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater

from daemonapp.daemon import Daemon
from daemonapp.listeners.native import Request

BIG = bytes(range(256)) * 4096  # 1 MiB


def hello_native(request: Request) -> bytes:
    """Hello world, native."""
    return b"Hello, world!\n"


def echo_native(request: Request) -> tuple[int, dict[str, str], bytes]:
    """The request body back, with the method and path as headers."""
    return 200, {"X-Method": request.method, "X-Path": request.path}, request.body


def big_native(request: Request) -> bytes:
    """A 1 MiB body."""
    return BIG


def slow_native(request: Request) -> Any:
    """Hello world after 0.5 s (a Deferred)."""
    return deferLater(reactor, 0.5, lambda: b"slow\n")


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Hello world, WSGI."""
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The request body back, streamed in 64 KiB reads."""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("X-Path", environ["PATH_INFO"]),
                              ("X-Script-Name", environ["SCRIPT_NAME"])])
    stream = environ["wsgi.input"]
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return
        yield chunk


def big_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A 1 MiB body in 16 chunks."""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(BIG)))])
    for pos in range(0, len(BIG), 65536):
        yield BIG[pos:pos + 65536]


def slow_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Blocks its thread 0.5 s, then answers."""
    time.sleep(0.5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slow\n"]


def environ_wsgi(environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Selected environ keys as text lines."""
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH",
            "SERVER_PROTOCOL", "wsgi.url_scheme", "HTTP_X_TEST")
    body = "".join(f"{key}={environ.get(key)}\n" for key in keys).encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


PENDING: list[Any] = []


def pending_native(request: Request) -> Any:
    """A Deferred the test fires (kept in PENDING)."""
    from twisted.internet.defer import Deferred

    deferred: Deferred[bytes] = Deferred()
    PENDING.append(deferred)
    return deferred


def failing_native(request: Request) -> bytes:
    """Raises."""
    raise RuntimeError("boom")


def failing_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Raises before start_response."""
    raise RuntimeError("boom")


def streaming_wsgi(environ: dict[str, Any],
                   start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Three chunks through write() and the iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one,")
    yield b""
    yield b"two,"
    yield b"three"


def exc_info_wsgi(environ: dict[str, Any],
                  start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Calls start_response twice, the second time with exc_info, before any output."""
    import sys

    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("late failure")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"replaced"]


CLOSED: list[str] = []


class _Closing:
    def __init__(self) -> None:
        self.items = [b"a", b"b"]

    def __iter__(self) -> Any:
        return iter(self.items)

    def close(self) -> None:
        CLOSED.append("closed")


def closing_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """Returns an iterable with close()."""
    start_response("200 OK", [])
    return _Closing()


def errors_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Writes to wsgi.errors."""
    environ["wsgi.errors"].write("first line\nsecond")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [])
    return [b"ok"]


def readline_wsgi(environ: dict[str, Any],
                  start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Reads the body line by line and answers the line count and lines reversed."""
    lines = list(environ["wsgi.input"])
    start_response("200 OK", [])
    return [str(len(lines)).encode() + b":" + b"".join(reversed(lines))]


def jobs_status(job_id: int) -> Any:
    """A jobs_status function: job 7 exists."""
    from twisted.internet.defer import succeed

    if job_id == 7:
        return succeed({"id": 7, "state": "running", "percent": 40})
    return succeed(None)


def marked_slow_native(request: Request) -> Any:
    """Like slow_native, and appends a line to $LISTENER_TEST_MARK when called."""
    import os

    with open(os.environ["LISTENER_TEST_MARK"], "a") as mark:
        mark.write("called\n")
    return deferLater(reactor, 0.5, lambda: b"slow\n")


def early_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Writes before reading its body, then echoes the body."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"early,")
    return [environ["wsgi.input"].read()]


def slower_native(request: Request) -> Any:
    """Hello world after 2 s (a Deferred)."""
    return deferLater(reactor, 2.0, lambda: b"slower\n")


def slower_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Blocks its thread 2 s, then answers."""
    time.sleep(2.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slower\n"]


GATE: Any = None
GATED_DONE = threading.Event()


def gated_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Waits for GATE (an Event the test sets), then answers."""
    GATED_DONE.clear()
    try:
        GATE.wait(10)
        start_response("200 OK", [])
        return [b"late"]
    finally:
        GATED_DONE.set()


def failing_stream_wsgi(environ: dict[str, Any],
                        start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Streams a first chunk without Content-Length, then raises."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial,"
    raise RuntimeError("failed mid-answer")


def head_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """No Content-Length and no body (as for a HEAD request)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b""]


def dying_stream_wsgi(environ: dict[str, Any],
                      start_response: Callable[..., Any]) -> Iterable[bytes]:
    """On /die: streams a chunk without Content-Length, then SIGKILLs its own process.

    Elsewhere: a streamed "alive" answer. The pause lets the reactor send the first
    chunk when nothing holds it back.
    """
    import os
    import signal

    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"] != "/die":
        yield b"alive"
        return
    yield b"partial,"
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGKILL)
    yield b"never"


class LatenessDaemon(Daemon):
    """A 1 s daemon that never has work and appends "<time> <lateness s>" to ``report``.

    Lateness: the start of a run minus the due time the scheduler chose for it.
    """

    run_every = 1.0

    def __init__(self, *, report: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.report = report

    def get_work(self) -> None:
        now = time.time()  # the real reactor's seconds()
        due = self.stats["next_run_at"]
        if due is not None:
            with open(self.report, "a") as out:
                out.write(f"{now:.6f} {now - due:.6f}\n")

    def do_work(self, job: object) -> None:
        """Never called: get_work has nothing."""


def _read_body(environ: dict[str, Any],
               start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Reads wsgi.input the way the query string says; answers "<size> <sha256>".

    Modes: ``readn`` (``read(CONTENT_LENGTH)`` once, as Django's ``request.body``; in
    1.5 MiB reads without a length), ``readall`` (``read(-1)``), ``readline`` (until an
    empty line) and ``iter`` (``for line in wsgi.input``).
    """
    import hashlib

    mode = environ.get("QUERY_STRING", "").partition("mode=")[2] or "readall"
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = 0
    if mode == "readn":
        length = environ.get("CONTENT_LENGTH")
        if length:
            data = stream.read(int(length))
            digest.update(data)
            size += len(data)
        else:
            while data := stream.read(1536 * 1024):
                digest.update(data)
                size += len(data)
    elif mode == "readall":
        data = stream.read(-1)
        digest.update(data)
        size = len(data)
    elif mode == "readline":
        while line := stream.readline():
            digest.update(line)
            size += len(line)
    else:
        for line in stream:
            digest.update(line)
            size += len(line)
    body = f"{size} {digest.hexdigest()} {environ.get('wsgi.input_terminated')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _validated() -> Any:
    from wsgiref.validate import validator

    return validator(_read_body)


#: ``_read_body`` wrapped in wsgiref.validate.validator (PEP 3333 checks on every call).
conformance_wsgi = _validated()


#: what gated_reading_wsgi's read of its body gave: its length, or the exception's name
READ_OUTCOME: list[str] = []
READ_DONE = threading.Event()


def gated_reading_wsgi(environ: dict[str, Any],
                       start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Waits for GATE, then reads its whole body and notes how that went."""
    READ_DONE.clear()
    try:
        GATE.wait(10)
        try:
            READ_OUTCOME.append(str(len(environ["wsgi.input"].read())))
        except Exception as err:
            READ_OUTCOME.append(type(err).__name__)
        start_response("200 OK", [])
        return [b"read"]
    finally:
        READ_DONE.set()
