"""The tables of bench/fastcgi.sh, from the files it left in its temp dir.

Usage: python bench/fastcgi_report.py TMPDIR ROUNDS NAME...
Reads TMPDIR/NAME.wrk.R (wrk --latency output), TMPDIR/NAME.check.R (one request's
status and body) and TMPDIR/NAME.cpu.R (bench/fastcgi_cpu.py's JSON) for each round R;
prints medians, ratios to the anchors and PASS/MISS, then where the CPU went per request
and the ceiling the machine allows for processes 2 against 1 (information: a MISS
stays a MISS).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

LABELS = {
    "floor": "twisted_fcgi_floor.py (anchor)",
    "flup": "flup WSGIServer (anchor)",
    "native": "ours: native handler",
    "wsgi": "ours: WSGI, threads 10 (default)",
    "wsgi0": "ours: WSGI, threads 0",
    "busy": "ours: native + 100 busy daemons",
    "busy2ms": "  the same, time_slice 2 ms (info)",
    "flup32": "flup WSGIServer, -c32 (anchor)",
    "native_p1": "ours: native, processes 1, -c32",
    "native_p2": "ours: native, processes 2, -c32",
    "wsgi_p1": "ours: WSGI, processes 1, -c32",
    "wsgi_p2": "ours: WSGI, processes 2, -c32",
}
#: name -> (anchor, minimum ratio of req/s) or (None, maximum p99 in ms)
GOALS: dict[str, tuple[str | None, float]] = {
    "native": ("floor", 0.7),
    "wsgi": ("flup", 3.0),
    "wsgi0": ("flup", 3.0),
    "busy": (None, 10.0),
    "native_p2": ("native_p1", 1.6),
    "wsgi_p2": ("wsgi_p1", 1.6),
}
#: A second goal for a configuration, shown on a line of its own.
SECOND_GOALS: dict[str, tuple[str, float]] = {"wsgi_p2": ("flup32", 4.0)}
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
EXPECTED_BODY = "Hello, world!"


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unparsable latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text: str) -> tuple[float, float, int]:
    """Requests/s, p99 latency (ms) and errors (non-2xx answers + socket errors)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if rps is None or p99 is None:
        raise ValueError("no Requests/sec or 99% line")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx is not None:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        text)
    if sockets is not None:
        errors += sum(int(value) for value in sockets.groups())
    return float(rps.group(1)), _ms(p99.group(1)), errors


#: processes 2 -> the processes 1 it is judged against (the ceiling of their ratio)
PAIRS = {"native_p2": "native_p1", "wsgi_p2": "wsgi_p1"}
#: Figures of one wrk window per request (us), as shares, or in cores.
CPU_KEYS = ("app", "nginx", "wrk", "rest", "idle", "app_cores", "nginx_cores", "wrk_cores",
            "rest_cores")


def wrk_requests(text: str) -> int:
    """The requests wrk completed (its line "N requests in 5.00s")."""
    match = re.search(r"(\d+) requests in", text)
    if match is None:
        raise ValueError("no 'requests in' line")
    return int(match.group(1))


def cpu_round(cpu: dict[str, Any], requests: int) -> dict[str, Any]:
    """One window's figures: CPU per request (us) of the app (all its processes), nginx,
    wrk and the rest of the machine (other work, the kernel's irq time unless charged
    to the processes), the idle share, each in cores too, and each app process's
    share of the app's CPU and requests."""
    ticks = cpu["machine_ticks"]
    window, tck = float(cpu["window_s"]), float(cpu["clk_tck"])
    busy_s = (ticks["total"] - ticks["idle"]) / tck
    seconds = {"app": float(cpu["app_s"]), "nginx": float(cpu["nginx_s"]),
               "wrk": float(cpu["wrk_s"])}
    seconds["rest"] = max(0.0, busy_s - sum(seconds.values()))
    figures: dict[str, Any] = {key: value * 1e6 / requests for key, value in seconds.items()}
    figures.update({f"{key}_cores": value / window for key, value in seconds.items()})
    figures["idle"] = ticks["idle"] / ticks["total"] if ticks["total"] else 0.0
    figures["cpus"] = int(cpu["cpus"])
    processes = sorted(cpu["app_processes"], key=lambda entry: (
        entry["role"] != "supervisor", entry["pid"]))
    counted = sum(int(entry.get("requests", 0)) for entry in processes)
    figures["processes"] = [
        {"role": entry["role"],
         "cpu": entry["cpu_s"] / seconds["app"] if seconds["app"] else 0.0,
         "requests": entry["requests"] / counted if "requests" in entry and counted
         else None,
         "us": entry["cpu_s"] * 1e6 / entry["requests"] if entry.get("requests")
         else None,
         "connections": statistics.median(entry["connections"])
         if entry.get("connections") else None}
        for entry in processes]
    return figures


def ratio_ceiling(app_us: float, others_us: float, cores: int) -> float:
    """The most processes 2 can do against 1 when a request costs the app ``app_us`` and
    nginx + wrk ``others_us`` of CPU: p1 = 1e6/a (the app on its one core), p2 at most
    cores * 1e6/(a + c) (every core busy) and 2e6/a (each process on its core)."""
    return min(2.0, cores * app_us / (app_us + others_us))


def rate_ceiling(app_us: float, others_us: float, cores: int, processes: int) -> float:
    """Requests/s the cores allow ``processes`` app processes at these costs per request:
    each process on at most one core, and every core busy at most."""
    return min(processes * 1e6 / app_us, cores * 1e6 / (app_us + others_us))


def cpu_medians(tmp: Path, rounds: int, name: str) -> dict[str, Any] | None:
    """Medians over the rounds of ``cpu_round`` (None: no round measured)."""
    measured = []
    for round_number in range(1, rounds + 1):
        try:
            cpu = json.loads((tmp / f"{name}.cpu.{round_number}").read_text())
            requests = wrk_requests((tmp / f"{name}.wrk.{round_number}").read_text())
        except (OSError, ValueError):
            continue
        if requests:
            measured.append(cpu_round(cpu, requests))
        if cpu.get("app_ended_in_window"):
            print(f"# {name}: round {round_number}: app process(es) "
                  f"{', '.join(map(str, cpu['app_ended_in_window']))} ended in the window: "
                  f"their CPU is missing from it")
    if not measured:
        return None
    medians: dict[str, Any] = {key: statistics.median(m[key] for m in measured)
                               for key in CPU_KEYS}
    shapes = {len(m["processes"]) for m in measured}
    medians["cpus"] = measured[0]["cpus"]
    medians["processes"] = []
    if len(shapes) == 1:  # the same processes in every round: each one's medians
        for index in range(shapes.pop()):
            entries = [m["processes"][index] for m in measured]
            entry: dict[str, Any] = {"role": entries[0]["role"]}
            for key in ("cpu", "requests", "us", "connections"):
                values = [e[key] for e in entries if e[key] is not None]
                entry[key] = statistics.median(values) if values else None
            medians["processes"].append(entry)
    return medians


def print_cpu(tmp: Path, rounds: int, names: list[str],
              results: dict[str, tuple[float, float, int]]) -> None:
    """Where the CPU went in the wrk windows, and the ceiling of processes 2 / 1."""
    figures = {name: f for name in names if (f := cpu_medians(tmp, rounds, name)) is not None}
    if not figures:
        return
    print("# CPU in the wrk window per request, in us (utime + stime from /proc/PID/stat;"
          " wrk's rusage;\n# rest: the machine's busy time less those three), medians:")
    print(f"{'configuration':<34} {'app':>7} {'nginx':>7} {'wrk':>7} {'rest':>7} "
          f"{'idle':>6}  cores app/nginx/wrk/rest")
    for name in names:
        f = figures.get(name)
        if f is None:
            continue
        print(f"{LABELS.get(name, name):<34} {f['app']:>7.1f} {f['nginx']:>7.1f} "
              f"{f['wrk']:>7.1f} {f['rest']:>7.1f} {f['idle']:>6.1%}  "
              f"{f['app_cores']:.2f}/{f['nginx_cores']:.2f}/{f['wrk_cores']:.2f}/"
              f"{f['rest_cores']:.2f}")
    for name in names:
        f = figures.get(name)
        if f is None or len(f["processes"]) < 2:
            continue
        parts = []
        for entry in f["processes"]:
            text = f"{entry['role']} {entry['cpu']:.0%} of the CPU"
            if entry["requests"] is not None:
                text += f", {entry['requests']:.0%} of the requests"
            if entry["us"] is not None:
                text += f", {entry['us']:.0f} us each"
            if entry["connections"] is not None:
                text += f", {entry['connections']:g} connections"
            parts.append(text)
        print(f"# {name}: " + "; ".join(parts))
    for p2, p1 in PAIRS.items():
        if p2 not in figures or p1 not in figures or p2 not in results \
                or p1 not in results:
            continue
        a1, a2 = figures[p1]["app"], figures[p2]["app"]
        if a1 <= 0 or a2 <= 0:
            continue  # no app CPU read (it ended before the window did)
        c2 = figures[p2]["nginx"] + figures[p2]["wrk"]
        cores = figures[p2]["cpus"]
        ceiling = ratio_ceiling(a1, c2, cores)
        rps1, rps2 = results[p1][0], results[p2][0]
        print(f"# {p2}/{p1}: measured {rps2 / rps1:.2f}x; ceiling {cores}a/(a+c) = "
              f"{ceiling:.2f}x (a = {a1:.1f} us, the app at p1; c = {c2:.1f} us, nginx + "
              f"wrk at p2; {cores} cores)")
        # each at its own costs: independent of the share of the cores other work took
        c1 = figures[p1]["nginx"] + figures[p1]["wrk"]
        bound1 = rate_ceiling(a1, c1, cores, 1)
        bound2 = rate_ceiling(a2, c2, cores, 2)
        print(f"#   what the cores allow each at its own costs: p1 {bound1:,.0f} req/s, p2 "
              f"{bound2:,.0f} (a = {a2:.1f} us): {bound2 / bound1:.2f}x; measured p1 "
              f"{rps1:,.0f} ({rps1 / bound1:.0%} of it), p2 {rps2:,.0f} ({rps2 / bound2:.0%})")
        print(f"#   idle: p1 {figures[p1]['idle']:.1%}, p2 {figures[p2]['idle']:.1%}; the "
              f"rest of the machine took {figures[p1]['rest_cores']:.2f} cores at p1, "
              f"{figures[p2]['rest_cores']:.2f} at p2; the app at p1 used "
              f"{figures[p1]['app_cores']:.2f} of its core")


def main() -> int:
    """Print the table; exit status 1 when a run failed outright."""
    tmp, rounds, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    results: dict[str, tuple[float, float, int]] = {}
    notes: list[str] = []
    failed = False
    for name in names:
        rps_list, p99_list, errors = [], [], 0
        for round_number in range(1, rounds + 1):
            wrk = tmp / f"{name}.wrk.{round_number}"
            check = tmp / f"{name}.check.{round_number}"
            check_text = check.read_text().strip() if check.exists() else "(none)"
            if check_text != f"200 {EXPECTED_BODY}":
                notes.append(f"{name}: round {round_number}: a single request gave "
                             f"{check_text[:200]!r}")
                failed = True
            try:
                rps, p99, errs = parse_wrk(wrk.read_text())
            except (OSError, ValueError) as err:
                notes.append(f"{name}: round {round_number}: no wrk result ({err})")
                failed = True
                continue
            rps_list.append(rps)
            p99_list.append(p99)
            errors += errs
        if rps_list:
            results[name] = (statistics.median(rps_list), statistics.median(p99_list), errors)
        if errors:
            notes.append(f"{name}: {errors} failed requests (non-2xx or socket errors)")
    print(f"{'configuration':<34} {'req/s':>9} {'p99 ms':>8} {'vs anchor':>16} "
          f"{'goal':>14}  result")
    for name in names:
        if name not in results:
            print(f"{LABELS.get(name, name):<34} {'—':>9} {'—':>8}")
            continue
        rps, p99, errors = results[name]
        ratio_text, goal_text, verdict = "", "", ""
        goal = GOALS.get(name)
        if goal is not None:
            anchor, bound = goal
            if anchor is None:
                goal_text = f"p99 <= {bound:g} ms"
                verdict = "PASS" if p99 <= bound and not errors else "MISS"
            elif anchor in results:
                ratio = rps / results[anchor][0]
                ratio_text = f"{ratio:.2f}x {anchor}"
                goal_text = f">= {bound:g}x {anchor}"
                verdict = "PASS" if ratio >= bound and not errors else "MISS"
            else:
                goal_text = f">= {bound:g}x {anchor}"
                verdict = "n/a (no anchor)"
        print(f"{LABELS.get(name, name):<34} {rps:>9.0f} {p99:>8.2f} {ratio_text:>16} "
              f"{goal_text:>14}  {verdict}")
        second = SECOND_GOALS.get(name)
        if second is not None and second[0] in results:
            anchor, bound = second
            ratio = rps / results[anchor][0]
            verdict = "PASS" if ratio >= bound and not errors else "MISS"
            print(f"{'  the same':<34} {'':>9} {'':>8} {f'{ratio:.2f}x {anchor}':>16} "
                  f"{f'>= {bound:g}x {anchor}':>14}  {verdict}")
    print_cpu(tmp, rounds, names, results)
    for note in notes:
        print(f"# {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
