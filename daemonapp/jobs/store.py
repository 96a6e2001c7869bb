"""The job stores: SQLite in the app's state_dir, or PostgreSQL by URL.

Both are blocking (the dispatcher calls them from a thread pool) and implement
IJobStore; ``open_store(target)`` picks one, ``store_target`` says where a
dispatcher's jobs live, and ``is_unavailable`` tells an outage from a refusal.
Leases expire on the database's clock; every claim hands out a fencing token larger
than any before it. The logic is in ``sql_store``, the dialects in ``sqlite_store``
and ``postgres_store``.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
from collections.abc import Callable

from twisted.logger import Logger

from daemonapp.jobs._model import ACTIVE_STATES, DEFAULT_MAX_ATTEMPTS, STATES, last_line
from daemonapp.jobs.postgres_store import PostgresJobStore, libpq_url
from daemonapp.jobs.sqlite_store import SQLiteJobStore
from daemonapp.ratelog import Episode, RateLog

__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "PostgresJobStore",
    "SQLiteJobStore",
    "StoreHealth",
    "is_postgres_url",
    "is_unavailable",
    "libpq_url",
    "open_store",
    "store_target",
]

# The dispatcher's namespace: outages were always logged under it.
_log = Logger(namespace="daemonapp.jobs.dispatcher")
#: The one kind of trouble a StoreHealth counts: the store does not answer.
_STORE = "store"


def is_postgres_url(target: str) -> bool:
    """True when ``target`` is a PostgreSQL URL (postgresql:// or postgres://)."""
    return target.startswith(("postgresql://", "postgres://"))


def open_store(target: str | os.PathLike[str], *,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> SQLiteJobStore | PostgresJobStore:
    """Open the job store at ``target``: a PostgreSQL URL, or a state_dir path.

    A state_dir holds one SQLite file (``jobs.sqlite3``); the directory is
    created private (0700) when missing. ``max_attempts`` is the default budget
    of jobs submitted through this store.
    """
    text = os.fspath(target)
    if is_postgres_url(text):
        return PostgresJobStore(text, max_attempts=max_attempts)
    return SQLiteJobStore(text, max_attempts=max_attempts)


# SQLite result codes (the primary code, the low byte) that say "not now", not "wrong".
_SQLITE_UNAVAILABLE = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL})
_SQLITE_UNAVAILABLE_TEXT = ("disk is full", "disk i/o error", "database is locked",
                            "unable to open database")


def is_unavailable(error: BaseException | None) -> bool:
    """True when ``error`` says the store cannot be reached or written right now (a
    PostgreSQL connection failure, a full disk, an I/O error): a call worth retrying,
    as opposed to a refusal (StaleLease) or a bug."""
    if isinstance(error, OSError):
        return True
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _SQLITE_UNAVAILABLE
        text = str(error).lower()
        return any(part in text for part in _SQLITE_UNAVAILABLE_TEXT)
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error, psycopg.OperationalError)


def store_target(store: str | os.PathLike[str] | None, state_dir: str | None) -> str:
    """Where a dispatcher's jobs live: its ``store`` option (a PostgreSQL URL, a
    directory or a store object), else SQLite in the app's ``state_dir``.

    The one owner of that rule: the dispatcher and ``daemonapp jobs -c`` both ask it.
    """
    if store is not None:
        return os.fspath(store)
    if not state_dir:
        raise RuntimeError("no store option and no app.state_dir to keep the SQLite "
                           "job store in")
    return state_dir


class StoreHealth:
    """Whether the job store answers, as a dispatcher sees it: one log line when it
    stops, one when it is back, however many calls fail in between (every store call
    reports here)."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self.clock = clock
        # one episode per outage, and no line while it lasts: every = forever
        self._rate = RateLog(clock, every=math.inf)

    @property
    def down_since(self) -> float | None:
        episode = self._rate.episode(_STORE)
        return None if episode is None else episode.started

    @property
    def failures(self) -> int:
        episode = self._rate.episode(_STORE)
        return 0 if episode is None else episode.total

    @property
    def down(self) -> bool:
        return self._rate.episode(_STORE) is not None

    def failed(self, error: object) -> None:
        def line(_: Episode) -> None:
            _log.warn("job dispatcher {name}: the job store is unavailable: {error}; "
                     "outcomes are kept and retried, LISTEN is re-established when it is back",
                     name=self.name, error=last_line(str(error)) or type(error).__name__)

        self._rate.occurred(_STORE, line)

    def ok(self, began: float) -> bool:
        """Note a call begun at ``began`` that worked; True when it ends an outage."""
        down_since = self.down_since
        if down_since is None or began < down_since:
            return False
        outage = self._rate.ended(_STORE)
        assert outage is not None
        _log.info("job dispatcher {name}: the job store is available again after "
                 "{seconds:.1f} s ({failures} call(s) failed meanwhile)", name=self.name,
                 seconds=self.clock() - outage.started, failures=outage.total)
        return True
