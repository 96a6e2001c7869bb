"""What a hostile or broken peer can make the listeners hold: body memory and descriptors.

:class:`BodyBudget` (one per listener) bounds the request bodies kept in memory for
requests nobody reads yet, per connection and per listener; a body that would go over
it is spooled to a private temporary file instead. :class:`FdLimits` (one per process)
keeps the listeners' connections and spool files below the process's fd limit, with a
reserve for the application's own files.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
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
        self.spools = 0
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
        """Spool files the process may have open at once."""
        return self.reserve // 2


#: The limits of this process; listeners share it (tests pass their own).
PROCESS_FDS = FdLimits()


class BodyBudget:
    """The memory one listener may use for buffered request bodies, and its spool."""

    def __init__(self, *, per_connection: int = DEFAULT_MAX_BUFFER_BYTES,
                 per_listener: int = DEFAULT_MAX_LISTENER_BUFFER_BYTES,
                 fds: FdLimits | None = None) -> None:
        self.per_connection = per_connection
        self.per_listener = per_listener
        self.fds = fds if fds is not None else PROCESS_FDS
        self.used = 0
        self.spooled = 0  # bodies spooled to disk so far
        self.spool_failed = 0  # bodies refused (503) because spooling was impossible
        self._dir: str | None = None

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

    def open_spool(self) -> IO[bytes]:
        """A new spool file: mode 0600, in a private (0700) directory, without a name.

        Raises OSError when the process has no descriptor to spare for it (see
        FdLimits.max_spools) or the file cannot be made (the disk is full...).
        """
        fds = self.fds
        if fds.spools >= fds.max_spools:
            raise OSError(f"{fds.spools} spool files open already (half the fd reserve)")
        if self._dir is None or not os.path.isdir(self._dir):
            self._dir = tempfile.mkdtemp(prefix="daemonapp-spool-")  # mode 0700
        # O_TMPFILE where the kernel has it, else mkstemp (0600) and an unlink at once
        spool = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115 - closed by Spool
        fds.spools += 1
        self.spooled += 1
        return spool

    def spool_closed(self) -> None:
        self.fds.spools -= 1

    def close(self) -> None:
        """Remove the private spool directory (the listener stopped)."""
        spool_dir, self._dir = self._dir, None
        if spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)


class Spool:
    """A request body on disk: written on the reactor, then read by the application."""

    def __init__(self, budget: BodyBudget) -> None:
        """A new spool file (raises OSError: see BodyBudget.open_spool)."""
        self._budget = budget
        self.file: IO[bytes] | None = budget.open_spool()

    def write(self, data: bytes) -> None:
        """Append body bytes (raises OSError: the disk is full...)."""
        assert self.file is not None
        self.file.write(data)

    def reader(self) -> IO[bytes]:
        """The file, flushed and rewound, for the application to read.

        From then on the application's stream owns it: an app thread may still read it
        after the request ended (a 504), so :meth:`close` leaves it to be closed with
        that stream.
        """
        spool = self.file
        assert spool is not None
        spool.flush()
        spool.seek(0)
        self._handed = True
        return spool

    _handed = False

    def read_all(self) -> bytes:
        """The whole file, read on the reactor (it stays the spool's: :meth:`close`
        closes it)."""
        spool = self.file
        assert spool is not None
        spool.flush()
        spool.seek(0)
        return spool.read()

    def close(self) -> None:
        """The request ended: close and so delete the file (unless an app reads it)."""
        spool, self.file = self.file, None
        if spool is None:
            return
        self._budget.spool_closed()
        if self._handed:
            return
        try:
            spool.close()
        except OSError:
            pass


class BodyBuffer:
    """A request body as it arrives, on the reactor: in memory within the budget, past it
    in a :class:`Spool`.

    The HTTP listener gives one to twisted.web as a request's ``content`` (instead of
    twisted.web's own temporary file for every body of 100 KB and more, opened at the
    headers and written on the reactor), so HTTP bodies follow the FastCGI and SCGI rule.
    """

    def __init__(self, budget: BodyBudget, conn: ConnectionBuffer | None) -> None:
        self._budget = budget
        self._conn = conn
        #: the body so far while it is in memory
        self.chunks: list[bytes] = []
        #: the body on disk once it went over the budget
        self.spool: Spool | None = None
        self.size = 0
        self._counted = 0  # bytes of ``chunks`` taken from the budget

    def write(self, data: bytes) -> None:
        """Append body bytes; raises OSError when the body must go to disk and cannot."""
        size = len(data)
        self.size += size
        spool = self.spool
        if spool is not None:
            spool.write(data)
            return
        budget = self._budget
        if budget.fits(self._conn, size):
            budget.take(self._conn, size)
            self._counted += size
            self.chunks.append(data)
            return
        spool = Spool(budget)
        try:
            for chunk in self.chunks:
                spool.write(chunk)
            spool.write(data)
        except OSError:
            spool.close()
            raise
        self.spool = spool
        self.chunks = []
        self.release()

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
