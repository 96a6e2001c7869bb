"""Scheduler benchmark: daemonapp's DaemonApp against the bare reactor and its peers.

Usage: python bench/scheduler.py [--quick] [--only N[,N...]] [--repeat R]

Prints one table: our figure, the anchor's figure measured in the same run, the
ratio, the goal and PASS/MISS. Every measurement runs in its own child process of
this interpreter (``--child CASE ...`` is that child's entry point).

1. busy dispatch: items/s of N always-busy daemons (max_items 10) vs N raw
   callLater(0) chains (anchors/reactor_limit.py).
2. 10,000 daemons every 1 s: lateness p50/p99 and CPU vs 10,000 LoopingCalls
   (anchors/timers_twisted.py), APScheduler (anchors/timers_apscheduler.py) as a peer.
3. 10,000 idle backed-off daemons: timers armed and CPU per idle run.
3s. the same with due times spread 1.5 ms apart, so that each run is a reactor wake-up
   of its own: CPU per idle run vs 10,000 LoopingCalls spread alike.
4. memory per daemon vs per LoopingCall (tracemalloc, and RSS).
5. reactor responsiveness: p99 lateness of a 10 ms LoopingCall probe while 100
   busy daemons saturate the scheduler.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _schedlib import (
    LAST_CHILD_CPU,
    ChildError,
    anchor_command,
    cpu_seconds,
    emit,
    format_table,
    median,
    parse_fields,
    preemptions,
    quantile,
    rss_bytes,
    run,
    run_child,
    sleeps,
    use_source_tree,
)

SCRIPT = Path(__file__).resolve()
N_TIMERS = 10_000

# ---------------------------------------------------------------------------------------
# Children: each measures one thing in a fresh process and prints RESULT {json}.
# ---------------------------------------------------------------------------------------


def _app(reactor: Any, **kw: Any) -> Any:
    use_source_tree()
    from daemonapp.app import DaemonApp

    return DaemonApp(reactor=reactor, handle_signals=False, **kw)


def child_busy(n: int, secs: float, max_items: int) -> None:
    """N always-busy daemons round-robin with a max_items budget: items/s."""
    use_source_tree()
    from twisted.internet import reactor

    from daemonapp.daemon import Daemon

    count = 0

    class Busy(Daemon):
        run_every = 1.0

        def get_work(self) -> Any:
            return 1

        def do_work(self, job: Any) -> Any:
            nonlocal count
            count += 1

    app = _app(reactor, stop_reactor=True, shutdown_after=secs)
    daemons = [Busy(name=f"busy{i}", max_items=max_items) for i in range(n)]
    for d in daemons:
        app.add(d)
    t: dict[str, float] = {}

    def start() -> None:
        t["start"] = time.perf_counter()
        t["cpu_start"] = cpu_seconds()
        app.startService()

    def ended(status: int) -> None:
        t["end"] = time.perf_counter()
        t["cpu_end"] = cpu_seconds()
        t["items"] = count

    app.when_ended().addCallback(ended)
    reactor.callWhenRunning(start)
    reactor.run()
    dt = t["end"] - t["start"]
    runs = sum(d.stats["runs"] for d in daemons)
    cpu = t["cpu_end"] - t["cpu_start"]
    emit({"n": n, "items": t["items"], "secs": dt, "rate": t["items"] / dt,
          "cpu_s": cpu, "items_per_cpu_s": t["items"] / cpu if cpu else float("nan"),
          "runs": runs, "max_items": max_items})


def child_timers(n: int, period: float, secs: float, variant: str) -> None:
    """N daemons due every PERIOD s: lateness (start - intended due) and CPU.

    variant "worked": each run handles one item (get_work -> job, do_work, get_work
    -> None), so run_every applies; "idle": get_work returns None, maximum_idle =
    run_every, so the delay stays PERIOD. Start times are spread over one period,
    as the LoopingCall anchor does.
    """
    use_source_tree()
    from twisted.internet import reactor

    from daemonapp.daemon import Daemon

    seconds = reactor.seconds
    monotonic = time.monotonic
    late: list[float] = []
    gaps: list[float] = []  # the anchor's own metric: start - (previous start + period)
    previous: dict[int, float] = {}

    def record(daemon: Daemon) -> None:
        # Called at the start of a run: lateness against the intended due time.
        if daemon.stats["runs"]:
            late.append(seconds() - daemon.stats["next_run_at"])
        now = monotonic()
        key = id(daemon)
        if key in previous:
            gaps.append(now - previous[key] - period)
        previous[key] = now

    class Worked(Daemon):
        run_every = period
        _second_call = False

        def get_work(self) -> Any:
            if self._second_call:
                self._second_call = False
                return None
            self._second_call = True
            record(self)
            return 1

        def do_work(self, job: Any) -> Any:
            return None

    class Idle(Daemon):
        run_every = period
        maximum_idle = period

        def get_work(self) -> Any:
            record(self)
            return None

    cls = Worked if variant == "worked" else Idle
    app = _app(reactor, stop_reactor=True, shutdown_after=secs)
    for i in range(n):
        app.add(cls(name=f"t{i}", start_delay=period * i / n))
    marks: dict[str, float] = {}

    def start() -> None:
        marks["cpu_start"] = cpu_seconds()
        marks["preempt_start"] = preemptions()
        app.startService()

    def ended(status: int) -> None:
        marks["cpu_end"] = cpu_seconds()
        marks["preempt_end"] = preemptions()

    app.when_ended().addCallback(ended)
    reactor.callWhenRunning(start)
    reactor.run()
    import resource

    late.sort()
    gaps.sort()
    emit({"n": n, "variant": variant, "runs": len(late),
          "p50_ms": quantile(late, 0.5) * 1000, "p99_ms": quantile(late, 0.99) * 1000,
          "max_ms": quantile(late, 1.0) * 1000,
          "gap_p50_ms": quantile(gaps, 0.5) * 1000, "gap_p99_ms": quantile(gaps, 0.99) * 1000,
          "cpu_s": marks["cpu_end"], "cpu_window_s": marks["cpu_end"] - marks["cpu_start"],
          "preemptions": marks["preempt_end"] - marks["preempt_start"],
          "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def child_lc_exact(n: int, period: float, secs: float) -> None:
    """N LoopingCalls, lateness measured as ours is: start - intended due (starttime + k x period).

    The anchor measures the gap to "previous call + period" on time.monotonic, which
    partly cancels lateness; this is the same clock and definition as child_timers.
    """
    import resource

    from twisted.internet import reactor, task

    seconds = reactor.seconds
    late: list[float] = []

    def make() -> task.LoopingCall:
        state = {"next_k": 0}  # 0: the call start(now=True) makes at once, not measured

        def run() -> None:
            now, start = seconds(), lc.starttime
            if start is None:
                return
            if state["next_k"]:
                late.append(now - (start + state["next_k"] * period))
            state["next_k"] = math.floor((now - start) / period + 1e-6) + 1

        lc = task.LoopingCall(run)
        return lc

    marks: dict[str, float] = {}
    for i in range(n):
        reactor.callLater(period * i / n, make().start, period, now=True)

    def stop() -> None:
        marks["cpu_end"] = cpu_seconds()
        marks["preempt_end"] = preemptions()
        reactor.stop()

    reactor.callLater(secs, stop)
    marks["cpu_start"] = cpu_seconds()
    marks["preempt_start"] = preemptions()
    reactor.run()
    late.sort()
    emit({"n": n, "runs": len(late),
          "p50_ms": quantile(late, 0.5) * 1000, "p99_ms": quantile(late, 0.99) * 1000,
          "max_ms": quantile(late, 1.0) * 1000,
          "cpu_s": marks["cpu_end"], "cpu_window_s": marks["cpu_end"] - marks["cpu_start"],
          "preemptions": marks["preempt_end"] - marks["preempt_start"],
          "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def child_wake(count: int) -> None:
    """The platform's floor: lateness of one callLater at a time on an otherwise idle reactor.

    Python rounds epoll timeouts up to whole milliseconds, and the kernel adds its
    wake-up latency; no timer on this reactor does better than this.
    """
    import random

    from twisted.internet import reactor

    late: list[float] = []

    def fire(due: float) -> None:
        late.append(reactor.seconds() - due)
        if len(late) < count:
            delay = random.uniform(0.001, 0.004)  # off the millisecond grid, like due times
            reactor.callLater(delay, fire, reactor.seconds() + delay)
        else:
            reactor.stop()

    reactor.callLater(0.002, fire, reactor.seconds() + 0.002)
    reactor.run()
    late.sort()
    emit({"count": len(late), "p50_ms": quantile(late, 0.5) * 1000,
          "p99_ms": quantile(late, 0.99) * 1000, "max_ms": quantile(late, 1.0) * 1000})


def _deadline_timers(app: Any) -> set[int]:
    # The app's lifetime timers (soft, hard, idle-exit, stop_timeout) are allowed
    # beside the scheduler's one timer (DESIGN §2).
    names = ("_soft_timer", "_hard_timer", "_idle_timer", "_stop_timer")
    owner = getattr(app, "lifetime", app)  # DaemonApp.lifetime since it is a part of its own
    return {id(t) for t in (getattr(owner, name, None) for name in names) if t is not None}


def child_idle(n: int, warm: float, secs: float) -> None:
    """N idle daemons backed off to maximum_idle 1 s: timers armed, CPU per idle run."""
    use_source_tree()
    from twisted.internet import reactor

    from daemonapp.daemon import Daemon

    runs = 0

    class Idle(Daemon):
        # Backoff 0.25, 0.5, 1, 1, ... (maximum_idle defaults to 8 x run_every = 1 s).
        run_every = 0.125
        multiply_idle_by = 2.0

        def get_work(self) -> Any:
            nonlocal runs
            runs += 1
            return None

    app = _app(reactor, stop_reactor=True, shutdown_after=secs + 0.5)
    for i in range(n):
        app.add(Idle(name=f"idle{i}", start_delay=1.0 * i / n))
    samples: list[int] = []
    window_samples: list[int] = []
    marks: dict[str, float] = {}

    # The benchmark's own timers (warm-up and end marks); kept alive, so that their
    # ids are never reused by the scheduler's timer.
    own: list[Any] = []

    yields = 0  # samples that saw a yield's callLater(0) (DESIGN §2 allows it)
    extra: set[str] = set()  # what was armed when more than one timer was

    def sample() -> None:
        nonlocal yields
        deadlines = _deadline_timers(app) | {id(call) for call in own}
        # The scheduler's yield (DaemonApp.scheduler since the scheduler is a part of
        # its own; the app itself before).
        yield_call = getattr(getattr(app, "scheduler", app), "_yield_call", None)
        calls = [call for call in reactor.getDelayedCalls()
                 if id(call) not in deadlines and call.active()]
        if yield_call is not None and yield_call in calls:
            calls.remove(yield_call)
            yields += 1
        armed = len(calls)
        if armed > 1:
            extra.update(getattr(call.func, "__qualname__", repr(call.func)) for call in calls)
        samples.append(armed)
        if "cpu_warm" in marks and "cpu_end" not in marks:
            window_samples.append(armed)
        if "cpu_end" not in marks:
            reactor.callLater(0.05, sample)

    def at_warm() -> None:
        marks["cpu_warm"] = cpu_seconds()
        marks["runs_warm"] = runs

    def at_end() -> None:
        marks["cpu_end"] = cpu_seconds()
        marks["runs_end"] = runs
        app.stop("benchmark over")

    def start() -> None:
        app.startService()
        reactor.callLater(0.05, sample)
        own.append(reactor.callLater(warm, at_warm))
        own.append(reactor.callLater(secs, at_end))

    reactor.callWhenRunning(start)
    reactor.run()
    window_runs = marks["runs_end"] - marks["runs_warm"]
    cpu = marks["cpu_end"] - marks["cpu_warm"]
    delays = sorted({d.stats["current_delay"] for d in app.daemons.values()})
    emit({"n": n, "timers_max": max(window_samples), "timers_max_all": max(samples),
          "timers_min": min(window_samples), "samples": len(window_samples),
          "yield_samples": yields, "extra": sorted(extra),
          "window_s": secs - warm, "window_runs": window_runs, "cpu_window_s": cpu,
          "us_per_run": cpu / window_runs * 1e6 if window_runs else float("nan"),
          "delays_at_end": delays[:5]})


def child_loopingcall(n: int, period: float, warm: float, secs: float) -> None:
    """N LoopingCalls (the anchor's closure shape): timers armed, CPU per call, RSS."""
    from twisted.internet import reactor, task

    calls = 0
    base_rss = rss_bytes()

    def make(i: int) -> Callable[[], None]:
        state: dict[str, float | None] = {"due": None}

        def run() -> None:
            nonlocal calls
            calls += 1
            state["due"] = time.monotonic() + period

        return run

    loops = []
    for i in range(n):
        lc = task.LoopingCall(make(i))
        reactor.callLater(period * i / n, lc.start, period, now=True)
        loops.append(lc)
    marks: dict[str, float] = {}

    def at_warm() -> None:
        marks["cpu_warm"] = cpu_seconds()
        marks["calls_warm"] = calls
        marks["sleeps_warm"] = sleeps()
        marks["timers"] = len(reactor.getDelayedCalls()) - 1  # minus at_end's own

    def at_end() -> None:
        marks["cpu_end"] = cpu_seconds()
        marks["calls_end"] = calls
        marks["sleeps_end"] = sleeps()
        marks["rss"] = rss_bytes()
        reactor.stop()

    reactor.callLater(warm, at_warm)
    reactor.callLater(secs, at_end)
    reactor.run()
    window_calls = marks["calls_end"] - marks["calls_warm"]
    cpu = marks["cpu_end"] - marks["cpu_warm"]
    emit({"n": n, "timers": marks["timers"], "window_calls": window_calls,
          "us_per_call": cpu / window_calls * 1e6 if window_calls else float("nan"),
          "calls_per_wake": window_calls / max(1, marks["sleeps_end"] - marks["sleeps_warm"]),
          "rss_per": (marks["rss"] - base_rss) / n})


def child_idle_spread(n: int, period: float, warm: float, secs: float) -> None:
    """N idle backed-off daemons due PERIOD apart / N each: CPU and wake-ups per idle run.

    run_every PERIOD/2 + increase_idle_by PERIOD/2 = maximum_idle PERIOD: every run is
    idle and backed off to its cap, so the daemons keep the start_delay spread. The
    window starts after WARM (> PERIOD: every daemon ran once), as the anchor's does.
    """
    use_source_tree()
    from twisted.internet import reactor

    from daemonapp.daemon import Daemon

    runs = 0

    class Idle(Daemon):
        run_every = period / 2
        increase_idle_by = period / 2
        maximum_idle = period

        def get_work(self) -> Any:
            nonlocal runs
            runs += 1
            return None

    app = _app(reactor, stop_reactor=True, shutdown_after=secs + 0.5)
    for i in range(n):
        app.add(Idle(name=f"idle{i}", start_delay=period * i / n))
    marks: dict[str, float] = {}

    def at_warm() -> None:
        marks["cpu_warm"] = cpu_seconds()
        marks["runs_warm"] = runs
        marks["sleeps_warm"] = sleeps()

    def at_end() -> None:
        marks["cpu_end"] = cpu_seconds()
        marks["runs_end"] = runs
        marks["sleeps_end"] = sleeps()
        app.stop("benchmark over")

    def start() -> None:
        app.startService()
        reactor.callLater(warm, at_warm)
        reactor.callLater(secs, at_end)

    reactor.callWhenRunning(start)
    reactor.run()
    window_runs = marks["runs_end"] - marks["runs_warm"]
    cpu = marks["cpu_end"] - marks["cpu_warm"]
    delays = sorted({d.stats["current_delay"] for d in app.daemons.values()})
    emit({"n": n, "window_s": secs - warm, "window_runs": window_runs, "cpu_window_s": cpu,
          "us_per_run": cpu / window_runs * 1e6 if window_runs else float("nan"),
          "runs_per_wake": window_runs / max(1, marks["sleeps_end"] - marks["sleeps_warm"]),
          "delays_at_end": delays[:5]})


def child_sleep(gap: float, warm: float, secs: float) -> None:
    """A process that only sleeps GAP s and wakes, again and again (no reactor, no
    timer heap): CPU per wake-up. What the machine charges a process for a wake-up
    itself, below which no scheduler that wakes once per run can go (section 3s)."""
    start = time.monotonic()
    wakes = 0
    while time.monotonic() - start < warm:
        time.sleep(gap)
    cpu_warm = cpu_seconds()
    end = start + secs
    while time.monotonic() < end:
        time.sleep(gap)
        wakes += 1
    cpu = cpu_seconds() - cpu_warm
    emit({"window_calls": wakes, "us_per_call": cpu / wakes * 1e6 if wakes else float("nan")})


def child_floor(gap: float, warm: float, secs: float) -> None:
    """One bare callLater re-armed every GAP s: CPU per reactor wake-up.

    The least any scheduler on this reactor can spend per run when each run is a
    wake-up of its own (section 3s's floor).
    """
    from twisted.internet import reactor

    calls = 0

    def tick() -> None:
        nonlocal calls
        calls += 1
        reactor.callLater(gap, tick)

    marks: dict[str, float] = {}

    def at_warm() -> None:
        marks["cpu_warm"], marks["calls_warm"], marks["sleeps_warm"] = (
            cpu_seconds(), calls, sleeps())

    def at_end() -> None:
        marks["cpu_end"], marks["calls_end"], marks["sleeps_end"] = (
            cpu_seconds(), calls, sleeps())
        reactor.stop()

    reactor.callLater(0, tick)
    reactor.callLater(warm, at_warm)
    reactor.callLater(secs, at_end)
    reactor.run()
    window = marks["calls_end"] - marks["calls_warm"]
    cpu = marks["cpu_end"] - marks["cpu_warm"]
    emit({"window_calls": window, "us_per_call": cpu / window * 1e6 if window else float("nan"),
          "calls_per_wake": window / max(1, marks["sleeps_end"] - marks["sleeps_warm"])})


def child_memory(kind: str, mode: str, n: int, secs: float) -> None:
    """Bytes per daemon or per LoopingCall after they ran a few periods (tracemalloc or RSS)."""
    use_source_tree()
    from twisted.internet import reactor, task

    from daemonapp.daemon import Daemon

    period = 1.0
    app = _app(reactor, stop_reactor=False) if kind == "daemon" else None

    class Ticker(Daemon):
        run_every = period
        maximum_idle = period

        def get_work(self) -> Any:
            self.due = time.monotonic() + period  # the same per-task state as the LoopingCall's
            return None

    def make(i: int) -> Callable[[], None]:
        state: dict[str, float | None] = {"due": None}

        def run() -> None:
            state["due"] = time.monotonic() + period

        return run

    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    else:
        base = rss_bytes()
    keep: list[Any] = []
    if kind == "daemon":
        assert app is not None
        for i in range(n):
            app.add(Ticker(name=f"m{i}", start_delay=period * i / n))
        reactor.callWhenRunning(app.startService)
    else:
        for i in range(n):
            lc = task.LoopingCall(make(i))
            reactor.callLater(period * i / n, lc.start, period, now=True)
            keep.append(lc)
    result: dict[str, float] = {}

    def measure() -> None:
        gc.collect()
        now = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else rss_bytes()
        result["per"] = (now - base) / n
        reactor.stop()

    reactor.callLater(secs, measure)
    reactor.run()
    emit({"kind": kind, "mode": mode, "n": n, "bytes_per": result["per"]})


def child_probe(kind: str, n: int, secs: float, interval: float) -> None:
    """Lateness of a LoopingCall probe while N busy daemons (or raw chains) saturate the loop."""
    use_source_tree()
    from twisted.internet import reactor, task

    from daemonapp.daemon import Daemon

    late: list[float] = []
    busy = 0

    def probe() -> None:
        now = reactor.seconds()
        # The oldest tick this call serves: one past the last one served before.
        k = state["next_k"]
        late.append(now - (lc.starttime + k * interval))
        state["next_k"] = math.floor((now - lc.starttime) / interval + 1e-6) + 1

    state = {"next_k": 1}
    lc = task.LoopingCall(probe)

    if kind == "daemons":

        class Busy(Daemon):
            run_every = 1.0
            max_items = 10

            def get_work(self) -> Any:
                return 1

            def do_work(self, job: Any) -> Any:
                nonlocal busy
                busy += 1

        app = _app(reactor, stop_reactor=True, shutdown_after=secs)
        for i in range(n):
            app.add(Busy(name=f"busy{i}"))

        def start() -> None:
            app.startService()
            lc.start(interval, now=False)

        reactor.callWhenRunning(start)
    else:

        def tick() -> None:
            nonlocal busy
            busy += 1
            reactor.callLater(0, tick)

        def start_raw() -> None:
            for _ in range(n):
                reactor.callLater(0, tick)
            lc.start(interval, now=False)
            reactor.callLater(secs, reactor.stop)

        reactor.callWhenRunning(start_raw)
    preempt = preemptions()
    reactor.run()
    late.sort()
    emit({"kind": kind, "n": n, "ticks": len(late), "busy_items": busy,
          "preemptions": preemptions() - preempt,
          "p50_ms": quantile(late, 0.5) * 1000, "p99_ms": quantile(late, 0.99) * 1000,
          "max_ms": quantile(late, 1.0) * 1000})


CHILDREN: dict[str, Callable[[list[str]], None]] = {
    "busy": lambda a: child_busy(int(a[0]), float(a[1]), int(a[2])),
    "timers": lambda a: child_timers(int(a[0]), float(a[1]), float(a[2]), a[3]),
    "lc_exact": lambda a: child_lc_exact(int(a[0]), float(a[1]), float(a[2])),
    "wake": lambda a: child_wake(int(a[0])),
    "idle": lambda a: child_idle(int(a[0]), float(a[1]), float(a[2])),
    "loopingcall": lambda a: child_loopingcall(int(a[0]), float(a[1]), float(a[2]),
                                               float(a[3])),
    "floor": lambda a: child_floor(float(a[0]), float(a[1]), float(a[2])),
    "sleep": lambda a: child_sleep(float(a[0]), float(a[1]), float(a[2])),
    "idle_spread": lambda a: child_idle_spread(int(a[0]), float(a[1]), float(a[2]),
                                               float(a[3])),
    "memory": lambda a: child_memory(a[0], a[1], int(a[2]), float(a[3])),
    "probe": lambda a: child_probe(a[0], int(a[1]), float(a[2]), float(a[3])),
}

# ---------------------------------------------------------------------------------------
# The parent: run the children, build the table.
# ---------------------------------------------------------------------------------------

Row = list[str]


def _fmt(value: float, unit: str = "", digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000 and digits <= 2:
        return f"{value:,.0f}{unit}"
    return f"{value:.{digits}f}{unit}"


def _ratio(ours: float, anchor: float) -> float:
    return ours / anchor if anchor else float("nan")


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "MISS")


class Bench:
    """Runs the selected measurements and collects table rows and notes."""

    def __init__(self, quick: bool, repeat: int) -> None:
        self.quick = quick
        self.repeat = repeat
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.sources: set[str] = set()

    def row(self, section: str, what: str, ours: str, anchor: str, ratio: str, goal: str,  # noqa: PLR0917
            ok: bool | None) -> None:
        self.rows.append([section, what, ours, anchor, ratio, goal, _verdict(ok)])
        sys.stderr.write(f"  {section} {what}: ours {ours}, anchor {anchor}, {ratio} "
                         f"{_verdict(ok)}\n")

    def anchor(self, script: str, *args: object, timeout: float = 300.0) -> dict[str, float]:
        cmd, source = anchor_command(script, *args)
        self.sources.add(source)
        return parse_fields(run(cmd, timeout))

    def child(self, case: str, *args: object, timeout: float = 300.0) -> dict[str, Any]:
        return run_child(SCRIPT, case, *args, timeout=timeout)

    # 1 ---------------------------------------------------------------------------
    def busy(self) -> None:
        secs = 2.0 if self.quick else 5.0
        startup: dict[int, float] = {}
        for n in (1, 100, 10_000):
            # The anchor script's own start-up CPU (imports, N callLaters), so that its
            # calls can be counted per CPU second of its loop, as ours are.
            runs = []
            for _ in range(2):
                self.anchor("reactor_limit.py", n, 0)
                runs.append(LAST_CHILD_CPU[0])
            startup[n] = min(runs)
        for max_items, tag, goal in ((10, "1", 1.0), (1, "1i", 1.5)):
            cpu_notes = []
            for n in (1, 100, 10_000):
                ours, raw, ours_cpu, raw_cpu = [], [], [], []
                for _ in range(self.repeat):  # interleaved, so load drifts hit both alike
                    result = self.child("busy", n, secs, max_items)
                    ours.append(result["rate"])
                    ours_cpu.append(result["items_per_cpu_s"])
                    fields = self.anchor("reactor_limit.py", n, secs)
                    raw.append(fields["rate"])
                    loop_cpu = LAST_CHILD_CPU[0] - startup[n]
                    raw_cpu.append(fields["calls"] / loop_cpu if loop_cpu > 0 else float("nan"))
                o, a = median(ours), median(raw)
                r = _ratio(o, a)
                self.row(tag, f"busy items/s, N={n:,} (max_items {max_items})", _fmt(o, "/s"),
                         _fmt(a, "/s"), f"{r:.2f}x", f">= {goal:g}x", r >= goal)
                oc, ac = median(ours_cpu), median(raw_cpu)
                cpu_notes.append(f"N={n:,} {_fmt(oc, '/s')} vs {_fmt(ac, '/s')} = "
                                 f"{_ratio(oc, ac):.2f}x")
            self.notes.append(
                f"{tag}: per CPU second of the loop (less exposed to the machine's load than "
                f"wall-clock rates; the anchor's start-up CPU subtracted), max_items "
                f"{max_items}: " + "; ".join(cpu_notes))

    # 2 ---------------------------------------------------------------------------
    def timers(self) -> None:
        secs = 3.0 if self.quick else 10.0
        period = 1.0
        runs_w, runs_i, runs_lc, runs_lx, wakes = [], [], [], [], []
        for _ in range(self.repeat):  # interleaved, so load drifts hit all alike
            wakes.append(self.child("wake", 500 if self.quick else 2000))
            runs_w.append(self.child("timers", N_TIMERS, period, secs, "worked"))
            runs_lc.append(self.anchor("timers_twisted.py", N_TIMERS, period, secs))
            runs_lx.append(self.child("lc_exact", N_TIMERS, period, secs))
            runs_i.append(self.child("timers", N_TIMERS, period, secs, "idle"))

        def med(results: list[dict[str, Any]], key: str) -> float:
            return median([r[key] for r in results])

        floor50, floor99 = med(wakes, "p50_ms"), med(wakes, "p99_ms")
        self.row("2f", "floor: one bare callLater, lateness p99 ms", "", _fmt(floor99), "",
                 "info", None)
        self.notes.append(
            f"2f: one callLater at a time on an idle reactor (delays 1-4 ms off the ms grid): "
            f"p50 {floor50:.2f} ms, p99 {floor99:.2f} ms, max {med(wakes, 'max_ms'):.2f} ms "
            "(Python rounds epoll timeouts up to whole ms; the rest is the kernel's wake-up "
            "latency): the platform's floor for any timer on this reactor")
        lc_cpu = med(runs_lc, "cpu_s")
        lx_p50, lx_p99 = med(runs_lx, "p50_ms"), med(runs_lx, "p99_ms")
        for label, res in (("worked", runs_w), ("idle", runs_i)):
            p50, p99, cpu = med(res, "p50_ms"), med(res, "p99_ms"), med(res, "cpu_s")
            judged = label == "worked"
            tag = f"10k x 1 s ({label})"
            self.row("2", f"{tag}: lateness p50 ms", _fmt(p50), _fmt(lx_p50),
                     f"{_ratio(p50, lx_p50):.2f}x", "info", None)
            self.row("2", f"{tag}: lateness p99 ms", _fmt(p99), _fmt(lx_p99),
                     f"{_ratio(p99, lx_p99):.2f}x", "<= 1.5 ms" if judged else "info",
                     p99 <= 1.5 if judged else None)
            g99, a99 = med(res, "gap_p99_ms"), med(runs_lc, "p99")
            self.row("2", f"{tag}: p99 ms, anchor script's metric", _fmt(g99), _fmt(a99),
                     f"{_ratio(g99, a99):.2f}x", "info", None)
            r = _ratio(cpu, lc_cpu)
            self.row("2", f"{tag}: CPU s (whole process)", _fmt(cpu), _fmt(lc_cpu),
                     f"{r:.2f}x", "<= 1.0x" if judged else "info", r <= 1.0 if judged else None)
            self.notes.append(
                f"2 ({label}): {med(res, 'runs'):,.0f} runs over {secs:g} s, lateness max "
                f"{med(res, 'max_ms'):.2f} ms; CPU inside the run window "
                f"{med(res, 'cpu_window_s'):.2f} s (LoopingCall, same window: "
                f"{med(runs_lx, 'cpu_window_s'):.2f} s); maxrss {med(res, 'maxrss_mb'):.0f} MB "
                f"(LoopingCall {med(runs_lc, 'maxrss_MB'):.0f} MB); preempted "
                f"{med(res, 'preemptions'):,.0f} times (LoopingCall {med(runs_lx, 'preemptions'):,.0f})")
        if self.repeat > 1:
            self.notes.append(
                f"2: p99 lateness, best of {self.repeat} (less exposed to other processes): "
                f"worked {min(r['p99_ms'] for r in runs_w):.2f} ms, idle "
                f"{min(r['p99_ms'] for r in runs_i):.2f} ms, LoopingCall "
                f"{min(r['p99_ms'] for r in runs_lx):.2f} ms, one bare callLater "
                f"{min(r['p99_ms'] for r in wakes):.2f} ms")
        self.notes.append(
            "2: lateness = actual start - intended due time (reactor.seconds()); its anchor "
            "column is 10k LoopingCalls measured the same way (start - (starttime + k x "
            f"period); {med(runs_lx, 'runs'):,.0f} calls, max {med(runs_lx, 'max_ms'):.2f} ms). "
            "anchors/timers_twisted.py measures start - (previous start + period) on "
            "time.monotonic, which partly cancels lateness: its rows compare ours measured "
            "that way. CPU rows: the anchor script's whole-process figure (imports and set-up "
            "included, as ours)")
        try:
            import apscheduler  # noqa: F401
        except ImportError:
            self.notes.append("2: APScheduler is not installed; its peer row is left out")
            return
        aps = self.anchor("timers_apscheduler.py", N_TIMERS, period, secs)
        w_p99, w_cpu = med(runs_w, "p99_ms"), med(runs_w, "cpu_s")
        # APScheduler's lateness is now - scheduled_run_time: the same definition as ours.
        self.row("2p", "peer APScheduler 3: lateness p99 ms", _fmt(w_p99), _fmt(aps["p99"]),
                 f"{_ratio(w_p99, aps['p99']):.2f}x", "peer", None)
        self.row("2p", "peer APScheduler 3: CPU s", _fmt(w_cpu), _fmt(aps["cpu_s"]),
                 f"{_ratio(w_cpu, aps['cpu_s']):.2f}x", "peer", None)
        self.notes.append(
            f"2p: APScheduler ran {aps.get('runs', float('nan')):,.0f} jobs, p50 "
            f"{aps.get('p50', float('nan')):.2f} ms, over {secs:g} s + its 1 s start-up")

    # 3 ---------------------------------------------------------------------------
    def idle(self) -> None:
        warm, secs = (2.5, 5.0) if self.quick else (3.0, 12.0)
        ours = [self.child("idle", N_TIMERS, warm, secs) for _ in range(self.repeat)]
        lcs = [self.child("loopingcall", N_TIMERS, 1.0, warm, secs) for _ in range(self.repeat)]
        timers = max(r["timers_max"] for r in ours)
        lc_timers = median([r["timers"] for r in lcs])
        self.row("3", "10k idle backed-off: timers armed (max)", f"{timers}",
                 f"{lc_timers:,.0f}", "", "== 1", timers == 1)
        us = median([r["us_per_run"] for r in ours])
        lc_us = median([r["us_per_call"] for r in lcs])
        self.row("3", "10k idle backed-off: CPU per idle run", _fmt(us, " us"),
                 _fmt(lc_us, " us"), f"{_ratio(us, lc_us):.2f}x", "<= 20 us", us <= 20.0)
        first = ours[0]
        extra = sorted({name for r in ours for name in r["extra"]})
        self.notes.append(
            f"3: {first['samples']} samples of reactor.getDelayedCalls() every 50 ms in the "
            f"{first['window_s']:g} s window (min {first['timers_min']}, max over the whole run "
            f"incl. start-up {first['timers_max_all']}; a yield's callLater(0), which DESIGN "
            f"§2 allows, seen in {sum(r['yield_samples'] for r in ours)} samples and not "
            f"counted{'; extra timers: ' + ', '.join(extra) if extra else ''}"
            f"); {first['window_runs']:,.0f} idle runs "
            f"in the window; delays at the end {first['delays_at_end']}; anchor = 10k "
            f"LoopingCalls of 1 s (timers they arm, CPU per call)")

    # 3s --------------------------------------------------------------------------
    def idle_spread(self) -> None:
        # 10,000 due times 1.5 ms apart: each run is a reactor wake-up of its own (due
        # times within one millisecond may share one; these never do). The window
        # starts once every daemon and every LoopingCall has run once.
        period = 15.0
        warm, secs = period + 0.5, period + (3.5 if self.quick else 8.0)
        ours, lcs, floors, sleeps = [], [], [], []
        gap = period / N_TIMERS
        for _ in range(self.repeat):  # interleaved, so load drifts hit all alike
            ours.append(self.child("idle_spread", N_TIMERS, period, warm, secs))
            lcs.append(self.child("loopingcall", N_TIMERS, period, warm, secs))
            floors.append(self.child("floor", gap, 1.0, 1.0 + secs - warm))
            sleeps.append(self.child("sleep", gap, 1.0, 1.0 + secs - warm))
        us = median([r["us_per_run"] for r in ours])
        lc_us = median([r["us_per_call"] for r in lcs])
        floor_us = median([r["us_per_call"] for r in floors])
        sleep_us = median([r["us_per_call"] for r in sleeps])
        r = _ratio(us, lc_us)
        self.row("3s", "10k idle backed-off, spread: CPU per idle run", _fmt(us, " us"),
                 _fmt(lc_us, " us"), f"{r:.2f}x", "<= 0.5x", r <= 0.5)
        self.row("3s", "floor: one bare callLater every 1.5 ms, CPU per wake-up",
                 _fmt(floor_us, " us"), _fmt(lc_us, " us"), f"{_ratio(floor_us, lc_us):.2f}x",
                 "info", None)
        self.row("3s", "floor: a process that only sleeps 1.5 ms, CPU per wake-up",
                 _fmt(sleep_us, " us"), _fmt(lc_us, " us"), f"{_ratio(sleep_us, lc_us):.2f}x",
                 "info", None)
        self.notes.append(
            f"3s: due times {period / N_TIMERS * 1000:g} ms apart (backoff capped at "
            f"{period:g} s); {median([r['window_runs'] for r in ours]):,.0f} idle runs in "
            f"{secs - warm:g} s, {median([r['runs_per_wake'] for r in ours]):.2f} runs per "
            f"sleep of the process (LoopingCall: "
            f"{median([r['calls_per_wake'] for r in lcs]):.2f} calls per sleep); per repeat, "
            "ours / anchor / callLater floor / sleep floor: " + ", ".join(
                f"{o['us_per_run']:.1f} / {a['us_per_call']:.1f} / {f['us_per_call']:.1f} / "
                f"{z['us_per_call']:.1f} us"
                for o, a, f, z in zip(ours, lcs, floors, sleeps, strict=True))
            + "; the callLater floor is the least any scheduler on this reactor spends when "
            "each run is a wake-up of its own, the sleep floor what this machine charges a "
            "process that does nothing but wake up as often (no reactor at all): a goal "
            "below it cannot be met by any scheduler that wakes once per run")

    # 4 ---------------------------------------------------------------------------
    def memory(self) -> None:
        secs = 2.5
        per: dict[tuple[str, str], float] = {}
        for mode in ("tracemalloc", "rss"):
            for kind in ("daemon", "loopingcall"):
                per[kind, mode] = median([
                    self.child("memory", kind, mode, N_TIMERS, secs)["bytes_per"]
                    for _ in range(self.repeat)])
        for mode in ("tracemalloc", "rss"):
            d, lc = per["daemon", mode], per["loopingcall", mode]
            extra = d - lc
            self.row("4", f"memory per daemon ({mode}), bytes", f"{d:,.0f}", f"{lc:,.0f}",
                     f"{extra:+,.0f} B", "<= +1024 B",
                     extra <= 1024 if mode == "tracemalloc" else None)
        self.notes.append("4: 10,000 instances that each ran twice (1 s period, 2.5 s); "
                          "the goal is judged on tracemalloc (exact Python allocations); "
                          "RSS deltas are page-granular and include allocator slack (info)")

    # 5 ---------------------------------------------------------------------------
    def probe(self) -> None:
        secs = 3.0 if self.quick else 8.0
        ours = [self.child("probe", "daemons", 100, secs, 0.010) for _ in range(self.repeat)]
        raw = [self.child("probe", "raw", 100, secs, 0.010) for _ in range(self.repeat)]
        o = median([r["p99_ms"] for r in ours])
        a = median([r["p99_ms"] for r in raw])
        self.row("5", "10 ms probe p99 lateness ms, 100 busy", _fmt(o), _fmt(a),
                 f"{_ratio(o, a):.2f}x", "<= 15 ms", o <= 15.0)
        self.notes.append(
            f"5: probe p50 {median([r['p50_ms'] for r in ours]):.2f} ms, max "
            f"{median([r['max_ms'] for r in ours]):.2f} ms, {ours[0]['ticks']} ticks, "
            f"{ours[0]['busy_items'] / secs:,.0f} busy items/s beside it; anchor = the same probe "
            f"beside 100 raw callLater(0) chains (p50 {median([r['p50_ms'] for r in raw]):.2f} ms,"
            f" {raw[0]['busy_items'] / secs:,.0f} calls/s); preempted "
            f"{median([r['preemptions'] for r in ours]):,.0f} times (anchor "
            f"{median([r['preemptions'] for r in raw]):,.0f})")


def _header(args: argparse.Namespace) -> str:
    use_source_tree()
    import twisted

    import daemonapp

    load = os.getloadavg()
    return (f"daemonapp scheduler benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
            f"python {platform.python_version()} ({sys.executable}), twisted {twisted.__version__}"
            f", daemonapp from {Path(daemonapp.__file__).parent}\n"
            f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"{'quick' if args.quick else 'full'} run, {args.repeat} repeat(s) per figure "
            f"(median)")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        CHILDREN[argv[1]](argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--only", default="", help="comma-separated sections to run (1-5, 3s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per figure; the table shows the median (default 1)")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    bench = Bench(args.quick, max(1, args.repeat))
    sections: list[tuple[str, Callable[[], None]]] = [
        ("1", bench.busy), ("2", bench.timers), ("3", bench.idle), ("3s", bench.idle_spread),
        ("4", bench.memory), ("5", bench.probe)]
    unknown = only - {name for name, _ in sections}
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; use 1-5, 3s")
    print(_header(args), flush=True)
    failed = False
    for name, section in sections:
        if only and name not in only:
            continue
        sys.stderr.write(f"section {name}...\n")
        try:
            section()
        except (ChildError, KeyError) as e:
            failed = True
            bench.rows.append([name, f"FAILED: {e}"[:160], "", "", "", "", "ERROR"])
    print()
    print(format_table(["#", "measurement", "ours", "anchor", "ratio", "goal", "result"],
                       bench.rows))
    if bench.notes:
        print()
        for note in bench.notes:
            print(f"- {note}")
    print(f"- anchors: {', '.join(sorted(bench.sources)) or 'none run'}")
    misses = sum(1 for r in bench.rows if r[-1] == "MISS")
    print(f"\n{misses} goal(s) missed" if misses else "\nall goals met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
