"""``daemonapp schedule EXPR``: the coming fire times of a clock schedule.

Like ``systemd-analyze calendar``: one line per fire time, ISO 8601 with the offset in
force, and a note where the offset changes (a DST transition). Exit 2, naming the
field, on a bad expression or zone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from daemonapp.crontimes import CronTimes, load_zone

__all__ = ["add_parser", "main", "run"]

EXIT_USAGE = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``schedule`` subcommand of ``daemonapp``."""
    parser = commands.add_parser(
        "schedule", help="print the coming fire times of a cron expression",
        description="Print the next fire times of a clock schedule (5-field cron or "
                    "@hourly/@daily/@weekly/@monthly/@yearly), as daemonapp runs them: "
                    "ISO 8601 with the zone's offset, DST changes marked.")
    _arguments(parser)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("expression", metavar="EXPR", help='e.g. "30 2 * * *" or "@daily"')
    parser.add_argument("--timezone", metavar="ZONE",
                        help="IANA zone (default: the system's)")
    parser.add_argument("--count", type=int, default=5, metavar="N",
                        help="how many fire times (default 5)")
    parser.add_argument("--from", dest="start", metavar="ISO",
                        help="start after this time (without an offset: read in the zone; "
                             "default: now)")


def run(args: argparse.Namespace) -> int:
    """Print the fire times for parsed arguments; the exit status."""
    try:
        zone = load_zone(args.timezone)
        times = CronTimes(args.expression, zone)
    except ValueError as e:
        print(f"daemonapp schedule: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.count < 1:
        print("daemonapp schedule: --count: expected a number of at least 1",
              file=sys.stderr)
        return EXIT_USAGE
    if args.start is None:
        t = time.time()
    else:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            print(f"daemonapp schedule: --from: expected an ISO 8601 time like "
                  f"2026-03-29T00:00, got {args.start!r}", file=sys.stderr)
            return EXIT_USAGE
        if start.tzinfo is None:
            start = start.replace(tzinfo=zone)
        t = start.timestamp()
    previous = datetime.fromtimestamp(t, zone).utcoffset()
    for _ in range(args.count):
        t = times.next_after(t)
        moment = datetime.fromtimestamp(t, zone)
        line = moment.isoformat()
        offset = moment.utcoffset()
        if offset != previous:
            line += f"  (DST: offset {_offset(previous)} -> {_offset(offset)})"
        previous = offset
        print(line)
    return 0


def _offset(delta: timedelta | None) -> str:
    if delta is None:
        return "?"
    seconds = int(delta.total_seconds())
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def main(argv: Sequence[str] | None = None) -> int:
    """``daemonapp schedule`` on its own (for tests and ``python -m``)."""
    parser = argparse.ArgumentParser(prog="daemonapp schedule")
    _arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
