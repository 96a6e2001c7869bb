"""What job code sees: the ``@job`` registry, ``progress()`` and ``current_job()``.

Imported inside the job child, so it imports nothing heavy (no Twisted).
"""

from __future__ import annotations

import _thread
import errno
import os
import time

# mypy reads any TYPE_CHECKING as true; at run time the child skips importing
# typing (~8 ms), as it skips json and dataclasses.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., Any])

_registry: dict[str, Callable[..., Any]] = {}
# Writes closer together than this are coalesced: the latest value wins.
PROGRESS_INTERVAL = 0.005


MAX_MESSAGE_CHARS = 1000


class CurrentJob:
    """The job this child runs: key effects by ``id`` and fence them with ``token``."""

    __slots__ = ("attempt", "id", "kind", "token")

    def __init__(self, id: int, kind: str, attempt: int, token: int) -> None:
        self.id = id
        self.kind = kind
        self.attempt = attempt
        self.token = token

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CurrentJob):
            return NotImplemented
        return (self.id, self.kind, self.attempt, self.token) == (
            other.id, other.kind, other.attempt, other.token)

    def __hash__(self) -> int:
        return hash((self.id, self.kind, self.attempt, self.token))

    def __repr__(self) -> str:
        return (f"CurrentJob(id={self.id!r}, kind={self.kind!r}, attempt={self.attempt!r}, "
                f"token={self.token!r})")


def clamp_percent(percent: object) -> float:
    """A progress percentage as a float in [0, 100] (NaN and junk read as 0)."""
    try:
        value = float(percent)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    if value != value:  # noqa: PLR0124 - NaN, without importing math
        return 0.0
    return min(100.0, max(0.0, value))


def cap_message(message: object) -> str:
    """A progress message cut to 1000 characters, on one line."""
    text = "" if message is None else str(message)
    return text[:MAX_MESSAGE_CHARS].replace("\n", " ").replace("\r", " ")


def encode_progress(percent: float, message: str) -> bytes:
    """One progress record on the pipe: ``percent TAB message LF``."""
    return f"{percent!r}\t{message}\n".encode("utf-8", "replace")


def decode_progress(line: bytes) -> tuple[float, str] | None:
    """A progress record read back, or None for a damaged one."""
    head, sep, tail = line.partition(b"\t")
    if not sep:
        return None
    try:
        percent = clamp_percent(float(head))
    except ValueError:
        return None
    return percent, cap_message(tail.decode("utf-8", "replace"))


def job(kind: str) -> Callable[[F], F]:
    """Register the decorated function as the handler of jobs of ``kind``.

    The function is called with the payload (a dict) in a child process; its
    return value is ignored, an exception fails the attempt.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"@job needs a non-empty kind string, got {kind!r}")

    def register(func: F) -> F:
        known = _registry.get(kind)
        if known is not None and _qualified(known) != _qualified(func):
            raise ValueError(
                f"job kind {kind!r} is already handled by {_qualified(known)}; "
                f"{_qualified(func)} cannot take it too"
            )
        _registry[kind] = func
        return func

    return register


def handler_for(kind: str) -> Callable[..., Any] | None:
    """The function registered for ``kind``, or None."""
    return _registry.get(kind)


def registered_kinds() -> list[str]:
    """Every kind registered in this process, sorted."""
    return sorted(_registry)


def _qualified(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


class _ProgressPipe:
    """Writes the latest progress to a pipe, at most once per PROGRESS_INTERVAL.

    A value held back by that rate limit is written by a trailing flusher thread
    (``_thread``: importing ``threading`` would cost the child milliseconds) once
    the interval has passed, so the last value of a burst reaches the dispatcher
    even when the job then goes quiet for minutes.
    """

    def __init__(self, fd: int, interval: float = PROGRESS_INTERVAL) -> None:
        self.fd = fd
        self.interval = interval
        self.last_write = float("-inf")  # the first report goes out at once
        self.pending: bytes | None = None
        self.closed = False
        # Guards pending, last_write, armed and every write, so that the job's thread
        # and the flusher never interleave two records on the pipe.
        self._mutex = _thread.allocate_lock()
        # A binary semaphore: released once per arming, the flusher waits on it.
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._armed = False
        self._flusher_started = False
        try:
            os.set_blocking(fd, False)
        except OSError:
            pass

    def report(self, percent: float, message: str) -> None:
        data = encode_progress(percent, message)
        with self._mutex:
            self.pending = data
            now = time.monotonic()
            if now - self.last_write >= self.interval:
                self.last_write = now
                self._write()
            if self.pending is not None and not self._armed and not self.closed:
                self._arm()

    def _arm(self) -> None:
        """Have the flusher write the value held back once the interval has passed."""
        if not self._flusher_started:
            try:
                _thread.start_new_thread(self._trail, ())
            except RuntimeError:  # no thread under a tight memory_limit: flush at the end
                return
            self._flusher_started = True
        self._armed = True
        self._wake.release()

    def _trail(self) -> None:
        """The flusher thread: for each arming, wait out the interval, write the value."""
        while True:
            self._wake.acquire()
            while True:
                with self._mutex:
                    if self.closed:
                        return
                    delay = self.last_write + self.interval - time.monotonic()
                    if delay <= 0:
                        if self.pending is not None:
                            self.last_write = time.monotonic()
                            self._write()
                        if self.pending is None:  # else the parent is slow: try again
                            self._armed = False
                            break
                        delay = self.interval
                time.sleep(delay)

    def flush(self) -> None:
        """Write the value held back, if any (blocking briefly: it is the last one)."""
        with self._mutex:
            if self.pending is None:
                return
            try:
                os.set_blocking(self.fd, True)
            except OSError:
                pass
            self._write()

    def close(self) -> None:
        """Flush, then end the flusher thread."""
        self.flush()
        with self._mutex:
            self.closed = True
            if self._flusher_started and not self._armed:
                self._armed = True
                self._wake.release()  # let it see ``closed`` and end

    def _write(self) -> None:
        data = self.pending
        if data is None:
            return
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            return  # the parent is slow: keep it pending, coalesce with the next
        except OSError as err:
            if err.errno == errno.EPIPE:
                self.pending = None
            return
        if written == len(data):
            self.pending = None
        else:  # a partial line: finish it so the parent never sees half a record
            rest = data[written:]
            try:
                os.set_blocking(self.fd, True)
                while rest:
                    rest = rest[os.write(self.fd, rest):]
                os.set_blocking(self.fd, False)
            except OSError:
                pass
            self.pending = None


_current: CurrentJob | None = None
_pipe: _ProgressPipe | None = None
_last_progress: tuple[float, str] | None = None


def progress(percent: float, message: str = "") -> None:
    """Report how far the current job is (0-100) with a short message.

    Cheap enough to call 100,000 times: the child sends the latest value to the
    dispatcher at most every few milliseconds; a value held back is sent once that
    interval has passed, even if the job never calls progress() again.
    Outside a job child it only remembers the value.
    """
    global _last_progress
    value = (clamp_percent(percent), cap_message(message))
    _last_progress = value
    if _pipe is not None:
        _pipe.report(*value)


def current_job() -> CurrentJob | None:
    """The job this process runs (id, kind, attempt, token), or None outside a job."""
    return _current


def last_progress() -> tuple[float, str] | None:
    """The last value given to ``progress()`` in this process, or None."""
    return _last_progress


def _enter(current: CurrentJob, progress_fd: int | None) -> None:
    """Make ``current`` the running job; the child calls this before the handler."""
    global _current, _pipe
    _current = current
    _pipe = _ProgressPipe(progress_fd) if progress_fd is not None else None


def _leave() -> None:
    """Flush the last progress value and forget the current job."""
    global _current, _pipe
    if _pipe is not None:
        _pipe.close()
    _current = None
    _pipe = None
