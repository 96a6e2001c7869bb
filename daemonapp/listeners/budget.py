"""What a hostile or broken peer can make the listeners hold: body memory and descriptors.

:class:`BodyBudget` (one per listener) bounds the request bodies kept in memory for
requests nobody reads yet, per connection and per listener; a body that would go over
it is spooled to a private temporary file instead. :class:`FdLimits` (one per process)
keeps the listeners' connections and spool files below the process's fd limit, with a
reserve for the application's own files.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import Logger

log = Logger()

#: Request body bytes one connection may have buffered in memory for requests that no
#: application reads yet (queued, or waiting for the whole body).
DEFAULT_MAX_BUFFER_BYTES = 1024 * 1024
#: The same for all the connections of one listener together.
DEFAULT_MAX_LISTENER_BUFFER_BYTES = 32 * 1024 * 1024
#: File descriptors kept free for the application's own files: this fraction of the fd
#: limit, and at least MIN_FD_RESERVE.
FD_RESERVE_FRACTION = 4
MIN_FD_RESERVE = 32
#: Spool files a listener keeps open, once their body is done with, for the next bodies
#: to overwrite: a new file costs the kernel a fresh page cache page, buffer heads and a
#: block reservation per 4 KiB written, and freeing them all at the close (a 20 MB spool
#: written, read and closed: 8 ms of CPU; the same in a kept file: 4.5 ms).
KEEP_SPOOLS = 8
#: Seconds a spool file is reused for, from its creation: the kernel writes dirty pages
#: back after vm.dirty_expire_centisecs (30 s by default); a file closed before then
#: never reaches the disk.
SPOOL_REUSE_FOR = 10.0
#: A body whose declared length does not fit the memory budget goes to its spool file
#: once this much of it is in (not held in memory up to the budget first): a peer that
#: declares a huge length takes a spool file (an fd of the reserve) only after sending
#: this much, not with its first byte.
DECLARED_SPILL_AFTER = 64 * 1024
#: Bytes asked of the socket per read while a body at least this long arrives, instead
#: of Twisted's 64 KiB: a 20 MB upload takes ~80 turns of the reactor instead of ~320
#: (reactor CPU per 20 MB SCGI upload 19 -> 12 ms).
BODY_READ_SIZE = 256 * 1024


def read_in_large_pieces(transport: Any, large: bool) -> None:
    """Read ``transport`` BODY_READ_SIZE bytes at a time while a large body arrives
    (``large``), else as much as Twisted reads by default."""
    if large:
        transport.bufferSize = BODY_READ_SIZE
    elif "bufferSize" in getattr(transport, "__dict__", ()):
        del transport.bufferSize  # the class's own size again


class ConnectionBuffer:
    """The body bytes one connection holds in memory (counted by its exchanges)."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0


class FdLimits:
    """The process's fd limit, shared by every listener of the process.

    Connections of all listeners together stay below ``limit - reserve``, and spool
    files take at most half the reserve, so the application's own ``open()`` keeps
    working however many peers connect.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.connections = 0
        self.spools = 0  # spool files holding a body
        self.idle_spools = 0  # spool files kept for reuse (see BodyBudget.keep_spool)
        self._fixed = limit
        self.limit = 0
        self.reserve = 0
        self.refresh()

    def refresh(self) -> None:
        """Read RLIMIT_NOFILE again (the limit may be lowered after import)."""
        limit = self._fixed
        if limit is None:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        self.limit = limit
        self.reserve = max(MIN_FD_RESERVE, limit // FD_RESERVE_FRACTION)

    @property
    def max_connections(self) -> int:
        """Listener connections the process may have open at once (at least 1)."""
        return max(1, self.limit - self.reserve)

    @property
    def max_spools(self) -> int:
        """Spool files the process may have open at once (in use or kept for reuse)."""
        return self.reserve // 2

    @property
    def spool_available(self) -> bool:
        """Whether a new spool file may be opened (see max_spools)."""
        return self.spools + self.idle_spools < self.max_spools


#: The limits of this process; listeners share it (tests pass their own).
PROCESS_FDS = FdLimits()


class BodyBudget:
    """The memory one listener may use for buffered request bodies, and its spool files.

    A spool file whose body is done with is kept (at most KEEP_SPOOLS, each for
    SPOOL_REUSE_FOR seconds from its creation) for the next bodies to overwrite. Kept
    files count against FdLimits.max_spools and hold at most the largest body they held,
    in the page cache; ``clock`` (the reactor) closes them once they are too old to be
    reused, else the next spool or :meth:`close` does.
    """

    def __init__(self, *, per_connection: int = DEFAULT_MAX_BUFFER_BYTES,
                 per_listener: int = DEFAULT_MAX_LISTENER_BUFFER_BYTES,
                 fds: FdLimits | None = None, clock: Any = None) -> None:
        self.per_connection = per_connection
        self.per_listener = per_listener
        self.fds = fds if fds is not None else PROCESS_FDS
        self.used = 0
        self.spooled = 0  # bodies spooled to disk so far
        self.spool_failed = 0  # bodies refused (503) because spooling was impossible
        self._dir: str | None = None
        self._clock = clock
        self._idle: list[tuple[IO[bytes], float]] = []  # kept files and their births
        self._trim_call: Any = None
        self._closed = False

    def fits(self, conn: ConnectionBuffer | None, size: int) -> bool:
        """Whether ``size`` more bytes fit in memory for a connection and the listener."""
        if self.used + size > self.per_listener:
            return False
        return conn is None or conn.used + size <= self.per_connection

    def take(self, conn: ConnectionBuffer | None, size: int) -> None:
        self.used += size
        if conn is not None:
            conn.used += size

    def give_back(self, conn: ConnectionBuffer | None, size: int) -> None:
        self.used -= size
        if conn is not None:
            conn.used -= size

    def can_spool(self) -> bool:
        """Whether a body could go to a spool file now (a kept one, or a new one)."""
        return bool(self._idle) or self.fds.spool_available

    def open_spool(self) -> tuple[IO[bytes], float]:
        """A spool file, rewound, and when it was created: a kept one, else a new one
        (mode 0600, in a private 0700 directory, without a name).

        Raises OSError when the process has no descriptor to spare for it (see
        FdLimits.max_spools) or the file cannot be made (the disk is full...).
        """
        fds = self.fds
        self.spooled += 1
        if self._idle:
            spool, born = self._idle.pop()
            fds.idle_spools -= 1
            fds.spools += 1
            spool.seek(0)
            return spool, born
        if not fds.spool_available:
            self.spooled -= 1
            raise OSError(f"{fds.spools + fds.idle_spools} spool files open already "
                          "(half the fd reserve)")
        if self._dir is None or not os.path.isdir(self._dir):
            self._dir = tempfile.mkdtemp(prefix="daemonapp-spool-")  # mode 0700
        # O_TMPFILE where the kernel has it, else mkstemp (0600) and an unlink at once
        try:
            spool = tempfile.TemporaryFile(  # noqa: SIM115 - closed by Spool or budget
                dir=self._dir, buffering=0)
        except OSError:
            self.spooled -= 1
            raise
        fds.spools += 1
        return spool, self._now()

    def spool_closed(self) -> None:
        """A spool file no longer holds a body (closed, kept, or handed to an app)."""
        self.fds.spools -= 1

    def keep_spool(self, spool: IO[bytes], born: float) -> None:
        """Keep a spool file whose body is done with for the next body, or close it
        (too old, enough kept, no descriptor to spare, the listener stopped)."""
        fds = self.fds
        if (self._closed or len(self._idle) >= KEEP_SPOOLS or not fds.spool_available
                or self._now() - born >= SPOOL_REUSE_FOR):
            _close_quietly(spool)
            return
        self._idle.append((spool, born))
        fds.idle_spools += 1
        if self._clock is None:
            return
        trim = self._trim_call
        if trim is not None:
            if trim.getTime() <= born + SPOOL_REUSE_FOR:
                return
            trim.cancel()  # this file is older than those kept: its time comes first
        self._trim_call = self._clock.callLater(
            born + SPOOL_REUSE_FOR - self._now(), self._trim)

    def _trim(self) -> None:
        """Close the kept files too old to be reused; come back for the others."""
        self._trim_call = None
        now = self._now()
        kept = []
        for spool, born in self._idle:
            if now - born >= SPOOL_REUSE_FOR:
                self.fds.idle_spools -= 1
                _close_quietly(spool)
            else:
                kept.append((spool, born))
        self._idle = kept
        if kept and self._clock is not None:
            self._trim_call = self._clock.callLater(
                min(born for _, born in kept) + SPOOL_REUSE_FOR - now, self._trim)

    def _now(self) -> float:
        clock = self._clock
        return clock.seconds() if clock is not None else time.monotonic()

    def close(self) -> None:
        """Close the kept spool files, remove the private spool directory (the listener
        stopped)."""
        self._closed = True
        trim, self._trim_call = self._trim_call, None
        if trim is not None and trim.active():
            trim.cancel()
        idle, self._idle = self._idle, []
        self.fds.idle_spools -= len(idle)
        for spool, _born in idle:
            _close_quietly(spool)
        spool_dir, self._dir = self._dir, None
        if spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)

    def open(self) -> None:
        """Keep spool files again (the listener started again after :meth:`close`)."""
        self._closed = False


def _close_quietly(spool: IO[bytes]) -> None:
    try:
        spool.close()
    except OSError:
        pass


#: Pieces written by one writev() (Linux's IOV_MAX is 1024).
_IOV_MAX = 512


def _write_rest(fd: int, rest: memoryview) -> None:
    """Write what a short write left (a signal, a nearly full disk)."""
    while rest:
        rest = rest[os.write(fd, rest):]


class Spool:
    """A request body on disk: written on the reactor, then read by the application.

    The file is unbuffered (a kept file is overwritten from its start: no buffer may
    hold a previous body's bytes); readers get their own buffer (:class:`SpoolReader`).
    """

    def __init__(self, budget: BodyBudget) -> None:
        """A spool file, new or kept (raises OSError: see BodyBudget.open_spool)."""
        self._budget = budget
        self.file: IO[bytes] | None
        self.file, self._born = budget.open_spool()
        self._handed = False
        self._broken = False

    def write(self, data: bytes) -> None:
        """Append body bytes (raises OSError: the disk is full...)."""
        spool = self.file
        assert spool is not None
        try:
            fd = spool.fileno()
            done = os.write(fd, data)
            if done < len(data):
                _write_rest(fd, memoryview(data)[done:])
        except OSError:
            self._broken = True  # what the file holds is unknown: not kept
            raise

    def writev(self, pieces: list[Any]) -> None:
        """Append pieces of body (bytes or memoryviews) in one system call (FastCGI
        records); raises OSError (the disk is full...)."""
        spool = self.file
        assert spool is not None
        try:
            fd = spool.fileno()
            for first in range(0, len(pieces), _IOV_MAX):
                batch = pieces[first:first + _IOV_MAX]
                done = os.writev(fd, batch)
                if done < sum(map(len, batch)):
                    _write_rest(fd, memoryview(b"".join(batch))[done:])
        except OSError:
            self._broken = True  # what the file holds is unknown: not kept
            raise

    def _rewind(self) -> IO[bytes]:
        """The file cut off at the end of this body (a kept file may hold a longer one
        after it), at its start."""
        spool = self.file
        assert spool is not None
        spool.truncate()  # at the position: the end of this body
        spool.seek(0)
        return spool

    def reader(self, call_on_reactor: Callable[..., Any]) -> SpoolReader:
        """The body for the application to read, in its thread.

        From then on the application's stream owns the file: an app thread may still
        read it after the request ended (a 504), so :meth:`close` leaves it to the
        stream, whose close() gives it back for reuse through ``call_on_reactor``
        (``reactor.callFromThread``).
        """
        spool = self._rewind()
        self._handed = True
        return SpoolReader(spool, self._budget, self._born, call_on_reactor)

    def read_all(self) -> bytes:
        """The whole body, read on the reactor (the file stays the spool's)."""
        return self._rewind().read() or b""

    def close(self) -> None:
        """The request ended: keep the file for the next body, or close it and so delete
        it (unless an app reads it)."""
        spool, self.file = self.file, None
        if spool is None:
            return
        budget = self._budget
        budget.spool_closed()
        if self._handed:
            return
        if self._broken:
            _close_quietly(spool)
            return
        budget.keep_spool(spool, self._born)


class SpoolReader:
    """``wsgi.input`` for a spooled body: the spool file behind a buffer of its own.

    close() (the WSGI call does it once the app is done) gives the file back for the
    next body; this object then reads nothing more, so an app that kept a reference
    past its request never sees another request's body. A read in flight in another
    thread (an app that reads its body in a thread of its own) finishes before the file
    is given back: detaching the buffer under it would crash the interpreter.
    """

    __slots__ = ("_born", "_budget", "_call", "_file", "_lock")

    def __init__(self, spool: IO[bytes], budget: BodyBudget, born: float,
                 call_on_reactor: Callable[..., Any]) -> None:
        raw: Any = spool
        self._file: io.BufferedReader = io.BufferedReader(raw)
        self._budget = budget
        self._born = born
        self._call = call_on_reactor
        self._lock = threading.Lock()

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes (all remaining when negative or None)."""
        with self._lock:
            return self._file.read(size)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line (at most ``size`` bytes)."""
        with self._lock:
            return self._file.readline(size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Read lines until EOF (or about ``hint`` bytes)."""
        with self._lock:
            return self._file.readlines(hint)

    def __iter__(self) -> SpoolReader:
        return self

    def __next__(self) -> bytes:
        with self._lock:
            line = self._file.readline()
        if not line:
            raise StopIteration
        return line

    @property
    def closed(self) -> bool:
        return self._file is _CLOSED

    def close(self) -> None:
        """The app is done with the body: its file goes back to the listener (on the
        reactor) for the next one."""
        with self._lock:  # after a read in flight in another thread
            reader, self._file = self._file, _CLOSED
            if reader is _CLOSED:
                return
            spool: Any = reader.detach()  # the file without closing it
        try:
            self._call(self._budget.keep_spool, spool, self._born)
        except Exception:  # the reactor stopped: nobody reuses it
            _close_quietly(spool)


#: What a closed SpoolReader reads from: reads raise ValueError, as a closed file's do.
_CLOSED: io.BufferedReader = io.BufferedReader(io.BytesIO())  # type: ignore[arg-type]
_CLOSED.close()


class BodyBuffer:
    """A request body as it arrives, on the reactor: in memory within the budget, past it
    in a :class:`Spool`.

    The HTTP listener gives one to twisted.web as a request's ``content`` (instead of
    twisted.web's own temporary file for every body of 100 KB and more, opened at the
    headers and written on the reactor), so HTTP bodies follow the FastCGI and SCGI rule.
    """

    def __init__(self, budget: BodyBudget, conn: ConnectionBuffer | None,
                 expected: int | None = None) -> None:
        self._budget = budget
        self._conn = conn
        #: the body so far while it is in memory
        self.chunks: list[bytes] = []
        #: the body on disk once it went over the budget
        self.spool: Spool | None = None
        self.size = 0
        self._counted = 0  # bytes of ``chunks`` taken from the budget
        #: the length the peer declared (Content-Length), if any
        self.expected = expected

    def write(self, data: bytes) -> None:
        """Append body bytes; raises OSError when the body must go to disk and cannot."""
        size = len(data)
        self.size += size
        spool = self.spool
        if spool is not None:
            spool.write(data)
            return
        budget = self._budget
        expected = self.expected
        if expected is not None and self.size >= DECLARED_SPILL_AFTER \
                and not budget.fits(self._conn, expected - self._counted):
            # a body declared too long for the budget: to disk once DECLARED_SPILL_AFTER
            # of it is in (not kept in memory up to the budget, then written there all
            # the same)
            self._to_disk([*self.chunks, data])
        elif budget.fits(self._conn, size):
            budget.take(self._conn, size)
            self._counted += size
            self.chunks.append(data)
        else:
            self._to_disk([*self.chunks, data])

    def _to_disk(self, pieces: list[bytes]) -> None:
        """Move the body to a new spool file, starting with ``pieces``."""
        spool = Spool(self._budget)
        try:
            spool.writev(pieces)
        except OSError:
            spool.close()
            raise
        self.spool = spool
        self.chunks = []
        self.release()

    def write_pieces(self, pieces: list[memoryview]) -> None:
        """Append several pieces at once (the FastCGI records of one read): one write
        when the body is on disk; raises OSError as :meth:`write` does."""
        spool = self.spool
        if spool is None:
            for piece in pieces:
                self.write(bytes(piece))  # kept: copies, not views of the whole read
            return
        self.size += sum(len(piece) for piece in pieces)
        spool.writev(pieces)

    def tell(self) -> int:
        """The body's size so far (twisted.web asks at the body's end)."""
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        """twisted.web rewinds the body at its end: nothing to do (it is read once,
        through :attr:`chunks` or :attr:`spool`)."""
        return 0

    def release(self) -> None:
        """Give the memory counted for ``chunks`` back to the budget."""
        if self._counted:
            self._budget.give_back(self._conn, self._counted)
            self._counted = 0

    def close(self) -> None:
        """The body is of no more use: give its memory back, delete its spool (unless
        handed to an app: see Spool.close)."""
        self.release()
        self.chunks = []
        spool, self.spool = self.spool, None
        if spool is not None:
            spool.close()
