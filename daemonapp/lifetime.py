"""The lifetime of the process: when a DaemonApp stops, and with which exit status.

Soft deadline (stay_alive_for), hard deadline (shutdown_after), idle exit computed
from the schedule (shutdown_if_idle), the graceful stop with its stop_timeout, the
second signal that stops at once, and the exit status (DESIGN §2). It asks the
scheduler what is due and in flight and counts the other activity (requests, job
children) itself; what a stop does to the app's parts is the app's ``shut_down``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.scheduler import Scheduler

__all__ = ["EXIT_ABANDONED", "EXIT_CONFIG", "EXIT_OK", "Lifetime", "exit_status_at_exit"]

log = Logger(namespace="daemonapp.app")

EXIT_OK = 0
EXIT_ABANDONED = 1
EXIT_CONFIG = 2


class Lifetime:
    """Decides when the app ends.

    ``shut_down()`` (the app's) stops what runs: listeners drain, daemons finish their
    run in flight, stop hooks run; its Deferred fires when that is over.
    ``force_down()`` stops the app's services at once (stop_timeout passed).
    ``is_running()`` tells whether the app's services run (started, not yet stopped).
    """

    def __init__(self, reactor: Any, scheduler: Scheduler, *,
                 stay_alive_for: float | None, shutdown_after: float | None,
                 shutdown_if_idle: float | None, stop_timeout: float,
                 stop_reactor: bool, handle_signals: bool,
                 shut_down: Callable[[], Deferred[Any]],
                 force_down: Callable[[], None],
                 is_running: Callable[[], bool]) -> None:
        self.reactor = reactor
        self.seconds: Callable[[], float] = reactor.seconds
        self.scheduler = scheduler
        self.stay_alive_for = stay_alive_for
        self.shutdown_after = shutdown_after
        self.shutdown_if_idle = shutdown_if_idle
        self.stop_timeout = stop_timeout
        self.stop_reactor = stop_reactor
        self.handle_signals = handle_signals
        self._shut_down = shut_down
        self._force_down = force_down
        self._is_running = is_running
        self.exit_status: int | None = None
        self.stop_reason: str | None = None
        #: Activity in flight by kind ("request", "job"): counted for idle exit.
        self.activity: dict[str, int] = {}
        self.reopen_hooks: list[Callable[[], Any]] = []
        #: Called with the reason when a graceful stop begins (systemd's STOPPING=1).
        self.stopping_hooks: list[Callable[[str], Any]] = []
        self.stopping = False
        self.ended = False
        self._last_request_end: float | None = None
        self._soft_passed = False
        self._soft_timer: Any = None
        self._hard_timer: Any = None
        self._idle_timer: Any = None
        self._stop_timer: Any = None
        self._stop_started = False
        self._stop_waiters: list[Deferred[None]] = []
        self._end_waiters: list[Deferred[int]] = []
        self._signals_seen = 0

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Arm the hard deadline and the signal handlers (the app has just started)."""
        if self.handle_signals and hasattr(self.reactor, "callWhenRunning"):
            # Installed from callWhenRunning: the reactor installs its own handlers
            # when it starts, and they would replace ours (twistd then exits 143).
            self.reactor.callWhenRunning(self._install_signal_handlers)
        if self.shutdown_after is not None:
            self._hard_timer = self.reactor.callLater(self.shutdown_after, self._hard_deadline)

    def start_soft_deadline(self) -> None:
        """Arm the soft deadline, or decide idle exit now when there is none."""
        if self.stay_alive_for:
            self._soft_timer = self.reactor.callLater(self.stay_alive_for, self._soft_deadline)
        else:
            self._soft_deadline()  # no minimum life: idle exit is decided at start

    def when_ended(self) -> Deferred[int]:
        """A Deferred that fires with the exit status once the app has ended."""
        if self.ended:
            assert self.exit_status is not None
            return succeed(self.exit_status)
        d: Deferred[int] = Deferred()
        self._end_waiters.append(d)
        return d

    # --------------------------------------------------------------- activity

    def begin(self, kind: str) -> None:
        """Work of ``kind`` started (it keeps the app from an idle exit)."""
        self.activity[kind] = self.activity.get(kind, 0) + 1

    def end(self, kind: str) -> None:
        """Work of ``kind`` ended; a request's end restarts the idle threshold."""
        count = self.activity.get(kind, 0) - 1
        self.activity[kind] = max(0, count)
        if kind == "request":
            self._last_request_end = self.seconds()
            if self.shutdown_if_idle is not None and self._soft_passed:
                self._arm_idle_timer()
        if self.shutdown_if_idle is not None and self._soft_passed:
            self.check_idle()

    def in_flight(self) -> list[str]:
        """What a stop would wait for, in words."""
        what = [f"run of daemon {d.name!r}" for d in self.scheduler.running()]
        what += [f"{count} {kind}(s)" for kind, count in self.activity.items() if count]
        return what

    # ------------------------------------------------------------- deadlines

    def _soft_deadline(self) -> None:
        self._soft_timer = None
        self._soft_passed = True
        if self.shutdown_if_idle is not None:
            self.scheduler.idle_hook = self.check_idle
            if self._last_request_end is not None:
                # A request ended before the deadline: idle exit is decided again at its
                # end + threshold too (DESIGN §2), whatever else comes to an end by then.
                self._arm_idle_timer()
            self.check_idle()

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
        self.check_idle()

    def check_idle(self) -> None:
        """Stop when nothing is in flight and the next work is a threshold away."""
        threshold = self.shutdown_if_idle
        if threshold is None or self.stopping or not self._is_running():
            return
        scheduler = self.scheduler
        if (scheduler.runs_in_flight or scheduler.has_ready()
                or any(self.activity.values())):
            return
        now = self.seconds()
        if self._last_request_end is not None and now - self._last_request_end < threshold:
            return
        if scheduler.next_due() - now >= threshold:
            self.stop(f"idle: nothing due within {threshold:g} s", 0)

    # ------------------------------------------------------------------ stop

    def stop(self, reason: str, status: int = 0) -> Deferred[None]:
        """Stop gracefully: finish what is in flight, then end with ``status``.

        Idempotent: a second call returns a Deferred for the same stop.
        """
        waiter: Deferred[None] = Deferred()
        if self.ended:
            waiter.callback(None)
            return waiter
        self._stop_waiters.append(waiter)
        if self._stop_started:
            return waiter
        self._stop_started = True
        self.stopping = True
        self.scheduler.stopping = True  # a graceful stop starts no new run
        self.stop_reason = reason
        self.exit_status = status
        log.info("daemonapp stopping: {reason}", reason=reason)
        for hook in self.stopping_hooks:
            try:
                hook(reason)
            except Exception:
                log.failure("error in a stopping hook")
        for timer in (self._soft_timer, self._hard_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._soft_timer = self._hard_timer = self._idle_timer = None
        if self._is_running():
            self._stop_timer = self.reactor.callLater(self.stop_timeout, self.abandon)
        self._shut_down().addBoth(self._stopped)
        return waiter

    def _stopped(self, result: object) -> None:
        if isinstance(result, Failure):
            log.failure("error while stopping services", result)
        if self.ended:
            return
        if self._stop_timer is not None and self._stop_timer.active():
            self._stop_timer.cancel()
        self._stop_timer = None
        self.end_now(self.exit_status if self.exit_status is not None else 0)

    def abandon(self, why: str | None = None) -> None:
        """Give up on what is left (stop_timeout passed, or a second signal): exit 1."""
        self._stop_timer = None
        if self.ended:
            return
        left = self.in_flight()
        why = why or f"after stop_timeout ({self.stop_timeout:g} s)"
        log.error("daemonapp abandoned work {why}: {left}", why=why,
                  left=", ".join(left) or "stop hooks")
        self.exit_status = EXIT_ABANDONED
        if self._is_running():
            self._force_down()
        self.end_now(EXIT_ABANDONED)
        threads = [d for d in self.scheduler.running() if d.in_thread]
        if threads and self.stop_reactor and hasattr(self.reactor, "stop"):
            # Pool workers are non-daemon threads: a hung hook would block the exit.
            log.error("exiting at once: {count} thread(s) still busy", count=len(threads))
            os._exit(EXIT_ABANDONED)

    def end_now(self, status: int) -> None:
        """The app has ended with ``status``: tell the waiters, stop the reactor."""
        self.ended = True
        self.exit_status = status
        self.stopping = True
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

    # --------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.handle_signal, signum)

    def handle_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT: stop gracefully, at once the second time; SIGHUP: reopen logs."""
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reopening log files")
            for hook in self.reopen_hooks:
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
            if self.in_flight():
                self.abandon(f"second {name}")
            else:
                self.end_now(self.exit_status or 0)


def exit_status_at_exit(status: int) -> int:
    """Make a non-zero ``status`` the process's exit status when the interpreter exits:
    for an app whose reactor someone else runs and stops (twistd, with the plugin or a
    .tac), which would exit 0 whatever the app's status. Registered last, so it runs
    first among the atexit hooks, after twistd removed its pid file."""
    if status:
        atexit.register(_exit_with, status)
    return status


def _exit_with(status: int) -> None:
    """Replace a clean interpreter exit by ``status`` (after twistd's own cleanup)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110 - a closed stream must not prevent the exit
            pass
    os._exit(status)
