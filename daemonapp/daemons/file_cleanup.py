"""FileCleanup: remove old files from a directory, never following a symbolic link.

The scan walks the tree through directory file descriptors opened with
O_NOFOLLOW (``os.fwalk``), so a symlink planted in the tree can never lead the
daemon outside it; symlinks themselves are neither followed nor removed.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Generator
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from daemonapp.daemon import Daemon, OptionError
from daemonapp.durations import parse_duration

__all__ = ["FileCleanup"]

log = Logger()

#: How many removed paths one log event lists; the rest are counted.
LOGGED_PATHS = 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def _path_option(key: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise OptionError(key, f"expected a directory path, got {value!r}")
    return value


class FileCleanup(Daemon):
    """Remove regular files matching ``pattern`` whose mtime is older than remove_older_than.

    ``pattern`` is an fnmatch pattern matched (case-sensitively) against each
    file's name, not its path; ``recursive`` descends into real subdirectories.
    Directories, symlinks and special files are never removed, symlinked
    directories never entered. One item is a batch of up to ``batch_size``
    files, so ``max_items``/``max_seconds`` bound a run; a yielded run resumes
    the scan where it stopped.
    """

    def __init__(self, *, directory: str | os.PathLike[str], remove_older_than: float | str,
                 pattern: str = "*", recursive: bool = False, batch_size: int = 100,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.directory = _path_option("directory", directory)
        if not isinstance(pattern, str) or not pattern:
            raise OptionError("pattern", f'expected a file name pattern like "*.tmp", '
                                         f"got {pattern!r}")
        if "/" in pattern:
            raise OptionError("pattern", f"matches file names, not paths: remove the '/' "
                                         f"from {pattern!r} (use recursive: true to descend)")
        self.pattern = pattern
        try:
            self.remove_older_than = parse_duration(remove_older_than, positive=True)
        except ValueError as e:
            raise OptionError("remove_older_than", str(e)) from None
        if not isinstance(recursive, bool):
            raise OptionError("recursive", f"expected true or false, got {recursive!r}")
        self.recursive = recursive
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise OptionError("batch_size",
                              f"expected a whole number of at least 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.stats.update(removed=0, removed_bytes=0, remove_errors=0)
        self._scan: Generator[str, None, None] | None = None
        self._scan_over = False
        self._missing = False

    # ------------------------------------------------------------------ hooks

    def get_work(self) -> list[str] | None:
        """The next batch of expired files (paths relative to the directory), or None."""
        if self._scan_over:
            # The last batch of a scan was handed out: this run is over, and the
            # next one starts a new scan (never rescan within a run, or a file
            # that cannot be removed would be found again and again).
            self._scan_over = False
            return None
        if self._scan is None:
            self._scan = self._walk()
        batch: list[str] = []
        for path in self._scan:
            batch.append(path)
            if len(batch) >= self.batch_size:
                return batch
        self._scan = None
        self._scan_over = bool(batch)
        return batch or None

    def do_work(self, batch: list[str]) -> None:
        """Remove the files of ``batch`` that are still regular files and still expired."""
        by_dir: dict[str, list[str]] = {}
        for path in batch:
            parent, _, file_name = path.rpartition("/")
            by_dir.setdefault(parent, []).append(file_name)
        removed: list[str] = []
        for parent, names in by_dir.items():
            try:
                fd = self._open_dir(parent)
            except FileNotFoundError:
                continue  # removed by someone else meanwhile
            except OSError as e:
                self._error(parent or ".", e)
                continue
            try:
                for file_name in names:
                    path = f"{parent}/{file_name}" if parent else file_name
                    if self._remove(fd, file_name, path):
                        removed.append(path)
            finally:
                os.close(fd)
        if removed:
            more = len(removed) - LOGGED_PATHS
            log.info("{daemon} removed {count} file(s) from {directory}: {paths}{more}",
                     daemon=self.name, count=len(removed), directory=self.directory,
                     paths=", ".join(removed[:LOGGED_PATHS]),
                     more=f" and {more} more" if more > 0 else "")

    def stop(self) -> Deferred[None]:
        """Stop, then close a scan left open by a yielded run (its directory descriptors)."""
        return super().stop().addCallback(self._close_scan)

    # -------------------------------------------------------------- internals

    def _close_scan(self, result: None) -> None:
        scan, self._scan = self._scan, None
        self._scan_over = False
        if scan is not None:
            scan.close()
        return result

    def _walk(self) -> Generator[str, None, None]:
        try:
            # The configured directory itself may be a symlink; nothing below it is followed.
            top = os.open(self.directory, _DIR_FLAGS)
        except FileNotFoundError:
            if not self._missing:
                log.warn("{daemon}: directory {directory} does not exist; nothing to clean",
                         daemon=self.name, directory=self.directory)
            self._missing = True
            return
        self._missing = False
        walker: Generator[tuple[str, list[str], list[str], int], None, None] = os.fwalk(
            ".", dir_fd=top, follow_symlinks=False, onerror=self._walk_error)  # type: ignore[assignment]
        try:
            for dirpath, dirnames, filenames, dirfd in walker:
                if not self.recursive:
                    dirnames.clear()
                parent = "" if dirpath == "." else dirpath[2:]
                cutoff = time.time() - self.remove_older_than
                for file_name in sorted(filenames):
                    if not fnmatchcase(file_name, self.pattern):
                        continue
                    try:
                        st = os.stat(file_name, dir_fd=dirfd, follow_symlinks=False)
                    except OSError:
                        continue  # gone meanwhile
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        yield f"{parent}/{file_name}" if parent else file_name
        finally:
            walker.close()  # closes the descriptors of the directories it had open
            os.close(top)

    def _walk_error(self, error: OSError) -> None:
        if not isinstance(error, FileNotFoundError):
            self._error(str(error.filename or "?"), error)

    def _open_dir(self, parent: str) -> int:
        """A descriptor of ``parent`` reached without following any symlink below the top."""
        fd = os.open(self.directory, _DIR_FLAGS)
        if not parent:
            return fd
        try:
            for part in parent.split("/"):
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _remove(self, dirfd: int, file_name: str, path: str) -> bool:
        try:
            st = os.stat(file_name, dir_fd=dirfd, follow_symlinks=False)
            # Checked again: the file may have been replaced or touched since the scan.
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= time.time() - self.remove_older_than:
                return False
            os.unlink(file_name, dir_fd=dirfd)
        except FileNotFoundError:
            return False
        except OSError as e:
            self._error(path, e)
            return False
        self.stats["removed"] += 1
        self.stats["removed_bytes"] += st.st_size
        log.debug("{daemon} removed {path} ({size} bytes, mtime {mtime})", daemon=self.name,
                  path=os.path.join(self.directory, path), size=st.st_size, mtime=st.st_mtime)
        return True

    def _error(self, path: str, error: OSError) -> None:
        self.stats["remove_errors"] += 1
        log.warn("{daemon} could not clean {path} in {directory}: {error}", daemon=self.name,
                 path=path, directory=self.directory, error=error)
