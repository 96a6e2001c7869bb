"""DaemonApp: one scheduler for all daemons, and the lifetime of the process.

The app composes the scheduler (daemonapp.scheduler: the heap, the ready queue,
time slices, one timer) with the lifetime of the process: soft and hard deadlines,
idle exit computed from the schedule, graceful stop, signals and the exit status.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daemonapp.daemon import Daemon
from daemonapp.durations import parse_duration
from daemonapp.interfaces import (
    IActivityMonitor,
    IAsyncLock,
    IListener,
    ILockProvider,
    IScheduler,
)
from daemonapp.scheduler import Scheduler

__all__ = ["EXIT_ABANDONED", "EXIT_CONFIG", "EXIT_OK", "DaemonApp"]

log = Logger()

EXIT_OK = 0
EXIT_ABANDONED = 1
EXIT_CONFIG = 2


def _optional_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


@implementer(IScheduler, IActivityMonitor)
class DaemonApp(MultiService):
    """Runs daemons and listeners on one reactor and owns the process lifetime."""

    def __init__(
        self,
        *,
        stay_alive_for: float | str | None = None,
        shutdown_after: float | str | None = None,
        shutdown_if_idle: float | str | None = None,
        stop_timeout: float | str = 30.0,
        time_slice: float | str = 0.010,
        reactor: Any = None,
        clock: Any = None,
        threadpool: Any = None,
        state_dir: str | None = None,
        locks: ILockProvider | None = None,
        lock_wait: float | str = 10.0,
        stop_reactor: bool = True,
        handle_signals: bool = True,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.stay_alive_for = _optional_seconds("stay_alive_for", stay_alive_for)
        self.shutdown_after = _optional_seconds("shutdown_after", shutdown_after)
        self.shutdown_if_idle = _optional_seconds("shutdown_if_idle", shutdown_if_idle)
        self.stop_timeout = parse_duration(stop_timeout)
        self.time_slice = parse_duration(time_slice)
        self.lock_wait = parse_duration(lock_wait)
        if reactor is None:
            reactor = clock
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor: Any = reactor
        self.seconds: Callable[[], float] = reactor.seconds
        self._threadpool = threadpool
        self.state_dir = state_dir
        self._locks = locks
        self.stop_reactor = stop_reactor
        self.handle_signals = handle_signals
        self.daemons: dict[str, Daemon] = {}
        self.listeners: list[IListener] = []
        self.exit_status: int | None = None
        self.stop_reason: str | None = None
        self.started_at: float | None = None
        #: The scheduler: which daemon runs when (its IScheduler methods are the app's).
        self.scheduler = Scheduler(reactor, self.time_slice)
        scheduler = self.scheduler
        # Bound once: they are on every run's path.
        self.daemon_started = scheduler.daemon_started
        self.daemon_stopped = scheduler.daemon_stopped
        self.run_ended = scheduler.run_ended
        self.wake = scheduler.wake
        self.sleep = scheduler.sleep
        # The lifetime.
        self._activity: dict[str, int] = {}
        self._last_request_end: float | None = None
        self._soft_passed = False
        self._soft_timer: Any = None
        self._hard_timer: Any = None
        self._idle_timer: Any = None
        self._stop_timer: Any = None
        self._stopping = False
        self._stop_started = False
        self._stop_waiters: list[Deferred[None]] = []
        self._ended = False
        self._end_waiters: list[Deferred[int]] = []
        self._stop_hooks: list[Callable[[], Any]] = []
        self._reopen_hooks: list[Callable[[], Any]] = []
        self._signals_seen = 0

    # ------------------------------------------------------------ the public API

    @property
    def threadpool(self) -> Any:
        """The pool for in_thread daemons: the injected one, else the reactor's."""
        if self._threadpool is None:
            get_pool = getattr(self.reactor, "getThreadPool", None)
            self._threadpool = get_pool() if get_pool is not None else None
        return self._threadpool

    def add(self, daemon: Daemon) -> None:  # type: ignore[override]
        """Add a daemon; it starts with the app (or at once when the app runs)."""
        if daemon.name in self.daemons:
            raise ValueError(f"a daemon named {daemon.name!r} was already added")
        if daemon.app is not None and daemon.app is not self:
            raise ValueError(f"daemon {daemon.name!r} belongs to another DaemonApp")
        daemon.app = self
        self.daemons[daemon.name] = daemon
        if self.running and not self._stopping:
            daemon.start()

    def remove(self, daemon: Daemon) -> Deferred[None]:
        """Stop a daemon and forget it once its run in flight has ended."""

        def forget(_: object) -> None:
            if self.daemons.get(daemon.name) is daemon:
                del self.daemons[daemon.name]

        return daemon.stop().addCallback(forget)

    def add_listener(self, listener: IListener) -> None:
        """Serve a listener on this app's reactor; its requests count as activity."""
        listener.set_activity_monitor(self)
        self.listeners.append(listener)
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]

    def add_stop_hook(self, hook: Callable[[], Any]) -> None:
        """Call ``hook`` during a graceful stop, after the daemons have stopped."""
        self._stop_hooks.append(hook)

    def on_reopen_logs(self, hook: Callable[[], Any]) -> None:
        """Call ``hook`` on SIGHUP (logrotate)."""
        self._reopen_hooks.append(hook)

    def lock_for(self, name: str) -> IAsyncLock:
        """A lock handle for a daemon's ``lock:`` (flock in state_dir by default)."""
        return self._lock_provider().lock_for(name)

    def _lock_provider(self) -> ILockProvider:
        if self._locks is None:
            from daemonapp.locks import LockProvider

            provider: ILockProvider = LockProvider(reactor=self.reactor,
                                                   state_dir=self.state_dir)
            self._locks = provider
        return self._locks

    def when_ended(self) -> Deferred[int]:
        """A Deferred that fires with the exit status once the app has ended."""
        if self._ended:
            assert self.exit_status is not None
            return succeed(self.exit_status)
        d: Deferred[int] = Deferred()
        self._end_waiters.append(d)
        return d

    def run(self) -> int:
        """Start the app on its reactor, run the reactor, return the exit status."""
        self.reactor.callWhenRunning(self.startService)
        self.reactor.run()
        return EXIT_ABANDONED if self.exit_status is None else self.exit_status

    # --------------------------------------------------------------- IService

    def privilegedStartService(self) -> None:
        # twistd calls this before its --uid/--gid switch, startService after it: what
        # a run may import later (the lock machinery, a database driver) is imported
        # now, while the checkout or venv is still readable (DESIGN §2).
        self._lock_provider()
        super().privilegedStartService()  # type: ignore[no-untyped-call]

    def startService(self) -> None:
        self._prepare_sockets()
        super().startService()  # type: ignore[no-untyped-call]
        now = self.seconds()
        self.started_at = now
        log.info("daemonapp starting: {count} daemons, {listeners} listeners",
                 count=len(self.daemons), listeners=len(self.listeners))
        if self.handle_signals and hasattr(self.reactor, "callWhenRunning"):
            # Installed from callWhenRunning: the reactor installs its own handlers
            # when it starts, and they would replace ours (twistd then exits 143).
            self.reactor.callWhenRunning(self._install_signal_handlers)
        if self.shutdown_after is not None:
            self._hard_timer = self.reactor.callLater(self.shutdown_after, self._hard_deadline)
        for daemon in list(self.daemons.values()):
            daemon.start()
        if self.stay_alive_for:
            self._soft_timer = self.reactor.callLater(self.stay_alive_for, self._soft_deadline)
        else:
            self._soft_deadline()  # no minimum life: idle exit is decided at start

    def _prepare_sockets(self) -> None:
        """Bind every socket of every child before any of them takes a path over.

        A child that binds in two steps (a listener, the status socket) has
        ``prepare()`` and ``abandon()``. When one cannot bind (a port in use), those
        prepared are abandoned and the error raised: a start that fails leaves a
        previous process's paths and sockets exactly as they were (DESIGN §4).
        """
        prepared: list[Any] = []
        try:
            for child in list(self):
                prepare = getattr(child, "prepare", None)
                if prepare is not None:
                    prepare()
                    prepared.append(child)
        except Exception:
            for child in prepared:
                child.abandon()
            raise

    def stopService(self) -> Deferred[None]:
        """Stop gracefully (idempotent); fires when the stop is over."""
        return self.stop("service stopped")

    @property
    def max_lateness(self) -> float:
        """The largest lateness (start - due time) of any run so far, in seconds."""
        return self.scheduler.max_lateness

    # ---------------------------------------------------------------- activity

    def begin(self, kind: str) -> None:
        self._activity[kind] = self._activity.get(kind, 0) + 1

    def end(self, kind: str) -> None:
        count = self._activity.get(kind, 0) - 1
        self._activity[kind] = max(0, count)
        if kind == "request":
            self._last_request_end = self.seconds()
            if self.shutdown_if_idle is not None and self._soft_passed:
                self._arm_idle_timer()
        if self.shutdown_if_idle is not None and self._soft_passed:
            self._check_idle()

    def request_limit_reached(self, reason: str) -> None:
        self.stop(f"max_requests: {reason}", 0)

    # ---------------------------------------------------------------- lifetime

    def _soft_deadline(self) -> None:
        self._soft_timer = None
        self._soft_passed = True
        if self.shutdown_if_idle is not None:
            self.scheduler.idle_hook = self._check_idle
        if self.shutdown_if_idle is not None:
            self._check_idle()

    def _hard_deadline(self) -> None:
        self._hard_timer = None
        self.stop("hard deadline (shutdown_after)", 0)

    def _arm_idle_timer(self) -> None:
        assert self.shutdown_if_idle is not None and self._last_request_end is not None
        at = self._last_request_end + self.shutdown_if_idle
        delay = max(0.0, at - self.seconds())
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(delay)
        else:
            self._idle_timer = self.reactor.callLater(delay, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        self._idle_timer = None
        self._check_idle()

    def _check_idle(self) -> None:
        """Stop when nothing is in flight and the next work is a threshold away."""
        threshold = self.shutdown_if_idle
        if threshold is None or self._stopping or not self.running:
            return
        scheduler = self.scheduler
        if (scheduler.runs_in_flight or scheduler.has_ready()
                or any(self._activity.values())):
            return
        now = self.seconds()
        if self._last_request_end is not None and now - self._last_request_end < threshold:
            return
        if scheduler.next_due() - now >= threshold:
            self.stop(f"idle: nothing due within {threshold:g} s", 0)

    def stop(self, reason: str, status: int = 0) -> Deferred[None]:
        """Stop gracefully: finish what is in flight, then end with ``status``.

        Idempotent: a second call returns a Deferred for the same stop.
        """
        waiter: Deferred[None] = Deferred()
        if self._ended:
            waiter.callback(None)
            return waiter
        self._stop_waiters.append(waiter)
        if self._stop_started:
            return waiter
        self._stop_started = True
        self._stopping = True
        self.scheduler.stopping = True  # a graceful stop starts no new run
        self.stop_reason = reason
        self.exit_status = status
        log.info("daemonapp stopping: {reason}", reason=reason)
        for timer in (self._soft_timer, self._hard_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._soft_timer = self._hard_timer = self._idle_timer = None
        if self.running:
            self._stop_timer = self.reactor.callLater(self.stop_timeout, self._abandon)
        work: list[Deferred[Any]] = [maybeDeferred(listener.drain)
                                     for listener in self.listeners]
        work += [daemon.stop() for daemon in list(self.daemons.values())]
        DeferredList(work, consumeErrors=True).addCallback(self._daemons_stopped)
        return waiter

    def _daemons_stopped(self, results: object) -> Deferred[Any]:
        for ok, value in results:  # type: ignore[attr-defined]
            if not ok:
                log.failure("error while stopping", value)
        hooks = [maybeDeferred(hook) for hook in self._stop_hooks]
        if self._locks is not None:
            hooks.append(maybeDeferred(self._locks.close))
        d = DeferredList(hooks, consumeErrors=True)
        d.addCallback(self._hooks_done)
        return d

    def _hooks_done(self, results: object) -> Deferred[Any]:
        for ok, value in results:  # type: ignore[attr-defined]
            if not ok:
                log.failure("error in a stop hook", value)
        d = maybeDeferred(super().stopService) if self.running else succeed(None)
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result: object) -> None:
        if isinstance(result, Failure):
            log.failure("error while stopping services", result)
        if self._ended:
            return
        if self._stop_timer is not None and self._stop_timer.active():
            self._stop_timer.cancel()
        self._stop_timer = None
        self._end(self.exit_status if self.exit_status is not None else 0)

    def _in_flight(self) -> list[str]:
        what = [f"run of daemon {d.name!r}" for d in self.scheduler.running()]
        what += [f"{count} {kind}(s)" for kind, count in self._activity.items() if count]
        return what

    def _abandon(self, why: str | None = None) -> None:
        """Give up on what is left (stop_timeout passed, or a second signal): exit 1."""
        self._stop_timer = None
        if self._ended:
            return
        left = self._in_flight()
        why = why or f"after stop_timeout ({self.stop_timeout:g} s)"
        log.error("daemonapp abandoned work {why}: {left}", why=why,
                  left=", ".join(left) or "stop hooks")
        self.exit_status = EXIT_ABANDONED
        if self.running:
            MultiService.stopService(self)  # type: ignore[no-untyped-call]
        self._end(EXIT_ABANDONED)
        threads = [d for d in self.scheduler.running() if d.in_thread]
        if threads and self.stop_reactor and hasattr(self.reactor, "stop"):
            # Pool workers are non-daemon threads: a hung hook would block the exit.
            log.error("exiting at once: {count} thread(s) still busy", count=len(threads))
            os._exit(EXIT_ABANDONED)

    def _end(self, status: int) -> None:
        self._ended = True
        self.exit_status = status
        self._stopping = True
        self.scheduler.stopping = True
        self.scheduler.cancel_timers()
        if self._stop_timer is not None and self._stop_timer.active():
            self._stop_timer.cancel()
        self._stop_timer = None
        log.info("daemonapp ended with exit status {status}", status=status)
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(status)
        stop_waiters, self._stop_waiters = self._stop_waiters, []
        for stop_waiter in stop_waiters:
            stop_waiter.callback(None)
        if self.stop_reactor and hasattr(self.reactor, "stop"):
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass  # already on its way down (twistd's own shutdown called stopService)

    # ----------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self._handle_signal, signum)

    def _handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reopening log files")
            for hook in self._reopen_hooks:
                try:
                    hook()
                except Exception:
                    log.failure("error while reopening logs")
            return
        self._signals_seen += 1
        if self._signals_seen == 1:
            self.stop(f"signal {name}", 0)
        else:
            log.warn("second {signal}: stopping at once", signal=name)
            if self._in_flight():
                self._abandon(f"second {name}")
            else:
                self._end(self.exit_status or 0)

    # ------------------------------------------------------------------ status

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the app for `daemonapp status`."""
        now = self.seconds()
        if self._ended:
            state = "ended"
        elif self._stopping:
            state = "stopping"
        else:
            state = "running" if self.running else "new"
        daemons = []
        for daemon in self.daemons.values():
            entry: dict[str, Any] = {
                "name": daemon.name,
                "type": type(daemon).__module__ + ":" + type(daemon).__qualname__,
                "priority": daemon.priority,
                "running": daemon.running,
                "lateness": self.scheduler.lateness(daemon),
            }
            entry.update(daemon.stats)
            daemons.append(entry)
        snap: dict[str, Any] = {
            "pid": os.getpid(),
            "state": state,
            "now": now,
            "started_at": self.started_at,
            "uptime": None if self.started_at is None else now - self.started_at,
            "stop_reason": self.stop_reason,
            "in_flight": dict(self._activity),
            "max_lateness": self.max_lateness,
            "daemons": daemons,
            "listeners": [listener.snapshot() for listener in self.listeners],
        }
        # Daemons that run jobs (the job dispatcher) describe them; the app only asks.
        for daemon in self.daemons.values():
            jobs_snapshot = getattr(daemon, "jobs_snapshot", None)
            if jobs_snapshot is not None:
                snap["jobs"] = jobs_snapshot()
                break
        return snap
