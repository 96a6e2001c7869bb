"""The one owner of the state directory's rules (DESIGN §4).

state_dir holds locks, pid entries, the status socket and the job database, so it is
private (0700). One that is a symlink, is writable by its group or by others, or
belongs to another user is refused, never chmodded through; an existing one of ours
that others may only read or enter is made 0700 again. Paths too long for AF_UNIX
or the filesystem are refused too. `state_dir_problems` says what is wrong without
touching anything (``daemonapp check``); `ensure_state_dir` creates and checks the
directory on an fd opened with O_NOFOLLOW, so a link swapped in is never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MAX_UNIX_PATH_BYTES",
    "StateDirError",
    "ensure_private_subdir",
    "ensure_state_dir",
    "path_problems",
    "state_dir_problems",
    "write_private_file",
]

#: sun_path holds 108 bytes, the terminating NUL included.
MAX_UNIX_PATH_BYTES = 107
#: NAME_MAX and PATH_MAX of Linux file systems (PATH_MAX counts the NUL).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095
#: The longest socket name in state_dir: a spawned process's ``status.<pid>.sock``
#: (Linux pids have at most 7 digits), bound first as ``NAME.new``.
_SOCKET_NAMES = {False: "status.sock.new", True: "status.4194304.sock.new"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StateDirError(OSError):
    """state_dir (or a directory inside it) is refused; ``str()`` says why and what to do."""


def _owners(owners: Iterable[int] | None) -> frozenset[int]:
    return frozenset({os.geteuid(), *(owners or ())})


def _encoded(path: str) -> bytes:
    return os.fsencode(path)


def path_problems(path: str, *, what: str = "this path") -> list[str]:
    """Why ``path`` (absolute) cannot exist on Linux: a name over 255 bytes, or a path
    over 4095 bytes."""
    problems = []
    size = len(_encoded(path))
    if size > MAX_PATH_BYTES:
        problems.append(f"{what} is {size:,} bytes long; paths have at most "
                        f"{MAX_PATH_BYTES:,}")
    for name in path.split(os.sep):
        if len(_encoded(name)) > MAX_NAME_BYTES:
            shown = name if len(name) <= 40 else name[:40] + "..."
            problems.append(f"{what} has a name of {len(_encoded(name)):,} bytes ({shown!r}); "
                            f"file systems allow at most {MAX_NAME_BYTES}")
            break
    return problems


def _socket_problems(path: str, spawned: bool) -> list[str]:
    socket_path = os.path.join(path, _SOCKET_NAMES[spawned])
    size = len(_encoded(socket_path))
    if size <= MAX_UNIX_PATH_BYTES:
        return []
    room = MAX_UNIX_PATH_BYTES - len(_SOCKET_NAMES[spawned]) - 1
    return [f"too long for its status socket: {socket_path} is {size} bytes and unix "
            f"sockets allow at most {MAX_UNIX_PATH_BYTES}; use a state_dir path of at most "
            f"{room} bytes"]


def _stat_problem(path: str, info: os.stat_result, owners: frozenset[int]) -> str | None:
    """What is wrong with an existing directory entry at ``path`` (lstat'ed), or None."""
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (f"{path} is a symlink (to {target}), which is never followed for a private "
                "directory: give the real path, or remove the link")
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} exists and is not a directory"
    if info.st_uid not in owners:
        return (f"{path} belongs to uid {info.st_uid}, not to the user running daemonapp "
                f"(uid {os.geteuid()}): chown it to that user, or use another directory")
    if mode & 0o022:
        return (f"{path} is writable by {'others' if mode & 0o002 else 'its group'} "
                f"(mode {mode:04o}): it would hold locks and sockets others could replace; "
                f"make it private (chmod 0700 {path}) or use a directory of its own")
    return None


def state_dir_problems(path: str, *, owners: Iterable[int] | None = None,
                       spawned: bool = False) -> list[str]:
    """Why ``path`` (absolute) cannot be the state_dir, without touching anything.

    ``owners``: uids that may own it besides the effective one (twistd's --uid);
    ``spawned``: a web server may start the app (its status socket has a pid in it).
    A state_dir that does not exist yet is fine when it can be created.
    """
    problems = path_problems(path, what="state_dir") + _socket_problems(path, spawned)
    if problems:
        return problems
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _creation_problems(path)
    except OSError as e:
        return [f"{path}: {e.strerror}"]
    problem = _stat_problem(path, info, _owners(owners))
    return [problem] if problem else []


def _creation_problems(path: str) -> list[str]:
    """Why ``path`` (missing) could not be created: its nearest existing ancestor."""
    ancestor = os.path.dirname(path)
    while ancestor and not os.path.lexists(ancestor):
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if not os.path.isdir(ancestor):
        return [f"{path} cannot be created: {ancestor} is not a directory"]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [f"{path} cannot be created: no permission to write in {ancestor}"]
    return []


def ensure_state_dir(path: str, *, owners: Iterable[int] | None = None) -> str:
    """Create the private state directory (0700) when missing and check it; return it.

    Raises StateDirError for a symlink, a directory writable by others or belonging to
    another user (never chmodded through), a path too long, or one that cannot be
    created. An existing one of ours that others may read or enter is made 0700 again
    (with a warning).
    """
    problems = path_problems(path, what="state_dir") + _socket_problems(path, False)
    if problems:
        raise StateDirError(problems[0])
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError as e:
        raise StateDirError(f"{path} cannot be created: {e.strerror or e}") from None
    _ensure_private(path, _owners(owners), warn=True)
    return path


def ensure_private_subdir(state_dir: str, name: str) -> str:
    """``state_dir/name`` (pids/, locks/), created 0700 and checked like state_dir."""
    path = os.path.join(state_dir, name)
    _ensure_private(path, _owners(None), warn=False)
    return path


def _ensure_private(path: str, owners: frozenset[int], *, warn: bool) -> None:
    created = True
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        created = False
    except OSError as e:
        raise StateDirError(f"{path} cannot be created: {e.strerror or e}") from None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                problem = _stat_problem(path, os.lstat(path), owners)
            except OSError:
                problem = None
            raise StateDirError(problem or f"{path}: {e.strerror}") from None
        raise StateDirError(f"{path} cannot be opened: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        problem = None if created else _stat_problem(path, info, owners)
        if problem is not None:
            raise StateDirError(problem)
        mode = stat.S_IMODE(info.st_mode)
        if mode != 0o700:
            # the umask may have taken bits away from a new one; an old one of ours may
            # have let others in: fchmod on the fd we checked, never through a path
            os.fchmod(fd, 0o700)
            if warn and not created and mode & 0o077:
                from twisted.logger import Logger

                Logger(namespace="daemonapp.state_dir").warn(
                    "state_dir {path} was open to others ({mode:04o}); made it 0700",
                    path=path, mode=mode)
    except StateDirError:
        raise
    except OSError as e:
        raise StateDirError(f"{path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def write_private_file(path: str, text: str, *, fsync: bool = False) -> None:
    """Replace ``path`` with ``text`` atomically: a temporary file beside it (mode 0600,
    never through a symlink), renamed over it, so a reader sees the old file or the new
    one, never a part. ``fsync``: on disk before the rename (for what must survive a
    crash of the machine). Raises OSError, having removed the temporary file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
