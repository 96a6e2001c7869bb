"""Review reproducers for the run history (daemonapp.history, DESIGN §10).

Each test states what the contract wants; a failing one shows a bug.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from daemonapp.cli import main
from daemonapp.history import FILE, MAX_FLUSH_INTERVAL, RunHistory, read_history
from daemonapp.testing import FakeDaemon, make_app
from tests._apps import start_app

GOOD = '["d",[[1,2,"worked",1,"schedule",null]],100]\n'


# ---------------------------------------------------------------- hostile lines

HOSTILE = {
    # json accepts Infinity; int(inf) is an OverflowError, not a ValueError
    "infinite items": '["d",[[3,4,"worked",Infinity,"schedule",null]],100]\n',
    "1e400 items": '["d",[[3,4,"worked",1e400,"schedule",null]],100]\n',
    # a 401-digit int parses; float() of it is an OverflowError
    "huge start": '["d",[[1' + "0" * 400 + ',4,"worked",1,"schedule",null]],100]\n',
    # nesting deeper than the recursion limit: json raises RecursionError
    "deep line": "[" * 100_000 + "\n",
    "deep error": '["d",[[3,4,"failed",0,"schedule",' + "[" * 100_000 + "]" * 100_000
                  + "]],100]\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("size", [100, None])
def test_read_history_never_raises_on_a_hostile_line(tmp_path: Path, case: str,
                                                      size: int | None) -> None:
    """A damaged or hostile line is counted as bad; the good lines are kept."""
    path = tmp_path / FILE
    path.write_text(GOOD + HOSTILE[case])
    runs, bad, _count = read_history(str(path), size)
    assert bad >= 1
    assert [r.start for r in runs["d"]] == [1.0]


def test_cli_history_survives_a_hostile_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp history` prints the good runs (no traceback) whatever one line holds."""
    state = tmp_path / "var"
    state.mkdir(mode=0o700)
    (state / FILE).write_text(GOOD + HOSTILE["infinite items"])
    assert main(["history", "d", "--json", "--app", str(state)]) == 0
    assert [r["start"] for r in json.loads(capsys.readouterr().out)["runs"]] == [1.0]


def test_an_app_starts_on_a_hostile_history_and_keeps_the_good_runs(tmp_path: Path) -> None:
    """A restart on a state_dir whose history.jsonl holds a hostile line starts, runs the
    daemon, and keeps the earlier good runs (_load must not raise out of attach)."""
    (tmp_path / FILE).write_text(GOOD + HOSTILE["deep line"])
    daemon = FakeDaemon(run_every=10, name="d")
    app, clock = start_app(daemon, state_dir=str(tmp_path))
    clock.advance(0)
    assert daemon.stats["runs"] == 1
    assert app.run_history is not None
    assert [r.start for r in app.run_history.runs("d")] == [0.0, 1.0]


# ------------------------------------------------- a partial append (ENOSPC)


def short_fdopen(cut: Callable[[bytes], int]) -> Callable[..., Any]:
    """An os.fdopen whose file writes the first cut(data) bytes and then fails with
    ENOSPC, as write(2) does on a disk that fills up during the write."""

    class ShortFile:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def __enter__(self) -> ShortFile:
            return self

        def __exit__(self, *exc: object) -> None:
            os.close(self.fd)

        def write(self, text: str) -> int:
            data = text.encode()
            os.write(self.fd, data[:cut(data)])
            raise OSError(errno.ENOSPC, "No space left on device")

    return lambda fd, *args, **kw: ShortFile(fd)


def two_daemons_and_a_short_first_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        cut: Callable[[bytes], int]) -> None:
    """Daemons a and b run idle at 0; the write at 0 is cut short; the retry succeeds."""
    a = FakeDaemon(run_every=100, name="a")
    b = FakeDaemon(run_every=100, name="b")
    app, clock = start_app(a, b, state_dir=str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", short_fdopen(cut))
        clock.advance(0)  # both idle at 0: the write fails part way
    assert (tmp_path / FILE).exists()
    clock.advance(MAX_FLUSH_INTERVAL)  # the failure's own retry: it succeeds
    app.stop("test")


def test_a_write_cut_short_writes_no_run_twice(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed append that wrote a whole line before failing: the retry appends that
    line again, so after a restart the run is there twice."""
    two_daemons_and_a_short_first_write(tmp_path, monkeypatch, lambda data: data.index(b"\n") + 1)
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert bad == 0
    assert sorted((name, len(found)) for name, found in runs.items()) == [("a", 1), ("b", 1)]


def test_a_write_cut_short_loses_no_run(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed append that wrote half a line: the retry's first line is glued to that
    half, so both make one bad line and the run is gone after a restart."""
    two_daemons_and_a_short_first_write(tmp_path, monkeypatch, lambda data: data.index(b"\n") // 2)
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert sorted((name, len(found)) for name, found in runs.items()) == [("a", 1), ("b", 1)]
    assert bad == 0


# ------------------------------------------------ RunHistory without call_at


def test_without_call_at_each_run_is_written(tmp_path: Path) -> None:
    """RunHistory(call_at=None) writes at once on a mark. Used as Daemon._end does
    (mark when `new` is empty, then append), the run is appended after the write, and
    _flush_at is left set, so nothing is ever written."""
    now = [0.0]
    history = RunHistory(10, str(tmp_path), seconds=lambda: now[0])
    run_log = history.attach("d")
    for i in range(3):
        now[0] = 10.0 * i
        new = run_log.new  # as Daemon._end has it
        if not new:
            run_log.mark()
        new.append((now[0], now[0], "idle", 0, "schedule", None))
    runs, _, _ = read_history(str(tmp_path / FILE))
    assert [r.start for r in runs.get("d", ())] == [0.0, 10.0, 20.0]


# ------------------------------------------------------------- sanity checks


def test_restart_on_the_same_state_dir_keeps_each_run_once(tmp_path: Path) -> None:
    """Two lives with a failed write and its retry in each: every run once."""
    for start in (1000.0, 5000.0):
        clock = Clock()
        clock.advance(start)
        app, _ = make_app(clock, state_dir=str(tmp_path))
        daemon = FakeDaemon(run_every=10, name="d")
        app.add(daemon)
        app.startService()
        clock.advance(0)
        daemon.add_jobs("x")
        clock.advance(10)
        app.stop("test")
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert bad == 0
    starts = [r.start for r in runs["d"]]
    assert starts == sorted(set(starts))
