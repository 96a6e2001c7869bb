"""The tables of bench/uploads.sh, from what it left in its temp dir.

Usage: python bench/uploads_report.py TMPDIR ROUNDS CONNECTIONS SYNC_WORKERS SERVERS SIZES READS
(SERVERS, SIZES, READS comma-separated). Per server, body size (MB), read style and round
R it reads ``NAME.SIZE.READ.R.wrk`` (wrk --latency), ``.burst`` (uploads_load.py burst's
JSON) and ``.hwm`` (the peak RSS during wrk). Prints medians over the rounds:

- throughput: req/s, p99 and CPU time per request (the server's processes, all threads;
  for daemonapp also its reactor thread's share) of each server; each daemonapp
  listener's req/s over the
  better of the two gunicorn workers (named); goal >= 1.0x, no failed request;
- memory: (peak RSS - idle RSS) / N for N uploads at once, next to the body size;
  goal <= 2x the body for daemonapp's listeners (gunicorn: info).

Exit status 1 when a run failed outright (no wrk figures, wrong answers).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from fastcgi_report import parse_wrk

OURS = ("fastcgi", "scgi", "http")
GUNICORN = ("gsync", "gthread")
RPS_GOAL = 1.0
MEMORY_GOAL = 2.0
MB = 1000 * 1000


def labels(sync_workers: int) -> dict[str, str]:
    """The servers' names in the tables."""
    return {
        "fastcgi": "daemonapp fastcgi",
        "scgi": "daemonapp scgi",
        "http": "daemonapp http",
        "gsync": f"gunicorn sync x{sync_workers}",
        "gthread": "gunicorn gthread 1x10",
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded


def _cpu_ms_per_request(wrk_text: str, before: dict[str, Any] | None,
                        after: dict[str, Any] | None, field: str = "cpu_s") -> float | None:
    """The server's CPU time (all its processes and threads; ``main_cpu_s``: its main
    thread's) per request under wrk."""
    match = re.search(r"(\d+) requests in", wrk_text)
    if (match is None or before is None or after is None or not int(match.group(1))
            or field not in before or field not in after):
        return None
    return float(after[field] - before[field]) * 1000 / int(match.group(1))


def main(argv: list[str]) -> int:
    """Print both tables and the notes; 1 when a run failed outright."""
    tmp, rounds, connections, sync_workers = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    servers, sizes, reads = (argv[4].split(","), [int(s) for s in argv[5].split(",")],
                             argv[6].split(","))
    names = labels(sync_workers)
    notes: list[str] = []
    failed = False
    # (server, size, read) -> medians
    rps: dict[tuple[str, int, str], float] = {}
    p99: dict[tuple[str, int, str], float] = {}
    errors: dict[tuple[str, int, str], int] = {}
    per_upload: dict[tuple[str, int, str], float] = {}
    idle: dict[tuple[str, int, str], float] = {}
    sampled: dict[tuple[str, int, str], float] = {}
    under_wrk: dict[tuple[str, int, str], float] = {}
    cpu: dict[tuple[str, int, str], float] = {}
    reactor: dict[tuple[str, int, str], float] = {}
    for server in servers:
        for size in sizes:
            for read in reads:
                key = (server, size, read)
                rps_list, p99_list, mem_list, idle_list, sampled_list, wrk_list = (
                    [], [], [], [], [], [])
                cpu_list: list[float] = []
                reactor_list: list[float] = []
                errors[key] = 0
                for number in range(1, rounds + 1):
                    base = tmp / f"{server}.{size}.{read}.{number}"
                    try:
                        wrk_text = base.with_name(base.name + ".wrk").read_text()
                        r, p, e = parse_wrk(wrk_text)
                        pre = _load(base.with_name(base.name + ".pre"))
                        post = _load(base.with_name(base.name + ".hwm"))
                        cpu_ms = _cpu_ms_per_request(wrk_text, pre, post)
                        if cpu_ms is not None:
                            cpu_list.append(cpu_ms)
                        reactor_ms = _cpu_ms_per_request(wrk_text, pre, post, "main_cpu_s")
                        if reactor_ms is not None and server in OURS:
                            reactor_list.append(reactor_ms)
                        rps_list.append(r)
                        p99_list.append(p)
                        errors[key] += e
                    except (OSError, ValueError) as err:
                        notes.append(f"{server} {size} MB {read}: round {number}: "
                                     f"no wrk result ({err})")
                        failed = True
                    burst = _load(base.with_name(base.name + ".burst"))
                    if burst is None:
                        notes.append(f"{server} {size} MB {read}: round {number}: no burst")
                        failed = True
                        continue
                    if not burst["warm_ok"] or burst["ok"] != burst["count"]:
                        notes.append(f"{server} {size} MB {read}: round {number}: "
                                     f"{burst['ok']}/{burst['count']} uploads answered right "
                                     f"(first: {burst['warm_answer']}; {burst['failures']})")
                        failed = True
                    count = burst["count"]
                    peak = burst["peak_kb"] if burst["hwm_reset"] else burst["sampled_peak_kb"]
                    mem_list.append((peak - burst["idle_kb"]) * 1024 / count)
                    sampled_list.append((burst["sampled_peak_kb"] - burst["idle_kb"]) * 1024
                                        / count)
                    idle_list.append(burst["idle_kb"] * 1024)
                    hwm = _load(base.with_name(base.name + ".hwm"))
                    if hwm is not None:
                        wrk_list.append((hwm["hwm_kb"] - burst["idle_kb"]) * 1024 / connections)
                for target, values in ((rps, rps_list), (p99, p99_list), (per_upload, mem_list),
                                       (idle, idle_list), (sampled, sampled_list),
                                       (under_wrk, wrk_list), (cpu, cpu_list),
                                       (reactor, reactor_list)):
                    middle = _median(values)
                    if middle is not None:
                        target[key] = middle
                if errors[key]:
                    notes.append(f"{server} {size} MB {read}: {errors[key]} failed requests "
                                 f"under wrk (non-2xx or socket errors)")

    verdicts: list[str] = []
    print(f"\n## Throughput (wrk -t1 -c{connections}), medians of {rounds} round(s)")
    print(f"{'body':>6} {'read':<7} {'server':<22} {'req/s':>8} {'p99 ms':>9} "
          f"{'CPU ms/req':>10} {'reactor':>8} {'vs best gunicorn':>24}  result")
    for size in sizes:
        for read in reads:
            best: tuple[float, str] | None = None
            for server in GUNICORN:
                value = rps.get((server, size, read))
                if value is not None and (best is None or value > best[0]):
                    best = (value, server)
            for server in servers:
                key = (server, size, read)
                if key not in rps:
                    print(f"{size:>4}MB {read:<7} {names.get(server, server):<22} {'—':>8}")
                    continue
                ratio_text, verdict = "", ""
                if server in OURS and best is not None:
                    ratio = rps[key] / best[0]
                    ratio_text = f"{ratio:.2f}x {best[1]}"
                    ok = ratio >= RPS_GOAL and not errors[key]
                    verdict = "PASS" if ok else "MISS"
                    verdicts.append(f"req/s {size} MB {read} {server}: {ratio:.2f}x "
                                    f"{names[best[1]]} (goal >= {RPS_GOAL:g}x): {verdict}")
                elif server in GUNICORN and best is not None and best[1] == server:
                    verdict = "(best gunicorn)"
                cpu_text = f"{cpu[key]:>10.1f}" if key in cpu else f"{'—':>10}"
                reactor_text = f"{reactor[key]:>8.1f}" if key in reactor else f"{'':>8}"
                print(f"{size:>4}MB {read:<7} {names.get(server, server):<22} {rps[key]:>8.1f} "
                      f"{p99[key]:>9.1f} {cpu_text} {reactor_text} {ratio_text:>24}  {verdict}")

    print(f"\n## Memory: N uploads at once; (peak RSS - idle RSS) / N, medians of {rounds} "
          f"round(s); MB = 10^6 bytes")
    print(f"{'body':>6} {'read':<7} {'server':<22} {'idle RSS':>9} {'per upload':>11} "
          f"{'x body':>7} {'sampled':>8} {'under wrk':>10}  result")
    for size in sizes:
        for read in reads:
            for server in servers:
                key = (server, size, read)
                if key not in per_upload:
                    print(f"{size:>4}MB {read:<7} {names.get(server, server):<22} {'—':>9}")
                    continue
                times = per_upload[key] / (size * MB)
                verdict = ""
                if server in OURS:
                    verdict = "PASS" if times <= MEMORY_GOAL else "MISS"
                    verdicts.append(f"memory {size} MB {read} {server}: "
                                    f"{per_upload[key] / MB:.1f} MB per upload = {times:.2f}x "
                                    f"the body (goal <= {MEMORY_GOAL:g}x): {verdict}")
                wrk_text = (f"{under_wrk[key] / MB:>8.1f}MB" if key in under_wrk
                            else f"{'—':>10}")
                print(f"{size:>4}MB {read:<7} {names.get(server, server):<22} "
                      f"{idle[key] / MB:>7.1f}MB {per_upload[key] / MB:>9.1f}MB "
                      f"{times:>6.2f}x {sampled.get(key, 0.0) / MB:>6.1f}MB {wrk_text}  {verdict}")
    print("\n## Goals")
    for line in verdicts:
        print(line)
    for note in notes:
        print(f"# {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
