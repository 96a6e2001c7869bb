"""Supervision benchmark: what run timeouts, alert bookkeeping and the run history cost
a busy scheduler (DESIGN §10, issue 18).

Usage: python bench/supervision.py [--daemons N] [--seconds S] [--repeat R]
       python bench/supervision.py --instructions [--daemons N]

N always-busy daemons (``get_work`` returns an item, ``do_work`` does nothing,
``max_items`` 1, so every item is a run of its own: the scheduler's worst case for
per-run bookkeeping) on the real reactor, in child processes of this interpreter,
interleaved:

- off: no ``timeout``, no ``alert_after``, ``history`` 0, no state_dir;
- mem: ``timeout`` 60 s, ``alert_after`` 3, ``history`` 100 kept in memory (no
  state_dir): the per-run bookkeeping alone (info);
- on: the same with a state_dir (the run history written to
  ``state_dir/history.jsonl`` once a second): judged.

By default the three children of a repeat run at once, taking turns of 50 ms (the
others stopped with SIGSTOP): this machine's speed drifts by ±20 % over seconds, so
children run one after the other measured different machines (on/off 0.69-1.03x
between repeats of the same code); children taking turns see the same one. Each runs
about ``--seconds`` of its own CPU; the figure is runs per CPU second, and on/off of it
per repeat and as the median: the goal is >= 0.9x. ``--alternate 0`` runs them one
after the other and judges wall-clock rates, as before. Each child is measured from
its start to the beginning of its stop (the dispatch; the history's last write at
the stop is not counted, its writes while it runs are).

``--instructions``: the same daemons on a fake clock that advances 1.5 us per reading,
a fixed number of runs, under ``valgrind --tool=callgrind``: instructions per run of
off and mem (the difference of two run counts, so that the start-up drops out) and
off/mem. It does not follow the machine's load at all: the repeatable figure for the
per-run bookkeeping on a shared machine. The history's writes (on) are not in it: at
~150,000 runs/s they come every 5 s for 10,000 runs, far more runs than a callgrind
run can make; the child ``--child write`` times one such write instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _schedlib import (
    RESULT_PREFIX,
    cpu_seconds,
    emit,
    format_table,
    median,
    result_of,
    run_alternating,
    run_child,
    use_source_tree,
)

SCRIPT = Path(__file__).resolve()
#: The two run counts whose difference gives the instructions per run.
COUNT_RUNS = (20_000, 80_000)
#: Seconds the fake clock advances at each reading (about 4 readings per run).
FAKE_STEP = 1.5e-6


def child_busy(mode: str, n: int, secs: float) -> None:
    """N busy daemons, one item per run, supervision ``mode`` (on/off): runs/s."""
    use_source_tree()
    from twisted.internet import reactor

    app, daemons, state_dir = _make_app(mode, n, reactor, stop_reactor=True,
                                        shutdown_after=secs)
    t: dict[str, float] = {}

    def start() -> None:
        t["start"] = time.perf_counter()
        t["cpu_start"] = cpu_seconds()
        app.startService()

    def stopping(reason: str) -> None:
        # The dispatch ends here: the stop's own work (the history's last write) is not
        # a run's, and in a child of a few seconds it would weigh as much as the writes
        # of a whole minute of steady running.
        t["end"] = time.perf_counter()
        t["cpu_end"] = cpu_seconds()
        t["runs"] = sum(d.stats["runs"] for d in daemons)

    app.on_stopping(stopping)
    reactor.callWhenRunning(start)
    reactor.run()
    runs = int(t["runs"])
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


def _make_app(mode: str, n: int, reactor: Any, **kw: Any) -> tuple[Any, list[Any], str | None]:
    from daemonapp.app import DaemonApp
    from daemonapp.daemon import Daemon

    class Busy(Daemon):
        run_every = 1.0

        def get_work(self) -> Any:
            return 1

        def do_work(self, job: Any) -> Any:
            return None

    state_dir = tempfile.mkdtemp(prefix="daemonapp-bench-") if mode == "on" else None
    app = DaemonApp(reactor=reactor, handle_signals=False, state_dir=state_dir,
                    history=0 if mode == "off" else 100, **kw)
    supervision: dict[str, Any] = {} if mode == "off" else {"timeout": 60, "alert_after": 3}
    daemons = [Busy(name=f"busy{i}", max_items=1, **supervision) for i in range(n)]
    for daemon in daemons:
        app.add(daemon)
    return app, daemons, state_dir


def child_count(mode: str, n: int, runs: int) -> None:
    """N busy daemons on a fake clock until ``runs`` runs: deterministic work for
    callgrind (no wall clock, no reactor wake-ups)."""
    use_source_tree()
    from twisted.internet.task import Clock

    class TickClock(Clock):
        def seconds(self) -> float:
            self.rightNow += FAKE_STEP
            return self.rightNow

    clock = TickClock()
    clock.rightNow = 1.7e9
    app, daemons, state_dir = _make_app(mode, n, clock, stop_reactor=False)
    app.startService()
    calls = clock.calls
    while daemons[0].stats["runs"] * n < runs:  # round robin: every daemon runs alike
        call = calls.pop(0)
        clock.rightNow = max(clock.rightNow, call.time)
        call.called = 1
        call.func(*call.args, **call.kw)
        clock._sortCalls()
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    emit({"mode": mode, "runs": sum(d.stats["runs"] for d in daemons)})


def instructions(n: int) -> int:
    """Instructions per run of each mode under callgrind, and their ratios."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    per_run: dict[str, float] = {}
    for mode in ("off", "mem"):
        counts = []
        for runs in COUNT_RUNS:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "callgrind.out"
                done = subprocess.run(
                    [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
                     sys.executable, str(SCRIPT), "--child", "count", mode, str(n), str(runs)],
                    capture_output=True, text=True, check=False)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or found is None:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            result = json.loads(done.stdout.split(RESULT_PREFIX, 1)[1].splitlines()[0])
            counts.append((int(found.group(1)), int(result["runs"])))
        (i1, r1), (i2, r2) = counts
        per_run[mode] = (i2 - i1) / (r2 - r1)
    rows = [[mode, f"{per_run[mode]:,.0f}", f"{per_run['off'] / per_run[mode]:.3f}x"]
            for mode in ("off", "mem")]
    print(f"{n} busy daemons, max_items 1, fake clock ({FAKE_STEP * 1e6:g} us a reading); "
          f"instructions per run = (I({COUNT_RUNS[1]:,} runs) - I({COUNT_RUNS[0]:,} runs)) / "
          f"{COUNT_RUNS[1] - COUNT_RUNS[0]:,}")
    print(format_table(["mode", "instructions/run", "off/mode (speed ratio)"], rows))
    write = run_child(SCRIPT, "write", n)
    print(f"a write of the history (on): {write['runs']:,} runs in {write['cpu'] * 1e3:.1f} ms "
          f"of CPU, {write['cpu'] / write['runs'] * 1e6:.2f} us per run written")
    return 0


def child_write(n: int) -> None:
    """The CPU of one write of the run history at a busy app's rate: ``n`` daemons with
    100 new runs each (what a write holds at most), the second of two (the first creates
    the file)."""
    use_source_tree()
    from daemonapp.history import RunHistory

    state_dir = tempfile.mkdtemp(prefix="daemonapp-bench-")
    now = [1.7e9]
    history = RunHistory(100, state_dir, seconds=lambda: now[0],
                         call_at=lambda at, function, arg: None)
    logs = [history.attach(f"busy{i}") for i in range(n)]
    cpu = 0.0
    for _ in range(2):
        for _ in range(100):
            for run_log in logs:  # as Daemon._end has it
                now[0] += 6e-6
                if not run_log.new:
                    history.mark(run_log.name)
                run_log.new.append((now[0], now[0] + 5e-6, "yielded", 1, "schedule", None))
        started = cpu_seconds()
        history.flush()
        cpu = cpu_seconds() - started
    shutil.rmtree(state_dir, ignore_errors=True)
    emit({"runs": 100 * n, "cpu": cpu})


def alternated(n: int, secs: float, repeat: int, slice_s: float) -> int:
    """The three modes of each repeat at once, taking turns of ``slice_s`` (so a drift of
    the shared machine's speed hits them alike), each for ``secs`` of its own CPU: on/off
    of runs per CPU second, judged on the median."""
    rows = []
    ratios: list[float] = []
    mem_ratios: list[float] = []
    for i in range(repeat):
        order = ("off", "mem", "on") if i % 2 == 0 else ("on", "mem", "off")
        # Each child's window is wall-clock: it runs a third of it.
        commands = [[sys.executable, str(SCRIPT), "--child", "busy", mode, str(n),
                     str(secs * len(order))] for mode in order]
        outs = run_alternating(commands, slice_s, timeout=120 + 10 * secs)
        got = {mode: result_of(out, mode) for mode, out in zip(order, outs, strict=True)}
        ratio = got["on"]["per_cpu"] / got["off"]["per_cpu"]
        mem_ratio = got["mem"]["per_cpu"] / got["off"]["per_cpu"]
        ratios.append(ratio)
        mem_ratios.append(mem_ratio)
        rows.append([str(i + 1), f"{got['off']['per_cpu']:,.0f}",
                     f"{got['mem']['per_cpu']:,.0f}", f"{got['on']['per_cpu']:,.0f}",
                     f"{ratio:.3f}x", f"{mem_ratio:.3f}x", str(got["on"]["history_runs"])])
    ok = median(ratios) >= 0.9
    rows.append(["median", "", "", "", f"{median(ratios):.3f}x", f"{median(mem_ratios):.3f}x",
                 ""])
    print(f"{n} busy daemons, max_items 1 (one item per run); off, mem and on at once, "
          f"taking turns of {slice_s * 1000:g} ms, ~{secs:g} s of CPU each; on = timeout 60 s "
          f"+ alert_after 3 + history 100 in a state_dir; mem = the same without state_dir; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(format_table(["repeat", "off runs/cpu-s", "mem runs/cpu-s", "on runs/cpu-s",
                        "on/off", "mem/off", "runs written"], rows))
    print(f"goal: on/off >= 0.9x (median, runs per CPU second, alternated): "
          f"{'PASS' if ok else 'MISS'}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        if argv[1] == "count":
            child_count(argv[2], int(argv[3]), int(argv[4]))
        elif argv[1] == "write":
            child_write(int(argv[2]))
        else:
            child_busy(argv[2], int(argv[3]), float(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per run under callgrind (fake clock, repeatable)")
    parser.add_argument("--alternate", type=float, default=0.05, metavar="SLICE",
                        help="run the three children of a repeat at once, taking turns of "
                             "SLICE s (judged per CPU second); 0: one after the other "
                             "(judged on wall-clock rates). Default 0.05")
    args = parser.parse_args(argv)
    if args.instructions:
        return instructions(args.daemons)
    if args.alternate > 0:
        return alternated(args.daemons, args.seconds, args.repeat, args.alternate)
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
