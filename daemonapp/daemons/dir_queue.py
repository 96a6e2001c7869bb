"""DirQueue: a maildir-style queue in a directory, one file per job, claimed by rename.

A producer writes a job into ``tmp/`` and links it into ``new/`` (:func:`enqueue`);
a worker claims the oldest file of ``new/`` by renaming it into ``cur/``, hands
it to :meth:`DirQueue.handle`, and removes it once handled. Files left in ``cur/``
by a failed or crashed run go back to ``new/`` after ``stale_after``.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import os
import socket
import stat
import time
from collections import deque
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.daemon import Daemon, OptionError
from daemonapp.durations import parse_duration

__all__ = ["DIR_MODE", "FILE_MODE", "SUBDIRECTORIES", "DirQueue", "enqueue"]

log = Logger()

SUBDIRECTORIES = ("tmp", "new", "cur")
#: Mode of the directories the queue creates (before the umask): private to the owner.
DIR_MODE = 0o700
#: Mode of the job files :func:`enqueue` writes (before the umask).
FILE_MODE = 0o600
#: How many of the oldest names one scan of ``new/`` keeps for the next claims.
SCAN_BATCH = 1000

_counter = itertools.count()
# O_NONBLOCK: a FIFO planted in the queue must not block the reactor in open().
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _unique_name() -> str:
    """A maildir-style unique name: time in ns, pid and a counter, host name."""
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.{host}"


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") \
            or "/" in name or "\0" in name:
        raise ValueError(f"a job name is a file name without '/' that does not start "
                         f"with '.', got {name!r}")
    return name


def _make_dirs(directory: str, *, create_directory: bool = True) -> bool:
    """Create tmp/, new/ and cur/ (and the directory itself when allowed)."""
    if create_directory:
        os.makedirs(directory, DIR_MODE, exist_ok=True)
    elif not os.path.isdir(directory):
        return False
    for sub in SUBDIRECTORIES:
        try:
            os.mkdir(os.path.join(directory, sub), DIR_MODE)
        except FileExistsError:
            pass
    return True


def enqueue(directory: str | os.PathLike[str], data: bytes, name: str | None = None) -> str:
    """Put one job into the queue at ``directory`` and return its path in ``new/``.

    The data is written and fsynced in ``tmp/`` under a unique name, then linked
    into ``new/`` as ``name`` (a unique maildir-style name by default), so a
    worker never sees a partial file. A ``name`` already waiting in ``new/``
    raises FileExistsError. Creates the queue's directories when missing.
    Blocking: call it from a thread when inside the reactor.
    """
    directory = os.fspath(directory)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"enqueue() needs bytes, got {type(data).__name__}")
    final = _unique_name() if name is None else _check_name(name)
    _make_dirs(directory)
    tmp = os.path.join(directory, "tmp", _unique_name())
    new = os.path.join(directory, "new", final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, new)  # unlike rename, never replaces a file of the same name
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "a job of this name is waiting", new) from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A file system without hard links: rename, after a (racy) check.
            if os.path.lexists(new):
                raise FileExistsError(errno.EEXIST, "a job of this name is waiting",
                                      new) from None
            os.rename(tmp, new)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return new


class DirQueue(Daemon):
    """Handle the files of a maildir-style queue, oldest first, one per item.

    Override :meth:`handle`. Its result may be a Deferred (or a coroutine) unless
    ``in_thread`` is set. A file is removed once handled; when handle fails it
    stays in ``cur/`` and goes back to ``new/`` once it is ``stale_after`` old,
    so a failed or crashed run loses nothing. The claimed file is flock()ed
    while handled, so a handler slower than stale_after is never handed out twice.
    """

    def __init__(self, *, directory: str | os.PathLike[str], stale_after: float | str = 3600.0,
                 create_directory: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        if isinstance(directory, os.PathLike):
            directory = os.fspath(directory)
        if not isinstance(directory, str) or not directory:
            raise OptionError("directory", f"expected a directory path, got {directory!r}")
        self.directory = directory
        try:
            self.stale_after = parse_duration(stale_after, positive=True)
        except ValueError as e:
            raise OptionError("stale_after", str(e)) from None
        if not isinstance(create_directory, bool):
            raise OptionError("create_directory",
                              f"expected true or false, got {create_directory!r}")
        self.create_directory = create_directory
        self.stats.update(handled=0, recovered=0)
        self._candidates: deque[str] = deque()
        self._claimed: dict[str, int] = {}  # path in cur/ -> descriptor holding its flock
        self._recover_at: float | None = None  # None: at the next get_work
        self._checked_run = -1
        self._missing = False

    @classmethod
    def enqueue(cls, directory: str | os.PathLike[str], data: bytes,
                name: str | None = None) -> str:
        """Put a job into the queue at ``directory``; see :func:`enqueue`."""
        return enqueue(directory, data, name)

    # ------------------------------------------------------------------ hooks

    def handle(self, path: str) -> Any:
        """Process the job file at ``path`` (in ``cur/``); override this.

        The default logs the file and lets it be removed.
        """
        log.info("{daemon} got {path} ({size} bytes); override DirQueue.handle to use it",
                 daemon=self.name, path=path, size=os.path.getsize(path))
        return None

    def get_work(self) -> str | None:
        """Claim the oldest file of ``new/`` into ``cur/``; None when ``new/`` is empty."""
        if self._checked_run != self.stats["runs"]:
            self._checked_run = self.stats["runs"]  # once per run
            if not _make_dirs(self.directory, create_directory=self.create_directory):
                if not self._missing:
                    log.warn("{daemon}: queue directory {directory} does not exist",
                             daemon=self.name, directory=self.directory)
                self._missing = True
                self._candidates.clear()
                return None
            self._missing = False
        now = self.reactor.seconds()
        if self._recover_at is None or now >= self._recover_at:
            self._recover_at = now + self.stale_after
            self._recover()
        for rescan in (False, True):
            if rescan:
                self._scan()
            while self._candidates:
                path = self._claim(self._candidates.popleft())
                if path is not None:
                    return path
        return None

    def do_work(self, path: str) -> Any:
        """Hand ``path`` to :meth:`handle`; remove the file once handled."""
        try:
            result = self.handle(path)
        except BaseException:
            self._release(path)
            raise
        if isinstance(result, Deferred) or iscoroutine(result):
            d: Deferred[Any] = Deferred.fromCoroutine(result) if iscoroutine(result) else result
            return d.addCallbacks(self._handled, self._handle_failed, callbackArgs=(path,),
                                  errbackArgs=(path,))
        self._handled(None, path)
        return None

    def start(self) -> None:
        """Start; files left stale in ``cur/`` are recovered by the first run."""
        self._recover_at = None
        super().start()

    def stop(self) -> Deferred[None]:
        """Stop; release any claim still held (its file stays in ``cur/``)."""
        return super().stop().addCallback(self._release_all)

    # -------------------------------------------------------------- internals

    def _scan(self) -> None:
        """Keep the names of the oldest files of ``new/`` for the next claims."""
        new = os.path.join(self.directory, "new")
        found: list[tuple[int, str]] = []
        try:
            with os.scandir(new) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found.append((st.st_mtime_ns, entry.name))
        except FileNotFoundError:
            return
        self._candidates = deque(name for _, name in heapq.nsmallest(SCAN_BATCH, found))

    def _claim(self, name: str) -> str | None:
        """Rename new/name into cur/, holding a flock on it; None if another worker won."""
        src = os.path.join(self.directory, "new", name)
        dst = os.path.join(self.directory, "cur", name)
        try:
            fd = os.open(src, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return None  # a symlink: never a job
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None  # replaced since the scan: never a job
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(src, dst)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)  # another worker holds it or took it
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.utime(fd)  # stale_after counts from the claim
        except OSError:
            pass  # not ours to touch: stale_after then counts from the producer's mtime
        self._claimed[dst] = fd
        return dst

    def _handled(self, result: object, path: str) -> object:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # the handler moved or removed it itself
        finally:
            self._release(path)
        self.stats["handled"] += 1
        log.debug("{daemon} handled {path}", daemon=self.name, path=path)
        return result

    def _handle_failed(self, failure: Failure, path: str) -> Failure:
        self._release(path)
        return failure

    def _release(self, path: str) -> None:
        fd = self._claimed.pop(path, None)
        if fd is not None:
            os.close(fd)

    def _release_all(self, result: None) -> None:
        for path in list(self._claimed):
            self._release(path)
        return result

    def _recover(self) -> None:
        """Move files older than stale_after from ``cur/`` back to ``new/``."""
        cur = os.path.join(self.directory, "cur")
        cutoff = time.time() - self.stale_after
        moved = []
        try:
            with os.scandir(cur) as entries:
                names = [entry.name for entry in entries if not entry.name.startswith(".")]
        except FileNotFoundError:
            return
        for name in sorted(names):
            path = os.path.join(cur, name)
            if path in self._claimed:
                continue
            try:
                fd = os.open(path, _OPEN_FLAGS)
            except OSError:
                continue  # gone, or a symlink
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live worker is handling it
                target = os.path.join(self.directory, "new", name)
                if os.path.lexists(target):
                    target = os.path.join(self.directory, "new", f"{name}.{_unique_name()}")
                try:
                    os.rename(path, target)
                except FileNotFoundError:
                    continue
                moved.append(name)
            finally:
                os.close(fd)
        if moved:
            self.stats["recovered"] += len(moved)
            log.info("{daemon} moved {count} stale file(s) from cur/ back to new/ in "
                     "{directory}: {names}", daemon=self.name, count=len(moved),
                     directory=self.directory, names=", ".join(moved[:20]))
