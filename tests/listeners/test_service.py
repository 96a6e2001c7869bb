"""The listener service: IListener, binding on start, draining on stop, snapshot."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from daemonapp.interfaces import IListener
from daemonapp.listeners import build_listener
from tests.listeners import apps
from tests.listeners.helpers import connect, request, stdout_of


def _unix_listener(tmp: str, clock: MemoryReactorClock, app: str = "pending_native") -> object:
    return build_listener({"protocol": "fastcgi", "endpoint": "unix:app.sock",
                           "native": f"tests.listeners.apps:{app}"},
                          reactor=clock, base_dir=tmp)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        apps.PENDING.clear()
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)
        self.clock = MemoryReactorClock()
        self.listener = _unix_listener(self.tmp, self.clock)

    def test_provides_ilistener(self) -> None:
        """A built listener provides IListener."""
        self.assertTrue(verifyObject(IListener, self.listener))
        self.assertEqual(self.listener.protocol_name, "fastcgi")

    def test_start_binds_with_mode(self) -> None:
        """startService binds the unix socket (mode 0660) relative to base_dir."""
        self.listener.startService()
        path = Path(self.tmp) / "app.sock"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o660)
        self.listener.stopService()
        self.clock.advance(1)
        self.assertFalse(path.exists())

    def test_drain_waits_for_in_flight(self) -> None:
        """drain() fires only after the request in flight was answered."""
        self.listener.startService()
        proto, transport = connect(self.listener)
        proto.dataReceived(request(1))
        drained = self.listener.drain()
        self.clock.advance(1)
        self.assertNoResult(drained)
        apps.PENDING[0].callback(b"done")
        self.clock.pump([0.1] * 8)
        self.assertTrue(stdout_of(transport.value()).endswith(b"done"))
        self.assertTrue(transport.disconnecting)
        # closing, but the answer may still sit in the write buffer: not drained yet
        self.assertNoResult(drained)
        proto.connectionLost()
        self.clock.pump([0.1] * 2)
        self.successResultOf(drained)

    def test_drain_answers_connections_already_accepted(self) -> None:
        """A connection accepted before the drain but silent so far is still answered."""
        listener = _unix_listener(self.tmp, self.clock, "hello_native")
        listener.startService()
        proto, transport = connect(listener)
        drained = listener.drain()
        self.clock.advance(0.5)
        self.assertNoResult(drained)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(request(1))
        self.assertIn(b"Hello, world!", stdout_of(transport.value()))
        self.clock.pump([0.1] * 8)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost()  # the answer has left the process
        self.clock.pump([0.1] * 2)
        self.successResultOf(drained)

    def test_silent_connection_closed_after_grace(self) -> None:
        """A connection that never sends a request is closed after the drain grace."""
        self.listener.startService()
        _proto, transport = connect(self.listener)
        drained = self.listener.drain()
        self.clock.advance(2.1)
        self.successResultOf(drained)
        self.assertTrue(transport.disconnecting)

    def test_snapshot_is_json(self) -> None:
        """snapshot() is JSON-able and names protocol, endpoint and counters."""
        snap = self.listener.snapshot()
        json.dumps(snap)
        self.assertEqual((snap["protocol"], snap["endpoint"], snap["in_flight"],
                          snap["requests"], snap["rejected_503"]),
                         ("fastcgi", "unix:app.sock", 0, 0, 0))

    def test_unused_keep_alive_connection_closed_after_quiet_time(self) -> None:
        """A keep-alive connection unused during the drain is closed after 0.5 s, not before."""
        listener = _unix_listener(self.tmp, self.clock, "hello_native")
        listener.startService()
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        drained = listener.drain()
        self.clock.pump([0.1] * 4)
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(drained)
        self.clock.pump([0.1] * 2)
        self.assertTrue(transport.disconnecting)
        self.successResultOf(drained)

    def test_connection_closed_after_its_answer_while_draining(self) -> None:
        """While draining, a keep-alive connection is closed right after an answer."""
        listener = _unix_listener(self.tmp, self.clock, "hello_native")
        listener.startService()
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        listener.drain()
        proto.dataReceived(request(1))
        self.assertTrue(transport.disconnecting)
