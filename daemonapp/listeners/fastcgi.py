"""A FastCGI 1.0 responder on a Twisted Protocol (the wire protocol only, no WSGI here).

Records may be split at any byte; name/value pairs use 1- or 4-byte lengths; requests
are multiplexed by id; GET_VALUES, KEEP_CONN, ABORT_REQUEST, UNKNOWN_TYPE and
UNKNOWN_ROLE are handled as the spec says. Records for a request id that is not active
are ignored; the connection is closed only for a bad version or unparsable bytes.
Output goes out in STDOUT records of at most 65,535 bytes, with flow control through
the transport's producer API. The records' format and codec are fastcgi_records's.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemonapp.listeners.budget import BODY_READ_SIZE, ConnectionBuffer, read_in_large_pieces
from daemonapp.listeners.connections import LINGER_TIMEOUT, ListenerFactory, TrackedProtocol
from daemonapp.listeners.exchange import DONE, NEW, Exchange, Headers, cgi_head, parse_length
from daemonapp.listeners.fastcgi_records import (
    BEGIN_BODY,
    FCGI_ABORT_REQUEST,
    FCGI_BEGIN_REQUEST,
    FCGI_CANT_MPX_CONN,
    FCGI_DATA,
    FCGI_END_REQUEST,
    FCGI_GET_VALUES,
    FCGI_GET_VALUES_RESULT,
    FCGI_KEEP_CONN,
    FCGI_OVERLOADED,
    FCGI_PARAMS,
    FCGI_REQUEST_COMPLETE,
    FCGI_RESPONDER,
    FCGI_STDERR,
    FCGI_STDIN,
    FCGI_STDOUT,
    FCGI_UNKNOWN_ROLE,
    FCGI_UNKNOWN_TYPE,
    FCGI_VERSION_1,
    HEADER,
    MAX_RECORD_CONTENT,
    STDOUT_EMPTY_AND_END,
    ProtocolError,
    decode_pairs,
    encode_pairs,
    end_request,
    pack_header,
    record,
    unpack_header,
)
from daemonapp.listeners.limits import Dispatcher

# The record codec (fastcgi_records) is re-exported: callers of the wire protocol
# (tests, bench) take the record types and encoders from here.
__all__ = [
    "DEFAULT_MAX_REQS", "FCGI_ABORT_REQUEST", "FCGI_BEGIN_REQUEST", "FCGI_CANT_MPX_CONN",
    "FCGI_DATA", "FCGI_END_REQUEST", "FCGI_GET_VALUES", "FCGI_GET_VALUES_RESULT",
    "FCGI_KEEP_CONN", "FCGI_OVERLOADED", "FCGI_PARAMS", "FCGI_REQUEST_COMPLETE",
    "FCGI_RESPONDER", "FCGI_STDERR", "FCGI_STDIN", "FCGI_STDOUT", "FCGI_UNKNOWN_ROLE",
    "FCGI_UNKNOWN_TYPE", "FCGI_VERSION_1", "HEADER", "MAX_RECORD_CONTENT",
    "FastCGIExchange", "FastCGIFactory", "FastCGIProtocol", "ProtocolError",
    "decode_pairs", "encode_pairs", "end_request", "record",
]

log = Logger()

_TEXT_HEAD = (b"Status: 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
              b"Content-Length: %d\r\n\r\n")
#: FCGI_MAX_REQS (and FCGI_MAX_CONNS) without max_concurrent (a native handler).
DEFAULT_MAX_REQS = 1000

#: FCGI_UNKNOWN_TYPE answers by record type (at most 256)
_UNKNOWN_REPLIES: dict[int, bytes] = {}


class FastCGIExchange(Exchange):
    """A FastCGI request: the params, body and response of one request id."""

    #: reactor time the first byte of its BEGIN_REQUEST record arrived (header_timeout
    #: bounds the time from there to the end of its params)
    began_at = 0.0

    def __init__(self, dispatcher: Dispatcher, proto: FastCGIProtocol, rid: int,
                 keep_conn: bool) -> None:
        super().__init__(dispatcher)
        self.proto = proto
        self.rid = rid
        self.keep_conn = keep_conn
        self.param_chunks: list[bytes] | None = []
        self.param_len = 0
        self.buffer = proto.buffer

    def _emit_whole(self, status: str, headers: Headers, body: bytes) -> None:
        if len(body) > MAX_RECORD_CONTENT:
            # not joined: a big body is written (or waits for a slow peer) as the app's
            # own bytes, never copied whole
            self.proto.send_stdout(self, cgi_head(status, headers), False)
            self.proto.send_stdout(self, body, True)
            return
        self.proto.send_stdout(self, cgi_head(status, headers) + body, True)

    def respond_text(self, body: bytes) -> None:
        # the native handler's common case, without building a header list
        if self.state == DONE or self.head_sent:
            super().respond_text(body)
            return
        self.head_sent = True
        if len(body) > MAX_RECORD_CONTENT:  # not joined: see _emit_whole
            self.proto.send_stdout(self, _TEXT_HEAD % len(body), False)
            self.proto.send_stdout(self, body, True)
        else:
            self.proto.send_stdout(self, _TEXT_HEAD % len(body) + body, True)
        self.dispatcher.finished(self)

    def _emit_head(self, status: str, headers: Headers) -> None:
        self.proto.send_stdout(self, cgi_head(status, headers), False)

    def _emit_body(self, data: bytes) -> None:
        self.proto.send_stdout(self, data, False)

    def _emit_end(self) -> None:
        self.proto.send_stdout(self, b"", True)

    def _emit_abort(self) -> None:
        self.proto.abort_connection(self)

    def _pause_input(self) -> None:
        self.proto.pause_input()

    def _resume_input(self) -> None:
        self.proto.resume_input()

    @property
    def peer(self) -> str:
        return self.params.get("REMOTE_ADDR", "") or "fastcgi"


@implementer(IPushProducer)
class FastCGIProtocol(TrackedProtocol):
    """One connection from the web server, carrying one or more requests."""

    factory: FastCGIFactory

    def __init__(self) -> None:
        self.requests: dict[int, FastCGIExchange] = {}
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._need = 8
        self._closed = False
        self._input_pauses = 0
        self._output_paused = False
        #: reactor time the first byte of ``_pending`` arrived
        self._pending_since = 0.0
        #: requests answered before their body ended, whose body is read and dropped:
        #: request id -> close the connection once that body has ended (no KEEP_CONN)
        self._dropping: dict[int, bool] = {}
        #: body bytes the peer may still send for them before the connection is closed
        self._drop_left = 0
        self.buffer = ConnectionBuffer()
        self._out: collections.deque[tuple[FastCGIExchange, memoryview, bool]] = (
            collections.deque())
        #: requests whose params arrived while the peer did not read its answers
        self._deferred: list[FastCGIExchange] = []

    # -- connection -------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connection_opened(self)
        self.dispatcher = self.factory.dispatcher
        self.max_param_bytes = self.dispatcher.max_param_bytes
        self.max_reqs = self.factory.max_reqs()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.enable_direct_writes()
        self._seconds = self.factory.reactor.seconds

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self.cancel_linger()
        self._pending = []
        self._out.clear()
        self._deferred = []
        requests, self.requests = self.requests, {}
        for ex in requests.values():
            ex.peer_gone()
        self.factory.connection_closed(self)

    def is_idle(self) -> bool:
        return not self.requests and not self._pending_len

    def waiting_for(self) -> str | None:
        if self._output_paused and not self._closed:
            return "send"
        if self._closed or self._input_pauses or self.lingering:
            return None  # paused on purpose, or about to close anyway
        requests = self.requests
        if not requests:
            return "header" if self._pending_len else "idle"
        body = False
        for ex in requests.values():
            if ex.param_chunks is not None:
                return "header"
            if not ex.body_complete:
                body = True
        if body:
            return "body"
        return "header" if self._pending_len else None

    def waiting_since(self, waiting: str) -> float:
        if waiting != "header":
            return self.last_read
        # the oldest header in progress: params not complete, else a partial record
        since: float | None = None
        for ex in self.requests.values():
            if ex.param_chunks is not None and (since is None or ex.began_at < since):
                since = ex.began_at
        return self._pending_since if since is None else since

    # producer API: the transport tells us when its write buffer is full
    def pauseProducing(self) -> None:
        if self._output_paused:
            return
        self._output_paused = True
        # a peer that does not read its answers gets no more of its bytes read (new
        # requests, records to answer): what it makes us hold stays bounded
        self.pause_input()
        self.last_read = self._seconds()  # the send timeout counts from here
        for ex in self.requests.values():
            ex.pause_output()

    def resumeProducing(self) -> None:
        if not self._output_paused:
            return
        self._output_paused = False
        self.last_read = self._seconds()
        self._flush_out()
        if self._output_paused:
            return  # paused again by what was queued
        deferred, self._deferred = self._deferred, []
        for ex in deferred:
            if ex.state == NEW:
                self.dispatcher.params_ready(ex)
        for ex in list(self.requests.values()):
            ex.resume_output()
        self.resume_input()

    def stopProducing(self) -> None:
        self._closed = True

    def pause_input(self) -> None:
        """An application is behind reading its body: stop reading from the peer."""
        self._input_pauses += 1
        if self._input_pauses == 1 and not self._closed:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_input(self) -> None:
        """An application caught up."""
        if self._input_pauses > 0:
            self._input_pauses -= 1
            if self._input_pauses == 0 and not self._closed:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    def _protocol_error(self, message: str, **fields: Any) -> None:
        self.dispatcher.peer_log.warn("malformed", "FastCGI: " + message
                                      + "; closing the connection", log=log, **fields)
        self._closed = True
        self._pending = []
        self._pending_len = 0
        self.close()

    # -- parsing (the hot path) -------------------------------------------------------

    #: the socket is read BODY_READ_SIZE at a time (a large body is arriving)
    _large_reads = False
    #: requests whose params ended in the read being parsed (dispatched after it)
    _ready: list[FastCGIExchange] | None = None
    #: UNKNOWN_TYPE answers to the read being parsed (written in one go after it)
    _replies: list[bytes] | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        now = self.last_read = self._seconds()
        offset = 0
        size = len(data)
        while self._pending:
            # a record begun in an earlier read: complete it with just the bytes it lacks
            # (joining the pending part with the whole read copied every body once more)
            missing = self._need - self._pending_len
            if size - offset < missing:
                rest = data[offset:] if offset else data
                self._pending.append(rest)
                self._pending_len += len(rest)
                self._dispatch()
                return
            pending = self._pending
            pending.append(data[offset:offset + missing])
            offset += missing
            whole = b"".join(pending)
            self._pending = []
            self._pending_len = 0
            done = self._records(whole, 0, self._pending_since)
            if done < 0:
                self._ready = self._replies = None
                return
            if done < len(whole):  # only its header so far: its length is known now
                self._pending = [whole]
                self._pending_len = len(whole)
        if offset < size:
            done = self._records(data, offset, now)
            if done < 0:
                self._ready = self._replies = None
                return
            if done < size:
                rest = data[done:]
                self._pending = [rest]
                self._pending_len = len(rest)
                self._pending_since = now
        self._dispatch()

    def _dispatch(self) -> None:
        """Send the UNKNOWN_TYPE answers and dispatch the requests of the last read."""
        replies, self._replies = self._replies, None
        if replies is not None:
            self.transport.write(b"".join(replies))  # type: ignore[union-attr]
        ready, self._ready = self._ready, None
        if ready is not None:
            params_ready = self.dispatcher.params_ready
            for ex in ready:
                if self._output_paused:
                    # the peer reads none of our answers: its next requests wait
                    self._deferred.append(ex)
                elif ex.state == NEW:  # not aborted meanwhile
                    params_ready(ex)

    def _records(self, data: bytes, offset: int, began: float) -> int:
        """Handle the whole records of ``data`` from ``offset`` on (``began``: when they
        arrived); the offset where the first incomplete one starts, or -1 once the
        connection is closed."""
        size = len(data)
        requests = self.requests
        ready = self._ready
        replies = self._replies
        view: memoryview | None = None
        # a spooled body's records of this read, written at once (nginx's are 32 KiB)
        spooling: FastCGIExchange | None = None
        pieces: list[memoryview] = []
        while size - offset >= 8:
            version, rtype, rid, clen, plen = unpack_header(data, offset)
            if version != FCGI_VERSION_1:
                self._protocol_error("unsupported record version {version}", version=version)
                return -1
            start = offset + 8
            end = start + clen + plen
            if end > size:
                self._need = end - offset
                break
            offset = end
            if spooling is not None:
                if rtype == FCGI_STDIN and clen and requests.get(rid) is spooling:
                    assert view is not None
                    pieces.append(view[start:start + clen])
                    continue
                spooling.feed_body_pieces(pieces)
                spooling = None
                if self._closed:
                    return -1
            if rtype == FCGI_STDIN:
                ex = requests.get(rid)
                if ex is None:
                    close = self._dropping.get(rid)
                    if close is None:
                        continue
                    if clen:  # the body of a request answered already: dropped (bounded)
                        self._drop_left -= clen
                        if self._drop_left < 0:
                            self._drop_over("past its length or max_body_bytes")
                            return -1
                        continue
                    self._body_dropped(rid)  # the body we waited for has ended
                    if self._closed:
                        return -1
                    continue
                if clen:
                    if ex.spool is None and ex.input is None:
                        ex.feed_body(data[start:start + clen])  # kept: its own bytes
                    else:  # copied on (to the spool file, the app's buffer): no slice copy
                        if view is None:
                            view = memoryview(data)
                        if ex.input is None:
                            spooling, pieces = ex, [view[start:start + clen]]
                        else:
                            ex.feed_body(view[start:start + clen])  # type: ignore[arg-type]
                else:
                    ex.end_body()
                    if self._large_reads and all(other.body_complete
                                                 for other in requests.values()):
                        self._large_reads = False
                        read_in_large_pieces(self.transport, False)
            elif rtype == FCGI_PARAMS:
                ex = requests.get(rid)
                if ex is None or ex.param_chunks is None:
                    continue
                if clen:
                    ex.param_len += clen
                    if ex.param_len > self.max_param_bytes:
                        self._params_too_large(ex)
                        return -1
                    ex.param_chunks.append(data[start:start + clen])
                    continue
                chunks = ex.param_chunks
                ex.param_chunks = None
                try:
                    ex.params = decode_pairs(chunks[0] if len(chunks) == 1
                                             else b"".join(chunks))
                except ProtocolError as err:
                    self._protocol_error("bad params for request {rid}: {error}",
                                         rid=rid, error=str(err))
                    return -1
                self.requests_seen += 1
                if not self._large_reads:
                    length = parse_length(ex.params.get("CONTENT_LENGTH", ""))
                    if length is not None and length >= BODY_READ_SIZE:
                        self._large_reads = True
                        read_in_large_pieces(self.transport, True)
                # dispatched after this read: if the body's end is in it too, the app
                # gets a plain BytesIO instead of a streaming input
                if ready is None:
                    ready = [ex]
                else:
                    ready.append(ex)
            elif rtype == FCGI_BEGIN_REQUEST:
                if rid == 0 or rid in requests:
                    continue
                if clen != 8:
                    self._protocol_error("BEGIN_REQUEST body of {size} bytes", size=clen)
                    return -1
                role, flags = BEGIN_BODY.unpack_from(data, start)
                if role != FCGI_RESPONDER:
                    self.transport.write(  # type: ignore[union-attr]
                        end_request(rid, 0, FCGI_UNKNOWN_ROLE))
                    if not flags & FCGI_KEEP_CONN and not requests:
                        self._close_now()  # as after any request without KEEP_CONN
                        return -1
                    continue
                if len(requests) >= self.max_reqs:
                    self._overloaded(rid, bool(flags & FCGI_KEEP_CONN))
                    if self._closed:
                        return -1
                    continue
                ex = FastCGIExchange(self.dispatcher, self, rid, bool(flags & FCGI_KEEP_CONN))
                ex.began_at = began
                if self._output_paused:
                    ex.output_paused = True
                requests[rid] = ex
            elif rtype == FCGI_ABORT_REQUEST:
                ex = requests.pop(rid, None)
                if ex is None:
                    continue
                ex.peer_gone()
                self._drop_out(rid)
                self.transport.write(end_request(rid))  # type: ignore[union-attr]
                if not ex.keep_conn:
                    self.close()
            elif rid == 0:
                if rtype == FCGI_GET_VALUES:
                    self._get_values(data[start:start + clen])
                else:
                    # written once per read: a flood of 8-byte records of unknown types
                    # cost a write call each (1.4 s of reactor for 20 such peers)
                    reply = _UNKNOWN_REPLIES.get(rtype)
                    if reply is None:
                        reply = _UNKNOWN_REPLIES[rtype] = record(
                            FCGI_UNKNOWN_TYPE, 0, bytes([rtype]) + bytes(7))
                    if replies is None:
                        replies = [reply]
                    else:
                        replies.append(reply)
            # any other record for a request id is ignored (DATA, or types we don't know)
            if self._closed:
                return -1
        else:
            self._need = 8
        if spooling is not None:
            spooling.feed_body_pieces(pieces)
            if self._closed:
                return -1
        self._ready = ready
        self._replies = replies
        return offset

    def _overloaded(self, rid: int, keep_conn: bool) -> None:
        """More request ids at once than FCGI_MAX_REQS: 503 with Retry-After at once.

        Not FCGI_OVERLOADED (nor FCGI_CANT_MPX_CONN): nginx turns those into a 502. The
        rest of the request's records are ignored (its id is not active).
        """
        status, headers, body = self.dispatcher.overloaded()
        self.send(b"".join((record(FCGI_STDOUT, rid, cgi_head(status, headers) + body),
                            record(FCGI_STDOUT, rid), end_request(rid))))
        self._drop_body(rid, not keep_conn)

    def _params_too_large(self, ex: FastCGIExchange) -> None:
        ex.param_chunks = None
        ex.keep_conn = False
        self.dispatcher.params_too_large(ex)
        self._closed = True
        self._pending = []
        self._pending_len = 0
        self.close()

    def _get_values(self, content: bytes) -> None:
        try:
            names = decode_pairs(content)
        except ProtocolError as err:
            self._protocol_error("bad GET_VALUES: {error}", error=str(err))
            return
        known = self.factory.values()
        reply = [(name.encode("latin-1"), known[name].encode("latin-1"))
                 for name in names if name in known]
        self.transport.write(  # type: ignore[union-attr]
            record(FCGI_GET_VALUES_RESULT, 0, encode_pairs(reply)))

    # -- output -----------------------------------------------------------------------

    def send_stdout(self, ex: FastCGIExchange, data: bytes, end: bool) -> None:
        """Write ``data`` as STDOUT records for ``ex``; with ``end``, also END_REQUEST.

        While the peer does not read (the transport paused us), answers wait in
        ``_out`` as the application's own bytes, not copied into the transport's
        buffer: a peer that pipelines requests and never reads holds no more than
        what the applications produced.
        """
        if self._closed:
            return
        if self._output_paused or self._out:
            self._out.append((ex, memoryview(data), end))
            return
        rid = ex.rid
        size = len(data)
        if size <= MAX_RECORD_CONTENT:
            if end:
                tail = STDOUT_EMPTY_AND_END.pack(1, FCGI_STDOUT, rid, 0, 0,
                                                  1, FCGI_END_REQUEST, rid, 8, 0, 0, 0)
                if size:
                    self.send(b"".join((pack_header(1, FCGI_STDOUT, rid, size, 0),
                                        data, tail)))
                else:
                    self.send(tail)
                self._ended(ex)
            elif size:
                self.send(pack_header(1, FCGI_STDOUT, rid, size, 0) + data)
            return
        self._write_records(ex, memoryview(data), end)

    def _write_records(self, ex: FastCGIExchange, view: memoryview, end: bool) -> bool:
        """Write ``view`` record by record while the peer reads; queue what is left.

        True when all of it (and the end) went to the transport.
        """
        rid = ex.rid
        transport: Any = self.transport
        size = len(view)
        pos = 0
        while pos < size:
            chunk = view[pos:pos + MAX_RECORD_CONTENT]
            pos += len(chunk)
            transport.write(pack_header(1, FCGI_STDOUT, rid, len(chunk), 0) + chunk)
            if self._closed:
                return True
            if self._output_paused and (pos < size or end):
                self._out.appendleft((ex, view[pos:], end))
                return False
        if end:
            transport.write(STDOUT_EMPTY_AND_END.pack(1, FCGI_STDOUT, rid, 0, 0,
                                                       1, FCGI_END_REQUEST, rid, 8, 0, 0, 0))
            self._ended(ex)
        return True

    def _flush_out(self) -> None:
        """The peer reads again: write the queued answers until it pauses us again."""
        out = self._out
        while out and not self._output_paused and not self._closed:
            ex, view, end = out.popleft()
            if not self._write_records(ex, view, end):
                return

    def _drop_out(self, rid: int) -> None:
        """Forget the queued output of request ``rid`` (aborted by the web server)."""
        if self._out:
            self._out = collections.deque(item for item in self._out if item[0].rid != rid)

    def _ended(self, ex: FastCGIExchange) -> None:
        """``ex``'s END_REQUEST went out: forget it, close the connection if it must."""
        rid = ex.rid
        requests = self.requests
        if requests.get(rid) is ex:
            del requests[rid]
        # draining: hand the web server's next request to the new process
        close = not ex.keep_conn or (self.factory.draining and not requests)
        if ex.body_complete:
            if close:
                self.close()
        elif close and requests:
            self.close()
        else:
            declared = parse_length(ex.params.get("CONTENT_LENGTH", ""))
            self._drop_body(rid, close, 0 if declared is None else declared - ex.body_len)

    def _drop_body(self, rid: int, close: bool, expected: int = 0) -> None:
        """Request ``rid`` was answered before its body ended: read and drop the rest.

        Closing under the web server's writes would fail the request (Apache's
        mod_proxy_fcgi answers its own 503 on EPIPE), so the connection is closed (without
        KEEP_CONN) only once that body has ended, and kept (with KEEP_CONN) for the next
        request. Bounded either way: a body still coming after LINGER_TIMEOUT, or more than
        the ``expected`` rest of its declared length (at least max_body_bytes: a body
        without a length may never end), closes the connection.
        """
        if not self._dropping:
            self._drop_left = 0
            if not self.lingering:
                self.linger()
        self._drop_left += max(self.dispatcher.max_body_bytes, expected)
        self._dropping[rid] = close
        # the answer is out: nothing reads that body any more (but a peer that does not
        # read its answers stays paused)
        pauses = 1 if self._output_paused else 0
        if self._input_pauses > pauses:
            self._input_pauses = pauses
            if not pauses:
                self.transport.resumeProducing()  # type: ignore[union-attr]

    def _body_dropped(self, rid: int) -> None:
        """The body of answered request ``rid`` has ended."""
        close = self._dropping.pop(rid)
        if not self._dropping:
            self.cancel_linger()
        if close and not self.requests:  # else a request began meanwhile: its end closes
            self._close_now()

    def _drop_over(self, why: str) -> None:
        """A body being dropped went on past its bound: close the connection."""
        self.dispatcher.peer_log.warn(
            "drop", "FastCGI: a request answered before its body ended kept sending it "
            "({why}); closing the connection", log=log, why=why)
        self._dropping = {}
        self.cancel_linger()
        self._close_now()

    def linger_over(self) -> None:
        dropping, self._dropping = self._dropping, {}
        if not dropping or (self.requests and all(dropping.values())):
            return  # a request began meanwhile: its end closes the connection
        if any(not close for close in dropping.values()):
            self._drop_over(f"{LINGER_TIMEOUT:g} s after the answer")
            return
        self._close_now()

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending = []
            self._pending_len = 0
            self.close()

    def abort_connection(self, ex: FastCGIExchange) -> None:
        """End a response cut short: close the connection so the web server sees it."""
        if self.requests.get(ex.rid) is ex:
            del self.requests[ex.rid]
        if not self._closed:
            self._closed = True
            self.close()


class FastCGIFactory(ListenerFactory):
    """Makes FastCGIProtocol connections for one listener."""

    protocol_class = FastCGIProtocol

    def max_reqs(self) -> int:
        """FCGI_MAX_REQS: the request ids one connection may have open at once.

        What the listener can answer or queue (max_concurrent + backlog); more would be
        answered 503 by the dispatcher anyway, and each holds memory.
        """
        dispatcher = self.dispatcher
        if dispatcher.max_concurrent is not None:
            return dispatcher.max_concurrent + dispatcher.backlog
        return DEFAULT_MAX_REQS

    def values(self) -> dict[str, str]:
        """The answers to FCGI_GET_VALUES."""
        max_reqs = self.max_reqs()
        return {
            "FCGI_MAX_CONNS": str(max_reqs),
            "FCGI_MAX_REQS": str(max_reqs),
            "FCGI_MPXS_CONNS": "1",
        }
