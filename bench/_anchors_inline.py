"""Inline copies of the shared anchor scripts, for checkouts without ../shared/anchors.

Usage: python _anchors_inline.py reactor_limit N SECS
       python _anchors_inline.py timers_twisted N PERIOD SECS
       python _anchors_inline.py timers_apscheduler N PERIOD SECS [EXECUTOR]
Same algorithms and the same output lines as anchors/*.py, so bench/scheduler.py
parses either.
"""

from __future__ import annotations

import datetime
import resource
import sys
import time
from collections.abc import Callable
from typing import Any


def _quantiles(late: list[float]) -> Callable[[float], float]:
    late.sort()
    return lambda p: late[int(p * (len(late) - 1))] * 1000 if late else float("nan")


def reactor_limit(n: int, secs: float) -> None:
    """N self-rescheduling callLater(0) chains: the loop's dispatch limit."""
    from twisted.internet import reactor

    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        reactor.callLater(0, tick)

    for _ in range(n):
        reactor.callLater(0, tick)
    t0 = time.perf_counter()

    def stop() -> None:
        dt = time.perf_counter() - t0
        print(f"reactor callLater(0) chain: n={n} calls={count} rate={count / dt:,.0f}/s")
        reactor.stop()

    reactor.callLater(secs, stop)
    reactor.run()


def timers_twisted(n: int, period: float, secs: float) -> None:
    """N LoopingCalls of PERIOD s: lateness, CPU, RSS."""
    from twisted.internet import reactor, task

    late: list[float] = []

    def make(i: int) -> Callable[[], None]:
        state: dict[str, float | None] = {"due": None}

        def run() -> None:
            now = time.monotonic()
            due = state["due"]
            if due is not None:
                late.append(now - due)
            state["due"] = now + period

        return run

    loops = []
    for i in range(n):
        lc = task.LoopingCall(make(i))
        reactor.callLater(period * i / n, lc.start, period, now=True)
        loops.append(lc)

    def stop() -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        q = _quantiles(late)
        print(f"twisted LoopingCall: n={n} runs={len(late)} late_ms p50={q(.5):.2f} "
              f"p99={q(.99):.2f} max={q(1):.2f} cpu_s={ru.ru_utime + ru.ru_stime:.2f} "
              f"maxrss_MB={ru.ru_maxrss / 1024:.0f}")
        reactor.stop()

    reactor.callLater(secs, stop)
    reactor.run()


def timers_apscheduler(n: int, period: float, secs: float, executor: str = "debug") -> None:
    """APScheduler 3 TwistedScheduler with N interval jobs of PERIOD s."""
    from apscheduler.events import EVENT_JOB_EXECUTED
    from apscheduler.schedulers.twisted import TwistedScheduler
    from twisted.internet import reactor

    late: list[float] = []

    def job() -> None:
        pass

    def listener(ev: Any) -> None:
        now = datetime.datetime.now(datetime.UTC)
        late.append((now - ev.scheduled_run_time).total_seconds())

    sched = TwistedScheduler(executors={"default": {"type": executor}},
                             job_defaults={"misfire_grace_time": 3600, "coalesce": False,
                                           "max_instances": 10})
    sched.add_listener(listener, EVENT_JOB_EXECUTED)
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    for i in range(n):
        sched.add_job(job, "interval", seconds=period,
                      start_date=start + datetime.timedelta(seconds=period * i / n))
    sched.start()

    def stop() -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        q = _quantiles(late)
        print(f"apscheduler twisted/{executor}: n={n} runs={len(late)} late_ms "
              f"p50={q(.5):.2f} p99={q(.99):.2f} max={q(1):.2f} "
              f"cpu_s={ru.ru_utime + ru.ru_stime:.2f} maxrss_MB={ru.ru_maxrss / 1024:.0f}")
        reactor.stop()

    reactor.callLater(secs + 1, stop)
    reactor.run()


def main(argv: list[str]) -> None:
    name, args = argv[0], argv[1:]
    if name == "reactor_limit":
        reactor_limit(int(args[0]) if args else 100, float(args[1]) if len(args) > 1 else 3.0)
    elif name == "timers_twisted":
        timers_twisted(int(args[0]), float(args[1]), float(args[2]))
    elif name == "timers_apscheduler":
        timers_apscheduler(int(args[0]), float(args[1]), float(args[2]), *args[3:4])
    else:
        raise SystemExit(f"unknown anchor {name!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
