"""An HTTP listener on twisted.web feeding the same dispatcher and adapters as FastCGI.

Every request goes to the listener's application (no twisted.web resources); the
environ is built here, so UNIX-socket peers work (twisted.web.wsgi needs ``.host``).
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import address
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import implementer

from daemonapp.listeners.budget import (
    BODY_READ_SIZE,
    BodyBuffer,
    ConnectionBuffer,
    FdLimits,
    read_in_large_pieces,
)
from daemonapp.listeners.connections import LINGER_TIMEOUT, ListenerFactory, Network
from daemonapp.listeners.exchange import NEW, Exchange, Headers
from daemonapp.listeners.limits import Dispatcher

#: A big whole answer is handed to twisted.web this many bytes at a time, as the client
#: reads (the transport would otherwise join it with its headers into a copy).
WRITE_PIECE = 65536


@implementer(IPushProducer)
class _PieceWriter:
    """Writes a whole answer's body a piece at a time while the client reads, then
    finishes the request: the transport never holds a copy of the whole answer, and a
    client that does not read holds at most a piece or two of it."""

    def __init__(self, request: server.Request, body: bytes) -> None:
        self.request = request
        self.view: memoryview | None = memoryview(body)
        self.pos = 0
        self.paused = False

    def start(self) -> None:
        request: Any = self.request
        request.registerProducer(self, True)
        # twisted.web does not pause a producer registered while its output is paused
        self.paused = bool(getattr(request.channel, "_waitingForTransport", False))
        self._write()

    def _write(self) -> None:
        request: Any = self.request
        view = self.view
        while view is not None and not self.paused:
            if request._disconnected:
                self.view = None
                return
            piece = view[self.pos:self.pos + WRITE_PIECE]
            self.pos += len(piece)
            if self.pos >= len(view):
                self.view = None
                request.write(piece.tobytes())
                request.unregisterProducer()
                if not request._disconnected and not request.finished:
                    request.finish()
                return
            request.write(piece.tobytes())

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._write()

    def stopProducing(self) -> None:
        self.view = None  # the client is gone


@implementer(IPushProducer)
class HTTPExchange(Exchange):
    """A twisted.web request seen as an Exchange."""

    def __init__(self, dispatcher: Dispatcher, request: server.Request) -> None:
        super().__init__(dispatcher)
        self.request = request
        self.producing = False

    def _start(self, status: str, headers: Headers) -> None:
        code, _, reason = status.partition(" ")
        request = self.request
        request.setResponseCode(int(code), reason.encode("latin-1") or None)
        add = request.responseHeaders.addRawHeader
        for name, value in headers:
            add(name.encode("latin-1"), value.encode("latin-1"))

    def _emit_whole(self, status: str, headers: Headers, body: bytes) -> None:
        if self.request._disconnected or self.request.finished:
            return
        self._start(status, headers)
        if len(body) > WRITE_PIECE:
            _PieceWriter(self.request, body).start()
            return
        if body:
            self.request.write(body)
        self.request.finish()

    def _emit_head(self, status: str, headers: Headers) -> None:
        if self.request._disconnected:
            return
        self._start(status, headers)
        self.request.registerProducer(self, True)
        self.producing = True

    def _emit_body(self, data: bytes) -> None:
        if not self.request._disconnected:
            self.request.write(data)

    def _emit_end(self) -> None:
        request = self.request
        if self.producing:
            self.producing = False
            request.unregisterProducer()
        if not request._disconnected and not request.finished:
            request.finish()

    def _emit_abort(self) -> None:
        if self.producing:
            self.producing = False
            self.request.unregisterProducer()
        self.request.loseConnection()

    def pauseProducing(self) -> None:
        self.pause_output()

    def resumeProducing(self) -> None:
        self.resume_output()

    def stopProducing(self) -> None:
        self.peer_gone()


def _environ(request: server.Request, body_len: int) -> dict[str, str]:
    uri: bytes = request.uri
    path, _, query = uri.partition(b"?")
    host = request.getHost()
    peer = request.getClientAddress()
    params = {
        "REQUEST_METHOD": request.method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "REQUEST_URI": uri.decode("latin-1"),
        "SERVER_NAME": request.getRequestHostname().decode("latin-1"),
        "SERVER_PORT": str(getattr(host, "port", 0)),
        "SERVER_PROTOCOL": request.clientproto.decode("latin-1"),
        "REMOTE_ADDR": peer.host if isinstance(peer, address.IPv4Address
                                               | address.IPv6Address) else "",
        "REMOTE_PORT": str(getattr(peer, "port", "")),
        "CONTENT_LENGTH": str(body_len) if body_len else "",
    }
    if request.isSecure():
        params["HTTPS"] = "on"
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").upper().replace("-", "_")
        value = ", ".join(v.decode("latin-1") for v in values)
        if key == "CONTENT_TYPE":
            params["CONTENT_TYPE"] = value
        elif key != "CONTENT_LENGTH":
            params["HTTP_" + key] = value
    return params


class _Request(server.Request):
    """Bounds the body by max_body_bytes while twisted.web receives it, and keeps it as
    FastCGI and SCGI do: in memory within the listener's budget, past it in a spool file.

    twisted.web would write every body of 100 KB or more (and every chunked one) to a
    temporary file of its own, on the reactor, opened as soon as the headers announce
    it (one descriptor per connection that sends such headers and no body).
    """

    too_large = False
    received = 0

    def gotLength(self, length: int | None) -> None:
        channel: _Channel = self.channel  # type: ignore[assignment]
        self.content = BodyBuffer(channel.site.dispatcher.budget, channel.buffer, length)

    def drop_body(self) -> None:
        """The body is of no more use: give its memory back, delete its spool."""
        content: Any = self.content
        if isinstance(content, BodyBuffer):
            content.close()
        self.content = io.BytesIO()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        base: Any = super()
        base.__init__(*args, **kwargs)
        # twisted.web would parse form and multipart bodies into request.args (a 5 MB
        # upload cost 0.5 s, and a multipart body its parser dislikes got a 400): the
        # application reads its body itself
        self._parsePOSTFormSubmission = False

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self.received += len(data)
        channel: _Channel = self.channel  # type: ignore[assignment]
        if self.received > channel.site.dispatcher.max_body_bytes:
            # a chunked body grew past the bound (a Content-Length over it never
            # gets here: see _Channel.allHeadersReceived)
            self.too_large = True
            self.drop_body()
            channel.refuse_body()
            return
        content: Any = self.content
        try:
            content.write(data)
        except OSError as err:  # over the memory budget, and no spool file to be had
            self.too_large = True
            self.drop_body()
            channel.refuse_body(503, str(err))


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, site: HTTPSite) -> None:
        base: Any = super()
        base.__init__()
        self.site = site

    def render(self, request: server.Request) -> Any:
        req: Any = request
        if req.too_large:
            return server.NOT_DONE_YET  # answered 413 already (_Channel.refuse_body)
        dispatcher = self.site.dispatcher
        ex = HTTPExchange(dispatcher, request)
        channel: Any = request.channel
        if channel.large_reads:  # the body has ended
            channel.large_reads = False
            read_in_large_pieces(channel.transport, False)
        content = request.content
        size = 0
        if isinstance(content, BodyBuffer):
            # the exchange owns the body now (twisted.web would close it when the client
            # leaves, under an app still reading it: "read of closed file")
            req.content = None
            ex.received = content
            size = content.size
        ex.params = _environ(request, size)
        ex.body_len = size
        ex.body_complete = True
        request.notifyFinish().addErrback(_gone, ex)
        if channel.output_paused:
            # the client reads none of our answers: its pipelined requests wait (each
            # answer would pile up in the transport's buffer)
            channel.waiting = ex
        else:
            dispatcher.params_ready(ex)
        return server.NOT_DONE_YET


def _drop(*_: object) -> None:
    """Bytes of a refused request: ignored."""


def _gone(_failure: Failure, ex: HTTPExchange) -> None:
    ex.peer_gone()


class _Channel(http.HTTPChannel):
    """An HTTP connection the listener can inspect while draining."""

    site: HTTPSite
    connected_at = 0.0

    requests_seen = 0
    #: reactor time of the last read, or of the output pause (set by the tracker too)
    last_read = 0.0
    #: bytes in the transport's write buffer at the sweep's last look
    unsent_seen: int | None = None
    #: reactor time the first byte of the request header being received arrived
    _header_since: float | None = None

    def dataReceived(self, data: bytes) -> None:
        channel: Any = self
        if (self._header_since is None and channel.line_mode
                and not channel._handlingRequest):
            self._header_since = self.site.reactor.seconds()
        base: Any = super()
        base.dataReceived(data)

    def connectionMade(self) -> None:
        #: the connection's share of the listener's body budget (max_buffer_bytes)
        self.buffer = ConnectionBuffer()
        base: Any = super()
        base.connectionMade()
        self.site.factory_tracker.connection_opened(self)  # type: ignore[arg-type]

    def connectionLost(self, reason: Failure | None = None) -> None:
        refused, self._refused = self._refused, None
        if refused is not None and refused.active():
            refused.cancel()
        base: Any = super()
        base.connectionLost(reason)
        self.site.factory_tracker.connection_closed(self)  # type: ignore[arg-type]

    #: set once the request's body is refused (413): the rest of it is dropped
    _refused: Any = None
    #: the socket is read BODY_READ_SIZE at a time (a large or chunked body arrives)
    large_reads = False

    def allHeadersReceived(self) -> None:
        self._header_since = None
        self.requests_seen += 1
        channel: Any = self
        length = channel.length
        dispatcher = self.site.dispatcher
        if length is not None and length > dispatcher.max_body_bytes:
            # answered at once, before any 100 Continue: reading a body we refuse
            # would take as long as the client cares to send
            self.refuse_body()
            return
        budget = dispatcher.budget
        fds = budget.fds
        if (length is not None and length > budget.per_connection
                and not budget.can_spool()):
            # a body that must go to disk, and no descriptor to spare for its file (half
            # the fd reserve is taken by spools): 503 at once
            self.refuse_body(503, f"{fds.spools} spool files open")
            return
        if length is None or length >= BODY_READ_SIZE:
            self.large_reads = True
            read_in_large_pieces(self.transport, True)
        base: Any = super()
        base.allHeadersReceived()

    def refuse_body(self, code: int = 413, reason: str = "") -> None:
        """Answer 413 (or 503) at once, then drop what the client still sends (bounded)
        and close.

        Closing while the client still writes would reset the connection, and the
        client might never read the answer: the write side is shut after the answer
        and the rest is read and dropped for at most LINGER_TIMEOUT.
        """
        if self._refused is not None:
            return
        dispatcher = self.site.dispatcher
        peer = self.transport.getPeer() if self.transport is not None else None
        peer_text = getattr(peer, "host", "") or "unix"
        if code == 503:
            dispatcher.rejected_503 += 1
            dispatcher.budget.spool_failed += 1
            dispatcher.peer_log.warn(
                "spool", "cannot spool a request body from {peer} to disk ({error}): 503",
                peer=peer_text, error=reason)
            head = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
                    + dispatcher.retry_after.encode() + b"\r\n")
            body = b"Service Unavailable\n"
        else:
            dispatcher.too_large_413 += 1
            dispatcher.peer_log.warn("413", "request body over max_body_bytes={limit} from "
                                     "{peer}: 413", limit=dispatcher.max_body_bytes,
                                     peer=peer_text)
            head = b"HTTP/1.1 413 Content Too Large\r\n"
            body = b"Request body too large\n"
        channel: Any = self
        channel.setTimeout(None)
        transport: Any = self.transport
        transport.write(head + b"Content-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(body), body))
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
        else:
            half_close()
        self._refused = self.site.reactor.callLater(LINGER_TIMEOUT,
                                                    transport.abortConnection)
        if self.requests:
            request: Any = self.requests[-1]
            request.too_large = True
            request.drop_body()
        # what twisted.web itself does to drop what follows a last request
        channel.dataReceived = channel.lineReceived = channel.rawDataReceived = _drop

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web answers 400 for headers over totalHeadersSize; we say 431
        channel: Any = self
        if channel._receivedHeaderSize > channel.totalHeadersSize:
            self.site.dispatcher.too_large_431 += 1
            transport: Any = self.transport
            transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                            b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            transport.loseConnection()
            return
        base: Any = super()
        base._respondToBadRequestAndDisconnect()

    #: a request not dispatched yet because the client reads none of our answers
    waiting: HTTPExchange | None = None

    @property
    def output_paused(self) -> bool:
        """Whether the transport's buffer is full (the client does not read)."""
        return bool(getattr(self, "_waitingForTransport", False))

    def pauseProducing(self) -> None:
        """The transport's buffer is full: the client does not read its answers.

        twisted.web pauses the request's producer but, while a request is handled (which
        is when answers are written), keeps reading the connection, and stops its eager
        read of pipelined requests (16 KiB) only while the output flows: a client that
        pipelines GETs and never reads made it buffer every request line it sent
        (600 MiB in 10 s). No byte of such a client is read until it reads.
        """
        base: Any = super()
        base.pauseProducing()
        channel: Any = self
        channel._networkProducer.pauseProducing()
        self.last_read = self.site.reactor.seconds()  # the send timeout counts from here

    def resumeProducing(self) -> None:
        base: Any = super()
        base.resumeProducing()  # reads again unless a request is handled (then at its end)
        self.last_read = self.site.reactor.seconds()
        ex, self.waiting = self.waiting, None
        if ex is not None and ex.state == NEW:
            self.site.dispatcher.params_ready(ex)

    def is_idle(self) -> bool:
        """No request being received or answered."""
        return not self.requests

    def waiting_for(self) -> str | None:
        """"send" while the client reads none of its answers, "header" while a request
        header arrives; else None: twisted.web's own inactivity timeout (60 s) closes
        silent connections."""
        if self.output_paused:
            return "send"
        if self._header_since is not None:
            return "header"
        return None

    def waiting_since(self, waiting: str) -> float:
        """The whole header counts for header_timeout (see TrackedProtocol)."""
        if waiting == "header" and self._header_since is not None:
            return self._header_since
        return self.last_read

    def read_timed_out(self, waiting: str) -> None:
        """Cut off a client that reads nothing; close one whose header takes too long."""
        transport: Any = self.transport
        if waiting == "send":
            transport.abortConnection()
        else:
            transport.loseConnection()

    def close_if_idle(self) -> bool:
        """Close when idle; True if closed."""
        if self.is_idle() and self.transport is not None:
            self.transport.loseConnection()
            return True
        return False


class HTTPSite(server.Site):
    """A twisted.web Site whose every request goes to the listener's dispatcher."""

    protocol: Any = _Channel  # plain HTTP/1.x, no HTTP/2 negotiation
    requestFactory = _Request
    noisy = False

    def __init__(self, dispatcher: Dispatcher, *, reactor: Any,
                 allow_from: list[Network] | None = None,
                 max_connections: int | None = None, fds: FdLimits | None = None) -> None:
        base: Any = super()
        base.__init__(resource.Resource(), reactor=reactor)
        self.resource = _Root(self)
        self.dispatcher = dispatcher
        # the tracking, allow-list and cap logic every listener factory shares
        self.factory_tracker = tracker = ListenerFactory(
            dispatcher, reactor=reactor, allow_from=allow_from,
            max_connections=max_connections, fds=fds)
        self.quiet_accept_errors = tracker.quiet_accept_errors
        self.stop = tracker.stop

    draining = False

    @property
    def connections(self) -> Any:
        """Open connections (for the drain)."""
        return self.factory_tracker.connections

    @property
    def connections_total(self) -> int:
        """Connections accepted so far."""
        return self.factory_tracker.connections_total

    @property
    def denied(self) -> int:
        """Connections refused by allow_from."""
        return self.factory_tracker.denied

    @property
    def refused(self) -> int:
        """Connections accepted and closed at once past max_connections."""
        return self.factory_tracker.refused

    @property
    def accept_errors(self) -> int:
        """accept() failures (EMFILE...) on the port."""
        return self.factory_tracker.accept_errors

    @property
    def max_connections(self) -> int:
        """The connection cap."""
        return self.factory_tracker.max_connections

    @property
    def timed_out(self) -> dict[str, int]:
        """Connections closed by a read timeout (twisted.web's own: not counted)."""
        return self.factory_tracker.timed_out

    def buildProtocol(self, addr: IAddress | None) -> Any:
        tracker = self.factory_tracker
        if not tracker.admit(addr):
            return None  # the port closes the socket at once
        base: Any = super()
        channel = base.buildProtocol(addr)
        channel.totalHeadersSize = self.dispatcher.max_param_bytes
        channel.connected_at = self.reactor.seconds()
        return channel

    def log(self, request: Any) -> None:
        """No access log: the listener keeps counters (and nginx logs requests)."""
