"""PostgreSQL LISTEN/NOTIFY for jobs: a wake-up hint, never the source of truth.

A submit sends ``pg_notify`` on ``NOTIFY_CHANNEL`` with the store's schema;
``PostgresNotifier`` is the LISTEN connection, ``NotifyReader`` watches its socket on
the reactor, and ``SubmitListener`` keeps one open for a dispatcher, opening it again
soon after it is lost. Without it a dispatcher still finds jobs by polling.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import error as twisted_error
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["NOTIFY_CHANNEL", "NotifyReader", "PostgresNotifier", "SubmitListener"]

# The dispatcher's namespace: LISTEN trouble was always logged under it.
log = Logger(namespace="daemonapp.jobs.dispatcher")

NOTIFY_CHANNEL = "daemonapp_jobs"
#: The LISTEN connection is re-opened after 0.25 s, then at doubling delays up to this.
LISTEN_RETRY = 2.0
LISTEN_RETRY_FIRST = 0.25
_PENDING = object()  # the LISTEN connection is being opened


class PostgresNotifier:
    """A LISTEN connection whose socket a reactor can watch (``fileno``/``drain``)."""

    def __init__(self, conn: Any, schema: str) -> None:
        self._conn = conn
        self.schema = schema
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def fileno(self) -> int:
        return int(self._conn.pgconn.socket)

    def drain(self) -> bool:
        """Read what arrived without blocking; True when a submit for our schema did."""
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        if pgconn.status != 0:  # not CONNECTION_OK: libpq has let go of the socket
            raise ConnectionError("the LISTEN connection is closed")
        woken = False
        while True:
            note = pgconn.notifies()
            if note is None:
                return woken
            if note.extra.decode("utf-8", "replace") == self.schema:
                woken = True

    def close(self) -> None:
        self._conn.close()


class NotifyReader:
    """Watches a PostgreSQL LISTEN socket on the reactor; pokes on a submit."""

    def __init__(self, notifier: Any, poke: Callable[[], None],
                 lost: Callable[[], None]) -> None:
        self.notifier = notifier
        self.poke = poke
        self.lost = lost
        # The reactor watches a duplicate of libpq's socket: libpq closes its own as
        # soon as the connection breaks, and removing a closed fd from epoll fails with
        # EBADF before connectionLost could ever run (no LISTEN was ever re-established).
        self._fd = os.dup(int(notifier.fileno()))

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Exception | None:
        try:
            woken = self.notifier.drain()
        except Exception as err:
            # Returned, the reactor removes this reader and calls connectionLost.
            return twisted_error.ConnectionLost(str(err))
        if woken:
            self.poke()
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.close()
        self.lost()

    def logPrefix(self) -> str:
        return "JobNotify"

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        try:
            self.notifier.close()
        except Exception:
            log.failure("closing the job LISTEN connection")


class SubmitListener:
    """Keeps a dispatcher LISTENing for submits on a connection of its own.

    ``connect()`` opens a notifier in the thread pool (a Deferred), or gives None when the
    store has no LISTEN; ``poke()`` makes the dispatcher claim; ``lost()`` tells it the
    store may be down; ``active()`` is false once it stops. ``is_unavailable`` says
    which errors are an outage (retried) rather than a bug (given up: polling only).
    """

    def __init__(self, *, name: str, reactor: Any,
                 connect: Callable[[], Deferred[Any] | None],
                 poke: Callable[[], None], lost: Callable[[], None],
                 active: Callable[[], bool],
                 is_unavailable: Callable[[BaseException | None], bool]) -> None:
        self.name = name
        self.reactor = reactor
        self._connect = connect
        self._poke = poke
        self._lost = lost
        self._active = active
        self._is_unavailable = is_unavailable
        self._state: Any = None  # None, _PENDING or the NotifyReader
        self._delay: float | None = None  # set while the connection is lost

    @property
    def reader(self) -> NotifyReader | None:
        """The reader of the open LISTEN connection, if there is one."""
        return self._state if isinstance(self._state, NotifyReader) else None

    def start(self) -> None:
        """LISTEN for submits, unless it does already (or is being opened)."""
        if self._state is not None or not self._active():
            return
        opening = self._connect()
        if opening is None:
            return
        self._state = _PENDING
        opening.addCallbacks(self._opened, self._failed)

    def resume(self) -> None:
        """The store answers again: open a lost connection now, not at the next retry."""
        if self._delay is not None and self._state is None:
            self.start()

    def stop(self) -> None:
        """Stop listening and close the connection."""
        reader = self.reader
        self._state = None
        if reader is not None:
            self.reactor.removeReader(reader)
            reader.close()

    def _opened(self, notifier: Any) -> None:
        if self._state is not _PENDING or not self._active():
            notifier.close()
            return
        try:
            reader = NotifyReader(notifier, self._poke, self._connection_lost)
        except OSError as err:
            notifier.close()
            self._failed(Failure(err))
            return
        self._state = reader
        self.reactor.addReader(reader)
        self._delay = None
        self._poke()  # a submit may have come before we listened

    def _failed(self, failure: Failure) -> None:
        self._state = None
        if not self._is_unavailable(failure.value):
            log.failure("job dispatcher {name}: LISTEN failed; polling only", failure,
                        name=self.name)
            return
        self._retry()

    def _connection_lost(self) -> None:
        """The LISTEN connection broke: poll meanwhile, and open it again soon."""
        self._state = None
        if self._active():
            self._lost()
            self._retry()

    def _retry(self) -> None:
        if not self._active():
            return
        delay = LISTEN_RETRY_FIRST if self._delay is None else self._delay
        self._delay = min(LISTEN_RETRY, delay * 2)
        self.reactor.callLater(delay, self.start)
