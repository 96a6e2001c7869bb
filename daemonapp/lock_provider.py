"""The scheduler's side of highlander locks: ``AsyncLock`` polls a blocking lock
(``daemonapp.locks``) from the reactor without blocking it, ``LockProvider`` makes one
handle per daemon ``lock:``, and ``OutageLog`` keeps a backend's outage to a few lines.

``daemonapp.locks`` stays free of Twisted for CGI scripts; this module is where the
reactor comes in. Its names stay importable from ``daemonapp.locks`` as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from daemonapp._lock_interfaces import IAsyncLock, ILockProvider, LockUnavailable
from daemonapp.locks import FlockLock, PostgresLease, default_state_dir, highlander
from daemonapp.ratelog import Episode, RateLog

__all__ = ["AsyncLock", "LockProvider", "OutageLog"]

# The namespace lock problems were always logged under, on both sides of the split.
_log = Logger(namespace="daemonapp.locks")
#: The one kind of trouble an OutageLog counts: its backend does not answer.
_BACKEND = "backend"


class OutageLog:
    """How a lock backend's outage reaches the log: a few lines, however long it lasts.

    The first error is logged with its traceback; while the backend stays down, at
    most one line every ``repeat`` seconds with the count of errors since; the first
    success after that logs "lock backend reachable again" (DESIGN §5). One OutageLog
    serves every handle of a provider: they share one backend.
    """

    def __init__(self, clock: Any, repeat: float = 60.0) -> None:
        self._log = _log
        # one episode for the backend: the "still unreachable" line comes with an error
        self._rate = RateLog(clock.seconds, every=repeat)

    @property
    def repeat(self) -> float:
        """Seconds between two "still unreachable" lines."""
        return self._rate.every

    @property
    def down_since(self) -> float | None:
        """When the outage began (None while the backend answers)."""
        episode = self._rate.episode(_BACKEND)
        return None if episode is None else episode.started

    @property
    def errors(self) -> int:
        """Errors in this outage."""
        episode = self._rate.episode(_BACKEND)
        return 0 if episode is None else episode.total

    def failed(self, name: str, what: str, failure: Failure) -> None:
        """Record one error of the backend (for lock ``name``)."""
        def line(outage: Episode) -> None:
            if outage.first:
                self._log.failure(
                    "highlander {name}: {what}: lock backend unreachable; runs that need "
                    "a lock are locked-out until it is back", failure, name=name, what=what)
            else:
                self._log.warn(
                    "highlander {name}: lock backend still unreachable after {seconds:.0f} "
                    "s ({count} more errors): {error}", name=name,
                    seconds=self._rate.seconds() - outage.started, count=outage.count,
                    error=str(failure.value)[:200])

        self._rate.occurred(_BACKEND, line)

    def reachable(self, name: str) -> None:
        """The backend answered: end the outage, if there was one."""
        outage = self._rate.ended(_BACKEND)
        if outage is None:
            return
        self._log.info(
            "highlander {name}: lock backend reachable again after {seconds:.1f} s "
            "({count} errors)", name=name, seconds=self._rate.seconds() - outage.started,
            count=outage.total)


@implementer(IAsyncLock)
class AsyncLock:
    """A highlander lock for the reactor: acquire polls and never blocks the loop.

    Flock tries run on the loop (they are a few syscalls); lease tries run in the
    threadpool. Both poll every ``poll_interval`` seconds until the timeout.
    """

    def __init__(self, backend: FlockLock | PostgresLease, *, reactor: Any,
                 threadpool: ThreadPool | None = None, poll_interval: float = 0.02,
                 outage: OutageLog | None = None) -> None:
        self.backend = backend
        self.name = backend.name
        self._reactor = reactor
        self._threadpool = threadpool
        self._poll_interval = poll_interval
        self._outage = outage if outage is not None else OutageLog(reactor)

    @property
    def token(self) -> int | None:
        """The fencing token of the current (or last) hold."""
        return self.backend.token

    def still_held(self) -> bool:
        """False when the hold was lost (a lease that ran out)."""
        return self.backend.still_held()

    def locked(self) -> bool:
        """True while held."""
        return self.backend.locked()

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if isinstance(self.backend, PostgresLease) and self._threadpool is not None:
            return threads.deferToThreadPool(self._reactor, self._threadpool, f, *args)
        return defer.maybeDeferred(f, *args)

    def acquire(self, timeout: float) -> Deferred[bool]:
        """Fires True once held, False after ``timeout`` seconds.

        It fails with LockUnavailable at the first error of the backend (logged by
        the outage log, rate-limited): a caller backs off instead of polling a
        backend that is down.
        """
        deadline = self._reactor.seconds() + max(0.0, timeout)
        pending: list[IDelayedCall] = []
        cancelled: list[bool] = []

        def cancel(_: Deferred[bool]) -> None:
            cancelled.append(True)
            for call in pending:
                if call.active():
                    call.cancel()

        result: Deferred[bool] = defer.Deferred(cancel)

        def attempt() -> None:
            pending.clear()
            self._call(self.backend.acquire, 0).addCallbacks(tried, failed)

        def tried(held: bool) -> None:
            self._outage.reachable(self.name)
            if cancelled:
                if held:
                    self._call(self.backend.release).addErrback(self._release_failed)
                return
            now = self._reactor.seconds()
            if held or now >= deadline:
                result.callback(held)
                return
            pending.append(self._reactor.callLater(
                min(self._poll_interval, deadline - now), attempt))

        def failed(failure: Failure) -> None:
            self._outage.failed(self.name, "cannot take the lock", failure)
            if not cancelled:
                result.errback(LockUnavailable(
                    f"highlander {self.name}: the lock backend failed: {failure.value}"))

        attempt()
        return result

    def _release_failed(self, failure: Failure) -> None:
        self._outage.failed(self.name, "release failed", failure)

    def release(self) -> Deferred[None] | None:
        """Release when held (a no-op otherwise); a Deferred for the lease backend."""
        if not self.backend.locked():
            return None
        if isinstance(self.backend, FlockLock):
            self.backend.release()
            return None
        return self._call(self.backend.release).addErrback(self._release_failed)

    def close(self) -> Deferred[None] | None:
        """Release when held and close the backend's connection."""
        if isinstance(self.backend, FlockLock):
            self.backend.close()
            return None
        return self._call(self.backend.close).addErrback(self._release_failed)


@implementer(ILockProvider)
class LockProvider:
    """Makes the scheduler's locks: flock in ``state_dir``, or leases at ``url``.

    Every ``lock_for`` call is a new handle with its own open file (or lease holder),
    so two daemons of one app with the same lock exclude each other.
    """

    def __init__(self, *, reactor: Any, state_dir: str | os.PathLike[str] | None = None,
                 url: str | None = None, ttl: float | str = 30.0,
                 threadpool: ThreadPool | None = None, poll_interval: float = 0.02) -> None:
        self.reactor = reactor
        self.state_dir = os.path.abspath(state_dir if state_dir is not None
                                         else default_state_dir())
        self.url = url
        self.ttl = ttl
        self.poll_interval = poll_interval
        self._threadpool = threadpool
        self._handles: list[AsyncLock] = []
        self._outage = OutageLog(reactor)
        if url:
            # Imported now, not at the first run: under twistd --uid the venv may be
            # unreadable once the app runs (DESIGN §2).
            import psycopg
            import psycopg.conninfo  # noqa: F401

    def _pool(self) -> ThreadPool | None:
        if self._threadpool is None and self.url:
            get_pool = getattr(self.reactor, "getThreadPool", None)
            if get_pool is not None:
                self._threadpool = get_pool()
        return self._threadpool

    def lock_for(self, name: str) -> AsyncLock:
        """A new handle for ``name`` (ValueError for a bad name)."""
        backend = highlander(name, state_dir=self.state_dir, url=self.url, ttl=self.ttl)
        handle = AsyncLock(backend, reactor=self.reactor, threadpool=self._pool(),
                           poll_interval=self.poll_interval, outage=self._outage)
        self._handles.append(handle)
        return handle

    def close(self) -> Deferred[None] | None:
        """Release every held lock and close connections; a Deferred for leases."""
        handles, self._handles = self._handles, []
        waits = [d for d in (handle.close() for handle in handles) if d is not None]
        if not waits:
            return None
        done: Deferred[None] = defer.gatherResults(waits, consumeErrors=True).addCallback(
            lambda _: None)
        return done
