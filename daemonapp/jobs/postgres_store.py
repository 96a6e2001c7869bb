"""Jobs in PostgreSQL, shared by dispatchers on several hosts.

The PostgreSQL dialect of ``SQLJobStore`` (FOR UPDATE SKIP LOCKED, the database's
clock), its schema in the connection's current schema, and the NOTIFY sent on a submit.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.logger import Logger

from daemonapp.jobs._model import DEFAULT_MAX_ATTEMPTS
from daemonapp.jobs.notify import NOTIFY_CHANNEL, PostgresNotifier
from daemonapp.jobs.sql_store import RECORD_COLUMNS, SQLJobStore

__all__ = ["PostgresJobStore", "libpq_url"]

# The namespace the store logged under before it was split in three.
_log = Logger(namespace="daemonapp.jobs.store")


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
_PG_COLUMNS = RECORD_COLUMNS.format(created_at=_PG_EPOCH.format("created_at"),
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


class PostgresJobStore(SQLJobStore):
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
