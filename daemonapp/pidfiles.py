"""The pid entries of state_dir and the zero-downtime takeover of `daemonapp run`.

One file per process in ``state_dir/pids/`` (never a shared pid file): a second run
of the same file finds the first one's entry, binds every socket, then asks it to
drain. Processes a web server spawned announce themselves too and are never taken
over.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from daemonapp.state_dir import ensure_private_subdir, write_private_file

__all__ = ["PIDS_DIR", "PidEntries", "take_over"]

PIDS_DIR = "pids"

log = Logger(namespace="daemonapp.cli")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""
    return data.rsplit(")", 1)[-1].split()[19]


class PidEntries:
    """One file per process in ``state_dir/pids/`` (never a shared pid file)."""

    def __init__(self, state_dir: str, config_path: str) -> None:
        self.directory = os.path.join(state_dir, PIDS_DIR)
        self.config_path = os.path.realpath(config_path)
        self.pid = os.getpid()
        self.path = os.path.join(self.directory, f"{self.pid}.json")

    def others(self) -> list[dict[str, Any]]:
        """Live processes of the same config, other than this one."""
        found = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    entry = json.loads(f.read(65536))
                pid = int(entry["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid == self.pid:
                continue
            started = _process_start(pid)
            if started is None or (started and started != entry.get("start")):
                try:
                    os.unlink(path)  # stale: that process is gone
                except OSError:
                    pass
                continue
            # Processes a web server spawned belong to it: never taken over.
            if entry.get("config") == self.config_path and not entry.get("spawned"):
                found.append(entry)
        return found

    def write(self, *, spawned: bool = False, tcp_ports: Iterable[int] = ()) -> None:
        """This process's entry; ``spawned`` marks one that a web server owns;
        ``tcp_ports``: those it listens on, which its successor may share (takeover)."""
        ensure_private_subdir(os.path.dirname(self.directory), PIDS_DIR)
        entry = {"pid": self.pid, "start": _process_start(self.pid) or "",
                 "config": self.config_path, "argv": sys.argv, "spawned": spawned,
                 "tcp_ports": sorted(tcp_ports)}
        write_private_file(self.path, json.dumps(entry))

    def tcp_ports(self) -> frozenset[int]:
        """The tcp ports the live processes of the same config listen on (their entries
        say; one of an earlier version, none)."""
        ports: set[int] = set()
        for entry in self.others():
            listed = entry.get("tcp_ports")
            if isinstance(listed, list):
                ports.update(p for p in listed if isinstance(p, int) and not isinstance(p, bool))
        return frozenset(ports)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def take_over(entries: PidEntries, listening: bool) -> list[int]:
    """Once every listener is bound (``listening``), tell the previous processes to
    drain (SIGTERM); returns the pids signalled.

    Called by the assembly's `when_listening` after the app started.
    """
    if not listening:
        log.error("the previous process keeps running")
        return []
    signalled = []
    for entry in entries.others():
        pid = int(entry["pid"])
        log.info("taking over from pid {pid}: asking it to drain", pid=pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            log.warn("could not signal pid {pid}: {error}", pid=pid, error=e)
            continue
        signalled.append(pid)
    return signalled
