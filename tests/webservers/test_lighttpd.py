"""lighttpd starts `daemonapp run` itself (DESIGN §4, "Started by the web server").

Through mod_fastcgi's ``bin-path`` (one process, then ``max-procs`` 2 sharing one
state_dir) and through mod_cgi (the same entry point as a plain CGI program). Every
test writes its configs into a short /tmp directory, runs lighttpd on a free loopback
port, and kills whatever it started at the end.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.webservers._lighttpd import (
    APP,
    MARK,
    MIB,
    PLAIN_CONFIG,
    ROOT,
    TICKER_CONFIG,
    TIMEOUT,
    Lighttpd,
    Site,
    alive,
    daemonapp_argv,
    echo_expected,
    hello_pid,
    marked_pids,
    site,
    wait_until,
)

pytestmark = pytest.mark.integration


def fastcgi_server(where: Site, *, max_procs: int, bin_path: str,
                   environment: dict[str, str], extra: str = "") -> str:
    """lighttpd's mod_fastcgi block: ``/app`` served by processes it spawns itself."""
    env = ", ".join(f'"{k}" => "{v}"' for k, v in environment.items())
    return (
        extra +
        'fastcgi.server = ("/app" => ((\n'
        f'    "socket" => "{where.root / "fcgi.sock"}",\n'
        f'    "bin-path" => "{bin_path}",\n'
        f'    "bin-environment" => ({env}),\n'
        f'    "max-procs" => {max_procs},\n'
        '    "check-local" => "disable",\n'
        ")))\n")


def spawned(server: Lighttpd, marker: str) -> list[int]:
    """The processes lighttpd spawned (marked ones other than the reaper and lighttpd)."""
    return sorted(set(marked_pids(marker)) - {server.reaper.pid, server.server_pid or 0})


def test_bin_path_serves_runs_daemons_and_stops_with_lighttpd() -> None:
    """bin-path: GET, 1 MiB POST and answer, a daemon between hits; a stop leaves nothing."""
    with site("dwsl-") as where:
        config = where.write_config(TICKER_CONFIG)
        command = " ".join([*daemonapp_argv(), "run", str(config)])
        server = Lighttpd(where, fastcgi_server(
            where, max_procs=1, bin_path=command, environment={"PYTHONPATH": str(ROOT)}),
            modules=("mod_fastcgi",))

        pid = hello_pid(server.get("/app/"))
        assert spawned(server, where.marker) == [pid]  # the scan below finds the app
        body = os.urandom(MIB)
        echo = server.post("/app/echo", body)
        assert (echo.status, echo.body) == (200, echo_expected(body))
        big = server.get("/app/big")
        assert (big.status, len(big.body), set(big.body)) == (200, MIB, {ord("x")})

        def ticks() -> int:
            answer = server.get("/app/ticks")
            assert answer.status == 200
            return int(answer.body)

        first = ticks()
        # what the test is about: time passing between two hits (polled, not slept)
        wait_until(lambda: ticks() > first, "the Ticker to run between two hits")
        second = ticks()
        assert second > first  # the Ticker ran between the hits (run_every 0.1 s)
        assert hello_pid(server.get("/app/")) == pid  # one process served all of it

        server.stop(timeout=5.0)  # the spawned app's drain budget is 2 s
        assert marked_pids(where.marker) == []
        assert server.exit_status(pid) == 0, where.read("server.log")
        log = where.read("server.log")
        assert "daemonapp stopping: signal SIGTERM" in log
        assert "listener fastcgi:fd:0 drained" in log
        assert "daemonapp ended with exit status 0" in log


def entries(state_dir: Path) -> list[Path]:
    """The pid entries in ``state_dir`` (one file per process)."""
    pids = state_dir / "pids"
    return sorted(pids.iterdir()) if pids.is_dir() else []


def _runs(log_file: Path) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each complete run written by the Exclusive daemon."""
    started: dict[int, float] = {}
    runs = []
    for line in log_file.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # a line being written
        kind, pid, at = parts[0], int(parts[1]), float(parts[2])
        if kind == "start":
            started[pid] = at
        elif kind == "end" and pid in started:
            runs.append((started.pop(pid), at, pid))
    return sorted(runs)


def _hellos_around_an_upload(server: Lighttpd, body: bytes) -> set[int]:
    """The pids answering a hello before and during a held upload of ``body`` to /echo."""
    before = hello_pid(server.get("/app/"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as upload:
        upload.sendall(b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
                       + body[:4096])
        during = hello_pid(server.get("/app/"))
        upload.sendall(body[4096:])
        answer = b""
        while chunk := upload.recv(65536):
            answer += chunk
    head, _, echoed = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert echoed == echo_expected(body)
    return {before, during}


def test_max_procs_siblings_share_state_dir_and_a_lock() -> None:
    """max-procs 2: both siblings serve and live on; a locked daemon never runs in both."""
    with site("dwsm-") as where:
        exclusive_log = where.root / "exclusive.log"
        config = where.write_config(
            "app: {state_dir: ./var}\n"
            "listeners:\n"
            f'  - {{protocol: fastcgi, wsgi: "{APP}:application"}}\n'
            "daemons:\n"
            f'  exclusive: {{type: "{APP}:Exclusive", lock: exclusive,'
            f' log_file: "{exclusive_log}"}}\n')
        # the configuration through the environment this time: bin-path without argument
        command = " ".join([*daemonapp_argv(), "run"])
        server = Lighttpd(where, fastcgi_server(
            where, max_procs=2, bin_path=command,
            environment={"PYTHONPATH": str(ROOT), "DAEMONAPP_CONFIG": str(config)},
            # bodies go to the app as they arrive: an upload can be held open in a sibling
            extra="server.stream-request-body = 2\n"),
            modules=("mod_fastcgi",))
        wait_until(lambda: len(spawned(server, where.marker)) == 2, "two spawned processes")
        siblings = spawned(server, where.marker)
        started = time.monotonic()

        # lighttpd gives a request to its first running sibling unless another one has
        # fewer requests in flight: while an upload is held open in one, a hello goes to
        # the other. A round can miss (a sibling not yet marked running): try again.
        body = os.urandom(MIB)
        answered: set[int] = set()

        def both_answer() -> bool:
            answered.update(_hellos_around_an_upload(server, body))
            return answered == set(siblings)

        wait_until(both_answer, f"hellos from both siblings {siblings}")

        wait_until(lambda: exclusive_log.exists() and len(_runs(exclusive_log)) >= 10
                   and time.monotonic() - started >= 2.0, "runs of the exclusive daemon")
        assert all(alive(pid) for pid in siblings), "a sibling stopped the other"
        assert spawned(server, where.marker) == siblings
        state_dir = where.root / "var"
        # one pid entry per process at most (never a shared pid file), no sidecar
        assert {p.name for p in entries(state_dir)} <= {f"{pid}.json" for pid in siblings}
        assert not (state_dir / "cgi.marshal").exists()

        server.stop(timeout=5.0)
        assert marked_pids(where.marker) == []
        assert [server.exit_status(pid) for pid in siblings] == [0, 0]
        assert entries(state_dir) == []  # each removed its own
        log = where.read("server.log")
        assert "taking over" not in log

        runs = _runs(exclusive_log)
        assert len(runs) >= 10
        overlaps = [(a, b) for a in runs for b in runs
                    if a[2] < b[2] and max(a[0], b[0]) < min(a[1], b[1])]
        assert overlaps == [], "the locked daemon ran in both siblings at once"
        assert {pid for _, _, pid in runs} <= set(siblings)


def test_mod_cgi_runs_the_same_entry_point_as_plain_cgi() -> None:
    """mod_cgi: `daemonapp run` answers one request per process; no daemon, no state."""
    with site("dwsc-") as where:
        config = where.write_config(TICKER_CONFIG)
        htdocs = where.root / "htdocs"
        htdocs.mkdir()
        # mod_cgi passes an almost empty environment: the wrapper sets what the app needs
        wrapper = htdocs / "app.cgi"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"export PYTHONPATH={ROOT} DAEMONAPP_CONFIG={config} {MARK}={where.marker}\n"
            f"exec {' '.join(daemonapp_argv())} run\n")
        wrapper.chmod(0o755)
        server = Lighttpd(where, 'cgi.assign = (".cgi" => "")\n', modules=("mod_cgi",))

        first = hello_pid(server.get("/app.cgi/"))
        body = os.urandom(MIB)
        echo = server.post("/app.cgi/echo", body)
        assert (echo.status, echo.body) == (200, echo_expected(body))
        big = server.get("/app.cgi/big")
        assert (big.status, len(big.body)) == (200, MIB)
        ticks = server.get("/app.cgi/ticks")
        assert (ticks.status, ticks.body) == (200, b"0\n")  # no daemon ran
        second = hello_pid(server.get("/app.cgi/"))
        assert second != first  # one process per request
        wait_until(lambda: not alive(first) and not alive(second), "the CGI processes to end")
        assert spawned(server, where.marker) == []  # none stays behind

        state_dir = where.root / "var"
        assert not state_dir.exists() or list(state_dir.iterdir()) == []
        assert "Traceback" not in where.read("error.log") + where.read("server.log")
        server.stop()
        assert marked_pids(where.marker) == []


def test_max_requests_ends_the_process_and_lighttpd_starts_a_fresh_one() -> None:
    """max_requests 3 under bin-path: the process exits 0 after 3 answers and lighttpd
    spawns a new one for the next request; no request fails."""
    with site("dwsm-") as where:
        config = where.write_config(PLAIN_CONFIG.replace(
            'application"}', 'application", max_requests: 3}'))
        command = " ".join([*daemonapp_argv(), "run", str(config)])
        server = Lighttpd(where, fastcgi_server(
            where, max_procs=1, bin_path=command, environment={"PYTHONPATH": str(ROOT)}),
            modules=("mod_fastcgi",))
        first = [hello_pid(server.get("/app/")) for _ in range(3)]
        assert len(set(first)) == 1
        wait_until(lambda: not alive(first[0]), "the first process to exit after max_requests")
        # lighttpd reaps it (its status is in lighttpd's hands): the app's log says 0
        log = where.read("server.log")
        assert "max_requests" in log and "daemonapp ended with exit status 0" in log, log
        later = [hello_pid(server.get("/app/")) for _ in range(3)]
        assert len(set(later)) == 1 and later[0] != first[0]
