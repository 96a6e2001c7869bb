"""Fault injection: a PostgreSQL outage under two apps whose `lock:` daemon uses leases.

Two `daemonapp run` processes share one PostgreSQL lease (`app.locks.url`) for a daemon
that works in short runs. A TCP proxy in this script stands between them and the
server; it is cut (every connection reset, new ones refused) for ``--outage`` seconds,
``--outages`` times, and restored. The shared server is never stopped, so other users
of this machine's PostgreSQL are not disturbed.

Printed: runs per app, overlapping runs (must be 0: the lease holds), log lines that
mention the lock per outage (DESIGN §5: a few, not one per poll tick), tracebacks,
and the recovery time (outage end -> first run again).

    ./dev bench faults_locks [--outage 7] [--outages 2] [--ttl 3] [--source CHECKOUT]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from _proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT = "127.0.0.1", 5432


WORKER = '''
import os, time
from daemonapp import Daemon

class Worker(Daemon):
    """Each run does one short item and records its start and end."""
    run_every = 0.2
    increase_idle_by = 0.2
    maximum_idle = 1.0

    def __init__(self, *, trace, **kw):
        super().__init__(**kw)
        self.trace = trace
        self.todo = 0

    def get_work(self):
        self.todo += 1
        return None if self.todo % 2 == 0 else "item"

    def do_work(self, job):
        with open(self.trace, "a") as f:
            f.write(f"start {os.getpid()} {time.time():.6f}\\n")
        time.sleep(0.05)
        with open(self.trace, "a") as f:
            f.write(f"end {os.getpid()} {time.time():.6f}\\n")
'''


def overlaps(trace: Path) -> tuple[int, dict[int, int]]:
    """Runs that overlap another app's run, and runs per pid."""
    spans: list[tuple[float, float, int]] = []
    open_runs: dict[int, float] = {}
    for line in trace.read_text().splitlines():
        kind, pid_text, t_text = line.split()
        pid, t = int(pid_text), float(t_text)
        if kind == "start":
            open_runs[pid] = t
        elif pid in open_runs:
            spans.append((open_runs.pop(pid), t, pid))
    spans.sort()
    count = 0
    for (_, e1, p1), (s2, _, p2) in itertools.pairwise(spans):
        if p1 != p2 and s2 < e1:
            count += 1
    runs: dict[int, int] = {}
    for _, _, pid in spans:
        runs[pid] = runs.get(pid, 0) + 1
    return count, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=7.0, help="seconds per outage")
    parser.add_argument("--outages", type=int, default=2)
    parser.add_argument("--ttl", type=float, default=3.0, help="lease ttl in seconds")
    parser.add_argument("--source", default=str(ROOT),
                        help="the checkout to import daemonapp from (compare releases)")
    parser.add_argument("--settle", type=float, default=4.0,
                        help="seconds of normal running before, between and after outages")
    args = parser.parse_args()

    import psycopg

    schema = f"faults_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test",
                            autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    root = Path(tempfile.mkdtemp(prefix="dfl"))
    proxy = Proxy((PG_HOST, PG_PORT))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        (root / "faultworker.py").write_text(WORKER)
        trace = root / "trace"
        url = (f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
               f"?options=-csearch_path%3D{schema}")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), args.source]))
        for name in ("a", "b"):
            app_dir = root / name
            app_dir.mkdir()
            (app_dir / "daemons.yaml").write_text(textwrap.dedent(f"""
                app:
                  stop_timeout: 10s
                  locks: {{url: "{url}", ttl: {args.ttl}s, wait: 1s}}
                daemons:
                  worker: {{type: "faultworker:Worker", lock: shared, trace: "{trace}"}}
            """))
            log = open(app_dir / "log", "wb")  # noqa: SIM115 - closed with the process
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "daemonapp.cli", "run", str(app_dir / "daemons.yaml")],
                cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
        time.sleep(args.settle)
        outages: list[tuple[float, float]] = []
        for _ in range(args.outages):
            began = time.time()
            proxy.cut()
            time.sleep(args.outage)
            proxy.restore()
            outages.append((began, time.time()))
            time.sleep(args.settle)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        statuses = [process.wait(timeout=30) for process in processes]

        overlap, runs = overlaps(trace)
        starts = sorted(float(line.split()[2]) for line in trace.read_text().splitlines()
                        if line.startswith("start"))
        recoveries = []
        for _, end in outages:
            later = [t for t in starts if t >= end]
            recoveries.append(later[0] - end if later else float("inf"))
        print(f"daemonapp from {args.source}")
        print(f"two apps, one PostgreSQL lease (ttl {args.ttl:g} s), {args.outages} outage(s) "
              f"of {args.outage:g} s through a cut TCP proxy")
        print(f"{'app':<5} {'exit':>4} {'runs':>6} {'lock log lines':>15} {'tracebacks':>11}")
        total_lines = 0
        for name, process, status in zip(("a", "b"), processes, statuses, strict=True):
            text = (root / name / "log").read_text(errors="replace")
            lock_lines = [line for line in text.splitlines()
                          if "highlander" in line or "lock backend" in line]
            tracebacks = text.count("Traceback (most recent call last)")
            total_lines += len(lock_lines)
            print(f"{name:<5} {status:>4} {runs.get(process.pid, 0):>6} {len(lock_lines):>15} "
                  f"{tracebacks:>11}")
        print()
        print(f"overlapping runs: {overlap} (goal 0)")
        print(f"lock log lines per outage per app: "
              f"{total_lines / (2 * max(1, args.outages)):.1f} (goal: a few)")
        print("recovery (outage end -> first run): "
              + ", ".join(f"{r:.2f} s" for r in recoveries))
        return 0 if overlap == 0 and all(s == 0 for s in statuses) else 1
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        proxy.close()
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
