"""The factory every listener protocol shares: peer allow-list and connection tracking.

The tracking lets a draining listener tell connections that still owe an answer from
idle keep-alive ones it may close.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import address, tcp
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from daemonapp.listeners.limits import Dispatcher

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: After answering a request whose body is still arriving, a connection about to close
#: reads (and drops) the rest of the body first, for at most this long: closing under
#: the web server's writes makes it fail the request (Apache's mod_proxy_fcgi: EPIPE
#: "sending empty stdin", then its own 503) instead of relaying our answer.
LINGER_TIMEOUT = 5.0
#: Seconds between two looks at the connections' read timeouts (header, body, idle).
SWEEP_EVERY = 1.0


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
        if getattr(transport, "producer", None) is self:
            transport.unregisterProducer()
        transport.loseConnection()

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

    def waiting_for(self) -> str | None:
        """What the connection waits for from its peer: "header", "body", "idle" or None.

        None while nothing is expected (an app runs, the peer is paused on purpose,
        the connection lingers or closes): no read timeout applies then.
        """
        return None

    def read_timed_out(self, waiting: str) -> None:
        """The peer was silent too long while we waited for ``waiting``: close."""
        self.close()

    def close_if_idle(self) -> bool:
        """Close the connection when idle; return True if it was closed."""
        if self.is_idle() and self.transport is not None:
            self.close()
            return True
        return False


class ListenerFactory(Factory):
    """Builds one protocol per connection; refuses peers outside ``allow_from``."""

    log = Logger()
    noisy = False  # no "Starting factory" lines: the listener logs what it does
    protocol_class: type[TrackedProtocol] = TrackedProtocol
    #: set by the listener while it drains
    draining = False

    def __init__(self, dispatcher: Dispatcher, *, reactor: Any,
                 allow_from: list[Network] | None = None) -> None:
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.allow_from = allow_from
        self.connections: set[TrackedProtocol] = set()
        self.connections_total = 0
        self.denied = 0
        self.timed_out = {"header": 0, "body": 0, "idle": 0}

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
        if addr is not None and not self.allowed(addr):
            self.denied += 1
            self.log.warn("refused a connection from {peer}: not in allow_from",
                          peer=getattr(addr, "host", str(addr)))
            return None
        proto = self.make_protocol()
        proto.factory = self
        proto.connected_at = self.reactor.seconds()
        self.connections_total += 1
        return proto

    def make_protocol(self) -> TrackedProtocol:
        """A new protocol instance (subclasses pass their limits)."""
        return self.protocol_class()

    _sweep_call: Any = None

    def connection_opened(self, proto: TrackedProtocol) -> None:
        """Called by the protocol's connectionMade."""
        self.connections.add(proto)
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
                    "idle": limits.idle_timeout}
        for proto in list(self.connections):
            if getattr(proto.transport, "disconnecting", True):
                continue  # closing already
            waiting = proto.waiting_for()
            if waiting is None:
                continue
            if now - proto.last_read >= timeouts[waiting]:
                self.timed_out[waiting] += 1
                if waiting != "idle":
                    self.log.warn("closing a connection silent for {timeout}s while "
                                  "waiting for a request's {waiting}",
                                  timeout=timeouts[waiting], waiting=waiting)
                proto.read_timed_out(waiting)
        if self.connections:
            self._sweep_call = self.reactor.callLater(SWEEP_EVERY, self._sweep)

    def connection_closed(self, proto: TrackedProtocol) -> None:
        """Called by the protocol's connectionLost."""
        self.connections.discard(proto)
