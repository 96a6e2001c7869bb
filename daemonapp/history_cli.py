"""``daemonapp history NAME``: the last runs of a daemon, from the app's state_dir.

It reads ``state_dir/history.jsonl`` (daemonapp.history), so it works whether the app
runs or not. Newest first; exit 0, 1 when the daemon has no runs recorded or the file
cannot be read, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from daemonapp.apptarget import find_app
from daemonapp.history import DEFAULT_SIZE, history_path, read_history

__all__ = ["add_parser", "run"]


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of runs above 0, got {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``history`` subcommand of ``daemonapp``."""
    parser = commands.add_parser(
        "history", help="show the last runs of a daemon",
        description="Print the last runs of a daemon, newest first: start, end, outcome, "
                    "items, trigger and error. Reads the app's state_dir, so the app "
                    "need not run.")
    parser.add_argument("name", metavar="NAME", help="the daemon's name")
    parser.add_argument("--limit", type=_limit, metavar="N",
                        help=f"at most N runs (default: all those the app keeps, "
                             f"app.history: {DEFAULT_SIZE} unless it says otherwise)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--app", metavar="TARGET",
                        help="the app's state_dir, or its YAML file (default: as for "
                             "daemonapp status)")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="milliseconds")


def run(args: argparse.Namespace) -> int:
    """Print the runs for parsed arguments; the exit status."""
    found = find_app(args.app, "history", settings=True)
    if isinstance(found, int):
        return found
    path = history_path(found.state_dir)
    # The runs the app keeps: app.history of its YAML file, else as the file records it
    # (a state_dir target); --limit shows fewer, never more.
    kept = (found.app.history or None) if found.app is not None else None
    try:
        runs, _bad, _lines = read_history(path, kept)
    except OSError as e:
        print(f"daemonapp history: cannot read {path}: {e}", file=sys.stderr)
        return 1
    mine = list(reversed(runs.get(args.name, ())))[:args.limit]
    if not mine:
        print(f"daemonapp history: no runs of daemon {args.name!r} recorded in {path}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"daemon": args.name, "runs": [run.as_dict() for run in mine]},
                         indent=2))
        return 0
    rows = [("START", "DURATION", "OUTCOME", "ITEMS", "TRIGGER", "ERROR")]
    rows += [(_when(run.start), f"{run.end - run.start:.3f}s", run.outcome, str(run.items),
              run.trigger, run.error or "") for run in mine]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[5])
    return 0
