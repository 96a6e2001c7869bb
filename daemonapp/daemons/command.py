"""Command: run a program every run_every, with a timeout, its output going to the log.

One run is one execution. The program gets a clean environment (PATH and LANG of
the app, plus ``env``) and no standard input; a non-zero exit or a signal makes the
run fail. At ``timeout`` (the run timeout of DESIGN §10) its process group gets
SIGTERM, then SIGKILL after ``kill_grace``, and the run is timed-out.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.daemon import Daemon, OptionError
from daemonapp.durations import parse_duration

__all__ = ["Command", "CommandFailed", "die_with_parent"]

log = Logger()

#: Longest output line logged; longer lines are cut (and the cut is marked).
MAX_LINE = 4096
#: The variables of the app's environment a command inherits.
INHERITED_ENV = ("PATH", "LANG")


#: Run by ``sys.executable -I -S -c`` before the program: PR_SET_PDEATHSIG(SIGKILL), so
#: the program dies with the app even when the app is SIGKILLed (spawnProcess has no
#: pre-exec hook), then a getppid() check (the app may be gone already), then a process
#: group of its own (a timeout kills the program's children too), then exec.
_DIE_WITH_PARENT = """\
import ctypes, os, sys
try:
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
try:
    os.setpgid(0, 0)
except OSError:
    pass
os.execv(sys.argv[2], sys.argv[3:])
"""


def die_with_parent(executable: str, argv: Sequence[str]) -> tuple[str, list[str]]:
    """The executable and arguments that run ``argv`` tied to this process's life.

    On Linux the program is started through a tiny stdlib-only trampoline that sets
    PR_SET_PDEATHSIG, makes the program the leader of a process group of its own and
    then execs it: same pid, argv, environment and exit status. Elsewhere the program
    is run as is.
    """
    if not sys.platform.startswith("linux"):
        return executable, list(argv)
    return sys.executable, [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT,
                            str(os.getpid()), executable, *argv]


class CommandFailed(Exception):
    """The program exited non-zero, was killed by a signal, or ran out of time."""


#: Linux's limit on one argument (MAX_ARG_STRLEN): a longer command line cannot run, and
#: shlex takes quadratic time to split one (600 KB: 7 s).
MAX_ARGV_TEXT = 128 * 1024


def _argv_option(value: object) -> tuple[str, ...]:
    if isinstance(value, str) and len(value) > MAX_ARGV_TEXT:
        raise OptionError("argv", f"a command line of {len(value):,} characters; at most "
                                  f"{MAX_ARGV_TEXT:,} (the kernel's limit for one argument)")
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise OptionError("argv", f"cannot split {value!r} like a shell would: {e}") from None
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        argv = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise OptionError("argv", f"expected a list of strings, got {item!r} in it")
            argv.append(str(item))
    else:
        raise OptionError("argv", f'expected a command line like "backup --all" or a list '
                                  f"of arguments, got {value!r}")
    if not argv or not argv[0]:
        raise OptionError("argv", f"expected a program to run, got {value!r}")
    return tuple(argv)


def _env_option(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise OptionError("env", f"expected a mapping of variable names to values, got {value!r}")
    env = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise OptionError("env", f"expected variable names without '=', got {key!r}")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise OptionError("env", f"expected a string value for {key}, got {item!r}")
        env[key] = str(item)
    return env


def _optional_positive(key: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, positive=True)
    except ValueError as e:
        raise OptionError(key, str(e)) from None


class Command(Daemon):
    """Run ``argv`` once per run; fail the run on a non-zero exit or a timeout.

    ``argv`` is a list of arguments or a string split like a shell would
    (``shlex.split``; no shell runs it). stdout lines are logged at info level,
    stderr lines at warn, at most ``max_output_lines`` per run and MAX_LINE
    bytes per line (the rest of a longer line is dropped). Stopping the daemon
    terminates a program still running.
    """

    #: Options the config loader resolves relative to the file's directory.
    PATH_OPTIONS: ClassVar[tuple[str, ...]] = ("cwd",)

    def __init__(self, *, argv: Sequence[str] | str, timeout: float | str | None = 3600.0,
                 kill_grace: float | str | None = None, kill_after: float | str | None = None,
                 cwd: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None, max_output_lines: int = 1000,
                 **kw: Any) -> None:
        super().__init__(**kw)
        if self.in_thread:
            raise OptionError("in_thread", "a command runs its program without blocking the "
                                           "reactor: remove in_thread")
        self.argv = _argv_option(argv)
        self.timeout = _optional_positive("timeout", timeout)
        if kill_grace is not None and kill_after is not None:
            raise OptionError("kill_after", "kill_after is the old name of kill_grace: "
                                            "set only kill_grace")
        key = "kill_after" if kill_after is not None else "kill_grace"
        kill = _optional_positive(key, 10.0 if kill_grace is None and kill_after is None
                                  else kill_after if kill_after is not None else kill_grace)
        assert kill is not None
        #: Seconds between the SIGTERM and the SIGKILL (``kill_after`` is its old name).
        self.kill_grace = kill
        if isinstance(cwd, os.PathLike):
            cwd = os.fspath(cwd)
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise OptionError("cwd", f"expected a directory path, got {cwd!r}")
        self.cwd = cwd
        self.env = _env_option(env)
        if isinstance(max_output_lines, bool) or not isinstance(max_output_lines, int) \
                or max_output_lines < 0:
            raise OptionError("max_output_lines",
                              f"expected a whole number of 0 or more, got {max_output_lines!r}")
        self.max_output_lines = max_output_lines
        self.stats.update(exit_code=None, timeouts=0)
        self._served_run = -1
        self._process: _CommandProcess | None = None

    def environment(self) -> dict[str, str]:
        """The program's environment: PATH and LANG of the app, then ``env``."""
        env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(self.env)
        return env

    # ------------------------------------------------------------------ hooks

    def get_work(self) -> tuple[str, ...] | None:
        """The command once per run, then None."""
        if self._served_run == self.stats["runs"]:
            return None
        self._served_run = self.stats["runs"]
        return self.argv

    def do_work(self, argv: tuple[str, ...]) -> Deferred[None]:
        """Spawn the program; the Deferred fails unless it exits with status 0."""
        if self.cwd is not None and not os.path.isdir(self.cwd):
            raise CommandFailed(f"cwd {self.cwd}: no such directory")
        env = self.environment()
        executable = self._find(argv[0], env["PATH"])
        process = _CommandProcess(self, argv)
        self._process = process
        log.debug("{daemon} runs {argv}", daemon=self.name, argv=shlex.join(argv))
        try:
            self.reactor.spawnProcess(process, *die_with_parent(executable, argv),
                                      env=env, path=self.cwd)
        except BaseException:
            self._process = None
            raise
        process.started(group=sys.platform.startswith("linux"))
        return process.done.addBoth(self._ended)

    @property
    def kill_after(self) -> float:
        """The old name of ``kill_grace``."""
        return self.kill_grace

    def cancel_work(self, pending: Deferred[Any]) -> None:
        """The run passed ``timeout``: SIGTERM to the program's process group, SIGKILL
        kill_grace later; the run ends (timed-out) once the program has."""
        process = self._process
        if process is None:
            super().cancel_work(pending)
            return
        process.time_out()

    def stop(self) -> Deferred[None]:
        """Stop; a program still running is terminated (SIGTERM, then SIGKILL)."""
        process = self._process
        if process is not None:
            process.terminate("the daemon is stopping")
        return super().stop()

    # -------------------------------------------------------------- internals

    def _ended(self, result: object) -> object:
        self._process = None
        return result

    def _find(self, program: str, path: str) -> str:
        if "/" in program:
            full = os.path.normpath(os.path.join(self.cwd or os.getcwd(), program))
            if os.path.isfile(full) and os.access(full, os.X_OK):
                return full
            raise CommandFailed(f"{program}: no such executable file")
        found = shutil.which(program, path=path)
        if found is None:
            raise CommandFailed(f"{program}: not found in PATH {path}")
        return found


class _CommandProcess(ProcessProtocol):
    """One execution: logs its output and fires ``done`` when it is over."""

    def __init__(self, daemon: Command, argv: tuple[str, ...]) -> None:
        self.daemon = daemon
        self.argv = argv
        self.clock = daemon.reactor
        self.done: Deferred[None] = Deferred()
        self._buffers = {1: bytearray(), 2: bytearray()}
        self._cutting: set[int] = set()
        self._lines = 0
        self._dropped = 0
        self._started_at = 0.0
        self._group_id: int | None = None  # the program's process group (its pid)
        self._exit: Failure | None = None
        self._timed_out = False
        self._stopped_by: str | None = None
        self._finished = False
        self._timers: dict[str, Any] = {}

    # ------------------------------------------------------------- lifecycle

    def started(self, *, group: bool = False) -> None:
        self._started_at = self.clock.seconds()
        pid = getattr(self.transport, "pid", None)
        self._group_id = pid if group and isinstance(pid, int) and pid > 0 else None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD)
        if buffer is None:
            return
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_LINE:
                    # Log the line's first MAX_LINE bytes, drop the rest up to its newline.
                    if childFD not in self._cutting:
                        self._line(childFD, bytes(buffer[:MAX_LINE]), cut=True)
                        self._cutting.add(childFD)
                    buffer.clear()
                return
            if childFD in self._cutting:
                self._cutting.discard(childFD)  # the end of a line already cut
            else:
                self._line(childFD, bytes(buffer[:min(end, MAX_LINE)]), cut=end > MAX_LINE)
            del buffer[:end + 1]

    def processExited(self, reason: Failure) -> None:
        self._exit = reason
        if self._finished or ("kill" in self._timers and self._group_id is not None):
            return  # (the SIGKILL to what is left of its group comes, then the drain)
        self._cancel("kill")
        # Pipes a grandchild keeps open must not hold the run forever.
        self._timers["drain"] = self.clock.callLater(self.daemon.kill_grace, self._drain)

    def processEnded(self, reason: Failure) -> None:
        self._finish(reason)

    def terminate(self, why: str) -> None:
        """End the program: SIGTERM now, SIGKILL after kill_grace (to its process group)."""
        if self._finished or "kill" in self._timers:
            return
        if self._exit is not None and self._group_id is None:
            return
        self._stopped_by = why
        log.warn("{daemon}: sending SIGTERM to {program} ({why})", daemon=self.daemon.name,
                 program=self.argv[0], why=why)
        self._signal("TERM")
        self._cancel("drain")
        self._timers["kill"] = self.clock.callLater(self.daemon.kill_grace, self._kill)

    def time_out(self) -> None:
        """The run passed the daemon's timeout: terminate the program (DESIGN §10)."""
        self._timed_out = True
        self.daemon.stats["timeouts"] += 1
        self.terminate(f"timeout of {self.daemon.timeout:g} s")

    # ------------------------------------------------------------- internals

    def _kill(self) -> None:
        self._timers.pop("kill", None)
        if self._finished or (self._exit is not None and self._group_id is None):
            return
        log.warn("{daemon}: sending SIGKILL to {program}", daemon=self.daemon.name,
                 program=self.argv[0])
        self._signal("KILL")
        self._timers["drain"] = self.clock.callLater(self.daemon.kill_grace, self._drain)

    def _drain(self) -> None:
        self._timers.pop("drain", None)
        if self._finished:
            return
        if self.transport is not None:
            self.transport.loseConnection()
        self._finish(self._exit)

    def _signal(self, name: str) -> None:
        """Signal the program's process group (when it leads one), else the program."""
        transport = self.transport
        assert transport is not None
        if self._group_id is not None:
            try:
                os.killpg(self._group_id, getattr(signal, f"SIG{name}"))
                return
            except ProcessLookupError:
                pass  # not a leader yet (the trampoline runs), or the group is gone
            except OSError as e:
                log.warn("{daemon}: cannot signal the process group of {program}: {error}",
                         daemon=self.daemon.name, program=self.argv[0], error=e)
        if self._exit is not None:
            return
        try:
            transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def _cancel(self, *names: str) -> None:
        for name in names:
            timer = self._timers.pop(name, None)
            if timer is not None and timer.active():
                timer.cancel()

    def _line(self, fd: int, raw: bytes, *, cut: bool) -> None:
        if self._lines >= self.daemon.max_output_lines:
            self._dropped += 1
            return
        self._lines += 1
        text = raw.decode("utf-8", "replace").rstrip("\r") + (" [cut]" if cut else "")
        if fd == 1:
            log.info("{daemon} stdout: {line}", daemon=self.daemon.name, stream="stdout",
                     line=text)
        else:
            log.warn("{daemon} stderr: {line}", daemon=self.daemon.name, stream="stderr",
                     line=text)

    def _finish(self, reason: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel("kill", "drain")
        for fd, buffer in self._buffers.items():
            if buffer and fd not in self._cutting:
                self._line(fd, bytes(buffer[:MAX_LINE]), cut=len(buffer) > MAX_LINE)
                buffer.clear()
        if self._dropped:
            log.warn("{daemon}: {dropped} more output line(s) not logged (max_output_lines "
                     "{limit})", daemon=self.daemon.name, dropped=self._dropped,
                     limit=self.daemon.max_output_lines)
        elapsed = self.clock.seconds() - self._started_at
        program = self.argv[0]
        code = None if reason is None else getattr(reason.value, "exitCode", None)
        signal = None if reason is None else getattr(reason.value, "signal", None)
        self.daemon.stats["exit_code"] = code
        if reason is None:
            outcome = "did not end after SIGKILL"
        elif reason.check(ProcessDone):
            outcome = "exited with status 0"
        elif signal is not None:
            outcome = f"was killed by signal {signal}"
        else:
            outcome = f"exited with status {code}"
        if self._timed_out:
            failed = f"{program} timed out after {self.daemon.timeout:g} s and {outcome}"
        elif self._stopped_by is not None and reason is not None:
            log.warn("{daemon}: {program} {outcome} ({why})", daemon=self.daemon.name,
                     program=program, outcome=outcome, why=self._stopped_by)
            self.done.callback(None)
            return
        elif reason is not None and reason.check(ProcessDone):
            log.info("{daemon}: {program} exited with status 0 after {elapsed:.3f} s",
                     daemon=self.daemon.name, program=program, elapsed=elapsed)
            self.done.callback(None)
            return
        else:
            failed = f"{program} {outcome}"
        self.done.errback(CommandFailed(f"{failed} after {elapsed:.3f} s"))
