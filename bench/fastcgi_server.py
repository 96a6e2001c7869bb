"""One of our FastCGI configurations for bench/fastcgi.sh, on a unix socket.

Usage: python bench/fastcgi_server.py MODE SOCKET ANCHORS_DIR
MODE: native (native handler), wsgi (anchors/hello_wsgi.py, default thread pool),
wsgi0 (the same with threads: 0), busy (native beside 100 always-busy daemons,
max_items 10), busy2ms (the same with the app's time_slice at 2 ms instead of 10 ms),
native_p1, native_p2, wsgi_p1, wsgi_p2 (native or wsgi through `daemonapp run` with
app.processes 1 or 2: DESIGN §11).
A DaemonApp serves the listener; SIGTERM stops it (every process of it).
With $FASTCGI_BENCH_PROFILE set to a file name, the app runs under cProfile and the
stats are dumped there when it ends (python -m pstats FILE to read them).
$FASTCGI_BENCH_THREADS sets the pool size of the wsgi modes (each process's) and
$FASTCGI_BENCH_TIME_SLICE the app's time_slice, $FASTCGI_BENCH_SWITCH_INTERVAL the GIL's
switch interval in seconds (for experiments).
"""

from __future__ import annotations

import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE, sys.argv[3]]

from twisted.internet import reactor  # noqa: E402

from daemonapp.app import DaemonApp  # noqa: E402
from daemonapp.listeners import build_listener  # noqa: E402
from daemonapp.logs import start_logging  # noqa: E402


def main() -> None:
    """Build the app for MODE and run it until SIGTERM."""
    mode, sock = sys.argv[1], sys.argv[2]
    if mode[:-1] in ("native_p", "wsgi_p"):
        run_processes(mode, sock)
    options: dict[str, Any] = {"protocol": "fastcgi", "endpoint": f"unix:{sock}:mode=0666"}
    if mode in ("native", "busy", "busy2ms"):
        options["native"] = "fastcgi_apps:hello"
    elif mode == "wsgi":
        options["wsgi"] = "hello_wsgi:app"
        if os.environ.get("FASTCGI_BENCH_THREADS"):  # experiments: another pool size
            options["threads"] = int(os.environ["FASTCGI_BENCH_THREADS"])
    elif mode == "wsgi0":
        options.update(wsgi="hello_wsgi:app", threads=0)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    if os.environ.get("FASTCGI_BENCH_SWITCH_INTERVAL"):  # experiments: the GIL's
        sys.setswitchinterval(float(os.environ["FASTCGI_BENCH_SWITCH_INTERVAL"]))
    start_logging(level="warn", stream=sys.stderr)
    rx: Any = reactor
    # busy2ms, and experiments: another scheduler time slice (DaemonApp's default: 10 ms)
    time_slice = os.environ.get("FASTCGI_BENCH_TIME_SLICE", "2ms" if mode == "busy2ms" else "10ms")
    app = DaemonApp(reactor=rx, time_slice=time_slice)
    app.add_listener(build_listener(options, reactor=rx, base_dir=os.getcwd()))
    if mode in ("busy", "busy2ms"):
        from fastcgi_apps import Busy

        for index in range(100):
            app.add(Busy(name=f"busy{index}"))
    profile_to = os.environ.get("FASTCGI_BENCH_PROFILE")
    if not profile_to:
        raise SystemExit(app.run())
    import cProfile

    profiler = cProfile.Profile()
    status = profiler.runcall(app.run)
    profiler.dump_stats(profile_to)
    raise SystemExit(status)


def run_processes(mode: str, sock: str) -> None:
    """`daemonapp run` of a file with app.processes (exec: SIGTERM reaches the supervisor)."""
    import tempfile

    processes = int(mode[-1])
    app_line = "native: fastcgi_apps:hello" if mode.startswith("native") else \
        "wsgi: hello_wsgi:app"
    if mode.startswith("wsgi") and os.environ.get("FASTCGI_BENCH_THREADS"):
        app_line += f"\n    threads: {int(os.environ['FASTCGI_BENCH_THREADS'])}"
    directory = tempfile.mkdtemp(prefix="fcgi-processes.", dir=os.path.dirname(sock))
    config = os.path.join(directory, "d.yaml")
    with open(config, "w") as f:
        f.write(f"app:\n  state_dir: ./var\n  processes: {processes}\n"
                f"  log: {{level: warn}}\nlisteners:\n  - protocol: fastcgi\n"
                f"    endpoint: unix:{sock}:mode=0666\n    {app_line}\n")
    # the workers import the apps as the first process does
    os.environ["PYTHONPATH"] = os.pathsep.join(sys.path[:3])
    os.execv(sys.executable, [sys.executable, "-m", "daemonapp.cli", "run", config])


if __name__ == "__main__":
    main()
