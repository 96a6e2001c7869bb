"""The factory every listener protocol shares: peer allow-list, connection cap, tracking.

The tracking lets a draining listener tell connections that still owe an answer from
idle keep-alive ones it may close, and closes connections whose peer is silent (or reads
nothing) too long. The cap keeps connections below the process's fd limit: past it a new
connection is accepted and closed at once, with one log line a minute.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from twisted.internet import address, tcp
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, Logger, globalLogPublisher

from daemonapp.listeners.budget import PROCESS_FDS, FdLimits
from daemonapp.listeners.limits import Dispatcher
from daemonapp.ratelog import Episode, RateLog

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: After answering a request whose body is still arriving, a connection about to close
#: reads (and drops) the rest of the body first, for at most this long: closing under
#: the web server's writes makes it fail the request (Apache's mod_proxy_fcgi: EPIPE
#: "sending empty stdin", then its own 503) instead of relaying our answer.
LINGER_TIMEOUT = 5.0
#: Seconds between two looks at the connections' read timeouts (header, body, idle).
SWEEP_EVERY = 1.0
#: Seconds between two log lines about refused connections (each gives the count).
REFUSAL_LOG_EVERY = 60.0


class TrackedProtocol(Protocol):
    """A listener connection the factory can ask about its state during a drain."""

    factory: ListenerFactory
    #: reactor time the connection was made (for the drain's grace for fresh connections)
    connected_at = 0.0
    #: requests that arrived on this connection so far
    requests_seen = 0
    #: the socket of a plain tcp/unix transport, written to directly (see :meth:`send`)
    _socket: Any = None

    def enable_direct_writes(self) -> None:
        """Let :meth:`send` write to the socket itself (a plain tcp or unix transport)."""
        transport = self.transport
        if (isinstance(transport, tcp.Connection) and hasattr(transport, "_tempDataBuffer")
                and hasattr(transport, "dataBuffer")):
            self._socket = transport.socket

    def send(self, data: bytes) -> None:
        """``transport.write(data)``, sent at once when nothing waits in its buffer.

        Twisted buffers every write until the next loop iteration, which costs two
        epoll_ctl calls and a loop round trip per answer, and delays it by a whole
        scheduler time slice while daemons are busy. Whatever the socket does not take
        at once is buffered by the transport as usual (with its producer pausing).
        """
        transport: Any = self.transport
        sock = self._socket
        if (sock is not None and not transport._tempDataBuffer and not transport.dataBuffer
                and transport.connected and not transport.disconnecting
                and not transport._writeDisconnected):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # would block, or an error the transport reports when it writes
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def close(self) -> None:
        """``transport.loseConnection()``, unregistering us as its producer first.

        With a producer registered, Twisted's FileDescriptor closes only once it is
        unregistered if the producer was paused when the buffer emptied: a connection
        that once sent a big answer to a slow reader would never close (its fd leaks,
        and a drain would wait for it forever).
        """
        transport: Any = self.transport
        if transport is None:
            return
        if self.closing_since is None:
            self.closing_since = self.factory.reactor.seconds()
        if getattr(transport, "producer", None) is self:
            transport.unregisterProducer()
        transport.loseConnection()

    #: reactor time of :meth:`close`: a connection still open send_timeout later has a
    #: peer that does not read the end of its answer (Twisted would wait for ever)
    closing_since: float | None = None

    #: the timer of a linger (see :meth:`linger`), None when not lingering
    _linger_call: Any = None

    def linger(self) -> None:
        """Close once the peer has sent the rest of the answered request's body.

        The protocol calls :meth:`end_linger` when the body ends; a timer does after
        LINGER_TIMEOUT if it never does. Meanwhile the body's bytes are dropped.
        """
        self._linger_call = self.factory.reactor.callLater(LINGER_TIMEOUT, self.end_linger)

    @property
    def lingering(self) -> bool:
        return self._linger_call is not None

    def end_linger(self) -> None:
        """The linger is over: close (see :meth:`linger_over`)."""
        self.cancel_linger()
        self.linger_over()

    def cancel_linger(self) -> None:
        call, self._linger_call = self._linger_call, None
        if call is not None and call.active():
            call.cancel()

    def linger_over(self) -> None:
        """Close the connection at the end of a linger."""
        self.close()

    def is_idle(self) -> bool:
        """True when no request is in progress or partly received."""
        raise NotImplementedError

    #: reactor time of the last bytes read (set by the protocol's dataReceived)
    last_read = 0.0
    #: bytes in the transport's write buffer at the sweep's last look
    unsent_seen: int | None = None

    def waiting_for(self) -> str | None:
        """What the connection waits for from its peer: "header", "body", "idle", "send"
        (that it reads our answers) or None.

        None while nothing is expected (an app runs, the peer is paused on purpose,
        the connection lingers or closes): no read timeout applies then.
        """
        return None

    def waiting_since(self, waiting: str) -> float:
        """Reactor time the timeout for ``waiting`` counts from.

        The last read by default (body and idle count silence, as nginx's
        client_body_timeout); a protocol gives the start of the header it waits for,
        since header_timeout bounds the whole header (nginx's client_header_timeout),
        however slowly it trickles in.
        """
        return self.last_read

    def read_timed_out(self, waiting: str) -> None:
        """The peer was silent too long while we waited for ``waiting``: close.

        A peer that reads none of its answers ("send") is cut off at once: a close
        would wait for the answers to be read first.
        """
        if waiting == "send":
            transport: Any = self.transport
            transport.abortConnection()
            return
        self.close()

    def close_if_idle(self) -> bool:
        """Close the connection when idle; return True if it was closed."""
        if self.is_idle() and self.transport is not None:
            self.close()
            return True
        return False


def _sent_some(proto: TrackedProtocol) -> bool:
    """Whether the transport's write buffer shrank since the last look: the peer reads.

    Twisted resumes a paused producer only once its buffer is empty: a peer reading a
    full buffer slowly would otherwise look like one that reads nothing.
    """
    transport: Any = proto.transport
    data = getattr(transport, "dataBuffer", None)
    if not isinstance(data, bytes | memoryview | bytearray):
        return False
    unsent = len(data) - transport.offset + transport._tempDataLen
    seen, proto.unsent_seen = proto.unsent_seen, unsent
    return seen is not None and unsent < seen


class ListenerFactory(Factory):
    """Builds one protocol per connection; refuses peers outside ``allow_from``."""

    log = Logger()
    noisy = False  # no "Starting factory" lines: the listener logs what it does
    protocol_class: type[TrackedProtocol] = TrackedProtocol
    #: set by the listener while it drains
    draining = False

    def __init__(self, dispatcher: Dispatcher, *, reactor: Any,
                 allow_from: list[Network] | None = None,
                 max_connections: int | None = None, fds: FdLimits | None = None) -> None:
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.allow_from = allow_from
        self.connections: set[TrackedProtocol] = set()
        self.connections_total = 0
        self.denied = 0
        self.timed_out = {"header": 0, "body": 0, "idle": 0, "send": 0}
        self._max_connections = max_connections
        self.fds = fds if fds is not None else PROCESS_FDS
        #: connections accepted and closed at once past the cap
        self.refused = 0
        #: accept() failures (EMFILE...) Twisted met on our port
        self.accept_errors = 0
        #: refusals and accept errors: one line a minute at most, with the counts
        self._refusals = RateLog(reactor.seconds, every=REFUSAL_LOG_EVERY,
                                 call_later=reactor.callLater)

    @property
    def max_connections(self) -> int:
        """This listener's cap: the configured one, else what the fd limit allows."""
        if self._max_connections is not None:
            return self._max_connections
        return self.fds.max_connections

    def full(self) -> bool:
        """Whether a new connection would go over this listener's or the process's cap."""
        return (len(self.connections) >= self.max_connections
                or self.fds.connections >= self.fds.max_connections)

    def admit(self, addr: IAddress | None) -> bool:
        """Whether to serve a connection just accepted from ``addr`` (else it is closed)."""
        if addr is not None and not self.allowed(addr):
            self.denied += 1
            self.dispatcher.peer_log.warn(
                "denied", "refused a connection from {peer}: not in allow_from",
                log=self.log, peer=getattr(addr, "host", str(addr)))
            return False
        if self.full():
            self.refused += 1
            self._note("refused")
            return False
        self.connections_total += 1
        return True

    def _note(self, what: str) -> None:
        """Count a refusal or accept error; log the counts at most once a minute."""
        self._refusals.occurred("refusals", self._log_refusals, tag=what)

    def _log_refusals(self, episode: Episode) -> None:
        counts = episode.tags
        self.log.warn("{refused} connection(s) accepted and closed at once, {errors} accept "
                      "error(s) (EMFILE...) since the last such line: {open} open, "
                      "max_connections={limit} (fd limit {fd_limit}, {process} listener "
                      "connections in the process)",
                      refused=counts.get("refused", 0), errors=counts.get("accept_error", 0),
                      open=len(self.connections), limit=self.max_connections,
                      fd_limit=self.fds.limit, process=self.fds.connections)

    def accept_observer(self, event: dict[str, Any]) -> None:
        """Twisted's accept-loop log events for our port: accept errors are counted.

        Twisted logs every failed accept() (EMFILE: three lines per connection it then
        accepts and closes): thousands of lines a second when the fd table is full. They
        are counted and reported with the refusals, once a minute; anything else goes on
        to the global log.
        """
        text = str(event.get("log_format", ""))
        if "EMFILE" in text or "Could not accept" in text:
            if "Closed socket" in text or "Could not accept" in text:
                self.accept_errors += 1
                self._note("accept_error")
            return
        globalLogPublisher(event)

    def quiet_accept_errors(self, port: Any) -> None:
        """Route the accept-loop log of ``port`` (a Twisted tcp/unix Port) through us."""
        logger = getattr(port, "_logger", None)
        if isinstance(logger, Logger):
            observer = cast(ILogObserver, self.accept_observer)  # a callable is one
            port._logger = Logger(namespace=logger.namespace, observer=observer)

    def stop(self) -> None:
        """The listener stopped: log what is left to log, cancel our timers."""
        self._refusals.stop()
        sweep, self._sweep_call = self._sweep_call, None
        if sweep is not None and sweep.active():
            sweep.cancel()

    def allowed(self, addr: IAddress) -> bool:
        """Whether ``addr`` may talk to us (unix peers always may)."""
        if self.allow_from is None:
            return True
        if not isinstance(addr, address.IPv4Address | address.IPv6Address):
            return True
        try:
            ip = ipaddress.ip_address(addr.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            mapped = ip.ipv4_mapped
            return any(mapped in net or ip in net for net in self.allow_from)
        return any(ip in net for net in self.allow_from)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if not self.admit(addr):
            return None  # the port closes the socket at once
        proto = self.make_protocol()
        proto.factory = self
        proto.connected_at = self.reactor.seconds()
        return proto

    def make_protocol(self) -> TrackedProtocol:
        """A new protocol instance (subclasses pass their limits)."""
        return self.protocol_class()

    _sweep_call: Any = None

    def connection_opened(self, proto: TrackedProtocol) -> None:
        """Called by the protocol's connectionMade."""
        if proto not in self.connections:
            self.connections.add(proto)
            self.fds.connections += 1
        proto.last_read = self.reactor.seconds()
        if self._sweep_call is None:
            self._sweep_call = self.reactor.callLater(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        """Close connections whose peer was silent past the header/body/idle timeout."""
        self._sweep_call = None
        if not self.connections:
            return
        now = self.reactor.seconds()
        limits = self.dispatcher
        timeouts = {"header": limits.header_timeout, "body": limits.body_timeout,
                    "idle": limits.idle_timeout, "send": limits.send_timeout}
        for proto in list(self.connections):
            if getattr(proto.transport, "disconnecting", True):
                # closing already, once the peer has read the rest of its answer
                since = getattr(proto, "closing_since", None)
                if since is not None and _sent_some(proto):
                    since = proto.closing_since = now  # it reads, however slowly
                if since is not None and now - since >= limits.send_timeout:
                    self.timed_out["send"] += 1
                    limits.peer_log.warn(
                        "send", "closing a connection whose peer read none of its answers "
                        "for {timeout}s", log=self.log, timeout=limits.send_timeout)
                    proto.closing_since = None
                    transport: Any = proto.transport
                    transport.abortConnection()
                continue
            waiting = proto.waiting_for()
            if waiting is None:
                continue
            if waiting == "send" and _sent_some(proto):
                proto.last_read = now  # it reads, however slowly (nginx's send_timeout
                # bounds the time between two writes, not the whole answer)
                continue
            if now - proto.waiting_since(waiting) >= timeouts[waiting]:
                self.timed_out[waiting] += 1
                warn = limits.peer_log.warn
                if waiting == "send":
                    warn("send", "closing a connection whose peer read none of its "
                         "answers for {timeout}s", log=self.log, timeout=timeouts[waiting])
                elif waiting == "header":
                    warn("header", "closing a connection whose request header took over "
                         "{timeout}s", log=self.log, timeout=timeouts[waiting])
                elif waiting != "idle":
                    warn(waiting, "closing a connection silent for {timeout}s while "
                         "waiting for a request's {waiting}", log=self.log,
                         timeout=timeouts[waiting], waiting=waiting)
                proto.read_timed_out(waiting)
        if self.connections:
            self._sweep_call = self.reactor.callLater(SWEEP_EVERY, self._sweep)

    def connection_closed(self, proto: TrackedProtocol) -> None:
        """Called by the protocol's connectionLost."""
        if proto in self.connections:
            self.connections.remove(proto)
            self.fds.connections -= 1
