"""A job's child process as the dispatcher sees it: how it starts (``python -m
daemonapp.jobs.child``, a clean environment, the job on stdin), its pipes (output
logged, the result on fd 3, progress on fd 4), its timeout and kill, and what its
end means for the job.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import error as twisted_error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.jobs._model import Job
from daemonapp.jobs.runtime import decode_progress

__all__ = ["CHILD_MODULE", "JobChild", "child_environment", "child_pythonpath"]

# The dispatcher's namespace: what a job prints was always logged under it.
log = Logger(namespace="daemonapp.jobs.dispatcher")

MAX_RESULT_BYTES = 256 * 1024
MAX_OUTPUT_TAIL = 16 * 1024
MAX_PROGRESS_LINE = 8 * 1024
MAX_LOGGED_OUTPUT = 64 * 1024
MAX_LINE = 2000
_LOCALE_KEYS = ("LANG", "LANGUAGE")
#: How a job child starts: ``python -m daemonapp.jobs.child --parent PID ...``.
CHILD_MODULE = "daemonapp.jobs.child"


def child_pythonpath(path: Iterable[str] | None = None) -> str:
    """The PYTHONPATH that makes daemonapp and the app's modules importable in a child.

    The directory holding this daemonapp comes first (so the child runs the same
    code as its parent), then the parent's ``sys.path`` entries that the
    interpreter would not find by itself (not the standard library, not
    site-packages).
    """
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    skip = {os.path.realpath(p) for p in _interpreter_paths()}
    # An installed daemonapp lives in site-packages, which the child finds by itself:
    # put before the standard library, it could shadow stdlib modules.
    entries: list[str] = [] if os.path.realpath(package_root) in skip else [package_root]
    for entry in sys.path if path is None else path:
        full = os.path.abspath(entry or os.curdir)
        if not os.path.isdir(full) or os.path.realpath(full) in skip or full in entries:
            continue
        entries.append(full)
    return os.pathsep.join(entries)


def _library_paths() -> list[str]:
    paths = sysconfig.get_paths()
    return [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]


# Read when the dispatcher is imported, not at the first spawn: sysconfig loads its
# data module then, and everything a run imports is imported before twistd's --uid
# switch (DESIGN §2).
_LIBRARY_PATHS = _library_paths()


def _interpreter_paths() -> list[str]:
    found = list(_LIBRARY_PATHS)
    found += [p for p in sys.path if p.endswith(("lib-dynload", "site-packages"))]
    return found


def child_environment(environ: Mapping[str, str] | None = None,
                      pythonpath: str | None = None) -> dict[str, str]:
    """The whole environment of a job child: PATH, locale, PYTHONPATH, nothing else."""
    source = os.environ if environ is None else environ
    env = {key: value for key, value in source.items()
           if key in _LOCALE_KEYS or key.startswith("LC_")}
    env["PATH"] = source.get("PATH", os.defpath)
    env["PYTHONPATH"] = child_pythonpath() if pythonpath is None else pythonpath
    return env


class JobChild(ProcessProtocol):
    """One attempt's child process: feeds it the job, collects its pipes, times it
    out and kills it, then says what its end means.

    ``on_progress((percent, message))`` gets the newest progress record as it comes;
    ``on_end(outcome, error)`` is called once, when the process is gone: outcome
    "done", "error" (with the error text), "release" (killed by a stop: the job goes
    back to pending) or "lost" (killed because the job was cancelled or claimed again).
    """

    def __init__(self, job: Job, *, reactor: Any,
                 on_progress: Callable[[tuple[float, str]], None],
                 on_end: Callable[[str, str | None], None],
                 timeout: float | None = None, kill_grace: float = 5.0) -> None:
        self.job = job
        self.reactor = reactor
        self.on_progress = on_progress
        self.on_end = on_end
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.process: Any = None
        self.pid: int | None = None
        self.description = b""
        self.result = bytearray()
        self.output = bytearray()
        self.progress_buffer = b""
        self.partial: dict[str, bytes] = {}
        self.logged = 0
        self.stop_reason: str | None = None  # timeout, cancelled, stale, shutdown
        self.timeout_call: Any = None
        self.kill_call: Any = None
        self.ended = False

    def spawn(self, python: str, modules: list[str], memory_limit: int | None,
              env: dict[str, str]) -> None:
        """Start the child (it raises when the process cannot be started)."""
        job = self.job
        self.description = marshal.dumps({
            "id": job.id, "kind": job.kind, "payload": job.payload, "token": job.token,
            "attempt": job.attempt, "modules": modules})
        args = [python, "-m", CHILD_MODULE, "--parent", str(os.getpid())]
        if memory_limit:
            args += ["--memory-limit", str(memory_limit)]
        self.process = self.reactor.spawnProcess(
            self, python, args, env=env, path=None,
            childFDs={0: "w", 1: "r", 2: "r", 3: "r", 4: "r"})
        self.pid = self.process.pid
        log.debug("job {job_id} ({kind}) attempt {attempt} started in pid {pid}",
                  job_id=job.id, kind=job.kind, attempt=job.attempt, pid=self.pid)
        if self.timeout is not None:
            self.timeout_call = self.reactor.callLater(self.timeout, self._timed_out)

    # ------------------------------------------------------------ pipes

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.description)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 4:
            self._progress(data)
        elif childFD == 3:
            if len(self.result) < MAX_RESULT_BYTES:
                self.result += data[:MAX_RESULT_BYTES - len(self.result)]
        else:
            self.output += data
            if len(self.output) > MAX_OUTPUT_TAIL:
                del self.output[:len(self.output) - MAX_OUTPUT_TAIL]
            self._log_output("stdout" if childFD == 1 else "stderr", data)

    def _log_output(self, stream: str, data: bytes) -> None:
        """Log the child's output line by line, up to MAX_LOGGED_OUTPUT bytes a job."""
        if self.logged >= MAX_LOGGED_OUTPUT:
            return
        pending = self.partial.get(stream, b"") + data
        *lines, rest = pending.split(b"\n")
        self.partial[stream] = rest[-MAX_LINE:]
        for line in lines:
            self.logged += len(line) + 1
            log.info("job {job_id} {stream}: {line}", job_id=self.job.id, stream=stream,
                     line=line[:MAX_LINE].decode("utf-8", "replace"))
            if self.logged >= MAX_LOGGED_OUTPUT:
                log.info("job {job_id}: further output is not logged", job_id=self.job.id)
                return

    def _progress(self, data: bytes) -> None:
        buffered = self.progress_buffer + data
        last = buffered.rfind(b"\n")
        if last < 0:
            self.progress_buffer = buffered[-MAX_PROGRESS_LINE:]
            return
        self.progress_buffer = buffered[last + 1:][-MAX_PROGRESS_LINE:]
        # Only the newest complete record matters: the rest are superseded.
        start = buffered.rfind(b"\n", 0, last) + 1
        value = decode_progress(buffered[start:last])
        if value is not None:
            self.on_progress(value)

    # ------------------------------------------------------------ timeout and kill

    def _timed_out(self) -> None:
        self.timeout_call = None
        if not self.ended:
            self.kill("timeout", signal.SIGTERM)

    def kill(self, reason: str, signum: int) -> None:
        """Signal the child for ``reason``; a SIGTERM is followed by SIGKILL after
        kill_grace. The first reason stands, but a stop (shutdown) overrides it."""
        if self.stop_reason is None or reason == "shutdown":
            self.stop_reason = reason
        self._signal(signum)
        if signum != signal.SIGKILL and self.kill_call is None:
            self.kill_call = self.reactor.callLater(self.kill_grace, self._signal,
                                                    signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.ended or self.process is None:
            return
        try:
            self.process.signalProcess("KILL" if signum == signal.SIGKILL else signum)
        except (twisted_error.ProcessExitedAlready, OSError):
            pass

    # ------------------------------------------------------------ the end

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        for name in ("timeout_call", "kill_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        outcome, error = self._outcome(reason)
        self.on_end(outcome, error)

    def _outcome(self, reason: Failure) -> tuple[str, str | None]:
        exit_code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        outcome = _decode_result(bytes(self.result))
        if self.stop_reason in ("cancelled", "stale"):
            return "lost", None
        if outcome is not None and outcome.get("ok") and exit_code == 0:
            return "done", None  # it finished before the kill landed
        if self.stop_reason == "shutdown":
            return "release", None
        if self.stop_reason == "timeout":
            assert self.timeout is not None
            return "error", f"timed out after {self.timeout:g} s"
        if outcome is not None and not outcome.get("ok"):
            error = _error_text(outcome)
        elif signum is not None:
            error = f"the job child was killed by signal {signum} ({_signal_name(signum)})"
        else:
            error = f"the job child exited with status {exit_code} without a result"
        tail = bytes(self.output).decode("utf-8", "replace").strip()
        if tail and (outcome is None or outcome.get("ok") is not False):
            error += "\n--- child output (tail) ---\n" + tail[-4096:]
        log.debug("job {job_id} attempt {attempt} failed", job_id=self.job.id,
                  attempt=self.job.attempt)
        return "error", error


def _decode_result(data: bytes) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = marshal.loads(data)  # noqa: S302 - written by our own child, over a pipe
    except (EOFError, TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _error_text(outcome: Mapping[str, Any]) -> str:
    summary = str(outcome.get("error") or "the job failed")
    trace = str(outcome.get("traceback") or "").rstrip()
    if not trace:
        return summary
    if trace.splitlines()[-1].strip() == summary:
        return trace
    return f"{trace}\n{summary}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"
