"""A run's lock as a daemon uses it: how often a run waiting for it tries again, the
pause after a yielded run, and giving it back without raising (DESIGN §5)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from daemonapp.interfaces import IAsyncLock

__all__ = ["LOCK_POLL", "LOCK_YIELD_PAUSE", "release_lock"]

# The namespace of these lines when they were written in daemon.py: filters keep matching.
log = Logger(namespace="daemonapp.daemon")

#: How often a daemon waiting for its lock tries it again. The wait goes through the
#: scheduler's heap, so waiting daemons arm no timers of their own (DESIGN §2).
LOCK_POLL = 0.02

#: After a yielded run a daemon holding a lock waits this long before it takes the
#: lock again, so that a waiter elsewhere gets its turn (DESIGN §5).
LOCK_YIELD_PAUSE = 0.05


def release_lock(handle: IAsyncLock, daemon: str, lock: str | None) -> None:
    """Release ``handle`` (daemon ``daemon``'s lock ``lock``); a failure is logged."""
    try:
        result = handle.release()
    except Exception:
        log.failure("daemon {daemon} could not release lock {lock}",
                    daemon=daemon, lock=lock)
        return
    if isinstance(result, Deferred):
        result.addErrback(
            lambda f: log.failure("daemon {daemon} could not release lock {lock}", f,
                                  daemon=daemon, lock=lock))
