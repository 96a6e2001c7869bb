"""The run history: the last runs of each daemon, in memory and in state_dir (DESIGN §10).

Each daemon appends one tuple per run to its `RunLog`'s runs not written yet (a
bounded deque: the last ``app.history`` runs), and that is all a run costs. The app's
`RunHistory` writes them to ``state_dir/history.jsonl`` at most about once a second
(through the scheduler's one timer; every few seconds when a write holds thousands of
runs) and when the app stops: appended, one line per daemon and write (``[name,
[[start, end, outcome, items, trigger, error], ...], size]``), at most ``size`` runs
per daemon per write whatever the rate of runs; the file is rewritten from memory
(atomically) once it holds more than three times the runs it keeps, and after a write
that failed, which may have left part of its lines. A write that fails is tried again
MAX_FLUSH_INTERVAL later, its runs kept; the log says so once a minute at most.
`read_history` reads the file back, for the next start and for ``daemonapp history``
(with the app down too), never raising on what it holds.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from twisted.logger import Logger

from daemonapp.ratelog import Episode, RateLog
from daemonapp.state_dir import write_private_file

__all__ = ["DEFAULT_SIZE", "FILE", "Run", "RunHistory", "RunLog", "history_path",
           "read_history"]

log = Logger()

#: Runs kept per daemon when ``app.history`` is not set.
DEFAULT_SIZE = 100
#: The history's file in state_dir.
FILE = "history.jsonl"
#: Seconds between two writes of the file, at least.
FLUSH_INTERVAL = 1.0
#: A write of more runs than this waits proportionally longer for the next (at most
#: MAX_FLUSH_INTERVAL): many busy daemons write their last runs every few seconds, so
#: that encoding them stays a small part of the loop's time.
FLUSH_RUNS = 2000
MAX_FLUSH_INTERVAL = 10.0
#: The most of the file read back (its end): a start never reads an unbounded file.
MAX_READ = 64 * 1024 * 1024
#: Daemons kept that no longer run (removed, renamed): the most recently active first.
MAX_GONE = 1000
#: Seconds between two log lines about failing writes, at least.
OUTAGE_LOG_EVERY = 60.0
#: What a damaged or hostile line of the file may raise as it is read: it is skipped.
_BAD = (ValueError, TypeError, OverflowError, RecursionError)


class Run(NamedTuple):
    """One run as the history keeps it."""

    start: float
    end: float
    outcome: str
    items: int
    trigger: str
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class RunLog:
    """The last ``size`` runs of one daemon, oldest first: those written to the file
    (``kept``) and those not yet (``new``, which its daemon's runs append to).

    A run appends its tuple to ``new``, a plain deque its daemon holds (its C ``append``
    called straight, which a subclass's is not; no other object read), and when ``new``
    was empty calls `RunHistory.mark`: the first run since the last write has the next
    one arranged. A write moves ``new`` to ``kept``.
    """

    __slots__ = ("kept", "name", "new", "size")

    def __init__(self, name: str, size: int, runs: Iterable[tuple[Any, ...]] = ()) -> None:
        self.name = name
        self.size = size
        self.kept: deque[tuple[Any, ...]] = deque(runs, size)
        self.new: deque[tuple[Any, ...]] = deque(maxlen=size)

    def __len__(self) -> int:
        return min(self.size, len(self.kept) + len(self.new))

    def written(self) -> None:
        """The runs of ``new`` are in the file now."""
        self.kept.extend(self.new)
        self.new.clear()

    def all(self) -> list[tuple[Any, ...]]:
        """The runs kept, oldest first."""
        return [*self.kept, *self.new][-self.size:]

    def runs(self, limit: int | None = None) -> list[Run]:
        """The runs, newest first."""
        chosen = self.all()
        if limit:
            chosen = chosen[-limit:]
        return [Run(*run) for run in reversed(chosen)]


def history_path(state_dir: str) -> str:
    """Where the run history of the app of ``state_dir`` is kept."""
    return os.path.join(state_dir, FILE)


_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _line(name: str, runs: list[tuple[Any, ...]], size: int) -> str:
    """Runs of one daemon as a line of JSON: ``[name, [[start, end, outcome, items,
    trigger, error], ...], size]``, ``size`` the runs the app keeps (``app.history``):
    one encoder call per daemon and write, not per run (a write of thousands of runs
    spent most of its time in json.dumps's per-call setup)."""
    return _encode([name, runs, size]) + "\n"


#: The largest ``size`` a line of the file may record (more is a damaged line).
MAX_RECORDED_SIZE = 10_000_000


def read_history(path: str, size: int | None = DEFAULT_SIZE,
                 ) -> tuple[dict[str, deque[Run]], int, int]:
    """The last ``size`` runs of each daemon in the file at ``path``, how many of its
    runs (or lines) could not be read, and how many runs it holds. ``size`` None: as
    many as the app that wrote each daemon's last line kept (``app.history``, which
    each line records; DEFAULT_SIZE for a line of an older version that does not). A
    missing file is an empty history; only the last MAX_READ bytes of a larger one are
    read. OSError when it cannot be."""
    runs: dict[str, deque[Run]] = {}
    recorded: dict[str, int] = {}
    bad = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return runs, 0, 0
    with f:
        end = f.seek(0, os.SEEK_END)
        f.seek(max(0, end - MAX_READ))
        data = f.read(MAX_READ)
    lines = data.split(b"\n")
    if end > MAX_READ:
        lines = lines[1:]  # the first is cut
    count = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            name, items, *rest = json.loads(raw)  # (RecursionError: nested too deep)
            kept_by_app = rest[0] if rest else DEFAULT_SIZE
            if not isinstance(name, str) or not isinstance(items, list) or len(rest) > 1 \
                    or isinstance(kept_by_app, bool) or not isinstance(kept_by_app, int) \
                    or not 1 <= kept_by_app <= MAX_RECORDED_SIZE:
                raise TypeError(name)
        except _BAD:
            bad += 1
            continue
        recorded[name] = kept_by_app
        kept = runs.get(name)
        if kept is None:
            kept = runs[name] = deque(maxlen=size or MAX_RECORDED_SIZE)
        for item in items:
            count += 1
            try:
                start, stop, outcome, done, trigger, error = item
                run = Run(float(start), float(stop), str(outcome), int(done), str(trigger),
                          None if error is None else str(error))
                if not (math.isfinite(run.start) and math.isfinite(run.end)):
                    raise ValueError(run)
            except _BAD:
                bad += 1
                continue
            kept.append(run)
    if size is None:  # each daemon's runs as its last line's app kept them
        for name, kept in runs.items():
            while len(kept) > recorded[name]:
                kept.popleft()
    return runs, bad, count


class RunHistory:
    """The run logs of an app's daemons, written to ``state_dir`` (None: memory only).

    ``call_at(at, function, arg)`` arranges the next write (the scheduler's, so that
    the history arms no timer of its own); ``seconds`` is the app's clock.
    """

    def __init__(self, size: int = DEFAULT_SIZE, state_dir: str | None = None, *,
                 seconds: Callable[[], float],
                 call_at: Callable[[float, Callable[[Any], None], Any], None]) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"history: expected a whole number of runs of at least 1, "
                             f"got {size!r}")
        self.size = size
        self.path = history_path(state_dir) if state_dir is not None else None
        self.seconds = seconds
        self.call_at = call_at
        self.logs: dict[str, RunLog] = {}
        self._earlier: dict[str, deque[Run]] | None = None  # read from the file, once
        self._dirty: list[RunLog] = []
        self._flush_at: float | None = None  # a write is arranged for then
        self._written_at = float("-inf")
        self._interval = FLUSH_INTERVAL  # until the next write
        self._lines = 0  # runs in the file (as far as this process knows)
        #: The next write rewrites the file: one failed (it may have left part of its
        #: lines), or the file did not end with a whole line.
        self._rewrite_next = False
        self._outage = RateLog(seconds, every=OUTAGE_LOG_EVERY)

    # ------------------------------------------------------------------ runs

    def attach(self, name: str) -> RunLog:
        """The run log of the daemon ``name``, with the runs of earlier lives of the app."""
        found = self.logs.get(name)
        if found is not None:
            return found
        earlier = self._load().pop(name, ())
        run_log = RunLog(name, self.size, earlier)
        self.logs[name] = run_log
        return run_log

    def mark(self, name: str) -> None:
        """The first run of the daemon ``name`` since the last write (its daemon appends
        to the log's ``new`` itself): have the next write arranged."""
        found = self.logs.get(name)
        if found is not None and self.path is not None:  # (memory only: no write)
            self._marked(found)

    def runs(self, name: str, limit: int | None = None) -> list[Run]:
        """The last runs of the daemon ``name``, newest first (also of one that stopped)."""
        found = self.logs.get(name)
        if found is not None:
            return found.runs(limit)
        earlier = list(self._load().get(name, ()))
        chosen = earlier[-limit:] if limit else earlier
        return list(reversed(chosen))

    # --------------------------------------------------------------- writing

    def _load(self) -> dict[str, deque[Run]]:
        if self._earlier is None:
            self._earlier = {}
            if self.path is not None:
                bad = 0
                try:
                    self._earlier, bad, self._lines = read_history(self.path, self.size)
                    self._rewrite_next = not _ends_a_line(self.path)
                except Exception as e:  # (OSError; anything else would be a bug here)
                    log.warn("cannot read the run history {path} ({error}): it starts "
                             "empty", path=self.path, error=e)
                if bad:
                    log.warn("{count} line(s) of the run history {path} could not be read",
                             count=bad, path=self.path)
        return self._earlier

    def _marked(self, run_log: RunLog) -> None:
        self._dirty.append(run_log)
        if self._flush_at is not None:
            return
        at = max(self.seconds(), self._written_at + self._interval)
        self._flush_at = at
        self.call_at(at, self._scheduled_flush, None)

    def _scheduled_flush(self, _: object = None) -> None:
        self._flush_at = None
        self.flush()

    def flush(self) -> None:
        """Write the runs not written yet (the app calls this when it stops too)."""
        dirty, self._dirty = self._dirty, []
        if not dirty or self.path is None:
            return
        self._written_at = self.seconds()
        self._load()
        chunks: list[str] = []
        count = 0
        for run_log in dirty:
            new = run_log.new
            if new:
                chunks.append(_line(run_log.name, list(new), self.size))
                count += len(new)
        self._interval = min(MAX_FLUSH_INTERVAL, max(FLUSH_INTERVAL, count / FLUSH_RUNS))
        if not chunks:
            return
        kept = sum(len(run_log) for run_log in self.logs.values())
        if self._rewrite_next or self._lines + count > 3 * max(kept, self.size) + 1000:
            self._rewrite()
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                         0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(chunks))
        except OSError as e:
            self._failed(e, dirty)
            return
        for run_log in dirty:
            run_log.written()
        self._lines += count
        self._recovered()

    def _failed(self, error: OSError, logs: Iterable[RunLog]) -> None:
        """A write failed (logged once a minute at most): the next one, MAX_FLUSH_INTERVAL
        on, rewrites the file whole, as this one may have left part of its lines."""
        self._rewrite_next = True

        def write(episode: Episode) -> None:
            if episode.first:
                log.warn("cannot write the run history {path}: {error}; the runs wait in "
                         "memory, tried again every {every:g} s", path=self.path,
                         error=error, every=MAX_FLUSH_INTERVAL)
            else:
                log.warn("the run history {path} still cannot be written ({count} more "
                         "failed writes): {error}", path=self.path, count=episode.count,
                         error=error)

        self._outage.occurred("write", write)
        self._retry(logs)

    def _recovered(self) -> None:
        episode = self._outage.ended("write")
        if episode is not None:
            log.info("the run history {path} is written again, after {count} failed "
                     "write(s)", path=self.path, count=episode.total)

    def _retry(self, logs: Iterable[RunLog]) -> None:
        """A write failed: the unwritten runs of ``logs`` wait for the next write,
        arranged MAX_FLUSH_INTERVAL on (their daemons' next runs arrange none: runs wait
        there already)."""
        self._dirty = [run_log for run_log in logs if run_log.new] + self._dirty
        self._written_at = self.seconds()
        self._interval = MAX_FLUSH_INTERVAL
        if self._flush_at is None:
            self._flush_at = at = self._written_at + MAX_FLUSH_INTERVAL
            self.call_at(at, self._scheduled_flush, None)

    def _rewrite(self) -> None:
        """Write the whole history anew (atomically): what memory keeps, and the runs of
        daemons that did not run in this life (the most recently active MAX_GONE)."""
        assert self.path is not None
        gone = sorted(((name, runs) for name, runs in self._load().items()
                       if name not in self.logs and runs),
                      key=lambda item: item[1][-1].end)[-MAX_GONE:]
        self._earlier = dict(gone)
        lines = [_line(name, list(runs), self.size) for name, runs in gone]
        count = sum(len(runs) for _, runs in gone)
        for run_log in self.logs.values():
            runs = run_log.all()
            if runs:
                lines.append(_line(run_log.name, runs, self.size))
                count += len(runs)
        try:
            write_private_file(self.path, "".join(lines))
        except OSError as e:
            self._failed(e, self.logs.values())
            return
        for run_log in self.logs.values():
            run_log.written()
        self._lines = count
        self._rewrite_next = False
        self._recovered()


def _ends_a_line(path: str) -> bool:
    """Whether the file at ``path`` is missing, empty or ends with a whole line."""
    try:
        with open(path, "rb") as f:
            if not f.seek(0, os.SEEK_END):
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True
