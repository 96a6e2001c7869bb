"""Jobs in one SQLite file (WAL) inside a state_dir: the store of one host.

The SQLite dialect of ``SQLJobStore``, its schema, and what a full disk needs: a
rollback, then WAL checkpoints until there is room again.
"""

# ruff: noqa: S608 - SQL is composed only from this module's constants, never from input
from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import Logger

from daemonapp.jobs._model import DEFAULT_MAX_ATTEMPTS
from daemonapp.jobs.sql_store import RECORD_COLUMNS, SQLJobStore

__all__ = ["SQLITE_FILENAME", "SQLiteJobStore"]

# The namespace the store logged under before it was split in three.
_log = Logger(namespace="daemonapp.jobs.store")
SQLITE_FILENAME = "jobs.sqlite3"


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "disk is full" in str(error)


# SQLite's own julianday('now') is cut to milliseconds, so a time just taken by
# time.time() would still be "in the future": every connection gets unix_now().
_SQLITE_NOW = "unix_now()"
_SQLITE_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        unique_key TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        run_after REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        holder TEXT,
        token INTEGER,
        lease_expires REAL,
        error TEXT,
        percent REAL NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_active ON jobs(unique_key)
        WHERE state IN ('pending', 'running')""",
    """CREATE INDEX IF NOT EXISTS jobs_due ON jobs(priority DESC, run_after, id)
        WHERE state = 'pending'""",
    """CREATE INDEX IF NOT EXISTS jobs_leases ON jobs(lease_expires)
        WHERE state = 'running'""",
    "CREATE TABLE IF NOT EXISTS job_tokens (last INTEGER NOT NULL)",
    "INSERT INTO job_tokens (last) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM job_tokens)",
]
_SQLITE_DIALECT = {
    "p": "?",
    "p_text": "?",
    "now": _SQLITE_NOW,
    "at": "?",
    "later": f"{_SQLITE_NOW} + ?",
    "greatest": "max",
    "for_update": "",  # BEGIN IMMEDIATE already holds the database's write lock
    "skip_locked": "",
    "not_busy": "id NOT IN (SELECT value FROM json_each(?))",
    "columns": RECORD_COLUMNS.format(created_at="created_at", updated_at="updated_at",
                                      run_after="run_after"),
}


class SQLiteJobStore(SQLJobStore):
    """Jobs in one SQLite file (WAL) inside a state_dir, for one host.

    One connection shared by threads behind a lock; other processes (the
    ``daemonapp jobs`` command) wait on the busy timeout.
    """

    busy_timeout_ms = 10_000
    #: Free space above which, after a full disk, the WAL may grow to SQLite's
    #: automatic checkpoint (4 MB) again.
    roomy_bytes = 64 * 1024 * 1024
    _dialect = _SQLITE_DIALECT

    def __init__(self, state_dir: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 filename: str = SQLITE_FILENAME) -> None:
        super().__init__(max_attempts)
        self._tight = False  # a full disk happened: checkpoint until there is room again
        self.state_dir = os.path.abspath(state_dir)
        self.path = os.path.join(self.state_dir, filename)
        self._make_state_dir()
        self._create_file()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
            check_same_thread=False)
        self._conn.create_function("unix_now", 0, time.time)
        self._conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._tx() as conn:
            self._install_schema(conn, "schema_version", _SQLITE_SCHEMA, prefix=f"{self.path}: ")

    def __repr__(self) -> str:
        return f"<SQLiteJobStore {self.path}>"

    def _make_state_dir(self) -> None:
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)

    def _create_file(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as err:
            raise OSError(err.errno, f"cannot open the job database {self.path}: "
                                     f"{err.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"the job database {self.path} is not a regular file")
        finally:
            os.close(fd)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError(f"{self!r} is closed")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:  # SQLite already rolled back on a full disk
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as err:
                if conn.in_transaction:  # a COMMIT that failed leaves it open
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error as rollback_err:
                        _log.debug("rollback failed: {error}", error=rollback_err)
                if _disk_full(err):
                    self._tight = True
                    self._checkpoint(conn)
                raise
            if self._tight:
                self._checkpoint(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Move the WAL into the database and truncate it: after a full disk, after
        every transaction until the disk has room again.

        The WAL is only reset by a checkpoint, and SQLite's automatic one waits for
        1000 pages (4 MB): with less space freed than that, the WAL would grow until
        the disk is full again while the database stays a few KB.
        """
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as err:
            _log.debug("checkpoint after a full disk failed: {error}", error=err)
            return
        if busy:
            return  # a reader elsewhere holds the WAL: try again after the next one
        try:
            fs = os.statvfs(self.state_dir)
        except OSError:
            return
        if fs.f_bavail * fs.f_frsize >= self.roomy_bytes:
            self._tight = False

    def _insert(self, kind: str, payload: str, unique_key: str | None, *, priority: int,
                due: float | None, budget: int) -> int:
        # BEGIN IMMEDIATE serialises writers, so a look-up before the insert is enough.
        with self._tx() as conn:
            if unique_key is not None:
                row = conn.execute(
                    "SELECT id FROM jobs WHERE unique_key = ? AND state IN ('pending', 'running')",
                    (unique_key,)).fetchone()
                if row is not None:
                    return int(row[0])
            cursor = conn.execute(
                f"""INSERT INTO jobs (kind, payload, unique_key, priority, run_after,
                        max_attempts, created_at, updated_at)
                    VALUES (?, ?, ?, ?, coalesce(?, {_SQLITE_NOW}), ?, {_SQLITE_NOW},
                            {_SQLITE_NOW})""",
                (kind, payload, unique_key, priority, due, budget))
            assert cursor.lastrowid is not None
            return int(cursor.lastrowid)

    def _next_token(self, conn: Any) -> tuple[str, tuple[Any, ...]]:
        token = int(conn.execute(
            "UPDATE job_tokens SET last = last + 1 RETURNING last").fetchone()[0])
        return "?", (token,)
