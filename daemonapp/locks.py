"""Highlander locks: at most one holder of a name anywhere.

Two backends behind one threading.Lock-like API: flock on ``state_dir/locks/NAME.lock``
(one host) and a PostgreSQL lease row renewed by a thread (several hosts). This module
imports no Twisted, so a CGI script can use it (``highlander``, ``cgi_acquire``); the
scheduler's adapter (``LockProvider``, ``AsyncLock``, ``OutageLog``) lives in
``daemonapp.lock_provider`` and is importable from here too, loaded on first use.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import string
import threading
import time
from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from daemonapp._lock_interfaces import ILockBackend, LockUnavailable

# AsyncLock, LockProvider and OutageLog come from daemonapp.lock_provider through
# __getattr__ below (PEP 562): no import of it here, not even for type checkers, since
# it imports this module (no cycle in the package; tests/test_import_cycles.py).
__all__ = [
    "BUSY_STATUS",
    "RETRY_AFTER",
    "WITH_TIMEOUT",
    "AsyncLock",  # noqa: F822
    "FlockLock",
    "HighlanderBusy",
    "LockProvider",  # noqa: F822
    "LockUnavailable",
    "OutageLog",  # noqa: F822
    "PostgresLease",
    "default_holder",
    "default_state_dir",
    "highlander",
    "validate_lock_name",
]

WITH_TIMEOUT = 10.0
"""How long ``with lock:`` waits before it raises HighlanderBusy."""

RETRY_AFTER = "30"
BUSY_STATUS = "503 Service Unavailable"

# Waiters poll well inside the 50 ms a daemon lets pass between two runs, so a
# waiter elsewhere sees the lock free and gets its turn.
_POLL_MIN = 0.01
_POLL_MAX = 0.04
_TOKEN_READ_MAX = 4096
_NAME_FIRST = frozenset(string.ascii_letters + string.digits)
_NAME_REST = _NAME_FIRST | frozenset("._-")

_logger = logging.getLogger("daemonapp.locks")


class HighlanderBusy(RuntimeError):
    """``with lock:`` waited its time and another holder still has the lock."""

    def __init__(self, name: str, waited: float) -> None:
        super().__init__(f"highlander lock {name!r} is held elsewhere (waited {waited:g}s)")
        self.name = name
        self.waited = waited


def validate_lock_name(name: object) -> str:
    """Return ``name`` when it matches ``[A-Za-z0-9][A-Za-z0-9._-]*``, else raise ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected a lock name like 'nightly-report', got {name!r}")
    if name[0] not in _NAME_FIRST or not _NAME_REST.issuperset(name):
        raise ValueError(
            f"invalid lock name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or a digit"
        )
    return name


def default_state_dir() -> str:
    """``$DAEMONAPP_STATE_DIR``, else ``./var``, as an absolute path."""
    return os.path.abspath(os.environ.get("DAEMONAPP_STATE_DIR") or "var")


def default_holder() -> str:
    """``host:pid:random``: names this process and tells two lock objects apart."""
    return f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"


def _printable(text: str, limit: int = 256) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _busy_response(name: str) -> tuple[str, list[tuple[str, str]], bytes]:
    body = (f"Busy: another request is running {name!r}. "
            f"Please retry in {RETRY_AFTER} seconds.\n").encode()
    return BUSY_STATUS, [("Retry-After", RETRY_AFTER), ("Content-Type", "text/plain")], body


class _Highlander:
    """The threading.Lock-like surface common to both backends.

    A local mutex first excludes threads sharing this object (as threading.Lock
    does); the backend then excludes every other holder, one try at a time.
    """

    name: str
    holder: str
    token: int | None

    def __init__(self, name: str, holder: str | None) -> None:
        self.name = validate_lock_name(name)
        self.holder = _printable(holder) if holder else default_holder()
        self.token = None
        self.context_timeout = WITH_TIMEOUT
        self._local = threading.Lock()  # taken while acquiring and while held
        self._held = False

    # backends implement these three
    def _try_acquire(self) -> bool:
        raise NotImplementedError

    def _release_held(self) -> None:
        raise NotImplementedError

    def still_held(self) -> bool:
        raise NotImplementedError

    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._held

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None or negative: forever; 0: one try).

        Returns True once held; ``self.token`` is then this hold's fencing token.
        """
        if timeout is not None and timeout < 0:
            timeout = None
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout == 0:
            if not self._local.acquire(blocking=False):
                return False
        elif not self._local.acquire(timeout=-1 if timeout is None else timeout):
            return False
        held = False
        try:
            pause = _POLL_MIN
            while True:
                if self._try_acquire():
                    held = self._held = True
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                time.sleep(pause if deadline is None else min(pause, deadline - now))
                pause = min(pause * 2, _POLL_MAX)
        finally:
            if not held:
                self._local.release()

    def release(self) -> None:
        """Release the lock (RuntimeError when it is not held, as threading.Lock)."""
        if not self._held:
            raise RuntimeError(f"release of unheld highlander lock {self.name!r}")
        self._held = False
        try:
            self._release_held()
        finally:
            self._local.release()

    def __enter__(self) -> _Highlander:
        if not self.acquire(timeout=self.context_timeout):
            raise HighlanderBusy(self.name, self.context_timeout)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def cgi_acquire(
        self, environ: Mapping[str, Any], retries: int = 10, delay: float = 1.0
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """Take the lock for a CGI-style request: None once held, else a 503 answer.

        One try, then up to ``retries`` waits of ``delay`` seconds. The answer is
        ``(status, headers, body)`` with Retry-After: 30; the abort is logged with
        the client's REMOTE_HOST (else REMOTE_ADDR) through stdlib logging.
        """
        client = _printable(str(environ.get("REMOTE_HOST") or environ.get("REMOTE_ADDR") or "-"))
        try:
            if self.acquire(timeout=0):
                return None
            for _ in range(max(0, retries)):
                if self.acquire(timeout=delay):
                    return None
        except Exception:
            _logger.exception("highlander abort: lock %s unavailable, client %s",
                              self.name, client)
            return _busy_response(self.name)
        _logger.warning("highlander abort: lock %s still held elsewhere after %d tries, "
                        "client %s", self.name, max(0, retries) + 1, client)
        return _busy_response(self.name)

    def close(self) -> None:
        """Release the lock when held and free the backend's resources."""
        if self._held:
            self.release()

    def __repr__(self) -> str:
        state = "held" if self.locked() else "free"
        return f"<{type(self).__name__} {self.name!r} {state} token={self.token}>"


@implementer(ILockBackend)
class FlockLock(_Highlander):
    """flock(2) on ``state_dir/locks/NAME.lock``; the file keeps the fencing token.

    The file is never unlinked (an unlinked lock file lets two holders in), a
    symlink at its path is refused, and anyone's ``flock(1)`` on it excludes holders.
    """

    def __init__(self, name: str, *, state_dir: str | os.PathLike[str] | None = None,
                 holder: str | None = None) -> None:
        super().__init__(name, holder)
        self.state_dir = os.path.abspath(state_dir if state_dir is not None
                                         else default_state_dir())
        self.path = os.path.join(self.state_dir, "locks", self.name + ".lock")
        self._fd: int | None = None

    def _make_dirs(self) -> None:
        for path in (self.state_dir, os.path.dirname(self.path)):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    continue
            os.chmod(path, 0o700)  # the umask may have taken bits away; 0700 is the rule

    def _open(self) -> int:
        self._make_dirs()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "highlander lock file is a symlink, which is never "
                              f"followed; remove {self.path}", self.path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"highlander lock file {self.path} is not a regular file",
                          self.path)
        return fd

    def _try_acquire(self) -> bool:
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if not self._names_file(fd):
                # Someone replaced the file after we opened it: a lock on the old
                # inode excludes nobody. The next try opens the new one.
                os.close(fd)
                return False
            self.token = self._bump_token(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _names_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def _bump_token(self, fd: int) -> int:
        data = os.pread(fd, _TOKEN_READ_MAX, 0)
        fields = data.split(maxsplit=1)
        last = 0
        if fields:
            try:
                last = int(fields[0])
            except ValueError:
                _logger.warning("highlander lock file %s held no token; starting again at 1",
                                self.path)
        token = last + 1
        line = f"{token} {self.holder}\n".encode()
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))
        return token

    def _release_held(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def still_held(self) -> bool:
        """True while held and the lock file on disk is still the one locked."""
        fd = self._fd
        return fd is not None and self._names_file(fd)


_CREATE_SQL = """
CREATE TABLE IF NOT EXISTS daemonapp_locks (
    name text PRIMARY KEY,
    holder text NOT NULL,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL
)"""

# Takes the row when it is free or expired (judged on the database's clock) and
# bumps the token in the same statement, so two contenders can never both win.
_ACQUIRE_SQL = """
INSERT INTO daemonapp_locks AS l (name, holder, token, expires_at, renewed_at)
VALUES (%(name)s, %(holder)s, 1, now() + %(ttl)s * interval '1 second', now())
ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder, token = l.token + 1,
        expires_at = excluded.expires_at, renewed_at = excluded.renewed_at
    WHERE l.expires_at <= now()
RETURNING token"""

_RENEW_SQL = """
UPDATE daemonapp_locks SET expires_at = now() + %(ttl)s * interval '1 second', renewed_at = now()
WHERE name = %(name)s AND holder = %(holder)s AND token = %(token)s AND expires_at > now()
RETURNING token"""

_RELEASE_SQL = """
UPDATE daemonapp_locks SET expires_at = now()
WHERE name = %(name)s AND holder = %(holder)s AND token = %(token)s AND expires_at > now()
RETURNING token"""


@implementer(ILockBackend)
class PostgresLease(_Highlander):
    """A lease row in PostgreSQL, renewed every ttl/3 by a daemon thread while held.

    A successor takes the row no sooner than ``ttl`` after the last renewal; a
    holder that was stopped or cut off finds out through ``still_held()``, and its
    late renewal or release never touches the newer holder's row.
    """

    def __init__(self, name: str, *, url: str, ttl: float | str = 30.0,
                 holder: str | None = None) -> None:
        super().__init__(name, holder)
        if isinstance(ttl, str):
            from daemonapp.durations import parse_duration

            ttl = parse_duration(ttl)
        if not ttl > 0:
            raise ValueError(f"ttl: expected a duration above 0, got {ttl!r}")
        self.url = url
        self.ttl = float(ttl)
        self._db = threading.Lock()  # one statement at a time on the connection
        self._conn: Any = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost = False
        # When the last renewal (or the acquire) began: the database's row expires ttl
        # after it at the latest, and renewals that keep failing give up at ttl/2, well
        # before a successor may take over (DESIGN §5).
        self._renewed_at = 0.0

    def _connect(self) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        extra: dict[str, Any] = {}
        if "connect_timeout" not in conninfo_to_dict(self.url):
            extra["connect_timeout"] = max(1, round(min(self.ttl / 3, 10)))
        conn = psycopg.connect(self.url, autocommit=True, **extra)
        try:
            # A statement must not outlive the lease it is meant to keep.
            conn.execute("SELECT set_config('statement_timeout', %s, false)",
                         (str(max(500, int(self.ttl * 1000 / 3))),))
            try:
                conn.execute(_CREATE_SQL)
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                pass  # another process created it at the same moment
        except BaseException:
            conn.close()
            raise
        return conn

    def _execute(self, sql: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        import psycopg

        with self._db:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                rows: list[tuple[Any, ...]] = self._conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                conn, self._conn = self._conn, None
                conn.close()
                raise
            return rows

    def _params(self, token: int | None = None) -> dict[str, object]:
        return {"name": self.name, "holder": self.holder, "ttl": self.ttl, "token": token}

    def _try_acquire(self) -> bool:
        started = time.monotonic()
        rows = self._execute(_ACQUIRE_SQL, self._params())
        if not rows:
            return False
        self.token = int(rows[0][0])
        self._lost = False
        self._renewed_at = started
        self._stop = threading.Event()
        self._renewer = threading.Thread(
            target=self._renew_loop, args=(self.token, self._stop),
            name=f"highlander-renew-{self.name}", daemon=True)
        self._renewer.start()
        return True

    def _renew_loop(self, token: int, stop: threading.Event) -> None:
        interval = self.ttl / 3
        wait = interval
        failing = False
        while not stop.wait(wait):
            started = time.monotonic()
            try:
                rows = self._execute(_RENEW_SQL, self._params(token))
            except Exception as e:
                if time.monotonic() >= self._renewed_at + self.ttl / 2:
                    self._lose(stop, f"no renewal for ttl/2 ({self.ttl / 2:g}s): {e}")
                    return
                if not failing:  # one line per outage, not one per retry
                    _logger.warning("highlander %s: lease renewal failed, retrying for up "
                                    "to %gs: %s", self.name, self.ttl / 2, e)
                failing = True
                # Retry soon (a dropped connection just needs a new one), several times
                # before ttl/2 runs out.
                wait = min(interval / 4, 1.0)
                continue
            wait = interval
            if stop.is_set():
                return
            if not rows:
                self._lose(stop, "the lease expired or was taken over")
                return
            if failing:
                _logger.warning("highlander %s: lease renewed again", self.name)
                failing = False
            self._renewed_at = started

    def _lose(self, stop: threading.Event, why: str) -> None:
        if not stop.is_set():
            self._lost = True
            _logger.warning("highlander %s: lost the lease (token %s): %s",
                            self.name, self.token, why)

    def still_held(self) -> bool:
        """False once the lease is lost (renewal found the row taken), and whenever no
        renewal has worked for ttl/2 (DESIGN §5): a renewal hanging in a network
        partition raises nothing, yet the holder must stop well before a successor may
        take over, ``ttl`` after the last renewal. True again once a renewal works."""
        return (self._held and not self._lost
                and time.monotonic() < self._renewed_at + self.ttl / 2)

    def _release_held(self) -> None:
        self._stop.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(self.ttl)
        try:
            rows = self._execute(_RELEASE_SQL, self._params(self.token))
        except Exception as e:
            # The lease runs out by itself; a failed release must not fail the caller.
            _logger.warning("highlander %s: release failed, the lease expires in at most "
                            "%gs: %s", self.name, self.ttl, e)
            return
        if not rows:
            _logger.warning("highlander %s: the lease (token %s) was lost before release",
                            self.name, self.token)

    def close(self) -> None:
        """Release when held, then close the connection."""
        super().close()
        with self._db:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def highlander(name: str, *, state_dir: str | os.PathLike[str] | None = None,
               url: str | None = None, ttl: float | str = 30,
               holder: str | None = None) -> FlockLock | PostgresLease:
    """A highlander lock named ``name``: at most one holder anywhere.

    ``url`` (postgresql://...) selects the PostgreSQL lease backend; otherwise it is
    flock on ``state_dir/locks/NAME.lock`` (state_dir defaults to
    ``$DAEMONAPP_STATE_DIR``, else ``./var``). Raises ValueError for a bad name.
    """
    if url:
        return PostgresLease(name, url=url, ttl=ttl, holder=holder)
    return FlockLock(name, state_dir=state_dir, holder=holder)


# The reactor adapter, loaded when first asked for (PEP 562) so that importing this
# module loads no Twisted. DaemonApp.privilegedStartService builds its provider, so
# the import happens before twistd's --uid switch (DESIGN §2).
_ADAPTER = frozenset({"AsyncLock", "LockProvider", "OutageLog"})


def __getattr__(name: str) -> Any:
    if name not in _ADAPTER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from daemonapp import lock_provider

    value = getattr(lock_provider, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ADAPTER)
