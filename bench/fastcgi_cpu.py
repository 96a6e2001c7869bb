"""Where the CPU goes while wrk runs, for bench/fastcgi.sh: wrk run as a child of this.

Usage: python bench/fastcgi_cpu.py OUT APP_PID NGINX_PID -- wrk ARGS...
Runs wrk (its output to stdout, as the script redirects it) and writes OUT, one JSON
object: the window's length, the CPU seconds (user + system, all threads, from
/proc/PID/stat before and after) of APP_PID and its descendants (each process on its
own: a supervisor and its workers) and of NGINX_PID and its descendants (master and
workers), wrk's own (its rusage, all threads), and the machine's ticks from /proc/stat
(idle, irq + softirq, busy in all). When APP_PID runs `daemonapp run FILE` with workers
(app.processes > 1), the requests each process counted in the window are read from the
status socket (``daemonapp status --json FILE``) before and after it, each after a
pause of SNAPSHOT_WAIT so that the workers' last snapshots (one a second) are in, and
the connections each process holds (nginx's upstream connections) are counted every
second while wrk runs (``ss -xp``: its connected unix sockets).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from uploads_load import cpu_seconds, tree

#: Longer than a worker's snapshot interval (daemonapp.worker.REPORT_INTERVAL, 1 s).
SNAPSHOT_WAIT = 1.3


def machine_ticks() -> dict[str, int]:
    """The first line of /proc/stat as idle, irq (irq + softirq) and total ticks."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0]
              .split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is within user already)
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"idle": idle + iowait, "irq": irq + softirq,
            "total": user + nice + system + idle + iowait + irq + softirq + steal}


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` (those still there)."""
    found = {}
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            found[pid] = cpu_seconds([pid])
    return found


def config_of(pid: int) -> str | None:
    """FILE when ``pid`` runs ``daemonapp run FILE`` (python -m daemonapp.cli run FILE)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return None
    words = [word.decode(errors="replace") for word in argv]
    if "daemonapp.cli" in words and "run" in words and words[-1] != "run":
        return words[-1]
    return None


def requests_by_pid(config: str) -> dict[str, Any]:
    """pid -> (role, requests) from the app's status snapshot; {} when it cannot be read."""
    try:
        answer = subprocess.run([sys.executable, "-m", "daemonapp.cli", "status", "--json",
                                 config], capture_output=True, text=True, timeout=10,
                                check=True)
        snapshot = json.loads(answer.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    processes = snapshot.get("processes")
    if not isinstance(processes, list):
        return {}
    return {str(entry.get("pid")): [entry.get("role"), entry.get("requests")]
            for entry in processes}


def connections_by_pid(pids: list[int]) -> dict[int, int]:
    """Connected unix stream sockets each of ``pids`` holds (``ss -xp``)."""
    try:
        text = subprocess.run(["ss", "-xpH", "state", "connected"], check=False,
                              capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    counts = dict.fromkeys(pids, 0)
    for line in text.splitlines():
        if line.startswith("u_str"):
            for pid in {int(found) for found in re.findall(r"pid=(\d+),", line)}:
                if pid in counts:
                    counts[pid] += 1
    return counts


def sample_connections(pids: list[int], done: threading.Event,
                       samples: list[dict[int, int]]) -> None:
    """Every second until ``done``: the connections of each of ``pids``."""
    while not done.wait(1.0):
        samples.append(connections_by_pid(pids))


def main() -> int:
    out, app_pid, nginx_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    command = sys.argv[sys.argv.index("--") + 1:]
    # several processes (app.processes > 1): a supervisor and its workers, its children
    config = config_of(app_pid) if len(tree(app_pid)) > 1 else None
    requests_before: dict[str, Any] = {}
    if config is not None:
        time.sleep(SNAPSHOT_WAIT)  # the warm-up's requests in the workers' snapshots
        requests_before = requests_by_pid(config)
    app_before = process_cpu(tree(app_pid))
    nginx_before = process_cpu(tree(nginx_pid))
    machine_before = machine_ticks()
    started = time.monotonic()
    wrk = subprocess.Popen(command)
    samples: list[dict[int, int]] = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_connections,
                               args=(list(app_before), done, samples), daemon=True)
    if config is not None:
        sampler.start()
    _, status, usage = os.wait4(wrk.pid, 0)
    done.set()
    wrk.returncode = os.waitstatus_to_exitcode(status)
    window = time.monotonic() - started
    machine_after = machine_ticks()
    app_after = process_cpu(tree(app_pid))
    nginx_after = process_cpu(tree(nginx_pid))
    requests_after: dict[str, Any] = {}
    if config is not None:
        time.sleep(SNAPSHOT_WAIT)
        requests_after = requests_by_pid(config)
    processes = []
    for pid, after in app_after.items():
        role = "process" if len(app_after) == 1 else ("supervisor" if pid == app_pid
                                                      else "worker")
        entry: dict[str, Any] = {"pid": pid, "role": role,
                                 "cpu_s": after - app_before.get(pid, 0.0),
                                 "born_in_window": pid not in app_before}
        if samples:
            entry["connections"] = sorted(sample.get(pid, 0) for sample in samples)
        if str(pid) in requests_after:
            before = requests_before.get(str(pid), [None, 0])[1] or 0
            entry["requests"] = int(requests_after[str(pid)][1] or 0) - int(before)
        processes.append(entry)
    result = {
        "window_s": window,
        "cpus": os.cpu_count(),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "app_processes": processes,
        "app_ended_in_window": sorted(set(app_before) - set(app_after)),
        "app_s": sum(entry["cpu_s"] for entry in processes),
        "nginx_s": sum(after - nginx_before.get(pid, 0.0)
                       for pid, after in nginx_after.items()),
        "wrk_s": usage.ru_utime + usage.ru_stime,
        "machine_ticks": {key: machine_after[key] - machine_before[key]
                          for key in machine_after},
        "wrk_status": wrk.returncode,
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return wrk.returncode


if __name__ == "__main__":
    raise SystemExit(main())
