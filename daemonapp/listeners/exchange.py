"""One request in flight, independent of the wire protocol that carried it.

FastCGI, SCGI and HTTP each subclass :class:`Exchange` with the few ``_emit_*`` methods
that put a response on their wire; the dispatcher (limits) and the applications (WSGI,
native, jobs) only ever talk to an Exchange. An Exchange talks back to its owner (the
dispatcher) through :class:`ExchangeOwner` only, so this module imports nothing of
limits. Everything here runs on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

from twisted.logger import Logger

from daemonapp.listeners.budget import BodyBudget, BodyBuffer, ConnectionBuffer, Spool

Headers = list[tuple[str, str]]

#: Bytes of streamed response held back while the request body arrives, before the
#: application is paused.
HOLD_LIMIT = 256 * 1024

#: Exchange.state values.
NEW, QUEUED, RUNNING, DONE = 0, 1, 2, 3

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_REASONS[431] = "Request Header Fields Too Large"


def status_line(code: int) -> str:
    """``"404 Not Found"`` for 404; unknown codes get a generic phrase."""
    return f"{code} {_REASONS.get(code, 'Unknown')}"


def ascii_digits(text: str | bytes) -> bool:
    """True for a non-empty run of ASCII digits only.

    ``str.isdigit()`` also accepts ``"²"`` or ``"٣"``, which ``int()`` then refuses or
    reads as another number: every length from a peer is checked with this instead.
    """
    return bool(text) and text.isascii() and text.isdigit()


#: What a length of more than 18 digits reads as: over any max_body_bytes (and int()
#: refuses strings of more than 4,300 digits).
HUGE_LENGTH = 10**18


def parse_length(text: str | bytes) -> int | None:
    """A length made of ASCII digits as an int (HUGE_LENGTH past 18 digits); else None."""
    if not ascii_digits(text):
        return None
    if len(text) > 18:
        return HUGE_LENGTH
    return int(text)


def cgi_head(status: str, headers: Headers) -> bytes:
    """The CGI response head FastCGI and SCGI send: a Status line, headers, blank line."""
    parts = ["Status: ", status, "\r\n"]
    for name, value in headers:
        parts.append(name)
        parts.append(": ")
        parts.append(value)
        parts.append("\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


class ExchangeOwner(Protocol):
    """What an Exchange needs of the dispatcher that owns it (limits.Dispatcher is one)."""

    log: Logger
    #: the request body limit, checked as the body arrives
    max_body_bytes: int
    #: the listener's memory budget for request bodies
    budget: BodyBudget

    def finished(self, ex: Exchange, *, cancelled: bool = False) -> None:
        """``ex`` ended (answered, aborted or cancelled): release what it held."""

    def body_ended(self, ex: Exchange) -> None:
        """The body of ``ex`` is complete."""

    def body_too_large(self, ex: Exchange) -> None:
        """The body went over max_body_bytes."""

    def spool_failed(self, ex: Exchange, err: OSError) -> None:
        """A body over the memory budget could not be spooled to disk."""

    def app_failed(self, ex: Exchange) -> None:
        """The application failed (already logged)."""


class Exchange:
    """A request and its response, as the dispatcher and the applications see it.

    ``params`` are the CGI variables (``REQUEST_METHOD``, ``PATH_INFO``, ``HTTP_*``...),
    str to str, latin-1 decoded as PEP 3333 wants. The body arrives through
    :meth:`feed_body` / :meth:`end_body`; while nobody reads it yet it is kept in
    ``received``, a :class:`~daemonapp.listeners.budget.BodyBuffer`: in memory within the
    listener's budget (``body``), past it in a private temporary file (``spool``).
    """

    # Defaults live on the class: a request sets only what differs (the hot path).
    state = NEW
    head_sent = False
    body_len = 0
    body_complete = False
    input: Any = None  # a wsgi.StreamingInput once a reader exists
    timer: Any = None
    _cancel_hooks: list[Callable[[], object]] | None = None
    output_paused = False
    output_watcher: Any = None  # wsgi output gate, told about pause/resume
    route_path = ""
    _held: tuple[str, Headers, list[bytes]] | None = None
    _held_len = 0
    _hold_paused = False
    #: the connection's share of the listener's body budget (None: counted for the
    #: listener only)
    buffer: ConnectionBuffer | None = None
    #: the body so far while nobody reads it (made at its first byte; its memory is
    #: counted in the budget until the request ends)
    received: BodyBuffer | None = None

    def __init__(self, dispatcher: ExchangeOwner) -> None:
        #: the owner (a limits.Dispatcher), seen through ExchangeOwner only
        self.dispatcher = dispatcher
        self.params: dict[str, str] = {}

    @property
    def body(self) -> list[bytes]:
        """The body received so far while it is in memory (empty once spooled)."""
        received = self.received
        return received.chunks if received is not None else []

    @property
    def spool(self) -> Spool | None:
        """The body on disk once it went over the budget."""
        received = self.received
        return received.spool if received is not None else None

    # -- what the wire protocol implements -------------------------------------------

    def _emit_whole(self, status: str, headers: Headers, body: bytes) -> None:
        raise NotImplementedError

    def _emit_head(self, status: str, headers: Headers) -> None:
        raise NotImplementedError

    def _emit_body(self, data: bytes) -> None:
        raise NotImplementedError

    def _emit_end(self) -> None:
        raise NotImplementedError

    def _emit_abort(self) -> None:
        """End the request abnormally (the response so far is incomplete)."""
        raise NotImplementedError

    def _pause_input(self) -> None:
        """Stop reading from the peer until :meth:`_resume_input` (input flow control)."""

    def _resume_input(self) -> None:
        """Read from the peer again."""

    @property
    def peer(self) -> str:
        """The peer as text, for logs."""
        return self.params.get("REMOTE_ADDR", "")

    # -- what applications and the dispatcher call -----------------------------------

    @property
    def done(self) -> bool:
        """True once the response ended (or the request was cancelled)."""
        return self.state == DONE

    def respond(self, status: str, headers: Headers, body: bytes) -> None:
        """Send a whole response and end the request (ignored once done)."""
        if self.state == DONE:
            return
        if self.head_sent:
            self.send_body(body)
            self.finish()
            return
        self.head_sent = True
        self._emit_whole(status, headers, body)
        self.dispatcher.finished(self)

    def respond_text(self, body: bytes) -> None:
        """``200 OK``, ``text/plain; charset=utf-8``, ``body`` (a native handler's bytes)."""
        self.respond("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body)))], body)

    def send_head(self, status: str, headers: Headers) -> None:
        """Start a streamed response.

        While the request body is still arriving, the streamed response is held back
        (bounded: the application is paused past HOLD_LIMIT bytes): nginx stops sending
        the body once a response has begun, which would leave an app that reads its
        body as it writes waiting forever.
        """
        if self.state == DONE or self.head_sent:
            return
        self.head_sent = True
        if self.body_complete:
            self._emit_head(status, headers)
        else:
            self._held = (status, headers, [])

    def send_body(self, data: bytes) -> None:
        """Send part of a streamed response (after :meth:`send_head`)."""
        if self.state == DONE or not data:
            return
        held = self._held
        if held is not None:
            held[2].append(data)
            self._held_len += len(data)
            if self._held_len > HOLD_LIMIT and not self._hold_paused:
                self._hold_paused = True
                if self.output_watcher is not None:
                    self.output_watcher.paused(True)
                if self.input is not None:
                    # the body must flow in for the held output to be released; it stays
                    # bounded by max_body_bytes
                    self.input.unpause()
            return
        self._emit_body(data)

    def _release(self) -> None:
        """Send the streamed response held back while the body arrived."""
        held = self._held
        if held is None:
            return
        self._held = None
        self._held_len = 0
        self._emit_head(held[0], held[1])
        for chunk in held[2]:
            self._emit_body(chunk)
        if self._hold_paused:
            self._hold_paused = False
            if self.output_watcher is not None and not self.output_paused:
                self.output_watcher.paused(False)

    def finish(self) -> None:
        """End a streamed response normally."""
        if self.state == DONE:
            return
        if not self.head_sent:
            self.respond("200 OK", [], b"")
            return
        if self._held is not None:
            self._release()
        self._emit_end()
        self.dispatcher.finished(self)

    def abort(self) -> None:
        """End the request abnormally (a response cut short); tell the application."""
        if self.state == DONE:
            return
        self._emit_abort()
        self.dispatcher.finished(self)
        self.run_cancel_hooks()

    def app_failed(self) -> None:
        """The application failed (already logged): 500, or the response cut short.

        How a handler (WSGI, native) reports its failure, on the reactor thread; counted
        as an error even once the request ended.
        """
        self.dispatcher.app_failed(self)

    def peer_gone(self) -> None:
        """The peer went away or aborted the request: stop the application, send nothing."""
        if self.state == DONE:
            return
        self.dispatcher.finished(self, cancelled=True)
        self.run_cancel_hooks()

    def on_cancel(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` if the request ends before the application answered."""
        if self._cancel_hooks is None:
            self._cancel_hooks = [hook]
        else:
            self._cancel_hooks.append(hook)

    def run_cancel_hooks(self) -> None:
        """Tell the application its request is over (timeout, abort, peer gone)."""
        hooks, self._cancel_hooks = self._cancel_hooks, None
        if hooks:
            for hook in hooks:
                try:
                    hook()
                except Exception:
                    self.dispatcher.log.failure("cancelling a request failed")

    # -- body, fed by the wire protocol ----------------------------------------------

    def feed_body(self, data: bytes) -> None:
        """Part of the request body arrived."""
        if self.state == DONE or self.body_complete:
            return
        self.body_len += len(data)
        if self.body_len > self.dispatcher.max_body_bytes:
            self.dispatcher.body_too_large(self)
            return
        if self.input is not None:
            self.input.feed(data)
            return
        received = self.received
        if received is None:
            received = self.received = BodyBuffer(
                self.dispatcher.budget, self.buffer,
                parse_length(self.params.get("CONTENT_LENGTH", "")))
        try:
            received.write(data)
        except OSError as err:  # over the budget, and no spool file to be had
            self.dispatcher.spool_failed(self, err)

    def feed_body_pieces(self, pieces: list[memoryview]) -> None:
        """Several parts of the request body arrived in one read (FastCGI records): as
        :meth:`feed_body`, with one write of them all to a spool file."""
        if len(pieces) == 1 or self.received is None or self.received.spool is None:
            for piece in pieces:
                self.feed_body(piece)  # type: ignore[arg-type]
            return
        if self.state == DONE or self.body_complete:
            return
        self.body_len += sum(len(piece) for piece in pieces)
        if self.body_len > self.dispatcher.max_body_bytes:
            self.dispatcher.body_too_large(self)
            return
        if self.input is not None:
            for piece in pieces:
                self.input.feed(piece)
            return
        try:
            self.received.write_pieces(pieces)
        except OSError as err:  # the spool file cannot be written (the disk is full)
            self.dispatcher.spool_failed(self, err)

    def release_body(self) -> None:
        """The request ended: give its memory back to the budget, delete its spool."""
        received, self.received = self.received, None
        if received is not None:
            received.close()

    def end_body(self) -> None:
        """The request body is complete."""
        if self.body_complete:
            return
        self.body_complete = True
        if self.state == DONE:
            return
        if self._held is not None:
            self._release()
        if self.input is not None:
            self.input.feed_eof()
        self.dispatcher.body_ended(self)

    def body_bytes(self) -> bytes:
        """The whole body (only once complete), read back from disk when spooled."""
        received = self.received
        if received is None:
            return b""
        if received.spool is not None:
            return received.spool.read_all()
        body = received.chunks
        if not body:
            return b""
        if len(body) == 1:
            return body[0]
        joined = b"".join(body)
        received.chunks = [joined]
        return joined

    # -- output flow control, driven by the wire protocol's transport ----------------

    def pause_output(self) -> None:
        """The transport's buffer is full."""
        self.output_paused = True
        if self.output_watcher is not None:
            self.output_watcher.paused(True)

    def resume_output(self) -> None:
        """The transport can take more."""
        self.output_paused = False
        if self.output_watcher is not None and not self._hold_paused:
            self.output_watcher.paused(False)
