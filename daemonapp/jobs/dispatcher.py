"""JobDispatcher: the daemon that claims jobs and runs each in a child process.

It claims while fewer than ``max_children`` run, spawns ``python -m
daemonapp.jobs.child`` with a clean environment, renews leases, enforces the
timeout and the memory limit, keeps the latest progress in memory (persisting
it at a bounded rate) and records the outcome with the job's fencing token.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp import alerts
from daemonapp.daemon import Daemon, OptionError
from daemonapp.durations import parse_duration, parse_size
from daemonapp.jobs._model import (
    DEFAULT_LEASE,
    Job,
    JobCancelled,
    StaleLease,
    cap_error,
    last_line,
)
from daemonapp.jobs.children import (
    CHILD_MODULE,
    JobChild,
    child_environment,
    child_pythonpath,
)
from daemonapp.jobs.notify import SubmitListener
from daemonapp.jobs.store import (
    StoreHealth,
    is_postgres_url,
    is_unavailable,
    open_store,
    store_target,
)

__all__ = ["CHILD_MODULE", "JobDispatcher", "child_environment", "child_pythonpath",
           "store_target"]

log = Logger()

#: An outcome the store could not take is written again after 0.25 s, doubling up to this.
OUTCOME_RETRY = 2.0
OUTCOME_RETRY_FIRST = 0.25
#: A graceful stop kills the children this long before the app's stop_timeout (at most
#: half of it), so that their jobs are back to pending before the app gives up.
STOP_MARGIN = 1.0
_KEPT = object()  # an outcome kept for a later try: the run keeps its slot


class _Run:
    """One attempt of a job here: its child, and what is kept of it for the store."""

    def __init__(self, job: Job, child: JobChild) -> None:
        self.job = job
        self.child = child
        self.started = time.monotonic()
        self.latest: tuple[float, str] | None = None
        self.persisted: tuple[float, str] | None = None
        self.last_persist = -1e9
        self.persist_call: Any = None
        self.persist_busy = False
        self.progress_writes = 0
        self.heartbeat_busy = False
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

    @property
    def ended(self) -> bool:
        """True once the child is gone."""
        return self.child.ended


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
    #: Its ``timeout`` is each job's (DESIGN §6), not one of its runs'.
    run_timeout = None

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
        self.lease = self._duration("lease", lease, positive=True)
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
        self.on_failure = alerts.parse_targets(on_failure, key="on_failure",
                                               compose_mail=_failure_mail, log=log)
        if isinstance(store, str) and is_postgres_url(store):
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
        self._health = StoreHealth(self.name, self._now)
        self._listener: SubmitListener | None = None  # made at start, on the app's reactor
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
    def _duration(key: str, value: object, *, positive: bool = False) -> float:
        try:
            return parse_duration(value, positive=positive)
        except ValueError as err:
            raise OptionError(key, str(err)) from None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start claiming, and renew the leases of running jobs every lease/3."""
        super().start()
        self._closing = False
        if self._listener is None:
            self._listener = SubmitListener(
                name=self.name, reactor=self.reactor, connect=self._open_listener,
                poke=self.poke, active=lambda: not self._closing,
                lost=lambda: self._health.failed("the LISTEN connection was lost"),
                is_unavailable=is_unavailable)
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
        """How long a graceful stop waits for running jobs: our own stop_timeout, else
        the app's less a margin to kill the children and put their jobs back before the
        app gives up on what is still in flight (1 s; half of it below 2 s)."""
        if self.stop_timeout is not None:
            return self.stop_timeout
        app_timeout = float(getattr(self.app, "stop_timeout", 30.0))
        return max(0.0, app_timeout - min(STOP_MARGIN, app_timeout / 2))

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
                run.child.kill(reason, signal.SIGKILL)
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
        if self._listener is not None:
            self._listener.stop()
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
                return None  # said once by StoreHealth; the loop backs off as when idle
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
        """A store call in the pool whose outcome tells StoreHealth whether it answers."""

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
        if self._listener is not None:
            self._listener.resume()
        self.poke()

    # ------------------------------------------------------------ wake-ups

    def poke(self) -> None:
        """Make a run due now (a slot freed, or a submit was notified)."""
        if self.app is None or not self.scheduled or self._closing:
            return
        if self.running or len(self._runs) + self._claiming >= self.max_children:
            return
        self.app.daemon_started(self, 0.0)

    def _start_listening(self) -> None:
        """LISTEN for submits on a connection of its own (PostgreSQL only)."""
        if self._listener is not None:
            self._listener.start()

    def _open_listener(self) -> Deferred[Any] | None:
        """Open a LISTEN connection in the pool, when the store has them (PostgreSQL)."""
        listen = getattr(self.store, "listener", None)
        return None if listen is None else self._store_call(listen)

    # ------------------------------------------------------------ children

    def _environment(self) -> dict[str, str]:
        if self._env is None:
            self._env = child_environment()
        return self._env

    def _spawn(self, job: Job) -> None:
        older = self._runs.get(job.id)
        if older is not None and not older.ended:
            # We lost this job's lease (heartbeats failed) and claimed it again.
            older.child.kill("stale", signal.SIGKILL)

        def progressed(value: tuple[float, str]) -> None:
            self._progress(run, value)

        def ended(outcome: str, error: str | None) -> None:
            self._child_ended(run, outcome, error)

        child = JobChild(job, reactor=self.reactor, on_progress=progressed, on_end=ended,
                         timeout=self.timeout, kill_grace=self.kill_grace)
        run = _Run(job, child)
        self._runs[job.id] = run
        app: Any = self.app
        app.begin("job")
        self.stats["jobs_started"] += 1
        try:
            child.spawn(self.python, self.modules, self.memory_limit, self._environment())
        except Exception as err:
            log.failure("job dispatcher {name}: cannot start a child for job {job_id}",
                        name=self.name, job_id=job.id)
            child.ended = True
            self._finish(run, "error", f"cannot start the job child: {err}")

    def _child_ended(self, run: _Run, outcome: str, error: str | None) -> None:
        if run.persist_call is not None and run.persist_call.active():
            run.persist_call.cancel()
        run.persist_call = None
        self._finish(run, outcome, error)

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
                         error=last_line(error))
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
                # Said once by StoreHealth; written again soon, and at once when the
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
            if run.record is None if run.ended else run.child.stop_reason is not None:
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
                run.child.kill(reason, signal.SIGKILL)
        elif not is_unavailable(result.value):  # an outage is said once, by StoreHealth
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
            error = cap_error(record.error)
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
        return [run.status() | {"pid": run.child.pid} for run in self._runs.values()]

    # ------------------------------------------------------------ failure hooks

    def _call_failure_hooks(self, job: Job, error: str) -> None:
        event = {"id": job.id, "kind": job.kind, "attempts": job.attempt,
                 "max_attempts": job.max_attempts, "error": cap_error(error),
                 "dispatcher": self.name, "holder": self.holder}
        alerts.send(event, self.on_failure, self.reactor, about="job {job_id}",
                    key="on_failure", log=log, job_id=job.id)


def _failure_mail(event: Mapping[str, Any]) -> tuple[str, str]:
    """The on_failure mail: subject and body of a job that failed for good."""
    return (f"daemonapp job {event['id']} ({event['kind']}) failed",
            f"Job {event['id']} ({event['kind']}) failed after {event['attempts']} "
            f"attempt(s).\n\n{event['error']}\n")
