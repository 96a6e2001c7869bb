"""The pauses an operator gave (``daemonapp pause``), kept across restarts.

`PauseStore` keeps them in ``state_dir/pauses.json``; `PauseKeeper` gives them to the
scheduler (at start, at each pause and resume), writes them back, and ends those given
``--for`` with one timer. The scheduler decides what a pause means for a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from twisted.logger import Logger

from daemonapp.scheduler import Pause
from daemonapp.state_dir import write_private_file

__all__ = [
    "MAX_PAUSE_SECONDS",
    "MAX_REASON",
    "PauseKeeper",
    "PauseStore",
    "iso_time",
    "number",
    "pause_fields",
]

log = Logger(namespace="daemonapp.control")

#: The longest pause reason kept, in characters.
MAX_REASON = 500
#: The longest ``--for``: ten years.
MAX_PAUSE_SECONDS = 10 * 365 * 86400.0


def number(value: object) -> float | None:
    """``value`` as a finite float (None: not a number; a bool is none)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def iso_time(seconds: float) -> str:
    """Epoch ``seconds`` as an ISO 8601 UTC time, to the second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def pause_fields(pause: Pause | None) -> dict[str, Any]:
    """What `daemonapp status --json` shows of a daemon's pause."""
    if pause is None:
        return {"paused": False, "paused_since": None, "paused_until": None,
                "paused_reason": None}
    return {"paused": True, "paused_since": pause.since, "paused_until": pause.until,
            "paused_reason": pause.reason}


class PauseStore:
    """The pauses of an app, kept in ``state_dir/pauses.json`` (one small JSON file,
    written atomically, mode 0600), so that they survive a restart."""

    FILE = "pauses.json"
    #: A larger file is not read (a pause record is well under 1 KiB).
    MAX_BYTES = 4 * 1024 * 1024

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, self.FILE)

    def load(self) -> dict[str, Pause]:
        """The pauses kept (an unreadable file is logged and read as none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warn("cannot read {path} ({error}): no daemon starts paused",
                     path=self.path, error=e)
            return {}
        try:
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read(self.MAX_BYTES + 1)[:self.MAX_BYTES])
        except (OSError, ValueError, RecursionError) as e:
            log.warn("cannot read {path} ({error}): no daemon starts paused",
                     path=self.path, error=e)
            return {}
        pauses: dict[str, Pause] = {}
        if isinstance(data, dict):
            for name, record in data.items():
                pause = _pause_from_json(record)
                if isinstance(name, str) and pause is not None:
                    pauses[name] = pause
        return pauses

    def save(self, pauses: Mapping[str, Pause]) -> None:
        """Write ``pauses`` (atomically: a temp file renamed over the file)."""
        data = {name: dataclasses.asdict(pause) for name, pause in sorted(pauses.items())}
        write_private_file(self.path, json.dumps(data, indent=1), fsync=True)


def _pause_from_json(record: object) -> Pause | None:
    if not isinstance(record, dict):
        return None
    since = number(record.get("since"))
    until = record.get("until")
    reason = record.get("reason")
    if since is None or (until is not None and number(until) is None) \
            or (reason is not None and not isinstance(reason, str)):
        return None
    return Pause(since=since, until=None if until is None else number(until),
                 reason=None if reason is None else reason[:MAX_REASON])


class PauseKeeper:
    """The pauses of ``app``'s scheduler, kept in ``store`` (None: no state_dir, so a
    pause ends with the process) and ended at their ``--for`` by one timer."""

    def __init__(self, app: Any, store: PauseStore | None) -> None:
        self.app = app
        self.store = store
        self._expiry: Any = None
        self._running = False

    @property
    def _scheduler(self) -> Any:
        return self.app.scheduler

    def _seconds(self) -> float:
        return float(self.app.seconds())

    def start(self) -> None:
        """Pause the daemons paused in an earlier life (before they start)."""
        self._running = True
        if self.store is None:
            return
        now = self._seconds()
        pauses = self.store.load()
        ended = sorted(name for name, pause in pauses.items()
                       if pause.until is not None and pause.until <= now)
        for name in ended:
            del pauses[name]
            log.info("pause of daemon {daemon} ended while the app was down", daemon=name)
        for name, pause in sorted(pauses.items()):
            self._scheduler.pause(name, pause)
            log.info("daemon {daemon} stays paused (since {since}{reason})",
                     daemon=name, since=iso_time(pause.since),
                     reason=f": {pause.reason}" if pause.reason else "")
        if ended:
            self.save()
        self._arm_expiry()

    def stop(self) -> None:
        """Cancel the expiry timer (the pauses stay kept)."""
        self._running = False
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def pause(self, name: str, duration: float | None,
              reason: str | None) -> tuple[Pause, Pause | None, str | None]:
        """Pause the daemon ``name`` (for ``duration`` seconds; None: until resumed).

        Returns the pause, the one it replaces (a paused daemon keeps its start), and
        the words of a failure to keep it (None: kept)."""
        now = self._seconds()
        was = self._scheduler.pause_of(name)
        pause = Pause(since=was.since if was is not None else now,
                      until=None if duration is None else now + duration, reason=reason)
        self._scheduler.pause(name, pause)
        warning = self.save()
        self._arm_expiry()
        return pause, was, warning

    def resume(self, name: str) -> tuple[Pause | None, str | None]:
        """End the pause of ``name``: the pause it was (None: none), and the words of a
        failure to keep that (None: kept)."""
        pause = self._scheduler.resume(name)
        warning = self.save() if pause is not None else None
        self._arm_expiry()
        return pause, warning

    def save(self) -> str | None:
        """Keep the pauses in state_dir; the words of a failure (None: kept)."""
        if self.store is None:
            return "the app has no state_dir: the pause ends with the process"
        try:
            self.store.save(self._scheduler.pauses())
        except OSError as e:
            log.warn("cannot write {path}: {error}", path=self.store.path, error=e)
            return f"cannot write {self.store.path} ({e}): the pause ends with the process"
        return None

    def _arm_expiry(self) -> None:
        """One timer, for the earliest end of a pause given ``--for``."""
        ends = [pause.until for pause in self._scheduler.pauses().values()
                if pause.until is not None]
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if ends and self._running:
            delay = max(0.0, min(ends) - self._seconds())
            self._expiry = self.app.reactor.callLater(delay, self._pauses_expired)

    def _pauses_expired(self) -> None:
        self._expiry = None
        now = self._seconds()
        ended = sorted(name for name, pause in self._scheduler.pauses().items()
                       if pause.until is not None and pause.until <= now)
        for name in ended:
            self._scheduler.resume(name)
            log.info("pause of daemon {daemon} ended (--for)", daemon=name)
        if ended:
            self.save()
        self._arm_expiry()
