"""The listener service: binds an endpoint on start, drains on stop (IListener).

Like Twisted's StreamServerEndpointService, plus what a graceful restart needs:
``drain()`` accepts what already waits in the kernel's queue, stops listening, answers
every request in flight and every connection already accepted, then closes the idle
connections.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemonapp.interfaces import IActivityMonitor, IAppHealth, IListener
from daemonapp.listeners.endpoints import EndpointSpec, Prepared, prepare
from daemonapp.listeners.limits import Dispatcher

#: Seconds a connection accepted but still silent is waited for during a drain.
DRAIN_GRACE = 2.0
#: Seconds between two looks at the connections during a drain.
DRAIN_POLL = 0.02
#: Seconds a keep-alive connection must stay unused during a drain before it is closed.
#: A connection is closed right after it answers a request; one the web server keeps
#: unused is closed once it stayed so for this long, which makes it unlikely that the
#: server picks it for a request at the very moment it closes (nginx would retry a GET
#: elsewhere but answer a POST with 502).
DRAIN_IDLE = 0.5


@implementer(IListener)
class Listener(service.Service):
    """One configured listener: an endpoint, a protocol factory and a dispatcher."""

    log = Logger()

    def __init__(self, *, protocol_name: str, endpoint: EndpointSpec, factory: Any,
                 dispatcher: Dispatcher, reactor: Any, app: Any = None,
                 socket_group: str | None = None, name: str | None = None,
                 drain_grace: float = DRAIN_GRACE) -> None:
        self.protocol_name = protocol_name
        self.endpoint = endpoint
        self.factory = factory
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.app = app
        self.socket_group = socket_group
        #: The tcp ports another process of this config still listens on (a takeover):
        #: bound while it does.
        self.share_ports: frozenset[int] = frozenset()
        self.drain_grace = drain_grace
        self.name = name or f"{protocol_name}:{endpoint.description}"  # type: ignore[assignment]
        self.port: IListeningPort | None = None
        self.draining = False
        self._drained: defer.Deferred[None] | None = None
        self._quiet: dict[Any, tuple[int, float]] = {}
        self._drain_waiters: list[defer.Deferred[None]] = []
        self._prepared: Prepared | None = None

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return self.dispatcher.in_flight

    @property
    def health(self) -> bool:
        """True when it serves GET /healthz (``health: true``)."""
        return self.dispatcher.health

    def set_activity_monitor(self, monitor: IActivityMonitor) -> None:
        """Report requests to ``monitor``; /healthz and /metrics ask it (an app providing
        IAppHealth)."""
        self.dispatcher.monitor = monitor
        self.dispatcher.health_source = IAppHealth(monitor, None)

    def refuse_new(self) -> None:
        """Keep accepting, but answer new requests 503 + Retry-After (/healthz: 503)."""
        if not self.dispatcher.refusing:
            self.dispatcher.refusing = True
            self.log.info("listener {name}: a stop began; accepting until the app has "
                          "drained, new requests answered 503", name=self.name)

    def prepare(self) -> None:
        """Bind without taking over any path yet (unix at PATH.new; ports for real).

        The app prepares every listener before it starts any, so a start that fails
        (a port in use) leaves a previous process's sockets as they were.
        """
        if self._prepared is None:
            self._prepared = prepare(self.endpoint, self.factory, self.reactor,
                                     self.socket_group, share_ports=self.share_ports)

    def abandon(self) -> None:
        """Undo `prepare` (the start failed elsewhere)."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.abandon()

    def startService(self) -> None:
        """Bind the endpoint (unix, fd and tcp bind at once; errors raise here)."""
        service.Service.startService(self)
        self.draining = False
        self._drained = None
        self.factory.draining = False
        if self.app is not None and hasattr(self.app, "start"):
            self.app.start()
        # the fd limit as it is now (twistd, a web server or a test may have lowered it)
        self.dispatcher.budget.fds.refresh()
        self.dispatcher.budget.open()  # spool files are kept again (close() stopped it)
        result: list[object] = []
        listening: defer.Deferred[IListeningPort]
        try:
            self.prepare()
        except Exception:
            listening = defer.fail()
        else:
            prepared, self._prepared = self._prepared, None
            assert prepared is not None
            listening = prepared.commit()
        listening.addBoth(result.append)
        if result:
            outcome = result[0]
            if isinstance(outcome, Failure):
                self.running = False  # type: ignore[assignment]
                outcome.raiseException()
            self._listening(outcome)  # type: ignore[arg-type]
            return
        listening.addCallback(self._listening)
        listening.addErrback(self._listen_failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        quiet = getattr(self.factory, "quiet_accept_errors", None)
        if quiet is not None:
            quiet(port)
        if self.draining:
            port.stopListening()

    def _listen_failed(self, failure: Failure) -> None:
        self.log.failure("listener {name} could not listen", failure, name=self.name)

    def stopService(self) -> defer.Deferred[None]:
        """Drain: stop accepting, answer what is in flight."""
        service.Service.stopService(self)
        return self.drain()

    def drain(self) -> defer.Deferred[None]:
        """Stop accepting, answer what is in flight; fires once every connection is done."""
        waiter: defer.Deferred[None] = defer.Deferred()
        if self._drained is not None and self._drained.called:
            waiter.callback(None)
            return waiter
        self._drain_waiters.append(waiter)
        if self.draining:
            return waiter
        self.draining = True
        self.factory.draining = True
        # In flight: every request begun and not answered, one whose body is still
        # arriving (request buffering: not yet running) or queued included.
        self.log.info("listener {name} draining: {in_flight} request(s) in flight",
                      name=self.name, in_flight=self.dispatcher.active)
        port = self.port
        self.port = None
        stopped: defer.Deferred[Any]
        if port is not None:
            # Connections waiting in the kernel's queue would be reset when the socket
            # closes (nginx: 502): accept them first; they are answered like the others.
            real: Any = port
            if (hasattr(real, "doRead") and getattr(real, "connected", False)
                    and not getattr(real, "disconnecting", False)):
                try:
                    real.doRead()
                except Exception:
                    self.log.failure("accepting pending connections failed")
            stopped = defer.maybeDeferred(port.stopListening)
        else:
            stopped = defer.succeed(None)
        self._started_drain_at = self.reactor.seconds()
        stopped.addBoth(lambda _: self._poll())
        return waiter

    def _poll(self) -> None:
        now = self.reactor.seconds()
        busy = self.dispatcher.active > 0
        quiet: dict[Any, tuple[int, float]] = {}
        for conn in list(self.factory.connections):
            if not conn.is_idle() or getattr(conn.transport, "disconnecting", False):
                # closing: the last of an answer may still wait in its write buffer
                # (a slow reader); it is done when the connection is lost
                busy = True
                continue
            seen = conn.requests_seen
            if not seen:
                # accepted but silent: its request may still be on its way
                if now - max(conn.connected_at, self._started_drain_at) >= self.drain_grace:
                    conn.close_if_idle()
                else:
                    busy = True
                continue
            count, since = self._quiet.get(conn, (seen, now))
            if count != seen:
                since = now
            if now - since >= DRAIN_IDLE:
                conn.close_if_idle()
            else:
                quiet[conn] = (seen, since)
                busy = True
        self._quiet = quiet
        if busy:
            self.reactor.callLater(DRAIN_POLL, self._poll)
            return
        if self.app is not None and hasattr(self.app, "stop"):
            self.app.stop()
        self.dispatcher.stop_io_tick()
        self.dispatcher.budget.close()
        stop = getattr(self.factory, "stop", None)
        if stop is not None:
            stop()
        self.log.info("listener {name} drained", name=self.name)
        self._drained = defer.succeed(None)
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def snapshot(self) -> dict[str, object]:
        """A JSON-able status for ``daemonapp status``."""
        snap: dict[str, object] = {
            "name": self.name,
            "protocol": self.protocol_name,
            "endpoint": self.endpoint.description,
            "path": self.endpoint.path,
            "listening": self.port is not None,
            "draining": self.draining,
            "refusing": self.dispatcher.refusing,
            "connections": len(self.factory.connections),
            "connections_total": getattr(self.factory, "connections_total", 0),
            "denied": getattr(self.factory, "denied", 0),
            "max_connections": getattr(self.factory, "max_connections", None),
            "refused": getattr(self.factory, "refused", 0),
            "accept_errors": getattr(self.factory, "accept_errors", 0),
            "timed_out": dict(getattr(self.factory, "timed_out", {})),
        }
        snap.update(self.dispatcher.snapshot())
        return snap
