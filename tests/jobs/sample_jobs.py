"""@job functions the dispatcher tests run in real child processes."""

from __future__ import annotations

import os
import time
from typing import Any

from daemonapp.jobs import current_job, job, progress


@job("echo")
def echo(payload: dict[str, Any]) -> Any:
    """Return the payload; a trivial job."""
    return payload


@job("fail")
def fail(payload: dict[str, Any]) -> None:
    """Always raise."""
    raise ValueError(payload.get("message", "failing on purpose"))


@job("sleep")
def sleep(payload: dict[str, Any]) -> None:
    """Write our pid to payload["pidfile"] (when given), then sleep."""
    if "pidfile" in payload:
        _write(payload["pidfile"], str(os.getpid()))
    time.sleep(float(payload.get("seconds", 60)))


@job("crash_first")
def crash_first(payload: dict[str, Any]) -> None:
    """On attempt 1 write our pid and wait to be killed; later attempts succeed."""
    current = current_job()
    assert current is not None
    if current.attempt == 1:
        _write(payload["pidfile"], str(os.getpid()))
        time.sleep(60)
    _write(payload["donefile"], f"{current.id} {current.attempt}")


@job("hog")
def hog(payload: dict[str, Any]) -> None:
    """Allocate memory until the limit stops us."""
    hoard = []
    while True:
        hoard.append(bytearray(8 * 1024 * 1024))


@job("storm")
def storm(payload: dict[str, Any]) -> None:
    """Report progress 100,000 times."""
    count = int(payload.get("count", 100_000))
    for i in range(count):
        progress(i * 100.0 / count, f"step {i}")
    progress(100.0, "finished")


@job("storm_then_sleep")
def storm_then_sleep(payload: dict[str, Any]) -> None:
    """Report progress payload["count"] times, then sleep without reporting again."""
    count = int(payload.get("count", 100_000))
    for i in range(count):
        progress(i * 100.0 / count, f"step {i}")
    time.sleep(float(payload.get("seconds", 60)))


@job("record")
def record(payload: dict[str, Any]) -> None:
    """Append our job id to payload["file"] (O_APPEND: one line per run)."""
    current = current_job()
    assert current is not None
    fd = os.open(payload["file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{current.id}\n".encode())
    finally:
        os.close(fd)


@job("env")
def env(payload: dict[str, Any]) -> None:
    """Write the environment names we see to payload["file"]."""
    _write(payload["file"], "\n".join(sorted(os.environ)))


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


@job("whoami")
def whoami(payload: dict[str, Any]) -> dict[str, Any]:
    """Return current_job() and whether heavy modules were imported."""
    import sys

    current = current_job()
    assert current is not None
    return {"id": current.id, "kind": current.kind, "attempt": current.attempt,
            "token": current.token, "twisted": "twisted" in sys.modules}


@job("chatty")
def chatty(payload: dict[str, Any]) -> None:
    """Print a line on stdout and one on stderr."""
    import sys

    print("hello from the job", flush=True)
    print("warning from the job", file=sys.stderr, flush=True)


@job("effect")
def effect(payload: dict[str, Any]) -> None:
    """Attempt 1 writes its pid and hangs (to be killed); later attempts append
    "id attempt" to payload["log"]: the job's one visible effect."""
    current = current_job()
    assert current is not None
    if current.attempt == 1:
        _write(payload["pidfile"], str(os.getpid()))
        time.sleep(60)
    fd = os.open(payload["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{current.id} {current.attempt}\n".encode())
    finally:
        os.close(fd)


@job("pdeathsig")
def pdeathsig(payload: dict[str, Any]) -> int:
    """Return the parent-death signal the kernel holds for this process."""
    import ctypes

    value = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(value))  # PR_GET_PDEATHSIG
    return value.value


@job("rlimit_as")
def rlimit_as(payload: dict[str, Any]) -> list[int]:
    """Return this process's RLIMIT_AS (soft, hard)."""
    import resource

    return list(resource.getrlimit(resource.RLIMIT_AS))
