"""The lock interfaces, kept free of Twisted so that ``daemonapp.locks`` (and a CGI
script using it) can declare them without importing the reactor machinery.

``daemonapp.interfaces`` is where users find them; it re-exports these objects.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class LockUnavailable(Exception):
    """The lock's backend cannot be asked (PostgreSQL down, a network partition).

    An IAsyncLock fails ``acquire`` with it after logging the outage itself (the first
    error with its traceback, then at most one line a minute), so a daemon ends the
    run as locked-out without a log line of its own (DESIGN §5).
    """


class IAsyncLock(Interface):
    """A highlander lock as the scheduler uses it: never blocks the reactor."""

    name = Attribute("str: the lock's name")

    def acquire(timeout: float) -> object:
        """A Deferred that fires True once held, False when ``timeout`` passed.

        It fails with LockUnavailable when the backend cannot be reached.
        """

    def release() -> object:
        """Release the lock; may return a Deferred."""

    def still_held() -> bool:
        """False once a hold was lost (a lease that could not be renewed)."""


class ILockProvider(Interface):
    """Makes the IAsyncLock a daemon's ``lock:`` option names."""

    def lock_for(name: str) -> IAsyncLock:
        """A new lock handle for ``name``: two handles exclude each other."""

    def close() -> object:
        """Release whatever is held; may return a Deferred."""


class ILockBackend(Interface):
    """A blocking highlander lock (flock or PostgreSQL lease), threading.Lock-like."""

    name = Attribute("str")
    token = Attribute("int | None: the fencing token of the current hold")

    def acquire(timeout: float | None = None) -> bool:
        """Block up to ``timeout`` (None: forever, 0: one try); True when held."""

    def release() -> None:
        """Release the lock; it can be acquired again."""

    def still_held() -> bool:
        """False when the hold was lost (a lease that expired)."""
