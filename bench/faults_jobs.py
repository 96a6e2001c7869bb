"""Fault injection for jobs on PostgreSQL: an outage, a SIGKILLed app, SIGKILLed children.

    ./dev bench faults_jobs [--jobs 300] [--outage 7.6] [--child-kills 10] [--app-kills 1]
                            [--lease 10] [--real-restart] [--pg URL] [--json]

A real app (``daemonapp run``) runs a job_dispatcher whose store is PostgreSQL
seen through a TCP proxy in this process; the outage cuts the proxy (every
connection closed, new ones refused) and restores it, so the shared server is
never stopped. ``--real-restart`` stops and starts the local cluster instead
(pg_ctlcluster; always started again). Each job appends one line to an effects
file keyed by its id, between a start marker and a short sleep, so a kill can
land before or after the effect.

Printed: jobs lost (acknowledged, never done or without an effect), effects run
twice (split into those at-least-once allows, i.e. an earlier attempt was
SIGKILLed or ran under the SIGKILLed app, and the others), warning-or-worse log
lines per outage, and recovery: the first start after the outage and the
submit-to-start of single jobs before and after it. Exit status 1 when a job was
lost or an effect ran twice without a crash to explain it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _proxy import Proxy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's daemonapp, in the app and its children too
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
JOB_MODULE = '''
import os
import time

from daemonapp.jobs import current_job, job


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@job("effect")
def effect(payload):
    current = current_job()
    line = f"{current.id} {current.attempt} {os.getpid()} {os.getppid()} {time.time():.6f}\\n"
    _append(payload["starts"], line)
    time.sleep(payload.get("before", 0.1))
    _append(payload["effects"], line)
    time.sleep(payload.get("after", 0.2))
'''


class RealRestart:
    """Stops and starts the local PostgreSQL cluster (always started again)."""

    def __init__(self) -> None:
        self.version = sorted(os.listdir("/etc/postgresql"))[-1]

    def _ctl(self, action: str) -> None:
        args = ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", action]
        if action == "stop":
            args += ["-m", "fast"]
        subprocess.run(args, check=True, capture_output=True)

    def cut(self) -> None:
        self._ctl("stop")

    def restore(self) -> None:
        self._ctl("start")


def with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


class App:
    """``daemonapp run CONFIG`` in a process of its own, its log in a file."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.pids: list[int] = []
        self.killed: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.workdir), str(ROOT),
                                             env.get("PYTHONPATH", "")])
        log = open(self.workdir / "app.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemonapp.cli", "run", str(self.config)],
            stdout=log, stderr=log, env=env, cwd=str(self.workdir))
        log.close()
        self.pids.append(self.process.pid)

    def children(self) -> list[int]:
        assert self.process is not None
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                found.append(int(entry))
        return found

    def kill(self) -> None:
        assert self.process is not None
        self.killed.append(self.process.pid)
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def read_lines(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from daemonapp.jobs import open_store

    workdir = Path(tempfile.mkdtemp(prefix="faults_jobs_"))
    (workdir / "faults_tasks.py").write_text(JOB_MODULE)
    schema = f"faults_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(args.pg, autocommit=True, connect_timeout=5)
    fault: Proxy | RealRestart
    if args.real_restart:
        fault = RealRestart()
        app_url = with_schema(args.pg, schema)
    else:
        host, port = "127.0.0.1", 5432
        fault = Proxy((host, port))
        app_url = with_schema(args.pg.replace(f"{host}:{port}", f"127.0.0.1:{fault.port}"),
                              schema)
    submit_url = with_schema(args.pg, schema)
    config = workdir / "app.yaml"
    config.write_text(json.dumps({
        "app": {"state_dir": str(workdir / "var"), "log": {"format": "json"}},
        "daemons": {"jobs": {"type": "job_dispatcher", "store": app_url,
                             "modules": ["faults_tasks"], "max_children": args.children,
                             "lease": f"{args.lease}s", "retry_delay": "0.5s",
                             "max_attempts": 10}}}))
    starts, effects = workdir / "starts", workdir / "effects"
    payload = {"starts": str(starts), "effects": str(effects)}
    store = open_store(submit_url)  # creates the schema; submits go straight to the server
    submitted: dict[int, float] = {}
    app = App(config, workdir)
    events: dict[str, Any] = {"outages": []}
    result: dict[str, Any] = {}
    try:
        app.start()
        time.sleep(1.5)

        def submit(extra: dict[str, Any] | None = None) -> int:
            while True:  # an acknowledged submit is one that returned an id
                try:
                    job_id = store.submit("effect", {**payload, **(extra or {})})
                except Exception:
                    time.sleep(0.2)
                    continue
                submitted[job_id] = time.time()
                return int(job_id)

        def probe(count: int) -> list[float]:
            """Submit-to-start of single jobs, one at a time on an idle app."""
            waits = []
            for _ in range(count):
                job_id = submit()
                deadline = time.time() + 60
                while time.time() < deadline:
                    started = [float(r[4]) for r in read_lines(starts) if int(r[0]) == job_id]
                    if started:
                        waits.append(min(started) - submitted[job_id])
                        break
                    time.sleep(0.01)
                time.sleep(0.3)
            return waits

        result["probe_before"] = probe(args.probes)
        load_start = time.time()
        plan: list[tuple[float, str]] = []
        period = 1.0 / args.rate
        duration = args.jobs * period
        for i in range(args.outages):
            plan.append((duration * (i + 1) / (args.outages + 2), "outage"))
        for i in range(args.app_kills):
            plan.append((duration * (i + 1.5) / (args.app_kills + 2), "app_kill"))
        for i in range(args.child_kills):
            plan.append((duration * (i + 0.5) / args.child_kills, "child_kill"))
        plan.sort()
        rng = random.Random(args.seed)
        killed_children: list[int] = []
        sent = 0
        while sent < args.jobs or plan:
            now = time.time() - load_start
            if plan and plan[0][0] <= now:
                _, what = plan.pop(0)
                if what == "outage":
                    began = time.time()
                    fault.cut()
                    time.sleep(args.outage)
                    fault.restore()
                    events["outages"].append((began, time.time()))
                elif what == "app_kill":
                    running = app.children()
                    killed_children.extend(running)  # they die with it (PDEATHSIG)
                    app.kill()
                    time.sleep(0.5)
                    app.start()
                else:
                    running = app.children()
                    if running:
                        pid = rng.choice(running)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        killed_children.append(pid)
                continue
            if sent < args.jobs and now >= sent * period:
                submit()
                sent += 1
                continue
            time.sleep(0.005)
        wanted = set(submitted)
        deadline = time.time() + args.settle
        while time.time() < deadline:
            done = {int(r[0]) for r in admin.execute(
                f'SELECT id FROM "{schema}".jobs WHERE state IN (\'done\', \'failed\')')}
            if wanted <= done:
                break
            time.sleep(0.2)
        result["probe_after"] = probe(args.probes)
        wanted = set(submitted)
        time.sleep(0.5)
        result["load_seconds"] = time.time() - load_start
    finally:
        app.stop()
        if isinstance(fault, Proxy):
            fault.cut()
        else:
            with contextlib.suppress(Exception):
                fault.restore()  # never leave the shared server stopped
    states = dict(admin.execute(f'SELECT id, state FROM "{schema}".jobs').fetchall())
    admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    admin.close()
    store.close()

    by_job: dict[int, list[list[str]]] = {}
    for row in read_lines(effects):
        by_job.setdefault(int(row[0]), []).append(row)
    crashed = set(killed_children)
    killed_apps = set(app.killed)
    allowed = unexplained = 0
    for rows in by_job.values():
        if len(rows) < 2:
            continue
        rows.sort(key=lambda r: float(r[4]))
        if all(int(r[2]) in crashed or int(r[3]) in killed_apps for r in rows[:-1]):
            allowed += 1
        else:
            unexplained += 1
    lost = sorted(j for j in wanted if states.get(j) != "done" or j not in by_job)
    # Warning-or-worse lines from the outage until 5 s after it, but the per-attempt
    # "failed, retrying" lines that the child kills cause.
    per_outage = []
    log_rows = []
    for line in (workdir / "app.log").read_text(errors="replace").splitlines():
        try:
            event = json.loads(line.lstrip("\x1e"))  # JSON text sequences: RS first
        except ValueError:
            log_rows.append((None, "raw", line))
            continue
        level = event.get("log_level")
        name = level.get("name") if isinstance(level, dict) else str(level)
        text = event.get("log_format", "") + " " + str(event.get("error", ""))
        log_rows.append((event.get("log_time"), name, text + str(event.get("log_failure", ""))))
    for began, ended in events["outages"]:
        count = 0
        for at, level, text in log_rows:
            if at is None or not began <= float(at) <= ended + 5.0:
                continue
            if level in ("warn", "error", "critical") and "failed, retrying" not in text:
                count += 1
        per_outage.append(count)
    restored = events["outages"][0][1] if events["outages"] else None
    first_start = None
    if restored is not None:
        later = [float(r[4]) for r in read_lines(starts) if float(r[4]) >= restored]
        first_start = min(later) - restored if later else None
    result.update({
        "jobs": len(wanted), "lost": len(lost), "lost_ids": lost[:20],
        "effects_twice_allowed": allowed, "effects_twice_unexplained": unexplained,
        "children_killed": len(killed_children), "apps_killed": len(killed_apps),
        "outages": [round(b - a, 2) for a, b in events["outages"]],
        "log_lines_per_outage": per_outage,
        "first_start_after_outage": first_start,
        "tracebacks": sum(1 for _, _, text in log_rows if "Traceback" in str(text)),
        "workdir": str(workdir),
    })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faults_jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0, help="submits per second")
    parser.add_argument("--outage", type=float, default=7.6, help="seconds")
    parser.add_argument("--outages", type=int, default=1)
    parser.add_argument("--child-kills", type=int, default=10)
    parser.add_argument("--app-kills", type=int, default=1)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds to wait for the last jobs")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--pg", default=os.environ.get("DAEMONAPP_TEST_PG", DEFAULT_PG))
    parser.add_argument("--real-restart", action="store_true",
                        help="stop and start the local cluster instead of cutting a proxy")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        def median(values: list[float]) -> str:
            return f"{statistics.median(values):.3f} s" if values else "-"

        first = result["first_start_after_outage"]
        rows = [
            ("jobs (acknowledged)", result["jobs"]),
            ("outages (s)", ", ".join(f"{o:g}" for o in result["outages"])),
            ("children SIGKILLed / apps SIGKILLed",
             f"{result['children_killed']} / {result['apps_killed']}"),
            ("jobs lost", result["lost"]),
            ("effects run twice, allowed (a crash)", result["effects_twice_allowed"]),
            ("effects run twice, unexplained", result["effects_twice_unexplained"]),
            ("warn+ log lines per outage", ", ".join(map(str, result["log_lines_per_outage"]))),
            ("tracebacks in the log", result["tracebacks"]),
            ("first job start after the outage", "-" if first is None else f"{first:.2f} s"),
            ("submit-to-start before (median)", median(result["probe_before"])),
            ("submit-to-start after (median)", median(result["probe_after"])),
            ("ratio after/before",
             f"{statistics.median(result['probe_after']) / statistics.median(result['probe_before']):.2f}"
             if result["probe_after"] and result["probe_before"] else "-"),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name.ljust(width)}  {value}")
        print(f"(work directory: {result['workdir']})")
    return 1 if result["lost"] or result["effects_twice_unexplained"] else 0


if __name__ == "__main__":
    sys.exit(main())
