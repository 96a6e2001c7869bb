"""Several processes (DESIGN §11) for real: `daemonapp run` with app.processes behind nginx.

Each test starts `daemonapp run` on a unix socket with real nginx in front (FastCGI,
keep-alive), drives requests through nginx and watches the processes with bounded polls.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemonapp.status import fetch_status
from tests._processes import (
    DAEMONAPP,
    child_env,
    pid_alive,
    popen_run_logged,
    running,
    wait_until,
    write_file,
)
from tests.listeners.test_integration import Nginx, _need

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


PID_NATIVE = "native: tests.listeners.workers_apps:pid_native"


def _config(root: Path, *, processes: int, app: str = PID_NATIVE, extra: str = "",
            listener_extra: str = "", daemons: str = "", protocol: str = "fastcgi") -> Path:
    return write_file(root / "d.yaml", f"""\
app:
  state_dir: ./var
  processes: {processes}
  stop_timeout: 10s
{extra}listeners:
  - protocol: {protocol}
    endpoint: unix:./run/app.sock
    {app}
{listener_extra}{daemons}""")


def _status(root: Path) -> dict[str, Any]:
    try:
        return fetch_status(str(root / "var"))
    except (OSError, ValueError):
        return {}


def _serving(root: Path, count: int) -> bool:
    """True once ``count`` processes serve (the supervisor's status says so)."""
    processes = _status(root).get("processes") or []
    serving = [p for p in processes if p.get("state") in ("running", "serving")]
    return len(serving) >= count


def _worker_pids(supervisor: int) -> list[int]:
    """The live children of ``supervisor`` that are workers."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == supervisor and b"daemonapp.workers" in cmdline \
                and fields[0] != "Z":
            found.append(int(name))
    return found


class Load:
    """Threads sending GET / through nginx, each answer recorded with its time."""

    def __init__(self, nginx: Nginx, threads: int = 4) -> None:
        self.nginx = nginx
        self.results: list[tuple[float, int | str, bytes]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, body = self.nginx.request("GET", "/")
                self.results.append((time.monotonic(), status, body))
            except Exception as e:
                self.results.append((time.monotonic(), repr(e), b""))

    def wait_for(self, count: int) -> bool:
        start = len(self.results)
        return wait_until(lambda: len(self.results) >= start + count, timeout=TIMEOUT,
                          interval=0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)

    def failures(self, after: float = 0.0) -> list[tuple[float, int | str, bytes]]:
        return [r for r in self.results if r[0] >= after and r[1] != 200]

    def pids(self, after: float = 0.0) -> set[int]:
        return {int(r[2]) for r in self.results if r[0] >= after and r[1] == 200}


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    _need("nginx", "nginx")
    server = Nginx(tmp_path, tmp_path / "run" / "app.sock")
    yield server
    server.stop()


def _start(root: Path, cfg: Path, processes: int) -> subprocess.Popen[str]:
    proc = popen_run_logged(root, cfg)
    if not wait_until(lambda: _serving(root, processes) or proc.poll() is not None,
                      timeout=TIMEOUT) or proc.poll() is not None:
        proc.kill()
        raise AssertionError((root / "app.log").read_text())
    return proc


def test_three_processes_answer(tmp_path: Path, nginx: Nginx) -> None:
    """processes: 3 binds once and answers from three pids; status lists them all and sums
    their requests."""
    cfg = _config(tmp_path, processes=3)
    with running(_start(tmp_path, cfg, 3)) as proc:
        load = Load(nginx)
        try:
            assert wait_until(lambda: len(load.pids()) == 3, timeout=TIMEOUT)
        finally:
            load.stop()
        assert load.failures() == []
        assert proc.pid in load.pids()
        assert load.pids() - {proc.pid} == set(_worker_pids(proc.pid))
        assert wait_until(lambda: _status(tmp_path)["listeners"][0]["requests"]
                          == len(load.results), timeout=5)
        processes = _status(tmp_path)["processes"]
        assert [p["role"] for p in processes] == ["supervisor", "worker", "worker"]
        assert {p["pid"] for p in processes} == load.pids()
        assert sum(p["requests"] for p in processes) == len(load.results)
        text = subprocess.run([str(DAEMONAPP), "status", "var"], cwd=tmp_path,
                              env=child_env(), capture_output=True, text=True,
                              timeout=TIMEOUT, check=True).stdout
        assert "processes (3)" in text


def test_sigterm_ends_every_process(tmp_path: Path, nginx: Nginx) -> None:
    """SIGTERM drains every process: all gone, exit status 0, the socket path removed."""
    cfg = _config(tmp_path, processes=3)
    proc = _start(tmp_path, cfg, 3)
    with running(proc):
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2
        assert nginx.request("GET", "/")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert wait_until(lambda: not any(pid_alive(pid) for pid in workers), timeout=5)
        assert not (tmp_path / "run" / "app.sock").exists()


def test_a_killed_supervisor_takes_its_workers_along(tmp_path: Path, nginx: Nginx) -> None:
    """SIGKILL of the first process: its workers drain and exit within a few seconds."""
    cfg = _config(tmp_path, processes=3)
    proc = _start(tmp_path, cfg, 3)
    with running(proc):
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in workers), timeout=5)


def test_an_abandoned_stop_kills_a_worker_still_running(tmp_path: Path) -> None:
    """A worker that cannot drain (stopped by SIGSTOP) when the supervisor's stop_timeout
    passes is killed: the app exits 1 (abandoned) and takes it along."""
    cfg = write_file(tmp_path / "d.yaml", f"""\
app:
  state_dir: ./var
  processes: 2
  stop_timeout: 1s
listeners:
  - protocol: fastcgi
    endpoint: unix:./run/app.sock
    {PID_NATIVE}
""")
    proc = _start(tmp_path, cfg, 2)
    with running(proc):
        [worker] = _worker_pids(proc.pid)
        os.kill(worker, signal.SIGSTOP)
        try:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=TIMEOUT) == 1
            assert wait_until(lambda: not pid_alive(worker), timeout=5), \
                (tmp_path / "app.log").read_text()
            assert f"killing 1 worker(s) still running: {worker}" in \
                (tmp_path / "app.log").read_text()
        finally:
            if pid_alive(worker):
                os.kill(worker, signal.SIGKILL)


def test_a_lock_daemon_runs_once(tmp_path: Path, nginx: Nginx) -> None:
    """A lock: daemon runs in the supervisor only, whatever the number of processes."""
    runs = tmp_path / "runs"
    cfg = _config(tmp_path, processes=3, daemons=f"""\
daemons:
  recorder:
    type: tests.listeners.workers_apps:PidRecorder
    lock: recorder
    path: {runs}
""")
    with running(_start(tmp_path, cfg, 3)) as proc:
        assert wait_until(lambda: runs.exists() and len(runs.read_text().split()) >= 10,
                          timeout=TIMEOUT)
        assert set(runs.read_text().split()) == {str(proc.pid)}
        assert [d["name"] for d in _status(tmp_path)["daemons"]] == ["recorder"]


def test_a_killed_worker_is_replaced_under_load(tmp_path: Path, nginx: Nginx) -> None:
    """SIGKILL of a worker while requests flow: it is restarted, and after the first
    second no request fails."""
    cfg = _config(tmp_path, processes=3)
    with running(_start(tmp_path, cfg, 3)) as proc:
        load = Load(nginx)
        try:
            assert load.wait_for(50)
            victim = _worker_pids(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            assert wait_until(lambda: len([p for p in _worker_pids(proc.pid)
                                           if p != victim]) == 2, timeout=TIMEOUT)
            replacement = (set(_worker_pids(proc.pid)) - {victim}).pop()
            assert wait_until(lambda: replacement in load.pids(), timeout=TIMEOUT)
            assert load.wait_for(200)
        finally:
            load.stop()
        assert load.failures(after=killed_at + 1.0) == []
        assert "died (signal 9)" in (tmp_path / "app.log").read_text()


def test_max_requests_recycles_one_at_a_time(tmp_path: Path, nginx: Nginx) -> None:
    """max_requests under load: processes are replaced one at a time, no request fails
    (no 502), and the daemons' process stays."""
    cfg = _config(tmp_path, processes=2, listener_extra="    max_requests: 60\n")
    with running(_start(tmp_path, cfg, 2)) as proc:
        load = Load(nginx)
        try:
            assert wait_until(lambda: len(load.pids()) >= 5, timeout=60)
            assert load.wait_for(50)
        finally:
            load.stop()
        assert load.failures() == []
        assert proc.poll() is None
        status = _status(tmp_path)
        assert status["pid"] == proc.pid
        assert len(status["processes"]) >= 2
        assert "reached max_requests" in (tmp_path / "app.log").read_text()


def test_takeover_of_two_processes_under_load(tmp_path: Path, nginx: Nginx) -> None:
    """A second `daemonapp run` of a processes: 2 app takes over under load: the old
    processes all drain and exit 0, the new ones answer, no request gets a non-2xx."""
    cfg = _config(tmp_path, processes=2)
    old = _start(tmp_path, cfg, 2)
    with running(old):
        old_workers = _worker_pids(old.pid)
        load = Load(nginx)
        try:
            # each process answers (which one accepts a connection is the kernel's race:
            # a count of requests alone may all go to one)
            assert wait_until(lambda: {old.pid, *old_workers} <= load.pids(),
                              timeout=TIMEOUT)
            assert load.wait_for(100)
            with open(tmp_path / "new.log", "w") as log_file:
                new = subprocess.Popen([str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path,
                                       env=child_env(tmp_path), stdout=log_file,
                                       stderr=subprocess.STDOUT, text=True)
            with running(new):
                assert old.wait(timeout=TIMEOUT) == 0
                assert wait_until(lambda: not any(pid_alive(p) for p in old_workers),
                                  timeout=TIMEOUT)
                assert wait_until(lambda: _serving(tmp_path, 2), timeout=TIMEOUT)
                new_workers = _worker_pids(new.pid)
                assert wait_until(lambda: {new.pid, *new_workers} <= load.pids(),
                                  timeout=TIMEOUT)
                assert load.wait_for(100)
                load.stop()
                new.send_signal(signal.SIGTERM)
                assert new.wait(timeout=TIMEOUT) == 0
        finally:
            load.stop()
    assert load.failures() == []
    assert {old.pid, *old_workers} <= load.pids()


def test_processes_with_fd0_is_a_config_error(tmp_path: Path) -> None:
    """processes > 1 where the web server owns the processes (fd 0) is refused at check."""
    cfg = write_file(tmp_path / "d.yaml", """\
app:
  state_dir: ./var
  processes: 2
listeners:
  - protocol: fastcgi
    native: tests.listeners.workers_apps:pid_native
""")
    result = subprocess.run([str(DAEMONAPP), "check", str(cfg)], cwd=tmp_path,
                            env=child_env(), capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode == 2
    assert f"{cfg}:3: app.processes: processes: 2 cannot serve the fd 0" in result.stderr


def test_status_json_lists_processes(tmp_path: Path, nginx: Nginx) -> None:
    """`daemonapp status --json` has a processes list with pid, role, requests, state."""
    cfg = _config(tmp_path, processes=2)
    with running(_start(tmp_path, cfg, 2)):
        out = subprocess.run([str(DAEMONAPP), "status", "--json", "var"], cwd=tmp_path,
                             env=child_env(), capture_output=True, text=True,
                             timeout=TIMEOUT, check=True).stdout
        processes = json.loads(out)["processes"]
        assert {"pid", "role", "requests", "state"} <= set(processes[1])


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.unix_path)


def _pid_over(path: Path) -> int | None:
    """GET / over the unix socket ``path`` on a fresh connection: the pid that answered
    (None: no answer)."""
    conn = _UnixHTTPConnection(path)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
        return int(body) if response.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def _pids_over(path: Path, wanted: set[int], threads: int = 4) -> set[int]:
    """Pids answering on ``path`` (fresh connections from ``threads`` threads at once)
    until every pid of ``wanted`` answered or TIMEOUT passed."""
    seen: set[int] = set()
    deadline = time.monotonic() + TIMEOUT

    def ask() -> None:
        while not wanted <= seen and time.monotonic() < deadline:
            pid = _pid_over(path)
            if pid is not None:
                seen.add(pid)

    askers = [threading.Thread(target=ask, daemon=True) for _ in range(threads)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(timeout=TIMEOUT + 5)
    return seen


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {key.decode(): value.decode() for key, value in pairs}


def test_systemd_socket_activation_with_two_processes(tmp_path: Path) -> None:
    """A socket passed as systemd does (fd 3, LISTEN_FDS, LISTEN_PID) is served by two
    processes, the supervisor and a worker; systemd's variables stay the supervisor's."""
    path = tmp_path / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(64)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    cfg = write_file(tmp_path / "d.yaml", """\
app:
  state_dir: ./var
  processes: 2
listeners:
  - protocol: http
    endpoint: 'systemd:domain=UNIX:index=0'
    native: tests.listeners.workers_apps:pid_native
""")
    env = child_env(LISTEN_FDS="1", LISTEN_FDNAMES="web",
                    NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    fd = listening.fileno()
    # As systemd does: the socket is fd 3 and LISTEN_PID the pid that execs the app.
    exec_as_systemd = (
        "import os, sys; "
        f"os.dup2({fd}, 3); os.close({fd}); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        f"os.execv({str(DAEMONAPP)!r}, [{str(DAEMONAPP)!r}, 'run', {str(cfg)!r}])")
    with open(tmp_path / "app.log", "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", exec_as_systemd], cwd=tmp_path,
                                env=env, pass_fds=(fd,), stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)
    listening.close()  # the app holds it now
    try:
        with running(proc):
            assert wait_until(lambda: _serving(tmp_path, 2) or proc.poll() is not None,
                              timeout=TIMEOUT), (tmp_path / "app.log").read_text()
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            workers = _worker_pids(proc.pid)
            assert len(workers) == 1
            assert _pids_over(path, {proc.pid, *workers}) == {proc.pid, *workers}
            assert _environ(proc.pid)["LISTEN_FDS"] == "1"
            worker_env = _environ(workers[0])
            assert [name for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                                      "NOTIFY_SOCKET") if name in worker_env] == []
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=TIMEOUT) == 0
            assert wait_until(lambda: not pid_alive(workers[0]), timeout=5)
    finally:
        notify.close()


def _answered_in(path: Path, pid: int, *, json_lines: bool = False) -> bool:
    """Whether the log file ``path`` holds pid_logged's line for ``pid`` (as JSON)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    if not json_lines:
        return f"answered by {pid}" in text
    for line in text.splitlines():
        try:
            event = json.loads(line.lstrip("\x1e"))
        except ValueError:
            continue
        if event.get("log_format") == "answered by {pid}" and event.get("pid") == pid:
            return True
    return False


def test_log_reopen_and_reload_reach_the_workers(tmp_path: Path) -> None:
    """SIGHUP to the supervisor after logrotate moved the file: a worker writes to the new
    file; a reload that changes app.log.format: the worker writes JSON lines."""
    def config(fmt: str) -> Path:
        return _config(tmp_path, processes=2, app="native: "
                       "tests.listeners.workers_apps:pid_logged",
                       extra=f"  log: {{file: ./daemonapp.log, format: {fmt}}}\n",
                       protocol="http")
    cfg = config("text")
    log_file = tmp_path / "daemonapp.log"
    sock = tmp_path / "run" / "app.sock"
    with running(_start(tmp_path, cfg, 2)) as proc:
        worker = _worker_pids(proc.pid)[0]
        assert wait_until(lambda: _pid_over(sock) == worker and _answered_in(log_file, worker),
                          timeout=TIMEOUT, interval=0.01)
        log_file.rename(tmp_path / "daemonapp.log.1")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: _pid_over(sock) == worker and _answered_in(log_file, worker),
                          timeout=TIMEOUT, interval=0.01)
        config("json")
        subprocess.run([str(DAEMONAPP), "reload", "--app", "var"], cwd=tmp_path,
                       env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
                       check=True)
        assert wait_until(lambda: _pid_over(sock) == worker
                          and _answered_in(log_file, worker, json_lines=True),
                          timeout=TIMEOUT, interval=0.01)
