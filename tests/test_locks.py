"""Tests for daemonapp.locks: names, the flock backend and cgi_acquire (the async
adapter: tests/test_lock_provider.py)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from zope.interface.verify import verifyObject

from daemonapp.interfaces import ILockBackend
from daemonapp.locks import (
    FlockLock,
    HighlanderBusy,
    highlander,
    validate_lock_name,
)
from tests._processes import PYTHON, run_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOLDER = str(HERE / "lock_holder.py")
DEADLINE = 20.0


def _wait_for(predicate: object, timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    assert callable(predicate)
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.01)


def _lock_path(state_dir: Path, name: str) -> Path:
    return state_dir / "locks" / f"{name}.lock"


def _check_intervals(out: Path, expected_holds: int) -> None:
    """Assert the start/end lines in ``out`` never overlap and tokens strictly increase."""
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * expected_holds
    last_end = -1
    last_token = 0
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        kind_s, pid_s, token_s, ns_s = start.split()
        kind_e, pid_e, token_e, ns_e = end.split()
        assert (kind_s, kind_e) == ("start", "end")
        assert (pid_s, token_s) == (pid_e, token_e)
        assert int(ns_s) >= last_end
        assert int(token_s) > last_token
        last_end, last_token = int(ns_e), int(token_s)


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A9", "0.x_y-z", "nightly-report", "x..y"])
def test_valid_names_are_returned(name: str) -> None:
    """Names of letters, digits, '.', '_' and '-' starting with a letter or digit pass."""
    assert validate_lock_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "_x", "a/b", "../x", "a b", "caf\u00e9", "x\n", None, 5]
)
def test_invalid_names_raise_value_error(name: object) -> None:
    """Anything else is a ValueError that quotes the name."""
    with pytest.raises(ValueError, match="lock name"):
        validate_lock_name(name)


def test_highlander_rejects_bad_name(tmp_path: Path) -> None:
    """highlander() validates the name before touching the disk."""
    with pytest.raises(ValueError, match="'a/b'"):
        highlander("a/b", state_dir=tmp_path / "var")
    assert not (tmp_path / "var").exists()


# -- flock backend -------------------------------------------------------------------------


def test_flock_lock_provides_ilockbackend(tmp_path: Path) -> None:
    """The flock lock provides ILockBackend."""
    lock = highlander("x", state_dir=tmp_path)
    assert isinstance(lock, FlockLock)
    assert verifyObject(ILockBackend, lock)


def test_default_state_dir_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without state_dir the lock lives under $DAEMONAPP_STATE_DIR."""
    monkeypatch.setenv("DAEMONAPP_STATE_DIR", str(tmp_path / "state"))
    lock = highlander("x")
    assert isinstance(lock, FlockLock)
    assert lock.path == str(tmp_path / "state" / "locks" / "x.lock")


def test_default_state_dir_is_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without state_dir or the variable, the lock lives under ./var."""
    monkeypatch.delenv("DAEMONAPP_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    lock = highlander("x")
    assert isinstance(lock, FlockLock)
    assert lock.path == str(tmp_path / "var" / "locks" / "x.lock")


def test_acquire_creates_private_dirs_and_file(tmp_path: Path) -> None:
    """state_dir and locks/ are created 0700, the lock file 0600."""
    state_dir = tmp_path / "a" / "state"
    lock = highlander("job", state_dir=state_dir)
    assert lock.acquire(timeout=0) is True
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "locks").stat().st_mode) == 0o700
    assert stat.S_IMODE(_lock_path(state_dir, "job").stat().st_mode) == 0o600
    lock.release()


def test_construction_writes_nothing(tmp_path: Path) -> None:
    """Making a lock object creates nothing until the first acquire."""
    highlander("job", state_dir=tmp_path / "state")
    assert not (tmp_path / "state").exists()


def test_lock_file_is_never_unlinked(tmp_path: Path) -> None:
    """The lock file stays after release and close."""
    lock = highlander("job", state_dir=tmp_path)
    assert lock.acquire(timeout=0)
    lock.release()
    lock.close()
    assert _lock_path(tmp_path, "job").is_file()


def test_symlink_is_refused_with_the_path(tmp_path: Path) -> None:
    """A symlink at the lock path is an OSError naming the path; its target is untouched."""
    (tmp_path / "locks").mkdir()
    target = tmp_path / "target"
    link = _lock_path(tmp_path, "job")
    link.symlink_to(target)
    lock = highlander("job", state_dir=tmp_path)
    with pytest.raises(OSError, match=re.escape(str(link))):
        lock.acquire(timeout=0)
    assert not target.exists()
    assert lock.locked() is False


def test_second_object_is_excluded_until_release(tmp_path: Path) -> None:
    """A second lock object of the same name cannot take it while the first holds it."""
    first = highlander("job", state_dir=tmp_path)
    second = highlander("job", state_dir=tmp_path)
    assert first.acquire(timeout=0) is True
    assert second.acquire(timeout=0) is False
    first.release()
    assert second.acquire(timeout=0) is True
    assert first.acquire(timeout=0) is False
    second.release()


def test_lock_is_reusable_after_release(tmp_path: Path) -> None:
    """One object can acquire and release many times."""
    lock = highlander("job", state_dir=tmp_path)
    results = []
    for _ in range(3):
        results.append(lock.acquire(timeout=0))
        lock.release()
    assert results == [True, True, True]


def test_tokens_increase_across_holders_and_objects(tmp_path: Path) -> None:
    """The fencing token counts every hold of the name, by any object, and persists."""
    tokens = []
    for _ in range(2):
        for lock in (highlander("job", state_dir=tmp_path), highlander("job", state_dir=tmp_path)):
            assert lock.acquire(timeout=0)
            tokens.append(lock.token)
            lock.release()
    assert tokens == [1, 2, 3, 4]


def test_token_is_none_before_first_hold(tmp_path: Path) -> None:
    """A lock never held has no token."""
    assert highlander("job", state_dir=tmp_path).token is None


def test_release_of_unheld_lock_raises(tmp_path: Path) -> None:
    """Releasing a lock that is not held is a RuntimeError, as with threading.Lock."""
    with pytest.raises(RuntimeError, match="'job'"):
        highlander("job", state_dir=tmp_path).release()


def test_with_holds_and_releases(tmp_path: Path) -> None:
    """``with lock:`` holds the lock inside the block only."""
    lock = highlander("job", state_dir=tmp_path)
    other = highlander("job", state_dir=tmp_path)
    with lock:
        assert other.acquire(timeout=0) is False
    assert other.acquire(timeout=0) is True
    other.release()


def test_with_waits_ten_seconds_by_default(tmp_path: Path) -> None:
    """``with`` waits 10 seconds unless told otherwise."""
    assert highlander("job", state_dir=tmp_path).context_timeout == 10.0


def test_with_raises_highlander_busy(tmp_path: Path) -> None:
    """``with`` on a lock held elsewhere raises HighlanderBusy after its wait."""
    holder = highlander("job", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    lock = highlander("job", state_dir=tmp_path)
    lock.context_timeout = 0
    with pytest.raises(HighlanderBusy, match="'job'"), lock:
        pytest.fail("entered a busy lock")
    holder.release()


def test_threads_sharing_one_object_exclude_each_other(tmp_path: Path) -> None:
    """Like threading.Lock, one object shared by threads lets one thread in at a time."""
    lock = highlander("job", state_dir=tmp_path)
    held = threading.Event()
    done = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(DEADLINE)

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(DEADLINE)
    assert lock.acquire(timeout=0) is False
    done.set()
    thread.join(DEADLINE)
    assert lock.acquire(timeout=0) is True
    lock.release()


def test_replaced_lock_file_is_not_still_held(tmp_path: Path) -> None:
    """When someone removes the held file, still_held() says the hold no longer excludes."""
    lock = highlander("job", state_dir=tmp_path)
    assert lock.acquire(timeout=0)
    assert lock.still_held() is True
    _lock_path(tmp_path, "job").unlink()
    assert lock.still_held() is False
    lock.release()


@pytest.mark.integration
def test_acquire_timeout_returns_false(tmp_path: Path) -> None:
    """acquire(timeout) on a held lock gives up with False."""
    holder = highlander("job", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    assert highlander("job", state_dir=tmp_path).acquire(timeout=0.05) is False
    holder.release()


@pytest.mark.integration
def test_acquire_waits_for_release(tmp_path: Path) -> None:
    """acquire(timeout) returns True as soon as the holder releases within the timeout."""
    holder = highlander("job", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    timer = threading.Timer(0.05, holder.release)
    timer.start()
    waiter = highlander("job", state_dir=tmp_path)
    assert waiter.acquire(timeout=DEADLINE) is True
    timer.join()
    waiter.release()


@pytest.mark.integration
def test_flock_command_excludes_holders(tmp_path: Path) -> None:
    """While flock(1) holds the file, acquire fails; after it exits, acquire succeeds."""
    lock = highlander("job", state_dir=tmp_path)
    assert lock.acquire(timeout=0)  # creates the file
    lock.release()
    path = _lock_path(tmp_path, "job")
    proc = subprocess.Popen(["flock", str(path), "sh", "-c", "echo held; exec cat"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "held\n"
        assert lock.acquire(timeout=0) is False
        proc.stdin.close()
        assert proc.wait(DEADLINE) == 0
        assert lock.acquire(timeout=0) is True
        lock.release()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_holder_excludes_flock_command(tmp_path: Path) -> None:
    """While a holder has the lock, ``flock -n`` on the file fails."""
    lock = highlander("job", state_dir=tmp_path)
    assert lock.acquire(timeout=0)
    path = str(_lock_path(tmp_path, "job"))
    command = ["flock", "-n", path, "true"]
    assert subprocess.run(command, check=False, timeout=DEADLINE).returncode == 1
    lock.release()
    assert subprocess.run(command, check=False, timeout=DEADLINE).returncode == 0


@pytest.mark.integration
def test_processes_contending_never_overlap(tmp_path: Path) -> None:
    """Four processes taking the lock three times each never hold it at the same time."""
    out = tmp_path / "holds.txt"
    procs = [
        subprocess.Popen([sys.executable, HOLDER, "contend", "job", "--state-dir",
                          str(tmp_path), "--count", "3", "--out", str(out)])
        for _ in range(4)
    ]
    try:
        assert [proc.wait(60) for proc in procs] == [0, 0, 0, 0]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    _check_intervals(out, 12)
    assert _lock_path(tmp_path, "job").read_text().split()[0] == "12"


@pytest.mark.integration
def test_killed_holder_frees_the_lock_at_once(tmp_path: Path) -> None:
    """A SIGKILLed holder's flock is gone as soon as the process is."""
    proc = subprocess.Popen([sys.executable, HOLDER, "hold", "job", "--state-dir", str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split()[:2] == ["held", "1"]
        lock = highlander("job", state_dir=tmp_path)
        assert lock.acquire(timeout=0) is False
        proc.send_signal(signal.SIGKILL)
        proc.wait(DEADLINE)
        assert lock.acquire(timeout=0) is True
        assert lock.token == 2
        lock.release()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_blocking_api_imports_no_twisted(tmp_path: Path) -> None:
    """Importing daemonapp.locks and using cgi_acquire loads no Twisted module."""
    code = (
        "import sys\n"
        "from daemonapp.locks import highlander\n"
        f"lock = highlander('job', state_dir={str(tmp_path)!r})\n"
        "assert lock.cgi_acquire({'REMOTE_ADDR': '192.0.2.1'}) is None\n"
        "lock.release()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'psycopg')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=DEADLINE, check=True)
    assert result.stdout == "[]\n"


# -- cgi_acquire ---------------------------------------------------------------------------


def test_cgi_acquire_returns_none_when_free(tmp_path: Path) -> None:
    """cgi_acquire holds a free lock and returns None."""
    lock = highlander("job", state_dir=tmp_path)
    assert lock.cgi_acquire({"REMOTE_ADDR": "192.0.2.1"}, retries=0) is None
    assert lock.locked() is True
    lock.release()


def test_cgi_acquire_busy_returns_503_and_logs_remote_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A busy lock gives the 503 triple and logs "highlander abort" with REMOTE_HOST."""
    holder = highlander("job", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    lock = highlander("job", state_dir=tmp_path)
    environ = {"REMOTE_HOST": "client.example", "REMOTE_ADDR": "192.0.2.7"}
    with caplog.at_level(logging.WARNING, logger="daemonapp.locks"):
        answer = lock.cgi_acquire(environ, retries=0, delay=0)
    assert answer is not None
    status, headers, body = answer
    assert status == "503 Service Unavailable"
    assert headers == [("Retry-After", "30"), ("Content-Type", "text/plain")]
    assert b"retry" in body
    assert "highlander abort" in caplog.text
    assert "client.example" in caplog.text
    holder.release()


def test_cgi_acquire_logs_remote_addr_without_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without REMOTE_HOST the abort names REMOTE_ADDR."""
    holder = highlander("job", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    with caplog.at_level(logging.WARNING, logger="daemonapp.locks"):
        answer = highlander("job", state_dir=tmp_path).cgi_acquire(
            {"REMOTE_ADDR": "192.0.2.7"}, retries=0)
    assert answer is not None and answer[0] == "503 Service Unavailable"
    assert "highlander abort" in caplog.text
    assert "192.0.2.7" in caplog.text
    holder.release()


@pytest.mark.integration
def test_cgi_acquire_retries_until_release(tmp_path: Path) -> None:
    """cgi_acquire keeps trying for retries x delay and takes the lock once released."""
    holder = highlander("job", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    timer = threading.Timer(0.05, holder.release)
    timer.start()
    lock = highlander("job", state_dir=tmp_path)
    assert lock.cgi_acquire({"REMOTE_ADDR": "192.0.2.7"}, retries=200, delay=0.1) is None
    timer.join()
    lock.release()


def test_cgi_acquire_error_is_a_503(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A lock that cannot be taken at all (a symlink) answers 503 and logs the abort."""
    (tmp_path / "locks").mkdir()
    _lock_path(tmp_path, "job").symlink_to(tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING, logger="daemonapp.locks"):
        answer = highlander("job", state_dir=tmp_path).cgi_acquire({"REMOTE_ADDR": "192.0.2.9"})
    assert answer is not None and answer[0] == "503 Service Unavailable"
    assert "highlander abort" in caplog.text
    assert "192.0.2.9" in caplog.text


def test_cgi_acquire_database_down_is_a_503(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable PostgreSQL answers 503 rather than raising."""
    lock = highlander("job", url="postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with caplog.at_level(logging.WARNING, logger="daemonapp.locks"):
        answer = lock.cgi_acquire({"REMOTE_ADDR": "192.0.2.9"}, retries=0)
    assert answer is not None and answer[0] == "503 Service Unavailable"
    assert "highlander abort" in caplog.text


# ------------------------------------------------ DESIGN §5's exact rules, from outside


def two_locks(name: str, **where: Any) -> tuple[Any, Any]:
    """Two holders of the lock ``name`` (highlander(name, **where) twice)."""
    return highlander(name, **where), highlander(name, **where)


def test_highlander_acquire_timeout_zero(tmp_path: Path) -> None:
    """acquire(timeout=0) is one try: False at once while another holder has the lock."""
    a, b = two_locks("report", state_dir=tmp_path)
    assert a.acquire(timeout=0) is True
    started = time.monotonic()
    assert b.acquire(timeout=0) is False
    assert time.monotonic() - started < 1
    a.release()
    assert b.acquire(timeout=0) is True
    b.release()


def test_highlander_reusable_and_token_increases(tmp_path: Path) -> None:
    """A lock is reusable after release and its token strictly increases per name."""
    a, b = two_locks("tok", state_dir=tmp_path)
    tokens = []
    for lock in (a, b, a, a, b):
        assert lock.acquire(timeout=0)
        assert isinstance(lock.token, int)
        tokens.append(lock.token)
        lock.release()
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 5


def test_highlander_with_statement(tmp_path: Path) -> None:
    """`with lock:` holds the lock inside the block and releases it after."""
    a, b = two_locks("w", state_dir=tmp_path)
    with a:
        assert b.acquire(timeout=0) is False
    assert b.acquire(timeout=0) is True
    b.release()
    assert issubclass(HighlanderBusy, Exception)


def test_flock_file_path_and_modes(tmp_path: Path) -> None:
    """The flock file is state_dir/locks/NAME.lock, dirs 0700, never unlinked."""
    state = tmp_path / "state"
    lock = highlander("nightly.report_1", state_dir=state)
    assert lock.acquire(timeout=0)
    path = state / "locks" / "nightly.report_1.lock"
    assert path.is_file()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "locks").stat().st_mode) == 0o700
    lock.release()
    assert path.is_file()


def test_flock_symlink_refused(tmp_path: Path) -> None:
    """A symlink at the lock file's path is never followed: an error naming the path."""
    (tmp_path / "locks").mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    link = tmp_path / "locks" / "evil.lock"
    link.symlink_to(target)
    lock = highlander("evil", state_dir=tmp_path)
    with pytest.raises(OSError, match=r"evil\.lock"):
        lock.acquire(timeout=0)
    assert not target.exists()


def test_anyones_flock_excludes(tmp_path: Path) -> None:
    """flock on the lock file by anyone else excludes holders."""
    lock = highlander("shared", state_dir=tmp_path)
    assert lock.acquire(timeout=0)
    lock.release()
    fd = os.open(tmp_path / "locks" / "shared.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert lock.acquire(timeout=0) is False
    finally:
        os.close(fd)
    assert lock.acquire(timeout=0)
    lock.release()


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "a b", "../x", "é"])
def test_bad_lock_names_refused(tmp_path: Path, name: str) -> None:
    """Names must match [A-Za-z0-9][A-Za-z0-9._-]*."""
    with pytest.raises(ValueError):
        highlander(name, state_dir=tmp_path)


def test_cgi_acquire_busy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """cgi_acquire returns 503 + Retry-After: 30 + text/plain and logs "highlander abort"."""
    holder, waiter = two_locks("cgi", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    try:
        with caplog.at_level(logging.INFO):
            answer = waiter.cgi_acquire({"REMOTE_ADDR": "192.0.2.7"}, retries=1, delay=0.01)
    finally:
        holder.release()
    assert answer is not None
    status, headers, body = answer
    assert str(status).startswith("503")
    header_map = {k.lower(): v for k, v in headers}
    assert header_map["retry-after"] == "30"
    assert header_map["content-type"].startswith("text/plain")
    assert isinstance(body, bytes)
    messages = [r.getMessage() for r in caplog.records]
    assert any("highlander abort" in m and "192.0.2.7" in m for m in messages)


def test_cgi_acquire_prefers_remote_host(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """cgi_acquire logs REMOTE_HOST when it is set."""
    holder, waiter = two_locks("cgi2", state_dir=tmp_path)
    assert holder.acquire(timeout=0)
    try:
        with caplog.at_level(logging.INFO):
            waiter.cgi_acquire({"REMOTE_HOST": "client.example", "REMOTE_ADDR": "192.0.2.7"},
                               retries=0, delay=0)
    finally:
        holder.release()
    assert any("client.example" in r.getMessage() for r in caplog.records)


def test_cgi_acquire_free(tmp_path: Path) -> None:
    """cgi_acquire returns None once held."""
    lock = highlander("cgi3", state_dir=tmp_path)
    assert lock.cgi_acquire({}) is None
    lock.release()


@pytest.mark.integration
def test_locks_highlander_imports_no_twisted() -> None:
    """The CGI path of highlander locks imports no Twisted."""
    code = ("import sys\nfrom daemonapp.locks import highlander\n"
            "print('twisted' in sys.modules)\n")
    result = run_process([str(PYTHON), "-c", code], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_highlander_signature() -> None:
    """highlander(name, *, state_dir=None, url=None, ttl=30, holder=None)."""
    import inspect

    params = inspect.signature(highlander).parameters
    assert list(params) == ["name", "state_dir", "url", "ttl", "holder"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY
               for p in ("state_dir", "url", "ttl", "holder"))
    assert (params["state_dir"].default, params["url"].default, params["ttl"].default,
            params["holder"].default) == (None, None, 30, None)


def test_cgi_acquire_signature(tmp_path: Path) -> None:
    """cgi_acquire(environ, retries=10, delay=1)."""
    import inspect

    params = inspect.signature(highlander("sig", state_dir=tmp_path).cgi_acquire).parameters
    assert list(params) == ["environ", "retries", "delay"]
    assert (params["retries"].default, params["delay"].default) == (10, 1)


def test_acquire_timeout_waits_then_false(tmp_path: Path) -> None:
    """acquire(timeout=0.3) on a held lock returns False after about 0.3 s."""
    a, b = two_locks("t", state_dir=tmp_path)
    assert a.acquire(timeout=0)
    try:
        started = time.monotonic()
        assert b.acquire(timeout=0.3) is False
        assert 0.25 <= time.monotonic() - started < 3
    finally:
        a.release()


@pytest.mark.integration
def test_with_waits_10s_then_highlander_busy(tmp_path: Path) -> None:
    """`with lock:` waits 10 s, then raises HighlanderBusy."""
    a, b = two_locks("busy", state_dir=tmp_path)
    assert a.acquire(timeout=0)
    try:
        started = time.monotonic()
        with pytest.raises(HighlanderBusy), b:
            pass
        assert 9.5 <= time.monotonic() - started < 15
    finally:
        a.release()


def test_lock_token_survives_new_objects(tmp_path: Path) -> None:
    """The token strictly increases per name across new lock objects (persisted)."""
    first = highlander("persist", state_dir=tmp_path)
    assert first.acquire(timeout=0)
    t1 = first.token
    first.release()
    second = highlander("persist", state_dir=tmp_path)
    assert second.acquire(timeout=0)
    assert second.token is not None and t1 is not None and second.token > t1
    second.release()
