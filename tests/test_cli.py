"""Tests for the daemonapp command: check, run, status, jobs, fd 0 and CGI modes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemonapp import __version__
from daemonapp.cli import main
from daemonapp.config import load_config
from tests._processes import (
    HTTPOXY_WSGI,
    cgi_setup,
    child_env,
    finish,
    free_port,
    popen_run,
    run_as_cgi,
    run_process,
    running,
    signal_and_wait,
    stop_process,
    wait_catching,
    wait_ready,
    wait_until,
    write_cleanup_app,
    write_file,
    write_scgi_app,
)

ROOT = Path(__file__).resolve().parent.parent
DAEMONAPP = str(Path(sys.executable).parent / "daemonapp")

SCHEDULE_YAML = """
    app: {stop_timeout: 5s}
    daemons:
      collective:
        type: tests.test_config:Replicator
        run_every: 30s
        increase_idle_by: 10s
        maximum_idle: 1m
        lock: ldap
      fast:
        type: tests.test_config:Replicator
        run_every: 2s
        multiply_idle_by: 2
        priority: 5
"""


def write(directory: Path, text: str, name: str = "daemons.yaml") -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to ~107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="dcli"))
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


# ------------------------------------------------------------------ basics


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"daemonapp {__version__}\n"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists run, check, status and jobs."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "check", "status", "jobs"):
        assert f"    {command}" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, the help is printed and the status is 2."""
    assert main([]) == 2


# ------------------------------------------------------------------- check


def test_check_prints_the_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check prints each daemon's run_every, idle backoff, cap, priority and lock."""
    path = write(tmp_path, SCHEDULE_YAML)
    assert main(["check", path]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{path}: OK: 2 daemon(s), 0 listener(s)",
        f"state_dir: {tmp_path / 'var'}",
        "app: stay_alive_for -, shutdown_after -, shutdown_if_idle -, stop_timeout 5s",
        "",
        "DAEMON      TYPE                          RUN_EVERY  IDLE BACKOFF       "
        "MAXIMUM_IDLE  PRIORITY  LOCK",
        "collective  tests.test_config:Replicator  30s        40s, 50s, 1m, ...  "
        "1m            0         ldap",
        "fast        tests.test_config:Replicator  2s         4s, 8s, 16s, ...   "
        "16s           5         -",
    ]


def test_check_writes_nothing(tmp_path: Path) -> None:
    """check creates no state_dir, pid entry or sidecar."""
    path = write(tmp_path, SCHEDULE_YAML)
    assert main(["check", path]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemons.yaml"]


def test_check_reports_errors_with_status_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """check prints every error to stderr and exits 2."""
    path = write(tmp_path, """
        app: {shutdown_after: soon}
        daemons:
          c: {type: tests.test_config:Replicator, run_every: 1, colour: red}
    """)
    assert main(["check", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:1: app.shutdown_after: expected a duration")
    assert err[1].startswith(f"{path}:3: daemons.c.colour: unknown to both Daemon")
    assert err[2] == f"daemonapp: 2 error(s) in {path}; nothing was started"


def test_check_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`daemonapp check FILE | head` (the reader gone) ends with status 1 and no
    BrokenPipeError traceback."""
    path = write(tmp_path, SCHEDULE_YAML)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "daemonapp.cli", "check", path],
                                cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")


def test_check_uses_daemonapp_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Without FILE, check reads DAEMONAPP_CONFIG."""
    path = write(tmp_path, SCHEDULE_YAML)
    monkeypatch.setenv("DAEMONAPP_CONFIG", path)
    assert main(["check"]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK: 2 daemon(s)")


def test_the_argument_wins_over_daemonapp_config(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A FILE argument wins over DAEMONAPP_CONFIG."""
    good = write(tmp_path, SCHEDULE_YAML)
    bad = write(tmp_path, "app: {shutdown_after: soon}\n", name="bad.yaml")
    monkeypatch.setenv("DAEMONAPP_CONFIG", bad)
    assert main(["check", good]) == 0


def test_check_without_any_config(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """check with neither FILE nor DAEMONAPP_CONFIG is exit status 2."""
    monkeypatch.delenv("DAEMONAPP_CONFIG", raising=False)
    assert main(["check"]) == 2
    assert "a configuration file is required" in capsys.readouterr().err


def test_check_the_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp check etc/daemons.yaml` passes."""
    assert main(["check", str(ROOT / "etc" / "daemons.yaml")]) == 0
    out = capsys.readouterr().out
    assert "queues/<queue>   daemonapp.examples.queues:PrintQueue  2s" in out


# --------------------------------------------------------------------- run


def test_run_with_config_errors_exits_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """run with a bad file prints the errors, starts nothing and returns 2."""
    path = write(tmp_path, "daemons: {c: {type: nosuch, run_every: 1}}\n")
    assert main(["run", path]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:1: daemons.c.type: unknown daemon type")
    assert not (tmp_path / "var").exists()


def test_run_fastcgi_without_endpoint_needs_fd0(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A fastcgi item without endpoint, when fd 0 is no listening socket, is exit 2."""
    monkeypatch.delenv("GATEWAY_INTERFACE", raising=False)
    path = write(tmp_path, """
        listeners:
          - {protocol: fastcgi, wsgi: "tests.test_config:app"}
    """)
    from daemonapp.cli import run_config

    assert run_config(load_config(path), inherited=False) == 2
    assert capsys.readouterr().err.startswith(
        f"{path}:2: listeners[0].endpoint: no endpoint (or fd:0) means the listening socket")


# -------------------------------------------------------------------- jobs


def test_jobs_delegates_to_the_jobs_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`daemonapp jobs ARGS` calls daemonapp.jobs.cli.main(ARGS) and returns its status."""
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    module = types.ModuleType("daemonapp.jobs.cli")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "daemonapp.jobs.cli", module)
    assert main(["jobs", "show", "12"]) == 3
    assert seen == [["show", "12"]]


# ------------------------------------------------------------ real processes


def env_for(directory: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(directory)])
    for key in ("DAEMONAPP_CONFIG", "GATEWAY_INTERFACE"):
        env.pop(key, None)
    env.update(extra)
    return env


def start(directory: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    popen.setdefault("env", env_for(directory))
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([DAEMONAPP, *args], cwd=directory, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def status_of(state_dir: Path, timeout: float = 20.0) -> dict[str, Any]:
    """Poll `daemonapp status --json` until an app answers."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([DAEMONAPP, "status", str(state_dir), "--json"],
                                capture_output=True, env=env_for(state_dir), check=False)
        if result.returncode == 0:
            value: dict[str, Any] = json.loads(result.stdout)
            return value
        assert time.monotonic() < deadline, result.stderr.decode()
        time.sleep(0.05)


HELLO_YAML = """
    app: {{shutdown_after: {after}}}
    daemons:
      hello: {{type: "daemonapp.examples.hello:Hello"}}
"""


@pytest.mark.integration
def test_run_exits_zero_at_its_deadline(short_tmp: Path) -> None:
    """`daemonapp run FILE` runs the app and exits 0 at shutdown_after."""
    path = write(short_tmp, HELLO_YAML.format(after="2s"))
    status, out = finish(start(short_tmp, "run", path))
    assert status == 0, out
    assert "hello, Ada!" in out
    assert list((short_tmp / "var" / "pids").iterdir()) == []


@pytest.mark.integration
def test_run_reads_daemonapp_config(short_tmp: Path) -> None:
    """`daemonapp run` without FILE runs DAEMONAPP_CONFIG."""
    path = write(short_tmp, HELLO_YAML.format(after="1s"))
    process = start(short_tmp, "run", env=env_for(short_tmp, DAEMONAPP_CONFIG=path))
    status, out = finish(process)
    assert status == 0, out
    assert "hello, Ada!" in out


@pytest.mark.integration
def test_status_shows_a_running_app(short_tmp: Path) -> None:
    """`daemonapp status` shows the daemons of a running app, as a table and as JSON."""
    path = write(short_tmp, HELLO_YAML.format(after="60s"))
    process = start(short_tmp, "run", path)
    try:
        snapshot = status_of(short_tmp / "var")
        assert snapshot["pid"] == process.pid
        assert [d["name"] for d in snapshot["daemons"]] == ["hello"]
        table = subprocess.run([DAEMONAPP, "status", path], capture_output=True,
                               env=env_for(short_tmp), check=True).stdout.decode()
        assert table.startswith(f"pid {process.pid}  state running")
        assert "\nhello  Hello" in table
        metrics = subprocess.run([DAEMONAPP, "status", path, "--metrics"],
                                 capture_output=True, env=env_for(short_tmp),
                                 check=True).stdout.decode()
        assert 'daemonapp_daemon_runs_total{daemon="hello"}' in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        status, out = finish(process)
    assert status == 0, out
    assert not (short_tmp / "var" / "status.sock").exists()


@pytest.mark.integration
def test_status_without_an_app(short_tmp: Path) -> None:
    """`daemonapp status` with no app running exits 1 and says so."""
    result = subprocess.run([DAEMONAPP, "status", str(short_tmp)], capture_output=True,
                            env=env_for(short_tmp), check=False)
    assert result.returncode == 1
    assert b"status: no app answers in" in result.stderr


@pytest.mark.integration
def test_second_run_takes_over(short_tmp: Path) -> None:
    """A second run of the same file makes the first drain and exit 0, then serves alone."""
    path = write(short_tmp, """
        listeners:
          - {protocol: scgi, endpoint: "unix:run/app.sock", wsgi: "tests.test_config:app"}
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """)
    first = start(short_tmp, "run", path)
    second = None
    try:
        assert status_of(short_tmp / "var")["pid"] == first.pid
        second = start(short_tmp, "run", path)
        status, out = finish(first)
        assert status == 0, out
        assert "daemonapp stopping: signal SIGTERM" in out
        assert status_of(short_tmp / "var")["pid"] == second.pid
        assert os.path.exists(short_tmp / "run" / "app.sock")
        assert sorted(p.name for p in (short_tmp / "var" / "pids").iterdir()) == \
            [f"{second.pid}.json"]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                finish(process)


def http_get(port: int) -> bytes:
    """The status line of GET / on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
        return conn.makefile("rb").readline()


@pytest.mark.integration
def test_a_takeover_shares_a_tcp_port_then_serves_it_alone(short_tmp: Path) -> None:
    """A second run of a config with a tcp listener binds its port too (SO_REUSEPORT),
    the first drains and exits 0, the second serves the port; another config's app on
    that port is refused (Address already in use), as without sharing."""
    port = free_port()
    config = f"""
        listeners:
          - {{protocol: http, endpoint: "tcp:{port}:interface=127.0.0.1",
              wsgi: "tests.test_config:app"}}
        daemons:
          hello: {{type: "daemonapp.examples.hello:Hello"}}
    """
    path = write(short_tmp, config)
    first = start(short_tmp, "run", path)
    second = None
    try:
        assert status_of(short_tmp / "var")["pid"] == first.pid
        assert b" 200 " in http_get(port)
        other = short_tmp / "other"
        other.mkdir()
        intruder = start(other, "run", write(other, config))
        status, out = finish(intruder)
        assert status == 1 and "Address already in use" in out, out
        second = start(short_tmp, "run", path)
        status, out = finish(first)
        assert status == 0, out
        assert status_of(short_tmp / "var")["pid"] == second.pid
        assert b" 200 " in http_get(port)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                finish(process)


@pytest.mark.integration
def test_a_failed_takeover_leaves_the_running_app_reachable(short_tmp: Path) -> None:
    """A second run that cannot bind its tcp port exits 1 and takes no path of the first."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    first_yaml = """
        listeners:
          - {protocol: scgi, endpoint: "unix:run/a.sock", wsgi: "tests.test_config:app"}
          - {protocol: scgi, endpoint: "unix:run/b.sock", wsgi: "tests.test_config:app"}
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """
    path = write(short_tmp, first_yaml)
    first = start(short_tmp, "run", path)
    try:
        assert status_of(short_tmp / "var")["pid"] == first.pid
        before = {name: os.stat(short_tmp / name).st_ino
                  for name in ("run/a.sock", "run/b.sock", "var/status.sock")}
        busy_listener = (f'  - {{protocol: http, endpoint: "tcp:{port}:interface=127.0.0.1",'
                         ' wsgi: "tests.test_config:app"}\n')
        text = textwrap.dedent(first_yaml).lstrip("\n")
        (short_tmp / "daemons.yaml").write_text(text.replace("daemons:\n",
                                                             busy_listener + "daemons:\n"))
        second = start(short_tmp, "run", path)
        status, out = finish(second)
        assert status == 1, out
        assert "Address already in use" in out
        after = {name: os.stat(short_tmp / name).st_ino for name in before}
        assert after == before
        assert not list((short_tmp / "run").glob("*.new"))
        assert not list((short_tmp / "var").glob("*.new"))
        assert status_of(short_tmp / "var")["pid"] == first.pid
        for name in ("a.sock", "b.sock"):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(short_tmp / "run" / name))
            client.close()
        assert first.poll() is None
    finally:
        busy.close()
        first.send_signal(signal.SIGTERM)
        status, out = finish(first)
    assert status == 0, out


@pytest.mark.integration
def test_cgi_mode_answers_one_request(short_tmp: Path) -> None:
    """Started as CGI, `daemonapp run` answers through wsgiref and writes nothing."""
    path = write(short_tmp, """
        listeners:
          - {protocol: scgi, endpoint: "unix:run/app.sock", wsgi: "tests.test_config:app"}
    """)
    cgi_env = env_for(short_tmp, GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD="GET",
                      PATH_INFO="/", SERVER_NAME="localhost", SERVER_PORT="80",
                      SERVER_PROTOCOL="HTTP/1.1", DAEMONAPP_CONFIG=path)
    result = subprocess.run([DAEMONAPP, "run"], cwd=short_tmp, env=cgi_env,
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"Status: 200 OK\r\n")
    assert result.stdout.endswith(b"\r\n\r\nhello from config\n")
    assert sorted(p.name for p in short_tmp.iterdir()) == ["daemons.yaml"]


def fd0_check(stdin: Any) -> str:
    code = "from daemonapp.cli import fd0_is_listening; print(fd0_is_listening())"
    return subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True,
                          env=env_for(ROOT), check=True, timeout=30).stdout.decode().strip()


@pytest.mark.integration
def test_fd0_detection(short_tmp: Path) -> None:
    """fd 0 counts as inherited only when it is a listening socket (SO_ACCEPTCONN)."""
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(short_tmp / "l.sock"))
    listening.listen(1)
    left, right = socket.socketpair()
    try:
        assert fd0_check(listening.fileno()) == "True"
        assert fd0_check(left.fileno()) == "False"
        assert fd0_check(subprocess.DEVNULL) == "False"
    finally:
        for skt in (listening, left, right):
            skt.close()


def fcgi_record(kind: int, content: bytes, request_id: int = 1) -> bytes:
    return struct.pack("!BBHHBx", 1, kind, request_id, len(content), 0) + content


def fcgi_params(params: dict[str, str]) -> bytes:
    out = b""
    for key, value in params.items():
        k, v = key.encode(), value.encode()
        out += bytes([len(k), len(v)]) + k + v
    return out


@pytest.mark.integration
def test_fd0_mode_serves_fastcgi(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a listening socket on fd 0, run serves FastCGI on it and SIGTERM exits 0."""
    path = write(short_tmp, """
        listeners:
          - {protocol: fastcgi, wsgi: "tests.test_config:app"}
    """)
    sock_path = str(short_tmp / "web.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(sock_path)
    listening.listen(8)
    process = start(short_tmp, "run", path, stdin=listening.fileno())
    listening.close()
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(20)
        client.connect(sock_path)
        params = fcgi_params({"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/",
                              "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                              "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": ""})
        client.sendall(fcgi_record(1, struct.pack("!HB5x", 1, 0)) + fcgi_record(4, params)
                       + fcgi_record(4, b"") + fcgi_record(5, b""))
        answer = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
        client.close()
        assert b"hello from config\n" in answer
        entry = json.loads((short_tmp / "var" / "pids" / f"{process.pid}.json").read_text())
        assert entry["spawned"] is True  # its own entry, never a shared pid file
        # Siblings share state_dir: each serves status.<pid>.sock, and status finds them.
        assert (short_tmp / "var" / f"status.{process.pid}.sock").exists()
        assert not (short_tmp / "var" / "status.sock").exists()
        capsys.readouterr()
        assert main(["status", str(short_tmp / "var")]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"process {process.pid} (spawned by the web server)\n")
        assert main(["status", "--json", str(short_tmp / "var")]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["processes"][str(process.pid)]["pid"] == process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        status, out = finish(process)
    assert status == 0, out
    assert list((short_tmp / "var" / "pids").iterdir()) == []  # removed on exit
    assert not (short_tmp / "var" / f"status.{process.pid}.sock").exists()
    assert os.path.exists(sock_path)


@pytest.mark.integration
def test_run_stops_when_a_listener_cannot_bind(short_tmp: Path) -> None:
    """An address in use stops the app with exit status 1 instead of half running."""
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        path = write(short_tmp, f"""
            listeners:
              - {{protocol: http, endpoint: "tcp:{port}:interface=127.0.0.1",
                  wsgi: "tests.test_config:app"}}
            daemons:
              hello: {{type: "daemonapp.examples.hello:Hello"}}
        """)
        status, out = finish(start(short_tmp, "run", path))
    finally:
        busy.close()
    assert status == 1, out
    assert "not listening: http:tcp:" in out


@pytest.mark.integration
def test_sigusr1_drains_and_exits_zero(short_tmp: Path) -> None:
    """Under `daemonapp run`, SIGUSR1 (what web servers send) is a graceful stop."""
    path = write(short_tmp, HELLO_YAML.format(after="60s"))
    process = start(short_tmp, "run", path)
    try:
        status_of(short_tmp / "var")
    finally:
        process.send_signal(signal.SIGUSR1)
        status, out = finish(process)
    assert status == 0, out
    assert "daemonapp stopping: signal SIGUSR1" in out


@pytest.mark.integration
def test_sighup_reopens_the_log_file(short_tmp: Path) -> None:
    """After logrotate moves app.log.file away, SIGHUP makes the app write a new one."""
    path = write(short_tmp, """
        app:
          log: {file: app.log, format: json}
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """)
    process = start(short_tmp, "run", path)
    try:
        status_of(short_tmp / "var")
        os.rename(short_tmp / "app.log", short_tmp / "app.log.1")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reopening" not in (short_tmp / "app.log.1").read_text():
            assert time.monotonic() < deadline, "SIGHUP was not handled"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGTERM)
        status, out = finish(process)
    assert status == 0, out
    rotated = (short_tmp / "app.log.1").read_text()
    fresh = (short_tmp / "app.log").read_text()
    assert "hello, {who}!" in rotated
    assert "daemonapp stopping" in fresh
    assert "daemonapp stopping" not in rotated
    record = json.loads(fresh.split("\n")[0].strip("\x1e"))
    assert "log_format" in record


# --------------------------------------- DESIGN §3/§4's `run` rules, from outside


@pytest.mark.integration
def test_run_sigusr1_drains_exit_0(tmp_path: Path) -> None:
    """In `daemonapp run`, SIGUSR1 drains and exits 0 (web servers' stop signal)."""
    cfg = write_scgi_app(tmp_path)
    with running(popen_run(tmp_path, cfg)) as proc:
        assert wait_ready(proc, tmp_path / "run" / "app.sock")
        assert wait_catching(proc, signal.SIGUSR1)  # `run` installs it once the reactor runs
        assert signal_and_wait(proc, signal.SIGUSR1, timeout=15)
        assert proc.returncode == 0


@pytest.mark.integration
def test_run_as_plain_cgi_writes_nothing(tmp_path: Path) -> None:
    """`daemonapp run` started as plain CGI answers one request, exits, writes no state_dir."""
    cgi_setup(tmp_path)
    result = run_as_cgi(tmp_path, [str(DAEMONAPP), "run", str(tmp_path / "d.yaml")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Status: 200")
    assert "hello x=1" in result.stdout
    assert not (tmp_path / "var").exists()


@pytest.mark.integration
def test_run_as_plain_cgi_scrubs_http_env(tmp_path: Path) -> None:
    """`daemonapp run` as plain CGI keeps HTTP_* out of os.environ (httpoxy)."""
    cgi_setup(tmp_path)
    write_file(tmp_path / "cgiwsgi.py", HTTPOXY_WSGI)
    result = run_as_cgi(tmp_path, [str(DAEMONAPP), "run", str(tmp_path / "d.yaml")],
                        HTTP_PROXY="http://evil.example:1")
    assert result.stdout.startswith("Status: 200"), result.stdout + result.stderr
    assert "header=s3cret os.environ=-" in result.stdout


@pytest.mark.integration
def test_status_command_without_app(tmp_path: Path) -> None:
    """`daemonapp status STATE_DIR` with no app running says so and exits non-zero."""
    result = run_process([str(DAEMONAPP), "status", str(tmp_path)], cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr


@pytest.mark.integration
def test_daemonapp_run_sigterm_exits_0_and_status_answers(tmp_path: Path) -> None:
    """`daemonapp status STATE_DIR` shows a running app's daemons; SIGTERM exits 0."""
    write_cleanup_app(tmp_path, name="sweeper")
    proc = subprocess.Popen([str(DAEMONAPP), "run", "d.yaml"], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status: list[subprocess.CompletedProcess[str]] = []

        def answered() -> bool:
            result = run_process([str(DAEMONAPP), "status", str(tmp_path / "var")], cwd=tmp_path)
            status[:] = [result]
            return result.returncode == 0 or proc.poll() is not None

        assert wait_until(answered)
        assert status[0].returncode == 0, status[0].stderr
        assert "sweeper" in status[0].stdout
        state = tmp_path / "var"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert signal_and_wait(proc, signal.SIGTERM, timeout=15)
        assert proc.returncode == 0
    finally:
        stop_process(proc)
