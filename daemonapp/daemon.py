"""Daemon: a unit of periodic work that reschedules itself, and its backoff rule.

A Daemon knows how to run (get_work / do_work until the work or the budget runs out)
and how long to wait afterwards; *when* it runs is the scheduler's business (an
IScheduler, normally the DaemonApp), which it never imports.
"""

from __future__ import annotations

import threading
from inspect import iscoroutine
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemonapp.interfaces import IAsyncLock, IDaemon, ISchedule, IScheduler, LockUnavailable
from daemonapp.options import DAEMON_OPTIONS, OptionError, read_options
from daemonapp.runlock import LOCK_POLL, LOCK_YIELD_PAUSE, release_lock
from daemonapp.runstack import (
    coroutine_stack,
    error_summary,
    log_timed_out,
    safe_repr,
    thread_stack,
    timed_out_error,
)
from daemonapp.runstats import RunTally, send_alert
from daemonapp.runstep import AGAIN, ENDED, READY, WAITING, ThreadFailure, in_thread
from daemonapp.runstep import SYNC_TYPES as _SYNC_TYPES
from daemonapp.runstep import is_async as _is_async
from daemonapp.schedules import (
    FAILED,
    IDLE,
    LOCKED_OUT,
    TIMED_OUT,
    WORKED,
    YIELDED,
    BackoffSchedule,
    ClockSchedule,
    default_maximum_idle,
    idle_delays,
    next_idle_delay,
    yield_delay_of,
)

# SeedDaemon comes from this module's __getattr__ (below).
__all__ = ["ENDED", "FAILED", "IDLE", "LOCKED_OUT", "READY", "TIMED_OUT", "WAITING", "WORKED",
           "YIELDED", "Daemon", "OptionError", "SeedDaemon",  # noqa: F822
           "default_maximum_idle", "idle_delays", "next_idle_delay", "safe_repr"]

log = Logger()


# Markers for results that arrive later (a Deferred, a coroutine or a thread).
_GOT_JOB = "got_job"
_DID_WORK = "did_work"
_THREAD_ITEM = "thread_item"
_HOOK_FAILED = "hook_failed"
_LOCK_RESULT = "lock_result"
_LOCK_FAILED = "lock_failed"
_LOCK_OUTAGE = "lock_outage"


@implementer(IDaemon)
class Daemon:
    """Periodic work that reschedules itself and backs off while idle.

    Subclasses override :meth:`get_work` and :meth:`do_work`; the class
    attributes below are defaults that keywords (and YAML keys) override.
    """

    # The run's bookkeeping lives in slots: a daemon stays small (DESIGN's goal is
    # ≤ 1 KB above a LoopingCall), and a subclass's own attributes keep its instance
    # dict under CPython's shared-key limit. The scheduler keeps its own record.
    __slots__ = (
        "__dict__", "__weakref__", "_active", "_history", "_in_run", "_inside", "_lock_deadline",
        "_lock_handle", "_lock_held", "_resume", "_run_error", "_run_items", "_run_started",
        "_schedule", "_stop_waiters", "_stopping", "_tally", "_thread_ident",
        "_timed_out", "_waiting", "_waiting_on", "_worker", "_yield_delay", "last_end",
        "run_trigger",
    )

    #: The attribute names of DESIGN §1, in its order.
    ATTRIBUTES: ClassVar[tuple[str, ...]] = tuple(DAEMON_OPTIONS)

    run_every: float = 0.0  # required: a subclass or the constructor sets it
    increase_idle_by: float = 0.0
    multiply_idle_by: float = 1.0
    maximum_idle: float | None = None
    priority: int = 0
    max_items: int | None = None
    max_seconds: float | None = None
    jitter: float = 0.0
    in_thread: bool = False
    lock: str | None = None
    start_delay: float = 0.0
    schedule: str | None = None
    timezone: str | None = None
    misfire_grace: float = 3600.0
    catch_up: str = "once"
    timeout: float | None = None
    alert_after: int | None = None

    #: Methods the scheduler relies on (run_step and abort_run are its protocol with
    #: the daemon); a subclass that redefines one by accident would break its runs in
    #: ways hard to trace, so that is refused at once.
    _RESERVED: ClassVar[frozenset[str]] = frozenset({
        "_deactivate", "run_step", "_wait", "_arrived", "_arrived_failure", "_in_thread",
        "_thread_item", "_take_lock", "_lock_busy", "_lock_error", "_failed", "_end",
        "_release_lock", "abort_run", "_lock_still_held", "_hand_back", "run_timed_out",
        "_timed_out_end", "_outcome_changed",
    })

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        clash = sorted(Daemon._RESERVED & set(vars(cls)))
        if clash:
            raise TypeError(
                f"{cls.__name__} redefines {', '.join(clash)}: these names are "
                f"daemonapp.Daemon's internals; rename your method")

    def __init__(self, *, name: str | None = None, **attributes: Any) -> None:
        for key, value in read_options(type(self), attributes).items():
            setattr(self, key, value)
        if self.maximum_idle is None:
            self.maximum_idle = default_maximum_idle(
                self.run_every, self.increase_idle_by, self.multiply_idle_by)
        if name is not None and (not isinstance(name, str) or not name):
            raise OptionError("name", f"expected a non-empty string, got {name!r}")
        self.name: str = name or type(self).__name__
        self._tally = RunTally()  # the stats, and the runs not yet counted in them
        #: "manual" while a run an operator triggered (``daemonapp trigger``) is in
        #: flight (set by the scheduler as it starts), else None.
        self.run_trigger: str | None = None
        #: The runs not written yet of the app's daemonapp.history.RunLog for this
        #: name (its ``new``), from the first start in an app that keeps a history.
        self._history: Any = None
        self.app: IScheduler | None = None
        self._active = False
        self._stopping = False
        self._stop_waiters: list[Deferred[None]] = []
        # The run in progress.
        self._in_run = False
        self._inside = False  # inside run_step: results that arrive now are not woken
        self._resume: tuple[str, Any] | None = None
        self._run_started = 0.0
        #: When the last run ended (``reactor.seconds()``; 0.0 before the first).
        self.last_end = 0.0
        self._run_items = 0
        self._lock_handle: IAsyncLock | None = None
        self._lock_held = False
        self._lock_deadline: float | None = None  # while a run waits for its lock
        self._schedule: ISchedule | None = None  # from make_schedule(), at the first start
        self._yield_delay: float | None = None  # its optional yield_delay (ISchedule)
        # The run's supervision (DESIGN §10): what it waits on, whether it timed out.
        self._waiting: Deferred[Any] | None = None  # a hook's result (or a thread's)
        self._waiting_on: tuple[str, object, Any] = ("", None, None)  # phase, job, coroutine
        self._worker = False  # waiting on a thread
        self._thread_ident: int | None = None
        self._timed_out = False
        self._run_error: str | None = None  # the summary of the run's failure

    # ------------------------------------------------------------------ hooks

    def get_work(self) -> Any:
        """Return a job, or None when there is nothing to do (may be a Deferred)."""
        return None

    def make_schedule(self) -> ISchedule:
        """The policy that picks this daemon's due times (called once, at its first start).

        The default is DESIGN §1's run_every with the idle backoff, or DESIGN §8's
        clock schedule when ``schedule`` is set; override it to run on another policy
        (any `ISchedule`).
        """
        if self.schedule is not None:
            return ClockSchedule(self)
        return BackoffSchedule(self)

    def do_work(self, job: Any) -> Any:
        """Handle one job returned by :meth:`get_work` (may return a Deferred)."""
        return None

    # -------------------------------------------------------------- lifecycle

    @property
    def reactor(self) -> Any:
        """The scheduler's clock/reactor (available once the daemon was added)."""
        if self.app is None:
            raise RuntimeError(f"daemon {self.name!r} was not added to a DaemonApp")
        return self.app.reactor

    @property
    def stats(self) -> dict[str, Any]:
        """DESIGN §1's stats dict (the runs that ended since it was last read are counted
        into it now: a run's end only tallies them)."""
        tally = self._tally
        return tally.stats if tally.last is None else tally.apply()

    @property
    def running(self) -> bool:
        """True while a run is in progress."""
        return self._in_run

    @property
    def scheduled(self) -> bool:
        """True from start() until stop() is called or the schedule has no more runs
        (a run in flight may still be finishing when it turns False)."""
        return self._active and not self._stopping

    @property
    def schedule_policy(self) -> ISchedule | None:
        """The ISchedule picking this daemon's due times (`make_schedule()`'s, made at
        its first start; None before): the scheduler tells it of pauses and triggers."""
        return self._schedule

    def start(self) -> None:
        """Make the first run due start_delay from now."""
        if self.app is None:
            raise RuntimeError(
                f"daemon {self.name!r} has no scheduler: add it with DaemonApp.add(daemon)")
        if self._active:
            return
        self._active = True
        self._stopping = False
        if self._schedule is None:
            self._schedule = self.make_schedule()
            self._yield_delay = yield_delay_of(self._schedule)
        if self._history is None:
            run_history = getattr(self.app, "run_history", None)
            if run_history is not None:
                self._history = run_history.attach(self.name).new
        self.app.daemon_started(self, self._schedule.first_delay(self.app.seconds()))

    def stop(self) -> Deferred[None]:
        """Run no more; the Deferred fires once a run in progress has ended."""
        if not self._active:
            return succeed(None)
        self._stopping = True
        if self._in_run:
            d: Deferred[None] = Deferred()
            self._stop_waiters.append(d)
            return d
        self._deactivate()
        return succeed(None)

    def _deactivate(self) -> None:
        self._active = False
        self._stopping = False
        self.stats["next_run_at"] = None
        close = getattr(self._schedule, "close", None)
        if close is not None:
            close()  # a clock schedule stops watching the clock
        if self.app is not None:
            self.app.daemon_stopped(self)

    # ------------------------------------------------------------------- runs

    def run_step(self, deadline: float, now: float | None = None) -> int:
        """Run items until the run ends, waits, or the clock passes ``deadline``.

        Runs at least one item. Called by the scheduler only (it starts a run, or goes
        on with one after a yield or a wake); returns READY, WAITING, ENDED or AGAIN. The
        synchronous path is the scheduler's hot loop. ``now``: the scheduler's
        ``seconds()`` (a run that starts here starts then; None: read it).
        """
        app = self.app
        assert app is not None
        seconds = app.seconds
        self._inside = True
        try:
            if not self._in_run:
                self._in_run = True
                started = self._run_started = seconds() if now is None else now
                self._run_items = items = 0
                self._resume = resume = None
                if self.lock is not None:
                    self._lock_deadline = started + app.lock_wait
                    status = self._take_lock()
                    if status != READY:
                        return status
                    resume = self._resume  # (the lock's answer, when it came at once)
            else:
                if self._lock_deadline is not None and not self._lock_held \
                        and self._resume is None:
                    if self._timed_out:
                        return self._timed_out_end(None, None)
                    status = self._take_lock()  # back from a wait for the lock
                    if status != READY:
                        return status
                items = self._run_items
                resume = self._resume
            # (get_work and do_work are looked up at each call: a bound method kept in a
            # local is an allocation per step, and most steps are runs of one item.)
            max_items = self.max_items
            max_seconds = self.max_seconds
            in_thread = self.in_thread
            sync_types = _SYNC_TYPES
            while True:
                if resume is not None:
                    self._resume = None
                    kind, value = resume
                    resume = None
                    if self._timed_out:
                        self._run_items = items
                        return self._timed_out_end(kind, value)
                    if kind == _GOT_JOB:
                        job = value
                    elif kind == _DID_WORK:
                        job = _DID_WORK
                    elif kind == _THREAD_ITEM:
                        job = value if value is None else _DID_WORK
                    elif kind == _LOCK_RESULT:
                        if not value:
                            return self._lock_busy()
                        self._lock_held = True
                        continue
                    elif kind == _LOCK_FAILED:
                        return self._failed(value, "lock", None)
                    elif kind == _LOCK_OUTAGE:
                        # The lock logged the outage (rate-limited): no line here.
                        return self._end(LOCKED_OUT)
                    else:  # _HOOK_FAILED
                        self._run_items = items
                        failure, phase, job = value
                        return self._failed(failure, phase, job)
                else:
                    if self._stopping:
                        self._run_items = items
                        return self._end(WORKED if items else IDLE, True)
                    if in_thread:
                        self._run_items = items
                        return self._in_thread()
                    try:
                        job = self.get_work()
                    except Exception:
                        self._run_items = items
                        return self._failed(Failure(), "get_work", None)
                    if job is not None and type(job) not in sync_types and _is_async(job):
                        self._run_items = items
                        if self._wait(job, _GOT_JOB, "get_work", None) == WAITING:
                            return WAITING
                        resume = self._resume
                        continue
                if job is None:
                    self._run_items = items
                    return self._end(WORKED if items else IDLE, True)
                if job is not _DID_WORK:
                    try:
                        result = self.do_work(job)
                    except Exception:
                        self._run_items = items
                        return self._failed(Failure(), "do_work", job)
                    if result is not None and type(result) not in sync_types and _is_async(result):
                        self._run_items = items
                        if self._wait(result, _DID_WORK, "do_work", job) == WAITING:
                            return WAITING
                        resume = self._resume
                        continue
                # One item is done: the budget is checked after each do_work.
                items += 1
                if self._lock_held and not self._lock_still_held():
                    self._run_items = items
                    return self._end(LOCKED_OUT)
                if max_items is not None and items >= max_items:
                    self._run_items = items
                    return self._end(YIELDED, True)
                now = seconds()
                if max_seconds is not None and now - self._run_started >= max_seconds:
                    self._run_items = items
                    return self._end(YIELDED, True)
                if now >= deadline:
                    self._run_items = items
                    return READY
        finally:
            self._inside = False

    def _wait(self, result: Any, kind: str, phase: str, job: object) -> int:
        """Wait for a Deferred or coroutine; READY when it had already fired."""
        coroutine = result if iscoroutine(result) else None
        d: Deferred[Any] = Deferred.fromCoroutine(result) if coroutine is not None else result
        self._resume = None
        d.addCallbacks(self._arrived, self._arrived_failure, callbackArgs=(kind,),
                       errbackArgs=(phase, job))
        if self._resume is not None:
            return READY
        self._waiting = d  # what a timeout cancels (DESIGN §10)
        self._waiting_on = (phase, job, coroutine)
        return WAITING

    def _arrived(self, value: Any, kind: str) -> None:
        self._resume = (kind, value)
        self._waiting = None
        self._worker = False
        if not self._inside and self.app is not None:
            self.app.wake(self)

    def _arrived_failure(self, failure: Failure, phase: str, job: object) -> None:
        if failure.check(ThreadFailure):
            exc = failure.value
            assert isinstance(exc, ThreadFailure)
            failure, phase, job = exc.failure, exc.phase, exc.job
        self._arrived((failure, phase, job), _HOOK_FAILED)

    def _in_thread(self) -> int:
        """One item (get_work, then do_work when there is a job) in the app's thread pool."""
        app = self.app
        assert app is not None
        d = in_thread(app, self._thread_item)
        status = self._wait(d, _THREAD_ITEM, "get_work", None)
        self._worker = status == WAITING
        return status

    def _thread_item(self) -> object:
        self._thread_ident = threading.get_ident()  # for its stack, should it time out
        try:
            job = self.get_work()
        except Exception:
            raise ThreadFailure("get_work", None, Failure()) from None
        if job is None:
            return None
        try:
            self.do_work(job)
        except Exception:
            raise ThreadFailure("do_work", job, Failure()) from None
        return _DID_WORK

    def _take_lock(self) -> int:
        """One try at the lock (never a wait inside the lock: see _lock_busy)."""
        app = self.app
        assert app is not None and self.lock is not None
        try:
            if self._lock_handle is None:
                self._lock_handle = app.lock_for(self.lock)
            d: Deferred[bool] = self._lock_handle.acquire(0)  # type: ignore[assignment]
        except Exception:
            return self._failed(Failure(), "lock", None)
        self._resume = None
        d.addCallbacks(self._arrived, self._lock_error, callbackArgs=(_LOCK_RESULT,))
        if self._resume is None:
            return WAITING
        return READY

    def _lock_busy(self) -> int:
        """The lock is held elsewhere: try again soon, or give up after lock_wait."""
        app = self.app
        assert app is not None and self._lock_deadline is not None
        now = app.seconds()
        if self._stopping or now >= self._lock_deadline:
            return self._end(LOCKED_OUT)
        app.sleep(self, min(now + LOCK_POLL, self._lock_deadline) - now)
        return WAITING

    def _lock_error(self, failure: Failure) -> None:
        if failure.check(LockUnavailable):
            self._arrived(None, _LOCK_OUTAGE)
        else:
            self._arrived(failure, _LOCK_FAILED)

    def _lock_still_held(self) -> bool:
        """False once the held lock was lost (a lease not renewed for ttl/2)."""
        handle = self._lock_handle
        still_held = getattr(handle, "still_held", None)
        if still_held is None:
            return True
        try:
            held = bool(still_held())
        except Exception:
            log.failure("daemon {daemon}: cannot tell whether lock {lock} is still held",
                        daemon=self.name, lock=self.lock)
            held = False
        if not held:
            log.warn("daemon {daemon} lost lock {lock}: the run ends after this item",
                     daemon=self.name, lock=self.lock)
        return held

    def _failed(self, failure: Failure, phase: str, job: object) -> int:
        log.failure("daemon {daemon} failed in {phase} (job {job})", failure,
                    daemon=self.name, phase=phase, job=safe_repr(job))
        self.stats["failures"] += 1
        self._run_error = error_summary(failure, phase)
        return self._end(FAILED)

    # ------------------------------------------------------------ supervision

    @property
    def run_started_at(self) -> float | None:
        """When the run in flight started (``reactor.seconds()``); None between runs."""
        return self._run_started if self._in_run else None

    @property
    def run_timeout(self) -> float | None:
        """The longest a run may take (DESIGN §10): ``timeout``. A subclass whose own
        ``timeout`` means something else (the job dispatcher's: each job's) sets None."""
        return self.timeout

    def cancel_work(self, pending: Deferred[Any]) -> None:
        """End the work a run waits on past its ``timeout``: the default cancels the
        Deferred. Override it to stop the work another way (the ``command`` daemon kills
        its program's process group); the run ends, timed-out, once ``pending`` fires."""
        pending.cancel()

    def run_timed_out(self) -> None:
        """The run in flight passed ``timeout`` (the scheduler calls this at that moment).

        A Deferred it waits on is cancelled (`cancel_work`); a thread cannot be stopped,
        so its stack is logged and the run ends once the thread returns; a run between
        two time slices ends now, one waiting for its lock at its next try. Each way the
        outcome is TIMED_OUT, logged with the run's stack where there is one.
        """
        if not self._in_run or self._timed_out:
            return
        self._timed_out = True
        app = self.app
        assert app is not None
        elapsed = app.seconds() - self._run_started
        timeout = self.run_timeout
        phase, job, coroutine = self._waiting_on if self._waiting is not None else (
            "", None, None)
        if self._worker:
            log_timed_out(self.name, elapsed, timeout, "in a thread, which cannot be stopped: "
                          "no new run until it returns. Its stack:\n{stack}",
                          stack=thread_stack(self._thread_ident) or "(the thread is gone)\n")
            return
        pending = self._waiting
        if pending is not None:
            stack = coroutine_stack(coroutine) if coroutine is not None else ""
            log_timed_out(self.name, elapsed, timeout,
                          "waiting in {phase} (job {job}); cancelling it.{where}",
                          phase=phase, job=safe_repr(job),
                          where=f" Its stack:\n{stack}" if stack else f" It waits on {pending!r}")
            self.cancel_work(pending)
            return
        if self._lock_deadline is not None and not self._lock_held and self._resume is None:
            log_timed_out(self.name, elapsed, timeout, "waiting for lock {lock}", lock=self.lock)
            return  # it ends at its next try of the lock, within LOCK_POLL
        log_timed_out(self.name, elapsed, timeout, "between two items ({items} done): the run "
                      "ends now", items=self._run_items)
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == _LOCK_RESULT and resume[1]:
            self._lock_held = True  # taken just now: _end gives it back
        self._timed_out_end(None, None)

    def _timed_out_end(self, kind: str | None, value: Any) -> int:
        """End the run that timed out, whatever arrived (a cancelled hook's failure, a
        thread's return, a lock's answer)."""
        self._timed_out = False
        self._waiting = None
        self._worker = False
        if kind == _HOOK_FAILED:
            failure, phase, job = value
            error = timed_out_error(self.name, self.run_timeout, failure, phase, job)
        else:
            error = timed_out_error(self.name, self.run_timeout)
        if kind == _THREAD_ITEM:
            app = self.app
            assert app is not None
            log.warn("daemon {daemon}: the thread that timed out returned after {elapsed:.3f} s",
                     daemon=self.name, elapsed=app.seconds() - self._run_started)
        elif kind == _LOCK_RESULT and value:
            self._lock_held = True  # taken just now: _end gives it back
        self._run_error = error
        return self._end(TIMED_OUT)

    def _outcome_changed(self, run: tuple[Any, ...], delay: float | None) -> tuple[Any, ...]:
        """A run's outcome differs from the last run's, or it failed: count it, and send
        the alert or recovery of the streak of failed runs it makes or ends (DESIGN
        §10), the run counted in the stats by then; the run with its error summary (a
        failed or timed-out run has one), as the history keeps it."""
        error, self._run_error = self._run_error, None
        if error is not None:
            run = (*run[:5], error)
        event = self._tally.count(run, delay, self.alert_after, self.name)
        if event is not None:
            send_alert(self.app, event)
        return run

    def abort_run(self, failure: Failure, phase: str) -> None:
        """End the run as failed after an exception escaped the run's own handling.

        Called by the scheduler with whatever state the run is in (DESIGN §1: no
        daemon is ever left in flight by an exception). When closing the run fails
        too, it is closed by hand so that nothing (a stop, idle exit) waits on it.
        """
        self._inside = False
        self._resume = None
        app = self.app
        assert app is not None
        if not self._in_run:
            self._in_run = True
            self._run_started = app.seconds()
            self._run_items = 0
        try:
            self._failed(failure, phase, None)
            return
        except Exception:
            log.failure("daemon {daemon}: ending its failed run failed too", daemon=self.name)
        self._in_run = False
        self._lock_deadline = None
        if self._lock_held:
            self._lock_held = False
            try:
                self._release_lock()
            except Exception:
                log.failure("daemon {daemon} could not release lock {lock}",
                            daemon=self.name, lock=self.lock)
        delay = self.maximum_idle if self.maximum_idle is not None else self.run_every
        self._hand_back(app, app.seconds(), delay)

    def _end(self, outcome: str, own_loop: bool = False) -> int:
        """Close the run, ask the schedule for the next delay, and hand the daemon back.

        ``own_loop``: called from run_step's own loop, whose caller takes AGAIN.
        """
        app = self.app
        schedule = self._schedule
        assert app is not None and schedule is not None
        now = self.last_end = app.seconds()
        history = self._history
        trigger = self.run_trigger
        if trigger is not None:
            self.run_trigger = None
        elif history is not None:
            try:
                trigger = schedule.trigger  # type: ignore[attr-defined] # (this run's)
            except AttributeError:
                trigger = "schedule"  # a schedule that does not say
        tally = self._tally  # (counted, not written: see daemonapp.runstats)
        same = outcome is tally.outcome  # like the last run (a failure never is)
        delay = self._yield_delay  # a yield after a yield need not ask (ISchedule)
        # quick: no policy asked, no alert: the next run may start at this run's end.
        quick = same and outcome is YIELDED and delay is not None
        if not quick:
            delay = schedule.next_delay(outcome, now)
        self._lock_deadline = None
        if self._lock_held:
            self._lock_held = False
            if outcome == YIELDED and delay is not None:
                delay = max(delay, LOCK_YIELD_PAUSE)
            self._release_lock()
        started = self._run_started
        items = self._run_items
        tally.items += items
        tally.seconds += now - started
        run = (started, now, outcome, items, trigger, None)  # history's record, tally's last
        if same:
            tally.same += 1  # no streak begins or ends
            tally.last = run
            tally.delay = delay
        else:
            run = self._outcome_changed(run, delay)
        if history is not None:  # (its runs not written yet: see daemonapp.history)
            if not history:  # the first since the last write: have one arranged
                app.run_history.mark(self.name)
            history.append(run)
        if not self._stopping and delay is not None:  # _hand_back's common path, inline
            self._in_run = False
            if quick and own_loop and delay == 0:
                return AGAIN  # (run_step's caller, the scheduler, queues it again)
            app.run_ended(self, delay, now)
        else:
            self._hand_back(app, now, delay)
        return ENDED

    def _hand_back(self, app: IScheduler, now: float, delay: float | None) -> None:
        """The run is over: tell the scheduler when the daemon is due (or that it stopped).

        ``delay`` None: the schedule has no more runs, so the daemon stops.
        """
        self._in_run = False
        if self._stopping or delay is None:
            waiters, self._stop_waiters = self._stop_waiters, []
            self._deactivate()
            app.run_ended(self, None)
            for waiter in waiters:
                waiter.callback(None)
        else:
            self.stats["next_run_at"] = now + delay
            app.run_ended(self, delay)

    def _release_lock(self) -> None:
        assert self._lock_handle is not None
        release_lock(self._lock_handle, self.name, self.lock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def __getattr__(name: str) -> Any:
    # SeedDaemon lives in daemonapp.seed, which imports this module: re-exported lazily
    # (PEP 562), so that `from daemonapp.daemon import SeedDaemon` keeps working.
    if name == "SeedDaemon":
        from daemonapp.seed import SeedDaemon

        return SeedDaemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
