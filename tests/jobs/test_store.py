"""The job store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from daemonapp.interfaces import IJobStore
from daemonapp.jobs import StaleLease, open_store
from daemonapp.jobs._model import JobCancelled


def _wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def test_provides_ijobstore(store: Any) -> None:
    """Every store provides IJobStore."""
    assert verifyObject(IJobStore, store)


def test_submit_then_get(store: Any) -> None:
    """A submitted job is pending with its payload, no attempts and a budget of 3."""
    job_id = store.submit("mail", {"to": "a@example.org"})
    record = store.get(job_id)
    assert (record.id, record.kind, record.state, record.attempts, record.max_attempts) == (
        job_id, "mail", "pending", 0, 3)
    assert record.payload == {"to": "a@example.org"}
    assert record.error is None
    assert record["state"] == "pending"


def test_get_unknown(store: Any) -> None:
    """get() of an unknown id is None."""
    assert store.get(987654) is None


def test_payload_must_be_object(store: Any) -> None:
    """A payload that is not a JSON object is refused."""
    with pytest.raises(ValueError, match="JSON object"):
        store.submit("mail", ["not", "an", "object"])


def test_payload_size_cap(store: Any) -> None:
    """A payload over 1 MiB of JSON is refused."""
    with pytest.raises(ValueError, match="limited to 1048576 bytes"):
        store.submit("mail", {"blob": "x" * (1024 * 1024)})


def test_unique_key_dedupes_while_active(store: Any) -> None:
    """A unique_key already pending gives back the existing id."""
    first = store.submit("mail", {"n": 1}, unique_key="user-7")
    second = store.submit("mail", {"n": 2}, unique_key="user-7")
    assert second == first


def test_unique_key_free_after_done(store: Any) -> None:
    """Once the job with a unique_key is done, the key makes a new job."""
    first = store.submit("mail", {}, unique_key="k")
    job = store.claim("h1")
    store.complete(job.id, job.token)
    second = store.submit("mail", {}, unique_key="k")
    assert second != first
    assert store.get(second).state == "pending"


def test_claim_marks_running(store: Any) -> None:
    """A claim returns the job with attempt 1 and marks it running."""
    job_id = store.submit("mail", {"x": 1})
    job = store.claim("holder-a", lease=30)
    assert (job.id, job.kind, job.payload, job.attempt) == (job_id, "mail", {"x": 1}, 1)
    record = store.get(job_id)
    assert (record.state, record.attempts, record.holder) == ("running", 1, "holder-a")


def test_claim_nothing(store: Any) -> None:
    """A claim with nothing pending is None."""
    assert store.claim("h") is None


def test_claim_order_priority_then_age(store: Any) -> None:
    """Claims take higher priority first, then the oldest."""
    low = store.submit("k", {}, priority=0)
    high = store.submit("k", {}, priority=5)
    low2 = store.submit("k", {}, priority=0)
    assert [store.claim("h").id for _ in range(3)] == [high, low, low2]


def test_run_after_in_future_not_claimed(store: Any) -> None:
    """A job due in an hour is not claimed now."""
    store.submit("k", {}, run_after=time.time() + 3600)
    assert store.claim("h") is None


def test_tokens_strictly_increase(store: Any) -> None:
    """Each claim gets a fencing token larger than every earlier one."""
    tokens = []
    for _ in range(4):
        store.submit("k", {})
        tokens.append(store.claim("h").token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 4


def test_complete(store: Any) -> None:
    """complete() with the current token marks the job done."""
    store.submit("k", {})
    job = store.claim("h")
    store.complete(job.id, job.token)
    assert store.get(job.id).state == "done"


def test_stale_token_refused(store: Any) -> None:
    """complete() with an older token raises StaleLease and changes nothing."""
    store.submit("k", {})
    job = store.claim("h")
    with pytest.raises(StaleLease):
        store.complete(job.id, job.token - 1)
    assert store.get(job.id).state == "running"


def test_expired_lease_reclaimed(store: Any) -> None:
    """A running job whose lease expired is claimed again, spending an attempt."""
    store.submit("k", {})
    first = store.claim("dead", lease=0.05)
    second = _wait_for(lambda: store.claim("alive", lease=30))
    assert (second.id, second.attempt) == (first.id, 2)
    assert second.token > first.token


def test_zombie_cannot_complete(store: Any) -> None:
    """After a reclaim, the first holder's completion is refused."""
    store.submit("k", {})
    first = store.claim("dead", lease=0.05)
    second = _wait_for(lambda: store.claim("alive", lease=30))
    with pytest.raises(StaleLease):
        store.complete(first.id, first.token)
    store.complete(second.id, second.token)
    assert store.get(first.id).state == "done"


def test_heartbeat_keeps_lease(store: Any) -> None:
    """A heartbeat pushes the lease out so the job is not reclaimed."""
    store.submit("k", {})
    job = store.claim("h", lease=0.2)
    store.heartbeat(job.id, job.token, lease=30)
    time.sleep(0.3)  # past the first lease: only the heartbeat keeps it
    assert store.claim("other") is None


def test_heartbeat_stale(store: Any) -> None:
    """A heartbeat with a stale token raises StaleLease."""
    store.submit("k", {})
    job = store.claim("h")
    with pytest.raises(StaleLease):
        store.heartbeat(job.id, job.token + 1000)


def test_expired_lease_spends_budget(store: Any) -> None:
    """A job whose lease expires on its last attempt ends failed, with a lease error."""
    job_id = store.submit("k", {}, max_attempts=1)
    store.claim("dead", lease=0.05)
    time.sleep(0.1)  # let the lease expire on the database's clock
    assert store.claim("alive") is None
    record = store.get(job_id)
    assert record.state == "failed"
    assert "lease expired" in record.error


def test_fail_with_retry(store: Any) -> None:
    """fail() with retry_at while budget remains makes the job pending at that time."""
    store.submit("k", {})
    job = store.claim("h")
    state = store.fail(job.id, job.token, "Boom", retry_at=time.time() + 3600)
    record = store.get(job.id)
    assert (state, record.state, record.error, record.attempts) == (
        "pending", "pending", "Boom", 1)
    assert store.claim("h") is None


def test_fail_retry_due_now(store: Any) -> None:
    """A failed attempt due again now is claimed as attempt 2."""
    store.submit("k", {})
    job = store.claim("h")
    store.fail(job.id, job.token, "Boom", retry_at=time.time())
    assert store.claim("h").attempt == 2


def test_fail_without_retry_at(store: Any) -> None:
    """fail() without retry_at makes the job pending again at once while attempts are left."""
    store.submit("k", {})
    job = store.claim("h")
    assert store.fail(job.id, job.token, "Traceback...\nValueError: x") == "pending"
    again = store.claim("h")
    assert (again.id, again.attempt) == (job.id, 2)


def test_fail_spends_the_last_attempt(store: Any) -> None:
    """The third failure of a job with max_attempts 3 marks it failed with its error."""
    job_id = store.submit("k", {})
    for attempt in (1, 2, 3):
        job = store.claim("h")
        assert (job.id, job.attempt) == (job_id, attempt)
        state = store.fail(job.id, job.token, f"Traceback...\nValueError: {attempt}")
    assert state == "failed"
    record = store.get(job_id)
    assert (record.state, record.attempts, record.error) == ("failed", 3,
                                                              "Traceback...\nValueError: 3")


def test_fail_budget_spent(store: Any) -> None:
    """fail() on the last attempt is final even with retry_at."""
    store.submit("k", {}, max_attempts=1)
    job = store.claim("h")
    assert store.fail(job.id, job.token, "Boom", retry_at=time.time()) == "failed"


def test_claim_applies_dispatcher_budget(store: Any) -> None:
    """claim(max_attempts=N) sets the budget of the job it claims."""
    job_id = store.submit("k", {})
    assert store.claim("h", max_attempts=5).max_attempts == 5
    assert store.get(job_id).max_attempts == 5


def test_release_gives_attempt_back(store: Any) -> None:
    """release() puts the job back to pending without spending the attempt."""
    store.submit("k", {})
    job = store.claim("h")
    store.release(job.id, job.token)
    record = store.get(job.id)
    assert (record.state, record.attempts) == ("pending", 0)
    assert store.claim("h").attempt == 1


def test_cancel_pending(store: Any) -> None:
    """cancel() of a pending job marks it cancelled; it is never claimed."""
    job_id = store.submit("k", {})
    assert store.cancel(job_id) is True
    assert store.get(job_id).state == "cancelled"
    assert store.claim("h") is None


def test_cancel_running_refuses_holder(store: Any) -> None:
    """After cancel() of a running job, the holder's heartbeat and completion raise."""
    store.submit("k", {})
    job = store.claim("h")
    store.cancel(job.id)
    with pytest.raises(JobCancelled):
        store.heartbeat(job.id, job.token)
    with pytest.raises(StaleLease):
        store.complete(job.id, job.token)
    assert store.get(job.id).state == "cancelled"


def test_cancel_done_is_false(store: Any) -> None:
    """cancel() of a finished job changes nothing and says so."""
    store.submit("k", {})
    job = store.claim("h")
    store.complete(job.id, job.token)
    assert store.cancel(job.id) is False
    assert store.get(job.id).state == "done"


def test_retry_failed(store: Any) -> None:
    """retry() makes a failed job pending with a fresh budget."""
    store.submit("k", {}, max_attempts=1)
    job = store.claim("h")
    store.fail(job.id, job.token, "Boom")
    assert store.retry(job.id) is True
    record = store.get(job.id)
    assert (record.state, record.attempts) == ("pending", 0)
    assert store.claim("h").attempt == 1


def test_retry_pending_is_false(store: Any) -> None:
    """retry() of a job that has not failed changes nothing."""
    job_id = store.submit("k", {})
    assert store.retry(job_id) is False


def test_progress(store: Any) -> None:
    """set_progress() records percent and message."""
    store.submit("k", {})
    job = store.claim("h")
    store.set_progress(job.id, job.token, 42.5, "halfway")
    record = store.get(job.id)
    assert (record.percent, record.message) == (42.5, "halfway")


def test_progress_stale(store: Any) -> None:
    """set_progress() with a stale token raises StaleLease."""
    store.submit("k", {})
    job = store.claim("h")
    with pytest.raises(StaleLease):
        store.set_progress(job.id, job.token - 1, 1.0, "")


def test_list_newest_first_and_by_state(store: Any) -> None:
    """list() returns the newest first and filters by state."""
    a = store.submit("k", {})
    b = store.submit("k", {})
    store.cancel(a)
    assert [r.id for r in store.list()] == [b, a]
    assert [r.id for r in store.list(state="cancelled")] == [a]
    assert [r.id for r in store.list(limit=1)] == [b]


def test_list_unknown_state(store: Any) -> None:
    """list() with an unknown state is a ValueError."""
    with pytest.raises(ValueError, match="unknown job state"):
        store.list(state="sleeping")


def test_counts(store: Any) -> None:
    """counts() gives every state with its number of jobs."""
    store.submit("k", {})
    store.cancel(store.submit("k", {}))
    assert store.counts() == {"pending": 1, "running": 0, "done": 0, "failed": 0,
                              "cancelled": 1}


def test_timestamps(store: Any) -> None:
    """created_at and updated_at are Unix times of about now."""
    record = store.get(store.submit("k", {}))
    assert abs(record.created_at - time.time()) < 60
    assert record.updated_at >= record.created_at


def test_reopen_keeps_jobs(store_target: str) -> None:
    """A second store on the same target sees the jobs of the first."""
    first = open_store(store_target)
    job_id = first.submit("k", {"a": 1})
    first.close()
    second = open_store(store_target)
    try:
        assert second.get(job_id).payload == {"a": 1}
    finally:
        second.close()


def test_sqlite_state_dir_private(tmp_path: Any) -> None:
    """A missing state_dir is created 0700, with the database file 0600 inside."""
    state_dir = tmp_path / "var"
    store = open_store(str(state_dir))
    store.close()
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state_dir / "jobs.sqlite3").st_mode) == 0o600


def test_sqlite_wal(tmp_path: Any) -> None:
    """The SQLite store runs in WAL mode."""
    import sqlite3

    open_store(str(tmp_path)).close()
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 1
    finally:
        conn.close()


def test_closed_store_raises(tmp_path: Any) -> None:
    """A call on a closed store raises RuntimeError."""
    store = open_store(str(tmp_path))
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.submit("k", {})


def test_libpq_url_escapes_query_values() -> None:
    """'=' and spaces inside URL query values are escaped for libpq."""
    from daemonapp.jobs.store import libpq_url

    assert libpq_url("postgresql://u@h/db?options=-c search_path=jobs&sslmode=disable") == (
        "postgresql://u@h/db?options=-c%20search_path%3Djobs&sslmode=disable")
    assert libpq_url("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.postgres
def test_postgres_schema_from_plain_url(pg_url: str) -> None:
    """A URL spelling options=-csearch_path=NAME unescaped selects (and creates) NAME."""
    plain = pg_url.replace("%3D", "=")
    store = open_store(plain)
    try:
        assert store.schema == plain.rsplit("=", 1)[1]
        assert store.get(store.submit("k", {})).state == "pending"
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_two_stores_claim_disjoint(pg_url: str) -> None:
    """Two stores (two connections) claiming at once never get the same job."""
    import threading

    first, second = open_store(pg_url), open_store(pg_url)
    try:
        for _ in range(40):
            first.submit("k", {})
        claimed: list[int] = []

        def drain(store: Any) -> None:
            while (job := store.claim("h")) is not None:
                claimed.append(job.id)

        threads = [threading.Thread(target=drain, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(claimed) == sorted(set(claimed))
        assert len(claimed) == 40
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_postgres_reconnects_after_connection_loss(pg_url: str) -> None:
    """After the server drops the store's connection, the next calls reconnect."""
    import psycopg

    from tests.jobs.conftest import PG_BASE_URL

    store = open_store(pg_url)
    try:
        job_id = store.submit("k", {})
        pid = store._conn.info.backend_pid
        with psycopg.connect(PG_BASE_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        try:  # the call that meets the dropped connection may fail
            store.get(job_id)
        except psycopg.OperationalError:
            pass
        assert store.get(job_id).state == "pending"
    finally:
        store.close()


# -- Outages: an outcome written twice, leases the caller still holds, a full disk -------


def test_outcome_written_again_after_lost_answer(store: Any) -> None:
    """complete(), fail() and release() resent with the same token (the first answer was
    lost with the connection) answer as the first call did instead of raising."""
    done_id = store.submit("k", {})
    job = store.claim("h")
    store.complete(job.id, job.token)
    store.complete(job.id, job.token, resent=True)
    store.submit("k", {}, max_attempts=2)
    failing = store.claim("h")
    assert [store.fail(failing.id, failing.token, "boom"),
            store.fail(failing.id, failing.token, "boom", resent=True)] == ["pending", "pending"]
    again = store.claim("h")
    store.release(again.id, again.token)
    store.release(again.id, again.token, resent=True)
    assert [store.get(i).state for i in (done_id, failing.id)] == ["done", "pending"]
    with pytest.raises(StaleLease):
        store.complete(again.id, again.token, resent=True)  # released: not this token's


def test_outcome_written_twice_without_resent_is_stale(store: Any) -> None:
    """DESIGN §6: a second complete() with the same token is a stale call (StaleLease)."""
    store.submit("k", {})
    job = store.claim("h")
    store.complete(job.id, job.token)
    with pytest.raises(StaleLease):
        store.complete(job.id, job.token)


def test_busy_expired_lease_not_claimed(store: Any) -> None:
    """A job whose lease lapsed while its holder still runs it (listed in busy) is
    neither claimed again nor failed; it is once it is no longer busy."""
    job_id = store.submit("k", {}, max_attempts=1)
    first = store.claim("h", lease=0.05)
    time.sleep(0.1)  # past the lease on the database's clock
    assert store.claim("h", busy=[job_id]) is None
    assert store.get(job_id).state == "running"
    store.heartbeat(first.id, first.token)  # the holder renews it
    store.complete(first.id, first.token)
    assert store.get(job_id).state == "done"


class _FullDiskOnCommit:
    """A SQLite connection whose next COMMIT fails as on a full disk, without committing."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.full = True
        self.statements: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        self.statements.append(sql)
        if sql == "COMMIT" and self.full:
            self.full = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_sqlite_full_disk_on_commit_then_recovers(tmp_path: Any) -> None:
    """A COMMIT failing on a full disk raises, is rolled back (nothing half-done stays
    open), checkpoints the WAL, and the next call succeeds."""
    from daemonapp.jobs.store import is_unavailable

    store = open_store(str(tmp_path / "state"))
    try:
        flaky = _FullDiskOnCommit(store._conn)
        store._conn = flaky
        with pytest.raises(sqlite3.OperationalError, match="disk is full") as caught:
            store.submit("k", {"n": 1})
        assert is_unavailable(caught.value)
        assert not flaky.conn.in_transaction
        assert "PRAGMA wal_checkpoint(TRUNCATE)" in flaky.statements
        job_id = store.submit("k", {"n": 2})
        assert [r.payload for r in store.list()] == [{"n": 2}]
        assert store.get(job_id).state == "pending"
    finally:
        store._conn = getattr(store._conn, "conn", store._conn)
        store.close()


def test_is_unavailable() -> None:
    """Outages (a full disk, an I/O error, a lost connection) are told from bugs."""
    from daemonapp.jobs.store import is_unavailable

    assert is_unavailable(sqlite3.OperationalError("database or disk is full"))
    assert is_unavailable(OSError(28, "No space left on device"))
    assert not is_unavailable(sqlite3.OperationalError("no such column: x"))
    assert not is_unavailable(StaleLease(1, 2, "claimed again"))
    assert not is_unavailable(ValueError("payload"))


def _fill(path: Any) -> None:
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


def test_sqlite_real_full_disk_clears_when_space_returns(tiny_disk: Any) -> None:
    """On a real full disk writes fail; once 1 MiB is freed (less than SQLite's 4 MB
    automatic checkpoint) a long run of writes succeeds and the WAL stays small."""
    store = open_store(str(tiny_disk / "state"))
    try:
        _fill(tiny_disk / "filler")
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            for _ in range(1000):
                store.submit("k", {"pad": "x" * 2000})
        os.truncate(tiny_disk / "filler", max(0, os.path.getsize(tiny_disk / "filler")
                                              - 1024 * 1024))
        for i in range(1500):
            store.submit("k", {"i": i})
            job = store.claim("h")
            store.complete(job.id, job.token)
        assert store.counts()["done"] == 1500
        assert os.path.getsize(tiny_disk / "state" / "jobs.sqlite3-wal") < 512 * 1024
    finally:
        store.close()


# ------------------------------------------------ DESIGN §6's exact rules, from outside


def test_store_submit_claim_complete(store: Any) -> None:
    """submit -> pending; claim -> running with token and attempt 1; complete -> done."""
    job_id = store.submit("email", {"to": "a@example.org"})
    assert store.get(job_id).state == "pending"
    job = store.claim("h1", lease=30)
    expected = (job_id, "email", {"to": "a@example.org"}, 1)
    assert (job.id, job.kind, job.payload, job.attempt) == expected
    assert isinstance(job.token, int)
    rec = store.get(job_id)
    assert (rec.state, rec.attempts) == ("running", 1)
    assert store.claim("h2", lease=30) is None
    store.complete(job_id, job.token)
    rec = store.get(job_id)
    assert rec.state == "done"
    for field in ("state", "attempts", "error", "percent", "message"):
        assert hasattr(rec, field)


def test_store_stale_token(store: Any) -> None:
    """A call with a stale token raises daemonapp.jobs.StaleLease."""
    job_id = store.submit("k", {})
    job = store.claim("h", lease=30)
    with pytest.raises(StaleLease):
        store.complete(job_id, job.token + 1000)
    with pytest.raises(StaleLease):
        store.heartbeat(job_id, job.token + 1000)
    store.complete(job_id, job.token)
    with pytest.raises(StaleLease):
        store.complete(job_id, job.token)


def test_store_cancel_refuses_late_completion(store: Any) -> None:
    """Cancel writes the store; a late completion is refused with StaleLease."""
    job_id = store.submit("k", {})
    job = store.claim("h", lease=30)
    store.cancel(job_id)
    assert store.get(job_id).state == "cancelled"
    with pytest.raises(StaleLease):
        store.complete(job_id, job.token)


def test_store_unique_key(store: Any) -> None:
    """unique_key dedupes while pending or running, not after."""
    a = store.submit("k", {"n": 1}, unique_key="u")
    assert store.submit("k", {"n": 2}, unique_key="u") == a
    job = store.claim("h", lease=30)
    assert store.submit("k", {"n": 3}, unique_key="u") == a
    store.complete(a, job.token)
    assert store.submit("k", {"n": 4}, unique_key="u") != a


def test_store_payload_must_be_object(store: Any) -> None:
    """Payloads are JSON objects."""
    with pytest.raises((ValueError, TypeError)):
        store.submit("k", [1, 2])


def test_store_payload_size_capped(store: Any) -> None:
    """Payloads are size-capped."""
    with pytest.raises((ValueError, TypeError)):
        store.submit("k", {"x": "a" * (64 * 1024 * 1024)})


def test_store_tokens_increase(store: Any) -> None:
    """Every claim hands out a larger fencing token."""
    for n in range(3):
        store.submit("k", {"n": n})
    tokens = [store.claim("h", lease=30).token for _ in range(3)]
    assert tokens == sorted(set(tokens))


def test_store_priority_and_run_after(store: Any) -> None:
    """Higher priority is claimed first; run_after in the future is not claimed yet."""
    low = store.submit("k", {}, priority=0)
    high = store.submit("k", {}, priority=5)
    store.submit("k", {}, run_after=time.time() + 3600)
    assert store.claim("h", lease=30).id == high
    assert store.claim("h", lease=30).id == low
    assert store.claim("h", lease=30) is None


def wait_claim(store: Any, holder: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.claim(holder, lease=30)
        if job is not None:
            return job
        time.sleep(0.02)
    return None


def test_store_lost_lease_spends_attempt(store: Any) -> None:
    """A job whose lease expired is claimed again; attempts counts claims."""
    job_id = store.submit("k", {})
    first = store.claim("dead", lease=0.05)
    again = wait_claim(store, "alive")
    assert again is not None
    assert again.id == job_id
    assert again.attempt == 2
    assert again.token > first.token
    assert store.get(job_id).attempts == 2


def test_store_lost_leases_exhaust_budget(store: Any) -> None:
    """max_attempts (default 3) includes the first run: three lost leases and the job fails."""
    job_id = store.submit("k", {})
    for _ in range(3):
        assert store.claim("dead", lease=0.05) is not None or wait_claim(store, "dead")
        time.sleep(0.06)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and store.get(job_id).state != "failed":
        assert store.claim("late", lease=30) is None
        time.sleep(0.02)
    rec = store.get(job_id)
    assert (rec.state, rec.attempts) == ("failed", 3)


def test_store_fail_spends_one_attempt_of_three(store: Any) -> None:
    """fail() spends one attempt; the job is failed after its third attempt only."""
    job_id = store.submit("k", {})
    for attempt in (1, 2, 3):
        job = wait_claim(store, "h", timeout=2)
        assert job is not None and job.attempt == attempt
        store.fail(job_id, job.token, f"boom {attempt}")
    rec = store.get(job_id)
    assert (rec.state, rec.attempts) == ("failed", 3)
    assert "boom 3" in rec.error


def test_store_fail_then_retry_fresh_budget(store: Any) -> None:
    """retry makes a failed job pending with a fresh budget."""
    job_id = store.submit("k", {})
    for _ in range(3):
        job = wait_claim(store, "h", timeout=2)
        assert job is not None
        store.fail(job_id, job.token, "Traceback: boom")
    rec = store.get(job_id)
    assert (rec.state, rec.attempts) == ("failed", 3)
    assert "boom" in rec.error
    store.retry(job_id)
    rec = store.get(job_id)
    assert (rec.state, rec.attempts) == ("pending", 0)
    assert store.claim("h", lease=30).attempt == 1


def test_store_get_unknown(store: Any) -> None:
    """get of an unknown id gives None (no record)."""
    assert store.get(999_999) is None


def test_store_reopen_persists(tmp_path: Path) -> None:
    """open_store(state_dir) keeps one SQLite file inside; a new store sees the jobs."""
    state = tmp_path / "state"
    a = open_store(str(state))
    job_id = a.submit("k", {"x": 1})
    a.close()
    files = [p for p in state.iterdir() if not p.name.endswith(("-wal", "-shm"))]
    assert len(files) == 1
    b = open_store(str(state))
    try:
        assert b.get(job_id).state == "pending"
    finally:
        b.close()


def test_store_submit_signature(store: Any) -> None:
    """submit(kind, payload, unique_key=None, priority=0, run_after=None)."""
    import inspect

    params = list(inspect.signature(store.submit).parameters.values())
    assert [p.name for p in params[:5]] == ["kind", "payload", "unique_key", "priority",
                                            "run_after"]
    assert [p.default for p in params[2:5]] == [None, 0, None]


def test_store_zombie_refused(store: Any) -> None:
    """After a lost lease and a new claim, the old holder's calls raise StaleLease."""
    job_id = store.submit("k", {})
    old = store.claim("zombie", lease=0.05)
    new = wait_claim(store, "fresh")
    assert new is not None and new.id == job_id
    with pytest.raises(StaleLease):
        store.heartbeat(job_id, old.token)
    with pytest.raises(StaleLease):
        store.complete(job_id, old.token)
    with pytest.raises(StaleLease):
        store.fail(job_id, old.token, "late")
    store.complete(job_id, new.token)
    assert store.get(job_id).state == "done"


def test_store_cancel_pending(store: Any) -> None:
    """A cancelled pending job is never claimed."""
    job_id = store.submit("k", {})
    store.cancel(job_id)
    assert store.get(job_id).state == "cancelled"
    assert store.claim("h", lease=30) is None


def test_store_concurrent_claims_unique(store: Any, request: pytest.FixtureRequest) -> None:
    """Claims from several store connections at once never hand out one job twice."""
    import threading

    target = str(store.path).rsplit("/", 1)[0] if hasattr(store, "path") else None
    if target is None:
        target = request.getfixturevalue("pg_url")
    ids = {store.submit("k", {"n": n}) for n in range(30)}
    got: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        own = open_store(target)
        try:
            while True:
                job = own.claim(f"w{n}", lease=30)
                if job is None:
                    return
                with lock:
                    got.append(job.id)
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == sorted(ids)
