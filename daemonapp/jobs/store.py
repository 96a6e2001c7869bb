"""The job stores: SQLite in the app's state_dir, or PostgreSQL by URL.

Both are blocking (the dispatcher calls them from a thread pool) and implement
IJobStore; ``open_store(target)`` picks one. Leases expire on the database's
clock; every claim hands out a fencing token larger than any before it.
"""

# ruff: noqa: S608 - SQL is composed only from this module's constants, never from input
from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import stat
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from twisted.logger import Logger
from zope.interface import implementer

from daemonapp.interfaces import IJobStore
from daemonapp.jobs._model import (
    ACTIVE_STATES,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    STATES,
    Job,
    JobCancelled,
    JobRecord,
    StaleLease,
    absolute_time,
    cap_error,
    check_kind,
    check_lease,
    decode_payload,
    encode_payload,
)
from daemonapp.jobs.runtime import cap_message, clamp_percent

_log = Logger()
SCHEMA_VERSION = 1
SQLITE_FILENAME = "jobs.sqlite3"
NOTIFY_CHANNEL = "daemonapp_jobs"
MAX_LIST_LIMIT = 10_000


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


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "disk is full" in str(error)


def _check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise ValueError(f"unknown job state {state!r}; expected one of {', '.join(STATES)}")


def _check_limit(limit: int) -> int:
    value = int(limit)
    if value < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    return min(value, MAX_LIST_LIMIT)


def _check_budget(max_attempts: int | None, default: int) -> int:
    value = default if max_attempts is None else int(max_attempts)
    if value < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
    return value


def _stale(job_id: int, token: int, state: str | None, current: int | None) -> StaleLease:
    """The exception for a refused call, saying why."""
    if state is None:
        return StaleLease(job_id, token, "no such job")
    if state == "cancelled":
        return JobCancelled(job_id, token, "the job was cancelled")
    if current is not None and current != token:
        return StaleLease(job_id, token, f"claimed again with token {current}")
    return StaleLease(job_id, token, f"the job is {state}, not running")


_RECORD_COLUMNS = ("id, kind, state, attempts, max_attempts, error, percent, message, payload, "
                   "{created_at}, {updated_at}, unique_key, priority, {run_after}, holder, token")


def _record(row: tuple[Any, ...] | Any) -> JobRecord:
    return JobRecord(
        id=int(row[0]), kind=row[1], state=row[2], attempts=int(row[3]),
        max_attempts=int(row[4]), error=row[5],
        percent=None if row[6] is None else float(row[6]), message=row[7],
        payload=decode_payload(row[8]), created_at=float(row[9]), updated_at=float(row[10]),
        unique_key=row[11], priority=int(row[12]),
        run_after=None if row[13] is None else float(row[13]),
        holder=row[14], token=None if row[15] is None else int(row[15]),
    )


# -- What both stores share ---------------------------------------------------------------

# The SQL below is written once, as templates whose fields each dialect fills in
# (``_SQLJobStore._dialect``):
#   p           a placeholder (``?`` or ``%s``)
#   p_text      a placeholder that may be NULL and is compared with a text column
#   now         the database's clock as the column type
#   at          a placeholder holding a Unix time (or NULL), as the column type
#   later       now plus a placeholder holding seconds
#   greatest    the larger of two values
#   for_update  locks a selected row until the end of the transaction (or nothing)
#   skip_locked locks the selected rows, passing over rows locked by others (or nothing)
#   not_busy    the row's id is not in a placeholder holding a list of ids
#   columns     the columns of a JobRecord (see ``_record``)


@implementer(IJobStore)
class _SQLJobStore(ABC):
    """The store logic both databases share; a subclass gives its dialect and connection."""

    _dialect: ClassVar[Mapping[str, str]]
    _conn: Any

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = _check_budget(max_attempts, DEFAULT_MAX_ATTEMPTS)
        self._lock = threading.Lock()
        self._closed = False

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Any]:
        """A connection inside a transaction, holding the store's lock."""

    @abstractmethod
    def _insert(self, kind: str, payload: str, unique_key: str | None, *, priority: int,
                due: float | None, budget: int) -> int:
        """Add a checked job, deduplicated by ``unique_key``; its id."""

    def _notify(self, conn: Any) -> None:  # noqa: B027 - a hook; SQLite has nobody to tell
        """Tell idle dispatchers that a job became pending (a hint; none by default)."""

    @abstractmethod
    def _next_token(self, conn: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL expression (and its parameters) of a fresh fencing token."""

    def _sql(self, template: str) -> str:
        return template.format_map(self._dialect)

    def _id_list(self, ids: Collection[int]) -> Any:
        """The parameter of ``{not_busy}``: a JSON array (SQLite's json_each)."""
        return json.dumps(sorted({int(i) for i in ids}))

    def _install_schema(self, conn: Any, version_table: str, statements: Sequence[str], *,
                        prefix: str = "", place: str = "") -> None:
        """Create the tables (inside the caller's transaction) and record the version."""
        conn.execute(f"CREATE TABLE IF NOT EXISTS {version_table} (version INTEGER NOT NULL)")
        row = conn.execute(f"SELECT version FROM {version_table}").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{prefix}job schema version {row[0]}{place} is newer than this "
                f"daemonapp's ({SCHEMA_VERSION}); upgrade daemonapp")
        for statement in statements:
            conn.execute(statement)
        if row is None:
            conn.execute(self._sql(f"INSERT INTO {version_table} (version) VALUES ({{p}})"),
                         (SCHEMA_VERSION,))

    def _refusal(self, conn: Any, job_id: int, token: int) -> StaleLease:
        row = conn.execute(self._sql("SELECT state, token FROM jobs WHERE id = {p}"),
                           (job_id,)).fetchone()
        return _stale(job_id, token, None if row is None else row[0],
                      None if row is None else row[1])

    def submit(self, kind: str, payload: dict[str, Any], unique_key: str | None = None,
               priority: int = 0, run_after: float | None = None, *,
               max_attempts: int | None = None) -> int:
        """Add a pending job; with a unique_key already pending or running, its id."""
        check_kind(kind)
        text = encode_payload(payload)
        budget = _check_budget(max_attempts, self.max_attempts)
        return self._insert(kind, text, unique_key, priority=int(priority),
                            due=absolute_time(run_after), budget=budget)

    def claim(self, holder: str, lease: float = DEFAULT_LEASE, *,
              max_attempts: int | None = None, busy: Collection[int] = ()) -> Job | None:
        """Mark the best due job running for ``holder``; None when nothing is due.

        Running jobs whose lease expired (on the database's clock; SQLite's is
        this host's) are claimed again (at-least-once), or failed when their
        budget is spent. ``max_attempts`` (the dispatcher's policy) replaces the
        budget of the job it claims. ``busy`` lists the jobs the caller still runs
        or still records (after a store outage their lease may have lapsed): it
        renews those itself, so they are never taken back from under it.
        """
        seconds = check_lease(lease)
        busy_ids = self._id_list(busy)
        with self._tx() as conn:
            conn.execute(self._sql(
                """UPDATE jobs SET state = 'failed', holder = NULL, lease_expires = NULL,
                        error = 'lease expired: holder ' || coalesce(holder, '?')
                                || ' stopped renewing it (attempt ' || attempts || ' of '
                                || max_attempts || ')',
                        updated_at = {now}
                   WHERE id IN (SELECT id FROM jobs WHERE state = 'running'
                                AND lease_expires < {now} AND attempts >= max_attempts
                                AND {not_busy} {skip_locked})"""), (busy_ids,))
            row = conn.execute(self._sql(
                """SELECT id FROM jobs WHERE state = 'running' AND lease_expires < {now}
                   AND {not_busy} ORDER BY lease_expires LIMIT 1 {skip_locked}"""),
                (busy_ids,)).fetchone()
            if row is None:
                row = conn.execute(self._sql(
                    """SELECT id FROM jobs WHERE state = 'pending' AND run_after <= {now}
                       ORDER BY priority DESC, run_after, id LIMIT 1 {skip_locked}""")).fetchone()
            if row is None:
                return None
            token, token_params = self._next_token(conn)
            claimed = conn.execute(self._sql(
                f"""UPDATE jobs SET state = 'running', attempts = attempts + 1, holder = {{p}},
                        token = {token}, lease_expires = {{later}},
                        max_attempts = coalesce({{p}}, max_attempts), updated_at = {{now}}
                    WHERE id = {{p}}
                    RETURNING id, kind, payload, token, attempts, max_attempts"""),
                (holder, *token_params, seconds, max_attempts, row[0])).fetchone()
        return Job(id=int(claimed[0]), kind=claimed[1], payload=decode_payload(claimed[2]),
                   token=int(claimed[3]), attempt=int(claimed[4]),
                   max_attempts=int(claimed[5]))

    def _update_held(self, job_id: int, token: int, assignments: str,
                     params: tuple[Any, ...], landed: tuple[str, ...] = ()) -> str:
        """Apply ``assignments`` (a template) to the running job held with ``token``;
        its new state.

        ``landed``: given only for a call that repeats one whose answer was lost (the
        connection broke after the commit), the states that change leads to. A job
        found in one of them with the same token got this very change from the earlier
        call: the repeat answers as it would have. Without it, a second call with the
        same token is refused (StaleLease), as DESIGN §6 says of any stale token.
        """
        with self._tx() as conn:
            row = conn.execute(self._sql(
                f"""UPDATE jobs SET {assignments}, updated_at = {{now}}
                    WHERE id = {{p}} AND token = {{p}} AND state = 'running' RETURNING state"""),
                (*params, job_id, token)).fetchone()
            if row is None:
                if landed:
                    now = conn.execute(self._sql("SELECT state, token FROM jobs WHERE id = {p}"),
                                       (job_id,)).fetchone()
                    if now is not None and now[1] == token and now[0] in landed:
                        return str(now[0])
                raise self._refusal(conn, job_id, token)
            return str(row[0])

    def heartbeat(self, job_id: int, token: int, lease: float = DEFAULT_LEASE) -> None:
        """Extend the lease by ``lease`` seconds from now; StaleLease when lost."""
        self._update_held(job_id, token, "lease_expires = {later}", (check_lease(lease),))

    def set_progress(self, job_id: int, token: int, percent: float, message: str = "") -> None:
        """Record the job's progress; StaleLease when the lease is lost."""
        self._update_held(job_id, token, "percent = {p}, message = {p}",
                          (clamp_percent(percent), cap_message(message)))

    def complete(self, job_id: int, token: int, *, resent: bool = False) -> None:
        """Mark the job done; StaleLease when the lease is lost (a late completion).

        ``resent=True`` repeats a call whose answer was lost: when that one landed,
        this answers as it did instead of raising (so do ``fail`` and ``release``).
        """
        self._update_held(job_id, token,
                          "state = 'done', holder = NULL, lease_expires = NULL, error = NULL", (),
                          landed=("done",) if resent else ())

    def fail(self, job_id: int, token: int, error: str, retry_at: float | None = None, *,
             resent: bool = False) -> str:
        """Record a failed attempt: pending again (at ``retry_at``, else at once) while
        attempts are left, else failed. Returns the new state ("pending" or "failed")."""
        due = absolute_time(retry_at)
        return self._update_held(
            job_id, token,
            """state = CASE WHEN attempts < max_attempts THEN 'pending' ELSE 'failed' END,
               run_after = coalesce({at}, {now}), holder = NULL, lease_expires = NULL,
               error = {p}""",
            (due, cap_error(error)), landed=("pending", "failed") if resent else ())

    def release(self, job_id: int, token: int, *, resent: bool = False) -> None:
        """Put a running job back to pending and give its attempt back (graceful stop)."""
        self._update_held(
            job_id, token,
            """state = 'pending', attempts = {greatest}(attempts - 1, 0), holder = NULL,
               lease_expires = NULL, run_after = {now}""", (),
            landed=("pending",) if resent else ())

    def cancel(self, job_id: int) -> bool:
        """Cancel a pending or running job; False when it had already ended or is unknown."""
        with self._tx() as conn:
            row = conn.execute(self._sql(
                """UPDATE jobs SET state = 'cancelled', lease_expires = NULL, updated_at = {now}
                   WHERE id = {p} AND state IN ('pending', 'running') RETURNING id"""),
                (job_id,)).fetchone()
        return row is not None

    def retry(self, job_id: int) -> bool:
        """Make a failed (or cancelled) job pending now with a fresh budget."""
        with self._tx() as conn:
            row = conn.execute(self._sql(
                """SELECT unique_key FROM jobs WHERE id = {p}
                   AND state IN ('failed', 'cancelled') {for_update}"""), (job_id,)).fetchone()
            if row is None:
                return False
            if row[0] is not None and conn.execute(self._sql(
                    """SELECT 1 FROM jobs WHERE unique_key = {p}
                       AND state IN ('pending', 'running')"""), (row[0],)).fetchone() is not None:
                raise ValueError(f"job {job_id}: another job with unique key {row[0]!r} "
                                 f"is pending or running")
            conn.execute(self._sql(
                """UPDATE jobs SET state = 'pending', attempts = 0, holder = NULL,
                        lease_expires = NULL, run_after = {now}, updated_at = {now}
                   WHERE id = {p}"""), (job_id,))
            self._notify(conn)
        return True

    def get(self, job_id: int) -> JobRecord | None:
        """The job's record, or None."""
        with self._tx() as conn:
            row = conn.execute(self._sql("SELECT {columns} FROM jobs WHERE id = {p}"),
                               (int(job_id),)).fetchone()
        return None if row is None else _record(row)

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state (every state present, zeros included)."""
        with self._tx() as conn:
            rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    def close(self) -> None:
        """Close the connection; later calls raise RuntimeError."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def list(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """The newest jobs first, optionally only those in ``state``."""
        _check_state(state)
        with self._tx() as conn:
            rows = conn.execute(self._sql(
                """SELECT {columns} FROM jobs WHERE ({p_text} IS NULL OR state = {p})
                   ORDER BY id DESC LIMIT {p}"""),
                (state, state, _check_limit(limit))).fetchall()
        return [_record(row) for row in rows]


# -- SQLite -------------------------------------------------------------------------------

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
    "columns": _RECORD_COLUMNS.format(created_at="created_at", updated_at="updated_at",
                                      run_after="run_after"),
}


class SQLiteJobStore(_SQLJobStore):
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


# -- PostgreSQL ---------------------------------------------------------------------------

_PG_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        unique_key TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        run_after TIMESTAMPTZ NOT NULL DEFAULT now(),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        holder TEXT,
        token BIGINT,
        lease_expires TIMESTAMPTZ,
        error TEXT,
        percent DOUBLE PRECISION NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_active ON jobs(unique_key)
        WHERE state IN ('pending', 'running')""",
    """CREATE INDEX IF NOT EXISTS jobs_due ON jobs(priority DESC, run_after, id)
        WHERE state = 'pending'""",
    """CREATE INDEX IF NOT EXISTS jobs_leases ON jobs(lease_expires)
        WHERE state = 'running'""",
    "CREATE SEQUENCE IF NOT EXISTS jobs_token_seq",
]
_PG_EPOCH = "extract(epoch from {})::float8"
_PG_COLUMNS = _RECORD_COLUMNS.format(created_at=_PG_EPOCH.format("created_at"),
                                     updated_at=_PG_EPOCH.format("updated_at"),
                                     run_after=_PG_EPOCH.format("run_after"))
_PG_DIALECT = {
    "p": "%s",
    "p_text": "%s::text",
    "now": "now()",
    "at": "to_timestamp(%s::float8)",
    "later": "now() + make_interval(secs => %s)",
    "greatest": "greatest",
    "for_update": "FOR UPDATE",
    "skip_locked": "FOR UPDATE SKIP LOCKED",
    "not_busy": "NOT (id = ANY(%s::bigint[]))",
    "columns": _PG_COLUMNS,
}
_SCHEMA_NAME = re.compile(r'^\s*"?([^",]+)"?')


def libpq_url(url: str) -> str:
    """``url`` with '=' and spaces inside query values escaped, as libpq requires.

    So ``?options=-csearch_path=jobs`` (the natural spelling) works as well as
    ``?options=-csearch_path%3Djobs``.
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url
    params = []
    for param in query.split("&"):
        key, eq, value = param.partition("=")
        params.append(key + eq + value.replace("=", "%3D").replace(" ", "%20"))
    return base + "?" + "&".join(params)


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise RuntimeError("a PostgreSQL job store needs psycopg 3: "
                           "pip install 'daemonapp[postgres]'") from None
    return psycopg


class PostgresJobStore(_SQLJobStore):
    """Jobs in PostgreSQL, shared by dispatchers on several hosts.

    Claims use ``FOR UPDATE SKIP LOCKED``; the tables live in the connection's
    current schema (``options=-csearch_path=NAME`` in the URL selects one, and
    it is created when missing). Submits send a NOTIFY as a wake-up hint.
    """

    _dialect = _PG_DIALECT

    def __init__(self, url: str, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 connect_timeout: float = 10.0) -> None:
        super().__init__(max_attempts)
        self.url = url
        self.connect_timeout = connect_timeout
        self._psycopg = _import_psycopg()
        self._conn = None
        self.schema = ""
        with self._lock:
            self._migrate(self._connection())

    def __repr__(self) -> str:
        return f"<PostgresJobStore schema={self.schema!r}>"

    def _connect(self) -> Any:
        return self._psycopg.connect(libpq_url(self.url), autocommit=True,
                                     connect_timeout=max(1, int(self.connect_timeout)))

    def _connection(self) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                try:
                    conn.close()
                except Exception as err:  # a broken connection may fail to close
                    _log.debug("closing a broken connection: {error}", error=err)
            conn = self._conn = self._connect()
        return conn

    def _migrate(self, conn: Any) -> None:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        if schema is None:
            path = conn.execute("SHOW search_path").fetchone()[0]
            match = _SCHEMA_NAME.match(path)
            if match is None or match.group(1).strip() == "$user":
                raise RuntimeError(f"no schema to create the job tables in "
                                   f"(search_path is {path!r})")
            name = match.group(1).strip()
            conn.execute(self._psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                self._psycopg.sql.Identifier(name)))
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
        self.schema = str(schema)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                         (f"daemonapp.jobs.schema.{self.schema}",))
            self._install_schema(conn, "jobs_schema_version", _PG_SCHEMA,
                                 place=f" in {self.schema!r}")

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                yield conn

    def _notify(self, conn: Any) -> None:
        conn.execute("SELECT pg_notify(%s, current_schema())", (NOTIFY_CHANNEL,))

    def _insert(self, kind: str, payload: str, unique_key: str | None, *, priority: int,
                due: float | None, budget: int) -> int:
        while True:
            with self._tx() as conn:
                row = conn.execute(
                    """INSERT INTO jobs (kind, payload, unique_key, priority, run_after,
                            max_attempts)
                       VALUES (%s, %s, %s, %s, coalesce(to_timestamp(%s::float8), now()), %s)
                       ON CONFLICT (unique_key) WHERE state IN ('pending', 'running')
                       DO NOTHING RETURNING id""",
                    (kind, payload, unique_key, priority, due, budget)).fetchone()
                if row is None:
                    row = conn.execute(
                        """SELECT id FROM jobs WHERE unique_key = %s
                           AND state IN ('pending', 'running')""", (unique_key,)).fetchone()
                else:
                    self._notify(conn)
            if row is not None:  # else the duplicate ended meanwhile: insert again
                return int(row[0])

    def _next_token(self, conn: Any) -> tuple[str, tuple[Any, ...]]:
        return "nextval('jobs_token_seq')", ()

    def _id_list(self, ids: Collection[int]) -> Any:
        return sorted({int(i) for i in ids})

    def listener(self) -> PostgresNotifier:
        """A separate connection LISTENing for submits: a wake-up hint for dispatchers."""
        return PostgresNotifier(self._connect(), self.schema)


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


__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "PostgresJobStore",
    "SQLiteJobStore",
    "is_postgres_url",
    "is_unavailable",
    "open_store",
]
