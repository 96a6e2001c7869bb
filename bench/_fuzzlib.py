"""The fuzzing harness behind bench/fuzz.py and tests/test_fuzz.py.

Each protocol target drives a listener's protocol objects in-process (a
MemoryReactorClock and a StringTransport, as tests/listeners do) with generated and
mutated byte streams fed in chunks of random sizes, and checks every input against the
same oracles: nothing escapes dataReceived/connectionLost or a timer, nothing is logged
as a failure except the test apps' own errors, the connection ends up answered, closed
or (counted apart) waiting, nothing leaks once it is closed (connections, requests in
flight, timers), the bytes it holds stay within its configured limits, and a fresh valid
connection on the same factory still gets its answer. The yaml target feeds mutated
configuration files to load_config and `daemonapp check`: a Config or a ConfigError
with file:line messages, never another exception, a hang or a memory blow-up.

The apps the listeners serve live here too (``_fuzzlib:echo_native`` ...), so this
module must be importable as ``_fuzzlib`` (bench/ on sys.path).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import random
import re
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent

#: Limits of the fuzzed listeners: small, so that the bounds are reached often.
MAX_PARAM_BYTES = 4096
MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT = 30.0
#: What one connection may hold: one request's limits plus two whole FastCGI records
#: (a record is read whole before it is looked at) and slack for the objects' own text.
REQUEST_BOUND = MAX_BODY_BYTES + MAX_PARAM_BYTES + 2 * (65535 + 255 + 8) + 16 * 1024
#: The listeners' body budget per connection (max_buffer_bytes, where the listener has
#: it): bodies beyond it go to spool files, not memory.
MAX_BUFFER_BYTES = 128 * 1024
#: What one connection may hold in memory with that budget, however many requests it
#: multiplexes: the budget, two whole records, and the params and objects of the
#: requests (bounded by FastCGI's own request cap).
CONNECTION_BOUND = MAX_BUFFER_BYTES + 2 * (65535 + 255 + 8) + 100 * 1024
#: Bytes a client that never reads may make us write after its buffer filled up.
WRITE_AFTER_PAUSE_BOUND = 1024 * 1024
#: The silence after an input: longer than every timeout of the listeners (HTTP's 60 s,
#: request_timeout, the 5 s linger).
SILENCE = 130.0

APP_PATHS = ("/", "/x", "/slow", "/never", "/big", "/error", "/stream", "/%2e%2e/a?b=c")


# ------------------------------------------------------------------ the served apps


class FuzzAppError(Exception):
    """Raised on purpose by the apps for /error: a logged failure of this type is fine."""


#: The clock the native apps' slow answers run on (set by the harness).
CLOCK: MemoryReactorClock | None = None
BIG = b"0123456789abcdef" * 8192  # 128 KiB
#: /big answers left for the current input: a small input of pipelined /big requests
#: must not make the harness itself hold gigabytes (see ProtocolHarness.run)
BIG_LEFT = [1 << 30]


def _big() -> bytes:
    if BIG_LEFT[0] <= 0:
        return b"no more big answers in this input"
    BIG_LEFT[0] -= 1
    return BIG


def echo_native(request: Any) -> Any:
    """Echo the body; /slow answers after 1 s, /never never (request_timeout), /big 128 KiB."""
    path = request.path
    if path == "/error":
        raise FuzzAppError("on purpose")
    if path == "/never":
        return Deferred()
    if path == "/slow" and CLOCK is not None:
        return deferLater(CLOCK, 1.0, lambda: b"slow\n")
    if path == "/big":
        return _big()
    return 200, {"X-Fuzz": request.method[:20]}, request.body


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Echo the body (read() on threads 0, 4 KiB reads and readline() on threads)."""
    path = environ.get("PATH_INFO", "")
    stream = environ["wsgi.input"]
    if path == "/error":
        raise FuzzAppError("on purpose")
    if environ.get("wsgi.multithread"):
        first = stream.readline(100)
        parts = [first]
        while True:
            chunk = stream.read(4096)
            if not chunk:
                break
            parts.append(chunk)
        body = b"".join(parts)
    else:
        body = stream.read()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"a" * 1000] * 40 + [body]
    if path == "/big":
        big = _big()
        start_response("200 OK", [("Content-Length", str(len(big)))])
        return [big]
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body) + 4))])
    return [b"ok: ", body]


# ------------------------------------------------------------------ reactor, transport


class FuzzReactor(MemoryReactorClock):
    """A MemoryReactorClock whose callFromThread queues calls (the WSGI worker threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.posted: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.posted.put((f, args))

    def settle(self, until: Callable[[], bool] | None = None, timeout: float = 5.0,
               quiet: float = 0.001) -> bool:
        """Run calls posted by threads until ``until()`` (or, without it, until none
        arrives for ``quiet`` seconds). False if that took over ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and until():
                return True
            try:
                f, args = self.posted.get(timeout=quiet if until is None else 0.01)
            except queue.Empty:
                if until is None:
                    return True
                if time.monotonic() > deadline:
                    return False
                continue
            f(*args)
            if time.monotonic() > deadline:
                return False


class FuzzTransport(StringTransport):
    """A StringTransport that can play a client that never reads its answers.

    With ``read_limit`` set, once that many bytes are unread the registered streaming
    producer is paused, as a real transport does when its buffer fills, and every byte
    written after that is counted in ``after_pause``.
    """

    def __init__(self, *, read_limit: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.read_limit = read_limit
        self.written = 0
        self.write_paused = False
        self.after_pause = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self._grew(len(data))

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        data = b"".join(seq)
        super().write(data)
        self._grew(len(data))

    head = b""

    def discard(self) -> None:
        """The client read what was written (``head`` keeps the first bytes)."""
        self.io = io.BytesIO()

    def _grew(self, size: int) -> None:
        if len(self.head) < 64:
            self.head = self.io.getvalue()[:64]
        self.written += size
        if self.write_paused:
            self.after_pause += size
        elif (self.read_limit is not None and self.written > self.read_limit
              and self.producer is not None and self.streaming):
            self.write_paused = True
            self.producer.pauseProducing()

    # a real transport (twisted.internet.abstract.FileDescriptor) never raises here;
    # StringTransport does, which would report its own strictness as our bugs
    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        if not self.closed:
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if not self.closed:
            self.producerState = "producing"

    def stopProducing(self) -> None:
        self.producerState = "stopped"
        self.loseConnection()

    write_closed = False

    def loseWriteConnection(self) -> None:
        """A half-close: the peer still sends, we read (tcp.Connection has it too)."""
        self.write_closed = True

    @property
    def closed(self) -> bool:
        return bool(self.disconnecting or self.disconnected)

    @property
    def input_paused(self) -> bool:
        return self.producerState == "paused"


# ------------------------------------------------------------------ bytes held


_OPAQUE = (type, FunctionType, BuiltinFunctionType, ModuleType, int, float, bool,
           complex, type(None), range)


def held_bytes(root: object, skip: Iterable[object] = (), limit: int = 50_000) -> int:
    """The bytes (and str characters) reachable from ``root``: what a connection holds.

    Walks attributes, slots, containers, BytesIO buffers and Deferred callbacks; the
    objects in ``skip`` (factory, transport, reactor, dispatcher, app) are not entered,
    so the figure is the connection's own and robust to renamed private attributes.
    """
    seen = {id(obj) for obj in skip}
    stack: list[object] = [root]
    total = 0
    visited = 0
    while stack and visited < limit:
        obj = stack.pop()
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        visited += 1
        kind = type(obj)
        if kind is bytes or kind is bytearray or kind is str:
            total += len(obj)  # type: ignore[arg-type]
            continue
        if kind is memoryview:
            total += obj.nbytes  # type: ignore[attr-defined]
            continue
        if isinstance(obj, _OPAQUE):
            continue
        try:
            if kind is list or kind is tuple or kind is set or kind is frozenset \
                    or kind is deque:
                stack.extend(obj)  # type: ignore[call-overload]
                continue
            if isinstance(obj, dict):
                stack.extend(obj.keys())
                stack.extend(obj.values())
                continue
            if isinstance(obj, io.BytesIO):
                if not obj.closed:
                    with obj.getbuffer() as view:
                        total += view.nbytes
                continue
            if isinstance(obj, MethodType):
                stack.append(obj.__self__)
                continue
            attrs = getattr(obj, "__dict__", None)
            if attrs is not None:
                stack.extend(attrs.values())
            for cls in kind.__mro__:
                for slot in cls.__dict__.get("__slots__", ()):
                    value = getattr(obj, slot, None)
                    if value is not None:
                        stack.append(value)
        except (RuntimeError, TypeError, ValueError):
            continue  # a container changed under us (a worker thread): skip it
    return total


# ------------------------------------------------------------------ log watching


class LogWatch:
    """Counts failures logged through twisted.logger that are not FuzzAppError."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.events = 0

    def __call__(self, event: dict[str, Any]) -> None:
        self.events += 1
        failure = event.get("log_failure")
        if failure is None:
            return
        if failure.check(FuzzAppError) is not None:
            return
        sig = failure_signature(failure)
        self.failures[sig] += 1
        self.examples.setdefault(sig, failure.getTraceback()[-3000:])

    @contextlib.contextmanager
    def watching(self) -> Iterator[LogWatch]:
        globalLogPublisher.addObserver(self)
        try:
            yield self
        finally:
            globalLogPublisher.removeObserver(self)


def failure_signature(failure: Failure) -> str:
    """Type and innermost frame: one line that tells two bugs apart."""
    frames = failure.frames
    where = ""
    if frames:
        name, path, line = frames[-1][0], frames[-1][1], frames[-1][2]
        where = f" at {os.path.basename(path)}:{line} in {name}"
    return f"{failure.type.__name__}{where}"


def exception_signature(exc: BaseException) -> str:
    return failure_signature(Failure(exc))


# ------------------------------------------------------------------ findings


@dataclass
class Stats:
    """What one target's run saw."""

    target: str
    inputs: int = 0
    bytes_fed: int = 0
    seconds: float = 0.0
    answered: int = 0
    closed: int = 0
    waiting: int = 0
    input_stalled: int = 0
    liveness_checks: int = 0
    crashes: Counter[str] = field(default_factory=Counter)
    hangs: int = 0
    leaks: Counter[str] = field(default_factory=Counter)
    over_bound: Counter[str] = field(default_factory=Counter)
    dead_listener: Counter[str] = field(default_factory=Counter)
    logged: Counter[str] = field(default_factory=Counter)
    peak_held: int = 0
    peak_written_after_pause: int = 0
    examples: dict[str, bytes] = field(default_factory=dict)
    tracebacks: dict[str, str] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)

    def finding(self, kind: str, sig: str, data: bytes, tb: str = "") -> None:
        getattr(self, kind)[sig] += 1
        key = f"{kind}: {sig}"
        if key not in self.examples or len(data) < len(self.examples[key]):
            self.examples[key] = data
            if tb:
                self.tracebacks[key] = tb[-3000:]

    @property
    def bugs(self) -> int:
        return (sum(self.crashes.values()) + self.hangs + sum(self.leaks.values())
                + sum(self.over_bound.values()) + sum(self.dead_listener.values())
                + sum(self.logged.values()))

    def as_dict(self) -> dict[str, Any]:
        out = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()
               if k not in ("examples", "tracebacks")}
        # whole (a YAML input is at most ~1.1 MB): fuzz.py writes them out as reproducers
        out["examples"] = {k: v[:2 << 20].hex() for k, v in self.examples.items()}
        out["example_sizes"] = {k: len(v) for k, v in self.examples.items()}
        out["tracebacks"] = dict(self.tracebacks)
        return out


# ------------------------------------------------------------------ protocol harness


def has_budget() -> bool:
    """Whether the listeners bound body memory per connection (issue 14 item 7)."""
    from daemonapp.listeners import LISTENER_OPTIONS

    return "max_buffer_bytes" in LISTENER_OPTIONS


def open_fds() -> int:
    """Descriptors open in this process (0 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _listener_module() -> str:
    """The name under which this module is importable (for "module:callable" targets)."""
    return __name__


class ProtocolHarness:
    """One listener per app kind for one protocol, and the driver of one input."""

    APP_KINDS = ("native", "wsgi", "wsgi-threads")

    def __init__(self, protocol: str) -> None:
        from daemonapp.listeners import build_listener

        global CLOCK
        self.protocol = protocol
        self.reactor = FuzzReactor()
        CLOCK = self.reactor
        module = _listener_module()
        sys.modules.setdefault(module, sys.modules[__name__])
        base = {"protocol": protocol, "endpoint": "tcp:0",
                "max_param_bytes": MAX_PARAM_BYTES, "max_body_bytes": MAX_BODY_BYTES,
                "request_timeout": REQUEST_TIMEOUT}
        if has_budget():
            base["max_buffer_bytes"] = MAX_BUFFER_BYTES
        kinds = {"native": {"native": f"{module}:echo_native"},
                 "wsgi": {"wsgi": f"{module}:echo_wsgi", "threads": 0},
                 "wsgi-threads": {"wsgi": f"{module}:echo_wsgi", "threads": 2}}
        self.listeners = {kind: build_listener({**base, **extra}, reactor=self.reactor,
                                               base_dir=tempfile.gettempdir())
                          for kind, extra in kinds.items()}
        self.budget = has_budget()
        self.peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.host = IPv4Address("TCP", "127.0.0.1", 8080)

    def close(self) -> None:
        for listener in self.listeners.values():
            app = getattr(listener, "app", None)
            stop = getattr(app, "stop", None)
            if callable(stop):
                with contextlib.suppress(Exception):
                    stop()

    def connect(self, kind: str, read_limit: int | None = None) -> tuple[Any, FuzzTransport]:
        listener = self.listeners[kind]
        proto = listener.factory.buildProtocol(self.peer)
        transport = FuzzTransport(read_limit=read_limit, peerAddress=self.peer,
                                  hostAddress=self.host)
        proto.makeConnection(transport)
        return proto, transport

    def skip_set(self, kind: str, transport: FuzzTransport) -> list[object]:
        listener = self.listeners[kind]
        return [self.reactor, listener, listener.factory, listener.dispatcher, transport,
                getattr(listener, "app", None), getattr(listener.dispatcher, "app", None),
                getattr(listener.factory, "factory_tracker", None)]

    def valid_request(self, body: bytes = b"ping") -> bytes:
        return VALID[self.protocol](body)

    def answered_ok(self, out: bytes, body: bytes) -> bool:
        if self.protocol == "fastcgi":
            out = fcgi_stdout(out)
        if self.protocol == "http":
            return out.startswith(b"HTTP/1.1 200 ") and body in out
        return out.startswith(b"Status: 200 ") and body in out

    # -- one input ------------------------------------------------------------------

    def run(self, data: bytes, stats: Stats, *, seed: int = 0,
            kind: str | None = None, read_limit: int | None = None) -> str:
        """Feed ``data`` on a new connection, then silence, then the peer goes away.

        Returns the outcome: answered, closed, or waiting (open, nothing written).
        """
        rng = random.Random(zlib.crc32(data) ^ seed)
        if kind is None:
            pick = rng.random()
            kind = "native" if pick < 0.48 else "wsgi" if pick < 0.96 else "wsgi-threads"
        if read_limit is None and rng.random() < 0.1:
            read_limit = rng.choice((0, 100, 65536))
        stats.inputs += 1
        stats.bytes_fed += len(data)
        BIG_LEFT[0] = 16
        fds_before = open_fds()
        listener = self.listeners[kind]
        reactor = self.reactor
        threads = kind == "wsgi-threads"
        outcome = "waiting"
        proto: Any = None
        transport: FuzzTransport | None = None
        skip: list[object] = []
        peak = 0
        step = ""
        try:
            step = "connect"
            proto, transport = self.connect(kind, read_limit)
            skip = self.skip_set(kind, transport)
            step = "dataReceived"
            chunks = list(split(data, rng))
            measure_every = max(1, len(chunks) // 3)
            for index, chunk in enumerate(chunks):
                if transport.closed:
                    break  # a tcp or unix transport stops reading at loseConnection
                if transport.input_paused:
                    if threads:
                        reactor.settle()
                    if transport.input_paused:
                        reactor.advance(0)
                    if transport.input_paused:
                        stats.input_stalled += 1
                        break  # a paused transport reads nothing more: the rest waits
                proto.dataReceived(chunk)
                if threads and index % measure_every == 0:
                    reactor.settle(quiet=0.0005)
                if index % measure_every == 0:
                    peak = max(peak, held_bytes(proto, skip))
            step = "timers"
            reactor.advance(0)
            if threads:
                reactor.settle()
            peak = max(peak, held_bytes(proto, skip))
            for delay in (1.0, 5.0, REQUEST_TIMEOUT, SILENCE):
                reactor.advance(delay)
            if threads:
                reactor.settle()
            if transport.written:
                outcome = "answered"
            elif transport.closed or transport.write_closed:
                outcome = "closed"
            step = "connectionLost"
            proto.connectionLost(Failure(ConnectionDone("fuzz: the peer went away")))
            proto = None
            reactor.advance(0)
            if threads and not reactor.settle(lambda: listener.dispatcher.in_flight == 0,
                                              timeout=5.0):
                stats.hangs += 1
                stats.finding("leaks", "a WSGI thread still runs 5 s after close", data)
            step = "after close"
            reactor.advance(SILENCE)
        except Exception as exc:
            sig = f"{step}: {exception_signature(exc)}"
            stats.finding("crashes", sig, data, Failure(exc).getTraceback())
            outcome = "crashed"
            if proto is not None:
                with contextlib.suppress(Exception):
                    proto.connectionLost(Failure(ConnectionDone()))
            with contextlib.suppress(Exception):
                reactor.advance(SILENCE)
                if threads:
                    reactor.settle()
        stats.outcomes[f"{kind}:{outcome}"] += 1
        if outcome == "answered":
            stats.answered += 1
        elif outcome == "closed":
            stats.closed += 1
        elif outcome == "waiting":
            stats.waiting += 1
        stats.peak_held = max(stats.peak_held, peak)
        requests = max(1, count_requests(self.protocol, data))
        bound = REQUEST_BOUND * requests
        if self.budget:
            bound = min(bound, CONNECTION_BOUND + requests * MAX_PARAM_BYTES)
        if peak > bound:
            stats.finding("over_bound", f"{self.protocol} held {peak // 1024} KiB", data)
        fds_after = open_fds()
        if fds_after > fds_before and not threads:
            stats.finding("leaks", f"{fds_after - fds_before} fd(s) left open after close",
                          data)
        if transport is not None:
            stats.peak_written_after_pause = max(stats.peak_written_after_pause,
                                                 transport.after_pause)
            if transport.after_pause > WRITE_AFTER_PAUSE_BOUND:
                stats.finding("over_bound", "written to a client that never reads", data)
        self.check_leaks(data, stats)
        return outcome

    def check_leaks(self, data: bytes, stats: Stats) -> None:
        for kind, listener in self.listeners.items():
            snap = listener.snapshot()
            for key in ("connections", "in_flight", "queued"):
                if snap.get(key):
                    stats.finding("leaks", f"{kind}: {key} {snap[key]} after close", data)
                    self.reset(kind)
        left = [call for call in self.reactor.getDelayedCalls() if call.active()]
        if left:
            stats.finding("leaks", f"{len(left)} timer(s) left after close", data)
            for call in left:
                call.cancel()

    def reset(self, kind: str) -> None:
        """Forget leaked state so that one finding does not repeat on every input."""
        from daemonapp.listeners import build_listener  # noqa: F401  (kept importable)

        listener = self.listeners[kind]
        for proto in list(listener.factory.connections):
            with contextlib.suppress(Exception):
                proto.connectionLost(Failure(ConnectionDone()))

    def liveness(self, stats: Stats, data: bytes = b"") -> bool:
        """A fresh connection with a valid request gets its answer, on every app kind."""
        ok = True
        for kind in self.APP_KINDS:
            stats.liveness_checks += 1
            body = b"alive-%d" % stats.liveness_checks
            try:
                proto, transport = self.connect(kind)
                proto.dataReceived(self.valid_request(body))
                self.reactor.advance(0)
                if kind == "wsgi-threads":
                    self.reactor.settle(
                        lambda t=transport, b=body: self.answered_ok(t.value(), b), timeout=5.0)
                out = transport.value()
                proto.connectionLost(Failure(ConnectionDone()))
                self.reactor.advance(SILENCE)
                if kind == "wsgi-threads":
                    self.reactor.settle()
            except Exception as exc:
                stats.finding("dead_listener", f"{kind}: {exception_signature(exc)}", data)
                ok = False
                continue
            if not self.answered_ok(out, body):
                stats.finding("dead_listener", f"{kind}: no answer to a valid request "
                                               f"({out[:60]!r})", data)
                ok = False
        return ok


def split(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` in pieces: whole, byte by byte (small inputs), or up to 64 random sizes."""
    pick = rng.random()
    size = len(data)
    if pick < 0.25 or size < 2:
        yield data
        return
    if pick < 0.35 and size <= 600:
        for index in range(size):
            yield data[index:index + 1]
        return
    cuts = sorted(rng.sample(range(1, size), min(size - 1, rng.choice((1, 2, 5, 20, 63)))))
    start = 0
    for cut in [*cuts, size]:
        yield data[start:cut]
        start = cut


def count_requests(protocol: str, data: bytes) -> int:
    """Requests an input may open at once (the bound on what it may hold scales with it)."""
    if protocol == "fastcgi":
        return max(1, len({rid for rtype, rid, *_ in lenient_records(data)
                           if rtype == FCGI_BEGIN}))
    if protocol == "http":
        return max(1, data.count(b"HTTP/"))
    return 1


# ------------------------------------------------------------------ FastCGI


FCGI_HEADER = struct.Struct("!BBHHBx")
FCGI_BEGIN, FCGI_ABORT, FCGI_END, FCGI_PARAMS, FCGI_STDIN = 1, 2, 3, 4, 5
FCGI_STDOUT, FCGI_STDERR, FCGI_DATA, FCGI_GET_VALUES = 6, 7, 8, 9


def fcgi_record(rtype: int, rid: int, content: bytes = b"", padding: int = 0, *,
                version: int = 1, clen: int | None = None) -> bytes:
    size = len(content) if clen is None else clen
    return FCGI_HEADER.pack(version, rtype, rid, size & 0xFFFF, padding) + content \
        + b"\0" * padding


def fcgi_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for name, value in pairs:
        for item in (name, value):
            out += bytes([len(item)]) if len(item) < 128 else \
                struct.pack("!I", len(item) | 0x80000000)
        out += name + value
    return bytes(out)


def fcgi_stream(rtype: int, rid: int, content: bytes, rng: random.Random | None = None,
                end: bool = True) -> bytes:
    out = []
    pos = 0
    while pos < len(content):
        size = 65535 if rng is None else rng.choice((1, 7, 100, 8192, 65535))
        out.append(fcgi_record(rtype, rid, content[pos:pos + size],
                               0 if rng is None else rng.choice((0, 0, 0, 1, 7, 255))))
        pos += size
    if end:
        out.append(fcgi_record(rtype, rid))
    return b"".join(out)


def fcgi_request(rid: int = 1, body: bytes = b"", path: str = "/", *, method: str = "",
                 keep_conn: bool = True, extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    method = method or ("POST" if body else "GET")
    pairs = [(b"REQUEST_METHOD", method.encode()), (b"SCRIPT_NAME", b""),
             (b"PATH_INFO", path.encode()), (b"CONTENT_LENGTH", b"%d" % len(body)),
             *extra]
    return (fcgi_record(FCGI_BEGIN, rid, struct.pack("!HB5x", 1, int(keep_conn)))
            + fcgi_stream(FCGI_PARAMS, rid, fcgi_pairs(pairs))
            + fcgi_stream(FCGI_STDIN, rid, body))


def lenient_records(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(type, id, version, padding, content) of the whole records in ``data``."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        version, rtype, rid, clen, plen = FCGI_HEADER.unpack_from(data, pos)
        content = data[pos + 8:pos + 8 + clen]
        out.append((rtype, rid, version, plen, content))
        pos += 8 + clen + plen
    return out


def fcgi_stdout(data: bytes) -> bytes:
    return b"".join(content for rtype, _, _, _, content in lenient_records(data)
                    if rtype == FCGI_STDOUT)


def gen_fastcgi(rng: random.Random) -> bytes:
    """A stream of FastCGI records: mostly well-formed requests, multiplexed and odd."""
    ids = [rng.choice((1, 1, 2, 3, 0, 65535, rng.randrange(65536)))
           for _ in range(rng.choice((1, 1, 1, 2, 3, 8)))]
    streams: list[list[bytes]] = []
    for rid in ids:
        body = rand_body(rng)
        pairs = [(b"REQUEST_METHOD", rng.choice((b"GET", b"POST", b"HEAD", b"", b"X" * 300))),
                 (b"PATH_INFO", rng.choice(APP_PATHS).encode()),
                 (b"SCRIPT_NAME", rng.choice((b"", b"/app"))),
                 (b"CONTENT_LENGTH", rand_length(rng, len(body)))]
        for _ in range(rng.choice((0, 0, 1, 3, 20))):
            pairs.append((rand_bytes(rng, rng.choice((1, 10, 127, 128, 300))),
                          rand_bytes(rng, rng.choice((0, 1, 127, 128, 1000, 5000)))))
        if rng.random() < 0.2:
            pairs.append((b"HTTP_CONTENT_LENGTH", rand_length(rng, len(body))))
        rng.shuffle(pairs) if rng.random() < 0.1 else None
        role = 1 if rng.random() < 0.9 else rng.choice((0, 2, 3, 65535))
        flags = rng.choice((0, 1, 1, 255))
        records = [fcgi_record(FCGI_BEGIN, rid, struct.pack("!HB5x", role, flags),
                               rng.choice((0, 0, 3)))]
        params = fcgi_pairs(pairs)
        records += split_records(FCGI_PARAMS, rid, params, rng)
        if rng.random() < 0.9:
            records += split_records(FCGI_STDIN, rid, body, rng)
        if rng.random() < 0.1:
            records.insert(rng.randrange(len(records) + 1), fcgi_record(FCGI_ABORT, rid))
        if rng.random() < 0.1:
            records.insert(rng.randrange(len(records) + 1),
                           fcgi_record(FCGI_DATA, rid, rand_bytes(rng, 50)))
        streams.append(records)
    extra = []
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        rtype = rng.choice((FCGI_GET_VALUES, FCGI_GET_VALUES, 11, 12, 200, FCGI_END,
                            FCGI_STDOUT, FCGI_STDERR))
        content = fcgi_pairs([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MPXS_CONNS", b"")]) \
            if rtype == FCGI_GET_VALUES else rand_bytes(rng, rng.choice((0, 8, 100)))
        extra.append(fcgi_record(rtype, rng.choice((0, 0, 1)), content))
    # interleave the requests' records, keeping each request's own order
    out: list[bytes] = []
    queues = [deque(s) for s in streams] + [deque(extra)]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.popleft())
    return b"".join(out)


def split_records(rtype: int, rid: int, content: bytes, rng: random.Random) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(content):
        size = rng.choice((1, 5, 127, 1000, 65535))
        out.append(fcgi_record(rtype, rid, content[pos:pos + size],
                               rng.choice((0, 0, 0, 1, 255))))
        pos += size
    if rng.random() < 0.95:
        out.append(fcgi_record(rtype, rid))
    return out


def mutate_fastcgi_fields(data: bytes, rng: random.Random) -> bytes:
    """Change one header field of one record (its length lies about its content...)."""
    records = lenient_records(data)
    if not records:
        return data
    index = rng.randrange(len(records))
    rtype, rid, version, plen, content = records[index]
    which = rng.randrange(7)
    clen: int | None = None
    if which == 0:
        version = rng.choice((0, 2, 255))
    elif which == 1:
        rtype = rng.choice((0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 255))
    elif which == 2:
        rid = rng.choice((0, 1, 2, 65535))
    elif which == 3:
        clen = rng.choice((0, 65535, len(content) + 1, max(0, len(content) - 1), 8))
    elif which == 4:
        plen = rng.choice((0, 255))
    elif which == 5:
        del records[index]
        return b"".join(fcgi_record(t, r, c, p, version=v) for t, r, v, p, c in records)
    else:
        records.insert(index, records[index])
        return b"".join(fcgi_record(t, r, c, p, version=v) for t, r, v, p, c in records)
    parts = [fcgi_record(t, r, c, p, version=v) for t, r, v, p, c in records]
    parts[index] = fcgi_record(rtype, rid, content, plen, version=version, clen=clen)
    return b"".join(parts)


# ------------------------------------------------------------------ SCGI


def scgi_request(body: bytes = b"", path: str = "/", method: str = "",
                 extra: Iterable[tuple[bytes, bytes]] = (),
                 length: bytes | None = None) -> bytes:
    method = method or ("POST" if body else "GET")
    items = [(b"CONTENT_LENGTH", b"%d" % len(body) if length is None else length),
             (b"SCGI", b"1"), (b"REQUEST_METHOD", method.encode()),
             (b"PATH_INFO", path.encode()), *extra]
    header = b"".join(k + b"\0" + v + b"\0" for k, v in items)
    return b"%d:%s,%s" % (len(header), header, body)


def gen_scgi(rng: random.Random) -> bytes:
    body = rand_body(rng)
    extra = [(rand_bytes(rng, rng.choice((1, 10, 100)), no_nul=True),
              rand_bytes(rng, rng.choice((0, 10, 2000)), no_nul=True))
             for _ in range(rng.choice((0, 0, 1, 5)))]
    if rng.random() < 0.2:
        extra.append((b"HTTP_CONTENT_LENGTH", rand_length(rng, len(body))))
    if rng.random() < 0.1:
        extra.append((b"HTTP_TRANSFER_ENCODING", b"chunked"))
    if rng.random() < 0.2:
        extra.append((b"DAEMONAPP_CGI_FRONTEND", b"1"))
    data = scgi_request(body, rng.choice(APP_PATHS),
                        rng.choice(("", "GET", "POST", "HEAD", "PUT")), extra,
                        rand_length(rng, len(body)))
    if rng.random() < 0.1:
        data += rand_bytes(rng, 100)  # bytes after the body
    return data


# ------------------------------------------------------------------ HTTP


def http_request(body: bytes = b"", path: str = "/", method: str = "", *,
                 headers: Iterable[tuple[bytes, bytes]] = (), chunked: bool = False,
                 version: bytes = b"HTTP/1.1") -> bytes:
    method = method or ("POST" if body else "GET")
    lines = [b"%s %s %s" % (method.encode(), path.encode(), version), b"Host: fuzz"]
    lines += [k + b": " + v for k, v in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                           for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
    else:
        if body or method == "POST":
            lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def gen_http(rng: random.Random) -> bytes:
    out = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        body = rand_body(rng)
        headers = []
        for _ in range(rng.choice((0, 0, 1, 4, 30))):
            headers.append((rng.choice((b"X-A", b"Cookie", b"Content-Type", b"Expect",
                                        b"Connection", b"Content-Length", b"Host",
                                        b"Transfer-Encoding", rand_bytes(rng, 20))),
                            rng.choice((b"1", b"close", b"keep-alive", b"100-continue",
                                        b"chunked", b"gzip, chunked", b"text/plain",
                                        rand_bytes(rng, rng.choice((1, 100, 5000)))))))
        chunked = rng.random() < 0.25
        data = http_request(body, rng.choice(APP_PATHS),
                            rng.choice(("", "GET", "POST", "HEAD", "OPTIONS", "G\x00T")),
                            headers=headers, chunked=chunked,
                            version=rng.choice((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0",
                                                b"HTTP/2.0", b"HTTP/1.1x", b"")))
        if chunked and rng.random() < 0.3:  # odd chunk sizes and extensions
            data = data.replace(b"\r\n3e8\r\n", rng.choice(
                (b"\r\n3e8;ext=1\r\n", b"\r\nffffffffffffffff\r\n", b"\r\n-1\r\n",
                 b"\r\n 3e8\r\n", b"\r\n3E8\r\n")), 1)
        out.append(data)
    return b"".join(out)


VALID: dict[str, Callable[[bytes], bytes]] = {
    "fastcgi": lambda body: fcgi_request(1, body, "/", method="POST"),
    "scgi": lambda body: scgi_request(body, "/", "POST"),
    "http": lambda body: http_request(body, "/", "POST"),
}
GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "fastcgi": gen_fastcgi, "scgi": gen_scgi, "http": gen_http,
}


# ------------------------------------------------------------------ shared pieces


_TEXT = bytes(b"abcXYZ019_-/. =%"[i % 16] for i in range(256))


def rand_bytes(rng: random.Random, size: int, no_nul: bool = False) -> bytes:
    pick = rng.random()
    if pick < 0.5:
        data = rng.randbytes(min(size, 64)).translate(_TEXT)
        data = (data * (size // max(1, len(data)) + 1))[:size]
    elif pick < 0.8:
        data = rng.randbytes(size)
    else:
        data = bytes([rng.choice((0, 0x7F, 0x80, 0xC3, 0xFF, 0x0A, 0x0D, 0x3A, 0x2C))]) * size
    return data.replace(b"\0", b"0") if no_nul else data


def rand_body(rng: random.Random) -> bytes:
    size = rng.choice((0, 0, 0, 1, 5, 100, 300, 4000))
    if rng.random() < 0.03:
        size = rng.choice((70000, MAX_BODY_BYTES, MAX_BODY_BYTES + 1))
    return rand_bytes(rng, size) if size < 5000 else b"b" * size


def rand_length(rng: random.Random, real: int) -> bytes:
    """A length field: mostly right, sometimes a lie or not a number at all."""
    pick = rng.random()
    if pick < 0.8:
        return b"%d" % real
    return rng.choice((b"", b"-1", b"+5", b" 5", b"5 ", b"0x10", b"1e3", b"99999999999999999999",
                       b"9" * 5000, "\u00b2".encode("latin-1"), "\u0663".encode(), b"00005",
                       b"%d" % (real + 1), b"%d" % max(0, real - 1), b"4294967296"))


_NUMBER = re.compile(rb"\d+")


def mutate_bytes(data: bytes, rng: random.Random, corpus: list[bytes],
                 protocol: str = "") -> bytes:
    """One to four mutations of ``data``: structure-aware ones and plain byte ones."""
    for _ in range(rng.choice((1, 1, 2, 4))):
        op = rng.randrange(11 if protocol == "fastcgi" else 10)
        size = len(data)
        if op == 0 and size:  # flip a bit
            pos = rng.randrange(size)
            data = data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]
        elif op == 1 and size:  # set a byte to an interesting value
            pos = rng.randrange(size)
            data = data[:pos] + bytes([rng.choice((0, 1, 0x7F, 0x80, 0xFF, 10, 13, 58, 44))]) \
                + data[pos + 1:]
        elif op == 2:  # insert bytes
            pos = rng.randrange(size + 1)
            data = data[:pos] + rand_bytes(rng, rng.choice((1, 4, 64, 1000))) + data[pos:]
        elif op == 3 and size:  # delete a range
            pos = rng.randrange(size)
            data = data[:pos] + data[pos + rng.choice((1, 8, 100, size)):]
        elif op == 4 and size:  # duplicate a range
            pos = rng.randrange(size)
            end = min(size, pos + rng.choice((8, 100, 1000, size)))
            data = data[:end] + data[pos:end] + data[end:]
        elif op == 5 and size:  # truncate
            data = data[:rng.randrange(size)]
        elif op == 6 and corpus:  # splice with another input
            other = rng.choice(corpus)
            data = data[:rng.randrange(size + 1)] + other[rng.randrange(len(other) + 1):]
        elif op == 7:  # a number in the text (a length) becomes a lie or not a number
            numbers = list(_NUMBER.finditer(data))
            if numbers:
                match = rng.choice(numbers)
                data = data[:match.start()] + rand_length(rng, int(match.group()[:18])) \
                    + data[match.end():]
        elif op == 8:  # append a valid request after whatever this is
            data = data + VALID.get(protocol, lambda b: b)(b"tail")
        elif op == 9 and size:  # replace a line ending or separator
            for old, new in ((b"\r\n", b"\n"), (b"\0", b"\0\0"), (b":", b"::"), (b",", b"")):
                if old in data and rng.random() < 0.5:
                    data = data.replace(old, new, 1)
        elif op == 10:
            data = mutate_fastcgi_fields(data, rng)
    return data[:4 * 1024 * 1024]


# ------------------------------------------------------------------ the loop


def fuzz_protocol(protocol: str, *, inputs: int, seconds: float, seed: int,
                  stats: Stats | None = None, liveness_every: int = 200,
                  progress: Callable[[Stats], None] | None = None) -> Stats:
    """Generated and mutated inputs until ``inputs`` or ``seconds`` is reached.

    A small corpus keeps inputs that gave an outcome not seen before for their app
    kind (a poor man's feedback, where atheris is not used).
    """
    stats = stats or Stats(protocol)
    rng = random.Random(seed)
    harness = ProtocolHarness(protocol)
    generate = GENERATORS[protocol]
    corpus: list[bytes] = [VALID[protocol](b"hello")]
    seen: set[tuple[str, int, int]] = set()
    watch = LogWatch()
    start = time.monotonic()
    try:
        with watch.watching():
            while stats.inputs < inputs and time.monotonic() - start < seconds:
                pick = rng.random()
                if pick < 0.4 or not corpus:
                    data = generate(rng)
                else:
                    data = mutate_bytes(rng.choice(corpus), rng, corpus, protocol)
                before = stats.bugs
                outcome = harness.run(data, stats, seed=seed)
                sig = (outcome, len(harness_output_shape(stats)), stats.bugs - before)
                if sig not in seen or rng.random() < 0.01:
                    seen.add(sig)
                    if len(data) < 200_000:
                        corpus.append(data)
                        if len(corpus) > 500:
                            corpus.pop(rng.randrange(1, len(corpus)))
                if stats.inputs % liveness_every == 0:
                    harness.liveness(stats, data)
                if progress is not None and stats.inputs % 2000 == 0:
                    stats.seconds = time.monotonic() - start
                    progress(stats)
            harness.liveness(stats)
    finally:
        harness.close()
        stats.seconds = time.monotonic() - start
        for sig, count in watch.failures.items():
            stats.logged[sig] += count
            stats.tracebacks.setdefault(f"logged: {sig}", watch.examples[sig])
    return stats


def harness_output_shape(stats: Stats) -> Counter[str]:
    return stats.outcomes


# ------------------------------------------------------------------ memory scenarios


@dataclass
class Scenario:
    """A hostile peer fed as a stream: what it sends, and how it reads."""

    name: str
    protocol: str
    pieces: Callable[[int], Iterator[bytes]]  # total bytes -> the stream
    kind: str = "native"
    read_limit: int | None = None
    slow: float = 0.0  # clock seconds between pieces (a slow sender)
    connections: int = 1
    known: str = ""  # a known bug this scenario hits (listed, not a test failure)
    bound: int = REQUEST_BOUND
    scale: float = 1.0  # share of the byte budget this scenario sends

    @property
    def traced_bound(self) -> int:
        """tracemalloc's peak may also see the answers on their way out (an echo of a
        whole body, copies while it is framed): a few bodies more than ``bound``."""
        return 2 * self.bound + 4 * MAX_BODY_BYTES


def _endless(head: bytes, piece: bytes) -> Callable[[int], Iterator[bytes]]:
    def pieces(total: int) -> Iterator[bytes]:
        yield head
        sent = len(head)
        while piece and sent < total:
            yield piece
            sent += len(piece)
    return pieces


def _fcgi_multiplexed(total: int) -> Iterator[bytes]:
    """100 requests on one connection, each with a body that never ends."""
    for rid in range(1, 101):
        yield fcgi_record(FCGI_BEGIN, rid, struct.pack("!HB5x", 1, 1)) \
            + fcgi_stream(FCGI_PARAMS, rid, fcgi_pairs([
                (b"REQUEST_METHOD", b"POST"), (b"PATH_INFO", b"/"),
                (b"CONTENT_LENGTH", b"%d" % MAX_BODY_BYTES)]))
    sent = 0
    piece = b"m" * 8192
    while sent < total:
        for rid in range(1, 101):
            yield fcgi_record(FCGI_STDIN, rid, piece)
            sent += len(piece) + 8


def _byte_by_byte(data: bytes) -> Callable[[int], Iterator[bytes]]:
    def pieces(total: int) -> Iterator[bytes]:
        for index in range(min(total, len(data))):
            yield data[index:index + 1]
    return pieces


def scenarios() -> list[Scenario]:
    """Huge length fields, endless records, slow senders, clients that never read."""
    big_len = b"%d" % (MAX_BODY_BYTES - 1)
    fcgi_post = (fcgi_record(FCGI_BEGIN, 1, struct.pack("!HB5x", 1, 1))
                 + fcgi_stream(FCGI_PARAMS, 1, fcgi_pairs([
                     (b"REQUEST_METHOD", b"POST"), (b"PATH_INFO", b"/"),
                     (b"CONTENT_LENGTH", big_len)])))
    fcgi_big = b"".join(fcgi_request(rid, b"", "/big") for rid in (1,))
    slow_header = http_request(b"", "/", "GET", headers=[(b"X-Slow", b"s" * 2000)])
    return [
        # huge length fields
        Scenario("fastcgi record of 65535 bytes never sent", "fastcgi",
                 _endless(FCGI_HEADER.pack(1, FCGI_STDIN, 1, 65535, 255), b"")),
        Scenario("fastcgi PARAMS pair claiming 2 GiB", "fastcgi",
                 _endless(fcgi_record(FCGI_BEGIN, 1, struct.pack("!HB5x", 1, 1))
                          + fcgi_record(FCGI_PARAMS, 1, b"\xff\xff\xff\xff\x01"),
                          fcgi_record(FCGI_PARAMS, 1, b"p" * 1000))),
        Scenario("scgi netstring of 9,999,999,999 bytes", "scgi",
                 _endless(b"9999999999:CONTENT_LENGTH\0", b"h" * 4096)),
        Scenario("scgi CONTENT_LENGTH 10^19", "scgi",
                 _endless(scgi_request(b"", "/", "POST", (), b"9" * 20), b"b" * 8192)),
        Scenario("http Content-Length 10^14", "http",
                 _endless(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000000000"
                          b"\r\n\r\n", b"b" * 8192)),
        Scenario("http chunk size 2^64-1", "http",
                 _endless(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"ffffffffffffffff\r\n", b"c" * 8192)),
        # endless records
        Scenario("fastcgi endless STDIN (native: whole body)", "fastcgi",
                 _endless(fcgi_post, fcgi_record(FCGI_STDIN, 1, b"s" * 8192))),
        Scenario("fastcgi endless STDIN (wsgi threads: streamed)", "fastcgi",
                 _endless(fcgi_post, fcgi_record(FCGI_STDIN, 1, b"s" * 8192)),
                 kind="wsgi-threads"),
        Scenario("fastcgi endless PARAMS", "fastcgi",
                 _endless(fcgi_record(FCGI_BEGIN, 1, struct.pack("!HB5x", 1, 1)),
                          fcgi_record(FCGI_PARAMS, 1, fcgi_pairs([(b"A" * 10, b"v" * 990)])))),
        Scenario("fastcgi endless DATA records", "fastcgi",
                 _endless(fcgi_post, fcgi_record(FCGI_DATA, 1, b"d" * 8192))),
        Scenario("fastcgi endless records for unknown ids", "fastcgi",
                 _endless(b"", fcgi_record(FCGI_STDIN, 7, b"u" * 8192))),
        Scenario("fastcgi 100 multiplexed endless bodies", "fastcgi", _fcgi_multiplexed,
                 known="" if has_budget() else
                 "issue 14 item 7: no per-connection budget for multiplexed bodies",
                 bound=CONNECTION_BOUND),
        Scenario("scgi endless header (no colon)", "scgi", _endless(b"", b"9" * 4096)),
        Scenario("scgi endless body (wsgi threads)", "scgi",
                 _endless(scgi_request(b"", "/", "POST", (), big_len), b"b" * 8192),
                 kind="wsgi-threads"),
        Scenario("http endless header line", "http",
                 _endless(b"GET / HTTP/1.1\r\nX-Long: ", b"x" * 4096)),
        Scenario("http endless headers", "http",
                 _endless(b"GET / HTTP/1.1\r\n", b"X-H: " + b"y" * 90 + b"\r\n")),
        Scenario("http endless chunked body", "http",
                 _endless(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                          b"2000\r\n" + b"c" * 8192 + b"\r\n")),
        Scenario("http endless pipelined requests", "http",
                 _endless(b"", http_request(b"", "/", "GET")), scale=0.05),
        # clients that never read
        Scenario("fastcgi endless unknown-type records, never read", "fastcgi",
                 _endless(b"", fcgi_record(200, 0, b"")), read_limit=65536),
        Scenario("fastcgi endless GET_VALUES, never read", "fastcgi",
                 _endless(b"", fcgi_record(FCGI_GET_VALUES, 0, fcgi_pairs(
                     [(b"FCGI_MAX_CONNS", b"")]))), read_limit=65536),
        Scenario("fastcgi /big requests, never read", "fastcgi",
                 _endless(b"", fcgi_big), read_limit=65536,
                 bound=REQUEST_BOUND + 4 * len(BIG)),
        Scenario("http /big pipelined, never read", "http",
                 _endless(b"", http_request(b"", "/big", "GET")), read_limit=65536,
                 bound=REQUEST_BOUND + 4 * len(BIG), scale=0.05),
        # slow senders
        Scenario("fastcgi request, 1 byte a second", "fastcgi",
                 _byte_by_byte(fcgi_request(1, b"slow body", "/")), slow=1.0),
        Scenario("scgi request, 1 byte a second", "scgi",
                 _byte_by_byte(scgi_request(b"slow body", "/")), slow=1.0),
        Scenario("http header, 1 byte a second", "http", _byte_by_byte(slow_header),
                 slow=1.0),
        Scenario("200 idle connections with half a header", "fastcgi",
                 _endless(fcgi_record(FCGI_BEGIN, 1, struct.pack("!HB5x", 1, 1))
                          + b"\x01\x04\x00", b""), connections=200),
        Scenario("200 idle scgi connections with half a header", "scgi",
                 _endless(b"50:CONTENT_LENGTH\x000\x00", b""), connections=200),
        Scenario("200 idle http connections with half a header", "http",
                 _endless(b"GET / HTTP/1.1\r\nHost: h\r\n", b""), connections=200),
    ]


@dataclass
class ScenarioResult:
    name: str
    protocol: str
    sent: int
    peak_held: int
    tracemalloc_peak: int
    written_after_pause: int
    outcome: str
    seconds: float
    known: str
    over: bool
    error: str = ""

    @property
    def per_connection(self) -> int:
        return self.tracemalloc_peak


def run_scenario(scenario: Scenario, total: int) -> ScenarioResult:
    """Stream ``total`` bytes of ``scenario`` (or until the peer is paused or closed)."""
    harness = ProtocolHarness(scenario.protocol)
    reactor = harness.reactor
    threads = scenario.kind == "wsgi-threads"
    started = time.monotonic()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    outcome = ""
    error = ""
    sent = peak = after_pause = 0
    conns: list[tuple[Any, FuzzTransport]] = []
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(scenario.connections):
            proto, transport = harness.connect(scenario.kind, scenario.read_limit)
            conns.append((proto, transport))
            skip = harness.skip_set(scenario.kind, transport)
            for count, piece in enumerate(scenario.pieces(int(total * scenario.scale))):
                if transport.closed:
                    break
                if transport.after_pause > 4 * WRITE_AFTER_PAUSE_BOUND:
                    break  # over the bound already: keep the harness itself small
                if scenario.read_limit is None and transport.io.tell() > 65536:
                    transport.discard()  # a client that reads: its answers are gone
                if transport.input_paused:
                    if threads:
                        reactor.settle()
                    reactor.advance(0)
                    if transport.input_paused:
                        break
                proto.dataReceived(piece)
                sent += len(piece)
                if scenario.slow:
                    reactor.advance(scenario.slow)
                if threads:
                    reactor.settle(quiet=0.0005)
                if count % 64 == 0:
                    peak = max(peak, held_bytes(proto, skip))
            peak = max(peak, held_bytes(proto, skip))
        reactor.advance(0)
        if threads:
            reactor.settle()
        traced_peak = tracemalloc.get_traced_memory()[1] - base
        states: Counter[str] = Counter()
        for _, transport in conns:
            after_pause = max(after_pause, transport.after_pause)
            states["closed" if transport.closed else
                   "paused" if transport.input_paused else
                   "answered" if transport.written else "open"] += 1
            if transport.head:
                states[f"first bytes {transport.head[:12]!r}"] += 1
        outcome = ", ".join(f"{k} {v}" if scenario.connections > 1 else k
                            for k, v in states.items())
        for proto, _ in conns:
            proto.connectionLost(Failure(ConnectionDone()))
        reactor.advance(SILENCE)
        if threads:
            reactor.settle(lambda: all(v.dispatcher.in_flight == 0
                                       for v in harness.listeners.values()))
    except Exception as exc:
        error = exception_signature(exc)
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        harness.close()
        if not tracing:
            tracemalloc.stop()
    per_conn = traced_peak // max(1, scenario.connections)
    over = bool(error) or peak > scenario.bound or per_conn > scenario.traced_bound \
        or after_pause > WRITE_AFTER_PAUSE_BOUND
    return ScenarioResult(scenario.name, scenario.protocol, sent, peak, per_conn, after_pause,
                          outcome, time.monotonic() - started, scenario.known, over, error)


# ------------------------------------------------------------------ YAML


def yaml_seeds() -> list[str]:
    """etc/daemons.yaml, the YAML examples of docs/, and a file using every section."""
    seeds = []
    example = ROOT / "etc" / "daemons.yaml"
    if example.exists():
        seeds.append(example.read_text())
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            seeds.append(block)
    seeds.append(FULL_CONFIG)
    return seeds


FULL_CONFIG = """\
app:
  stay_alive_for: 15m
  shutdown_after: 1h
  shutdown_if_idle: 1m
  stop_timeout: 10s
  state_dir: var
  log: {format: json, level: warning, file: var/app.log}
  locks: {url: "sqlite:var/locks.db", ttl: 30s, wait: 1s}
defaults: &defaults
  run_every: 5s
  increase_idle_by: 5s
  maximum_idle: 30s
listeners:
  - protocol: fastcgi
    endpoint: unix:run/app.sock
    mode: "0660"
    wsgi: daemonapp.examples.queues:application
    threads: 4
    max_concurrent: 4
    backlog: 10
    queue_timeout: 5s
    request_timeout: 30s
    max_param_bytes: 64KiB
    max_body_bytes: 10MiB
    max_requests: 1000
    max_requests_jitter: 50
    allow_from: [127.0.0.1, "10.0.0.0/8"]
    script_name: /app
  - {protocol: scgi, endpoint: "tcp:8081:interface=127.0.0.1", native: "daemonapp.examples.queues:application"}
  - protocol: http
    endpoint: tcp:8080:interface=127.0.0.1
    wsgi: daemonapp.examples.queues:application
daemons:
  hello:
    type: daemonapp.examples.hello:Hello
    <<: *defaults
    max_items: 2
    names: [Ada, Grace, Linus]
  cleanup:
    type: file_cleanup
    run_every: 1h
    directory: /tmp/daemonapp-fuzz-none
    max_age: 7d
  queue:
    type: dir_queue
    directory: spool
    run_every: 10s
  command:
    type: command
    argv: [/bin/true, "--flag"]
    run_every: 1m
    lock: command-lock
cgi:
  min_load: 0.5
  max_load: 2
  start_timeout: 10s
  lock_timeout: 10s
  listener: 0
"""

YAML_VALUES = [
    "", "~", "null", "-1", "0", "1", "1e400", ".nan", ".inf", "-.inf", "1s", "30m", "0s",
    "999999999999999999999d", "1h30m", "yes", "no", "true", "[]", "{}", "[1, [2, [3]]]",
    "!!binary AAAA", "!!python/object:os.system", "!!str 5", "'unterminated", '"\\x00"',
    '"\\uD800"', "\t", "'" + "x" * 300 + "'", "é€𝄞", "unix:/" + "x" * 200, "tcp:99999",
    "tcp:0", "fd:0", "fd:-1", "unix:", "daemonapp.examples.hello:Hello",
    "daemonapp.examples.hello:Nope", "no.such.module:X", "file_cleanup", "dir_queue",
    "dir_queue_manager", "command", "0660", "0o777", "99999", "10MiB", "-5KiB", "1.5",
    "[a, b]", "{a: 1}", "*nowhere", "&anchor x", "? complex key", "- item", "|\n  block",
    ">\n  folded", "2001-01-01", "0x10", "+5", "..", "/", "../" * 50,
]
_KEY = re.compile(r"^(\s*)(- )?([A-Za-z_][\w.<-]*):", re.M)


def mutate_yaml(text: str, rng: random.Random, seeds: list[str], keys: list[str]) -> str:
    """One to three mutations of a YAML document (lines, keys, values, aliases, nesting)."""
    for _ in range(rng.choice((1, 1, 2, 3))):
        lines = text.split("\n")
        op = rng.randrange(14)
        index = rng.randrange(len(lines)) if lines else 0
        if op == 0 and lines:  # delete a line
            del lines[index]
        elif op == 1 and lines:  # duplicate a line
            lines.insert(index, lines[index])
        elif op == 2 and len(lines) > 1:  # swap two lines
            other = rng.randrange(len(lines))
            lines[index], lines[other] = lines[other], lines[index]
        elif op == 3 and lines:  # indentation
            line = lines[index]
            lines[index] = rng.choice((" ", "  ", "\t", "")) + line if rng.random() < 0.5 \
                else line[rng.choice((1, 2)):]
        elif op == 4:  # rename a key
            found = list(_KEY.finditer(text))
            if found and keys:
                match = rng.choice(found)
                text = text[:match.start(3)] + rng.choice(keys) + text[match.end(3):]
                continue
        elif op == 5 and lines:  # replace a value
            line = lines[index]
            if ":" in line:
                head = line.split(":", 1)[0]
                lines[index] = f"{head}: {rng.choice(YAML_VALUES)}"
            else:
                lines[index] = line + " " + rng.choice(YAML_VALUES)
        elif op == 6:  # an anchor on one value, aliases of it elsewhere
            found = [i for i, line in enumerate(lines) if re.match(r"^\s*[\w.-]+:\s*\S", line)]
            if found:
                first = rng.choice(found)
                head, value = lines[first].split(":", 1)
                lines[first] = f"{head}: &fz {value.strip()}"
                for _ in range(rng.choice((1, 3))):
                    target = rng.choice(found)
                    if target != first:
                        lines[target] = lines[target].split(":", 1)[0] + ": *fz"
        elif op == 7 and lines:  # deep nesting
            depth = rng.choice((10, 63, 64, 65, 200, 3000))
            opener, closer = rng.choice((("[", "]"), ("{a: ", "}")))
            line = lines[index]
            head = line.split(":", 1)[0] if ":" in line else "deep"
            lines[index] = f"{head}: " + opener * depth + "1" + closer * depth
        elif op == 8 and lines:  # a huge scalar
            size = rng.choice((5000, 70_000, 600_000, 1_100_000))
            line = lines[index]
            head = line.split(":", 1)[0] if ":" in line else "huge"
            lines[index] = f"{head}: " + rng.choice(("x", "9", "é")) * size
        elif op == 9:  # an alias bomb
            levels = rng.choice((3, 5, 6, 10))
            bomb = ['bomb0: &b0 ["l", "l", "l", "l", "l", "l", "l", "l", "l"]']
            bomb += [f"bomb{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]"
                     for i in range(1, levels)]
            where = rng.choice(("top", "value"))
            if where == "top":
                lines = bomb + lines
            elif lines and ":" in lines[index]:
                lines = bomb + lines
                lines[index + len(bomb)] = lines[index + len(bomb)].split(":", 1)[0] \
                    + f": *b{levels - 1}"
        elif op == 10:  # bytes-level noise
            data = bytearray(text.encode("utf-8", "surrogatepass"))
            if data:
                pos = rng.randrange(len(data))
                data[pos] = rng.choice((0, 0x80, 0xFF, 0x0D, 0x09, ord("&"), ord("*"),
                                        ord("!"), ord("%"), ord("{"), ord("["), ord("'")))
            text = data.decode("utf-8", "replace")
            continue
        elif op == 11:  # splice with another seed
            other = rng.choice(seeds).split("\n")
            lines = lines[:index] + other[rng.randrange(len(other) + 1):]
        elif op == 12:  # documents, directives, merge keys, recursive alias
            extra = rng.choice(("---", "...", "%YAML 1.1\n---", "%TAG ! tag:x,2000:\n---",
                                "<<: *fz", "<<: [*fz, *fz]", "self: &s [*s]", "? [a]\n: b",
                                "\ufeff", "--- !!set\n? a"))
            lines.insert(index, extra)
        else:  # truncate
            text = text[:rng.randrange(len(text) + 1)]
            continue
        text = "\n".join(lines)
    return text


class Hang(BaseException):
    """An input ran past its time limit (a BaseException: no ``except Exception`` in the
    code under test may turn it into an error message)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang


def yaml_one(path: Path, text: str, stats: Stats, *, timeout: float,
             measure: bool) -> tuple[str, int]:
    """Load one document and run `daemonapp check` on it; returns (outcome, traced peak)."""
    from daemonapp import cli
    from daemonapp.config import MAX_MESSAGE, ConfigError, load_config

    data = text.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    stats.inputs += 1
    stats.bytes_fed += len(data)
    if measure:
        tracemalloc.start()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    outcome = "ok"
    try:
        try:
            load_config(path, check_state_dir=True)
        except ConfigError as err:
            outcome = "config error"
            messages = err.messages
            if not messages or not all(isinstance(m, str) for m in messages):
                stats.finding("crashes", "ConfigError without messages", data)
            else:
                for message in messages:
                    if not message.startswith(str(path)):
                        stats.finding("crashes", "message not starting with the file "
                                      f"name: {message[:80]!r}", data)
                    if len(message) > MAX_MESSAGE + len(str(path)) + 100:
                        stats.finding("over_bound", "message over MAX_MESSAGE", data)
        else:
            out, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
                status = cli.main(["check", str(path)])
            if status != 0:
                stats.finding("crashes", f"load_config accepted, check exited {status}: "
                              f"{errors.getvalue()[-200:]!r}", data)
    except Hang:
        outcome = "hang"
        stats.hangs += 1
        stats.finding("crashes", f"hang: over {timeout:g} s", data)
    except Exception as exc:  # anything but ConfigError is a finding
        outcome = "crash"
        stats.finding("crashes", exception_signature(exc), data, Failure(exc).getTraceback())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        peak = 0
        if measure:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    stats.outcomes[outcome] += 1
    if outcome == "ok":
        stats.answered += 1
    elif outcome == "config error":
        stats.closed += 1
    stats.peak_held = max(stats.peak_held, peak)
    if peak > YAML_MEMORY_BOUND:
        stats.finding("over_bound", f"loading took {peak >> 20} MiB", data)
    return outcome, peak


#: What loading one file may take (a 1 MiB file, 100,000 aliased nodes).
YAML_MEMORY_BOUND = 256 * 1024 * 1024


def fuzz_yaml(*, inputs: int, seconds: float, seed: int, timeout: float = 10.0,
              measure_every: int = 25, stats: Stats | None = None,
              progress: Callable[[Stats], None] | None = None,
              avoid: Callable[[str], object] | None = None) -> Stats:
    """Mutated configuration files until ``inputs`` or ``seconds`` is reached.

    ``avoid``: files for which it is true are not tried (a known bug, kept out of a
    test's way while the others are still checked).
    """
    stats = stats or Stats("yaml")
    rng = random.Random(seed)
    seeds = yaml_seeds()
    keys = sorted({m.group(3) for seed_text in seeds for m in _KEY.finditer(seed_text)}
                  - {"jobs", "store"})
    corpus = list(seeds)
    start = time.monotonic()
    watch = LogWatch()
    with tempfile.TemporaryDirectory(prefix="daemonapp-fuzz-") as tmp, watch.watching():
        path = Path(tmp) / "conf" / "daemons.yaml"
        path.parent.mkdir()
        while stats.inputs < inputs and time.monotonic() - start < seconds:
            text = mutate_yaml(rng.choice(corpus), rng, seeds, keys)
            if avoid is not None and avoid(text):
                continue
            before = Counter(stats.outcomes)
            outcome, _ = yaml_one(path, text, stats, timeout=timeout,
                                  measure=stats.inputs % measure_every == 0)
            keep = outcome == "ok" or before[outcome] < 3 or rng.random() < 0.02
            if keep and len(text) < 100_000:
                corpus.append(text)
                if len(corpus) > 300:
                    corpus.pop(rng.randrange(len(seeds), len(corpus)))
            if progress is not None and stats.inputs % 500 == 0:
                stats.seconds = time.monotonic() - start
                progress(stats)
    stats.seconds = time.monotonic() - start
    for sig, count in watch.failures.items():
        stats.logged[sig] += count
    return stats
