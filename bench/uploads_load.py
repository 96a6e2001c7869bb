"""Load and memory probes of bench/uploads.sh (loopback only, bounded counts and time).

Usage:
  python bench/uploads_load.py burst URL BODY_FILE N PID
      One warm-up POST of BODY_FILE to URL (its answer checked), then the server's idle
      RSS, its peak RSS reset (``/proc/PID/clear_refs`` 5, which resets VmHWM), then N
      POSTs at once (N threads released together), each answer checked against the
      body's length and SHA-256, then the peak RSS. PID and its descendants (gunicorn's
      workers) are measured: idle and peak are sums over those processes. VmRSS is also
      sampled every 5 ms (``sampled_peak_kb``), a cross-check of VmHWM that holds when the
      peaks of several processes do not coincide. Prints one JSON object.
  python bench/uploads_load.py reset PID      resets VmHWM of PID and its descendants;
                                              prints {"reset": ..., "cpu_s": ...}
  python bench/uploads_load.py hwm PID        prints {"rss_kb": ..., "hwm_kb": ..., "cpu_s": ...}
(sums over PID and its descendants; cpu_s: user + system CPU seconds of all their threads;
main_cpu_s: the same of PID's main thread alone, daemonapp's reactor).

Every request has a timeout (120 s); the burst gives up after 300 s.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

TIMEOUT = 120.0
SAMPLE_EVERY = 0.005


def tree(pid: int) -> list[int]:
    """PID and its descendants, from /proc/PID/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def status_kb(pid: int, field: str) -> int:
    """VmRSS or VmHWM of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int], main_thread: bool = False) -> float:
    """User + system CPU time of these processes (all threads; with ``main_thread``,
    each one's main thread only), from /proc/PID/stat (/proc/PID/task/PID/stat)."""
    ticks = 0
    for pid in pids:
        path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
        try:
            fields = Path(path).read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def reset_hwm(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False when not allowed."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def post(url: str, body: bytes) -> tuple[int, bytes, float]:
    """One POST: status, answer, seconds."""
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=TIMEOUT)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/octet-stream"})
        answer = conn.getresponse()
        data = answer.read()
        return answer.status, data, time.perf_counter() - started
    finally:
        conn.close()


def burst(url: str, body_file: str, count: int, pid: int) -> dict[str, Any]:
    """The measurement described in the module's docstring."""
    body = Path(body_file).read_bytes()
    expected = f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode("ascii")
    status, data, _ = post(url, body)  # warm-up: imports, the thread pool, buffers
    warm_ok = status == 200 and data == expected
    time.sleep(0.3)
    pids = tree(pid)
    idle_kb = sum(status_kb(p, "VmRSS") for p in pids)
    hwm_reset = reset_hwm(pids)
    sampled_peak = idle_kb
    done = threading.Event()

    def sample() -> None:
        nonlocal sampled_peak
        while not done.is_set():
            sampled_peak = max(sampled_peak, sum(status_kb(p, "VmRSS") for p in pids))
            time.sleep(SAMPLE_EVERY)

    results: list[tuple[int, bytes, float] | str] = []
    gate = threading.Barrier(count)

    def one() -> None:
        try:
            gate.wait(timeout=30)
            results.append(post(url, body))
        except Exception as err:  # a failed upload is a result to report
            results.append(f"{type(err).__name__}: {err}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    workers = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=max(1.0, 300 - (time.perf_counter() - started)))
    elapsed = time.perf_counter() - started
    time.sleep(0.05)
    done.set()
    sampler.join()
    peak_kb = sum(status_kb(p, "VmHWM") for p in pids) if hwm_reset else 0
    ok = sum(1 for r in results if not isinstance(r, str) and r[0] == 200 and r[1] == expected)
    failures = [r if isinstance(r, str) else f"{r[0]} {r[1][:80]!r}"
                for r in results
                if isinstance(r, str) or r[0] != 200 or r[1] != expected]
    return {
        "body_bytes": len(body), "count": count, "ok": ok, "warm_ok": warm_ok,
        "warm_answer": f"{status} {data[:100]!r}", "failures": failures[:5],
        "pids": pids, "idle_kb": idle_kb, "peak_kb": peak_kb, "hwm_reset": hwm_reset,
        "sampled_peak_kb": sampled_peak, "seconds": round(elapsed, 3),
    }


def main(argv: list[str]) -> int:
    """Dispatch the subcommands; print JSON."""
    if len(argv) >= 1 and argv[0] == "burst" and len(argv) == 5:
        print(json.dumps(burst(argv[1], argv[2], int(argv[3]), int(argv[4]))))
        return 0
    if len(argv) == 2 and argv[0] == "reset":
        pids = tree(int(argv[1]))
        print(json.dumps({"reset": reset_hwm(pids), "cpu_s": cpu_seconds(pids),
                          "main_cpu_s": cpu_seconds(pids[:1], main_thread=True)}))
        return 0
    if len(argv) == 2 and argv[0] == "hwm":
        pids = tree(int(argv[1]))
        print(json.dumps({"rss_kb": sum(status_kb(p, "VmRSS") for p in pids),
                          "hwm_kb": sum(status_kb(p, "VmHWM") for p in pids),
                          "cpu_s": cpu_seconds(pids),
                          "main_cpu_s": cpu_seconds(pids[:1], main_thread=True)}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
