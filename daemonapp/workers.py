"""Several processes for one app (DESIGN §11): the supervisor and its workers as it
sees them.

With ``app.processes: N`` the process `daemonapp run` starts is the supervisor: it
binds every listener once (as always: ``PATH.new`` and a rename, tcp ports, systemd
sockets), runs the daemons, the job dispatcher and the status socket, serves requests
too, and spawns N-1 workers with ``python -m daemonapp.workers``. A worker inherits the
listening sockets (no SO_REUSEPORT: the kernel hands each connection to one of the
processes blocked in accept) and builds only the listeners and their applications, from
the configuration the supervisor runs (daemonapp.worker: the pipes' protocol and what
runs inside a worker). A reload's ``app.log`` and a SIGHUP's reopening of the log file
reach every worker; a worker whose supervisor is gone (EOF on its pipe, also after a
SIGKILL) drains and exits, and one still draining when the app ends (its stop abandoned
at stop_timeout, a second signal) is killed and reaped, so no process outlives the app.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.configmodel import LogSettings
from daemonapp.health import alert_state
from daemonapp.worker import (
    CONTROL_FD,
    FIRST_LISTEN_FD,
    MAX_LINE_BYTES,
    REPORT_FD,
    Lines,
    encode,
    plan_message,
)

__all__ = [
    "Supervisor",
    "WorkerProcess",
    "restart_delay",
]

log = Logger(namespace="daemonapp.workers")

#: A worker that lived this long before it died is restarted at once.
STABLE_AFTER = 10.0
#: The first delay before restarting a worker that died young, doubled each time.
RESTART_BASE = 0.5
RESTART_MAX = 30.0
#: Longest the reactor's shutdown waits for the workers killed as the app ended to be
#: reaped (a SIGKILL takes effect at once, unless a process is stuck in the kernel).
REAP_TIMEOUT = 5.0
#: Environment variables of the supervisor's own, never a worker's: systemd's socket
#: activation and notification (the worker gets its sockets from us).
SUPERVISOR_ONLY_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
                       "WATCHDOG_USEC", "WATCHDOG_PID")

#: Listener counts summed across the processes in the supervisor's snapshot.
SUMMED = ("requests", "answered", "rejected_503", "timeouts_504", "errors_500",
          "too_large_413", "too_large_431", "bad_request_400", "spooled", "spool_failed",
          "refused", "accept_errors", "denied", "connections", "connections_total",
          "in_flight", "queued", "active", "receiving", "buffered_bytes", "cancelled",
          "health_checks", "scrapes")
#: Of those, the gauges: what a process that ended had then is not kept.
GAUGES = frozenset(("connections", "in_flight", "queued", "active", "receiving",
                    "buffered_bytes"))
#: Those kept of a worker that ended, so that sums never go back.
KEPT = tuple(key for key in SUMMED if key not in GAUGES)
#: Listener counts by a key of their own ({waiting state: connections}), summed key by key.
SUMMED_BY_KEY = ("timed_out",)

STARTING = "starting"
SERVING = "serving"
DRAINING = "draining"
ENDED = "ended"
#: What a worker knows of the daemons in alert before it is told (none).
NO_ALERTS: dict[str, Any] = {"t": "health", "alerts": [], "in_alert": 0}


def restart_delay(streak: int) -> float:
    """Seconds before restarting a worker after ``streak`` deaths in a row of young ones:
    0.5, 1, 2, 4 ... at most 30."""
    if streak <= 0:
        return 0.0
    return float(min(RESTART_MAX, RESTART_BASE * 2 ** (streak - 1)))


# ---------------------------------------------------------------------- supervisor


class WorkerProcess(ProcessProtocol):
    """One worker as the supervisor sees it: its pipes, state and last snapshot."""

    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.pid: int | None = None
        self.state = STARTING
        self.started_at = supervisor.reactor.seconds()
        self.snapshot: dict[str, Any] = {}
        self.retire_wanted = False
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        #: The daemons in alert as this worker knows them (Supervisor.share_alerts).
        self.alerts: dict[str, Any] = NO_ALERTS
        self._lines = Lines()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != REPORT_FD:
            return
        try:
            messages = self._lines.feed(data)
        except ValueError as e:
            log.error("worker {pid} sent a bad report ({error}); killing it", pid=self.pid,
                      error=e)
            self.kill()
            return
        for message in messages:
            self.supervisor.message(self, message)

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_line(encode(message))

    def send_line(self, line: bytes) -> None:
        """A message `encode` made already."""
        if self.transport is not None and self.state != ENDED:
            self.transport.writeToChild(CONTROL_FD, line)  # type: ignore[attr-defined]

    def drain(self, stopping: str | None = None) -> None:
        """Ask the worker to drain and exit (it answers what it has first); ``stopping``:
        the reason of the app's own stop, which its /healthz then gives."""
        if self.state in (STARTING, SERVING):
            self.state = DRAINING
        self.send({"t": "drain"} if stopping is None else {"t": "drain", "stopping": stopping})

    def kill(self) -> None:
        if self.transport is not None and self.state != ENDED:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass  # its end is on its way

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessTerminated | ProcessDone):
            self.exit_code = value.exitCode
            self.exit_signal = value.signal
        self.supervisor.ended(self)

    def describe(self, now: float) -> dict[str, Any]:
        """This worker's line in ``daemonapp status``."""
        listeners = self.snapshot.get("listeners") or []
        return {
            "pid": self.pid,
            "role": "worker",
            "state": "retiring" if self.retire_wanted and self.state == SERVING
            else self.state,
            "requests": sum(int(entry.get("requests", 0)) for entry in listeners),
            "in_flight": sum(int(entry.get("in_flight", 0)) for entry in listeners),
            "uptime": now - self.started_at,
        }


class Supervisor(Service):
    """Spawns, watches and recycles the workers of an app with ``app.processes`` > 1.

    A child service of the DaemonApp, added after its listeners: it starts the workers
    once they are bound. Hooks on the app: a graceful stop drains every worker and
    waits for them (``stop_timeout`` bounds it, as for the rest; when the app ends, the
    workers still running are killed and reaped); the supervisor's own
    max_requests hands its share of the requests to one more worker instead of stopping
    the app; its snapshot lists every process and sums the listeners' counts; SIGHUP
    has every worker reopen its log file, and a reload that applied a new ``app.log``
    sends it to every worker (and to those started later, with the plan).
    """

    def __init__(self, app: Any, config: Any, *, reactor: Any = None,
                 command: list[str] | None = None) -> None:
        self.app = app
        self.config = config
        self.reactor: Any = reactor if reactor is not None else app.reactor
        self.count = int(config.app.processes)
        self.command = command or [sys.executable, "-m", "daemonapp.workers"]
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        #: Whether this process still serves requests (until its own max_requests).
        self.serving = True
        self._retire_self = False
        self._fds: dict[int, int] = {}
        self._numbers = 0
        self._streak = 0
        self._not_before = 0.0
        self._timer: Any = None
        self._ended_waiters: list[defer.Deferred[None]] = []
        self._gone: list[dict[str, Any]] = []  # counts of ended workers, per listener
        #: Unix paths this process bound but no longer serves itself: unlinked at the
        #: end, while still the sockets bound (a successor may have renamed over them).
        self._owned: list[tuple[str, tuple[int, int]]] = []
        app.on_stopping(self._stopping)
        app.add_stop_hook(self.workers_ended)
        app.on_request_limit(self._own_limit)
        app.add_snapshot_hook(self._snapshot)
        app.on_reopen_logs(self._reopen_logs)
        app.on_alert(lambda event: self.share_alerts())
        app.when_ended().addCallback(self._app_ended)
        from daemonapp.control import controller_of

        self._controller = controller_of(app)
        if self._controller is not None:
            self._controller.on_reload(lambda: None, self._reloaded)
            self._controller.on_reload(lambda: None, self.share_alerts)

    # ------------------------------------------------------------------- start

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # after the app's own start has bound its listeners (same reactor turn)
        self.reactor.callLater(0, self._begin)

    def _begin(self) -> None:
        if self.stopping or not self.running:
            return
        specs = self.config.listeners
        for spec, listener in zip(specs, self.app.listeners, strict=False):
            port = getattr(listener, "port", None)
            if port is None:
                return  # not listening: the assembly stops the app (exit status 1)
            # our own reference, for the workers started later: the listener's port may
            # close first (this process's max_requests), the socket must not
            self._fds[spec.index] = os.dup(port.fileno())
            # and its close must not shut the socket down for the others (Twisted's tcp
            # port does for a socket it bound itself)
            if hasattr(port, "_shouldShutdown"):
                port._shouldShutdown = False
        log.info("serving from {count} processes: starting {workers} worker(s)",
                 count=self.count, workers=self.count - 1)
        self.reconcile()

    @property
    def wanted(self) -> int:
        """Workers serving when all is well: N-1, N once this process stopped serving."""
        return self.count - (1 if self.serving else 0)

    def reconcile(self) -> None:
        """Start or drain workers until as many serve as wanted, one recycle at a time.

        A worker that wants to retire (max_requests) keeps serving until its
        replacement is ready, then drains; only one drains for that at a time, so the
        capacity never drops.
        """
        if self.stopping or not self._fds:
            return
        active = [w for w in self.workers if w.state in (STARTING, SERVING)]
        draining = [w for w in self.workers if w.state == DRAINING]
        retirees = [w for w in active if w.retire_wanted and w.state == SERVING]
        starting = [w for w in active if w.state == STARTING]
        want = self.wanted
        recycling = bool(retirees) or self._retire_self
        if recycling and not draining:
            want += 1  # the replacement first
        if len(active) < want:
            self._spawn_when_allowed()
            return
        if starting or draining:
            return
        if self._retire_self and self.serving:
            self._stop_serving()
            self.reconcile()  # a worker waiting to retire needs a replacement of its own
        elif retirees and len(active) > self.wanted:
            retiree = retirees[0]
            log.info("worker {pid} reached max_requests: its replacement serves, draining "
                     "it", pid=retiree.pid)
            retiree.drain()

    def _spawn_when_allowed(self) -> None:
        if self._timer is not None and self._timer.active():
            return
        delay = self._not_before - self.reactor.seconds()
        if delay > 0:
            self._timer = self.reactor.callLater(delay, self._spawn_due)
            return
        self.spawn()
        # more may be wanted (the first start): one per turn keeps the loop responsive
        self._timer = self.reactor.callLater(0, self._spawn_due)

    def _spawn_due(self) -> None:
        self._timer = None
        self.reconcile()

    def spawn(self) -> WorkerProcess:
        """Start one worker on the listening sockets."""
        self._numbers += 1
        worker = WorkerProcess(self, self._numbers)
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, CONTROL_FD: "w", REPORT_FD: "r"}
        fds: dict[int, int] = {}
        for offset, (index, fd) in enumerate(sorted(self._fds.items())):
            child_fds[FIRST_LISTEN_FD + offset] = fd
            fds[index] = FIRST_LISTEN_FD + offset
        env = {key: value for key, value in os.environ.items()
               if key not in SUPERVISOR_ONLY_ENV}
        args = [*self.command, os.path.abspath(self.config.path)]
        self.workers.append(worker)
        try:
            plan = plan_message(self.config, fds)
            self.reactor.spawnProcess(worker, args[0], args, env=env, childFDs=child_fds)
        except Exception:
            log.failure("could not start a worker")
            self.workers.remove(worker)
            self._died_young()
            return worker
        worker.send(plan)
        worker.transport.closeStdin()  # type: ignore[union-attr]
        self.share_alerts()
        log.info("worker {pid} started", pid=worker.pid)
        return worker

    # -------------------------------------------------------------------- logs

    def _reopen_logs(self) -> None:
        """SIGHUP (logrotate signals the main process only): every worker reopens."""
        for worker in self.workers:
            worker.send({"t": "reopen"})

    def _reloaded(self) -> None:
        """A reload ended: a new ``app.log`` that this process applied goes to the
        workers, and to those started from now on."""
        controller = self._controller
        if controller is None or controller.reloader.config is None \
                or controller.reconfigure_log is None:  # (twistd's log: nothing applied)
            return
        settings: LogSettings = controller.reloader.config.app.log
        if settings == self.config.app.log:
            return
        self.config = replace(self.config, app=replace(self.config.app, log=settings))
        for worker in self.workers:
            worker.send({"t": "log", "format": settings.format, "level": settings.level,
                         "file": settings.file})

    def share_alerts(self) -> None:
        """Tell each worker which daemons are in alert when that changed since it was
        last told (the daemons run here only): every process's /healthz answers the
        same (DESIGN §10)."""
        named, total = alert_state(self.app.daemons)
        state = {"t": "health", "alerts": [list(entry) for entry in named], "in_alert": total}
        for worker in self.workers:
            if worker.alerts != state:
                worker.alerts = state
                worker.send(state)

    # ---------------------------------------------------------------- messages

    def message(self, worker: WorkerProcess, message: Mapping[str, Any]) -> None:
        """A line from ``worker``."""
        kind = message.get("t")
        if kind == "snapshot" and isinstance(message.get("snapshot"), dict):
            worker.snapshot = message["snapshot"]
            self.share_alerts()  # failure counts and removed daemons: within a second
        elif kind == "ready":
            if worker.state == STARTING:
                worker.state = SERVING
                log.info("worker {pid} serving", pid=worker.pid)
                if self.stopping:
                    worker.drain()
            self.reconcile()
        elif kind == "retire":
            if not worker.retire_wanted:
                worker.retire_wanted = True
                self.reconcile()
        elif kind == "job":
            self._answer_job(worker, message)
        elif kind == "metrics":
            # The app's numbers, summed over the processes (a worker's /metrics); none
            # (the worker serves its own) when they do not fit in a line of the pipe.
            reply = {"t": "metrics", "id": message.get("id"), "status": None}
            line = encode({**reply, "status": self.app.render_metrics().decode()})
            worker.send_line(line if len(line) <= MAX_LINE_BYTES else encode(reply))

    def _answer_job(self, worker: WorkerProcess, message: Mapping[str, Any]) -> None:
        number = message.get("id")
        status: Callable[[Any], Any] | None = None
        for daemon in self.app.daemons.values():
            if callable(getattr(daemon, "job_status", None)):
                status = daemon.job_status
                break
        if status is None:
            worker.send({"t": "job", "id": number, "status": None})
            return
        d = defer.maybeDeferred(status, message.get("job"))

        def reply(result: Any) -> None:
            worker.send({"t": "job", "id": number, "status": result})

        def failed(failure: Failure) -> None:
            log.failure("job status for a worker failed", failure)
            worker.send({"t": "job", "id": number, "error": True})

        d.addCallbacks(reply, failed)

    # ------------------------------------------------------------------- deaths

    def ended(self, worker: WorkerProcess) -> None:
        """``worker`` exited: restart it (with backoff) unless it was asked to go."""
        planned = worker.state == DRAINING or self.stopping
        worker.state = ENDED
        if worker in self.workers:
            self.workers.remove(worker)
        self._keep_counts(worker)
        how = (f"signal {worker.exit_signal}" if worker.exit_signal is not None
               else f"exit status {worker.exit_code}")
        if planned:
            if worker.exit_code not in (0, None) or worker.exit_signal is not None:
                log.warn("worker {pid} ended with {how}", pid=worker.pid, how=how)
            else:
                log.info("worker {pid} ended", pid=worker.pid)
        else:
            lived = self.reactor.seconds() - worker.started_at
            if lived >= STABLE_AFTER:
                self._streak = 0
            else:
                self._died_young()
            log.error("worker {pid} died ({how}) after {lived:.1f}s; restarting it in "
                      "{delay:.1f}s", pid=worker.pid, how=how, lived=lived,
                      delay=max(0.0, self._not_before - self.reactor.seconds()))
        if not self.workers:
            waiters, self._ended_waiters = self._ended_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self.reconcile()

    def _died_young(self) -> None:
        self._streak += 1
        self._not_before = self.reactor.seconds() + restart_delay(self._streak)

    def _keep_counts(self, worker: WorkerProcess) -> None:
        """Add an ended worker's last counts to those kept, so sums never go back."""
        for index, entry in enumerate(worker.snapshot.get("listeners") or []):
            while len(self._gone) <= index:
                self._gone.append({})
            kept = self._gone[index]
            _add_counts(kept, entry, KEPT)  # (not the gauges: of a process that is gone)
            for key in SUMMED_BY_KEY:
                _add_counts(kept.setdefault(key, {}), entry.get(key))

    # -------------------------------------------------------- this process's share

    def _own_limit(self, reason: str) -> None:
        """This process reached max_requests: one more worker takes its share of the
        requests, then it stops serving (its daemons run on)."""
        if self._retire_self or not self.serving:
            return
        log.info("{reason}: a worker takes this process's requests over", reason=reason)
        self._retire_self = True
        self.reconcile()

    def _stop_serving(self) -> None:
        self.serving = False
        self._retire_self = False
        for listener in self.app.listeners:
            port = getattr(listener, "port", None)
            if getattr(port, "owned_path", None) is not None:
                # the workers serve the path on: it is unlinked when the app ends
                self._owned.append((port.owned_path, port.owned_identity))  # type: ignore[union-attr]
                port.owned_path = None  # type: ignore[union-attr]
            defer.maybeDeferred(listener.drain).addErrback(
                lambda f: log.failure("draining a listener failed", f))

    # ------------------------------------------------------------------- stop

    def _stopping(self, reason: str) -> None:
        """A graceful stop began: every worker drains (the app waits for them)."""
        self.stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # Our references go first, so the last process to close a socket is one that
        # accepts what waits in its queue before it closes (a drain does).
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
        for worker in list(self.workers):
            worker.drain(reason)

    def workers_ended(self) -> defer.Deferred[None]:
        """Fires once no worker is left (a stop hook of the app)."""
        waiter: defer.Deferred[None] = defer.Deferred()
        if not self.workers:
            waiter.callback(None)
        else:
            self._ended_waiters.append(waiter)
        return waiter.addCallback(lambda _: self._unlink_owned())

    def _unlink_owned(self) -> None:
        owned, self._owned = self._owned, []
        for path, identity in owned:
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == identity:
                    os.unlink(path)
            except OSError:
                pass

    def _app_ended(self, status: int) -> int:
        """The app has ended: a worker still running is killed (its stop was abandoned at
        stop_timeout, or a second signal stops at once), and the reactor's shutdown
        waits, within REAP_TIMEOUT, until each is reaped."""
        if not self.stopping:
            self._stopping("the app ended")
        left = [worker for worker in self.workers if worker.state != ENDED]
        if not left:
            return status
        log.error("the app ended: killing {count} worker(s) still running: {pids}",
                  count=len(left), pids=", ".join(str(worker.pid) for worker in left))
        for worker in left:
            worker.kill()
        add_trigger = getattr(self.reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            add_trigger("before", "shutdown", self._reaped)
        return status

    def _reaped(self) -> defer.Deferred[None]:
        """Fires once the killed workers are reaped, or after REAP_TIMEOUT."""
        def late(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            log.error("worker(s) {pids} not reaped {timeout:g} s after SIGKILL",
                      pids=", ".join(str(worker.pid) for worker in self.workers),
                      timeout=REAP_TIMEOUT)

        return self.workers_ended().addTimeout(REAP_TIMEOUT, self.reactor).addErrback(late)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if not self.stopping:
            self._stopping("service stopped")
        return self.workers_ended()

    # ----------------------------------------------------------------- status

    def _snapshot(self, snap: dict[str, Any]) -> None:
        """Every process in ``processes``; each listener's counts summed across them."""
        now = self.reactor.seconds()
        own = snap.get("listeners") or []
        processes = [{
            "pid": os.getpid(),
            "role": "supervisor",
            "state": (snap.get("state") if self.serving or snap.get("state") != "running"
                      else "daemons only"),
            "requests": sum(int(entry.get("requests", 0)) for entry in own),
            "in_flight": sum(int(entry.get("in_flight", 0)) for entry in own),
            "uptime": snap.get("uptime"),
        }]
        processes += [worker.describe(now) for worker in self.workers]
        snap["processes"] = processes
        sources = [worker.snapshot.get("listeners") or [] for worker in self.workers]
        sources.append(self._gone)
        for index, entry in enumerate(own):
            for source in sources:
                if index >= len(source):
                    continue
                other = source[index]
                _add_counts(entry, other, SUMMED)
                for key in SUMMED_BY_KEY:
                    mine = entry.get(key)
                    if not isinstance(mine, dict):
                        mine = entry[key] = {}
                    _add_counts(mine, other.get(key))
        # The work in flight by kind (requests, jobs): a gauge of the workers there now.
        in_flight = snap.get("in_flight")
        if isinstance(in_flight, dict):
            for worker in self.workers:
                _add_counts(in_flight, worker.snapshot.get("in_flight"))


def _add_counts(into: dict[str, Any], counts: object,
                keys: Iterable[str] | None = None) -> None:
    """Add ``counts`` ({key: int}, from a worker: checked) to ``into``, key by key (only
    ``keys``, when given)."""
    if not isinstance(counts, dict):
        return
    for key in counts if keys is None else keys:
        value = counts.get(key)
        if isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool):
            mine = into.get(key, 0)
            into[key] = (mine if isinstance(mine, int) else 0) + value


if __name__ == "__main__":  # the command a supervisor starts a worker with
    from daemonapp.worker import main

    raise SystemExit(main())
