"""Tests for daemonapp.tap: the twistd Options, makeService, and real twistd runs."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from twisted.application.service import IService, IServiceMaker
from twisted.python import usage

from daemonapp.app import DaemonApp
from daemonapp.tap import Options, makeService
from tests._processes import (
    BAD_CONFIG,
    finish,
    log_shows,
    popen_twistd,
    run_process,
    running,
    signal_and_wait,
    wait_catching,
    wait_ready,
    wait_until,
    write_cleanup_app,
    write_file,
)

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")

SLOW_MODULE = '''
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from daemonapp.daemon import Daemon


class Slow(Daemon):
    """One slow item: marks when it starts, and when it ends (or never ends)."""

    run_every = 100

    def __init__(self, *, marker, seconds=1.0, forever=False, **kw):
        super().__init__(**kw)
        self.marker = marker
        self.seconds = seconds
        self.forever = forever
        self.done = False

    def get_work(self):
        if self.done:
            return None
        self.done = True
        return 1

    def do_work(self, job):
        open(self.marker + ".started", "w").close()
        if self.forever:
            return Deferred()
        return deferLater(self.reactor, self.seconds,
                          lambda: open(self.marker + ".done", "w").close())
'''


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "daemons.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def test_options_load_the_config(tmp_path: Path) -> None:
    """-c loads and validates the file in postOptions."""
    path = write(tmp_path, "app: {shutdown_after: 5s}\n")
    options = Options()
    options.parseOptions(["-c", path])
    assert options.config is not None
    assert options.config.app.shutdown_after == 5.0


def test_options_report_every_error(tmp_path: Path) -> None:
    """Config errors are one UsageError holding every FILE:LINE message."""
    path = write(tmp_path, """
        app:
          shutdown_after: soon
          stop_timeout: never
    """)
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["-c", path])
    text = str(info.value)
    assert f"{path}:2: app.shutdown_after: expected a duration" in text
    assert f"{path}:3: app.stop_timeout: expected a duration" in text


def test_options_need_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -c and DAEMONAPP_CONFIG, the options are a usage error."""
    monkeypatch.delenv("DAEMONAPP_CONFIG", raising=False)
    with pytest.raises(usage.UsageError, match="a configuration file is required"):
        Options().parseOptions([])


def test_options_fall_back_to_the_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """DAEMONAPP_CONFIG is used when -c is not given."""
    path = write(tmp_path, "app: {stop_timeout: 4s}\n")
    monkeypatch.setenv("DAEMONAPP_CONFIG", path)
    options = Options()
    options.parseOptions([])
    assert options["config"] == path


def test_make_service_builds_the_app(tmp_path: Path) -> None:
    """makeService returns the DaemonApp, an IService that stops its reactor when it ends."""
    path = write(tmp_path, """
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """)
    options = Options()
    options.parseOptions(["-c", path])
    service = makeService(options)
    assert isinstance(service, DaemonApp)
    assert IService.providedBy(service)
    assert list(service.daemons) == ["hello"]
    assert service.stop_reactor is True


def test_dropin_points_at_tap() -> None:
    """plugins/daemonapp_plugin.py is a ServiceMaker for daemonapp.tap named daemonapp."""
    spec = importlib.util.spec_from_file_location("daemonapp_plugin",
                                                  ROOT / "plugins" / "daemonapp_plugin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    maker = module.daemonapp
    assert IServiceMaker.providedBy(maker)
    assert (maker.tapname, maker.module) == ("daemonapp", "daemonapp.tap")


# ---------------------------------------------------------------- real twistd


def twistd(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    env.pop("DAEMONAPP_CONFIG", None)
    return subprocess.Popen([TWISTD, "-n", "--pidfile=", "daemonapp", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


@pytest.mark.integration
def test_twistd_exits_zero_at_its_deadline(tmp_path: Path) -> None:
    """`twistd -n daemonapp -c FILE` with shutdown_after: 2s exits 0 by itself."""
    path = write(tmp_path, """
        app: {shutdown_after: 2s}
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """)
    status, out = finish(twistd(tmp_path, "-c", path))
    assert status == 0, out
    assert "hello, Ada!" in out
    assert "hard deadline" in out


@pytest.mark.integration
def test_twistd_config_errors_are_a_usage_error(tmp_path: Path) -> None:
    """A bad file makes twistd print every error and exit with its usage status, 1."""
    path = write(tmp_path, """
        app: {shutdown_after: soon}
        daemons:
          c: {type: "daemonapp.examples.hello:Hello", colour: red}
    """)
    status, out = finish(twistd(tmp_path, "-c", path))
    assert status == 1, out
    assert f"{path}:1: app.shutdown_after: expected a duration" in out
    assert f"{path}:3: daemons.c.colour: unknown to both Daemon and " \
           "daemonapp.examples.hello:Hello" in out


@pytest.mark.integration
def test_sigterm_waits_for_a_slow_run(tmp_path: Path) -> None:
    """SIGTERM during a slow do_work lets it finish, then twistd exits 0."""
    (tmp_path / "slowmod.py").write_text(SLOW_MODULE)
    marker = tmp_path / "m"
    path = write(tmp_path, f"""
        daemons:
          slow: {{type: "slowmod:Slow", marker: "{marker}", seconds: 1.0}}
    """)
    process = twistd(tmp_path, "-c", path)
    wait_for(tmp_path / "m.started")
    process.send_signal(signal.SIGTERM)
    status, out = finish(process)
    assert status == 0, out
    assert (tmp_path / "m.done").exists()


@pytest.mark.integration
def test_abandoned_work_exits_one(tmp_path: Path) -> None:
    """A run that outlives stop_timeout is abandoned and twistd exits 1."""
    (tmp_path / "slowmod.py").write_text(SLOW_MODULE)
    marker = tmp_path / "m"
    path = write(tmp_path, f"""
        app: {{stop_timeout: 0.5s}}
        daemons:
          slow: {{type: "slowmod:Slow", marker: "{marker}", forever: true}}
    """)
    process = twistd(tmp_path, "-c", path)
    wait_for(tmp_path / "m.started")
    process.send_signal(signal.SIGTERM)
    status, out = finish(process)
    assert status == 1, out
    assert "abandoned work after stop_timeout" in out


TAC = """
from twisted.application import service
from twisted.internet.defer import Deferred

from daemonapp import Daemon, DaemonApp


class Stuck(Daemon):
    run_every = 1

    def get_work(self):
        return 1

    def do_work(self, job):
        open("started", "w").close()
        return Deferred()  # never fires: the stop abandons it


application = service.Application("stuck")
app = DaemonApp(shutdown_after="0.3s", stop_timeout="0.3s")
app.add(Stuck())
app.setServiceParent(application)
"""


@pytest.mark.integration
def test_a_tac_app_that_abandons_work_exits_one(tmp_path: Path) -> None:
    """A DaemonApp in a .tac (`twistd -ny app.tac`, no daemonapp plugin): abandoned work
    makes the process exit 1 all the same (DESIGN §2)."""
    (tmp_path / "app.tac").write_text(TAC)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-y", "app.tac"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    status, out = finish(process)
    assert (tmp_path / "started").exists()
    assert status == 1, out
    assert "abandoned work after stop_timeout" in out


EMBEDDER = """
import atexit, sys
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from daemonapp import Daemon, DaemonApp

atexit.register(lambda: open("atexit-ran", "w").close())  # (coverage saving its data)


class Stuck(Daemon):
    run_every = 1

    def get_work(self):
        return 1

    def do_work(self, job):
        return Deferred()  # never fires: the stop abandons it


app = DaemonApp(shutdown_after="0.2s", stop_timeout="0.2s", handle_signals=False)
app.add(Stuck())
reactor.callWhenRunning(app.startService)
reactor.run()
print("embedder: app ended with", app.exit_status, flush=True)
sys.exit(3)  # the program's own exit status
"""


@pytest.mark.integration
def test_a_program_that_runs_the_reactor_keeps_its_own_exit(tmp_path: Path) -> None:
    """Outside twistd, a program that runs the reactor itself decides its exit status,
    and its atexit hooks run: abandoned work does not take its exit over."""
    (tmp_path / "embed.py").write_text(EMBEDDER)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "embed.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert "app ended with 1" in done.stdout, done.stdout + done.stderr
    assert (tmp_path / "atexit-ran").exists()
    assert done.returncode == 3


@pytest.mark.integration
def test_twistd_pidfile_and_logfile_work(tmp_path: Path) -> None:
    """twistd's own --pidfile and --logfile work as usual with the daemonapp plugin."""
    path = write(tmp_path, """
        app: {shutdown_after: 1s}
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile", str(tmp_path / "app.pid"), "--logfile",
         str(tmp_path / "app.log"), "daemonapp", "-c", path],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(tmp_path / "app.pid")
    assert (tmp_path / "app.pid").read_text().strip() == str(process.pid)
    status, out = finish(process)
    assert status == 0, out
    assert "hello, Ada!" in (tmp_path / "app.log").read_text()
    assert not (tmp_path / "app.pid").exists()


@pytest.mark.integration
@pytest.mark.skipif(os.getuid() != 0, reason="--uid needs root")
def test_twistd_uid_gets_the_state_dir() -> None:
    """Under twistd --uid/--gid the state_dir belongs to that user, who runs the app."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    directory = Path(tempfile.mkdtemp(prefix="dtap"))
    try:
        directory.chmod(0o755)
        path = write(directory, """
            app: {shutdown_after: 1s}
            daemons:
              hello: {type: "daemonapp.examples.hello:Hello", lock: hello}
        """)
        os.chmod(path, 0o644)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--uid", str(nobody.pw_uid), "--gid",
             str(nobody.pw_gid), "daemonapp", "-c", path],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        status, out = finish(process)
        assert status == 0, out
        info = (directory / "var").stat()
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert (directory / "var" / "locks").stat().st_uid == nobody.pw_uid
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------- DESIGN §3's twistd rules, from outside


@pytest.mark.integration
def test_twistd_config_error_usage_status(tmp_path: Path) -> None:
    """Under twistd a config error prints the same FILE:LINE: key text, usage-error status."""
    write_file(tmp_path / "d.yaml", BAD_CONFIG)
    result = run_process([str(TWISTD), "-n", "daemonapp", "-c", "d.yaml"], cwd=tmp_path)
    assert result.returncode != 0
    assert "d.yaml:6: daemons.collective.run_every: " in result.stdout + result.stderr


@pytest.mark.integration
def test_twistd_exits_by_itself_at_deadline(tmp_path: Path) -> None:
    """`twistd -n daemonapp -c FILE` exits 0 by itself at its hard deadline."""
    write_cleanup_app(tmp_path, app="  shutdown_after: 0.5s\n")
    result = run_process([str(TWISTD), "-n", "--pidfile=", "daemonapp", "-c", "d.yaml"],
                         cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_twistd_sigterm_exits_0(tmp_path: Path) -> None:
    """Under twistd a SIGTERM is a planned stop: exit 0, not 143."""
    write_cleanup_app(tmp_path)
    with running(popen_twistd(tmp_path)) as proc:
        assert wait_ready(proc, tmp_path / "var" / "status.sock")
        assert proc.poll() is None
        assert wait_catching(proc, signal.SIGHUP)  # the app's handlers are in
        assert signal_and_wait(proc, signal.SIGTERM, timeout=15)
        assert proc.returncode == 0


@pytest.mark.integration
def test_twistd_sighup_survives(tmp_path: Path) -> None:
    """Under twistd a SIGHUP does not kill the process."""
    write_cleanup_app(tmp_path)
    with running(popen_twistd(tmp_path)) as proc:
        assert wait_ready(proc, tmp_path / "var" / "status.sock")
        assert wait_catching(proc, signal.SIGHUP)  # the app's handlers are in
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: log_shows(tmp_path / "twistd.log", "SIGHUP: reopening log files"))
        assert proc.poll() is None
        assert signal_and_wait(proc, signal.SIGTERM, timeout=15)
        assert proc.returncode == 0
