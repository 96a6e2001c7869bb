"""Runs a DaemonApp with one JobDispatcher until SIGTERM (a real reactor, real children).

Usage: python tests/jobs/_driver.py CONFIG.json. The config holds ``store``,
``state_dir``, ``options`` (JobDispatcher keywords), ``app`` (DaemonApp keywords)
and ``report`` (a path: the dispatcher's stats and progress writes go there as
JSON when the app ends). Prints "ready" once the app runs.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from daemonapp.app import DaemonApp
from daemonapp.daemon import Daemon
from daemonapp.jobs import open_store
from daemonapp.jobs.dispatcher import JobDispatcher


class CountingStore:
    """A real store that remembers when each progress write happened."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.progress_writes: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def set_progress(self, job_id: int, token: int, percent: float, message: str = "") -> None:
        with self.lock:
            self.progress_writes.setdefault(str(job_id), []).append(time.monotonic())
        self.inner.set_progress(job_id, token, percent, message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Probe(Daemon):
    """A daemon due every 10 ms that records how late each of its runs starts."""

    run_every = 0.01

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.lateness: list[float] = []

    def get_work(self) -> None:
        due = self.stats["next_run_at"]
        if due is not None:
            self.lateness.append(self.reactor.seconds() - due)


def main() -> int:
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)
    counting = CountingStore(open_store(config["store"])) if config.get("count") else None
    app = DaemonApp(state_dir=config.get("state_dir"), **config.get("app", {}))
    options = dict(config.get("options", {}))
    dispatcher = JobDispatcher(name="jobs", store=counting or config["store"], **options)
    app.add(dispatcher)
    probe = Probe(name="probe") if config.get("probe") else None
    if probe is not None:
        app.add(probe)

    def report(status: int) -> int:
        data = {"status": status, "stats": dispatcher.stats}
        if probe is not None:
            data["lateness"] = probe.lateness
        if counting is not None:
            data["progress_writes"] = counting.progress_writes
            counting.inner.close()
        with open(config["report"], "w") as out:
            json.dump(data, out)
        return status

    app.when_ended().addCallback(report)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
