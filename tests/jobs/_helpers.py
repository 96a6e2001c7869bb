"""Helpers for the job tests: bounded polling and a dispatcher in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("_driver.py")


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def read_pid(path: Path) -> int | None:
    """The pid a job wrote to ``path``, once it is there."""
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


class DispatcherProcess:
    """A DaemonApp with one JobDispatcher, run by tests/jobs/_driver.py."""

    def __init__(self, tmp_path: Path, store: str, *, name: str = "d", count: bool = False,
                 probe: bool = False, app: dict[str, Any] | None = None,
                 **options: Any) -> None:
        self.report_path = tmp_path / f"report-{name}.json"
        options.setdefault("modules", ["sample_jobs"])
        # Poll fast: the tests submit while the dispatcher idles.
        options.setdefault("run_every", 0.05)
        options.setdefault("maximum_idle", 0.2)
        config = {"store": store, "state_dir": str(tmp_path / "state"), "options": options,
                  "report": str(self.report_path), "count": count, "probe": probe,
                  "app": app or {}}
        config_path = tmp_path / f"driver-{name}.json"
        config_path.write_text(json.dumps(config))
        self.log_path = tmp_path / f"driver-{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(DRIVER.parent)])
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(DRIVER), str(config_path)], stdout=subprocess.PIPE,
            stderr=self.log, env=env, cwd=str(tmp_path))
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != b"ready":
            self.kill()
            raise AssertionError(f"the dispatcher did not start: {self.log_text()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM (graceful stop), wait for the exit, return the report."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the dispatcher did not stop: {self.log_text()}") from None
        self.log.close()
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if not self.log.closed:
            self.log.close()


class PipeNotifier:
    """A LISTEN notifier over a real pipe whose drain() answers from a script; like
    libpq, it closes its own fd when the connection breaks."""

    def __init__(self, results: list[Any]) -> None:
        self.read_end, self.write_end = os.pipe()
        self.results = results
        self.closed = False

    def fileno(self) -> int:
        return self.read_end

    def drain(self) -> bool:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            if self.read_end >= 0:
                os.close(self.read_end)
                self.read_end = -1
            raise result
        return bool(result)

    def close(self) -> None:
        self.closed = True
        for fd in (self.read_end, self.write_end):
            if fd >= 0:
                os.close(fd)
        self.read_end = self.write_end = -1


def stored_job(state_dir: Path, job_id: int) -> Any:
    """The record of ``job_id`` in the SQLite store under ``state_dir``, read by a new store."""
    from daemonapp.jobs import open_store

    own = open_store(str(state_dir))
    try:
        return own.get(job_id)
    finally:
        own.close()
