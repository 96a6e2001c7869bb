"""The run history (DESIGN §10): the last app.history runs of each daemon, bounded
whatever the rate, kept in state_dir across restarts; ``daemonapp history``."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from daemonapp.app import DaemonApp
from daemonapp.cli import main
from daemonapp.history import DEFAULT_SIZE, FILE, MAX_FLUSH_INTERVAL, Run, read_history
from daemonapp.testing import FakeDaemon, make_app
from tests._apps import start_app

ROOT = Path(__file__).resolve().parent.parent


def run_once(daemon: FakeDaemon, clock: Clock, *jobs: Any) -> None:
    daemon.add_jobs(*jobs)
    clock.advance(daemon.stats["next_run_at"] - clock.seconds())


def lines_of(state_dir: Path) -> list[list[Any]]:
    """The runs in the history file, in its order, each as [name, *fields]."""
    path = state_dir / FILE
    if not path.exists():
        return []
    return [[name, *run] for line in path.read_text().splitlines()
            for name, runs, _kept in [json.loads(line)] for run in runs]


def test_a_run_is_recorded_with_its_facts() -> None:
    """Each run keeps start, end, outcome, items, trigger and error summary."""
    daemon = FakeDaemon(run_every=10, increase_idle_by=5, name="d")
    app, clock = start_app(daemon)
    clock.advance(0)  # idle at 0
    run_once(daemon, clock, "a", "b")  # worked at 15
    run_once(daemon, clock, RuntimeError("boom"))  # failed at 25
    assert app.run_history is not None
    assert app.run_history.runs("d") == [
        Run(25.0, 25.0, "failed", 0, "schedule", "do_work: RuntimeError: boom"),
        Run(15.0, 15.0, "worked", 2, "backoff", None),
        Run(0.0, 0.0, "idle", 0, "schedule", None),
    ]


def test_history_keeps_the_last_n_runs() -> None:
    """With history 5, twelve runs leave the last five, newest first."""
    daemon = FakeDaemon(run_every=10, name="d")
    app, clock = start_app(daemon, history=5)
    clock.advance(0)
    for i in range(11):
        run_once(daemon, clock, f"job{i}")
    assert app.run_history is not None
    runs = app.run_history.runs("d")
    assert [r.start for r in runs] == [110.0, 100.0, 90.0, 80.0, 70.0]
    assert app.run_history.runs("d", limit=2) == runs[:2]


def test_history_zero_keeps_none() -> None:
    """history 0: no run history at all."""
    daemon = FakeDaemon(["a"], run_every=10)
    app, clock = start_app(daemon, history=0)
    clock.advance(0)
    assert app.run_history is None
    assert daemon.stats["runs"] == 1


def test_a_yielding_daemon_is_bounded_in_memory_and_on_disk(tmp_path: Path) -> None:
    """Thousands of runs in one second keep `history` runs in memory and write at most
    that many lines per write."""
    daemon = FakeDaemon(["x"] * 5000, run_every=1, max_items=1, name="busy")
    app, clock = start_app(daemon, history=50, state_dir=str(tmp_path))
    clock.advance(0)
    assert daemon.stats["runs"] >= 5000
    assert app.run_history is not None
    assert len(app.run_history.logs["busy"]) == 50
    written = lines_of(tmp_path)
    assert 0 < len(written) <= 50  # 5,000 runs in one write: the last 50
    assert written[-1][3] == "idle"  # the last run: get_work found nothing
    assert len((tmp_path / FILE).read_text().splitlines()) == 1  # one line per write
    daemon.add_jobs(*["x"] * 5000)
    clock.advance(1)
    assert len(lines_of(tmp_path)) <= 100


def test_the_file_stays_bounded_over_many_writes(tmp_path: Path) -> None:
    """Written once a second for hours, the file holds at most about three times the
    history."""
    daemon = FakeDaemon(run_every=1, name="d")
    _app, clock = start_app(daemon, history=10, state_dir=str(tmp_path))
    clock.advance(0)
    for _ in range(3000):
        run_once(daemon, clock, "x")
    assert len(lines_of(tmp_path)) <= 3 * 10 + 1000 + 1
    runs, bad, _ = read_history(str(tmp_path / FILE), 10)
    assert bad == 0
    assert len(runs["d"]) == 10


def test_flushes_arm_no_timer_of_their_own(tmp_path: Path) -> None:
    """The history's writes go through the scheduler's one timer."""
    daemons = [FakeDaemon(["a"] * 3, run_every=5 + i, name=f"d{i}") for i in range(20)]
    _app, clock = start_app(*daemons, state_dir=str(tmp_path))
    clock.advance(0)
    for _ in range(20):
        assert len(clock.getDelayedCalls()) == 1
        clock.advance(0.5)


def test_a_failed_write_is_tried_again_without_new_runs(tmp_path: Path) -> None:
    """Runs a write could not store wait in memory and go out with a later write,
    arranged by the failure itself (the daemons may not run again for hours); none is
    written twice."""
    (tmp_path / FILE).mkdir()  # the file cannot be opened for writing
    busy = FakeDaemon(run_every=100, name="busy")
    quiet = FakeDaemon(run_every=100, name="quiet")
    app, clock = start_app(busy, quiet, state_dir=str(tmp_path))
    clock.advance(0)  # both idle at 0; the first write fails
    run_once(busy, clock, "a")  # at 100, both
    assert app.run_history is not None
    assert (tmp_path / FILE).is_dir()
    (tmp_path / FILE).rmdir()
    clock.advance(MAX_FLUSH_INTERVAL)  # no run since: the failure's own retry
    assert sorted((name, start) for name, start, *_ in lines_of(tmp_path)) == [
        ("busy", 0.0), ("busy", 100.0), ("quiet", 0.0), ("quiet", 100.0)]
    assert len(app.run_history.logs["busy"]) == 2
    run_once(busy, clock, "b")  # at 200: the next write holds only the new runs
    clock.advance(MAX_FLUSH_INTERVAL)
    assert [start for name, start, *_ in lines_of(tmp_path) if name == "busy"] == [
        0.0, 100.0, 200.0]


def life(state_dir: Path, start: float, runs: int) -> DaemonApp:
    """One life of an app on state_dir: ``runs`` runs of daemon "d", then a stop."""
    clock = Clock()
    clock.advance(start)
    app, _ = make_app(clock, state_dir=str(state_dir))
    daemon = FakeDaemon(run_every=10, name="d")
    app.add(daemon)
    app.startService()
    clock.advance(0)
    for _ in range(runs):
        run_once(daemon, clock, "x")
    app.stop("test")
    return app


def test_history_survives_a_restart(tmp_path: Path) -> None:
    """The runs of an earlier life are there after a restart, followed by the new ones."""
    life(tmp_path, 1000.0, 2)
    second = life(tmp_path, 5000.0, 1)
    assert second.run_history is not None
    assert [r.start for r in second.run_history.runs("d")] == [
        5010.0, 5000.0, 1020.0, 1010.0, 1000.0]


def test_cli_history_reads_the_state_dir(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp history NAME --app STATE_DIR --json` prints the runs newest first;
    an unknown daemon exits 1."""
    life(tmp_path, 1000.0, 2)
    assert main(["history", "d", "--app", str(tmp_path), "--json", "--limit", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["daemon"] == "d"
    assert [(r["start"], r["outcome"], r["items"]) for r in printed["runs"]] == [
        (1020.0, "worked", 1), (1010.0, "worked", 1)]
    assert main(["history", "d", "--app", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["START", "DURATION", "OUTCOME", "ITEMS", "TRIGGER", "ERROR"]
    assert len(table) == 4
    assert main(["history", "nope", "--app", str(tmp_path)]) == 1
    assert "no runs of daemon 'nope'" in capsys.readouterr().err
    assert main(["history", "d", "--app", str(tmp_path), "--limit", "0"]) == 2


def test_cli_history_shows_no_more_than_the_app_keeps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With app.history 3, ten runs (a write each) leave 3 to print, whether TARGET is
    the state_dir (the file records the size) or the YAML file, and whatever --limit."""
    state = tmp_path / "var"
    state.mkdir(mode=0o700)
    daemon = FakeDaemon(run_every=10, name="d")
    app, clock = start_app(daemon, state_dir=str(state), history=3)
    clock.advance(0)
    for _ in range(9):
        run_once(daemon, clock, "x")
        clock.advance(1)  # its write
    app.stop("test")
    assert len(lines_of(state)) > 3  # appended: the file holds more than the app keeps
    config = tmp_path / "daemons.yaml"
    config.write_text("app:\n  state_dir: ./var\n  history: 3\ndaemons: {}\n")
    for target in ([str(state)], [str(state), "--limit", "10"], [str(config), "--limit", "10"]):
        assert main(["history", "d", "--json", "--app", *target]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert [r["start"] for r in printed["runs"]] == [90.0, 80.0, 70.0], target
    assert main(["history", "d", "--json", "--app", str(state), "--limit", "2"]) == 0
    assert [r["start"] for r in json.loads(capsys.readouterr().out)["runs"]] == [90.0, 80.0]


def test_lines_of_an_earlier_version_read_with_the_default_size(tmp_path: Path) -> None:
    """A line without the size it was kept at (written before it was recorded) reads
    as DEFAULT_SIZE; a bad size makes a bad line."""
    runs = [[float(i), float(i), "idle", 0, "backoff", None] for i in range(150)]
    (tmp_path / FILE).write_text(json.dumps(["d", runs]) + "\n"
                                 + json.dumps(["e", runs[:5], 2]) + "\n"
                                 + json.dumps(["f", runs[:5], 0]) + "\n"
                                 + json.dumps(["g", runs[:5], True]) + "\n")
    found, bad, _ = read_history(str(tmp_path / FILE), None)
    assert (len(found["d"]), len(found["e"]), bad) == (DEFAULT_SIZE, 2, 2)
    assert [r.start for r in found["e"]] == [3.0, 4.0]


def test_a_damaged_file_loses_only_its_bad_lines(tmp_path: Path) -> None:
    """Lines and runs that cannot be read are skipped and counted; the others are kept."""
    (tmp_path / FILE).write_text('["d",[[1,2,"worked",1,"schedule",null]]]\nnot json\n'
                                 '["d",[[3,4,"idle",0,"backoff",null],[5,6]]]\n[1,2]\n')
    runs, bad, count = read_history(str(tmp_path / FILE))
    assert (bad, count) == (3, 3)
    assert [r.start for r in runs["d"]] == [1.0, 3.0]


@pytest.mark.integration
def test_daemonapp_history_after_a_restart(tmp_path: Path) -> None:
    """Two lives of `daemonapp run` on one state_dir: `daemonapp history` shows both,
    the app being down."""
    config = tmp_path / "daemons.yaml"
    config.write_text(textwrap.dedent("""
        app:
          shutdown_after: 1.5s
          state_dir: ./var
        daemons:
          tick:
            type: command
            run_every: 0.2s
            argv: ["true"]
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    counts = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        shown = subprocess.run([sys.executable, "-m", "daemonapp.cli", "history", "tick",
                                "--app", str(config), "--json"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        counts.append(len(json.loads(shown.stdout)["runs"]))
    assert 0 < counts[0] < counts[1]


GOOD = '["d",[[1,2,"worked",1,"schedule",null]],100]\n'


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
    """A failed append that wrote a whole line before failing: the next write rewrites
    the file, so no run is there twice after a restart."""
    two_daemons_and_a_short_first_write(tmp_path, monkeypatch, lambda data: data.index(b"\n") + 1)
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert bad == 0
    assert sorted((name, len(found)) for name, found in runs.items()) == [("a", 1), ("b", 1)]


def test_a_write_cut_short_loses_no_run(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed append that wrote half a line: the next write rewrites the file, so no
    line is glued to that half and no run is lost after a restart."""
    two_daemons_and_a_short_first_write(tmp_path, monkeypatch, lambda data: data.index(b"\n") // 2)
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert sorted((name, len(found)) for name, found in runs.items()) == [("a", 1), ("b", 1)]
    assert bad == 0


def test_restart_on_the_same_state_dir_keeps_each_run_once(tmp_path: Path) -> None:
    """Two lives on one state_dir, each written at its stop: every run once."""
    for start in (1000.0, 5000.0):
        life(tmp_path, start, 1)
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert bad == 0
    starts = [r.start for r in runs["d"]]
    assert starts == sorted(set(starts))


def test_a_failure_while_a_write_is_arranged_still_writes_later(tmp_path: Path) -> None:
    """A direct flush (as the stop hook's) fails while a write is arranged: the arranged
    write fails too and arranges its own retry; once the disk is back every run is
    written, once."""
    daemon = FakeDaemon(run_every=0.5, name="d")
    app, clock = start_app(daemon, state_dir=str(tmp_path))
    clock.advance(0)  # idle at 0, written at 0
    assert app.run_history is not None
    (tmp_path / FILE).rename(tmp_path / "saved")
    (tmp_path / FILE).mkdir()
    clock.advance(0.5)  # a run at 0.5: a write arranged for 1.0
    app.run_history.flush()  # fails: retry left to the arranged write
    for _ in range(4):
        clock.advance(0.5)
    (tmp_path / FILE).rmdir()
    (tmp_path / "saved").rename(tmp_path / FILE)
    clock.advance(MAX_FLUSH_INTERVAL + 1)
    app.stop("test")
    runs, bad, count = read_history(str(tmp_path / FILE), None)
    starts = [r.start for r in runs["d"]]
    assert bad == 0 and starts == sorted(set(starts)) and count == len(starts)
    assert starts == [r.start for r in reversed(app.run_history.runs("d"))]


def test_a_daemon_removed_and_added_again_during_an_outage(tmp_path: Path) -> None:
    """Runs of a daemon removed and added again while writes fail are written once."""
    (tmp_path / FILE).mkdir()
    daemon = FakeDaemon(run_every=100, name="d")
    app, clock = start_app(daemon, state_dir=str(tmp_path))
    clock.advance(0)  # idle at 0; the write fails
    app.remove(daemon)
    clock.advance(1)
    assert "d" not in app.daemons
    app.add(FakeDaemon(run_every=100, name="d"))  # idle at 1, its run waits too
    clock.advance(0)
    (tmp_path / FILE).rmdir()
    clock.advance(MAX_FLUSH_INTERVAL)
    app.stop("test")
    runs, bad, count = read_history(str(tmp_path / FILE))
    starts = [r.start for r in runs["d"]]
    assert bad == 0 and starts == sorted(set(starts)) and count == len(starts)
    assert starts == [0.0, 1.0]


def test_a_file_cut_in_a_line_is_rewritten_by_the_next_write(tmp_path: Path) -> None:
    """A file whose last line was cut (a crash during a write) is rewritten whole by the
    next life's first write: its next line is not glued to the cut one."""
    (tmp_path / FILE).write_text(GOOD + '["d",[[3,4,"wor')
    daemon = FakeDaemon(run_every=10, name="d")
    app, clock = start_app(daemon, state_dir=str(tmp_path))
    clock.advance(0)
    app.stop("test")
    runs, bad, _ = read_history(str(tmp_path / FILE))
    assert bad == 0
    assert [r.start for r in runs["d"]] == [1.0, 0.0]


def test_a_long_outage_logs_a_line_a_minute_at_most(tmp_path: Path) -> None:
    """Writes failing for ten minutes (one try every MAX_FLUSH_INTERVAL) log about a
    line a minute; the first good write says so, and everything is written then."""
    (tmp_path / FILE).mkdir()
    daemon = FakeDaemon(run_every=1, name="d")
    app, clock = start_app(daemon, state_dir=str(tmp_path))
    with capturedLogs() as events:
        clock.advance(0)
        for _ in range(600):
            daemon.add_jobs("x")
            clock.advance(1)
        (tmp_path / FILE).rmdir()
        clock.advance(MAX_FLUSH_INTERVAL)
    text = [formatEvent(event) for event in events]
    failing = [line for line in text if "run history" in line and "written again" not in line]
    assert 10 <= len(failing) <= 11, failing
    assert sum("is written again, after" in line for line in text) == 1
    assert len(lines_of(tmp_path)) == 100  # the last `history` runs: a rewrite
    app.stop("test")
