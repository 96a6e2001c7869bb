"""The dispatcher between a listener's wire protocol and its application: limits and routing.

It admits requests up to ``max_concurrent``, queues up to ``backlog`` more for at most
``queue_timeout`` and answers the rest ``503`` with ``Retry-After`` (never a dropped
connection); it enforces ``max_body_bytes`` (413) and ``request_timeout`` (504), counts
requests for ``max_requests`` and reports activity to the app's IActivityMonitor.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.interfaces import IActivityMonitor, IAppHealth
from daemonapp.listeners.budget import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_LISTENER_BUFFER_BYTES,
    BodyBudget,
    FdLimits,
)
from daemonapp.listeners.exchange import (
    DONE,
    NEW,
    QUEUED,
    RUNNING,
    Exchange,
    parse_length,
    status_line,
)
from daemonapp.ratelog import Episode, RateLog

#: The Prometheus text exposition format (daemonapp.metrics's, without its import).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Exchange state between "params complete" and "admitted": waiting for the whole body.
WAITING = 4

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PARAM_BYTES = 64 * 1024
DEFAULT_BACKLOG = 100
DEFAULT_QUEUE_TIMEOUT = 10.0
#: FastCGI/SCGI read timeouts (nginx's client_header_timeout / client_body_timeout).
DEFAULT_HEADER_TIMEOUT = 60.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 60.0
#: FastCGI: a peer that reads none of its answers this long is cut off (nginx's
#: send_timeout).
DEFAULT_SEND_TIMEOUT = 60.0

#: While requests flow, a no-op timer asks the loop to look at the sockets at least this
#: often: DaemonApp ends a time slice early when another timer is due, so requests
#: wait about this long, not a whole slice, while daemons keep the scheduler busy.
IO_TICK = 0.002
#: The timer stops after this long without a request (a lone request costs ~125 no-op
#: loop iterations).
IO_TICK_FOR = 0.25

_JOB_PATH = re.compile(r"/jobs/([0-9]{1,18})/?")
_PLAIN = [("Content-Type", "text/plain; charset=utf-8")]
#: The paths ``health: true`` and ``metrics: true`` serve (DESIGN §10).
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
#: Seconds between two log lines of one kind of peer trouble (each gives the count).
PEER_LOG_EVERY = 60.0


class PeerLog:
    """Warnings a peer causes (malformed bytes, 400/413/431, timeouts): at most one line
    a minute per kind.

    The first of a kind is logged at once; those that follow within the minute are
    counted, and one line at the end of the minute gives the count and the last one's
    details. Two hundred garbage connections make two lines, not two hundred, and the
    log stays readable (and the disk unfilled) under a flood.
    """

    def __init__(self, log: Logger, reactor: Any) -> None:
        self.log = log
        self.reactor = reactor
        self._rate = RateLog(self._seconds, every=PEER_LOG_EVERY, call_later=self._call_later)

    # The reactor is read when a line is due: a Dispatcher may be built without one.
    def _seconds(self) -> float:
        return float(self.reactor.seconds())

    def _call_later(self, delay: float, function: Callable[..., object],
                    *args: object) -> Any:
        return self.reactor.callLater(delay, function, *args)

    def warn(self, kind: str, text: str, log: Logger | None = None,
             **fields: object) -> None:
        """Log ``text`` (a twisted.logger format) now, or count it for the next line."""
        logger = log or self.log  # the logger of the module the trouble was met in

        def line(episode: Episode) -> None:
            if not episode.by_timer:
                logger.warn(text, **fields)
            else:
                logger.warn(text + " ({repeated} such in the last minute; the last one "
                            "here)", repeated=episode.count, **fields)

        self._rate.occurred(kind, line)

    def stop(self) -> None:
        """Log what is left to log and cancel the timers (the listener stopped)."""
        self._rate.stop()


class Application(Protocol):
    """What the dispatcher runs: WSGIApp or NativeApp."""

    needs_full_body: bool

    def call(self, exchange: Exchange) -> None:
        """Answer ``exchange`` (now or later, through its respond/send_* methods)."""


JobsStatus = Callable[[int], "Deferred[dict[str, Any] | None]"]


class Dispatcher:
    """Admission, limits, routing and counters for one listener."""

    log = Logger()

    def __init__(
        self,
        app: Application | None,
        *,
        reactor: Any,
        max_concurrent: int | None = None,
        backlog: int = DEFAULT_BACKLOG,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        request_timeout: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_param_bytes: int = DEFAULT_MAX_PARAM_BYTES,
        max_requests: int | None = None,
        max_requests_jitter: int = 0,
        script_name: str | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_listener_buffer_bytes: int = DEFAULT_MAX_LISTENER_BUFFER_BYTES,
        fds: FdLimits | None = None,
        jobs_status: JobsStatus | None = None,
        health: bool = False,
        metrics: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.reactor = reactor
        self.max_concurrent = max_concurrent
        self._limit = max_concurrent if max_concurrent is not None else 1 << 62
        self.backlog = backlog
        self.queue_timeout = queue_timeout
        self.retry_after = str(min(60, max(1, math.ceil(queue_timeout))))
        self.request_timeout = request_timeout
        self.max_body_bytes = max_body_bytes
        self.max_param_bytes = max_param_bytes
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.budget = BodyBudget(per_connection=max_buffer_bytes,
                                 per_listener=max_listener_buffer_bytes, fds=fds,
                                 clock=reactor)
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        if max_requests is not None:
            jitter = 0
            if max_requests_jitter > 0:
                # spreads restarts of several processes; not security relevant
                jitter = (rng or random.Random()).randint(0, max_requests_jitter)  # noqa: S311
            self.request_limit: int | None = max_requests + jitter
        else:
            self.request_limit = None
        self._limit_reported = False
        if script_name is not None:
            script_name = script_name.rstrip("/")
        self.script_name = script_name
        self.jobs_status = jobs_status
        #: GET /healthz and GET /metrics, answered before admission (DESIGN §10)
        self.health = health
        self.metrics = metrics
        self._serves_app_status = health or metrics
        #: what /healthz and /metrics ask (the app, through IAppHealth)
        self.health_source: IAppHealth | None = None
        #: a graceful stop began while this listener keeps accepting (health: true):
        #: new requests are answered 503 + Retry-After, /healthz 503
        self.refusing = False
        self.needs_full_body = app.needs_full_body if app is not None else True
        self.monitor: IActivityMonitor | None = None
        self.queue: deque[Exchange] = deque()
        #: what peers do wrong, logged at most once a minute per kind
        self.peer_log = PeerLog(self.log, reactor)
        # counters
        self.in_flight = 0
        self.queued = 0
        self.active = 0  # admitted to the count and not answered yet (any state)
        self.requests = 0
        self.answered = 0
        self.cancelled = 0
        self.rejected_503 = 0
        self.timeouts_504 = 0
        self.errors_500 = 0
        self.too_large_413 = 0
        self.too_large_431 = 0
        self.bad_request_400 = 0
        self.health_checks = 0
        self.scrapes = 0
        self._idle_waiters: list[Deferred[None]] = []
        self._tick: Any = None
        self._tick_requests = 0
        self._quiet_ticks = 0

    # -- entry points for the wire protocols ------------------------------------------

    def params_ready(self, ex: Exchange) -> None:
        """The request's CGI params are complete: count it, check it, admit it."""
        params = ex.params
        script_name = self.script_name
        if script_name is not None:
            path = params.get("DOCUMENT_URI")
            if not path:
                uri = params.get("REQUEST_URI")
                if uri:
                    path = unquote_to_bytes(uri.partition("?")[0]).decode("latin-1")
                else:
                    path = params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
            if script_name and (path == script_name or path.startswith(script_name + "/")):
                params["SCRIPT_NAME"] = script_name
                path = path[len(script_name):]
            else:
                params["SCRIPT_NAME"] = ""
            params["PATH_INFO"] = path
            ex.route_path = path
        else:
            ex.route_path = params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
        if self._serves_app_status and self._serve_app_status(ex):
            return
        self.requests += 1
        self.active += 1
        ex.state = WAITING
        monitor = self.monitor
        if monitor is not None:
            monitor.begin("request")
            if self._tick is None:
                self._quiet_ticks = 0
                self._tick = self.reactor.callLater(IO_TICK, self._io_tick)
        limit = self.request_limit
        if limit is not None and self.requests >= limit and not self._limit_reported:
            self._limit_reported = True
            self.log.info("listener reached max_requests={limit}: stopping gracefully",
                          limit=limit)
            if monitor is not None:
                monitor.request_limit_reached(f"max_requests ({limit}) reached")
        if self.refusing:
            self._reject(ex)
            return
        length = params.get("CONTENT_LENGTH")
        if length:
            size = parse_length(length)
            if size is None:
                self.bad_request(ex, f"CONTENT_LENGTH {length[:20]!r} is not a number")
                return
            if size > self.max_body_bytes:
                self.body_too_large(ex)
                return
        if ex.body_complete or not self.needs_full_body:
            self._admit(ex)

    def body_ended(self, ex: Exchange) -> None:
        """The body of ``ex`` is complete."""
        if ex.state == WAITING:
            self._admit(ex)

    def finished(self, ex: Exchange, *, cancelled: bool = False) -> None:
        """``ex`` ended (answered, aborted or cancelled): release what it held."""
        state = ex.state
        if state == DONE:
            return
        ex.state = DONE
        ex.release_body()
        timer = ex.timer
        if timer is not None:
            ex.timer = None
            if timer.active():
                timer.cancel()
        if state == NEW:
            return
        if state == RUNNING:
            self.in_flight -= 1
        elif state == QUEUED:
            self.queued -= 1
        self.active -= 1
        if cancelled:
            self.cancelled += 1
        else:
            self.answered += 1
        monitor = self.monitor
        if monitor is not None:
            monitor.end("request")
        if self.queued and self.in_flight < self._limit:
            self._start_next()
        if not self.active and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def body_too_large(self, ex: Exchange) -> None:
        """The body went over max_body_bytes: 413, or cut the response short."""
        self.too_large_413 += 1
        self.peer_log.warn("413", "request body over max_body_bytes={limit} from {peer}",
                           limit=self.max_body_bytes, peer=ex.peer)
        if ex.head_sent:
            ex.abort()
            return
        ex.respond(status_line(413), _PLAIN,
                   b"Request body too large\n")
        ex.run_cancel_hooks()

    def overloaded(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """The 503 for a request refused before it was read (a connection's FCGI_MAX_REQS).

        Counted and reported to the activity monitor like any other request shed.
        """
        self.requests += 1
        self.rejected_503 += 1
        self.answered += 1
        monitor = self.monitor
        if monitor is not None:
            monitor.begin("request")
            monitor.end("request")
        return (status_line(503), [*_PLAIN, ("Retry-After", self.retry_after)],
                b"Service Unavailable\n")

    def spool_failed(self, ex: Exchange, err: OSError) -> None:
        """A body over the memory budget could not be spooled to disk: 503."""
        self.budget.spool_failed += 1
        self.peer_log.warn("spool", "cannot spool a request body from {peer} to disk "
                           "({error}): 503", peer=ex.peer, error=str(err))
        if ex.head_sent:
            ex.abort()
            return
        self._reject(ex)

    def bad_request(self, ex: Exchange, reason: str) -> None:
        """The request cannot be read (a length that is not ASCII digits...): 400."""
        self.bad_request_400 += 1
        self.peer_log.warn("400", "bad request from {peer}: {reason}", peer=ex.peer,
                           reason=reason)
        ex.respond(status_line(400), _PLAIN, b"Bad Request\n")
        ex.run_cancel_hooks()

    def params_too_large(self, ex: Exchange) -> None:
        """The params went over max_param_bytes: 431 (the protocol closes afterwards)."""
        self.too_large_431 += 1
        self.peer_log.warn("431", "request params over max_param_bytes={limit}",
                           limit=self.max_param_bytes)
        ex.respond(status_line(431), _PLAIN, b"Request header fields too large\n")

    def app_failed(self, ex: Exchange) -> None:
        """The application raised (already logged): 500, or cut the response short."""
        self.errors_500 += 1
        if ex.head_sent:
            ex.abort()
        else:
            ex.respond(status_line(500), _PLAIN, b"Internal Server Error\n")

    def when_idle(self) -> Deferred[None]:
        """A Deferred that fires once no request is in flight, queued or arriving."""
        if not self.active:
            return _succeed()
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _io_tick(self) -> None:
        """Nothing but a due timer (see IO_TICK); re-armed while requests flow."""
        if self.requests != self._tick_requests or self.active:
            self._tick_requests = self.requests
            self._quiet_ticks = 0
        else:
            self._quiet_ticks += 1
            if self._quiet_ticks * IO_TICK >= IO_TICK_FOR:
                self._tick = None
                return
        self._tick = self.reactor.callLater(IO_TICK, self._io_tick)

    def stop_io_tick(self) -> None:
        """Cancel the IO_TICK timer and log the peer trouble not logged yet (the listener
        stopped)."""
        self.peer_log.stop()
        tick, self._tick = self._tick, None
        if tick is not None and tick.active():
            tick.cancel()

    # -- admission --------------------------------------------------------------------

    def _admit(self, ex: Exchange) -> None:
        if self.in_flight < self._limit:
            self._start(ex)
        elif self.queued < self.backlog:
            ex.state = QUEUED
            self.queued += 1
            self.queue.append(ex)
            ex.timer = self.reactor.callLater(self.queue_timeout, self._queue_expired, ex)
        else:
            self._reject(ex)

    def _reject(self, ex: Exchange) -> None:
        self.rejected_503 += 1
        ex.respond(status_line(503), [*_PLAIN, ("Retry-After", self.retry_after)],
                   b"Service Unavailable\n")
        ex.run_cancel_hooks()

    def _queue_expired(self, ex: Exchange) -> None:
        ex.timer = None
        if ex.state == QUEUED:
            self._reject(ex)

    def _start_next(self) -> None:
        queue = self.queue
        while queue and self.in_flight < self._limit:
            ex = queue.popleft()
            if ex.state != QUEUED:
                continue
            self.queued -= 1
            timer = ex.timer
            if timer is not None:
                ex.timer = None
                if timer.active():
                    timer.cancel()
            self._start(ex)

    def _start(self, ex: Exchange) -> None:
        ex.state = RUNNING
        self.in_flight += 1
        if self.request_timeout is not None:
            ex.timer = self.reactor.callLater(self.request_timeout, self._timed_out, ex)
        if self.jobs_status is not None:
            match = _JOB_PATH.fullmatch(ex.route_path)
            if match is not None:
                self._serve_job(ex, int(match.group(1)))
                return
        app = self.app
        if app is None:
            ex.respond(status_line(404), _PLAIN, b"Not Found\n")
            return
        try:
            app.call(ex)
        except Exception:
            self.log.failure("application failed on {path}", path=ex.route_path)
            self.app_failed(ex)

    def _timed_out(self, ex: Exchange) -> None:
        ex.timer = None
        if ex.state != RUNNING:
            return
        self.timeouts_504 += 1
        if ex.head_sent:
            self.log.warn("request {method} {path} over request_timeout={timeout}s after "
                          "its headers were sent: ended",
                          method=ex.params.get("REQUEST_METHOD", ""), path=ex.route_path,
                          timeout=self.request_timeout)
            ex.abort()
            return
        self.log.warn("request {method} {path} over request_timeout={timeout}s: 504",
                      method=ex.params.get("REQUEST_METHOD", ""), path=ex.route_path,
                      timeout=self.request_timeout)
        ex.respond(status_line(504), _PLAIN, b"Gateway Timeout\n")
        ex.run_cancel_hooks()

    # -- /jobs/<id> -------------------------------------------------------------------

    def _serve_job(self, ex: Exchange, job_id: int) -> None:
        jobs_status = self.jobs_status
        assert jobs_status is not None
        deferred: Deferred[Any] = maybeDeferred(jobs_status, job_id)
        ex.on_cancel(deferred.cancel)

        def found(record: dict[str, Any] | None) -> None:
            if ex.done:
                return
            if record is None:
                body = json.dumps({"error": "no such job", "id": job_id}).encode()
                ex.respond(status_line(404), [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(body)))], body)
                return
            body = json.dumps(record, default=str, sort_keys=True).encode()
            ex.respond("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))], body)

        def failed(failure: Failure) -> None:
            if ex.done:
                return
            self.log.failure("jobs status for {job_id} failed", failure, job_id=job_id)
            self.app_failed(ex)

        deferred.addCallbacks(found, failed)

    # -- /healthz and /metrics -------------------------------------------------------

    def _serve_app_status(self, ex: Exchange) -> bool:
        """Answer /healthz or /metrics at once, on the loop (True), or leave ``ex`` alone.

        Neither is a request of the app: not counted in ``requests``, not activity for
        idle exit or max_requests (a load balancer polling every second would keep the
        app alive for ever), never queued behind the app's requests.
        """
        path = ex.route_path
        if path == HEALTH_PATH and self.health:
            self.health_checks += 1
            if self._method_allowed(ex):
                self._serve_health(ex)
            return True
        if path == METRICS_PATH and self.metrics:
            self.scrapes += 1
            if self._method_allowed(ex):
                self._serve_metrics(ex)
            return True
        return False

    @staticmethod
    def _method_allowed(ex: Exchange) -> bool:
        if ex.params.get("REQUEST_METHOD", "GET") in ("GET", "HEAD"):
            return True
        ex.respond(status_line(405), [*_PLAIN, ("Allow", "GET, HEAD")],
                   b"Method Not Allowed\n")
        return False

    def _serve_health(self, ex: Exchange) -> None:
        source = self.health_source
        healthy: bool
        body: dict[str, object]
        if source is None:
            healthy, body = False, {"status": "unavailable", "reasons": ["not started"]}
        else:
            try:
                healthy, body = source.health_report()
            except Exception:
                self.log.failure("the health check failed")
                healthy, body = False, {"status": "unavailable",
                                        "reasons": ["the health check failed"]}
        if healthy and self.refusing:  # stopping: the app says so too, but be sure
            healthy = False
            body = {**body, "status": "unavailable", "reasons": ["stopping"]}
        data = json.dumps(body, default=str, sort_keys=True).encode() + b"\n"
        ex.respond("200 OK" if healthy else status_line(503),
                   [("Content-Type", "application/json"),
                    ("Content-Length", str(len(data))),
                    ("Cache-Control", "no-store")], data)

    def _serve_metrics(self, ex: Exchange) -> None:
        source = self.health_source
        if source is None:
            deferred: Deferred[bytes] = fail(RuntimeError("no app to read metrics from"))
        else:  # (a worker of app.processes asks its supervisor: later)
            deferred = maybeDeferred(source.metrics_text)
        ex.on_cancel(deferred.cancel)

        def rendered(data: bytes) -> None:
            if not ex.done:
                ex.respond("200 OK", [("Content-Type", METRICS_CONTENT_TYPE),
                                      ("Content-Length", str(len(data))),
                                      ("Cache-Control", "no-store")], data)

        def failed(failure: Failure) -> None:
            if ex.done:
                return
            self.log.failure("rendering the metrics failed", failure)
            self.errors_500 += 1
            ex.respond(status_line(500), _PLAIN, b"Internal Server Error\n")

        deferred.addCallbacks(rendered, failed)

    # -- status -----------------------------------------------------------------------

    @property
    def receiving(self) -> int:
        """Requests counted whose body is still arriving: with request buffering they are
        admitted (queued or run) only once it is complete (an upload in progress)."""
        return self.active - self.in_flight - self.queued

    def snapshot(self) -> dict[str, object]:
        """Counters, JSON-able."""
        return {
            "receiving": self.receiving,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "requests": self.requests,
            "answered": self.answered,
            "cancelled": self.cancelled,
            "rejected_503": self.rejected_503,
            "timeouts_504": self.timeouts_504,
            "errors_500": self.errors_500,
            "too_large_413": self.too_large_413,
            "too_large_431": self.too_large_431,
            "bad_request_400": self.bad_request_400,
            "health_checks": self.health_checks,
            "scrapes": self.scrapes,
            "buffered_bytes": self.budget.used,
            "spooled": self.budget.spooled,
            "spool_failed": self.budget.spool_failed,
            "max_concurrent": self.max_concurrent,
            "backlog": self.backlog,
            "request_limit": self.request_limit,
        }


def _succeed() -> Deferred[None]:
    waiter: Deferred[None] = Deferred()
    waiter.callback(None)
    return waiter
