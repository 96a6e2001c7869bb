"""Jobs per second end to end (submit -> done) against a bare subprocess loop.

    ./dev bench jobs [--jobs 500] [--children 4] [--anchor 200] [--pg URL | --no-pg]

Runs N trivial jobs through a JobDispatcher (max_children 4, one child process
per job) on SQLite and, when reachable, PostgreSQL; the anchor is a loop of
``subprocess.run([sys.executable, "-c", "pass"])`` measured in the same run.
Each dispatcher run happens in its own process (a reactor runs once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
JOB_MODULE = '''
import os

from daemonapp.jobs import current_job, job

@job("noop")
def noop(payload):
    return None

@job("record")
def record(payload):
    fd = os.open(payload["file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{current_job().id}\\n".encode())
    finally:
        os.close(fd)
'''


def anchor(count: int) -> float:
    """Seconds for ``count`` sequential ``python -c pass`` runs."""
    started = time.perf_counter()
    for _ in range(count):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def run_jobs(store: str, count: int, children: int, workdir: str) -> dict[str, float]:
    """In this process: submit ``count`` jobs, run the app until all are done."""
    sys.path.insert(0, workdir)
    from twisted.internet import reactor

    from daemonapp.app import DaemonApp
    from daemonapp.jobs import open_store
    from daemonapp.jobs.dispatcher import JobDispatcher

    submitter = open_store(store)
    app = DaemonApp(state_dir=os.path.join(workdir, "state"), handle_signals=False)
    dispatcher = JobDispatcher(name="bench", store=store, modules=["bench_jobs"],
                               max_children=children, run_every=0.05, maximum_idle=0.2)
    app.add(dispatcher)
    result: dict[str, float] = {}

    def begin() -> None:
        started = time.perf_counter()
        for i in range(count):
            submitter.submit("noop", {"i": i})
        result["submit_seconds"] = time.perf_counter() - started

        def check() -> None:
            if dispatcher.stats["jobs_done"] + dispatcher.stats["jobs_failed"] >= count:
                result["seconds"] = time.perf_counter() - started
                result["done"] = dispatcher.stats["jobs_done"]
                app.stop("benchmark over")
            else:
                reactor.callLater(0.01, check)

        check()

    reactor.callWhenRunning(app.startService)
    reactor.callWhenRunning(begin)
    reactor.run()
    submitter.close()
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["parent_cpu"] = own.ru_utime + own.ru_stime
    result["children_cpu"] = kids.ru_utime + kids.ru_stime
    return result


def run_until_drained(store: str, children: int, workdir: str) -> dict[str, float]:
    """In this process: run a dispatcher until the store has nothing pending or running."""
    sys.path.insert(0, workdir)
    from twisted.internet import reactor, threads

    from daemonapp.app import DaemonApp
    from daemonapp.jobs import open_store
    from daemonapp.jobs.dispatcher import JobDispatcher

    watcher = open_store(store)
    app = DaemonApp(state_dir=os.path.join(workdir, "state"), handle_signals=False)
    dispatcher = JobDispatcher(name="bench", store=store, modules=["bench_jobs"],
                               max_children=children, run_every=0.05, maximum_idle=0.2)
    app.add(dispatcher)

    def check() -> None:
        def drained(counts: dict[str, int]) -> None:
            if counts["pending"] + counts["running"] == 0:
                app.stop("drained")
            else:
                reactor.callLater(0.05, check)

        threads.deferToThread(watcher.counts).addCallback(drained)

    reactor.callWhenRunning(app.startService)
    reactor.callWhenRunning(check)
    reactor.run()
    watcher.close()
    return {"done": dispatcher.stats["jobs_done"]}


def exactly_once(store: str, count: int, children: int) -> tuple[float, bool, str]:
    """Two dispatcher processes on one store run ``count`` jobs: (seconds, ok, detail)."""
    from daemonapp.jobs import open_store

    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as workdir:
        Path(workdir, "bench_jobs.py").write_text(JOB_MODULE)
        runs = Path(workdir, "runs.txt")
        submitter = open_store(store)
        ids = [submitter.submit("record", {"file": str(runs)}) for _ in range(count)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), workdir]))
        started = time.perf_counter()
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--drain", store, "--children", str(children),
             "--workdir", workdir], env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
        done = [json.loads(p.communicate()[0].strip().splitlines()[-1])["done"]
                for p in procs]
        seconds = time.perf_counter() - started
        lines = [int(x) for x in runs.read_text().split()]
        states = {submitter.get(job_id).state for job_id in ids}
        submitter.close()
        ok = sorted(lines) == sorted(ids) and states == {"done"} and sum(done) == count
        detail = (f"{len(lines)} runs of {count} jobs, {len(set(lines))} distinct, "
                  f"done per dispatcher {done}")
        return seconds, ok, detail


def child_run(backend: str, store: str, count: int, children: int) -> dict[str, float]:
    """Run one backend's measurement in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as workdir:
        Path(workdir, "bench_jobs.py").write_text(JOB_MODULE)
        if backend == "sqlite":
            store = os.path.join(workdir, "state")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), workdir]))
        out = subprocess.run(
            [sys.executable, __file__, "--child", store, "--jobs", str(count),
             "--children", str(children), "--workdir", workdir],
            check=True, capture_output=True, env=env, text=True)
        data: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return data


def postgres_url(base: str) -> tuple[str, str] | None:
    """A URL on a fresh schema (and the schema), or None when PostgreSQL is unreachable."""
    try:
        import psycopg

        psycopg.connect(base, connect_timeout=3).close()
    except Exception as err:
        print(f"PostgreSQL skipped: {err}".strip(), file=sys.stderr)
        return None
    schema = f"bench_jobs_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", schema


def drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--anchor", type=int, default=200)
    parser.add_argument("--pg", default=os.environ.get("DAEMONAPP_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_jobs(args.child, args.jobs, args.children, args.workdir)))
        return 0
    if args.drain:
        print(json.dumps(run_until_drained(args.drain, args.children, args.workdir)))
        return 0

    rows: list[tuple[str, int, float]] = []
    notes: list[str] = []
    anchor_seconds = anchor(args.anchor)
    rows.append(("subprocess.run(python -c pass) loop", args.anchor, anchor_seconds))
    backends = [("SQLite", "sqlite", "")]
    pg = None if args.no_pg else postgres_url(args.pg)
    if pg is not None:
        backends.append(("PostgreSQL", "postgres", pg[0]))
    try:
        for label, backend, store in backends:
            result = child_run(backend, store, args.jobs, args.children)
            done = max(1, int(result["done"]))
            rows.append((f"jobs, {label}, max_children {args.children}", done,
                         result["seconds"]))
            notes.append(f"{label}: dispatcher {result['parent_cpu'] / done * 1000:.1f} ms "
                         f"CPU/job, children {result['children_cpu'] / done * 1000:.1f} ms "
                         f"CPU/job")
        if pg is not None:
            seconds, ok, detail = exactly_once(pg[0], args.jobs, args.children // 2 or 1)
            rows.append((f"2 dispatchers, PostgreSQL, {args.children // 2 or 1} children each",
                         args.jobs, seconds))
            notes.append(f"exactly once: {'yes' if ok else 'NO'} ({detail})")
    finally:
        if pg is not None:
            drop_schema(args.pg, pg[1])

    anchor_rate = args.anchor / anchor_seconds
    print(f"cores: {os.cpu_count()}  python: {sys.executable}")
    print(f"{'what':<40} {'count':>6} {'seconds':>8} {'per s':>8} {'ratio':>6}")
    for what, count, seconds in rows:
        rate = count / seconds
        print(f"{what:<40} {count:>6} {seconds:>8.2f} {rate:>8.1f} {rate / anchor_rate:>6.2f}")
    print("ratio: rate / the subprocess.run loop's rate (goal: jobs >= 50/s on 2 cores)")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
