"""Supervision benchmark: what run timeouts, alert bookkeeping and the run history cost
a busy scheduler (DESIGN §10, issue 18).

Usage: python bench/supervision.py [--daemons N] [--seconds S] [--repeat R]

N always-busy daemons (``get_work`` returns an item, ``do_work`` does nothing,
``max_items`` 1, so every item is a run of its own: the scheduler's worst case for
per-run bookkeeping) on the real reactor, in child processes of this interpreter,
interleaved:

- off: no ``timeout``, no ``alert_after``, ``history`` 0, no state_dir;
- mem: ``timeout`` 60 s, ``alert_after`` 3, ``history`` 100 kept in memory (no
  state_dir): the per-run bookkeeping alone (info);
- on: the same with a state_dir (the run history written to
  ``state_dir/history.jsonl`` once a second): judged.

Prints runs/s (wall) and runs per CPU second of each, and on/off per repeat and as
the median: the goal is >= 0.9x. Runs per CPU second follow the shared machine's load
less than wall-clock rates: quote both, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _schedlib import cpu_seconds, emit, format_table, median, run_child, use_source_tree

SCRIPT = Path(__file__).resolve()


def child_busy(mode: str, n: int, secs: float) -> None:
    """N busy daemons, one item per run, supervision ``mode`` (on/off): runs/s."""
    use_source_tree()
    from twisted.internet import reactor

    from daemonapp.app import DaemonApp
    from daemonapp.daemon import Daemon

    class Busy(Daemon):
        run_every = 1.0

        def get_work(self) -> Any:
            return 1

        def do_work(self, job: Any) -> Any:
            return None

    state_dir = tempfile.mkdtemp(prefix="daemonapp-bench-") if mode == "on" else None
    app = DaemonApp(reactor=reactor, handle_signals=False, stop_reactor=True,
                    shutdown_after=secs, state_dir=state_dir,
                    history=0 if mode == "off" else 100)
    supervision: dict[str, Any] = {} if mode == "off" else {"timeout": 60, "alert_after": 3}
    daemons = [Busy(name=f"busy{i}", max_items=1, **supervision) for i in range(n)]
    for daemon in daemons:
        app.add(daemon)
    t: dict[str, float] = {}

    def start() -> None:
        t["start"] = time.perf_counter()
        t["cpu_start"] = cpu_seconds()
        app.startService()

    def ended(status: int) -> None:
        t["end"] = time.perf_counter()
        t["cpu_end"] = cpu_seconds()

    app.when_ended().addCallback(ended)
    reactor.callWhenRunning(start)
    reactor.run()
    runs = sum(d.stats["runs"] for d in daemons)
    wall = t["end"] - t["start"]
    cpu = t["cpu_end"] - t["cpu_start"]
    written = 0
    if state_dir is not None:
        history = Path(state_dir) / "history.jsonl"
        if history.exists():
            written = sum(len(json.loads(line)[1]) for line in history.read_text().splitlines())
        shutil.rmtree(state_dir, ignore_errors=True)
    emit({"mode": mode, "n": n, "runs": runs, "rate": runs / wall,
          "per_cpu": runs / cpu if cpu else float("nan"), "history_runs": written})


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child_busy(argv[2], int(argv[3]), float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    mem_ratios: list[float] = []
    for i in range(args.repeat):
        # Interleaved, the order alternating, so a change in machine load hits both.
        order = ("off", "mem", "on") if i % 2 == 0 else ("on", "mem", "off")
        got = {mode: run_child(SCRIPT, "busy", mode, args.daemons, args.seconds)
               for mode in order}
        ratio = got["on"]["rate"] / got["off"]["rate"]
        cpu_ratio = got["on"]["per_cpu"] / got["off"]["per_cpu"]
        mem_ratio = got["mem"]["per_cpu"] / got["off"]["per_cpu"]
        ratios.append(ratio)
        cpu_ratios.append(cpu_ratio)
        mem_ratios.append(mem_ratio)
        rows.append([str(i + 1), f"{got['off']['rate']:,.0f}", f"{got['on']['rate']:,.0f}",
                     f"{ratio:.3f}x", f"{got['off']['per_cpu']:,.0f}",
                     f"{got['on']['per_cpu']:,.0f}", f"{cpu_ratio:.3f}x",
                     f"{mem_ratio:.3f}x", str(got["on"]["history_runs"])])
    ok = median(ratios) >= 0.9
    rows.append(["median", "", "", f"{median(ratios):.3f}x", "", "",
                 f"{median(cpu_ratios):.3f}x", f"{median(mem_ratios):.3f}x", ""])
    print(f"{args.daemons} busy daemons, max_items 1 (one item per run), {args.seconds:g} s "
          f"per child; on = timeout 60 s + alert_after 3 + history 100 in a state_dir; "
          f"mem = the same without state_dir; load average {os.getloadavg()[0]:.2f}")
    print(format_table(["repeat", "off runs/s", "on runs/s", "on/off", "off runs/cpu-s",
                        "on runs/cpu-s", "on/off (cpu)", "mem/off (cpu)", "runs written"],
                       rows))
    print(f"goal: on/off >= 0.9x (median of wall-clock rates): {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
