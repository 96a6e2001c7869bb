"""Tests for daemonapp.pidfiles: one pid entry per process in state_dir/pids/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemonapp.pidfiles import PidEntries
from tests._processes import (
    popen_run,
    signal_and_wait,
    stop_process,
    wait_catching,
    wait_ready,
    wait_until,
    write_scgi_app,
)


def test_pid_entries_ignore_dead_processes(tmp_path: Path) -> None:
    """An entry of a process that is gone is removed, not signalled."""
    entries = PidEntries(str(tmp_path), str(tmp_path / "daemons.yaml"))
    entries.write()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "pids" / f"{dead.pid}.json").write_text(json.dumps(
        {"pid": dead.pid, "start": "1", "config": entries.config_path}))
    assert entries.others() == []
    assert sorted(p.name for p in (tmp_path / "pids").iterdir()) == [f"{os.getpid()}.json"]
    entries.remove()
    assert list((tmp_path / "pids").iterdir()) == []


@pytest.fixture
def sibling(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Writes the pid entry of a live process (a sleeper) with the given extra keys."""
    from daemonapp.pidfiles import _process_start

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])

    def entry(config_path: str, **extra: object) -> int:
        (tmp_path / "pids").mkdir(exist_ok=True)
        (tmp_path / "pids" / f"{sleeper.pid}.json").write_text(json.dumps(
            {"pid": sleeper.pid, "start": _process_start(sleeper.pid),
             "config": config_path, **extra}))
        return sleeper.pid

    try:
        yield entry
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pid_entries_find_a_live_sibling(tmp_path: Path, sibling: Callable[..., int]) -> None:
    """A live process of the same config is found by the next one."""
    mine = PidEntries(str(tmp_path), str(tmp_path / "daemons.yaml"))
    pid = sibling(mine.config_path)
    assert [entry["pid"] for entry in mine.others()] == [pid]


def test_pid_entries_of_spawned_processes_are_never_taken_over(
        tmp_path: Path, sibling: Callable[..., int]) -> None:
    """An entry marked spawned (a web server owns that process) is not a sibling to stop."""
    mine = PidEntries(str(tmp_path), str(tmp_path / "daemons.yaml"))
    pid = sibling(mine.config_path, spawned=True)
    assert mine.others() == []
    assert (tmp_path / "pids" / f"{pid}.json").exists()  # live: kept
    mine.write(spawned=True)
    entry = json.loads((tmp_path / "pids" / f"{os.getpid()}.json").read_text())
    assert (entry["pid"], entry["spawned"]) == (os.getpid(), True)


# ----------------------------------------------- a takeover through `daemonapp run`


@pytest.mark.integration
def test_second_run_takes_over(tmp_path: Path) -> None:
    """A second `daemonapp run` of the same config takes over; the old one exits 0."""
    cfg = write_scgi_app(tmp_path)
    sock = tmp_path / "run" / "app.sock"
    old = popen_run(tmp_path, cfg)
    new: subprocess.Popen[str] | None = None
    try:
        assert wait_ready(old, sock)
        assert old.poll() is None
        assert wait_catching(old, signal.SIGHUP)  # its handlers are in: a SIGTERM drains it
        new = popen_run(tmp_path, cfg)
        assert wait_until(lambda: old.poll() is not None, timeout=20)
        assert old.returncode == 0
        assert new.poll() is None
        assert sock.exists()
        assert signal_and_wait(new, signal.SIGTERM, timeout=15)
        assert new.returncode == 0
    finally:
        stop_process(old)
        if new is not None:
            stop_process(new)


def test_the_tcp_ports_of_a_previous_process_are_those_its_entry_lists(
        tmp_path: Path, sibling: Callable[..., int]) -> None:
    """A successor shares only the tcp ports its predecessor's entry lists (none for an
    entry of an earlier version, or of a web server's process)."""
    entries = PidEntries(str(tmp_path), str(tmp_path / "daemons.yaml"))
    sibling(entries.config_path, tcp_ports=[8080, 8443])
    assert entries.tcp_ports() == {8080, 8443}
    sibling(entries.config_path)
    assert entries.tcp_ports() == frozenset()
    sibling(entries.config_path, tcp_ports=[8080], spawned=True)
    assert entries.tcp_ports() == frozenset()
    entries.write(tcp_ports=[9000])
    written = json.loads((tmp_path / "pids" / f"{os.getpid()}.json").read_text())
    assert written["tcp_ports"] == [9000]
    entries.remove()
