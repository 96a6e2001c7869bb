"""An SCGI server protocol: a netstring of headers, the body, one request per connection.

The header netstring is bounded by ``max_param_bytes`` (431 when over it) and must
start with ``CONTENT_LENGTH``; a length that is not ASCII digits is answered 400;
anything else unparsable closes the connection.

SCGI has no end-of-request marker: an answer without ``Content-Length`` that is cut
short (the app failed mid-stream, the process died) looks complete. Whole answers
therefore always get a ``Content-Length``. A request from the CGI frontend (the
``DAEMONAPP_CGI_FRONTEND=1`` parameter, see daemonapp.cgi_frontend) gets its whole
answer buffered and sent at once with a ``Content-Length``, or nothing at all when the
answer is cut short, so that the frontend answers 503 instead of a truncated 200.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemonapp.listeners.budget import BODY_READ_SIZE, ConnectionBuffer, read_in_large_pieces
from daemonapp.listeners.connections import ListenerFactory, TrackedProtocol
from daemonapp.listeners.exchange import (
    Exchange,
    Headers,
    ascii_digits,
    cgi_head,
    parse_length,
)

log = Logger()

#: The SCGI parameter by which the CGI frontend asks for buffered answers with a
#: Content-Length (daemonapp.cgi_frontend.FRONTEND_PARAM).
FRONTEND_PARAM = "DAEMONAPP_CGI_FRONTEND"
#: Bytes of answer buffered for the CGI frontend (its own default limit); an answer
#: growing past it is dropped: nothing is sent and the frontend answers 503.
MAX_BUFFERED_ANSWER = 64 * 1024 * 1024
#: A big answer is handed to the transport this many bytes at a time, as the peer reads.
WRITE_PIECE = 65536


def with_length(status: str, headers: Headers, size: int, method: str) -> Headers:
    """``headers`` with ``Content-Length: size`` added when missing.

    Not for HEAD requests nor for 1xx, 204 and 304 answers, which have no body.
    """
    code = status[:3]
    if method == "HEAD" or code in ("204", "304") or code.startswith("1"):
        return headers
    for name, _ in headers:
        if name.lower() == "content-length":
            return headers
    return [*headers, ("Content-Length", str(size))]


class SCGIExchange(Exchange):
    """The one request of an SCGI connection."""


    def __init__(self, proto: SCGIProtocol) -> None:
        super().__init__(proto.factory.dispatcher)
        self.proto = proto
        # the connection's share of the body budget (max_buffer_bytes): without it only
        # the listener's bounded an SCGI body, and 20 bodies that never end held 32 MiB
        self.buffer = ConnectionBuffer()

    def _emit_whole(self, status: str, headers: Headers, body: bytes) -> None:
        proto = self.proto
        headers = with_length(status, headers, len(body), self.params.get("REQUEST_METHOD", ""))
        head = cgi_head(status, headers)
        if len(body) > WRITE_PIECE:
            # not joined: a big body is written (or waits for a slow peer) as the app's
            # own bytes, never copied whole
            proto.write(head)
            proto.write(body)
        else:
            proto.write(head + body)
        proto.finish()

    def _emit_head(self, status: str, headers: Headers) -> None:
        self.proto.write(cgi_head(status, headers))

    def _emit_body(self, data: bytes) -> None:
        self.proto.write(data)

    def _emit_end(self) -> None:
        self.proto.finish()

    def _emit_abort(self) -> None:
        self.proto.transport.abortConnection()  # type: ignore[union-attr]

    def _pause_input(self) -> None:
        self.proto.input_paused = True
        self.proto.update_reading()

    def _resume_input(self) -> None:
        self.proto.input_paused = False
        self.proto.update_reading()


class FrontendSCGIExchange(SCGIExchange):
    """A request from the CGI frontend: the whole answer is sent at once, with its length.

    A streamed answer is buffered (up to MAX_BUFFERED_ANSWER bytes) until it ends; one
    that is cut short (app failure after its headers, request_timeout, too large) sends
    nothing, so the frontend can never relay a truncated answer as a whole one.
    """

    _head: tuple[str, Headers] | None = None
    _size = 0

    def __init__(self, proto: SCGIProtocol) -> None:
        super().__init__(proto)
        self._answer: list[bytes] | None = []

    def _emit_head(self, status: str, headers: Headers) -> None:
        self._head = (status, headers)

    def _emit_body(self, data: bytes) -> None:
        answer = self._answer
        if answer is None:
            return
        self._size += len(data)
        if self._size > MAX_BUFFERED_ANSWER:
            log.warn("SCGI: the answer to {path} for the CGI frontend exceeds {limit} bytes: "
                     "dropped", path=self.route_path, limit=MAX_BUFFERED_ANSWER)
            self.abort()
            return
        answer.append(data)

    def _emit_end(self) -> None:
        answer, self._answer = self._answer, None
        transport: Any = self.proto.transport
        if answer is None or self._head is None:
            transport.abortConnection()
            return
        status, headers = self._head
        headers = with_length(status, headers, self._size,
                              self.params.get("REQUEST_METHOD", ""))
        proto = self.proto
        proto.write(cgi_head(status, headers))
        for piece in answer:  # the app's own bytes, not joined into a copy
            proto.write(piece)
        proto.finish()

    def _emit_abort(self) -> None:
        self._answer = None
        self.proto.transport.abortConnection()  # type: ignore[union-attr]


@implementer(IPushProducer)
class SCGIProtocol(TrackedProtocol):
    """One SCGI connection."""

    factory: SCGIFactory

    def __init__(self) -> None:
        self._buf = b""
        self._header_len: int | None = None
        self.exchange: SCGIExchange | None = None
        self._remaining = 0
        self._closed = False
        #: the transport's buffer is full: the peer does not read its answer
        self._output_paused = False
        #: answer bytes waiting for the peer to read (the app's own bytes, not copied)
        self._out: collections.deque[memoryview] = collections.deque()
        #: the answer ended while part of it still waited in ``_out``
        self._finish_pending = False

    def connectionMade(self) -> None:
        self.factory.connection_opened(self)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.enable_direct_writes()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self._out.clear()
        self.cancel_linger()
        if self.exchange is not None:
            self.exchange.peer_gone()
        self.factory.connection_closed(self)

    #: paused by us for an app that does not read its body yet (no read timeout then)
    input_paused = False

    def is_idle(self) -> bool:
        return self.exchange is None and not self._buf

    def waiting_for(self) -> str | None:
        if self._output_paused and not self._closed:
            return "send"
        if self._closed or self.input_paused or self.lingering:
            return None
        if self.exchange is None:
            return "header"  # one request per connection: silent means no header yet
        return "body" if self._remaining > 0 else None

    def waiting_since(self, waiting: str) -> float:
        if waiting == "header":
            # one request per connection: the header is due from the accept on
            return self.connected_at
        return self.last_read

    def update_reading(self) -> None:
        """Read from the peer unless an app is behind reading its body or the peer is
        behind reading its answer (what it makes us hold stays bounded)."""
        if self._closed or self.transport is None:
            return
        transport: Any = self.transport
        if self.input_paused or self._output_paused:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    # producer API: the transport tells us when its write buffer is full
    def pauseProducing(self) -> None:
        if self._output_paused:
            return
        self._output_paused = True
        self.last_read = self.factory.reactor.seconds()  # the send timeout counts from here
        self.update_reading()
        if self.exchange is not None:
            self.exchange.pause_output()

    def resumeProducing(self) -> None:
        if not self._output_paused:
            return
        self._output_paused = False
        self.last_read = self.factory.reactor.seconds()
        self._flush_out()
        if self._output_paused:
            return  # paused again by what was queued
        self.update_reading()
        if self.exchange is not None:
            self.exchange.resume_output()
        if self._finish_pending and not self._out:
            self._finish_pending = False
            self.finish()

    def write(self, data: bytes) -> None:
        """Send answer bytes; while the peer does not read, they wait uncopied in ``_out``.

        A big piece goes to the transport WRITE_PIECE bytes at a time while the peer
        reads: the transport never holds a copy of a whole answer.
        """
        if self._closed or not data:
            return
        if self._output_paused or self._out:
            self._out.append(memoryview(data))
            return
        if len(data) <= WRITE_PIECE:
            self.send(data)
            return
        self._write_view(memoryview(data))

    def _write_view(self, view: memoryview) -> bool:
        """Write ``view`` piece by piece until the transport pauses us; queue the rest.

        True when all of it went to the transport.
        """
        size = len(view)
        pos = 0
        while pos < size:
            piece = view[pos:pos + WRITE_PIECE]
            pos += len(piece)
            self.send(piece.tobytes())
            if self._closed:
                return True
            if self._output_paused and pos < size:
                self._out.appendleft(view[pos:])
                return False
        return True

    def _flush_out(self) -> None:
        """The peer reads again: write what waits until it pauses us again."""
        out = self._out
        while out and not self._output_paused and not self._closed:
            if not self._write_view(out.popleft()):
                return

    def stopProducing(self) -> None:
        self._closed = True
        self._out.clear()

    def finish(self) -> None:
        """The answer is out: close, once the peer has sent the whole body."""
        if self._out:
            self._finish_pending = True  # once the peer has read what waits
            return
        if self._remaining > 0 and not self._closed:
            self.input_paused = False  # nothing reads the body any more
            self.update_reading()
            self.linger()
        else:
            self.close()

    def _error(self, message: str) -> None:
        self.factory.dispatcher.peer_log.warn(
            "malformed", "SCGI: {message}; closing the connection", log=log, message=message)
        self._closed = True
        self._buf = b""
        self.close()

    def _bad_length(self, message: str) -> None:
        """A length that is not ASCII digits: answer 400, then close."""
        self._buf = b""
        self.exchange = ex = SCGIExchange(self)
        self.factory.dispatcher.bad_request(ex, f"SCGI: {message}")
        self._closed = True

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self.last_read = self.factory.reactor.seconds()
        ex = self.exchange
        if ex is not None:
            self._body(data)
            return
        self._buf += data
        dispatcher = self.factory.dispatcher
        limit = dispatcher.max_param_bytes
        if self._header_len is None:
            colon = self._buf.find(b":")
            if colon < 0:
                if len(self._buf) > 10 or (self._buf and not ascii_digits(self._buf)):
                    self._bad_length("bad netstring length")
                return
            digits = self._buf[:colon]
            if not ascii_digits(digits) or len(digits) > 10:
                self._bad_length("bad netstring length")
                return
            self._header_len = int(digits)
            self._buf = self._buf[colon + 1:]
            if self._header_len > limit:
                self._too_large()
                return
        size = self._header_len
        if len(self._buf) < size + 1:
            return
        if self._buf[size:size + 1] != b",":
            self._error("netstring without its trailing comma")
            return
        header, rest = self._buf[:size], self._buf[size + 1:]
        self._buf = b""
        items = header.split(b"\0")
        if items and items[-1] == b"":
            items.pop()
        if len(items) % 2 or len(items) < 2 or items[0] != b"CONTENT_LENGTH":
            self._error("headers must be name/value pairs starting with CONTENT_LENGTH")
            return
        params = {items[i].decode("latin-1"): items[i + 1].decode("latin-1")
                  for i in range(0, len(items), 2)}
        length_text = params["CONTENT_LENGTH"]
        length = parse_length(length_text)
        if length is None:
            self._bad_length(f"CONTENT_LENGTH {length_text[:20]!r} is not a number")
            return
        declared = parse_length(params.get("HTTP_CONTENT_LENGTH", ""))
        if (declared is not None and declared > length
                and "HTTP_TRANSFER_ENCODING" not in params):
            # nginx with scgi_request_buffering off (before nginx/nginx#1118) declares
            # only the part of the body it had read when it connected (often 0), then
            # streams the whole body: the client's Content-Length is the real one
            length = declared
            params["CONTENT_LENGTH"] = params["HTTP_CONTENT_LENGTH"]
        self.requests_seen += 1
        if params.get(FRONTEND_PARAM) == "1":
            self.exchange = ex = FrontendSCGIExchange(self)
        else:
            self.exchange = ex = SCGIExchange(self)
        ex.params = params
        self._remaining = length
        if self._remaining > dispatcher.max_body_bytes:
            self._remaining -= min(len(rest), self._remaining)  # dropped (a linger counts)
            dispatcher.params_ready(ex)  # answers 413
            return
        if length - len(rest) >= BODY_READ_SIZE:
            read_in_large_pieces(self.transport, True)
        if rest:
            self._body(rest, dispatch=False)
        if self._remaining == 0:
            ex.end_body()
        dispatcher.params_ready(ex)

    def _body(self, data: bytes, dispatch: bool = True) -> None:
        ex = self.exchange
        assert ex is not None
        if self._remaining <= 0:
            return  # bytes after the declared body: ignored
        data = data[:self._remaining]
        self._remaining -= len(data)
        ex.feed_body(data)
        if self._remaining == 0 and dispatch:
            ex.end_body()
            if self.lingering:
                self.end_linger()

    def _too_large(self) -> None:
        self._buf = b""
        self.exchange = ex = SCGIExchange(self)
        self.factory.dispatcher.params_too_large(ex)
        self._closed = True


class SCGIFactory(ListenerFactory):
    """Makes SCGIProtocol connections for one listener."""

    protocol_class = SCGIProtocol
