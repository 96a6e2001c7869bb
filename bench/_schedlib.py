"""Helpers for bench/scheduler.py: child processes, anchors, percentiles, the table.

Each measurement runs in its own child process of the same interpreter; a child
prints one line ``RESULT {json}`` that the parent parses. Anchor scripts are run
from the shared anchors directory when it exists, else from the inline copies in
bench/_anchors_inline.py (same algorithm, same output format).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULT_PREFIX = "RESULT "
#: The CPU time of the last child `run` waited for (one cell, set by `run`).
LAST_CHILD_CPU = [0.0]


def use_source_tree() -> None:
    """Import daemonapp from this checkout, not from the (non-editable) venv install.

    DAEMONAPP_BENCH_SRC names another tree to measure instead (A/B of a change).
    """
    root = os.environ.get("DAEMONAPP_BENCH_SRC") or str(ROOT)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)


def anchors_dir() -> Path | None:
    """The shared anchors: ../shared/anchors beside the project root, else /work/shared/anchors."""
    for candidate in (ROOT.parent / "shared" / "anchors", Path("/work/shared/anchors")):
        if (candidate / "reactor_limit.py").is_file():
            return candidate
    return None


def anchor_command(script: str, *args: object) -> tuple[list[str], str]:
    """The command line of an anchor script, and where it comes from."""
    base = anchors_dir()
    if base is not None and (base / script).is_file():
        return [sys.executable, str(base / script), *map(str, args)], str(base / script)
    inline = BENCH_DIR / "_anchors_inline.py"
    name = script.removesuffix(".py")
    return [sys.executable, str(inline), name, *map(str, args)], f"inline copy of {script}"


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def preemptions() -> int:
    """Involuntary context switches of this process so far (a sign of CPU contention)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def sleeps() -> int:
    """Voluntary context switches of this process so far: how often it slept (a reactor
    wake-up from epoll is one)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The same nearest-rank quantile as the anchors: values[int(q * (n - 1))]."""
    if not sorted_values:
        return float("nan")
    return sorted_values[int(q * (len(sorted_values) - 1))]


def emit(result: dict[str, Any]) -> None:
    """Print a child's result for the parent (the only line it parses)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


class ChildError(RuntimeError):
    """A measurement process failed or printed nothing the parent could parse."""


def children_cpu_seconds() -> float:
    """User + system CPU time of the waited-for children of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list[str], timeout: float) -> str:
    """Run a child to completion and return its stdout; raise ChildError on failure.

    The child's CPU time (user + system) is left in ``LAST_CHILD_CPU[0]``.
    """
    before = children_cpu_seconds()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise ChildError(f"timed out after {timeout:g} s: {' '.join(cmd)}") from e
    LAST_CHILD_CPU[0] = children_cpu_seconds() - before
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ChildError(f"exit {proc.returncode}: {' '.join(cmd)}: " + " | ".join(tail))
    return proc.stdout


def run_child(script: Path, case: str, *args: object, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``script --child case args`` and return its RESULT dict."""
    out = run([sys.executable, str(script), "--child", case, *map(str, args)], timeout)
    return result_of(out, case)


def run_alternating(commands: Sequence[list[str]], slice_s: float,
                    timeout: float) -> list[str]:
    """Run ``commands`` at once but one at a time: each in turn gets ``slice_s`` seconds
    while the others are stopped (SIGSTOP/SIGCONT), until all have exited; their stdouts.

    On a shared machine whose speed drifts over seconds, children measured one after
    the other see different machines; children that take turns every few tens of
    milliseconds see the same one. Compare what each did per second of its own CPU:
    its wall-clock time includes the turns of the others.
    """
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    for proc in procs[1:]:
        proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    turn = 0
    try:
        while True:
            alive = [proc for proc in procs if proc.poll() is None]
            if not alive:
                break
            if time.monotonic() > deadline:
                raise ChildError(f"timed out after {timeout:g} s: alternating children")
            current = alive[turn % len(alive)]
            current.send_signal(signal.SIGCONT)
            time.sleep(slice_s)
            if len(alive) > 1 and current.poll() is None:
                current.send_signal(signal.SIGSTOP)
            turn += 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    outputs = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate()
        if proc.returncode != 0:
            tail = (err or out).strip().splitlines()[-5:]
            raise ChildError(f"exit {proc.returncode}: {' '.join(cmd)}: " + " | ".join(tail))
        outputs.append(out)
    return outputs


def result_of(out: str, what: str) -> dict[str, Any]:
    """The RESULT dict a child printed on ``out``."""
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX):])
            return result
    raise ChildError(f"no result from child {what}: {out.strip()[-300:]}")


def parse_fields(text: str) -> dict[str, float]:
    """The ``key=value`` numbers of an anchor's output line (commas allowed, /s dropped)."""
    fields: dict[str, float] = {}
    for key, value in re.findall(r"(\w+)=([-\d.,]+|nan)", text):
        try:
            fields[key] = float(value.replace(",", ""))
        except ValueError:
            continue
    return fields


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
