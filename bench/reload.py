"""Reload benchmark: how long a reload of a large file holds up the reactor.

Usage: .venv/bin/python bench/reload.py [--daemons N] [--repeat R]

An app of N daemons (a third each FakeDaemon with run_every, file_cleanup, and a clock
schedule, as `daemonapp run` builds them from YAML) runs on the real reactor, with a
probe (a LoopingCall every 5 ms) measuring the longest gap between two of its calls. A
reload of the same file with one daemon changed is timed, and the longest probe gap
during it is the reactor's stall:

- ours: `Controller.reload` as it is (the file read and checked in a thread, the
  difference applied on the reactor);
- anchor: the same reload with the file read on the reactor (``run_in_thread`` calls at
  once: what a reload did before).

Ours and the anchor alternate, R times each (median). Goal: ours stalls the reactor at
most 100 ms, and at most 0.25x the anchor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.environ.get("DAEMONAPP_BENCH_SRC", str(Path(__file__).resolve().parents[1])))

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import LoopingCall, deferLater

from daemonapp.config import build_app, load_config
from daemonapp.control import controller_of

reactor: Any = _reactor
PROBE_EVERY = 0.005
GOAL_MS = 100.0
GOAL_RATIO = 0.25


def write_file(path: Path, daemons: int, changed: int) -> None:
    lines = ["app:", "  state_dir: ./var", "daemons:"]
    for i in range(daemons):
        lines.append(f"  d{i}:")
        every = "2h" if i == changed else "1h"
        if i % 3 == 0:
            lines += ["    type: daemonapp.testing:FakeDaemon", f"    run_every: {every}",
                      "    start_delay: 1h"]
        elif i % 3 == 1:
            lines += ["    type: file_cleanup", f"    run_every: {every}", "    start_delay: 1h",
                      "    directory: ./scratch", "    remove_older_than: 1h"]
        else:
            lines += ["    type: daemonapp.testing:FakeDaemon",
                      f"    schedule: '{'0 3' if i == changed else '0 4'} * * *'"]
    path.write_text("\n".join(lines) + "\n")


class Probe:
    def __init__(self) -> None:
        self.last = time.monotonic()
        self.worst = 0.0
        self.call = LoopingCall(self.tick)

    def tick(self) -> None:
        now = time.monotonic()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def reset(self) -> None:
        self.last = time.monotonic()
        self.worst = 0.0


@inlineCallbacks
def measure(root: Path, daemons: int, repeat: int, results: dict[str, list[tuple[float, float]]]
            ) -> Any:
    path = root / "app.yaml"
    write_file(path, daemons, changed=-1)
    app = build_app(load_config(str(path), check_state_dir=True), reactor=reactor,
                    status_server=False, handle_signals=False, stop_reactor=False)
    controller = controller_of(app)
    assert controller is not None
    threaded = controller.reloader.run_in_thread
    app.startService()
    probe = Probe()
    probe.call.start(PROBE_EVERY)
    changed = 0
    for _ in range(repeat):
        for case in ("ours", "anchor"):
            changed = (changed + 1) % daemons
            write_file(path, daemons, changed)
            controller.reloader.run_in_thread = (
                threaded if case == "ours"
                else maybeDeferred)
            yield deferLater(reactor, 0.2, lambda: None)  # let the previous one settle
            probe.reset()
            began = time.monotonic()
            reply = yield controller.reload("bench")
            took = time.monotonic() - began
            yield deferLater(reactor, 0.05, lambda: None)  # the probe's next call
            assert reply.get("ok") and len(reply["replaced"]) >= 1, reply
            results[case].append((probe.worst, took))
    probe.call.stop()
    yield app.stop("bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rbench"))
    (root / "scratch").mkdir()
    results: dict[str, list[tuple[float, float]]] = {"ours": [], "anchor": []}
    failure: list[Any] = []

    def run() -> None:
        d: Deferred[Any] = measure(root, args.daemons, args.repeat, results)
        d.addErrback(failure.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    shutil.rmtree(root, ignore_errors=True)
    if failure:
        failure[0].printTraceback()
        return 1
    stall = {case: statistics.median(w for w, _ in rows) * 1000 for case, rows in results.items()}
    took = {case: statistics.median(t for _, t in rows) * 1000 for case, rows in results.items()}
    ratio = stall["ours"] / stall["anchor"] if stall["anchor"] else float("inf")
    print(f"reload of {args.daemons} daemons, median of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':28} {'ours':>10} {'anchor':>10} {'ratio':>7}  goal")
    ok = stall["ours"] <= GOAL_MS and ratio <= GOAL_RATIO
    print(f"{'longest reactor stall, ms':28} {stall['ours']:10.1f} {stall['anchor']:10.1f} "
          f"{ratio:7.2f}  <= {GOAL_MS:g} ms and <= {GOAL_RATIO}x  {'PASS' if ok else 'MISS'}")
    worst = {case: max(w for w, _ in rows) * 1000 for case, rows in results.items()}
    print(f"{'worst stall of the runs (info)':28} {worst['ours']:10.1f} {worst['anchor']:10.1f}")
    print(f"{'reload took, ms (info)':28} {took['ours']:10.1f} {took['anchor']:10.1f} "
          f"{took['ours'] / took['anchor']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
