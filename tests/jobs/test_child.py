"""``python -m daemonapp.jobs.child``: one job in a real child process."""

from __future__ import annotations

import fcntl
import marshal
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.jobs._helpers import DRIVER, ROOT

pytestmark = pytest.mark.integration


def run_child(description: dict[str, Any], *, parent: int | None = None,
              memory_limit: int | None = None, raw: bytes | None = None) -> dict[str, Any]:
    """Run one child; its exit status, outcome (fd 3) and progress lines (fd 4)."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()

    def plumb() -> None:
        high3 = fcntl.fcntl(w3, fcntl.F_DUPFD, 10)
        high4 = fcntl.fcntl(w4, fcntl.F_DUPFD, 10)
        os.dup2(high3, 3)
        os.dup2(high4, 4)

    args = [sys.executable, "-m", "daemonapp.jobs.child",
            "--parent", str(os.getpid() if parent is None else parent)]
    if memory_limit:
        args += ["--memory-limit", str(memory_limit)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(DRIVER.parent)])}
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, pass_fds=(3, 4), close_fds=True,
                               # plumb() only dup2()s: no lock a thread could hold
                               preexec_fn=plumb)  # noqa: PLW1509
    os.close(w3)
    os.close(w4)
    try:
        _, stderr = process.communicate(
            marshal.dumps(description) if raw is None else raw, timeout=30)
        with os.fdopen(r3, "rb") as result, os.fdopen(r4, "rb") as progress:
            outcome = result.read()
            lines = progress.read().splitlines()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {"status": process.returncode,
            "outcome": marshal.loads(outcome) if outcome else None,
            "progress": lines, "stderr": stderr.decode(errors="replace")}


def job(kind: str, payload: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": 7, "kind": kind, "payload": payload or {}, "token": 99, "attempt": 2,
            "modules": ["sample_jobs"], **extra}


def test_result() -> None:
    """A job's return value comes back on fd 3 with status 0."""
    ran = run_child(job("echo", {"a": [1, 2]}))
    assert (ran["status"], ran["outcome"]) == (0, {"ok": True, "result": {"a": [1, 2]}})


def test_current_job_and_no_twisted() -> None:
    """current_job() gives id, kind, attempt and token; the child never imports Twisted."""
    ran = run_child(job("whoami"))
    assert ran["outcome"]["result"] == {"id": 7, "kind": "whoami", "attempt": 2, "token": 99,
                                        "twisted": False}


def test_exception_reported() -> None:
    """An exception comes back as its summary and traceback."""
    outcome = run_child(job("fail", {"message": "boom"}))["outcome"]
    assert (outcome["ok"], outcome["error"]) == (False, "ValueError: boom")
    assert outcome["traceback"].startswith("Traceback (most recent call last):")


def test_unknown_kind() -> None:
    """A kind without a handler fails, naming the kinds that are known."""
    outcome = run_child(job("nope"))["outcome"]
    assert outcome["ok"] is False
    assert outcome["error"].startswith("LookupError: no @job handler for kind 'nope'")


def test_missing_module() -> None:
    """A module that cannot be imported fails the attempt with the import error."""
    outcome = run_child(job("echo", modules=["no_such_module_xyz"]))["outcome"]
    assert outcome["error"] == "ModuleNotFoundError: No module named 'no_such_module_xyz'"


def test_orphan_exits() -> None:
    """A child whose parent is not the pid it was given exits 70 without running."""
    ran = run_child(job("echo"), parent=1)
    assert (ran["status"], ran["outcome"]) == (70, None)


def test_memory_limit() -> None:
    """RLIMIT_AS stops a hog with a MemoryError that names the limit."""
    outcome = run_child(job("hog"), memory_limit=150 * 1024 * 1024)["outcome"]
    assert outcome["error"] == (
        "MemoryError: the job exceeded its memory_limit of 157286400 bytes")


def test_progress_coalesced_last_value_sent() -> None:
    """100,000 progress calls become far fewer pipe writes, the last value always sent."""
    lines = run_child(job("storm", {"count": 100_000}))["progress"]
    assert 1 <= len(lines) < 10_000
    assert lines[-1] == b"100.0\tfinished"


def test_bad_description() -> None:
    """Bytes on stdin that are no job description exit 64 with an error outcome."""
    ran = run_child({}, raw=b"\x00garbage")
    assert ran["status"] == 64
    assert ran["outcome"]["error"].startswith("bad job description")


def test_parent_death_signal_set() -> None:
    """The child asked the kernel for SIGKILL (9) when its parent dies."""
    assert run_child(job("pdeathsig"))["outcome"]["result"] == 9


def test_rlimit_as_set() -> None:
    """--memory-limit sets RLIMIT_AS, soft and hard."""
    outcome = run_child(job("rlimit_as"), memory_limit=300 * 1024 * 1024)["outcome"]
    assert outcome["result"] == [314572800, 314572800]


def test_a_traceback_is_capped_at_64_kib_of_utf8() -> None:
    """Tracebacks are capped at 64 KiB (DESIGN §6) of UTF-8, not of characters: a
    message of 100,000 two-byte characters keeps its end, a character never cut."""
    from daemonapp.jobs._model import MAX_ERROR_BYTES, cap_error
    from daemonapp.jobs.child import MAX_TRACEBACK_BYTES, _format_failure

    message = "é" * 100_000
    summary, text = _format_failure(ValueError(message), None)
    capped = cap_error(text)
    assert capped is not None
    for cut, limit in ((text, MAX_TRACEBACK_BYTES), (capped, MAX_ERROR_BYTES)):
        assert len(cut.encode()) <= limit == 64 * 1024
        assert cut.startswith("...[cut]...\n") and cut.endswith("éé\n")
        assert len(cut.encode()) > limit - 16  # cut at the limit, not far below
    assert cap_error("short é") == "short é"
    assert summary.startswith("ValueError: éé")
