"""Tests for daemonapp.logs: formats, level filter, reopening, stdlib forwarding."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher

from daemonapp.logs import LogTarget, StdlibForwarder, make_observer
from tests._processes import DAEMONAPP, ROOT, run_process, write_cleanup_app


def event(text: str, level: LogLevel = LogLevel.info, **fields: Any) -> dict[str, Any]:
    return {"log_format": text, "log_level": level, "log_namespace": "test",
            "log_time": 1_700_000_000.0, **fields}


def test_text_format_writes_the_formatted_message() -> None:
    """The text observer writes one line with the formatted event."""
    stream = io.StringIO()
    observer, _ = make_observer(format="text", stream=stream)
    observer(event("daemon {name} ran", name="collective"))
    line = stream.getvalue()
    assert line.endswith(" [test#info] daemon collective ran\n")


def test_json_format_writes_one_object_per_line() -> None:
    """The json observer writes the event's fields as a JSON line."""
    stream = io.StringIO()
    observer, _ = make_observer(format="json", stream=stream)
    observer(event("daemon {name} ran", name="collective"))
    observer(event("daemon {name} ran again", name="collective"))
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # each line as it is: JSON lines
    assert (records[0]["name"], records[0]["log_format"]) == ("collective", "daemon {name} ran")
    assert len(records) == 2


def test_level_filter_drops_lower_levels() -> None:
    """With level warn, info events are dropped and errors kept."""
    stream = io.StringIO()
    observer, _ = make_observer(level="warn", stream=stream)
    observer(event("quiet"))
    observer(event("loud", LogLevel.error))
    assert "quiet" not in stream.getvalue()
    assert "loud" in stream.getvalue()


def test_bad_level_and_format_are_refused() -> None:
    """Unknown levels and formats are ValueErrors."""
    with pytest.raises(ValueError, match="log level"):
        make_observer(level="loud")
    with pytest.raises(ValueError, match="log format"):
        make_observer(format="xml")


def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    """After the file is moved away, reopen() writes to a new file at the path."""
    path = tmp_path / "app.log"
    target = LogTarget(file=str(path))
    target(event("before"))
    os.rename(path, tmp_path / "app.log.1")
    target.reopen()
    target(event("after"))
    target.close()
    assert "before" in (tmp_path / "app.log.1").read_text()
    assert "after" in path.read_text()
    assert "before" not in path.read_text()


def test_stdlib_records_are_forwarded() -> None:
    """A stdlib logging record reaches twisted.logger with its level and logger name."""
    seen: list[dict[str, Any]] = []
    forwarder = StdlibForwarder(Logger(namespace="stdlib", observer=LogPublisher(seen.append)))
    record = logging.LogRecord("daemonapp.locks", logging.WARNING, __file__, 1,
                               "highlander abort from %s", ("10.0.0.1",), None)
    forwarder.emit(record)
    (forwarded,) = seen
    assert forwarded["log_level"] == LogLevel.warn
    assert (forwarded["logger"], forwarded["text"]) == \
        ("daemonapp.locks", "highlander abort from 10.0.0.1")


@pytest.mark.integration
def test_json_log_lines(tmp_path: Path) -> None:
    """app.log.format json writes one JSON object per line."""
    cfg = write_cleanup_app(tmp_path, app="  shutdown_after: 0.5s\n"
                                          "  log: {format: json, level: info}\n")
    result = run_process([str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    lines = [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict)
