"""Real nginx for the listener tests: the common head of its config (temp files in the
test's directory) and a start in the foreground that waits, bounded, for its port."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from typing import IO, Any

from tests._env import unavailable


def free_port() -> int:
    """A loopback TCP port free at the moment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def config_head(tmp: str | os.PathLike[str], *, connections: int, max_body: str) -> str:
    """nginx.conf up to the inside of ``http {``: one worker (as root: ``user root``),
    no access log, every temp path under ``tmp``; the caller adds its upstreams and
    servers and the closing brace."""
    user = "user root;" if os.geteuid() == 0 else ""
    return (f"worker_processes 1;\n{user}\nevents {{ worker_connections {connections}; }}\n"
            "http {\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {tmp}/{name};\n" for kind, name in (
                ("client_body", "client_body"), ("fastcgi", "fastcgi"), ("proxy", "proxy"),
                ("uwsgi", "uwsgi"), ("scgi", "scgi")))
            + f"  client_max_body_size {max_body};\n")


def start_nginx(tmp: str | os.PathLike[str], conf_text: str, port: int, *,
                timeout: float = 15.0, stderr: int | IO[Any] = subprocess.DEVNULL,
                ) -> subprocess.Popen[bytes]:
    """nginx in the foreground with ``conf_text`` written to ``tmp``/nginx.conf, once it
    accepts on ``port``; its error log is ``tmp``/nginx-error.log."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        unavailable("nginx is not installed (apt-get install nginx)")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as out:
        out.write(conf_text)
    log = os.path.join(tmp, "nginx-error.log")
    proc = subprocess.Popen(
        [binary, "-p", str(tmp), "-c", conf, "-e", log,
         "-g", f"daemon off; pid {tmp}/nginx.pid; error_log {log} warn;"],
        stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = proc.stderr.read() if proc.stderr is not None else b""
            raise AssertionError(f"nginx exited at start: {detail!r}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            select.select([], [], [], 0.02)
    proc.kill()
    proc.wait(timeout=timeout)
    raise AssertionError("nginx did not start listening")
