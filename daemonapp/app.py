"""DaemonApp: one scheduler for all daemons, and the lifetime of the process.

The app composes the scheduler (daemonapp.scheduler: the heap, the ready queue,
time slices, one timer) with the lifetime of the process: soft and hard deadlines,
idle exit computed from the schedule, graceful stop, signals and the exit status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from zope.interface import implementer

from daemonapp import alerts as alerts_module
from daemonapp import gcfreeze
from daemonapp.crontimes import load_zone
from daemonapp.daemon import Daemon
from daemonapp.durations import parse_duration
from daemonapp.health import HealthCheck, expected_interval
from daemonapp.history import DEFAULT_SIZE as DEFAULT_HISTORY
from daemonapp.history import RunHistory
from daemonapp.interfaces import (
    IActivityMonitor,
    IAppHealth,
    IAsyncLock,
    IListener,
    ILockProvider,
    IScheduler,
)
from daemonapp.lifetime import (
    EXIT_ABANDONED,
    EXIT_CONFIG,
    EXIT_OK,
    Lifetime,
    exit_status_at_exit,
)
from daemonapp.scheduler import Scheduler
from daemonapp.schedules import ScheduleState
from daemonapp.state_dir import StateDirError, ensure_state_dir

__all__ = ["EXIT_ABANDONED", "EXIT_CONFIG", "EXIT_OK", "DaemonApp"]

log = Logger()


def _alert_mail(event: Mapping[str, Any]) -> tuple[str, str]:
    """The mail of a daemon alert or recovery: subject and body."""
    if event.get("event") == "recovery":
        subject = f"daemonapp: {event.get('daemon')} recovered"
    else:
        subject = f"daemonapp alert: {event.get('daemon')} ({event.get('count')})"
    body = "\n".join(f"{key}: {value}" for key, value in event.items()) + "\n"
    return subject, body


def _optional_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


@implementer(IScheduler, IActivityMonitor, IAppHealth)
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
        timezone: str | None = None,
        alerts: Any = None,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
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
        self.reschedule = scheduler.reschedule
        self.watch_clock = scheduler.watch_clock
        self.unwatch_clock = scheduler.unwatch_clock
        #: The zone of clock schedules without their own (None: the system's zone).
        if timezone is not None:
            load_zone(timezone)  # an unknown zone is a ValueError now, not at a first run
        self.timezone = timezone
        #: Where daemon alerts go besides the log (DESIGN §10; the targets of a job's
        #: on_failure): webhook URLs, {webhook: URL}, {mail: {...}}, callables.
        self.alert_targets = alerts_module.parse_targets(
            alerts, key="app.alerts", compose_mail=_alert_mail, webhook_retries=3)
        #: What GET /metrics serves instead of this process's numbers (a worker of
        #: app.processes: its supervisor's, through daemonapp.worker); None: ours.
        self.metrics_from: Callable[[], Deferred[bytes]] | None = None
        self._runs_reactor = False  # run() runs the reactor and returns the status
        #: The last ``history`` runs of each daemon (0: none kept), kept in state_dir.
        self.run_history = (RunHistory(history, state_dir, seconds=self.seconds,
                                       call_at=scheduler.call_at) if history else None)
        #: The last fire time of each clock-scheduled daemon, kept across restarts.
        self.schedule_state = (ScheduleState(state_dir, reactor) if state_dir is not None
                               else None)
        #: The lifetime: deadlines, idle exit, graceful stop, signals, exit status.
        self.lifetime = Lifetime(
            reactor, scheduler,
            stay_alive_for=_optional_seconds("stay_alive_for", stay_alive_for),
            shutdown_after=_optional_seconds("shutdown_after", shutdown_after),
            shutdown_if_idle=_optional_seconds("shutdown_if_idle", shutdown_if_idle),
            stop_timeout=parse_duration(stop_timeout), stop_reactor=stop_reactor,
            handle_signals=handle_signals, shut_down=self._shut_down,
            force_down=self._force_down, is_running=lambda: bool(self.running))
        lifetime = self.lifetime
        # IActivityMonitor: listeners and job runners report their work in flight.
        self.begin = lifetime.begin
        self.end = lifetime.end
        #: What GET /healthz serves; its loop-lag probe runs while a listener has
        #: health: true.
        self.health_check = HealthCheck(self)
        self._stop_hooks: list[Callable[[], Any]] = []
        #: Called instead of a graceful stop when a listener reaches max_requests
        #: (several processes, DESIGN §11: daemonapp.workers recycles one at a time).
        self._request_limit_hook: Callable[[str], Any] | None = None
        #: Called with each snapshot before it is served (daemonapp.workers adds the
        #: other processes and sums the listeners' counts).
        self._snapshot_hooks: list[Callable[[dict[str, Any]], Any]] = []
        #: Called with each daemon alert or recovery once it is sent (daemonapp.workers
        #: tells its workers which daemons are in alert, for their /healthz).
        self._alert_hooks: list[Callable[[dict[str, Any]], Any]] = []

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
        if self.running and not self.lifetime.stopping:
            daemon.start()

    def remove(self, daemon: Daemon) -> Deferred[None]:
        """Stop a daemon and forget it once its run in flight has ended."""

        def forget(_: object) -> None:
            if self.daemons.get(daemon.name) is daemon:
                del self.daemons[daemon.name]
            gcfreeze.release()  # its objects may be frozen, and it holds cycles

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
        self.lifetime.reopen_hooks.append(hook)

    def on_stopping(self, hook: Callable[[str], Any]) -> None:
        """Call ``hook(reason)`` when a graceful stop begins (before anything stops)."""
        self.lifetime.stopping_hooks.append(hook)

    def alert(self, event: dict[str, Any]) -> None:
        """Send a daemon's alert or recovery (DESIGN §10) to the log and ``alerts``.

        Never waits: each target runs on a Deferred of its own (a webhook retries on
        timers), and one that fails is logged.
        """
        if event.get("event") == "recovery":
            log.info("daemon {daemon} recovered after {count} failed run(s)", **event)
        else:
            log.error("alert for daemon {daemon} ({count}): {error}", **event)
        alerts_module.send(event, self.alert_targets, self.reactor,
                           about="daemon {daemon}", key="app.alerts", log=log,
                           daemon=event.get("daemon"))
        for hook in self._alert_hooks:
            try:
                hook(event)
            except Exception:
                log.failure("an alert hook failed")

    def on_alert(self, hook: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``hook(event)`` after each daemon alert or recovery is sent."""
        self._alert_hooks.append(hook)

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

    def on_request_limit(self, hook: Callable[[str], Any]) -> None:
        """Call ``hook(reason)`` instead of stopping when a listener reaches max_requests."""
        self._request_limit_hook = hook

    def add_snapshot_hook(self, hook: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``hook(snapshot)`` on each snapshot before it is served (it may add to it)."""
        self._snapshot_hooks.append(hook)

    def when_ended(self) -> Deferred[int]:
        """A Deferred that fires with the exit status once the app has ended."""
        return self.lifetime.when_ended()

    # The lifetime settings are the Lifetime's own (one source): set on the app before
    # start, they apply at start, like the constructor's keywords.

    @property
    def stay_alive_for(self) -> float | None:
        """Soft deadline: the least the app lives, in seconds (None: none)."""
        return self.lifetime.stay_alive_for

    @stay_alive_for.setter
    def stay_alive_for(self, value: float | str | None) -> None:
        self.lifetime.stay_alive_for = _optional_seconds("stay_alive_for", value)

    @property
    def shutdown_after(self) -> float | None:
        """Hard deadline: the most the app lives, in seconds (None: none)."""
        return self.lifetime.shutdown_after

    @shutdown_after.setter
    def shutdown_after(self, value: float | str | None) -> None:
        self.lifetime.shutdown_after = _optional_seconds("shutdown_after", value)

    @property
    def shutdown_if_idle(self) -> float | None:
        """Idle exit threshold in seconds, after the soft deadline (None: no idle exit)."""
        return self.lifetime.shutdown_if_idle

    @shutdown_if_idle.setter
    def shutdown_if_idle(self, value: float | str | None) -> None:
        self.lifetime.shutdown_if_idle = _optional_seconds("shutdown_if_idle", value)

    @property
    def stop_timeout(self) -> float:
        """How long a graceful stop waits for what is in flight, in seconds."""
        return self.lifetime.stop_timeout

    @stop_timeout.setter
    def stop_timeout(self, value: float | str) -> None:
        self.lifetime.stop_timeout = parse_duration(value)

    @property
    def exit_status(self) -> int | None:
        """The exit status: set when a stop begins, final once the app has ended."""
        return self.lifetime.exit_status

    @property
    def stop_reason(self) -> str | None:
        """Why the app stops (None while it runs)."""
        return self.lifetime.stop_reason

    def stop(self, reason: str, status: int = 0) -> Deferred[None]:
        """Stop gracefully: finish what is in flight, then end with ``status``.

        Idempotent: a second call returns a Deferred for the same stop.
        """
        return self.lifetime.stop(reason, status)

    def run(self) -> int:
        """Start the app on its reactor, run the reactor, return the exit status.

        An app built in Python with a state_dir takes commands on its status socket, as
        one that ``daemonapp run`` built does (DESIGN §3: the invocations are alike).
        """
        self._serve_status()
        self._runs_reactor = True  # its status is run()'s: no atexit hook
        self.reactor.callWhenRunning(self.startService)
        self.reactor.run()
        return EXIT_ABANDONED if self.exit_status is None else self.exit_status

    def _serve_status(self) -> None:
        """The status socket and its commands (state_dir/status.sock), unless the app
        has them (`daemonapp.assembly` adds its own) or nowhere to serve them."""
        if self.state_dir is None or not hasattr(self.reactor, "adoptStreamPort"):
            return
        from daemonapp.control import Controller
        from daemonapp.status import StatusService, status_socket_path

        if any(isinstance(service, (Controller, StatusService)) for service in self):
            return
        try:
            ensure_state_dir(self.state_dir)  # (private, 0700: created when missing)
        except StateDirError as e:
            log.error("no status socket, so no commands: {error}", error=e)
            return
        controller = Controller(self)
        controller.setServiceParent(self)  # type: ignore[no-untyped-call]
        status = StatusService(self, status_socket_path(self.state_dir), controller)
        status.setServiceParent(self)  # type: ignore[no-untyped-call]

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
        self.lifetime.start()
        if self.stop_reactor and not self._runs_reactor \
                and isinstance(self.reactor, PosixReactorBase) \
                and "twisted.scripts.twistd" in sys.modules:
            # twistd runs the reactor (the plugin, a .tac) and exits 0 after it stopped:
            # abandoned work (1) becomes the process's exit status all the same. Not in
            # a program of its own that runs the reactor: its exit is its own.
            self.lifetime.when_ended().addCallback(exit_status_at_exit)
        if any(listener.health for listener in self.listeners):
            self.health_check.probe.start()
        for daemon in list(self.daemons.values()):
            daemon.start()
        if gcfreeze.owns_process(self.reactor):
            # Start-up's objects leave the collector's passes while the app runs.
            gcfreeze.freeze()
            self.lifetime.when_ended().addCallback(lambda _: gcfreeze.thaw())
        self.lifetime.start_soft_deadline()

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

    def request_limit_reached(self, reason: str) -> None:
        if self._request_limit_hook is not None:
            self._request_limit_hook(reason)
            return
        self.stop(f"max_requests: {reason}", 0)

    @property
    def _activity(self) -> dict[str, int]:
        return self.lifetime.activity

    def _handle_signal(self, signum: int) -> None:
        self.lifetime.handle_signal(signum)

    # ---------------------------------------------------------------- stopping

    def _shut_down(self) -> Deferred[Any]:
        """What a graceful stop does to the app's parts; fires when it is over.

        Listeners drain and daemons finish their run in flight, then the stop hooks
        run and the locks are released, then the services stop. A listener with
        ``health: true`` keeps accepting until the rest has drained, answering 503
        (DESIGN §10: load balancers see the stop), and drains last.
        """
        last = [listener for listener in self.listeners if listener.health]
        for listener in last:
            listener.refuse_new()
        work: list[Deferred[Any]] = [maybeDeferred(listener.drain)
                                     for listener in self.listeners if not listener.health]
        work += [daemon.stop() for daemon in list(self.daemons.values())]
        d = DeferredList(work, consumeErrors=True)
        if last:
            d.addCallback(self._drain_last, last)
        d.addCallback(self._daemons_stopped)
        return d

    def _drain_last(self, results: list[Any], last: list[IListener]) -> Deferred[Any]:
        """The rest has drained: drain the health listeners, then stop the probe."""
        drained = DeferredList([maybeDeferred(listener.drain) for listener in last],
                               consumeErrors=True)

        def done(more: list[Any]) -> list[Any]:
            self.health_check.probe.stop()
            return results + more

        return drained.addCallback(done)

    def _daemons_stopped(self, results: object) -> Deferred[Any]:
        for ok, value in results:  # type: ignore[attr-defined]
            if not ok:
                log.failure("error while stopping", value)
        hooks = [maybeDeferred(hook) for hook in self._stop_hooks]
        if self.schedule_state is not None:
            hooks.append(maybeDeferred(self.schedule_state.flush))
        if self.run_history is not None:
            hooks.append(maybeDeferred(self.run_history.flush))
        if self._locks is not None:
            hooks.append(maybeDeferred(self._locks.close))
        d = DeferredList(hooks, consumeErrors=True)
        d.addCallback(self._hooks_done)
        return d

    def _hooks_done(self, results: object) -> Deferred[Any]:
        for ok, value in results:  # type: ignore[attr-defined]
            if not ok:
                log.failure("error in a stop hook", value)
        return maybeDeferred(super().stopService) if self.running else succeed(None)

    def _force_down(self) -> None:
        self.health_check.probe.stop()
        MultiService.stopService(self)  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ status

    def health_report(self) -> tuple[bool, dict[str, Any]]:
        """What GET /healthz serves: (healthy, the JSON body with the reasons)."""
        return self.health_check.report()

    def metrics_text(self) -> bytes | Deferred[bytes]:
        """What GET /metrics serves: the Prometheus text of ``snapshot()``, or what
        ``metrics_from`` gives (a worker of app.processes: its supervisor's)."""
        if self.metrics_from is not None:
            return self.metrics_from()
        return self.render_metrics()

    def render_metrics(self) -> bytes:
        """The Prometheus text of this process's ``snapshot()``."""
        from daemonapp.metrics import render_metrics

        return render_metrics(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the app for `daemonapp status`."""
        now = self.seconds()
        if self.lifetime.ended:
            state = "ended"
        elif self.lifetime.stopping:
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
                "expected_interval": expected_interval(daemon, self),
            }
            entry.update(daemon.stats)
            pause = self.scheduler.pause_of(daemon.name)  # daemonapp pause (DESIGN §9)
            entry["paused"] = pause is not None
            entry["paused_since"] = pause.since if pause is not None else None
            entry["paused_until"] = pause.until if pause is not None else None
            entry["paused_reason"] = pause.reason if pause is not None else None
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
            "loop_lag": (self.health_check.probe.lag() if self.health_check.probe.running
                         else None),
            "daemons": daemons,
            "listeners": [listener.snapshot() for listener in self.listeners],
        }
        # Daemons that run jobs (the job dispatcher) describe them; the app only asks.
        for daemon in self.daemons.values():
            jobs_snapshot = getattr(daemon, "jobs_snapshot", None)
            if jobs_snapshot is not None:
                snap["jobs"] = jobs_snapshot()
                break
        for hook in self._snapshot_hooks:
            hook(snap)
        return snap
