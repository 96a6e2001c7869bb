"""The WSGI adapter (PEP 3333) shared by the FastCGI, SCGI and HTTP listeners.

Each request runs in a small bounded thread pool (``threads``, default 10), or on the
reactor itself when ``threads`` is 0 (for apps that never block). ``wsgi.input``
streams the body as it arrives (with bounded buffering: the peer is paused while the
app does not read); output is sent with flow control (the app's thread waits while the
peer is slow). Request params are never copied into ``os.environ`` (httpoxy).
"""

from __future__ import annotations

import collections
import io
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.cgi_frontend import content_headers_as_pep3333
from daemonapp.listeners.budget import SpoolReader
from daemonapp.listeners.exchange import Exchange, Headers, ascii_digits

log = Logger()

WSGIApplication = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

#: Bytes of request body buffered for an app that does not read yet, before pausing the peer.
INPUT_HIGH_WATER = 1024 * 1024
#: Bytes of response written by an app's thread and not yet given to the transport.
OUTPUT_HIGH_WATER = 256 * 1024


class RequestAborted(OSError):
    """The request ended (client gone, timeout, body too large) while the app ran."""


class WorkerPool:
    """A bounded set of daemon threads; the most recently idle one takes new work.

    Handing work to the thread that went idle last keeps few threads busy under light
    load (fewer context switches and GIL hand-overs); threads start on demand.
    """

    def __init__(self, size: int, name: str = "daemonapp-wsgi") -> None:
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._backlog: collections.deque[Callable[[], None]] = collections.deque()
        self._started = 0
        self._stopped = False

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` in a worker thread."""
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
                worker.work = work
                worker.wake.release()
                return
            if self._started < self.size and not self._stopped:
                self._started += 1
                worker = _Worker(self, work)
                thread = threading.Thread(target=worker.run,
                                          name=f"{self.name}-{self._started}", daemon=True)
                thread.start()
                return
            self._backlog.append(work)

    def _next(self, worker: _Worker) -> Callable[[], None] | None:
        """Called by a worker that finished: its next work, or None after it was parked."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            if self._stopped:
                return None
            worker.work = None
            self._idle.append(worker)
        worker.wake.acquire()
        return worker.work

    def _exited(self) -> None:
        with self._lock:
            self._started -= 1

    def start(self) -> None:
        """Accept work again after :meth:`stop` (threads start on demand)."""
        with self._lock:
            self._stopped = False

    def stop(self) -> None:
        """Let the threads exit once the queued work is done (does not wait)."""
        with self._lock:
            self._stopped = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.work = None
            worker.wake.release()


class _Worker:
    __slots__ = ("pool", "wake", "work")

    def __init__(self, pool: WorkerPool, work: Callable[[], None]) -> None:
        self.pool = pool
        self.work: Callable[[], None] | None = work
        self.wake = threading.Lock()
        self.wake.acquire()

    def run(self) -> None:
        work = self.work
        while work is not None:
            try:
                work()
            except BaseException:
                log.failure("WSGI worker failed")
            work = self.pool._next(self)
        self.pool._exited()


class CallPoster:
    """Runs calls from worker threads on the reactor, waking it once per batch.

    Under load several answers are ready between two reactor iterations; they then
    cost one wake-up instead of one each. Calls run in the order they were posted.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, function: Callable[..., Any], *args: Any) -> None:
        """From any thread: run ``function(*args)`` on the reactor soon."""
        self._calls.append((function, args))
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        self._reactor.callFromThread(self._run)

    def _run(self) -> None:
        with self._lock:
            self._scheduled = False
        calls = self._calls
        while calls:
            function, args = calls.popleft()
            try:
                function(*args)
            except Exception:
                log.failure("a call from a WSGI thread failed")


class StreamingInput:
    """``wsgi.input`` for a body that is still arriving: reads block in the app's thread."""

    def __init__(self, exchange: Exchange, call_from_thread: Callable[..., Any]) -> None:
        self._exchange = exchange
        self._call_from_thread = call_from_thread
        self._cond = threading.Condition()
        # a body spooled to disk (over the memory budget) is read from there first;
        # what arrives from now on is buffered here
        spool = exchange.spool
        self._file: SpoolReader | None = (spool.reader(call_from_thread) if spool is not None
                                          else None)
        body = exchange.body
        self._buf = bytearray(b"".join(body))
        body.clear()  # the memory stays counted in the budget until the request ends
        self._eof = exchange.body_complete
        self._error: str | None = None
        self._paused = False
        # a reader waits for more than the buffer holds: the peer must not be paused
        self._starving = False
        # how many bytes the waiting reader needs (0: any; None: nobody waits): it is
        # woken when they are there, not for every piece that arrives
        self._need: float | None = None

    # reactor side

    def feed(self, data: bytes) -> None:
        """More body arrived."""
        with self._cond:
            self._buf += data
            need = self._need
            if need is not None and len(self._buf) >= need:
                self._cond.notify_all()
            if (len(self._buf) > INPUT_HIGH_WATER and not self._paused
                    and not self._starving and not self._exchange._hold_paused):
                self._paused = True
                self._exchange._pause_input()

    def unpause(self) -> None:
        """Read from the peer again whatever the buffer holds (see Exchange.send_body)."""
        with self._cond:
            if self._paused:
                self._paused = False
                self._exchange._resume_input()

    def feed_eof(self) -> None:
        """The body is complete."""
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, reason: str) -> None:
        """The request ended: reads raise RequestAborted; the peer is read again.

        A connection left paused would never see the rest of the body nor its peer's
        close: it would stay open forever, and a drain would wait for it.
        """
        with self._cond:
            self._error = reason
            self._buf = bytearray()
            self._cond.notify_all()
            if self._paused:
                self._paused = False
                self._exchange._resume_input()

    # app thread side

    def _wait(self, ready: Callable[[], bool], need: float = 0) -> None:
        """Wait (holding the condition) until ``ready()``, the body's end or a failure.

        ``need``: how many buffered bytes could make ``ready()`` true (0: any), so that
        ``feed`` wakes this reader once, not for each piece of a large body. A reader
        that needs more than the buffer holds (``read(n)`` past the high-water mark, a
        long line) resumes a paused peer and keeps it reading until it is served: the
        app asked for those bytes, bounded by max_body_bytes.
        """
        while not ready() and not self._eof and self._error is None:
            self._starving = True
            self._need = need
            if self._paused:
                self._paused = False
                self._call_from_thread(self._exchange._resume_input)
            self._cond.wait()
        self._need = None
        self._starving = False
        if self._error is not None:
            raise RequestAborted(self._error)

    def _take(self, size: int) -> bytes:
        # One copy (the bytes the app gets), not two: slicing the bytearray first
        # would copy it once more, and a 20 MB read(CONTENT_LENGTH) would hold 3x.
        with memoryview(self._buf) as view:
            data = bytes(view[:size])
        del self._buf[:size]
        if self._paused and len(self._buf) < INPUT_HIGH_WATER // 2:
            self._paused = False
            self._call_from_thread(self._exchange._resume_input)
        return data

    def _from_file(self, size: int, line: bool = False) -> bytes:
        """Up to ``size`` bytes (a line with ``line``) of the spooled part, b"" at its end."""
        spool = self._file
        if spool is None:
            return b""
        data = spool.readline(size) if line else spool.read(size)
        if not data:
            self._close_file()
        return data

    def _close_file(self) -> None:
        """The spooled part is read: its file goes back to the listener (in the app's
        thread, which alone reads it)."""
        spool, self._file = self._file, None
        if spool is not None:
            spool.close()

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes (all remaining when negative or None)."""
        if size == 0:
            return b""
        if self._file is not None:
            if size is None or size < 0:
                head = self._from_file(-1)
                self._close_file()
                return head + self.read(-1)
            head = self._from_file(size)
            if len(head) == size:
                return head
            self._close_file()
            return head + self.read(size - len(head))
        with self._cond:
            if size is None or size < 0:
                self._wait(lambda: False, float("inf"))
                return self._take(len(self._buf))
            self._wait(lambda: len(self._buf) >= size, size)
            return self._take(min(size, len(self._buf)))

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line (at most ``size`` bytes)."""
        if size == 0:
            return b""
        if self._file is not None:
            most = size if size is not None and size >= 0 else -1
            head = self._from_file(most, line=True)
            if head.endswith(b"\n") or (most >= 0 and len(head) >= most):
                return head
            self._close_file()
            return head + self.readline(-1 if most < 0 else most - len(head))
        with self._cond:
            limit = size if size is not None and size >= 0 else None

            def ready() -> bool:
                return b"\n" in self._buf or (limit is not None and len(self._buf) >= limit)

            self._wait(ready)
            end = self._buf.find(b"\n")
            end = len(self._buf) if end < 0 else end + 1
            if limit is not None:
                end = min(end, limit)
            return self._take(end)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until EOF (or about ``hint`` bytes)."""
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> StreamingInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class ErrorStream:
    """``wsgi.errors``: text written by the app goes to twisted.logger, line by line."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._partial = ""

    def write(self, text: str) -> int:
        """Log complete lines; keep a partial one for later."""
        text = self._partial + str(text)
        *lines, self._partial = text.split("\n")
        for line in lines:
            log.error("wsgi.errors ({path}): {text}", path=self._path, text=line)
        if len(self._partial) > 65536:
            self.flush()
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each line."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Log a partial line too."""
        if self._partial:
            log.error("wsgi.errors ({path}): {text}", path=self._path, text=self._partial)
            self._partial = ""


class _OutputGate:
    """Makes an app's thread wait while the transport is paused or too much is pending."""

    def __init__(self, paused: bool) -> None:
        self._cond = threading.Condition()
        self._pending = 0
        self._paused = paused
        self._closed = False

    def reserve(self, size: int) -> None:
        """In the app's thread: wait for room, then count ``size`` bytes as pending."""
        with self._cond:
            while (self._paused or self._pending > OUTPUT_HIGH_WATER) and not self._closed:
                self._cond.wait()
            if self._closed:
                raise RequestAborted("the request ended")
            self._pending += size

    def written(self, size: int) -> None:
        """On the reactor: ``size`` bytes went to the transport."""
        with self._cond:
            self._pending -= size
            self._cond.notify_all()

    def paused(self, flag: bool) -> None:
        """On the reactor: the transport paused or resumed us."""
        with self._cond:
            self._paused = flag
            if not flag:
                self._cond.notify_all()

    def close(self) -> None:
        """On the reactor: the request is over."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _WSGICall:
    """One WSGI invocation: start_response, write, the result iterable and close()."""

    status: str | None = None
    headers: Headers = []  # replaced by start_response, never mutated
    head_sent = False
    aborted = False
    gate: _OutputGate | None = None

    def __init__(self, owner: WSGIApp, exchange: Exchange, environ: dict[str, Any],
                 threaded: bool) -> None:
        self.app = owner.app
        self.exchange = exchange
        self.environ = environ
        #: the body as given (apps and middleware may replace environ["wsgi.input"])
        self._input = environ.get("wsgi.input")
        self.threaded = threaded
        self.post: Callable[..., Any] = owner.poster.post if threaded else _call_now

    def start_response(self, status: str, headers: Headers,
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if not isinstance(status, str) or len(status) < 4 or not ascii_digits(status[:3]):
            raise AssertionError(f"WSGI status must be a str like '200 OK', got {status!r}")
        checked: Headers = []
        for pair in headers:
            name, value = pair
            if not isinstance(name, str) or not isinstance(value, str):
                raise AssertionError(f"WSGI header names and values must be str: {pair!r}")
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise AssertionError(f"WSGI header contains a line break: {pair!r}")
            checked.append((name, value))
        self.status = status
        self.headers = checked
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write() callable returned by start_response."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"WSGI write() needs bytes, got {type(data).__name__}")
        if self.aborted:
            raise RequestAborted("the request ended")
        if data:
            self._stream(bytes(data))

    def _stream(self, data: bytes) -> None:
        exchange = self.exchange
        if not self.head_sent:
            self.head_sent = True
            self.post(exchange.send_head, self.status, self.headers)
        if not self.threaded:
            exchange.send_body(data)
            return
        gate = self.gate
        if gate is None:
            # created on first streamed write only: most answers are one piece
            self.gate = gate = _OutputGate(exchange.output_paused)
            self.post(self._watch, gate)
        gate.reserve(len(data))
        self.post(self._write_chunk, data)

    def _watch(self, gate: _OutputGate) -> None:
        exchange = self.exchange
        exchange.output_watcher = gate
        gate.paused(exchange.output_paused or exchange._hold_paused)
        if self.aborted or exchange.done:
            gate.close()

    def _write_chunk(self, data: bytes) -> None:
        self.exchange.send_body(data)
        assert self.gate is not None
        self.gate.written(len(data))

    def cancel(self) -> None:
        """On the reactor: the request ended before the app did."""
        self.aborted = True
        if self.gate is not None:
            self.gate.close()
        stream = self.exchange.input
        if isinstance(stream, StreamingInput):
            stream.fail("the request ended")

    def run(self) -> None:
        """Call the app and send what it returns; then close its body's file, if any."""
        try:
            self._run()
        finally:
            stream = self._input
            if stream is not None and not isinstance(stream, StreamingInput | io.BytesIO):
                # a spooled body handed to the app (Spool.reader): the app is done with
                # it, and only it may give it back (a thread may read after the request
                # ended: a 504, the client gone)
                try:
                    stream.close()
                except Exception:
                    log.failure("closing a request body file failed")

    def _run(self) -> None:
        exchange = self.exchange
        try:
            result = self.app(self.environ, self.start_response)
        except Exception:
            self._failed(Failure())
            return
        try:
            if type(result) is list and not self.head_sent:
                body = b"".join(result)
                if self.status is None:
                    raise AssertionError("the WSGI app returned without calling start_response()")
                self.head_sent = True
                self.post(exchange.respond, self.status, self.headers, body)
            else:
                for chunk in result:
                    if self.aborted:
                        break
                    if chunk:
                        self._stream(chunk)
                if not self.aborted:
                    if self.status is None:
                        raise AssertionError(
                            "the WSGI app returned without calling start_response()")
                    if self.head_sent:
                        self.post(exchange.finish)
                    else:
                        self.head_sent = True
                        self.post(exchange.respond, self.status, self.headers, b"")
        except RequestAborted:
            pass
        except Exception:
            self._failed(Failure())
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    self._failed(Failure())

    def _failed(self, failure: Failure) -> None:
        if self.aborted:
            return
        log.failure("WSGI app failed on {method} {path}", failure,
                    method=self.environ.get("REQUEST_METHOD", ""),
                    path=self.environ.get("PATH_INFO", ""))
        self.aborted = True
        self.post(self.exchange.app_failed)


def _call_now(function: Callable[..., Any], *args: Any) -> None:
    function(*args)


class WSGIApp:
    """Runs a WSGI application for each exchange, in a bounded pool or on the loop."""

    def __init__(self, app: WSGIApplication, *, reactor: Any, threads: int = 10,
                 request_buffering: bool = True, multiprocess: bool = False) -> None:
        self.app = app
        self.reactor = reactor
        self.threads = threads
        # With request buffering (the default, as nginx's), a request takes a thread only
        # once its whole body is in (memory within the budget, past it a spool file): a
        # body that trickles or never ends holds no thread, so it cannot starve the
        # pool. Without it, the app's thread reads the body as it arrives.
        self.request_buffering = request_buffering
        self.needs_full_body = threads == 0 or request_buffering
        self.pool = WorkerPool(threads) if threads > 0 else None
        self.poster = CallPoster(reactor)
        # what every environ starts from; the request's params override it
        self._base: dict[str, Any] = {
            "SCRIPT_NAME": "", "PATH_INFO": "", "QUERY_STRING": "",
            "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.0",
            "REQUEST_METHOD": "GET",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.multithread": threads > 0, "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            # every listener ends wsgi.input at the body's end, chunked or not
            "wsgi.input_terminated": True,
        }

    def call(self, exchange: Exchange) -> None:
        """Build the environ and run the app for ``exchange``."""
        environ = self._base.copy()
        params = exchange.params
        environ.update(params)
        content_headers_as_pep3333(environ)
        if exchange.body_complete:
            if exchange.body_len and not environ.get("CONTENT_LENGTH"):
                # a chunked body that is already whole: tell its length to the apps
                # that ignore wsgi.input_terminated (Django)
                environ["CONTENT_LENGTH"] = str(exchange.body_len)
            spool = exchange.spool
            stream: Any = (spool.reader(self.reactor.callFromThread) if spool is not None
                           else io.BytesIO(exchange.body_bytes()))
        else:
            stream = StreamingInput(exchange, self.reactor.callFromThread)
            exchange.input = stream
        if "HTTPS" in params:
            if params["HTTPS"].lower() in ("on", "1"):
                environ["wsgi.url_scheme"] = "https"
        elif params.get("REQUEST_SCHEME") == "https":
            environ["wsgi.url_scheme"] = "https"
        environ["wsgi.input"] = stream
        environ["wsgi.errors"] = ErrorStream(environ["PATH_INFO"])
        pool = self.pool
        if pool is None:
            _WSGICall(self, exchange, environ, threaded=False).run()
            return
        call = _WSGICall(self, exchange, environ, threaded=True)
        exchange.on_cancel(call.cancel)
        pool.submit(call.run)

    def start(self) -> None:
        """Take requests again after :meth:`stop`."""
        if self.pool is not None:
            self.pool.start()

    def stop(self) -> None:
        """Let the worker threads exit."""
        if self.pool is not None:
            self.pool.stop()
