"""The tables of bench/spawned.sh, from the files it left in its temp dir.

Usage: python bench/spawned_report.py TMPDIR ROUNDS NAME...
Reads TMPDIR/NAME.wrk.R (wrk --latency output), TMPDIR/NAME.first.R (spawned_probe.py's
JSON) for each round R, and TMPDIR/notes (lines spawned.sh wants printed); prints medians
over the rounds, the ratio to flup, and PASS/MISS. Exit status 1 when a run failed outright.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from fastcgi_report import _ms, parse_wrk

LABELS = {
    "floor": "twisted_fcgi_floor.py (anchor)",
    "flup": "flup WSGIServer (anchor)",
    "wsgi": "ours: WSGI, threads 10 (default)",
    "wsgi0": "ours: WSGI, threads 0",
    "native": "ours: native handler",
}
ANCHOR = "flup"
FLOOR = "floor"
#: name -> minimum ratio of its req/s to flup's; native's ratio is printed for information
RATE_GOALS = {"wsgi": 3.0, "wsgi0": 3.0}
#: lighttpd's start -> first 200, worst round, for every configuration of ours
FIRST_GOAL_MS = 1000.0


def p50_ms(text: str) -> float:
    match = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    if match is None:
        raise ValueError("no 50% line")
    return _ms(match.group(1))


def backend_cpu_us(cpu_file: Path, wrk_text: str) -> float | None:
    """The backend's CPU time per request in µs: spawned.sh's "TICKS CLK_TCK" / requests."""
    requests = re.search(r"^\s*(\d+) requests in", wrk_text, re.M)
    try:
        ticks, clk_tck = (int(word) for word in cpu_file.read_text().split())
    except (OSError, ValueError):
        return None
    if requests is None or int(requests.group(1)) == 0:
        return None
    return ticks / clk_tck * 1e6 / int(requests.group(1))


def main() -> int:
    tmp, rounds, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    rates: dict[str, tuple[float, float, float, int]] = {}
    cpu_per_request: dict[str, float] = {}
    per_round: list[str] = []
    firsts: dict[str, tuple[list[float], list[float]]] = {}
    notes: list[str] = []
    failed = False
    for name in names:
        rps_list, p50_list, p99_list, errors = [], [], [], 0
        cpu_list: list[float] = []
        to_200, first_request = [], []
        for round_number in range(1, rounds + 1):
            first_file = tmp / f"{name}.first.{round_number}"
            try:
                first = json.loads(first_file.read_text())
            except (OSError, ValueError) as err:
                first = {"error": f"no probe result ({err})"}
            if "error" in first:
                notes.append(f"{name}: round {round_number}: first request: {first['error']} "
                             f"{first.get('statuses', '')}")
                failed = True
            else:
                to_200.append(first["start_to_200_ms"])
                first_request.append(first["first_request_ms"])
                if first["attempts"] > 1:
                    notes.append(f"{name}: round {round_number}: {first['attempts']} requests "
                                 f"before the first 200: {first['statuses']}")
            wrk = tmp / f"{name}.wrk.{round_number}"
            try:
                text = wrk.read_text()
                rps, p99, errs = parse_wrk(text)
                p50 = p50_ms(text)
            except (OSError, ValueError) as err:
                notes.append(f"{name}: round {round_number}: no wrk result ({err})")
                failed = True
                continue
            cpu = backend_cpu_us(tmp / f"{name}.cpu.{round_number}", text)
            if cpu is not None:
                cpu_list.append(cpu)
            rps_list.append(rps)
            p50_list.append(p50)
            p99_list.append(p99)
            errors += errs
        if cpu_list:
            cpu_per_request[name] = statistics.median(cpu_list)
        if rps_list and rounds > 1:
            per_round.append(f"{name} " + " ".join(f"{rps:.0f}" for rps in rps_list))
        if rps_list:
            rates[name] = (statistics.median(rps_list), statistics.median(p50_list),
                           statistics.median(p99_list), errors)
        if to_200:
            firsts[name] = (to_200, first_request)
        if errors:
            notes.append(f"{name}: {errors} failed requests (non-2xx or socket errors)")

    print(f"{'throughput':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs':>7} "
          f"{'vs flup':>8} {'vs floor':>8} {'goal':>9}  result")
    for name in names:
        label = LABELS.get(name, name)
        if name not in rates:
            print(f"{label:<34} {'—':>9} {'—':>8} {'—':>8}")
            continue
        rps, p50, p99, errors = rates[name]
        cpu_text = f"{cpu_per_request[name]:.0f}" if name in cpu_per_request else "—"
        ratio_text, floor_text, goal_text, verdict = "", "", "", ""
        if name not in (ANCHOR, FLOOR) and FLOOR in rates:
            floor_text = f"{rps / rates[FLOOR][0]:.2f}x"
        if name != ANCHOR and ANCHOR in rates:
            ratio = rps / rates[ANCHOR][0]
            ratio_text = f"{ratio:.2f}x"
            bound = RATE_GOALS.get(name)
            if bound is None:
                verdict = "info"
            else:
                goal_text = f">= {bound:g}x"
                verdict = "PASS" if ratio >= bound and not errors else "MISS"
        elif name in RATE_GOALS:
            goal_text, verdict = f">= {RATE_GOALS[name]:g}x", "n/a (no anchor)"
        print(f"{label:<34} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {cpu_text:>7} {ratio_text:>8} "
              f"{floor_text:>8} {goal_text:>9}  {verdict}")

    print("# CPU µs: the backend's CPU time (user + system, all threads) per request during"
          " the wrk run; less sensitive to the machine's load than req/s.")
    print()
    print(f"{'first request after the spawn':<34} {'start→200 ms':>19} {'first req ms':>19} "
          f"{'goal':>10}  result")
    print(f"{'':<34} {'median':>9} {'max':>9} {'median':>9} {'max':>9}")
    for name in names:
        label = LABELS.get(name, name)
        if name not in firsts:
            print(f"{label:<34} {'—':>9} {'—':>9} {'—':>9} {'—':>9}")
            continue
        to_200, first_request = firsts[name]
        goal_text, verdict = "", "info"
        if name not in (ANCHOR, FLOOR):
            goal_text = f"<= {FIRST_GOAL_MS:g}"
            verdict = "PASS" if max(to_200) <= FIRST_GOAL_MS else "MISS"
        print(f"{label:<34} {statistics.median(to_200):>9.0f} {max(to_200):>9.0f} "
              f"{statistics.median(first_request):>9.0f} {max(first_request):>9.0f} "
              f"{goal_text:>10}  {verdict}")
    print("# start→200: lighttpd's start (it spawns the backend at once) -> the first 200;"
          " judged on its max over the rounds.")
    print("# first req: that first request alone, from its send to its answer (lighttpd binds"
          " its port before it spawns, so it waits for the backend's start-up too).")
    if per_round:
        print(f"# req/s per round: {'; '.join(per_round)}")
    notes_file = tmp / "notes"
    if notes_file.exists():
        notes.extend(line for line in notes_file.read_text().splitlines() if line.strip())
    for note in notes:
        print(f"# {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
