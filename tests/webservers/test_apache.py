"""Apache 2.4 spawning `daemonapp run` (issue 9, DESIGN §4 "Started by the web server").

Each test starts a real Apache (Debian's package) as root on a free loopback port, with a
self-contained httpd.conf written to a short /tmp directory. Apache runs its workers,
mod_fcgid's process manager and mod_cgid's daemon as www-data, so the app runs from a
runtime that user can reach (tests/webservers/_www.py): Debian's /usr/bin/python3.11 (in
a bare venv) with a PYTHONPATH the wrapper script gets from FcgidInitialEnv (mod_fcgid
passes nothing else) or from SetEnv (mod_cgid).

- mod_fcgid: GET, a 1 MiB POST, a 1 MiB answer, a daemon running between hits;
  FcgidMaxRequestsPerProcess and the idle timeout retire the process (SIGTERM → exit 0,
  which mod_fcgid logs) and the next request gets a new one; stopping Apache leaves no
  app behind.
- mod_cgid (mpm_event's CGI module: fd 0 is a *connected* unix socket): one request per
  process through wsgiref's CGIHandler, nothing written in state_dir.
- mod_proxy_fcgi against a daemon the test runs itself (as root): the listener's unix
  socket is 0660 in a directory it creates 0750, both group www-data (`socket_group`), so
  Apache's workers reach it and nobody else does.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._env import unavailable
from tests.webservers._www import WwwRuntime, www_runtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APACHE = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
TIMEOUT = 15.0
MIB = 1024 * 1024

#: One script for FastCGI and CGI: the config and PYTHONPATH come from the environment
#: the web server sets (FcgidInitialEnv, SetEnv). The second line is a diagnostic for the
#: tests: what fd 0 is (mod_fcgid: the listening socket, mod_cgid: a connected one).
WRAPPER = """\
#!/bin/sh
echo "wrapper pid=$$ fd0=$(readlink /proc/self/fd/0)" >&2
exec {python} -m daemonapp.cli run
"""

APP_CONFIG = """\
app: {{state_dir: {state_dir}}}
listeners:
  - {{protocol: fastcgi, wsgi: "spawned_app:application"}}
daemons:
  ticker: {{type: "spawned_app:Ticker"}}
"""

HTTPD_CONF = """\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}/run"
ErrorLog "{root}/error.log"
LogLevel info
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule alias_module {modules}/mod_alias.so
User www-data
Group www-data
DocumentRoot "{root}/htdocs"
StartServers 1
ServerLimit 2
ThreadsPerChild 8
MinSpareThreads 8
MaxSpareThreads 16
MaxRequestWorkers 16
"""

FCGID_CONF = """\
LoadModule fcgid_module {modules}/mod_fcgid.so
LogLevel info fcgid:debug
FcgidIPCDir "{root}/fcgid"
FcgidProcessTableFile "{root}/fcgid/table"
# The app's process gets these variables and PATH only: not Apache's environment, and
# SetEnv reaches each request's FastCGI params, not the process.
FcgidInitialEnv DAEMONAPP_CONFIG "{config}"
FcgidInitialEnv PYTHONPATH "{pythonpath}"
# The default FcgidMaxRequestLen is 131072 bytes (128 KiB): a larger body gets a 500
# ("HTTP request length ... exceeds MaxRequestLen" in the error log).
FcgidMaxRequestLen 4194304
# The default (3) keeps up to 3 processes per class alive whatever FcgidIdleTimeout says.
FcgidMinProcessesPerClass 0
# How soon the process manager kills retired processes and reaps them (default 3 s).
FcgidErrorScanInterval 1
FcgidZombieScanInterval 1
Alias /app "{root}/cgi/app"
<Directory "{root}/cgi">
    Options +ExecCGI
    SetHandler fcgid-script
    Require all granted
</Directory>
"""

CGID_CONF = """\
LoadModule cgid_module {modules}/mod_cgid.so
LoadModule env_module {modules}/mod_env.so
ScriptSock "{root}/run/cgid.sock"
ScriptAlias /app "{root}/cgi/app"
<Directory "{root}/cgi">
    Require all granted
    SetEnv DAEMONAPP_CONFIG "{config}"
    SetEnv PYTHONPATH "{pythonpath}"
</Directory>
"""


PROXY_FCGI_CONF = """\
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_fcgi_module {modules}/mod_proxy_fcgi.so
ProxyPass "/app/" "unix:{socket}|fcgi://localhost/"
"""

# The daemon runs as the test's user: ./var belongs to www-data (for the spawned
# processes) and would be refused as another user's state_dir, so it has its own.
DAEMON_CONFIG = """\
app: {{state_dir: ./daemon-var}}
listeners:
  - protocol: fastcgi
    endpoint: unix:{socket}
    mode: 0660
    socket_group: www-data
    script_name: /app
    wsgi: tests.webservers.spawned_app:application
daemons:
  ticker: {{type: "tests.webservers.spawned_app:Ticker"}}
"""


@pytest.fixture(scope="module")
def www() -> Iterator[WwwRuntime]:
    """The runtime www-data runs the app with (the venv's packages, or a copy of them)."""
    if not os.access(APACHE, os.X_OK) or not (MODULES / "mod_fcgid.so").exists():
        unavailable("apache2 and libapache2-mod-fcgid are not installed (.ci/run installs "
                    "them)")
    path = Path(tempfile.mkdtemp(prefix="dwww-", dir="/tmp"))
    try:
        yield www_runtime(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Site:
    """An Apache instance and the app it spawns, all under one /tmp directory."""

    def __init__(self, www: WwwRuntime) -> None:
        self.www = www
        self.root = Path(tempfile.mkdtemp(prefix="dap-", dir="/tmp"))
        self.root.chmod(0o755)  # www-data reaches the script, the config and state_dir
        self.config = self.root / "app.yaml"
        self.state_dir = self.root / "var"
        self.error_log = self.root / "error.log"
        self.script = self.root / "cgi" / "app"
        self.port = 0
        self.server: subprocess.Popen[bytes] | None = None
        for name in ["cgi", "htdocs", "run"]:
            (self.root / name).mkdir()
            (self.root / name).chmod(0o755)  # whatever the umask
        for name, mode in [("var", 0o700), ("fcgid", 0o700)]:
            (self.root / name).mkdir()
            www.chown(self.root / name, mode)
        self.config.write_text(APP_CONFIG.format(state_dir=self.state_dir))
        self.config.chmod(0o644)
        self.script.write_text(WRAPPER.format(python=www.python))
        self.script.chmod(0o755)

    def start(self, modules_conf: str, extra: str = "") -> None:
        """Start Apache with ``modules_conf`` (FCGID_CONF or CGID_CONF) plus ``extra``."""
        self.port = _free_port()
        fields = {"root": self.root, "port": self.port, "modules": MODULES,
                  "config": self.config, "pythonpath": self.www.pythonpath}
        conf = self.root / "httpd.conf"
        conf.write_text(HTTPD_CONF.format(**fields) + modules_conf.format(**fields) + extra)
        # Apache's own environment stays minimal: the app must get what it needs from
        # FcgidInitialEnv / SetEnv, as it would from a system-started Apache.
        with open(self.root / "apache.out", "wb") as out:  # start-up errors go there
            self.server = subprocess.Popen([APACHE, "-f", str(conf), "-DFOREGROUND"],
                                           stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           env={"PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C"})

        def accepting() -> bool:
            assert self.server is not None
            assert self.server.poll() is None, (
                f"apache exited:\n{(self.root / 'apache.out').read_text()}{self.log()}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, "apache to listen")

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on a fresh connection: the status and the body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def hello_pid(self) -> int:
        """GET /app/: the pid of the process that answered."""
        status, body = self.request("GET", "/app/")
        assert status == 200, (body, self.log())
        match = re.fullmatch(rb"hello pid=(\d+)\n", body)
        assert match, body
        return int(match[1])

    def log(self) -> str:
        """Apache's error log so far (mod_fcgid's messages and the app's stderr)."""
        try:
            return self.error_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def app_pids(self) -> list[int]:
        """Live processes started with this site's DAEMONAPP_CONFIG (zombies have none)."""
        mark = f"DAEMONAPP_CONFIG={self.config}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if mark in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def stop_apache(self) -> int:
        """SIGTERM to Apache's parent only (`apache2 -k stop`); its exit status."""
        assert self.server is not None
        self.server.send_signal(signal.SIGTERM)
        return self.server.wait(timeout=TIMEOUT)

    def close(self) -> None:
        """Kill whatever is left (Apache's process group, strays of the app); remove files."""
        if self.server is not None:
            if self.server.poll() is None:
                self.server.send_signal(signal.SIGTERM)
                try:
                    self.server.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.server.poll() is None:
                self.server.wait(timeout=TIMEOUT)
        for pid in self.app_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def site(www: WwwRuntime) -> Iterator[Site]:
    """A fresh site directory; Apache and every app process it spawned die at the end."""
    made = Site(www)
    try:
        yield made
    finally:
        made.close()


def exit_line(site: Site, pid: int) -> str | None:
    """mod_fcgid's line about the exit of ``pid`` (logged at info when it reaps it)."""
    pattern = re.compile(rf"mod_fcgid: process {re.escape(str(site.script))}\({pid}\) "
                         r"exit\([^)]*\), .*")
    match = pattern.search(site.log())
    return match[0] if match else None


def wait_exit_line(site: Site, pid: int, timeout: float = TIMEOUT) -> str:
    """Poll the error log for mod_fcgid's exit line of ``pid``."""
    wait_for(lambda: exit_line(site, pid), f"mod_fcgid to log the exit of {pid}", timeout)
    line = exit_line(site, pid)
    assert line is not None
    return line


# ------------------------------------------------------------------ the runtime


@pytest.mark.parametrize("copy", [None, True], ids=["as-chosen", "copied"])
def test_www_data_imports_the_app_and_daemonapp(copy: bool | None) -> None:
    """As www-data, /usr/bin/python3.11 imports daemonapp, Twisted and spawned_app."""
    path = Path(tempfile.mkdtemp(prefix="dwww-", dir="/tmp"))
    try:
        runtime = www_runtime(path, copy=copy)
        result = runtime.run("import os, daemonapp.cli, spawned_app, yaml\n"
                             "import daemonapp.listeners, twisted.internet.endpoints\n"
                             "print(os.getuid(), daemonapp.cli.__file__, spawned_app.__file__)")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    uid, cli, app = result.stdout.split()
    modules, site = runtime.pythonpath.split(os.pathsep)
    assert int(uid) == runtime.uid != 0
    assert (cli, app) == (f"{site}/daemonapp/cli.py", f"{modules}/spawned_app.py")
    if runtime.copied:
        assert site == str(path / "site")
    else:  # the venv's own site-packages, reachable by others
        assert not site.startswith(str(path))


# -------------------------------------------------------------------- mod_fcgid


def test_fcgid_get_post_big_and_a_daemon_between_hits(site: Site) -> None:
    """mod_fcgid: GET, a 1 MiB POST echoed, a 1 MiB answer; Ticker runs between hits."""
    site.start(FCGID_CONF)
    pid = site.hello_pid()
    body = os.urandom(MIB)
    assert site.request("POST", "/app/echo", body) == (
        200, f"{MIB} {hashlib.sha256(body).hexdigest()}\n".encode())
    assert site.request("GET", "/app/big") == (200, b"x" * MIB)
    status, first = site.request("GET", "/app/ticks")
    assert status == 200

    def ticked() -> bool:
        return int(site.request("GET", "/app/ticks")[1]) > int(first)

    wait_for(ticked, "the Ticker daemon to run between requests", timeout=5)
    assert site.hello_pid() == pid  # one process answered all of them


def test_fcgid_max_requests_per_process_then_a_new_process(site: Site) -> None:
    """FcgidMaxRequestsPerProcess 3: the 4th request gets a new pid; the old one exits 0."""
    site.start(FCGID_CONF, "FcgidMaxRequestsPerProcess 3\n")
    first = [site.hello_pid() for _ in range(3)]
    assert len(set(first)) == 1
    second = site.hello_pid()
    assert second != first[0]
    line = wait_exit_line(site, first[0])
    assert "exit(lifetime expired)" in line
    assert line.endswith("terminated by calling exit(), return code: 0"), line
    assert "daemonapp stopping: signal SIGTERM" in site.log()
    assert first[0] not in site.app_pids()
    assert site.app_pids() == [second]


def test_fcgid_idle_timeout_retires_the_process_with_sigterm(site: Site) -> None:
    """FcgidIdleTimeout 2: mod_fcgid's SIGTERM ends the idle app with 0; then a new one."""
    site.start(FCGID_CONF, "FcgidIdleTimeout 2\nFcgidIdleScanInterval 1\n")
    pid = site.hello_pid()
    line = wait_exit_line(site, pid, timeout=10)  # observed: ~5.5 s after the request
    assert "exit(idle timeout)" in line
    assert line.endswith("terminated by calling exit(), return code: 0"), line
    assert "daemonapp stopping: signal SIGTERM" in site.log()
    assert site.app_pids() == []
    assert site.hello_pid() != pid


def test_fcgid_apache_stop_leaves_no_app_behind(site: Site) -> None:
    """SIGTERM to Apache's parent: the spawned app is gone within 3 s of Apache's exit."""
    site.start(FCGID_CONF)
    pid = site.hello_pid()
    assert site.app_pids() == [pid]
    assert site.stop_apache() == 0
    wait_for(lambda: site.app_pids() == [], "the app to exit with Apache", timeout=3)
    line = wait_exit_line(site, pid, timeout=3)
    assert "exit(shutting down)" in line
    assert line.endswith("terminated by calling exit(), return code: 0"), line


# ---------------------------------------------------------------------- mod_cgid


def test_cgid_plain_cgi_answers_and_writes_nothing(site: Site) -> None:
    """mod_cgid: GET and a 1 MiB POST through wsgiref's CGIHandler; state_dir stays empty."""
    site.start(CGID_CONF)
    pids = [site.hello_pid(), site.hello_pid()]
    assert pids[0] != pids[1]  # one process per request
    body = os.urandom(MIB)
    assert site.request("POST", "/app/echo", body) == (
        200, f"{MIB} {hashlib.sha256(body).hexdigest()}\n".encode())
    assert site.request("GET", "/app/big") == (200, b"x" * MIB)
    assert site.request("GET", "/app/ticks") == (200, b"0\n")  # no daemon runs in CGI
    # fd 0 was a connected unix socket: no FastCGI was served on it, CGI answered.
    assert re.search(r"wrapper pid=\d+ fd0=socket:\[\d+\]", site.log()), site.log()
    assert list(site.state_dir.iterdir()) == []
    wait_for(lambda: site.app_pids() == [], "the CGI processes to exit", timeout=3)


# ---------------------------------------------------------------- mod_proxy_fcgi


def test_proxy_fcgi_reaches_a_daemon_through_its_group_socket(site: Site) -> None:
    """mod_proxy_fcgi (as www-data) to `daemonapp run`'s unix socket, group www-data."""
    socket_path = site.root / "sock" / "app.sock"
    config = site.root / "daemon.yaml"
    config.write_text(DAEMON_CONFIG.format(socket=socket_path))
    with open(site.root / "daemon.log", "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=site.root, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_for(socket_path.exists, "the daemon's socket")
        www_gid = site.www.gid
        directory, sock = os.stat(socket_path.parent), os.stat(socket_path)
        assert (oct(directory.st_mode & 0o7777), directory.st_gid) == ("0o750", www_gid)
        assert (oct(sock.st_mode & 0o777), sock.st_gid) == ("0o660", www_gid)
        site.start(PROXY_FCGI_CONF.replace("{socket}", str(socket_path)))
        pid = site.hello_pid()
        assert pid == daemon.pid
        body = os.urandom(MIB)
        assert site.request("POST", "/app/echo", body) == (
            200, f"{MIB} {hashlib.sha256(body).hexdigest()}\n".encode()), (
            site.log() + (site.root / "daemon.log").read_text())
        assert site.request("GET", "/app/big") == (200, b"x" * MIB)
    finally:
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(timeout=TIMEOUT)
    assert status == 0, (site.root / "daemon.log").read_text()
