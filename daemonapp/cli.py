"""The ``daemonapp`` command: run, check, status and jobs.

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
from typing import IO, Any

from daemonapp._version import __version__
from daemonapp.config import (
    Config,
    ConfigError,
    ListenerSpec,
    build_app,
    build_listeners,
    load_config,
    nested_options,
    prepare_state_dir,
    resolve_daemon_type,
    stop_unless_listening,
    unix_socket_path,
)
from daemonapp.state_dir import ensure_private_subdir

__all__ = ["EXIT_CONFIG", "main"]

EXIT_CONFIG = 2
ENV_CONFIG = "DAEMONAPP_CONFIG"
PIDS_DIR = "pids"
#: Under a web server that spawned us (fd 0), a drain must fit in the few seconds
#: before mod_fcgid's SIGKILL.
SPAWNED_STOP_TIMEOUT = 2.0


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


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9 or whole < 60:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _backoff_text(daemon: Any) -> str:
    from daemonapp.daemon import idle_delays

    delays = idle_delays(daemon.run_every, daemon.increase_idle_by, daemon.multiply_idle_by,
                         daemon.maximum_idle, count=8)
    shown: list[str] = []
    for delay in delays:
        shown.append(_duration_text(delay))
        if delay >= daemon.maximum_idle:
            shown.append("...")
            break
    return ", ".join(shown)


def _schedule_row(name: str, type_name: str, daemon: Any) -> list[str]:
    return [name, type_name, _duration_text(daemon.run_every), _backoff_text(daemon),
            _duration_text(daemon.maximum_idle), str(daemon.priority), daemon.lock or "-"]


def _nested_row(name: str, section: dict[str, Any]) -> list[str]:
    """The schedule of the children a daemon builds from a nested section."""
    from daemonapp.daemon import Daemon

    cls = resolve_daemon_type(section["type"])
    attributes = {k: v for k, v in section.items() if k in Daemon.ATTRIBUTES}
    attributes.setdefault("run_every", cls.run_every or 1.0)
    for key in Daemon.ATTRIBUTES:
        if key not in attributes and key in vars(Daemon) and hasattr(cls, key):
            attributes[key] = getattr(cls, key)
    return _schedule_row(name, str(section["type"]), Daemon(name="template", **attributes))


def _print_table(headers: list[str], rows: list[list[str]], out: IO[str]) -> None:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i])
              for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _check(args: argparse.Namespace) -> int:
    loaded = _load(_config_path(args.config), "check", check_state_dir=True)
    if isinstance(loaded, int):
        return loaded
    config = loaded
    out = sys.stdout
    print(f"{config.path}: OK: {len(config.daemons)} daemon(s), "
          f"{len(config.listeners)} listener(s)", file=out)
    print(f"state_dir: {config.app.state_dir}", file=out)
    app = config.app
    print("app: " + ", ".join(
        f"{key} {_duration_text(getattr(app, key))}"
        for key in ("stay_alive_for", "shutdown_after", "shutdown_if_idle", "stop_timeout")),
        file=out)
    rows = []
    for spec in config.daemons:
        rows.append(_schedule_row(spec.name, spec.type_name, spec()))
        for key in nested_options(spec.cls):
            section = spec.options.get(key)
            if isinstance(section, dict):
                rows.append(_nested_row(f"{spec.name}/<{key}>", section))
    if rows:
        print("", file=out)
        _print_table(["DAEMON", "TYPE", "RUN_EVERY", "IDLE BACKOFF", "MAXIMUM_IDLE",
                      "PRIORITY", "LOCK"], rows, out)
    if config.listeners:
        print("", file=out)
        lrows = []
        for listener in config.listeners:
            serves = [f"{key} {listener.options[key]}" for key in ("wsgi", "native")
                      if key in listener.options]
            if listener.options.get("jobs"):
                serves.append("jobs")
            lrows.append([str(listener.index), listener.protocol,
                          listener.endpoint or "fd:0 (inherited)", ", ".join(serves) or "-"])
        _print_table(["LISTENER", "PROTOCOL", "ENDPOINT", "SERVES"], lrows, out)
    if config.cgi_configured:
        cgi = config.cgi
        chosen = config.cgi_listener()
        print("", file=out)
        print(f"cgi: min_load {cgi.min_load:g}, max_load "
              f"{'-' if cgi.max_load is None else f'{cgi.max_load:g}'}, start_timeout "
              f"{_duration_text(cgi.start_timeout)}, lock_timeout "
              f"{_duration_text(cgi.lock_timeout)}, listener "
              f"{chosen.index if chosen is not None else '-'}", file=out)
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
    from daemonapp.status import fetch_status, format_status, status_socket_path

    target = args.state_dir
    if target is None or os.path.isfile(target):
        path = target if target is not None else os.environ.get(ENV_CONFIG)
        if path:
            loaded = _load(path, "status")
            if isinstance(loaded, int):
                return loaded
            target = loaded.app.state_dir
        else:
            target = "var"
    if os.path.isdir(target) and not os.path.exists(status_socket_path(target)):
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

    SO_ACCEPTCONN, not getpeername: under mod_cgid fd 0 is a *connected* socket.
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
    from wsgiref.handlers import CGIHandler

    # The handler takes its copy of the request first; then HTTP_* (request headers,
    # HTTP_PROXY among them: httpoxy) leave os.environ before any application code runs.
    handler = CGIHandler()
    for name in [name for name in os.environ if name.startswith("HTTP_")]:
        del os.environ[name]

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
        application = _import_callable(target) if isinstance(target, str) else target
        handler.run(application)
        return 0
    return fail(f"daemonapp: CGI: {path} has no listener with a wsgi application")


def _import_callable(target: str) -> Any:
    import importlib

    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attribute or "application").split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------- pid entries, takeover


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""
    return data.rsplit(")", 1)[-1].split()[19]


class PidEntries:
    """One file per process in ``state_dir/pids/`` (never a shared pid file)."""

    def __init__(self, state_dir: str, config_path: str) -> None:
        self.directory = os.path.join(state_dir, PIDS_DIR)
        self.config_path = os.path.realpath(config_path)
        self.pid = os.getpid()
        self.path = os.path.join(self.directory, f"{self.pid}.json")

    def others(self) -> list[dict[str, Any]]:
        """Live processes of the same config, other than this one."""
        found = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    entry = json.loads(f.read(65536))
                pid = int(entry["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid == self.pid:
                continue
            started = _process_start(pid)
            if started is None or (started and started != entry.get("start")):
                try:
                    os.unlink(path)  # stale: that process is gone
                except OSError:
                    pass
                continue
            # Processes a web server spawned belong to it: never taken over.
            if entry.get("config") == self.config_path and not entry.get("spawned"):
                found.append(entry)
        return found

    def write(self, *, spawned: bool = False) -> None:
        """This process's entry; ``spawned`` marks one that a web server owns."""
        ensure_private_subdir(os.path.dirname(self.directory), PIDS_DIR)
        entry = {"pid": self.pid, "start": _process_start(self.pid) or "",
                 "config": self.config_path, "argv": sys.argv, "spawned": spawned}
        temporary = self.path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(entry))
        os.replace(temporary, self.path)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def write_sidecar(config: Config, argv: list[str]) -> str | None:
    """Write state_dir/cgi.marshal for the CGI frontend; None when no listener fits.

    The shape is the frontend's (``daemonapp.cgi_frontend.Settings``), which checks
    it before the file is written atomically with mode 0600. ``scgi_content_length``
    tells the frontend that every SCGI answer of ours has a Content-Length.
    """
    from daemonapp.cgi_frontend import write_sidecar as write_settings

    listener = config.cgi_listener()
    if listener is None:
        return None
    cgi = config.cgi
    wsgi = listener.options.get("wsgi")
    if wsgi is None:
        wsgi = next((spec.options["wsgi"] for spec in config.listeners
                     if spec.options.get("wsgi") is not None), None)
    settings = {
        "socket": unix_socket_path(listener.endpoint, config.base_dir),
        "protocol": listener.protocol,
        "min_load": cgi.min_load,
        "max_load": cgi.max_load,
        "start_timeout": cgi.start_timeout,
        "lock_timeout": cgi.lock_timeout,
        "state_dir": config.app.state_dir,
        "argv": argv,
        "config": os.path.abspath(config.path),
        "wsgi": None if wsgi is None else str(wsgi),
        # our SCGI listener buffers every answer to the frontend and sends it whole with
        # a Content-Length (or nothing): an answer without one was cut short
        "scgi_content_length": True,
    }
    return write_settings(config.app.state_dir, settings)


def take_over(app: Any, entries: PidEntries) -> list[int]:
    """Once every listener is bound, tell the previous processes to drain (SIGTERM).

    Called after the app started; returns the pids signalled.
    """
    from twisted.logger import Logger

    log = Logger(namespace="daemonapp.cli")
    if not stop_unless_listening(app):
        log.error("the previous process keeps running")
        return []
    signalled = []
    for entry in entries.others():
        pid = int(entry["pid"])
        log.info("taking over from pid {pid}: asking it to drain", pid=pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            log.warn("could not signal pid {pid}: {error}", pid=pid, error=e)
            continue
        signalled.append(pid)
    return signalled


# --------------------------------------------------------------------------- run


def _prepare_listeners(config: Config, inherited: bool) -> tuple[list[ListenerSpec], str | None]:
    """The listener items to build, with fd 0 assigned; or an error message."""
    from dataclasses import replace

    specs: list[ListenerSpec] = []
    for spec in config.listeners:
        endpoint = spec.endpoint
        wants_fd0 = spec.protocol == "fastcgi" and (endpoint is None or endpoint == "fd:0")
        if wants_fd0 and not inherited:
            return [], (f"{config.path}:{spec.line}: listeners[{spec.index}].endpoint: "
                        "no endpoint (or fd:0) means the listening socket a web server "
                        "passes as fd 0, and fd 0 is not one; give an endpoint like "
                        '"unix:./run/app.sock"')
        specs.append(replace(spec, options={**spec.options, "endpoint": "fd:0"})
                     if wants_fd0 else spec)
    return specs, None


def run_config(config: Config, *, inherited: bool | None = None) -> int:
    """Run the app of ``config`` on the global reactor; return its exit status."""
    from twisted.internet import reactor as global_reactor
    from twisted.logger import Logger

    from daemonapp.logs import start_logging

    reactor: Any = global_reactor

    log = Logger(namespace="daemonapp.cli")
    if inherited is None:
        inherited = fd0_is_listening()
    specs, problem = _prepare_listeners(config, inherited)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_CONFIG
    try:
        # before the log: a log file in state_dir needs it, and refusals are config errors
        prepare_state_dir(config)
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
    overrides: dict[str, Any] = {}
    if inherited:
        from daemonapp.status import status_socket_path

        overrides["stop_timeout"] = min(config.app.stop_timeout, SPAWNED_STOP_TIMEOUT)
        # Siblings spawned by the web server share state_dir: a status socket each.
        overrides["status_socket"] = status_socket_path(config.app.state_dir, os.getpid())
    app = build_app(config, reactor=reactor, stop_reactor=True, handle_signals=True,
                    listeners=False, status_server=True, **overrides)
    app.on_reopen_logs(target.reopen)
    if inherited:
        # The web server SIGKILLs a few seconds after its SIGTERM: job children are
        # killed at once and their jobs go back to pending with their attempt given back.
        # (A dispatcher's own stop_timeout would only lose the attempt to that SIGKILL.)
        for daemon in app.daemons.values():
            if hasattr(daemon, "jobs_snapshot"):
                daemon.stop_timeout = 0.0  # type: ignore[attr-defined]
    if inherited and not any(spec.options.get("endpoint") == "fd:0" for spec in specs):
        log.warn("fd 0 is a listening socket, but no fastcgi listener serves it "
                 "(an explicit endpoint wins)")
    try:
        build_listeners(config, app, only=specs)
    except ConfigError as e:
        for message in e.messages:
            print(message, file=sys.stderr)
        return EXIT_CONFIG

    def on_usr1(signum: int, frame: object) -> None:
        reactor.callFromThread(app.stop, "signal SIGUSR1", 0)

    def install_usr1() -> None:
        signal.signal(signal.SIGUSR1, on_usr1)

    # One entry per pid, never a shared pid file. Spawned by a web server, we only
    # announce ourselves: no takeover of siblings, no sidecar for the CGI frontend.
    entries = PidEntries(config.app.state_dir, config.path)
    try:
        entries.write(spawned=inherited)
    except OSError as e:  # a full disk (ENOSPC) or a read-only state_dir: say it, no traceback
        _error(f"cannot write the pid entry {entries.path}: {e.strerror or e}")
        target.close()
        return 1
    if not inherited:
        argv = [sys.executable, "-m", "daemonapp.cli", "run", os.path.abspath(config.path)]
        try:
            write_sidecar(config, argv)
        except (OSError, ValueError) as e:
            log.warn("could not write the CGI sidecar: {error}", error=e)
        # callLater(0): after app.run()'s own callWhenRunning has started the app and
        # its listeners bound their sockets.
        reactor.callWhenRunning(reactor.callLater, 0, take_over, app, entries)
    else:
        reactor.callWhenRunning(reactor.callLater, 0, stop_unless_listening, app)
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
