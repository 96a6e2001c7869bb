"""Clock-schedule benchmark: 10,000 cron daemons next to backoff daemons and APScheduler.

Usage: ./dev bench clock [--daemons N] [--seconds S] [--repeat R] [--profile FILE]

Issue 16's bench (DESIGN §8). The cases run each in its own child process of this
interpreter (``--child CASE ...``), all on a ``twisted.internet.task.Clock`` set to an epoch
time and advanced from timer to timer (no wall-clock waiting; S is simulated seconds):

- clock: N daemons with ``schedule=`` and ``timezone=`` (mixed zones UTC,
  Europe/Berlin, America/New_York, Asia/Kolkata; expressions ``* * * * *``,
  ``*/5 * * * *``, ``0 * * * *``) in one DaemonApp; ``get_work`` returns None (an idle
  run: the run a fire exists for, with no work of its own to weigh on the figure);
- backoff: N idle backoff daemons in the same app, run_every 60, 300 and 3600 s in the
  cron daemons' mix (the idle delay stays run_every), started so that their runs fall on
  the same instants as the cron daemons' fires; backoff60 (info): all at 60 s;
- apscheduler: N APScheduler 3 CronTrigger jobs on its TwistedScheduler (MemoryJobStore,
  the debug executor: the job runs inline, as a daemon's run does), on a Clock too, its
  ``datetime.now`` made to read that Clock.

Figures: process CPU time (user + system) in the window after start-up divided by the
runs in it (CPU per fire); the most timers ever armed (``len(clock.getDelayedCalls())``,
read after every advance and inside every run); start-up CPU per daemon/job (info).
Goals (issue 16): CPU per fire <= 1.5x a backoff daemon's run and <= 0.5x APScheduler's;
at most 1 timer armed (no deadlines are set here, so nothing is subtracted).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _schedlib import (
    ChildError,
    cpu_seconds,
    emit,
    format_table,
    median,
    preemptions,
    run_child,
    use_source_tree,
)

SCRIPT = Path(__file__).resolve()
#: 2026-06-01T00:00:00Z minus 30 s: the first per-minute fire is 30 s after the start.
#: June: no DST change in any of the zones during the run.
START = 1_780_272_000.0 - 30.0
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
#: Expression, its period in seconds (every zone's offset is a whole number of those
#: periods, except Kolkata's +05:30 for the hourly one).
EXPRESSIONS = (("* * * * *", 60.0), ("*/5 * * * *", 300.0), ("0 * * * *", 3600.0))


def plan(n: int) -> list[tuple[str, str]]:
    """The (expression, zone) of each of n daemons/jobs: every mix equally often."""
    return [(EXPRESSIONS[i % 3][0], ZONES[(i // 3) % 4]) for i in range(n)]


def expected_fires(n: int, span: float) -> int:
    """The fires in (START, START + span], counted by arithmetic (not by a cron library).

    Fire instants are the multiples of the period, shifted by the zone's offset modulo
    the period: 0 everywhere but Kolkata's hourly (+05:30: at :30 UTC).
    """
    period_of = dict(EXPRESSIONS)
    total = 0
    end = START + span
    for expression, zone in plan(n):
        period = period_of[expression]
        shift = 1800.0 if (zone == "Asia/Kolkata" and period == 3600.0) else 0.0
        total += math.floor((end - shift) / period) - math.floor((START - shift) / period)
    return total


def backoff_plan(kind: str, n: int) -> list[tuple[float, float]]:
    """(run_every, start_delay) of each backoff daemon: first run at START + start_delay.

    "backoff" mirrors plan(n): the same periods, and Kolkata's hourly ones start at :30
    UTC as its cron daemons fire, so every run falls on the instant of a cron fire.
    """
    if kind == "backoff60":
        return [(60.0, 30.0)] * n
    period_of = dict(EXPRESSIONS)
    return [(period_of[e], 30.0 + (1800.0 if (z == "Asia/Kolkata" and period_of[e] == 3600.0)
                                   else 0.0)) for e, z in plan(n)]


def expected_runs(kind: str, n: int, span: float) -> int:
    """The runs of the backoff daemons in (START, START + span]."""
    return sum(int((span - delay) // every) + 1 for every, delay in backoff_plan(kind, n)
               if span >= delay)


def drive(clock: Any, end: float, sample: Callable[[], None]) -> int:
    """Advance ``clock`` from its earliest timer to the next until ``end``; wake-ups."""
    wakes = 0
    while True:
        calls = clock.getDelayedCalls()
        if not calls:
            return wakes
        due = min(call.getTime() for call in calls)
        if due > end:
            return wakes
        clock.advance(max(0.0, due - clock.seconds()))
        wakes += 1
        sample()


# ---------------------------------------------------------------------------------------
# Children: each measures one case in a fresh process and prints RESULT {json}.
# ---------------------------------------------------------------------------------------


def _window(clock: Any, span: float, profile: str, sample: Callable[[], None],
            count: Callable[[], int]) -> dict[str, Any]:
    """Drive the clock through the span and measure CPU per run inside it."""
    gc.collect()
    profiler = cProfile.Profile() if profile else None
    runs0, cpu0, pre0, wall0 = count(), cpu_seconds(), preemptions(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    wakes = drive(clock, START + span, sample)
    if profiler is not None:
        profiler.disable()
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    runs = count() - runs0
    result = {"runs": runs, "wakes": wakes, "cpu_s": cpu, "wall_s": wall,
              "us_per_run": cpu / runs * 1e6 if runs else float("nan"),
              "preemptions": preemptions() - pre0}
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(28)
        stats.sort_stats("tottime").print_stats(12)
        Path(profile).write_text(out.getvalue())
    return result


def child_daemons(kind: str, n: int, span: float, profile: str = "") -> None:
    """N daemons in one DaemonApp on a Clock: "clock" (cron), "backoff"/"backoff60" (idle)."""
    use_source_tree()
    from twisted.internet.task import Clock

    import daemonapp
    from daemonapp.app import DaemonApp
    from daemonapp.daemon import Daemon

    clock = Clock()
    clock.advance(START)
    runs = 0
    peak = 0

    def sample() -> None:
        nonlocal peak
        armed = len(clock.getDelayedCalls())
        if armed > peak:  # noqa: PLR1730 - no call on the measured path
            peak = armed

    class Idle(Daemon):
        def get_work(self) -> Any:
            nonlocal runs, peak
            runs += 1
            armed = len(clock.getDelayedCalls())
            if armed > peak:  # noqa: PLR1730
                peak = armed
            return None

    cpu0 = cpu_seconds()
    app = DaemonApp(clock=clock, handle_signals=False, stop_reactor=False)
    if kind == "clock":
        for i, (expression, zone) in enumerate(plan(n)):
            app.add(Idle(name=f"cron{i}", schedule=expression, timezone=zone))
    else:
        # Idle delay = min(maximum_idle, run_every * 1 + 0) = run_every. "backoff": the
        # cron population's periods and instants, so the heap and the batches have the
        # same shape; "backoff60": every daemon every 60 s (info).
        for i, (every, delay) in enumerate(backoff_plan(kind, n)):
            app.add(Idle(name=f"idle{i}", run_every=every, start_delay=delay))
    app.startService()
    clock.advance(0)  # whatever is due at once (nothing here) runs before the window
    startup = cpu_seconds() - cpu0
    sample()
    result = _window(clock, span, profile, sample, lambda: runs)
    scheduler = getattr(app, "scheduler", app)
    fires_by: dict[str, int] = {}
    if kind == "clock":
        for d in app.daemons.values():
            key = f"{d.schedule} {d.timezone}"
            fires_by[key] = fires_by.get(key, 0) + d.stats["runs"]
    result.update({
        "kind": kind, "n": n, "span": span, "timers_max": peak,
        "startup_us_per": startup / n * 1e6,
        "expected": expected_fires(n, span) if kind == "clock" else expected_runs(kind, n, span),
        "max_lateness_s": getattr(scheduler, "max_lateness", float("nan")),
        "daemonapp": str(Path(daemonapp.__file__).parent)})
    emit(result)


def child_apscheduler(n: int, span: float, profile: str = "") -> None:
    """N CronTrigger jobs on APScheduler 3's TwistedScheduler, on a Clock."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import apscheduler
    import apscheduler.executors.base as executors_base
    import apscheduler.schedulers.base as schedulers_base
    from apscheduler.schedulers.twisted import TwistedScheduler
    from apscheduler.triggers.cron import CronTrigger
    from twisted.internet.task import Clock

    class ReactorClock(Clock):
        """A Clock with what TwistedScheduler asks of a reactor besides callLater."""

        def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
            f(*args, **kw)  # already on the reactor's thread: at once

    clock = ReactorClock()
    clock.advance(START)

    class ClockDatetime(datetime):
        """datetime whose now() reads the Clock: APScheduler's only look at the time."""

        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.fromtimestamp(clock.seconds(), tz)

    schedulers_base.datetime = ClockDatetime  # type: ignore[misc]
    executors_base.datetime = ClockDatetime  # type: ignore[misc]

    runs = 0
    peak = 0

    def sample() -> None:
        nonlocal peak
        armed = len(clock.getDelayedCalls())
        if armed > peak:  # noqa: PLR1730
            peak = armed

    def job() -> None:
        nonlocal runs, peak
        runs += 1
        armed = len(clock.getDelayedCalls())
        if armed > peak:  # noqa: PLR1730
            peak = armed

    cpu0 = cpu_seconds()
    scheduler = TwistedScheduler(reactor=clock, timezone=ZoneInfo("UTC"),
                                 executors={"default": {"type": "debug"}})
    for i, (expression, zone) in enumerate(plan(n)):
        scheduler.add_job(job, CronTrigger.from_crontab(expression, timezone=ZoneInfo(zone)),
                          id=f"job{i}")
    scheduler.start()
    clock.advance(0)
    startup = cpu_seconds() - cpu0
    sample()
    result = _window(clock, span, profile, sample, lambda: runs)
    result.update({"kind": "apscheduler", "n": n, "span": span, "timers_max": peak,
                   "startup_us_per": startup / n * 1e6,
                   "expected": expected_fires(n, span),
                   "version": getattr(apscheduler, "__version__", "3.x")})
    emit(result)


def child_trigger(n: int, span: float) -> None:
    """CronTrigger.get_next_fire_time alone, called per fire as _process_jobs does.

    Per fire APScheduler 3 calls it twice: in Job._get_run_times (the time after the
    one due, to see that it is not due too) and for the job's next run time.
    """
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from apscheduler.triggers.cron import CronTrigger

    utc = ZoneInfo("UTC")
    triggers = [CronTrigger.from_crontab(expression, timezone=ZoneInfo(zone))
                for expression, zone in plan(n)]
    start = datetime.fromtimestamp(START, utc)
    firsts = [t.get_next_fire_time(None, start) for t in triggers]
    end = START + span
    gc.collect()
    fires = 0
    cpu0 = cpu_seconds()
    for trigger, fire in zip(triggers, firsts, strict=True):
        while fire is not None and fire.timestamp() <= end:
            now = datetime.fromtimestamp(fire.timestamp(), utc)
            trigger.get_next_fire_time(fire, now)
            fire = trigger.get_next_fire_time(fire, now)
            fires += 1
    cpu = cpu_seconds() - cpu0
    emit({"kind": "trigger", "n": n, "runs": fires, "cpu_s": cpu,
          "us_per_run": cpu / fires * 1e6 if fires else float("nan")})


CHILDREN: dict[str, Callable[[list[str]], None]] = {
    "clock": lambda a: child_daemons("clock", int(a[0]), float(a[1]), *a[2:]),
    "backoff": lambda a: child_daemons("backoff", int(a[0]), float(a[1]), *a[2:]),
    "backoff60": lambda a: child_daemons("backoff60", int(a[0]), float(a[1]), *a[2:]),
    "apscheduler": lambda a: child_apscheduler(int(a[0]), float(a[1]), *a[2:]),
    "trigger": lambda a: child_trigger(int(a[0]), float(a[1])),
}

# ---------------------------------------------------------------------------------------
# The parent: runs the children (interleaved when repeated) and prints the table.
# ---------------------------------------------------------------------------------------


def _fmt(value: float, unit: str = "", digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}{unit}"


def _ratio(ours: float, anchor: float) -> float:
    return ours / anchor if anchor and not math.isnan(anchor) else float("nan")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _has_apscheduler() -> bool:
    try:
        import apscheduler.triggers.cron  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        CHILDREN[argv[1]](argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, default=10_000,
                        help="daemons (and APScheduler jobs) per case (default 10000)")
    parser.add_argument("--seconds", type=float, default=3600.0,
                        help="simulated seconds the Clock is driven through (default 3600:"
                             " every hourly job fires once in each zone)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per case, interleaved; the table shows medians")
    parser.add_argument("--profile", default="", metavar="FILE",
                        help="also run the clock case under cProfile and write its top "
                             "functions to FILE (and print them)")
    args = parser.parse_args(argv)
    n, span, repeat = args.daemons, args.seconds, max(1, args.repeat)
    if n < 12 or span < 60:
        parser.error("use at least 12 daemons (every expression/zone mix) and 60 seconds")
    use_source_tree()
    import twisted

    import daemonapp

    load_before = _load()
    print(f"daemonapp clock-schedule benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
          f"python {platform.python_version()} ({sys.executable}), twisted "
          f"{twisted.__version__}, daemonapp from {Path(daemonapp.__file__).parent}\n"
          f"{os.cpu_count()} CPUs, load average {load_before} at the start; {n:,} daemons/jobs "
          f"per case, {span:g} simulated s from 2026-05-31T23:59:30Z, {repeat} repeat(s) "
          "(median)", flush=True)
    aps = _has_apscheduler()
    timeout = 600.0 + n * span / 3600 * 0.2
    cases = ["clock", "backoff", "backoff60"] + (["apscheduler", "trigger"] if aps else [])
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    try:
        for _ in range(repeat):  # interleaved, so load drifts hit every case alike
            for case in cases:
                sys.stderr.write(f"  {case}...\n")
                results[case].append(run_child(SCRIPT, case, n, span, timeout=timeout))
        profile_text = ""
        if args.profile:
            sys.stderr.write("  clock under cProfile...\n")
            run_child(SCRIPT, "clock", n, span, args.profile, timeout=timeout * 3)
            profile_text = Path(args.profile).read_text()
    except ChildError as e:
        print(f"\nFAILED: {e}")
        return 1
    load_after = _load()

    def med(case: str, key: str) -> float:
        values = [r[key] for r in results.get(case, [])]
        return median(values) if values else float("nan")

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("PASS" if ok else "MISS")

    def per(case: str) -> str:
        return _fmt(med(case, "us_per_run"))

    ours, back, back60 = med("clock", "us_per_run"), med("backoff", "us_per_run"), \
        med("backoff60", "us_per_run")
    ap, trig = med("apscheduler", "us_per_run"), med("trigger", "us_per_run")
    r_back, r_aps = _ratio(ours, back), _ratio(ours, ap)
    timers = max(r["timers_max"] for r in results["clock"])
    rows: list[list[str]] = [
        ["CPU per fire (us)", per("clock"), per("backoff"), per("apscheduler") if aps else "n/a",
         f"{r_back:.2f}x", f"{r_aps:.2f}x" if aps else "", "<= 1.5x backoff",
         verdict(r_back <= 1.5)],
        ["", "", "", "", "", "", "<= 0.5x APScheduler", verdict(r_aps <= 0.5) if aps else "n/a"],
        ["  backoff all at 60 s (info)", "", per("backoff60"), "", f"{_ratio(ours, back60):.2f}x",
         "", "info", "—"],
        ["  APScheduler: CronTrigger alone (info)", "", "", per("trigger") if aps else "n/a", "",
         f"{_ratio(ours, trig):.2f}x" if aps else "", "info", "—"],
        ["timers armed (max)", f"{timers}", f"{max(r['timers_max'] for r in results['backoff'])}",
         f"{max(r['timers_max'] for r in results['apscheduler'])}" if aps else "n/a",
         "", "", "<= 1", verdict(timers <= 1)],
    ]
    su = {case: med(case, "startup_us_per") for case in ("clock", "backoff", "apscheduler")}
    rows.append(["start-up CPU per daemon/job (us)", _fmt(su["clock"]), _fmt(su["backoff"]),
                 _fmt(su["apscheduler"]) if aps else "n/a",
                 f"{_ratio(su['clock'], su['backoff']):.2f}x",
                 f"{_ratio(su['clock'], su['apscheduler']):.2f}x" if aps else "", "info", "—"])
    first = {case: results[case][0] for case in cases}
    judged = [c for c in ("clock", "backoff", "backoff60", "apscheduler") if c in first]

    def fires(case: str) -> str:
        if case not in first:
            return "n/a"
        return f"{first[case]['runs']:,} ({first[case]['expected']:,})"

    rows.append(["runs in the window (expected)", fires("clock"), fires("backoff"),
                 fires("apscheduler"), "", "", "= expected",
                 verdict(all(first[c]["runs"] == first[c]["expected"] for c in judged))])
    print()
    print(format_table(["measurement", "ours (cron)", "backoff", "APScheduler 3",
                        "ours/backoff", "ours/APS", "goal", "result"], rows))
    print()
    for case in judged:
        print(f"- {case}: {med(case, 'runs'):,.0f} runs in {med(case, 'wakes'):,.0f} wake-ups, "
              f"{med(case, 'cpu_s'):.2f} s CPU ({med(case, 'wall_s'):.2f} s wall, preempted "
              f"{med(case, 'preemptions'):,.0f} times)"
              + (f", max lateness {med(case, 'max_lateness_s') * 1000:.3f} ms"
                 if case != "apscheduler" else ""))
    if repeat > 1:
        pairs = [c["us_per_run"] / b["us_per_run"]
                 for c, b in zip(results["clock"], results["backoff"], strict=True)]
        print("- per repeat: ours " + ", ".join(_fmt(r["us_per_run"], digits=2)
                                              for r in results["clock"])
              + " us, backoff " + ", ".join(_fmt(r["us_per_run"], digits=2)
                                            for r in results["backoff"])
              + " us; ours/backoff paired " + ", ".join(f"{p:.2f}x" for p in pairs))
    print("- ours: Daemon(schedule=EXPR, timezone=ZONE) with get_work -> None, one DaemonApp "
          "on a task.Clock; mixes: " + ", ".join(f"'{e}'" for e, _ in EXPRESSIONS) + " x "
          + ", ".join(ZONES) + "; the Clock has no wall clock to watch, so ClockWatch.look() "
          "(one per wake-up on a real reactor) is not in the figure")
    print("- backoff: Daemon(run_every=R, start_delay=30 s, or 1830 s for Kolkata's hourly) with get_work -> None (idle delay = "
          "R), R = 60, 300, 3600 s in the cron daemons' mix, started so that each run falls on "
          "the instant of a cron fire (same batches, same heap); 'all at 60 s': R = 60 for every daemon "
          "(bigger batches, no other due times in the heap)")
    if aps:
        print(f"- APScheduler {first['apscheduler'].get('version', '3.x')}: TwistedScheduler("
              "reactor=Clock, debug executor, MemoryJobStore), CronTrigger.from_crontab(EXPR, "
              "timezone=ZONE) jobs calling a no-op, the same mixes; its datetime.now reads the "
              "Clock (patched in apscheduler.schedulers.base and executors.base); the whole "
              "_process_jobs path per fire (get_due_jobs, 2 x get_next_fire_time, run_job, "
              "update_job, events). 'CronTrigger alone' = only the 2 get_next_fire_time "
              "calls per fire, in a plain loop (a floor for any scheduler built on it)")
    else:
        print("- APScheduler is not installed (pip install 'apscheduler<4'): its columns are "
              "left out")
    print("- CPU = getrusage user+system of the child in the window after start-up / runs "
          "in it; timers = max len(clock.getDelayedCalls()) after every advance and inside "
          "every run (no deadline timers are set, so nothing is subtracted)")
    print(f"- load average: {load_before} at the start, {load_after} at the end "
          f"({os.cpu_count()} CPUs); CPU time is less exposed to load than wall time, but "
          "not immune (caches): use --repeat 3 for figures you quote")
    if profile_text:
        print(f"\ncProfile of the clock case ({args.profile}):\n")
        print(profile_text)
    misses = sum(1 for r in rows if r[-1] == "MISS")
    print(f"\n{misses} goal(s) missed" if misses else "\nall goals met")
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
