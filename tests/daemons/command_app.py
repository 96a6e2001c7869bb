"""Run Command daemons on the real reactor, then write their stats and log lines as JSON.

Used by test_command_integration.py as a child process:
``python command_app.py OUT.json`` runs the app until its shutdown_after deadline.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from daemonapp.app import DaemonApp
from daemonapp.daemons.command import Command

PY = sys.executable


def main() -> int:
    out = sys.argv[1]
    events: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        events.append({
            "daemon": event.get("daemon"),
            "stream": event.get("stream"),
            "line": event.get("line"),
            "failure": None if failure is None else str(failure.value),
        })

    globalLogPublisher.addObserver(observer)
    app = DaemonApp(shutdown_after=float(sys.argv[2]), stop_timeout=20)
    app.add(Command(name="echo", run_every=0.2, env={"GREETING": "hello"}, argv=[
        PY, "-c", "import os, sys; print(os.environ['GREETING']); "
                  "print(','.join(sorted(os.environ)), file=sys.stderr)"]))
    app.add(Command(name="fail", run_every=0.2, argv=[PY, "-c", "raise SystemExit(3)"]))
    app.add(Command(name="stubborn", run_every=60, timeout=0.5, kill_after=0.5, argv=[
        PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('ignoring TERM', flush=True); time.sleep(60)"]))
    # Its child ignores SIGTERM too and outlives it unless the whole group is killed.
    app.add(Command(name="stubborn_group", run_every=60, timeout=0.5, kill_grace=0.5, argv=[
        "sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait"]))
    app.add(Command(name="long", run_every=60, timeout=None, argv=[
        PY, "-c", "import time; print('started', flush=True); time.sleep(60)"]))
    status = app.run()
    with open(out, "w") as f:
        json.dump({"status": status,
                   "stats": {name: d.stats for name, d in app.daemons.items()},
                   "events": events}, f)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
