"""The ``daemonapp`` command: run, check, status, jobs, and commands to a running app.

``daemonapp run FILE`` is the same app as ``twistd -n daemonapp -c FILE``, plus
what only a plain command can do: zero-downtime takeover of the previous process
of the same state_dir, the sidecar for the CGI frontend, serving FastCGI on an
inherited fd 0 (lighttpd, mod_fcgid, spawn-fcgi), and answering one plain CGI
request when started as a CGI program.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from daemonapp import control_cli, history_cli, schedule_cli
from daemonapp._version import __version__
from daemonapp.assembly import Assembly, write_sidecar
from daemonapp.checkreport import print_check
from daemonapp.config import Config, ConfigError, load_config
from daemonapp.imports import import_target
from daemonapp.pidfiles import PidEntries, take_over

__all__ = ["EXIT_CONFIG", "PidEntries", "main", "run_config", "write_sidecar"]

EXIT_CONFIG = 2
ENV_CONFIG = "DAEMONAPP_CONFIG"


def _error(message: str) -> None:
    print(f"daemonapp: {message}", file=sys.stderr)


def _config_path(given: str | None) -> str | None:
    """The argument wins over DAEMONAPP_CONFIG."""
    return given or os.environ.get(ENV_CONFIG) or None


def _load(path: str | None, command: str, *, check_state_dir: bool = False) -> Config | int:
    """The config of ``path``, or EXIT_CONFIG once its errors are printed.

    ``check_state_dir`` for run and check: state_dir and the log file's directory are
    checked as the app will find them, so both report the same errors.
    """
    if path is None:
        _error(f"{command}: a configuration file is required (FILE, or set {ENV_CONFIG})")
        return EXIT_CONFIG
    try:
        return load_config(path, check_state_dir=check_state_dir)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        _error(f"{len(e.messages)} error(s) in {path}; nothing was started")
        return EXIT_CONFIG


# ------------------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    loaded = _load(_config_path(args.config), "check", check_state_dir=True)
    if isinstance(loaded, int):
        return loaded
    print_check(loaded, sys.stdout)
    return 0


# ------------------------------------------------------------------------ status


def _spawned_statuses(state_dir: str) -> list[tuple[int, dict[str, Any]]]:
    """The snapshots of the processes a web server spawned on ``state_dir``.

    Each serves ``status.<pid>.sock``; a socket nobody answers on is what a killed
    process left behind, and is skipped.
    """
    from daemonapp.status import fetch_status, spawned_status_sockets

    found = []
    for pid, path in spawned_status_sockets(state_dir):
        try:
            found.append((pid, fetch_status(path)))
        except (OSError, ValueError):
            continue
    return found


def _print_spawned(spawned: list[tuple[int, dict[str, Any]]], args: argparse.Namespace) -> int:
    from daemonapp.status import format_status

    if args.metrics and len(spawned) == 1:
        from daemonapp.metrics import render_metrics

        sys.stdout.write(render_metrics(spawned[0][1]).decode())
        return 0
    if args.metrics:
        _error("status: several processes spawned by the web server answer; for metrics "
               "pass one socket: " + ", ".join(f"status.{pid}.sock" for pid, _ in spawned))
        return 1
    if args.json:
        print(json.dumps({"processes": {str(pid): snap for pid, snap in spawned}},
                         indent=2, sort_keys=True, default=repr))
        return 0
    blocks = [f"process {pid} (spawned by the web server)\n{format_status(snap)}"
              for pid, snap in spawned]
    print("\n\n".join(blocks))
    return 0


def _status(args: argparse.Namespace) -> int:
    from daemonapp.apptarget import find_app
    from daemonapp.status import fetch_status, format_status

    found = find_app(args.state_dir, "status")
    if isinstance(found, int):
        return found
    target = found.state_dir
    if os.path.isdir(target) and not os.path.exists(found.status_socket):
        spawned = _spawned_statuses(target)
        if spawned:
            return _print_spawned(spawned, args)
    try:
        snapshot = fetch_status(target)
    except (OSError, ValueError) as e:
        _error(f"status: no app answers in {target}: {e}")
        return 1
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True, default=repr))
    elif args.metrics:
        from daemonapp.metrics import render_metrics

        sys.stdout.write(render_metrics(snapshot).decode())
    else:
        print(format_status(snapshot))
    return 0


# -------------------------------------------------------------------------- jobs


def _jobs(argv: list[str]) -> int:
    try:
        import importlib

        jobs_cli: Any = importlib.import_module("daemonapp.jobs.cli")
    except ImportError as e:
        _error(f"jobs: not available in this installation ({e})")
        return 1
    result: int = jobs_cli.main(argv)
    return result


# ----------------------------------------------------------------- fd 0 and CGI


def fd0_is_listening() -> bool:
    """True when fd 0 is a listening socket (FCGI_LISTENSOCK_FILENO).

    SO_ACCEPTCONN, not getpeername: under mod_cgid fd 0 is a *connected* socket. (The
    probe of listeners.endpoints.is_listening_socket; importing that module would load
    the whole listeners package into every `run`, listeners or not.)
    """
    try:
        skt = socket.socket(fileno=os.dup(0))
    except OSError:
        return False
    try:
        return bool(skt.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        skt.close()


def _serve_cgi(path: str | None) -> int:
    """Answer one plain CGI request through wsgiref's CGIHandler; write nothing."""
    from daemonapp.cgi_frontend import cgi_handler

    handler = cgi_handler()  # (the request's copy taken, HTTP_* gone from os.environ)

    def fail(message: str) -> int:
        print(message, file=sys.stderr)
        sys.stdout.write("Status: 500 Internal Server Error\r\n"
                         "Content-Type: text/plain\r\n\r\nconfiguration error\n")
        sys.stdout.flush()
        return 0

    if path is None:
        return fail(f"daemonapp: CGI: no configuration ({ENV_CONFIG} is not set)")
    try:
        config = load_config(path)
    except ConfigError as e:
        return fail("\n".join(e.messages))
    for listener in config.listeners:
        target = listener.options.get("wsgi")
        if target is None:
            continue
        application = (import_target(target, default="application") if isinstance(target, str)
                       else target)
        handler.run(application)
        return 0
    return fail(f"daemonapp: CGI: {path} has no listener with a wsgi application")


# --------------------------------------------------------------------------- run


def run_config(config: Config, *, inherited: bool | None = None) -> int:
    """Run the app of ``config`` on the global reactor; return its exit status."""
    from twisted.internet import reactor as global_reactor
    from twisted.logger import Logger

    from daemonapp.logs import start_logging

    reactor: Any = global_reactor

    log = Logger(namespace="daemonapp.cli")
    if inherited is None:
        inherited = fd0_is_listening()
    assembly = Assembly(config, inherited=inherited)
    # One entry per pid, never a shared pid file (written once the app is built).
    entries = PidEntries(config.app.state_dir, config.path)
    # A previous process of this config still serves: bind its tcp ports too (takeover).
    if not inherited:
        assembly.share_ports = entries.tcp_ports()
    try:
        # before the log: a log file in state_dir needs it, and refusals are config errors
        assembly.prepare()
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG
    settings = config.app.log
    try:
        target = start_logging(format=settings.format, level=settings.level,
                               file=settings.file)
    except OSError as e:
        _error(f"cannot open the log file {settings.file}: {e}")
        return EXIT_CONFIG
    try:
        app = assembly.build(reactor=reactor, stop_reactor=True, handle_signals=True,
                             status_server=True)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG
    app.on_reopen_logs(target.reopen)
    from daemonapp.control import controller_of

    controller = controller_of(app)
    if controller is not None:  # daemonapp reload applies app.log at once
        controller.reconfigure_log = lambda settings: target.reconfigure(
            format=settings.format, level=settings.level, file=settings.file)

    def on_usr1(signum: int, frame: object) -> None:
        reactor.callFromThread(app.stop, "signal SIGUSR1", 0)

    def install_usr1() -> None:
        signal.signal(signal.SIGUSR1, on_usr1)

    # Spawned by a web server, we only announce ourselves: no takeover of siblings, no
    # sidecar for the CGI frontend.
    from daemonapp.listeners.endpoints import tcp_port

    ports = [tcp_port(spec.options["endpoint"], reactor) for spec in config.listeners
             if isinstance(spec.options.get("endpoint"), str)]
    try:
        entries.write(spawned=inherited, tcp_ports=[port for port in ports if port])
    except OSError as e:  # a full disk (ENOSPC) or a read-only state_dir: say it, no traceback
        _error(f"cannot write the pid entry {entries.path}: {e.strerror or e}")
        target.close()
        return 1
    if not inherited:
        argv = [sys.executable, "-m", "daemonapp.cli", "run", os.path.abspath(config.path)]
        try:
            assembly.write_sidecar(argv)
        except (OSError, ValueError) as e:
            log.warn("could not write the CGI sidecar: {error}", error=e)
        assembly.when_listening(app, lambda listening: take_over(entries, listening))
    else:
        assembly.when_listening(app)
    reactor.callWhenRunning(install_usr1)
    try:
        status = app.run()
    finally:
        entries.remove()
        target.close()
    return status


def _run(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    inherited = fd0_is_listening()
    if not inherited and os.environ.get("GATEWAY_INTERFACE"):
        return _serve_cgi(path)
    loaded = _load(path, "run", check_state_dir=True)
    if isinstance(loaded, int):
        return loaded
    return run_config(loaded, inherited=inherited)


# -------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daemonapp",
        description="Run periodic daemons, FastCGI/SCGI/HTTP listeners and jobs "
                    "on one Twisted reactor.")
    parser.add_argument("--version", action="version", version=f"daemonapp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the app of a YAML file",
                              description="Run the app; a second run of the same file "
                                          "takes over from the first without downtime.")
    run.add_argument("config", nargs="?", metavar="FILE",
                     help=f"the YAML configuration (default: ${ENV_CONFIG})")
    check = commands.add_parser("check", help="validate a YAML file and print the schedule",
                                description="Validate the file and print the resolved "
                                            "schedule of every daemon; writes nothing.")
    check.add_argument("config", nargs="?", metavar="FILE",
                       help=f"the YAML configuration (default: ${ENV_CONFIG})")
    status = commands.add_parser("status", help="show the daemons, listeners and jobs of "
                                                "a running app")
    status.add_argument("state_dir", nargs="?", metavar="STATE_DIR",
                        help="the app's state_dir, or its YAML file (default: the state_dir "
                             f"of ${ENV_CONFIG}, else ./var)")
    shape = status.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    shape.add_argument("--metrics", action="store_true",
                       help="print Prometheus text metrics (for a textfile collector)")
    commands.add_parser("jobs", help="submit, show, list, retry, cancel jobs "
                                     "(daemonapp jobs --help)", add_help=False)
    schedule_cli.add_parser(commands)
    control_cli.add_parsers(commands)
    history_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``daemonapp`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "jobs":
        return _jobs(args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code) if isinstance(e.code, int) else EXIT_CONFIG
    if args.command == "run":
        return _run(args)
    if args.command == "check":
        return _printing(_check, args)
    if args.command == "status":
        return _printing(_status, args)
    if args.command == "schedule":
        return _printing(schedule_cli.run, args)
    if args.command == "history":
        return _printing(history_cli.run, args)
    if args.command in control_cli.COMMANDS:
        return _printing(control_cli.run, args)
    parser.print_help()
    return EXIT_CONFIG


def _printing(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command that prints; a reader that leaves early (``check FILE | head``)
    ends it quietly with status 1, as Python's documentation recommends, not with a
    BrokenPipeError traceback."""
    try:
        status = command(args)
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        # The interpreter flushes the streams again at exit: point them at /dev/null so
        # that flush has nowhere to fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass  # not a real file (a test's capture): nothing will flush it
        os.close(devnull)
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
