"""``daemonapp trigger | pause | resume | reload``: commands to a running app.

Each sends one request over the app's status socket (daemonapp.control has the
protocol) and prints the answer, or with ``--json`` the answer itself. Exit status:
0 done, 1 refused (an unknown daemon, no app answering, an invalid file to reload),
2 usage (a bad ``--for`` included, and a request the app calls bad).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from daemonapp.apptarget import ENV_CONFIG, find_app

__all__ = ["COMMANDS", "add_parsers", "run"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
#: The commands of this module, as `daemonapp` names them.
COMMANDS = ("trigger", "pause", "resume", "reload")
#: Seconds a command waits for its answer (a reload reads and checks the file first).
TIMEOUT = 30.0


def _error(message: str) -> None:
    print(f"daemonapp: {message}", file=sys.stderr)


def add_parsers(commands: Any) -> None:
    """Add the four commands to ``daemonapp``'s subparsers."""
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--app", metavar="TARGET",
                            help="the app's state_dir, or its YAML file (default: the "
                                 f"state_dir of ${ENV_CONFIG}, else ./var)")
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")

    trigger = commands.add_parser(
        "trigger", help="run a daemon now",
        description="Run the daemon now (right after its run in flight, if one is); its "
                    "lock still applies. A paused daemon runs once and stays paused.")
    trigger.add_argument("name", metavar="NAME", help="the daemon's name")
    common(trigger)
    pause = commands.add_parser(
        "pause", help="start no more runs of a daemon",
        description="Pause the daemon: it starts no run (one in flight finishes) until "
                    "`daemonapp resume NAME` or the end of --for. The pause is kept in "
                    "state_dir and survives restarts.")
    pause.add_argument("name", metavar="NAME", help="the daemon's name")
    pause.add_argument("--for", dest="duration", metavar="DURATION",
                       help='end the pause after this long ("30m", "2h", "90s")')
    pause.add_argument("--reason", metavar="TEXT", help="why (shown by daemonapp status)")
    common(pause)
    resume = commands.add_parser(
        "resume", help="end a daemon's pause",
        description="End the daemon's pause: a backoff daemon runs at once, a clock "
                    "schedule makes up the fire times it missed as its catch_up says.")
    resume.add_argument("name", metavar="NAME", help="the daemon's name")
    common(resume)
    reload = commands.add_parser(
        "reload", help="re-read the app's YAML file and apply the difference",
        description="Re-read the YAML file the app was started from. Invalid: nothing "
                    "changes and every error is printed (exit 1). Valid: new daemons "
                    "start, removed ones stop after their run in flight, changed ones are "
                    "replaced the same way, app.log applies at once; what needs a restart "
                    "is named and left alone.")
    common(reload)


def _request(args: argparse.Namespace) -> dict[str, Any] | int:
    command = args.command
    if command == "reload":
        return {"command": "reload"}
    request: dict[str, Any] = {"command": command, "daemon": args.name}
    if command == "pause":
        if args.duration is not None:
            from daemonapp.durations import parse_duration
            from daemonapp.pauses import MAX_PAUSE_SECONDS

            try:
                seconds = parse_duration(args.duration, positive=True)
            except ValueError as e:
                _error(f"pause: --for: {e}")
                return EXIT_USAGE
            if seconds > MAX_PAUSE_SECONDS:
                _error(f"pause: --for: at most 10 years (3650d), got {args.duration!r}")
                return EXIT_USAGE
            request["for"] = seconds
        if args.reason is not None:
            request["reason"] = args.reason
    return request


def run(args: argparse.Namespace) -> int:
    """Send the command of ``args`` and print the answer; the exit status."""
    request = _request(args)
    if isinstance(request, int):
        return request
    found = find_app(args.app, args.command)
    if isinstance(found, int):
        return found
    state_dir = found.state_dir
    from daemonapp.control import send_request

    command = args.command
    try:
        reply = send_request(state_dir, request, timeout=TIMEOUT)
    except (OSError, ValueError) as e:
        _error(f"{command}: no app answers in {state_dir}: {e}")
        return EXIT_REFUSED
    if "ok" not in reply:
        # An app of a version before commands: it answered with its status.
        _error(f"{command}: the app in {state_dir} takes no commands (an older daemonapp?)")
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif reply.get("ok"):
        print(_describe(command, reply))
    for error in reply.get("errors") or []:
        print(error, file=sys.stderr)
    if not reply.get("ok"):
        _error(f"{command}: {reply.get('error', 'refused')}")
        # A request the app calls bad is a usage error (a name or reason it cannot take).
        return EXIT_USAGE if reply.get("refused") == "bad_request" else EXIT_REFUSED
    if reply.get("warning"):
        _error(f"{command}: warning: {reply['warning']}")
    return EXIT_OK


def _when(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _describe(command: str, reply: dict[str, Any]) -> str:
    name = reply.get("daemon")
    if command == "trigger":
        state = reply.get("state")
        after = f"{name}: a run is in flight; it runs once more right after it"
        if state == "merged" and reply.get("running"):
            after += " (asked for already)"
        text = {"queued": f"{name}: runs now",
                "merged": after if reply.get("running")
                else f"{name}: runs now (it was due or asked for already)",
                "after-run": after,
                }.get(str(state), f"{name}: {state}")
        return text + (" (it stays paused)" if reply.get("paused") else "")
    if command == "pause":
        text = f"{name}: paused since {_when(reply.get('paused_since'))}"
        if reply.get("paused_until") is not None:
            text += f" until {_when(reply.get('paused_until'))}"
        if reply.get("paused_reason"):
            text += f" ({reply['paused_reason']})"
        if reply.get("running"):
            text += "; its run in flight finishes"
        return text
    if command == "resume":
        return f"{name}: resumed" if reply.get("was_paused") else f"{name}: was not paused"
    lines = []
    for key in ("added", "removed", "replaced", "unchanged"):
        names = reply.get(key) or []
        lines.append(f"{key}: {', '.join(names) if names else '-'}")
    restart = reply.get("needs_restart") or []
    lines.append(f"needs restart: {', '.join(restart) if restart else '-'}")
    lines.append(f"log: {reply.get('log', '-')}")
    return "\n".join(lines)
