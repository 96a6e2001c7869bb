"""The table of bench/fastcgi.sh, from the wrk outputs it left in its temp dir.

Usage: python bench/fastcgi_report.py TMPDIR ROUNDS NAME...
Reads TMPDIR/NAME.wrk.R (wrk --latency output) and TMPDIR/NAME.check.R (one request's
status and body) for each round R; prints medians, ratios to the anchors and PASS/MISS.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

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
    for note in notes:
        print(f"# {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
