"""JobDispatcher: the daemon that claims jobs and runs each in a child process.

It claims while fewer than ``max_children`` run, spawns ``python -m
daemonapp.jobs.child`` with a clean environment, renews leases, enforces the
timeout and the memory limit, keeps the latest progress in memory (persisting
it at a bounded rate) and records the outcome with the job's fencing token.
"""

from __future__ import annotations

import json
import marshal
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import error as twisted_error
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.daemon import Daemon, OptionError
from daemonapp.durations import parse_duration, parse_size
from daemonapp.jobs._model import (
    DEFAULT_LEASE,
    MAX_ERROR_CHARS,
    Job,
    JobCancelled,
    StaleLease,
)
from daemonapp.jobs.runtime import decode_progress
from daemonapp.jobs.store import is_unavailable, open_store

__all__ = ["CHILD_MODULE", "JobDispatcher", "child_environment", "child_pythonpath",
           "store_target"]

log = Logger()

MAX_RESULT_BYTES = 256 * 1024
MAX_OUTPUT_TAIL = 16 * 1024
MAX_PROGRESS_LINE = 8 * 1024
MAX_LOGGED_OUTPUT = 64 * 1024
MAX_LINE = 2000
#: The LISTEN connection is re-opened after 0.25 s, then at doubling delays up to this.
LISTEN_RETRY = 2.0
LISTEN_RETRY_FIRST = 0.25
#: An outcome the store could not take is written again after 0.25 s, doubling up to this.
OUTCOME_RETRY = 2.0
OUTCOME_RETRY_FIRST = 0.25
_KEPT = object()  # an outcome kept for a later try: the run keeps its slot
_LISTEN_PENDING = object()  # the LISTEN connection is being opened
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


def _interpreter_paths() -> list[str]:
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
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


def store_target(store: str | os.PathLike[str] | None, state_dir: str | None) -> str:
    """Where a dispatcher's jobs live: its ``store`` option (a PostgreSQL URL, a
    directory or a store object), else SQLite in the app's ``state_dir``.

    The one owner of that rule: the dispatcher and ``daemonapp jobs -c`` both ask it.
    """
    if store is not None:
        return os.fspath(store)
    if not state_dir:
        raise RuntimeError("no store option and no app.state_dir to keep the SQLite "
                           "job store in")
    return state_dir


def _format_delay(seconds: float) -> str:
    return f"{seconds:g}"


class _Run:
    """One job being run by a child process."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.process: Any = None
        self.pid: int | None = None
        self.started = time.monotonic()
        self.result = bytearray()
        self.output = bytearray()
        self.progress_buffer = b""
        self.latest: tuple[float, str] | None = None
        self.persisted: tuple[float, str] | None = None
        self.last_persist = -1e9
        self.persist_call: Any = None
        self.persist_busy = False
        self.progress_writes = 0
        self.stop_reason: str | None = None  # timeout, cancelled, stale, shutdown
        self.timeout_call: Any = None
        self.kill_call: Any = None
        self.heartbeat_busy = False
        self.ended = False
        self.logged = 0
        # The outcome while it is being written: (outcome, error, retry_at). Kept, and
        # written again, while the store is unavailable.
        self.record: tuple[str, str | None, float | None] | None = None
        self.record_call: Any = None
        self.record_delay = OUTCOME_RETRY_FIRST
        self.record_tries = 0  # writes of the outcome tried so far

    def status(self) -> dict[str, Any]:
        percent, message = self.latest or self.persisted or (0.0, "")
        return {"id": self.job.id, "kind": self.job.kind, "state": "running",
                "percent": percent, "message": message, "attempts": self.job.attempt,
                "max_attempts": self.job.max_attempts, "error": None}


class _ChildProtocol(ProcessProtocol):
    """Feeds the job to the child on stdin and collects its pipes."""

    def __init__(self, dispatcher: JobDispatcher, run: _Run, description: bytes) -> None:
        self.dispatcher = dispatcher
        self.run = run
        self.description = description
        self.partial: dict[str, bytes] = {}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.description)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        run = self.run
        if childFD == 4:
            self._progress(data)
        elif childFD == 3:
            if len(run.result) < MAX_RESULT_BYTES:
                run.result += data[:MAX_RESULT_BYTES - len(run.result)]
        else:
            run.output += data
            if len(run.output) > MAX_OUTPUT_TAIL:
                del run.output[:len(run.output) - MAX_OUTPUT_TAIL]
            self._log_output("stdout" if childFD == 1 else "stderr", data)

    def _log_output(self, stream: str, data: bytes) -> None:
        """Log the child's output line by line, up to MAX_LOGGED_OUTPUT bytes a job."""
        run = self.run
        if run.logged >= MAX_LOGGED_OUTPUT:
            return
        pending = self.partial.get(stream, b"") + data
        *lines, rest = pending.split(b"\n")
        self.partial[stream] = rest[-MAX_LINE:]
        for line in lines:
            run.logged += len(line) + 1
            log.info("job {job_id} {stream}: {line}", job_id=run.job.id, stream=stream,
                     line=line[:MAX_LINE].decode("utf-8", "replace"))
            if run.logged >= MAX_LOGGED_OUTPUT:
                log.info("job {job_id}: further output is not logged", job_id=run.job.id)
                return

    def _progress(self, data: bytes) -> None:
        run = self.run
        buffered = run.progress_buffer + data
        last = buffered.rfind(b"\n")
        if last < 0:
            run.progress_buffer = buffered[-MAX_PROGRESS_LINE:]
            return
        run.progress_buffer = buffered[last + 1:][-MAX_PROGRESS_LINE:]
        # Only the newest complete record matters: the rest are superseded.
        start = buffered.rfind(b"\n", 0, last) + 1
        value = decode_progress(buffered[start:last])
        if value is not None:
            self.dispatcher._progress(run, value)

    def processEnded(self, reason: Failure) -> None:
        self.dispatcher._child_ended(self.run, reason)


class _StoreHealth:
    """Whether the job store answers: one log line when it stops, one when it is back,
    however many calls fail in between (every store call reports here)."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self.clock = clock
        self.down_since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: object) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = self.clock()
            log.warn("job dispatcher {name}: the job store is unavailable: {error}; "
                     "outcomes are kept and retried, LISTEN is re-established when it is back",
                     name=self.name, error=_last_line(str(error)) or type(error).__name__)

    def ok(self, began: float) -> bool:
        """Note a call begun at ``began`` that worked; True when it ends an outage."""
        if self.down_since is None or began < self.down_since:
            return False
        log.info("job dispatcher {name}: the job store is available again after "
                 "{seconds:.1f} s ({failures} call(s) failed meanwhile)", name=self.name,
                 seconds=self.clock() - self.down_since, failures=self.failures)
        self.down_since = None
        self.failures = 0
        return True


class JobDispatcher(Daemon):
    """Runs jobs from a store in child processes, up to ``max_children`` at once.

    YAML ``type: job_dispatcher``. Options: ``store`` (a PostgreSQL URL; absent:
    SQLite in the app's state_dir), ``modules`` (modules holding ``@job``
    functions), ``max_children``, ``max_attempts``, ``timeout``, ``kill_grace``,
    ``lease``, ``retry_delay``, ``retry_max_delay``, ``memory_limit``,
    ``progress_persist_hz``, ``on_failure``, ``stop_timeout``.
    """

    run_every = 0.5
    multiply_idle_by = 2.0
    maximum_idle = 5.0

    def __init__(self, *, store: Any = None, modules: Iterable[str] | str = (),
                 max_children: int | None = None, max_attempts: int = 3,
                 timeout: float | str | None = None, kill_grace: float | str = 5.0,
                 lease: float | str = DEFAULT_LEASE, retry_delay: float | str = 10.0,
                 retry_max_delay: float | str = 3600.0, memory_limit: int | str | None = None,
                 progress_persist_hz: float = 2.0, on_failure: Any = None,
                 stop_timeout: float | str | None = None, holder: str | None = None,
                 python: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        if self.in_thread:
            raise OptionError("in_thread", "a job_dispatcher never blocks the loop (its store "
                                           "calls already run in the thread pool); remove it")
        if store is not None and not isinstance(store, str | os.PathLike) and not hasattr(
                store, "claim"):
            raise OptionError("store", f"expected a PostgreSQL URL or a directory, got {store!r}")
        self.store_target = store
        if isinstance(modules, str):
            modules = [modules]
        self.modules = [str(m) for m in modules]
        for module in self.modules:
            if not module or not all(part.isidentifier() for part in module.split(".")):
                raise OptionError("modules", f"expected module names like 'myapp.jobs', "
                                             f"got {module!r}")
        self.max_children = self._count(
            "max_children", (os.cpu_count() or 2) if max_children is None else max_children)
        self.max_attempts = self._count("max_attempts", max_attempts)
        self.timeout = self._duration("timeout", timeout) if timeout is not None else None
        if self.timeout is not None and self.timeout <= 0:
            self.timeout = None
        self.kill_grace = self._duration("kill_grace", kill_grace)
        self.lease = self._duration("lease", lease)
        if self.lease <= 0:
            raise OptionError("lease", f"expected a duration above zero, got {lease!r}")
        self.retry_delay = self._duration("retry_delay", retry_delay)
        self.retry_max_delay = self._duration("retry_max_delay", retry_max_delay)
        try:
            self.memory_limit = parse_size(memory_limit) if memory_limit is not None else None
        except ValueError as err:
            raise OptionError("memory_limit", str(err)) from None
        try:
            self.progress_persist_hz = float(progress_persist_hz)
        except (TypeError, ValueError):
            raise OptionError("progress_persist_hz",
                              f"expected a number, got {progress_persist_hz!r}") from None
        if not self.progress_persist_hz > 0:
            raise OptionError("progress_persist_hz",
                              f"expected a number above zero, got {progress_persist_hz!r}")
        self.on_failure = _failure_hooks(on_failure)
        if isinstance(store, str) and store.startswith(("postgres://", "postgresql://")):
            # Imported now, not at the first claim: under twistd --uid the venv may be
            # unreadable once the app runs (DESIGN §2).
            import psycopg  # noqa: F401
        self.stop_timeout = (self._duration("stop_timeout", stop_timeout)
                             if stop_timeout is not None else None)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{self.name}"
        self.python = python or sys.executable
        self.store: Any = store if hasattr(store, "claim") else None
        self._own_store = self.store is None
        self._store_lock = threading.Lock()
        self._runs: dict[int, _Run] = {}
        self._claiming = 0
        self._closing = False
        self._idle_waiters: list[Deferred[None]] = []
        self._heartbeat: LoopingCall | None = None
        self._env: dict[str, str] | None = None
        self._notifier: Any = None
        self._listen_delay: float | None = None  # set while the LISTEN connection is lost
        self._health = _StoreHealth(self.name, self._now)
        self._by_state: dict[str, int] | None = None
        self._counting = False
        self.stats.update({"jobs_started": 0, "jobs_done": 0, "jobs_failed": 0,
                           "jobs_retried": 0, "jobs_released": 0, "jobs_lost": 0})

    def _now(self) -> float:
        return float(self.reactor.seconds())  # the reactor is the app's, known at start

    @staticmethod
    def _count(key: str, value: object) -> int:
        try:
            number: int = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise OptionError(key, f"expected a whole number, got {value!r}") from None
        if isinstance(value, bool) or number < 1:
            raise OptionError(key, f"expected a whole number of at least 1, got {value!r}")
        return number

    @staticmethod
    def _duration(key: str, value: object) -> float:
        try:
            return parse_duration(value)
        except ValueError as err:
            raise OptionError(key, str(err)) from None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start claiming, and renew the leases of running jobs every lease/3."""
        super().start()
        self._closing = False
        if self._heartbeat is None:
            self._heartbeat = LoopingCall(self._heartbeat_all)
            self._heartbeat.clock = self.reactor
            self._heartbeat.start(self.lease / 3, now=False).addErrback(
                lambda f: log.failure("job dispatcher {name}: heartbeat loop", f,
                                      name=self.name))

    def stop(self) -> Deferred[None]:
        """Claim nothing new, wait for the children up to stop_timeout, then kill
        them and put their jobs back to pending (their attempt given back)."""
        self._closing = True
        d = super().stop()
        d.addCallback(lambda _: self._drain_children())
        d.addCallback(lambda _: self._shut_down())
        return d

    def _stop_wait(self) -> float:
        if self.stop_timeout is not None:
            return self.stop_timeout
        app_timeout = getattr(self.app, "stop_timeout", 30.0)
        return max(0.0, float(app_timeout) * 0.8 - 1.0)

    def _drain_children(self) -> Deferred[None]:
        if not self._runs:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        wait = self._stop_wait()
        log.info("job dispatcher {name}: waiting up to {wait:g} s for {count} job(s)",
                 name=self.name, wait=wait, count=len(self._runs))
        call = self.reactor.callLater(wait, self._kill_all, "shutdown")
        waiter.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return waiter

    def _kill_all(self, reason: str) -> None:
        for run in list(self._runs.values()):
            if not run.ended:
                self._kill(run, reason, signal.SIGKILL)
            elif run.record_call is not None and reason == "shutdown":
                # The store stayed unavailable through the stop: another holder runs
                # the job again once its lease lapses (at-least-once).
                run.record_call.cancel()
                run.record_call = None
                log.warn("job {job_id}: outcome {outcome} not recorded before the stop "
                         "(the job store is unavailable); it will run again",
                         job_id=run.job.id, outcome=run.record[0] if run.record else "?")
                self._free(run)

    def _shut_down(self) -> Deferred[None]:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        self._stop_listening()
        if self.store is not None and self._own_store:
            store, self.store = self.store, None
            return self._call_in_pool(store.close).addErrback(
                lambda f: log.failure("job dispatcher {name}: closing the store", f,
                                      name=self.name))
        return succeed(None)

    # ------------------------------------------------------------ the daemon hooks

    def get_work(self) -> Any:
        """Claim a job while fewer than max_children run; None otherwise."""
        if self._closing or len(self._runs) + self._claiming >= self.max_children:
            return None
        self._claiming += 1
        # The jobs still run or recorded here: their leases may have lapsed during a
        # store outage, and they are renewed by us, never claimed back from under us.
        busy = list(self._runs)
        d = self._store_call(self._claim, busy)

        def done(result: Any) -> Any:
            self._claiming -= 1
            if isinstance(result, Failure) and is_unavailable(result.value):
                return None  # said once by _StoreHealth; the loop backs off as when idle
            return result

        return d.addBoth(done)

    def do_work(self, job: Job) -> Any:
        """Start the job's child and return at once (the child is tracked in flight)."""
        if self._closing:  # claimed while the stop began: give it back untouched
            return self._call_in_pool(self.store.release, job.id, job.token).addErrback(
                lambda f: log.failure("job {job_id}: releasing after stop", f, job_id=job.id))
        self._spawn(job)
        return None

    def _claim(self, busy: list[int]) -> Job | None:
        store = self._open_store()
        job: Job | None = store.claim(self.holder, self.lease, max_attempts=self.max_attempts,
                                      busy=busy)
        return job

    def _open_store(self) -> Any:
        with self._store_lock:
            return self._open_store_locked()

    def _open_store_locked(self) -> Any:
        if self.store is None:
            try:
                target = store_target(self.store_target, getattr(self.app, "state_dir", None))
            except RuntimeError as err:
                raise RuntimeError(f"job dispatcher {self.name!r}: {err}") from None
            self.store = open_store(target, max_attempts=self.max_attempts)
            if self._own_store:
                self.reactor.callFromThread(self._start_listening)
        return self.store

    def _call_in_pool(self, func: Callable[..., Any], *args: Any) -> Deferred[Any]:
        assert self.app is not None
        return deferToThreadPool(self.reactor, self.app.threadpool, func, *args)

    def _store_call(self, func: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """A store call in the pool whose outcome tells _StoreHealth whether it answers."""

        # Only a call begun after the outage began can say it is over: one that was
        # already under way (or never needed the server) proves nothing.
        began = self._now()

        def answered(result: Any) -> Any:
            if self._health.ok(began):
                self._store_back()
            return result

        def failed(failure: Failure) -> Failure:
            if is_unavailable(failure.value):
                self._health.failed(failure.value)
            elif failure.check(StaleLease) and self._health.ok(began):
                self._store_back()
            return failure

        return self._call_in_pool(func, *args).addCallbacks(answered, failed)

    def _store_back(self) -> None:
        """The store answers again: write the outcomes kept, renew leases, claim."""
        for run in list(self._runs.values()):
            if run.record_call is not None and run.record_call.active():
                run.record_call.cancel()
                run.record_call = None
                run.record_delay = OUTCOME_RETRY_FIRST
                self._record(run)
        self._heartbeat_all()
        if self._listen_delay is not None and self._notifier is None:
            self._start_listening()
        self.poke()

    # ------------------------------------------------------------ wake-ups

    def poke(self) -> None:
        """Make a run due now (a slot freed, or a submit was notified)."""
        if self.app is None or not self._active or self._closing or self._stopping:
            return
        if self.running or len(self._runs) + self._claiming >= self.max_children:
            return
        self.app.daemon_started(self, 0.0)

    def _start_listening(self) -> None:
        """LISTEN for submits on a connection of its own (opened in a thread)."""
        listen = getattr(self.store, "listener", None)
        if listen is None or self._notifier is not None or self._closing:
            return
        self._notifier = _LISTEN_PENDING

        def opened(notifier: Any) -> None:
            if self._notifier is not _LISTEN_PENDING or self._closing:
                notifier.close()
                return
            try:
                reader = _NotifyReader(notifier, self.poke, self._listen_lost)
            except OSError as err:
                notifier.close()
                failed(Failure(err))
                return
            self._notifier = reader
            self.reactor.addReader(reader)
            self._listen_delay = None
            self.poke()  # a submit may have come before we listened

        def failed(failure: Failure) -> None:
            self._notifier = None
            if not is_unavailable(failure.value):
                log.failure("job dispatcher {name}: LISTEN failed; polling only", failure,
                            name=self.name)
                return
            self._retry_listening()

        self._store_call(listen).addCallbacks(opened, failed)

    def _listen_lost(self) -> None:
        """The LISTEN connection broke: poll meanwhile, and open it again soon."""
        self._notifier = None
        if not self._closing:
            self._health.failed("the LISTEN connection was lost")
            self._retry_listening()

    def _retry_listening(self) -> None:
        if self._closing:
            return
        delay = LISTEN_RETRY_FIRST if self._listen_delay is None else self._listen_delay
        self._listen_delay = min(LISTEN_RETRY, delay * 2)
        self.reactor.callLater(delay, self._start_listening)

    def _stop_listening(self) -> None:
        notifier, self._notifier = self._notifier, None
        if isinstance(notifier, _NotifyReader):
            self.reactor.removeReader(notifier)
            notifier.close()

    # ------------------------------------------------------------ children

    def _environment(self) -> dict[str, str]:
        if self._env is None:
            self._env = child_environment()
        return self._env

    def _spawn(self, job: Job) -> None:
        run = _Run(job)
        older = self._runs.get(job.id)
        if older is not None and not older.ended:
            # We lost this job's lease (heartbeats failed) and claimed it again.
            self._kill(older, "stale", signal.SIGKILL)
        self._runs[job.id] = run
        app: Any = self.app
        app.begin("job")
        self.stats["jobs_started"] += 1
        description = marshal.dumps({
            "id": job.id, "kind": job.kind, "payload": job.payload, "token": job.token,
            "attempt": job.attempt, "modules": self.modules})
        args = [self.python, "-m", CHILD_MODULE, "--parent", str(os.getpid())]
        if self.memory_limit:
            args += ["--memory-limit", str(self.memory_limit)]
        protocol = _ChildProtocol(self, run, description)
        try:
            run.process = self.reactor.spawnProcess(
                protocol, self.python, args, env=self._environment(), path=None,
                childFDs={0: "w", 1: "r", 2: "r", 3: "r", 4: "r"})
        except Exception as err:
            log.failure("job dispatcher {name}: cannot start a child for job {job_id}",
                        name=self.name, job_id=job.id)
            run.ended = True
            self._finish(run, "error", f"cannot start the job child: {err}")
            return
        run.pid = run.process.pid
        log.debug("job {job_id} ({kind}) attempt {attempt} started in pid {pid}",
                  job_id=job.id, kind=job.kind, attempt=job.attempt, pid=run.pid)
        if self.timeout is not None:
            run.timeout_call = self.reactor.callLater(self.timeout, self._timed_out, run)

    def _timed_out(self, run: _Run) -> None:
        run.timeout_call = None
        if not run.ended:
            self._kill(run, "timeout", signal.SIGTERM)

    def _kill(self, run: _Run, reason: str, signum: int) -> None:
        if run.stop_reason is None or reason == "shutdown":
            run.stop_reason = reason
        self._signal(run, signum)
        if signum != signal.SIGKILL and run.kill_call is None:
            run.kill_call = self.reactor.callLater(self.kill_grace, self._signal, run,
                                                   signal.SIGKILL)

    def _signal(self, run: _Run, signum: int) -> None:
        if run.ended or run.process is None:
            return
        try:
            run.process.signalProcess("KILL" if signum == signal.SIGKILL else signum)
        except (twisted_error.ProcessExitedAlready, OSError):
            pass

    def _child_ended(self, run: _Run, reason: Failure) -> None:
        run.ended = True
        for name in ("timeout_call", "kill_call", "persist_call"):
            call = getattr(run, name)
            if call is not None and call.active():
                call.cancel()
            setattr(run, name, None)
        job = run.job
        exit_code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        outcome = _decode_result(bytes(run.result))
        if run.stop_reason in ("cancelled", "stale"):
            self._finish(run, "lost", None)
            return
        if outcome is not None and outcome.get("ok") and exit_code == 0:
            self._finish(run, "done", None)  # it finished before the kill landed
            return
        if run.stop_reason == "shutdown":
            self._finish(run, "release", None)
            return
        if run.stop_reason == "timeout":
            assert self.timeout is not None
            self._finish(run, "error", f"timed out after {_format_delay(self.timeout)} s")
            return
        if outcome is not None and not outcome.get("ok"):
            error = _error_text(outcome)
        elif signum is not None:
            error = f"the job child was killed by signal {signum} ({_signal_name(signum)})"
        else:
            error = f"the job child exited with status {exit_code} without a result"
        tail = bytes(run.output).decode("utf-8", "replace").strip()
        if tail and (outcome is None or outcome.get("ok") is not False):
            error += "\n--- child output (tail) ---\n" + tail[-4096:]
        log.debug("job {job_id} attempt {attempt} failed", job_id=job.id, attempt=job.attempt)
        self._finish(run, "error", error)

    def _finish(self, run: _Run, outcome: str, error: str | None) -> None:
        """Write the attempt's outcome with the job's token, then free the slot."""
        job = run.job
        retry_at: float | None = None
        if outcome == "error" and job.attempt < job.max_attempts:
            delay = min(self.retry_max_delay, self.retry_delay * 2 ** (job.attempt - 1))
            retry_at = time.time() + delay
        run.record = (outcome, error, retry_at)
        self._record(run)

    def _record(self, run: _Run) -> None:
        """Write the outcome kept in ``run.record``; while the store is unavailable,
        keep it and try again (the token makes a late write safe: a holder that
        claimed the job since is never overwritten)."""
        run.record_call = None
        assert run.record is not None
        outcome, error, retry_at = run.record
        job = run.job
        store = self.store
        final = run.latest if run.latest != run.persisted else None

        # A second try repeats a write whose answer may have been lost with the store.
        resent = run.record_tries > 0
        run.record_tries += 1

        def write() -> str | None:
            if final is not None and outcome in ("done", "error"):
                try:
                    store.set_progress(job.id, job.token, *final)
                    run.progress_writes += 1
                    run.persisted = final
                except StaleLease:
                    pass
            if outcome == "done":
                store.complete(job.id, job.token, resent=resent)
                return "done"
            if outcome == "release":
                store.release(job.id, job.token, resent=resent)
                return "pending"
            if outcome == "error":
                assert error is not None
                state: str = store.fail(job.id, job.token, error, retry_at, resent=resent)
                return state
            return None

        def written(state: str | None) -> None:
            if outcome == "done":
                self.stats["jobs_done"] += 1
                log.info("job {job_id} ({kind}) done", job_id=job.id, kind=job.kind)
            elif outcome == "release":
                self.stats["jobs_released"] += 1
                log.info("job {job_id} ({kind}) put back to pending by the stop",
                         job_id=job.id, kind=job.kind)
            elif outcome == "lost":
                self.stats["jobs_lost"] += 1
            elif state == "pending":
                self.stats["jobs_retried"] += 1
                log.warn("job {job_id} ({kind}) attempt {attempt} of {max_attempts} failed, "
                         "retrying: {error}", job_id=job.id, kind=job.kind,
                         attempt=job.attempt, max_attempts=job.max_attempts,
                         error=_last_line(error))
            else:
                self.stats["jobs_failed"] += 1
                log.error("job {job_id} ({kind}) failed after {attempt} attempt(s): {error}",
                          job_id=job.id, kind=job.kind, attempt=job.attempt,
                          error=error)
                self._call_failure_hooks(job, error or "")

        def refused(failure: Failure) -> object:
            if failure.check(StaleLease):
                self.stats["jobs_lost"] += 1
                log.warn("job {job_id}: outcome {outcome} refused: {reason}", job_id=job.id,
                         outcome=outcome, reason=str(failure.value))
            elif is_unavailable(failure.value):
                # Said once by _StoreHealth; written again soon, and at once when the
                # store answers again.
                delay = run.record_delay
                run.record_delay = min(OUTCOME_RETRY, delay * 2)
                run.record_call = self.reactor.callLater(delay, self._record, run)
                return _KEPT
            else:
                log.failure("job dispatcher {name}: recording job {job_id} ({outcome})",
                            failure, name=self.name, job_id=job.id, outcome=outcome)
            return None

        if store is None:
            d: Deferred[Any] = succeed(None)
        else:
            d = self._store_call(write)
            d.addCallbacks(written, refused)
        d.addErrback(lambda f: log.failure("job dispatcher {name}", f, name=self.name))
        d.addCallback(lambda result: None if result is _KEPT else self._free(run))

    def _free(self, run: _Run) -> None:
        """The run is over and its outcome written (or given up): free its slot."""
        run.record = None
        job = run.job
        if self._runs.get(job.id) is run:
            del self._runs[job.id]
        app: Any = self.app
        if app is not None:
            app.end("job")
        if not self._runs:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self.poke()

    # ------------------------------------------------------------ progress

    def _progress(self, run: _Run, value: tuple[float, str]) -> None:
        run.latest = value
        if run.persist_call is not None or run.persist_busy or run.ended:
            return
        interval = 1.0 / self.progress_persist_hz
        wait = run.last_persist + interval - self.reactor.seconds()
        if wait <= 0:
            self._persist(run)
        else:
            run.persist_call = self.reactor.callLater(wait, self._persist, run)

    def _persist(self, run: _Run) -> None:
        run.persist_call = None
        value = run.latest
        if run.ended or value is None or value == run.persisted or self.store is None:
            return
        run.persist_busy = True
        run.last_persist = self.reactor.seconds()
        job = run.job
        d = self._store_call(self.store.set_progress, job.id, job.token, value[0], value[1])

        def done(result: object) -> None:
            run.persist_busy = False
            if isinstance(result, Failure):
                if not result.check(StaleLease) and not is_unavailable(result.value):
                    log.failure("job {job_id}: persisting progress", result, job_id=job.id)
            else:
                run.persisted = value
                run.progress_writes += 1
            if run.latest != run.persisted and not run.ended:
                self._progress(run, run.latest)  # type: ignore[arg-type]

        d.addBoth(done)

    # ------------------------------------------------------------ heartbeats

    def _heartbeat_all(self) -> None:
        if self.store is None:
            return
        self._refresh_counts()
        for run in list(self._runs.values()):
            if run.heartbeat_busy:
                continue
            # A run whose outcome waits for the store keeps its lease too.
            if run.record is None if run.ended else run.stop_reason is not None:
                continue
            run.heartbeat_busy = True
            job = run.job
            d = self._store_call(self.store.heartbeat, job.id, job.token, self.lease)
            d.addBoth(self._heartbeat_done, run)

    def _heartbeat_done(self, result: object, run: _Run) -> None:
        run.heartbeat_busy = False
        if not isinstance(result, Failure):
            return
        if result.check(StaleLease):
            if run.ended:
                return  # its outcome is being written: that write says how it went
            reason = "cancelled" if result.check(JobCancelled) else "stale"
            log.warn("job {job_id}: {reason}; killing its child", job_id=run.job.id,
                     reason=str(result.value))
            if not run.ended:
                self._kill(run, reason, signal.SIGKILL)
        elif not is_unavailable(result.value):  # an outage is said once, by _StoreHealth
            log.failure("job {job_id}: heartbeat failed", result, job_id=run.job.id)

    # ------------------------------------------------------------ status

    def job_status(self, job_id: int | str) -> Deferred[dict[str, Any] | None]:
        """The job's status for ``/jobs/<id>``: from memory while it runs here, else
        from the store. JSON-able (id, kind, state, percent, message, attempts,
        error), the error capped at 64 KiB; None for an unknown job."""
        try:
            key = int(job_id)
        except (TypeError, ValueError):
            return succeed(None)
        run = self._runs.get(key)
        if run is not None:
            return succeed(run.status())

        def fetch() -> dict[str, Any] | None:
            record = self._open_store().get(key)
            if record is None:
                return None
            error = record.error
            if error is not None and len(error) > MAX_ERROR_CHARS:
                error = error[-MAX_ERROR_CHARS:]
            return {"id": record.id, "kind": record.kind, "state": record.state,
                    "percent": record.percent, "message": record.message,
                    "attempts": record.attempts, "max_attempts": record.max_attempts,
                    "error": error}

        return self._call_in_pool(fetch)

    def job_counts(self) -> Deferred[dict[str, int]]:
        """How many jobs the store holds in each state (for status and metrics)."""
        return self._call_in_pool(lambda: self._open_store().counts())

    def _refresh_counts(self) -> None:
        if self._counting:
            return
        self._counting = True

        def done(result: object) -> None:
            self._counting = False
            if isinstance(result, dict):
                self._by_state = result

        self.job_counts().addBoth(done)

    def jobs_snapshot(self) -> dict[str, Any]:
        """A JSON-able picture for ``daemonapp status`` and metrics, without blocking:
        ``by_state`` (the store's counts as of the last heartbeat tick, or None) and
        ``running`` (the jobs this process runs, with their latest progress)."""
        return {"by_state": self._by_state, "running": self.running_jobs(),
                "max_children": self.max_children, "holder": self.holder}

    def running_jobs(self) -> list[dict[str, Any]]:
        """The jobs this dispatcher runs now, with their in-memory progress."""
        return [run.status() | {"pid": run.pid} for run in self._runs.values()]

    # ------------------------------------------------------------ failure hooks

    def _call_failure_hooks(self, job: Job, error: str) -> None:
        event = {"id": job.id, "kind": job.kind, "attempts": job.attempt,
                 "max_attempts": job.max_attempts, "error": error[-MAX_ERROR_CHARS:],
                 "dispatcher": self.name, "holder": self.holder}
        for hook in self.on_failure:
            d = maybeDeferred(hook, event, self.reactor)
            d.addErrback(_log_hook_failure, job.id, repr(hook))


class _NotifyReader:
    """Watches a PostgreSQL LISTEN socket on the reactor; pokes on a submit."""

    def __init__(self, notifier: Any, poke: Callable[[], None],
                 lost: Callable[[], None]) -> None:
        self.notifier = notifier
        self.poke = poke
        self.lost = lost
        # The reactor watches a duplicate of libpq's socket: libpq closes its own as
        # soon as the connection breaks, and removing a closed fd from epoll fails with
        # EBADF before connectionLost could ever run (no LISTEN was ever re-established).
        self._fd = os.dup(int(notifier.fileno()))

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Exception | None:
        try:
            woken = self.notifier.drain()
        except Exception as err:
            # Returned, the reactor removes this reader and calls connectionLost.
            return twisted_error.ConnectionLost(str(err))
        if woken:
            self.poke()
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.close()
        self.lost()

    def logPrefix(self) -> str:
        return "JobNotify"

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        try:
            self.notifier.close()
        except Exception:
            log.failure("closing the job LISTEN connection")


def _log_hook_failure(failure: Failure, job_id: int, hook: str) -> None:
    log.failure("job {job_id}: on_failure hook {hook}", failure, job_id=job_id, hook=hook)


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


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown"


# ---------------------------------------------------------------- on_failure

FailureHook = Callable[[dict[str, Any], Any], Any]


def _failure_hooks(spec: Any) -> list[FailureHook]:
    """The on_failure option as callables: URLs are webhooks, dicts name their kind."""
    if spec is None:
        return []
    items = spec if isinstance(spec, list | tuple) else [spec]
    hooks: list[FailureHook] = []
    for item in items:
        if callable(item):
            hooks.append(_call_user_hook(item))
        elif isinstance(item, str) and item.startswith(("http://", "https://")):
            hooks.append(_webhook(item))
        elif isinstance(item, str) and item in ("log", ""):
            continue
        elif isinstance(item, Mapping):
            for key, value in item.items():
                if key == "webhook":
                    hooks.append(_webhook(str(value)))
                elif key == "mail":
                    hooks.append(_mail(value))
                elif key == "log":
                    continue
                else:
                    raise OptionError("on_failure", f"unknown hook {key!r}; expected "
                                                    f"webhook, mail or log")
        else:
            raise OptionError("on_failure", f"expected a webhook URL, a mapping with "
                                            f"webhook/mail, or a callable, got {item!r}")
    return hooks


def _call_user_hook(func: Callable[[dict[str, Any]], Any]) -> FailureHook:
    def hook(event: dict[str, Any], reactor: Any) -> Any:
        return func(event)
    return hook


def _webhook(url: str) -> FailureHook:
    if not url.startswith(("http://", "https://")):
        raise OptionError("on_failure", f"a webhook must be an http(s) URL, got {url!r}")

    # Imported when the hook is made (the app's start), not when a job fails: under
    # twistd --uid the venv may be unreadable by then (DESIGN §2).
    from io import BytesIO

    from twisted.web.client import Agent, FileBodyProducer
    from twisted.web.http_headers import Headers

    def post(event: dict[str, Any], reactor: Any) -> Deferred[Any]:
        body = FileBodyProducer(BytesIO(json.dumps(event).encode("utf-8")))
        agent = Agent(reactor, connectTimeout=10)
        d = agent.request(b"POST", url.encode("ascii"),
                          Headers({b"Content-Type": [b"application/json"]}), body)

        def check(response: Any) -> None:
            if not 200 <= response.code < 300:
                log.warn("on_failure webhook {url} answered {code}", url=url,
                         code=response.code)

        return d.addCallback(check)

    return post


def _mail(spec: Any) -> FailureHook:
    if not isinstance(spec, Mapping) or not spec.get("to"):
        raise OptionError("on_failure", "mail needs a mapping with at least 'to' "
                                        "(and 'from', 'host', 'port')")
    recipients = spec["to"] if isinstance(spec["to"], list) else [spec["to"]]
    sender = str(spec.get("from") or f"daemonapp@{socket.gethostname()}")
    host = str(spec.get("host") or "localhost")
    port = int(spec.get("port") or 25)

    from email.message import EmailMessage  # imported now: see _webhook

    from twisted.mail.smtp import sendmail

    def send(event: dict[str, Any], reactor: Any) -> Deferred[Any]:
        message = EmailMessage()
        message["Subject"] = f"daemonapp job {event['id']} ({event['kind']}) failed"
        message["From"] = sender
        message["To"] = ", ".join(str(r) for r in recipients)
        message.set_content(f"Job {event['id']} ({event['kind']}) failed after "
                            f"{event['attempts']} attempt(s).\n\n{event['error']}\n")
        d: Deferred[Any] = sendmail(host, sender, [str(r) for r in recipients],
                                    message.as_bytes(), reactor=reactor, port=port)
        return d

    return send
