"""The job store's logic, written once for SQLite and PostgreSQL.

``SQLJobStore`` holds every rule of DESIGN §6 (claims, leases, fencing tokens,
outcomes, retries) as SQL templates; each database's module fills them in with its
dialect and gives the connection and transactions.
"""

# ruff: noqa: S608 - SQL is composed only from these modules' constants, never from input
from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from zope.interface import implementer

from daemonapp.interfaces import IJobStore
from daemonapp.jobs._model import (
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

__all__ = ["MAX_LIST_LIMIT", "RECORD_COLUMNS", "SCHEMA_VERSION", "SQLJobStore"]

SCHEMA_VERSION = 1
MAX_LIST_LIMIT = 10_000


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


RECORD_COLUMNS = ("id, kind, state, attempts, max_attempts, error, percent, message, payload, "
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


# The SQL below is written once, as templates whose fields each dialect fills in
# (``SQLJobStore._dialect``):
#   p           a placeholder (``?`` or ``%s``)
#   p_text      a placeholder that may be NULL and is compared with a text column
#   now         the database's clock as the column type
#   at          a placeholder holding a Unix time (or NULL), as the column type
#   later       now plus a placeholder holding seconds
#   greatest    the larger of two values
#   for_update  locks a selected row until the end of the transaction (or nothing)
#   skip_locked locks the selected rows, passing over rows locked by others (or nothing)
#   not_busy    the row's id is not in a placeholder holding a list of ids
#   columns     the columns of a JobRecord (see ``_record``; RECORD_COLUMNS)


@implementer(IJobStore)
class SQLJobStore(ABC):
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
