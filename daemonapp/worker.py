"""What runs inside a worker of ``app.processes`` > 1 (DESIGN §11): its end of the pipes
to the supervisor (daemonapp.workers) and ``main``.

A worker is a copy of its supervisor, as a forked one would be: the first line on its
control pipe is the plan, the configuration the supervisor runs (pickled: the listeners
as bound at start, ``app.log`` as last applied) and the fd of each inherited listening
socket. It never reads the YAML file, so an edit of the file reaches no worker until a
restart, and a file left broken keeps no worker from starting. The pipes carry one JSON
object a line each way: the worker reports ``ready`` once it listens, a ``snapshot``
every second, ``retire`` when a listener reached max_requests, and asks for
``/jobs/<id>`` (``job``); the supervisor answers jobs and says ``drain`` (with its own
stop's reason when it stops), ``log`` (a reload changed ``app.log``), ``reopen``
(SIGHUP: logrotate) and ``health`` (the daemons in alert, when that changed).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.configmodel import Config, LockSettings, LogSettings

__all__ = [
    "CONTROL_FD",
    "FIRST_LISTEN_FD",
    "MAX_LINE_BYTES",
    "REPORT_FD",
    "Lines",
    "WorkerChannel",
    "encode",
    "main",
    "plan_message",
    "read_plan",
]

log = Logger(namespace="daemonapp.workers")

#: The worker's end of the pipe the supervisor writes (the plan, drain, log, reopen, job
#: answers; EOF: the supervisor is gone).
CONTROL_FD = 3
#: The worker's end of the pipe the supervisor reads (ready, snapshots, retire, jobs).
REPORT_FD = 4
#: The first fd of the inherited listening sockets in a worker, one per listener.
FIRST_LISTEN_FD = 5
#: The longest line either side reads from the other (a snapshot is a few KiB).
MAX_LINE_BYTES = 1024 * 1024
#: Seconds between two snapshots a worker reports.
REPORT_INTERVAL = 1.0
#: Job status questions a worker keeps waiting at once (more: answered as unknown).
MAX_PENDING_JOBS = 1000


class Lines:
    """JSON objects one a line, bounded: ``feed`` returns the complete ones."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if len(rest) > MAX_LINE_BYTES:
            raise ValueError(f"a line longer than {MAX_LINE_BYTES} bytes")
        self._buffer = rest
        messages = []
        for line in lines:
            if not line.strip():
                continue
            value = json.loads(line)
            if isinstance(value, dict):
                messages.append(value)
        return messages


def encode(message: Mapping[str, Any]) -> bytes:
    """``message`` as a line of the pipes."""
    return json.dumps(message, default=repr, separators=(",", ":")).encode() + b"\n"


# --------------------------------------------------------------------------- plan


def plan_message(config: Config, fds: Mapping[int, int]) -> dict[str, Any]:
    """The first line to a worker: what it serves (``config`` as the supervisor runs
    it, without what a worker never needs) and on which fd (listener index to fd)."""
    served = dataclasses.replace(config, daemons=(), app=dataclasses.replace(
        config.app, alerts=None, locks=LockSettings()))
    # pickle, not JSON: the converted listener options keep their types exactly; the
    # pipe is private between the supervisor and its own child
    text = base64.b64encode(pickle.dumps(served)).decode("ascii")
    return {"t": "plan", "config": text, "fds": {str(index): fd for index, fd in fds.items()}}


def read_plan(fd: int) -> tuple[Config, dict[int, int], bytes]:
    """Read the plan (blocking, before the reactor runs): the Config, the fd of each
    listener, and what followed the plan's line (for the channel)."""
    buffer = b""
    while b"\n" not in buffer:
        if len(buffer) > MAX_LINE_BYTES:
            raise ValueError(f"a plan longer than {MAX_LINE_BYTES} bytes")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise ValueError("the supervisor closed the pipe before sending the plan")
        buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    message = json.loads(line)
    if not isinstance(message, dict) or message.get("t") != "plan":
        raise ValueError("the first line from the supervisor is not the plan")
    config = pickle.loads(base64.b64decode(message["config"]))  # noqa: S301 (see plan_message)
    if not isinstance(config, Config):
        raise ValueError("the plan holds no configuration")
    fds = {int(index): int(value) for index, value in message["fds"].items()}
    return config, fds, rest


# ------------------------------------------------------------------------ channel


class WorkerChannel(Protocol):
    """The worker's end of the pipes: reports to the supervisor, takes its orders.

    EOF (the supervisor is gone, whatever killed it) stops the app gracefully.
    ``reopen_logs()`` and ``reconfigure_log(settings)`` carry out ``reopen`` and ``log``.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.app: Any = None
        self.reopen_logs: Callable[[], object] | None = None
        self.reconfigure_log: Callable[[LogSettings], object] | None = None
        self._lines = Lines()
        self._pending: dict[int, defer.Deferred[Any]] = {}
        self._numbers = 0
        self.gone = False
        self._retiring = False

    def send(self, message: Mapping[str, Any]) -> None:
        if self.transport is not None and not self.gone:
            self.transport.write(encode(message))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self._lines.feed(data)
        except ValueError as e:
            log.error("bad order from the supervisor: {error}", error=e)
            return
        for message in messages:
            kind = message.get("t")
            if kind in ("drain", "health"):
                # the supervisor's daemons in alert, its stop: this /healthz says them
                check = getattr(self.app, "health_check", None)
                if check is not None:
                    check.share(message)
            if kind == "drain" and self.app is not None:
                self.app.stop("the supervisor asked this worker to drain", 0)
            elif kind in ("job", "metrics"):
                self._job_answered(message)
            elif kind == "reopen" and self.reopen_logs is not None:
                self._apply("reopen the log file", self.reopen_logs)
            elif kind == "log" and self.reconfigure_log is not None:
                settings = LogSettings(format=str(message.get("format")),
                                       level=str(message.get("level")),
                                       file=message.get("file"))
                self._apply("apply app.log", self.reconfigure_log, settings)

    def _apply(self, what: str, function: Callable[..., object], *args: Any) -> None:
        try:
            function(*args)
        except (OSError, ValueError) as e:
            log.error("worker: cannot {what} ({error}); the log stays as it was", what=what,
                      error=e)

    def _job_answered(self, message: Mapping[str, Any]) -> None:
        number = message.get("id")
        waiter = self._pending.pop(number, None) if isinstance(number, int) else None
        if waiter is None:
            return
        if message.get("error"):
            waiter.errback(RuntimeError("the supervisor could not answer"))
        else:
            waiter.callback(message.get("status"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.callback(None)
        if self.app is not None and self.app.stop_reason is None:
            log.warn("the supervisor is gone: draining")
            self.app.stop("the supervisor is gone", 0)

    # what the app calls

    def listening(self, listening: bool) -> None:
        """The assembly's `when_listening`: tell the supervisor once every listener is up."""
        if listening:
            self.send({"t": "ready"})
            self.report()

    def report(self) -> None:
        if self.app is not None:
            self.send({"t": "snapshot", "snapshot": self.app.snapshot()})

    def retire(self, reason: str) -> None:
        """max_requests: ask for a replacement; this worker serves on until told to drain."""
        if not self._retiring:
            self._retiring = True
            log.info("{reason}: asking the supervisor for a replacement", reason=reason)
            self.send({"t": "retire", "reason": reason})
        if self.gone and self.app is not None:
            self.app.stop(f"max_requests: {reason}", 0)

    def job_status(self, job_id: Any) -> defer.Deferred[Any]:
        """``/jobs/<id>``: the supervisor's job dispatcher answers."""
        return self._ask({"t": "job", "job": str(job_id)})

    def metrics_text(self) -> defer.Deferred[bytes]:
        """``/metrics``: the supervisor's, whose snapshot sums every process and holds
        the daemons (DESIGN §10: the app's numbers, whichever process is scraped). This
        worker's own when the supervisor cannot say (gone, or a text over a line)."""
        asked = self._ask({"t": "metrics"})

        def text(answer: Any) -> bytes:
            if isinstance(answer, str):
                return answer.encode()
            assert self.app is not None
            own: bytes = self.app.render_metrics()
            return own

        return asked.addCallback(text)

    def _ask(self, message: dict[str, Any]) -> defer.Deferred[Any]:
        """Send ``message`` with a number; the supervisor's answer (None: none)."""
        if self.gone or len(self._pending) >= MAX_PENDING_JOBS:
            return defer.succeed(None)
        self._numbers += 1
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._pending[self._numbers] = waiter
        self.send({**message, "id": self._numbers})
        return waiter


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """``python -m daemonapp.workers FILE``: one worker. The supervisor starts it with the
    listening sockets and the pipes in place and sends the plan first; FILE only names
    the app (in ``ps``, in messages): it is not read."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet import stdio, task

    from daemonapp.assembly import Assembly
    from daemonapp.config import ConfigError
    from daemonapp.logs import start_logging

    parser = argparse.ArgumentParser(prog="python -m daemonapp.workers")
    parser.add_argument("config")
    args = parser.parse_args(argv)
    reactor: Any = global_reactor
    try:
        config, fds, rest = read_plan(CONTROL_FD)
    except Exception as e:  # an unpickling error can be of any kind (a changed install)
        print(f"daemonapp worker ({args.config}): no plan from the supervisor: {e}",
              file=sys.stderr)
        return 2
    settings = config.app.log
    target = start_logging(format=settings.format, level=settings.level, file=settings.file)
    channel = WorkerChannel(reactor)
    channel.reopen_logs = target.reopen
    channel.reconfigure_log = lambda new: target.reconfigure(
        format=new.format, level=new.level, file=new.file)
    assembly = Assembly(config, worker_fds=fds, jobs_status=channel.job_status)
    try:
        # no deadlines, idle exit or state of its own: the supervisor decides its life
        app = assembly.build(reactor=reactor, stop_reactor=True, handle_signals=True,
                             status_server=False, stay_alive_for=None, shutdown_after=None,
                             shutdown_if_idle=None, state_dir=None, history=0)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        target.close()
        return 2
    app.on_reopen_logs(target.reopen)
    app.metrics_from = channel.metrics_text
    channel.app = app
    app.on_request_limit(channel.retire)
    standard_io: Any = stdio.StandardIO  # typed after Windows' one, without the fds
    standard_io(channel, stdin=CONTROL_FD, stdout=REPORT_FD, reactor=reactor)
    if rest:  # after the app's start, before the pipe's next bytes
        reactor.callWhenRunning(reactor.callLater, 0, channel.dataReceived, rest)
    assembly.when_listening(app, channel.listening)
    reporting = task.LoopingCall(channel.report)
    reporting.clock = reactor
    reactor.callWhenRunning(reporting.start, REPORT_INTERVAL, now=False)

    def stop_reporting(reason: str) -> None:
        if reporting.running:
            reporting.stop()

    app.on_stopping(stop_reporting)
    try:
        status = app.run()
    finally:
        target.close()
    return status
