"""``daemonapp jobs``: submit, show, list, retry and cancel jobs from a shell.

Talks to the store directly, so it works whether the app runs or not. The
store comes from ``--store`` (a PostgreSQL URL or a state_dir), else from the
job_dispatcher section of the config (``-c``, or ``DAEMONAPP_CONFIG``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from daemonapp.jobs._model import STATES, JobRecord

__all__ = ["StoreNotFound", "main", "store_from_config"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class StoreNotFound(ValueError):
    """No job store to open: no config given, an invalid config, or no such dispatcher."""


def store_from_config(path: str, dispatcher: str | None = None) -> str:
    """The job store target the app of a config file uses, found as ``daemonapp run``
    finds it: the config is loaded by ``daemonapp.config.load_config`` (the one owner of
    the defaults, state_dir ``./var`` next to the file), then the job_dispatcher's
    ``store`` option wins over the app's state_dir, as in the dispatcher itself.
    """
    from daemonapp.config import ConfigError, load_config
    from daemonapp.jobs.dispatcher import JobDispatcher
    from daemonapp.jobs.store import store_target

    try:
        config = load_config(path)
    except ConfigError as err:
        raise StoreNotFound("\n".join(err.messages)) from None
    found = None
    for spec in config.daemons:
        if issubclass(spec.cls, JobDispatcher) and dispatcher in (None, spec.name):
            found = spec
            break
    if dispatcher is not None and found is None:
        raise StoreNotFound(f"{path}: no job_dispatcher daemon named {dispatcher!r}")
    store = found.options.get("store") if found is not None else None
    return store_target(store, config.app.state_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daemonapp jobs",
        description="Submit and inspect jobs in the store of a daemonapp job dispatcher.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="the app's YAML config (default: "
                                              "$DAEMONAPP_CONFIG)")
    where.add_argument("--store", help="a PostgreSQL URL or a state_dir holding jobs.sqlite3")
    parser.add_argument("--dispatcher", help="with -c: the job_dispatcher daemon's name "
                                             "(default: the first)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="add a job; prints its id")
    submit.add_argument("kind")
    submit.add_argument("payload", metavar="JSON", help="the payload, a JSON object")
    submit.add_argument("--unique-key", help="reuse the pending or running job with this key")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first")
    submit.add_argument("--run-after", metavar="DURATION",
                        help='start no sooner than this from now ("10m")')

    show = commands.add_parser("show", help="print a job as JSON (traceback included)")
    show.add_argument("id", type=int)

    listing = commands.add_parser("list", help="list the newest jobs")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    retry = commands.add_parser("retry", help="make a failed job pending with a fresh budget")
    retry.add_argument("id", type=int)

    cancel = commands.add_parser("cancel", help="cancel a pending or running job")
    cancel.add_argument("id", type=int)
    return parser


def _target(args: argparse.Namespace) -> str:
    if args.store:
        text: str = args.store
        return text
    config = args.config or os.environ.get("DAEMONAPP_CONFIG")
    if not config:
        raise StoreNotFound("no job store: give -c CONFIG or --store URL "
                            "(or set DAEMONAPP_CONFIG)")
    return store_from_config(config, args.dispatcher)


def _format_time(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _print_table(records: Sequence[JobRecord], out: TextIO) -> None:
    rows = [("ID", "STATE", "KIND", "ATTEMPTS", "PERCENT", "UPDATED", "MESSAGE")]
    for r in records:
        last_error = (r.error or "").strip().splitlines()
        message = r.message or (last_error[-1] if last_error else "")
        rows.append((str(r.id), r.state, r.kind, f"{r.attempts}/{r.max_attempts}",
                     f"{r.percent or 0:.0f}%", _format_time(r.updated_at), message[:60]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


# The commands that change a job's state: (the state it is then in, which jobs they accept).
_STATE_CHANGES = {
    "retry": ("pending", "only failed or cancelled jobs can be retried"),
    "cancel": ("cancelled", "only pending or running jobs can be cancelled"),
}


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from daemonapp.jobs.store import open_store

    store = open_store(_target(args))
    try:
        if args.command == "submit":
            try:
                payload = json.loads(args.payload)
            except ValueError as exc:
                err.write(f"daemonapp jobs submit: JSON: {exc}\n")
                return EXIT_USAGE
            run_after = None
            if args.run_after:
                from daemonapp.durations import parse_duration

                run_after = time.time() + parse_duration(args.run_after)
            job_id = store.submit(args.kind, payload, unique_key=args.unique_key,
                                  priority=args.priority, run_after=run_after)
            out.write(f"{job_id}\n")
            return EXIT_OK
        if args.command == "show":
            record = store.get(args.id)
            if record is None:
                err.write(f"daemonapp jobs show: no job {args.id}\n")
                return EXIT_REFUSED
            out.write(json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n")
            return EXIT_OK
        if args.command == "list":
            records = store.list(state=args.state, limit=max(1, args.limit))
            if args.json:
                for record in records:
                    out.write(json.dumps(record.as_dict(), sort_keys=True) + "\n")
            else:
                _print_table(records, out)
            return EXIT_OK
        if args.command in _STATE_CHANGES:
            new_state, accepted = _STATE_CHANGES[args.command]
            change = store.retry if args.command == "retry" else store.cancel
            if not change(args.id):
                record = store.get(args.id)
                state = "unknown" if record is None else record.state
                err.write(f"daemonapp jobs {args.command}: job {args.id} is {state}; "
                          f"{accepted}\n")
                return EXIT_REFUSED
            out.write(f"job {args.id}: {new_state}\n")
            return EXIT_OK
        raise AssertionError(args.command)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    """``daemonapp jobs ...``: returns the exit status (0 ok, 1 refused, 2 usage)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["jobs"]:
        args_list = args_list[1:]
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return _run(args, sys.stdout, sys.stderr)
    except (StoreNotFound, ValueError, OSError, RuntimeError) as exc:
        sys.stderr.write(f"daemonapp jobs: {exc}\n")
        return EXIT_USAGE if isinstance(exc, StoreNotFound | ValueError) else EXIT_REFUSED
    except Exception as exc:  # a database error: say it, no traceback
        sys.stderr.write(f"daemonapp jobs: {type(exc).__name__}: {exc}\n")
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
