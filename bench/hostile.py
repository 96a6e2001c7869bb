"""Hostile peers against a real `daemonapp run`: memory, time and the daemons' schedule.

One app (a temp directory, one YAML file) serves the same WSGI app on a FastCGI, an SCGI
and an HTTP listener on unix sockets (HTTP also on 127.0.0.1 tcp) and runs a daemon
every 0.5 s that records the time of each run. It runs under a low fd limit
(``--nofile``, 256 by default). This script then attacks each listener in turn:

- slow-headers: connections that send a request header one byte every few seconds;
- endless-body: bodies that never end (FastCGI STDIN without CONTENT_LENGTH, an HTTP
  chunked body without its last chunk, an SCGI body one byte short of its length);
- mpx-greed (FastCGI): many request ids on one connection, each with a ~9.9 MiB body
  that never ends;
- never-read: clients that pipeline requests for a 4 MiB answer, keep sending, and
  never read;
- fd-exhaustion: connections opened until the app's fd limit and held;
- garbage: random bytes and malformed records, netstrings and request lines.

For each attack it prints the app's peak RSS (VmRSS sampled every 50 ms) next to the
documented budget (read from docs/listeners.md), what the attackers got (answers,
closed after N s, refused), whether the daemon kept its schedule (the largest gap
between two runs against run_every), and whether a normal request is answered during
and after the attack and `daemonapp status` answers. Everything is bounded in time and
bytes and stays on loopback and unix sockets.

    ./dev bench hostile [--listener fastcgi|scgi|http|all] [--seconds S] [--nofile N]
                        [--attack NAME,...] [--source CHECKOUT] [--json]
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_EVERY = 0.5
#: the daemon kept its schedule when no gap between two runs exceeded this
GAP_GOAL = RUN_EVERY + 0.25
#: a plain process that sleeps run_every and records its wake-ups: the machine's own
#: lateness in the same window (CPU contention on a loaded 2-core box), allowed on top
CONTROL = (
    "import sys, time\n"
    "out = open(sys.argv[1], 'a', buffering=1)\n"
    "while True:\n"
    "    out.write('%.6f ok\\n' % time.time())\n"
    "    time.sleep(float(sys.argv[2]))\n")
BIG_ANSWER = 4 << 20
PROBE_EVERY = 0.5
#: longer than the default queue_timeout (10 s): a request kept waiting gets its 503
#: (``--probe-timeout``: a short run need not wait for it where probes are not judged)
PROBE_TIMEOUT = 12.0
#: the status socket's answer during an attack, from the connect to the last byte
STATUS_TIMEOUT = 10.0
#: ``daemonapp status`` after it: a new interpreter importing Twisted, ~0.3 s of CPU,
#: takes 10 s and more on a loaded 2-core machine (a process's share of it is small)
COMMAND_TIMEOUT = 60.0
#: the app is SIGKILLed when its RSS passes this (the machine must survive the bench)
RSS_SAFETY_KB = 4 << 20
MiB = 1 << 20

APP_MODULE = '''\
"""The app under attack: a WSGI app and a daemon that records its runs."""

import os
import time

from daemonapp import Daemon

BIG = b"x" * BIG_ANSWER


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/drain":  # reads the body in 64 KiB pieces and drops it
        stream = environ["wsgi.input"]
        total = 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            total += len(chunk)
        body = b"%d\\n" % total
    elif path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(BIG)))])
        return [BIG]
    else:
        body = b"ok\\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


class Ticker(Daemon):
    """Appends "<time> ok|<errno name> <waited>" per run: the time, whether an open()
    worked, and the seconds the reactor's thread has spent waiting for a CPU so far
    (/proc/self/schedstat's run_delay; "-" where the kernel does not say)."""

    run_every = 0.5

    def __init__(self, *, record, **kw):
        super().__init__(**kw)
        # opened once: a run is recorded even when the fd table is full
        self.out = open(record, "a", buffering=1)
        try:
            self.schedstat = os.open("/proc/self/schedstat", os.O_RDONLY)
        except OSError:
            self.schedstat = None

    def waited(self):
        try:
            return "%.6f" % (int(os.pread(self.schedstat, 100, 0).split()[1]) / 1e9)
        except (OSError, TypeError, IndexError, ValueError):
            return "-"

    def get_work(self):
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
            opened = "ok"
        except OSError as err:
            opened = os.strerror(err.errno).replace(" ", "_")
        self.out.write("%.6f %s %s\\n" % (time.time(), opened, self.waited()))
        return None

    def do_work(self, job):
        """Never called: get_work has no work."""
'''.replace("BIG_ANSWER", str(BIG_ANSWER))

CONFIG = """\
app:
  state_dir: {dir}/var
  log: {{level: info}}
listeners:
  - {{protocol: fastcgi, endpoint: "unix:{dir}/fcgi.sock", wsgi: "hostile_app:app"}}
  - {{protocol: scgi, endpoint: "unix:{dir}/scgi.sock", wsgi: "hostile_app:app"}}
  - {{protocol: http, endpoint: "unix:{dir}/http.sock", wsgi: "hostile_app:app"}}
  - {{protocol: http, endpoint: "tcp:{port}:interface=127.0.0.1", wsgi: "hostile_app:app"}}
daemons:
  ticker: {{type: "hostile_app:Ticker", run_every: {run_every}, record: "{dir}/runs.txt"}}
"""


# ------------------------------------------------------------------ wire formats


def fcgi_record(rtype: int, rid: int, content: bytes = b"") -> bytes:
    return struct.pack("!BBHHBx", 1, rtype, rid, len(content), 0) + content


def fcgi_pairs(params: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in params.items():
        for item in (name.encode("latin-1"), value.encode("latin-1")):
            out += bytes([len(item)]) if len(item) < 128 else struct.pack(
                "!I", len(item) | 0x80000000)
        out += name.encode("latin-1") + value.encode("latin-1")
    return bytes(out)


def cgi_params(method: str, path: str, length: int | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """What nginx sends for a request (CONTENT_LENGTH empty: no length known)."""
    params = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
              "REQUEST_URI": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
              "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
              "CONTENT_LENGTH": "" if length is None else str(length), "HTTP_HOST": "localhost"}
    params.update(extra or {})
    return params


def fcgi_head(rid: int, params: dict[str, str], keep: bool = True) -> bytes:
    """BEGIN_REQUEST and the PARAMS stream of one request."""
    return (fcgi_record(1, rid, struct.pack("!HB5x", 1, int(keep)))
            + fcgi_record(4, rid, fcgi_pairs(params)) + fcgi_record(4, rid))


def fcgi_request(rid: int, method: str, path: str, keep: bool = True) -> bytes:
    return fcgi_head(rid, cgi_params(method, path, 0), keep) + fcgi_record(5, rid)


def scgi_head(params: dict[str, str]) -> bytes:
    """The SCGI header netstring (CONTENT_LENGTH first, as the spec wants)."""
    items = dict(params)
    items["CONTENT_LENGTH"] = items["CONTENT_LENGTH"] or "0"
    first = "CONTENT_LENGTH\0" + items.pop("CONTENT_LENGTH") + "\0SCGI\x001\0"
    header = (first + "".join(f"{k}\0{v}\0" for k, v in items.items())).encode("latin-1")
    return b"%d:%s," % (len(header), header)


def http_head(method: str, path: str, extra: str = "", close: bool = True) -> bytes:
    text = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}"
    if close:
        text += "Connection: close\r\n"
    return (text + "\r\n").encode("latin-1")


def statuses(protocol: str, data: bytes) -> list[int]:
    """The status of every answer found in ``data`` (as much of it as was kept)."""
    if protocol == "http":
        return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
    if protocol == "scgi":
        if not data:
            return []
        found = re.match(rb"Status: (\d{3})", data)
        return [int(found.group(1))] if found else [200]
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        _v, rtype, rid, clen, plen = struct.unpack_from("!BBHHBx", data, pos)
        if rtype == 6 and rid not in out:
            out[rid] = data[pos + 8:pos + 8 + clen]
        pos += 8 + clen + plen
    codes = []
    for head in out.values():
        found = re.match(rb"Status: (\d{3})", head)
        codes.append(int(found.group(1)) if found else 200)
    return codes


# ------------------------------------------------------------------ the app


@dataclass
class Listener:
    name: str          # fastcgi, scgi, http
    protocol: str
    address: Any       # a unix path (str) or (host, port)

    def connect(self, blocking: bool = True) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if blocking:
            sock.settimeout(PROBE_TIMEOUT)
            sock.connect(self.address)
        else:
            sock.setblocking(False)
            err = sock.connect_ex(self.address)
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(err, os.strerror(err))
        return sock

    def label(self) -> str:
        if isinstance(self.address, str):
            return f"{self.name} (unix)"
        return f"{self.name} (tcp {self.address[0]}:{self.address[1]})"


@dataclass
class Run:
    """One run of the daemon (or one wake-up of the control sleeper)."""

    at: float
    opened: str            # "ok" or why open() failed
    waited: float | None   # the reactor thread's run-queue wait so far, seconds


def run_queue_wait(pid: int) -> float | None:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU
    (/proc/PID/schedstat's run_delay); None where the kernel does not keep it."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class App:
    """`daemonapp run` of the generated config, with an RSS sampler."""

    def __init__(self, workdir: Path, source: str, nofile: int) -> None:
        self.workdir = workdir
        self.source = source
        self.nofile = nofile
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (workdir / "hostile_app.py").write_text(APP_MODULE)
        self.config = workdir / "app.yaml"
        self.config.write_text(CONFIG.format(dir=workdir, port=port, run_every=RUN_EVERY))
        self.listeners = {
            "fastcgi": Listener("fastcgi", "fastcgi", str(workdir / "fcgi.sock")),
            "scgi": Listener("scgi", "scgi", str(workdir / "scgi.sock")),
            "http-unix": Listener("http", "http", str(workdir / "http.sock")),
            "http": Listener("http", "http", ("127.0.0.1", port)),
        }
        self.log_path = workdir / "app.log"
        self.runs_path = workdir / "runs.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: subprocess.Popen[bytes] | None = None
        self.killed_for_rss = False
        self.rss: list[tuple[float, int]] = []
        self._sampling = threading.Event()
        self.starts = 0

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join([str(self.workdir), self.source]))

    def start(self) -> None:
        limit = self.nofile

        def lower_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        log = open(self.log_path, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemonapp.cli", "run", str(self.config)],
            cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, preexec_fn=lower_fd_limit)  # noqa: PLW1509 (setrlimit only)
        log.close()
        self.starts += 1
        self.killed_for_rss = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemonapp run exited {self.proc.returncode}:\n"
                                 + self.log_path.read_text()[-3000:])
            if all(probe(item)[0] == 200 for item in self.listeners.values()):
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the listeners never answered:\n" + self.log_path.read_text()[-3000:])
        self._sampling.clear()
        threading.Thread(target=self._sample, args=(self.proc.pid,), daemon=True).start()
        self.control = subprocess.Popen([sys.executable, "-c", CONTROL,
                                         str(self.workdir / "control.txt"), str(RUN_EVERY)])

    def _sample(self, pid: int) -> None:
        path = f"/proc/{pid}/status"
        while not self._sampling.is_set():
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            kb = int(line.split()[1])
                            self.rss.append((time.time(), kb))
                            if kb > RSS_SAFETY_KB:
                                self.killed_for_rss = True
                                os.kill(pid, signal.SIGKILL)
                            break
            except OSError:
                return
            self._sampling.wait(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_now(self) -> int:
        return self.rss[-1][1] if self.rss else 0

    def peak_rss(self, since: float, until: float) -> int:
        return max((kb for at, kb in self.rss if since <= at <= until), default=0)

    def stop(self) -> int | None:
        """SIGTERM (the graceful stop); the exit status, None when never started."""
        self._sampling.set()
        if self.control is not None:
            self.control.kill()
            self.control.wait()
            self.control = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def runs(self, path: Path | None = None) -> list[Run]:
        """Each recorded run (of the control with ``path``)."""
        out = []
        try:
            text = (path or self.runs_path).read_text()
        except OSError:
            return []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) in (2, 3):
                waited = fields[2] if len(fields) == 3 else "-"
                out.append(Run(float(fields[0]), fields[1],
                               None if waited == "-" else float(waited)))
        return out

    def waited(self) -> float | None:
        """Seconds the app's reactor thread has waited for a CPU so far (None: unknown)."""
        return run_queue_wait(self.proc.pid) if self.alive() else None  # type: ignore[union-attr]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> list[str]:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()

    def status(self) -> tuple[int | str, float, dict[str, Any]]:
        """``daemonapp status --json``: (exit status or "timeout", seconds, snapshot)."""
        began = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "daemonapp.cli", "status", str(self.workdir / "var"),
                 "--json"], env=self.env(), capture_output=True, timeout=COMMAND_TIMEOUT,
                check=False)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - began, {}
        snapshot: dict[str, Any] = {}
        if done.returncode == 0:
            try:
                snapshot = json.loads(done.stdout)
            except ValueError:
                pass
        else:  # why it failed, for the report
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            snapshot = {"error": lines[-1][:200] if lines else ""}
        return done.returncode, time.monotonic() - began, snapshot


def probe(listener: Listener, path: str = "/") -> tuple[int | None, float, str]:
    """One normal GET on a new connection: (status or None, seconds, error)."""
    began = time.monotonic()
    try:
        sock = listener.connect()
    except OSError as err:
        return None, time.monotonic() - began, f"connect: {err.strerror or err}"
    try:
        if listener.protocol == "fastcgi":
            sock.sendall(fcgi_request(1, "GET", path, keep=False))
        elif listener.protocol == "scgi":
            sock.sendall(scgi_head(cgi_params("GET", path, 0)))
        else:
            sock.sendall(http_head("GET", path))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as err:
        return None, time.monotonic() - began, f"{type(err).__name__}: {err.strerror or err}"
    finally:
        sock.close()
    codes = statuses(listener.protocol, data)
    if not codes:
        return None, time.monotonic() - began, "closed without an answer"
    return codes[0], time.monotonic() - began, ""


class Prober(threading.Thread):
    """Normal requests every PROBE_EVERY seconds while an attack runs."""

    def __init__(self, listener: Listener) -> None:
        super().__init__(daemon=True)
        self.listener = listener
        self.results: list[tuple[int | None, float, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(PROBE_EVERY):
            self.results.append(probe(self.listener))

    def summary(self) -> tuple[int, int, float, str]:
        """(answered 200, tried, slowest seconds, first error)."""
        ok = sum(1 for status, _, _ in self.results if status == 200)
        slowest = max((took for _, took, _ in self.results), default=0.0)
        errors = [f"{status}" if status else error for status, _, error in self.results
                  if status != 200]
        return ok, len(self.results), slowest, (Counter(errors).most_common(1)[0][0]
                                                if errors else "")


# ------------------------------------------------------------------ attackers


@dataclass
class Peer:
    """One attacking connection, driven by :class:`Swarm` (non-blocking)."""

    sock: socket.socket
    feed: Callable[[float], bytes | None]   # next bytes to send at time t (None: not now)
    read: bool = True
    opened: float = 0.0
    pending: bytes = b""
    sent: int = 0
    received: int = 0
    kept: bytearray = field(default_factory=bytearray)
    closed: float | None = None             # when the server closed (or reset) it
    how: str = ""                           # "closed", "reset", "error: ..."
    done_feeding: bool = False


class Swarm:
    """Drives many peers on one poll loop until a deadline."""

    KEEP = 1 << 20

    def __init__(self, app: App, max_bytes: int) -> None:
        self.peers: list[Peer] = []
        self.refused: Counter[str] = Counter()
        self.app = app
        self.max_bytes = max_bytes
        self.sent_total = 0
        self.stopped_early = ""
        self.poll = select.poll()
        self.by_fd: dict[int, Peer] = {}

    def open(self, listener: Listener, feed: Callable[[float], bytes | None], *,
             read: bool = True) -> Peer | None:
        try:
            sock = listener.connect(blocking=False)
        except OSError as err:
            self.refused[errno.errorcode.get(err.errno or 0, str(err))] += 1
            return None
        peer = Peer(sock, feed, read, opened=time.time())
        self.peers.append(peer)
        self.by_fd[sock.fileno()] = peer
        self._register(peer)
        return peer

    def _register(self, peer: Peer) -> None:
        mask = select.POLLRDHUP | (select.POLLIN if peer.read else 0)
        if peer.pending:
            mask |= select.POLLOUT
        self.poll.register(peer.sock.fileno(), mask)

    def _refill(self, peer: Peer, now: float) -> None:
        if peer.pending or peer.done_feeding or peer.closed is not None:
            return
        if self.sent_total >= self.max_bytes:
            return
        data = peer.feed(now)
        if data is None:
            return
        if data == b"":
            peer.done_feeding = True
            return
        peer.pending = data

    def _gone(self, peer: Peer, how: str) -> None:
        if peer.closed is None:
            peer.closed = time.time()
            peer.how = how
        try:
            self.poll.unregister(peer.sock.fileno())
        except (KeyError, ValueError):
            pass

    def run(self, until: float, tick: Callable[[], None] | None = None) -> None:
        while time.time() < until:
            now = time.time()
            for peer in self.peers:
                if peer.closed is None:
                    had = bool(peer.pending)
                    self._refill(peer, now)
                    if peer.pending and not had:
                        self.poll.modify(peer.sock.fileno(), select.POLLRDHUP | select.POLLOUT
                                         | (select.POLLIN if peer.read else 0))
            for fd, events in self.poll.poll(10):
                peer = self.by_fd[fd]
                if peer.closed is not None:
                    continue
                if events & (select.POLLIN | select.POLLRDHUP | select.POLLHUP
                             | select.POLLERR) and peer.read:
                    self._read(peer)
                elif events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                    self._gone(peer, "closed")
                    continue
                if peer.closed is None and events & select.POLLOUT and peer.pending:
                    self._write(peer)
            if tick is not None:
                tick()
            if not self.app.alive():
                self.stopped_early = (f"app SIGKILLed by the bench at RSS over "
                                      f"{RSS_SAFETY_KB >> 10} MiB" if self.app.killed_for_rss
                                      else f"app exited {self.app.proc.returncode}")  # type: ignore[union-attr]
                return

    def _read(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as err:
            self._gone(peer, "reset" if err.errno == errno.ECONNRESET else f"error {err}")
            return
        if not data:
            self._gone(peer, "closed")
            return
        peer.received += len(data)
        if len(peer.kept) < self.KEEP:
            peer.kept += data[:self.KEEP - len(peer.kept)]

    def _write(self, peer: Peer) -> None:
        try:
            sent = peer.sock.send(peer.pending)
        except BlockingIOError:
            return
        except OSError as err:
            self._gone(peer, "reset" if err.errno in (errno.ECONNRESET, errno.EPIPE)
                       else f"error {err}")
            return
        peer.sent += sent
        self.sent_total += sent
        peer.pending = peer.pending[sent:]
        if not peer.pending:
            self.poll.modify(peer.sock.fileno(), select.POLLRDHUP
                             | (select.POLLIN if peer.read else 0))

    def close(self) -> None:
        for peer in self.peers:
            try:
                peer.sock.close()
            except OSError:
                pass

    def outcome(self, protocol: str, began: float, ended: float) -> str:
        """What the attackers got, in one line."""
        got: Counter[str] = Counter()
        closed_after: list[float] = []
        for peer in self.peers:
            codes = statuses(protocol, bytes(peer.kept))
            answer = ("answered " + "/".join(str(c) for c in sorted(set(codes)))
                      if codes else ("bytes back" if peer.received else "no answer"))
            if peer.closed is not None:
                got[f"{answer}, {peer.how}"] += 1
                closed_after.append(peer.closed - peer.opened)
            else:
                got[f"{answer}, open at end"] += 1
        parts = [f"{count}x {what}" for what, count in got.most_common()]
        if closed_after:
            closed_after.sort()
            parts.append(f"closed after {closed_after[0]:.1f}-{closed_after[-1]:.1f} s")
        if self.refused:
            parts.append("refused: " + ", ".join(f"{n}x {e}" for e, n in
                                                  self.refused.most_common()))
        parts.append(f"sent {self.sent_total / MiB:.1f} MiB in {ended - began:.0f} s")
        if self.stopped_early:
            parts.append("STOPPED EARLY: " + self.stopped_early)
        return "; ".join(parts)


def trickle(data: bytes, every: float) -> Callable[[float], bytes | None]:
    """Sends ``data`` one byte every ``every`` seconds (the first at once)."""
    state = {"pos": 0, "next": 0.0}

    def feed(now: float) -> bytes | None:
        if now < state["next"]:
            return None
        pos = int(state["pos"])
        if pos >= len(data):
            return None
        state["pos"] = pos + 1
        state["next"] = now + every
        return data[pos:pos + 1]

    return feed


def stream(head: bytes, piece: Callable[[], bytes], limit: int | None = None
           ) -> Callable[[float], bytes | None]:
    """Sends ``head``, then ``piece()`` again and again (at most ``limit`` bytes after
    the head; then nothing more, the connection left open)."""
    state = {"head": True, "left": limit if limit is not None else -1}

    def feed(now: float) -> bytes | None:
        if state["head"]:
            state["head"] = False
            return head
        if state["left"] == 0:
            return None
        data = piece()
        if state["left"] > 0:
            data = data[:state["left"]]
            state["left"] -= len(data)
        return data

    return feed


def once(data: bytes) -> Callable[[float], bytes | None]:
    state = {"sent": False}

    def feed(now: float) -> bytes | None:
        if state["sent"]:
            return b""
        state["sent"] = True
        return data

    return feed


# ------------------------------------------------------------------ the attacks


@dataclass
class Attack:
    name: str
    what: str
    protocols: tuple[str, ...]
    launch: Callable[[Swarm, Listener, argparse.Namespace, float], Callable[[], None] | None]


def _slow_headers(swarm: Swarm, target: Listener, args: argparse.Namespace,
                  until: float) -> None:
    padding = "a" * 2000
    for _ in range(args.slow_conns):
        if target.protocol == "fastcgi":
            head = fcgi_head(1, cgi_params("GET", "/", None, {"HTTP_X_SLOW": padding}))
        elif target.protocol == "scgi":
            head = scgi_head(cgi_params("GET", "/", 0, {"HTTP_X_SLOW": padding}))
        else:
            head = http_head("GET", "/", f"X-Slow: {padding}\r\n")
        swarm.open(target, trickle(head, args.slow_every))


def _endless_body(swarm: Swarm, target: Listener, args: argparse.Namespace,
                  until: float) -> None:
    block = os.urandom(65535)
    limit = args.max_body
    for _ in range(args.body_conns):
        if target.protocol == "fastcgi":  # STDIN without a length: it never ends
            record = fcgi_record(5, 1, block)
            feed = stream(fcgi_head(1, cgi_params("POST", "/drain", None)), lambda r=record: r)
        elif target.protocol == "scgi":  # a body one byte short of its CONTENT_LENGTH
            feed = stream(scgi_head(cgi_params("POST", "/drain", limit)), lambda: block,
                          limit - 1)
        else:  # a chunked body without its last chunk
            chunk = b"%x\r\n%s\r\n" % (len(block), block)
            feed = stream(http_head("POST", "/drain", "Transfer-Encoding: chunked\r\n"),
                          lambda c=chunk: c)
        swarm.open(target, feed)


def _mpx_greed(swarm: Swarm, target: Listener, args: argparse.Namespace,
               until: float) -> None:
    size = args.max_body - args.max_body // 100  # ~9.9 MiB with the 10 MiB default
    block = os.urandom(65535)
    for _ in range(args.mpx_conns):
        ids = list(range(1, args.mpx_ids + 1))
        head = b"".join(fcgi_head(rid, cgi_params("POST", "/drain", size)) for rid in ids)
        left = dict.fromkeys(ids, size - 1)  # each body one byte short: never ends
        turn = {"i": 0}

        def piece(ids: list[int] = ids, left: dict[int, int] = left,
                  turn: dict[str, int] = turn) -> bytes:
            out = []
            for _ in range(len(ids)):  # one record per id, round robin
                rid = ids[turn["i"] % len(ids)]
                turn["i"] += 1
                take = min(left[rid], len(block))
                if take:
                    left[rid] -= take
                    out.append(fcgi_record(5, rid, block[:take]))
                if len(out) >= 4:
                    break
            return b"".join(out) if out else b""

        swarm.open(target, stream(head, piece))


def _never_read(swarm: Swarm, target: Listener, args: argparse.Namespace,
                until: float) -> None:
    for _ in range(args.read_conns):
        if target.protocol == "fastcgi":
            head = b"".join(fcgi_request(rid, "GET", "/big") for rid in
                            range(1, args.pipeline + 1))
            unknown = fcgi_record(20, 0) * 8192  # 8-byte records of an unknown type
            swarm.open(target, stream(head, lambda u=unknown: u), read=False)
        elif target.protocol == "scgi":  # one request per connection: no pipelining
            swarm.open(target, once(scgi_head(cgi_params("GET", "/big", 0))), read=False)
        else:
            get = http_head("GET", "/big", close=False)
            swarm.open(target, stream(get * args.pipeline, lambda g=get: g * 64), read=False)


def _fd_exhaustion(swarm: Swarm, target: Listener, args: argparse.Namespace,
                   until: float) -> Callable[[], None]:
    """Opens connections (up to --fd-conns, 200 per tick) and holds them open.

    HTTP connections send the header of a chunked POST and no body: twisted.web used to
    open a temporary file for such a body at once, a second descriptor per connection.
    """
    state = {"opened": 0}
    silent: Callable[[float], bytes | None] = lambda now: None  # noqa: E731
    chunked = http_head("POST", "/drain", "Transfer-Encoding: chunked\r\n", close=False)

    def tick() -> None:
        for _ in range(200):
            if state["opened"] >= args.fd_conns:
                return
            state["opened"] += 1
            swarm.open(target, once(chunked) if target.protocol == "http" else silent)

    tick()
    return tick


def _garbage(swarm: Swarm, target: Listener, args: argparse.Namespace,
             until: float) -> None:
    rng = random.Random(14)
    crafted: dict[str, list[bytes]] = {
        "fastcgi": [
            b"\x02" + fcgi_request(1, "GET", "/")[1:],                  # bad version
            fcgi_record(1, 1, b"\0\1\1") + fcgi_record(4, 1, b"\x85\xff\xff\xff\xff"),
            fcgi_head(1, cgi_params("POST", "/drain", None, {"CONTENT_LENGTH": "²"})),
            fcgi_head(1, cgi_params("POST", "/drain", 10 ** 15)),
            fcgi_record(1, 1, struct.pack("!HB5x", 7, 1)),              # unknown role
            fcgi_record(9, 0, fcgi_pairs({"FCGI_MAX_CONNS": ""})) * 1000,
        ],
        "scgi": [b"99999999999999999999:", b"\xc2\xb2:abc,", b"abc", b"10:abc",
                 b"5:abcde,", scgi_head(cgi_params("POST", "/", 10 ** 15))],
        "http": [b"GET / HTTP/9.9\r\n\r\n", b"GET /\r\nno colon here\r\n\r\n",
                 http_head("POST", "/", "Content-Length: 100000000000000\r\n"),
                 http_head("POST", "/", "Content-Length: \xb2\r\n"),
                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500),  # TLS hello
                 http_head("GET", "/", "Transfer-Encoding: chunked\r\n") + b"zz\r\n"],
    }
    for i in range(args.garbage_conns):
        shapes = crafted[target.protocol]
        if i < len(shapes):
            data = shapes[i]
        else:
            size = rng.choice([8, 64, 1024, 65536])
            data = rng.randbytes(size)
            if rng.random() < 0.5:  # mutate a valid request instead
                base = bytearray(probe_bytes(target.protocol))
                for _ in range(rng.randint(1, 8)):
                    base[rng.randrange(len(base))] = rng.randrange(256)
                data = bytes(base)
        swarm.open(target, once(data))


def probe_bytes(protocol: str) -> bytes:
    if protocol == "fastcgi":
        return fcgi_request(1, "GET", "/", keep=False)
    if protocol == "scgi":
        return scgi_head(cgi_params("GET", "/", 0))
    return http_head("GET", "/")


ATTACKS = [
    Attack("slow-headers", "a request header, one byte every --slow-every s",
           ("fastcgi", "scgi", "http"), _slow_headers),
    Attack("endless-body", "a body that never ends, as fast as it is read",
           ("fastcgi", "scgi", "http"), _endless_body),
    Attack("mpx-greed", "many request ids per connection, each a ~9.9 MiB endless body",
           ("fastcgi",), _mpx_greed),
    Attack("never-read", "pipelined requests for a 4 MiB answer, never read",
           ("fastcgi", "scgi", "http"), _never_read),
    Attack("fd-exhaustion", "connections opened past the app's fd limit and held",
           ("fastcgi", "scgi", "http"), _fd_exhaustion),
    Attack("garbage", "random and malformed bytes",
           ("fastcgi", "scgi", "http"), _garbage),
]


# ------------------------------------------------------------------ documented limits


def documented_options(path: Path) -> dict[str, tuple[str, str]]:
    """``{key: (default, meaning)}`` from the options table of docs/listeners.md."""
    out: dict[str, tuple[str, str]] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        found = re.match(r"\|\s*`(\w+)`\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$", line)
        if found:
            out[found.group(1)] = (found.group(2).strip("` "), found.group(3))
    return out


def parse_size(text: str) -> int | None:
    found = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|KB|MB|GB|B)?\s*$", text or "")
    if not found:
        return None
    unit = {"KiB": 1 << 10, "KB": 1 << 10, "MiB": 1 << 20, "MB": 1 << 20, "GiB": 1 << 30,
            "GB": 1 << 30, "B": 1, None: 1}[found.group(2)]
    return int(float(found.group(1)) * unit)


def memory_budget(options: dict[str, tuple[str, str]]) -> tuple[str, int | None]:
    """The documented memory budget for buffered bodies and output, as (label, bytes).

    Prefers a per-process (app) figure; else a per-listener one (the attacked listener
    is one of four, the others hold nothing during its attack). ``(message, None)``
    when the page documents none.
    """
    found = []
    for key, (default, meaning) in options.items():
        if re.search(r"budget|memory|buffer", key + " " + meaning, re.IGNORECASE):
            size = parse_size(default)
            if size is not None:
                found.append((key, default, size, meaning))
    if not found:
        return "not documented in docs/listeners.md", None
    for key, default, size, meaning in found:
        if re.search(r"process|listener", key + meaning, re.IGNORECASE) and \
                not re.search(r"per connection", meaning, re.IGNORECASE):
            return f"{key} {default}", size
    key, default, size, _ = found[0]
    return f"{key} {default}", size


#: allowance for the interpreter's own churn (first use of a code path, thread stacks)
RSS_SLACK = 8 * MiB


def attack_bound(attack: str, args: argparse.Namespace, docs: dict[str, tuple[str, str]],
                 budget: tuple[str, int | None], text: str) -> tuple[str, int | None]:
    """The most RSS one attack may add by the documented limits, as (label, bytes).

    A documented memory budget (process or listener) wins. Without one, the bound
    follows from documented figures where the page gives them: max_param_bytes per
    connection for headers and garbage, the 1 MiB of unread body at which the peer is
    paused (the WSGI section) for bodies. Else ``(reason, None)``: nothing to judge by.
    """
    label, size = budget
    if size is not None:
        return label, size + RSS_SLACK
    param = parse_size(docs.get("max_param_bytes", ("", ""))[0])
    found = re.search(r"paused while more than (\d+ ?[KMG]iB) waits unread", text)
    unread = parse_size(found.group(1)) if found else None
    slack = f" + {RSS_SLACK // MiB} MiB"
    if attack in ("slow-headers", "garbage") and param:
        conns = args.slow_conns if attack == "slow-headers" else args.garbage_conns
        return (f"{conns} x max_param_bytes {docs['max_param_bytes'][0]}{slack}",
                conns * param + RSS_SLACK)
    if attack == "endless-body" and unread:
        return (f"{args.body_conns} x {found.group(1)} unread body{slack}",  # type: ignore[union-attr]
                args.body_conns * unread + RSS_SLACK)
    if attack == "mpx-greed" and unread:
        requests = args.mpx_conns * args.mpx_ids
        return (f"{requests} requests x {found.group(1)} unread body{slack}",  # type: ignore[union-attr]
                requests * unread + RSS_SLACK)
    return "no documented figure (" + label + ")", None


# ------------------------------------------------------------------ the run


@dataclass
class Result:
    listener: str
    attack: str
    what: str
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    budget: str
    budget_mib: float | None
    rss_ok: bool | None
    attackers: str
    runs: int
    max_gap: float
    max_stall: float | None
    control_gap: float
    gap_ok: bool
    opens_failed: int
    probes_ok: int
    probes: int
    probe_slowest: float
    probe_error: str
    after: str
    after_ok: bool
    status_during: str
    status_after: str
    status_ok: bool
    server_connections: int | None
    log_lines: int
    app_alive: bool
    exit_status: int | None
    stop_seconds: float


def workdir_control(app: App) -> Path:
    return app.workdir / "control.txt"


def max_gap(runs: list[Run], since: float, until: float, waited_since: float | None = None,
            waited_until: float | None = None) -> tuple[float, float | None, int]:
    """In [since, until]: the longest time without a run, the longest such time less
    what the reactor's thread spent waiting for a CPU in it (None: the kernel does not
    say), and the number of runs.

    The second is the stall the app itself caused: on a loaded machine a gap grows by
    the time the process was runnable but not running, which is the machine's share,
    not the app's; what remains is the time it slept, ran or blocked. Only the part of
    a gap past run_every is taken off: the wait is known per gap, not per instant, and
    what the reactor waited before the run was due (woken by the attackers' bytes) did
    not delay it. (That part can still hide as much of a stall on a loaded machine; on
    a quiet one the wait is ~0 and the rule is the plain gap.)
    """
    before = [(r.at, r.waited) for r in runs if r.at < since]
    inside = [(r.at, r.waited) for r in runs if since <= r.at <= until]
    points = (before[-1:] or [(since, waited_since)]) + inside + [(until, waited_until)]
    gaps: list[float] = []
    stalls: list[float | None] = []
    for (a, waited_a), (b, waited_b) in itertools.pairwise(points):
        gaps.append(b - a)
        if waited_a is None or waited_b is None:
            stalls.append(None)
        else:
            late = max(0.0, b - a - RUN_EVERY)
            stalls.append(b - a - min(late, max(0.0, waited_b - waited_a)))
    known = [stall for stall in stalls if stall is not None]
    stall = max(known) if known and len(known) == len(stalls) else None
    return max(gaps, default=until - since), stall, len(inside)


def ask_status(state_dir: Path) -> tuple[int | str, float, dict[str, Any]]:
    """The status socket's answer, as a client that is already running gets it:
    (0 or what went wrong, seconds from the connect to the last byte, the snapshot).

    The protocol by hand (a request line, the answer line, then EOF; an app from before
    commands answers without reading the request), so that the time is the app's, not
    an interpreter's start-up: ``daemonapp status`` is run after the attack.
    """
    path = str(state_dir / "status.sock")
    began = time.monotonic()
    deadline = began + STATUS_TIMEOUT
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:  # the backlog is full: try again
                    if time.monotonic() >= deadline:
                        return "timeout", time.monotonic() - began, {}
                    time.sleep(0.01)
            try:
                sock.sendall(b'{"v": 1, "command": "status"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass
            while len(data) <= 64 * MiB:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(1 << 20)
                except ConnectionResetError:
                    if not data:
                        raise
                    break
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        return "timeout", time.monotonic() - began, {}
    except OSError as err:
        return (f"{type(err).__name__}", time.monotonic() - began,
                {"error": err.strerror or str(err)})
    took = time.monotonic() - began
    try:
        snapshot = json.loads(data)
    except ValueError:
        return "bad answer", took, {"error": repr(data[:80])}
    if not isinstance(snapshot, dict):
        return "bad answer", took, {"error": repr(data[:80])}
    return 0, took, snapshot


def run_attack(app: App, attack: Attack, key: str, args: argparse.Namespace,
               budget: tuple[str, int | None]) -> Result:
    """One attack on one listener, on a fresh app; the checks; the graceful stop."""
    target = app.listeners[key]
    # A fresh process per attack: memory one attack left behind (the allocator keeps
    # freed arenas) would hide the next one's peak.
    app.start()
    time.sleep(0.5)
    rss_before = app.rss_now()
    log_offset = app.log_size()
    swarm = Swarm(app, args.max_bytes)
    prober = Prober(target)
    began = time.time()
    waited_began = app.waited()
    until = began + args.seconds
    tick = attack.launch(swarm, target, args, until)
    prober.start()
    status_during: list[tuple[int | str, float, dict[str, Any]]] = []
    asker = threading.Timer(args.seconds / 2, lambda: status_during.append(
        ask_status(app.workdir / "var")))
    asker.daemon = True
    asker.start()
    swarm.run(until, tick)
    ended = time.time()
    outcome = swarm.outcome(target.protocol, began, ended)
    prober.stopped.set()
    prober.join(PROBE_TIMEOUT + 1)
    asker.join(STATUS_TIMEOUT + 5)
    swarm.close()
    # The attackers are gone: the app must answer again and let its memory go.
    settle_end = time.time() + args.settle
    after: tuple[int | None, float, str] = (None, 0.0, "not tried")
    while time.time() < settle_end:
        time.sleep(0.25)
        if not app.alive():
            break
        after = probe(target)
        if after[0] == 200:
            break
    time.sleep(max(0.0, settle_end - time.time()))
    checked_until = time.time()
    waited_until = app.waited()
    status_after = app.status() if app.alive() else ("app gone", 0.0, {})
    peak = app.peak_rss(began, checked_until)
    gap, stall, runs = max_gap(app.runs(), began, checked_until, waited_began, waited_until)
    control_gap, _, _ = max_gap(app.runs(workdir_control(app)), began, checked_until)
    # The app's own stall when the kernel says how long it waited for a CPU; else the
    # gap less the lateness a plain sleeper showed (a rougher share of the machine's).
    gap_ok = (stall <= GAP_GOAL if stall is not None
              else gap <= GAP_GOAL + max(0.0, control_gap - RUN_EVERY))
    opens_failed = sum(1 for r in app.runs() if began <= r.at <= checked_until
                       and r.opened != "ok")
    label, size = budget
    rss_ok = None if size is None else (peak - rss_before) * 1024 <= size
    ok, tried, slowest, error = prober.summary()
    during = status_during[0] if status_during else ("not asked", 0.0, {})
    connections = None
    for item in during[2].get("listeners", []) if isinstance(during[2], dict) else []:
        if not isinstance(item, dict):
            continue
        if (item.get("path") == target.address if isinstance(target.address, str)
                else f"tcp:{target.address[1]}" in str(item.get("endpoint"))):
            connections = item.get("connections")
    lines = app.log_since(log_offset) if app.log_path.exists() else []
    alive = app.alive()
    stopping = time.monotonic()
    exit_status = app.stop()  # the graceful stop once the attackers are gone
    stop_seconds = time.monotonic() - stopping
    return Result(
        listener=target.label(), attack=attack.name, what=attack.what,
        rss_before_mib=rss_before / 1024, rss_peak_mib=peak / 1024,
        rss_after_mib=app.rss_now() / 1024, budget=label,
        budget_mib=None if size is None else size / MiB, rss_ok=rss_ok, attackers=outcome,
        runs=runs, max_gap=gap, max_stall=stall, control_gap=control_gap, gap_ok=gap_ok,
        opens_failed=opens_failed,
        probes_ok=ok, probes=tried, probe_slowest=slowest, probe_error=error,
        after=(f"{after[0]} in {after[1]:.2f} s" if after[0] else after[2]),
        after_ok=after[0] == 200,
        status_during=status_text(during),
        status_after=status_text(status_after),
        status_ok=during[0] == 0 and status_after[0] == 0,
        server_connections=connections, log_lines=len(lines), app_alive=alive,
        exit_status=exit_status, stop_seconds=stop_seconds)


def status_text(outcome: tuple[int | str, float, dict[str, Any]]) -> str:
    """``daemonapp status`` as the report shows it: exit status, time, and why it failed."""
    code, took, snapshot = outcome
    text = f"{code} in {took:.2f} s"
    if code != 0 and snapshot.get("error"):
        text += f" ({snapshot['error']})"
    return text


def mark(ok: bool | None) -> str:
    return "?" if ok is None else ("ok" if ok else "MISS")


def report(result: Result) -> str:
    r = result
    budget = (f"bound {r.budget} = +{r.budget_mib:.0f} MiB" if r.budget_mib is not None
              else f"bound: {r.budget}")
    stall = (f"less its wait for a CPU {r.max_stall:.2f} s (goal <= {GAP_GOAL})"
             if r.max_stall is not None else
             f"(goal <= {GAP_GOAL} + the plain sleeper's lateness: the kernel keeps no "
             "schedstat)")
    return textwrap.dedent(f"""\
        == {r.listener} / {r.attack}: {r.what}
           RSS         {r.rss_before_mib:.0f} MiB -> peak {r.rss_peak_mib:.0f} MiB \
(+{r.rss_peak_mib - r.rss_before_mib:.0f}), after {r.rss_after_mib:.0f} MiB; {budget} \
[{mark(r.rss_ok)}]
           attackers   {r.attackers}
           daemon      {r.runs} runs, max gap {r.max_gap:.2f} s vs run_every {RUN_EVERY} s, \
{stall} [{mark(r.gap_ok)}]; a plain sleeper's max gap {r.control_gap:.2f} s; open() failed \
in {r.opens_failed} runs
           requests    during: {r.probes_ok}/{r.probes} answered 200, slowest \
{r.probe_slowest:.2f} s{' (' + r.probe_error + ')' if r.probe_error else ''}; after: \
{r.after} [{mark(r.probes_ok == r.probes and r.after_ok)}]
           status      socket during: {r.status_during}; daemonapp status after: \
{r.status_after} \
[{mark(r.status_ok)}]; server connections mid-attack: {r.server_connections}
           app         {r.log_lines} log lines{'' if r.app_alive else '; THE APP DIED (or was killed at the RSS safety limit)'}; \
SIGTERM after the attack: exit {r.exit_status} in {r.stop_seconds:.1f} s \
[{mark(r.exit_status == 0)}]
        """)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listener", choices=["fastcgi", "scgi", "http", "all"],
                        default="all")
    parser.add_argument("--attack", default="all",
                        help="comma-separated: " + ",".join(a.name for a in ATTACKS))
    parser.add_argument("--seconds", type=float, default=10.0, help="per attack")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after each attack before the checks")
    parser.add_argument("--nofile", type=int, default=256, help="the app's fd limit")
    parser.add_argument("--probe-timeout", type=float, default=12.0,
                        help="seconds a normal request may take (default: past the "
                        "default queue_timeout, so a queued request gets its 503)")
    parser.add_argument("--slow-conns", type=int, default=100)
    parser.add_argument("--slow-every", type=float, default=2.0)
    parser.add_argument("--body-conns", type=int, default=20)
    parser.add_argument("--mpx-conns", type=int, default=3)
    parser.add_argument("--mpx-ids", type=int, default=100)
    parser.add_argument("--read-conns", type=int, default=20)
    parser.add_argument("--pipeline", type=int, default=20)
    parser.add_argument("--fd-conns", type=int, default=1000)
    parser.add_argument("--garbage-conns", type=int, default=200)
    parser.add_argument("--max-bytes", type=int, default=4 << 30,
                        help="bytes all attackers of one attack send at most")
    parser.add_argument("--source", default=str(ROOT), help="the daemonapp checkout to run")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    global PROBE_TIMEOUT
    PROBE_TIMEOUT = args.probe_timeout

    wanted = [a.strip() for a in args.attack.split(",")] if args.attack != "all" else [
        a.name for a in ATTACKS]
    unknown = set(wanted) - {a.name for a in ATTACKS}
    if unknown:
        parser.error(f"unknown attack {', '.join(sorted(unknown))}")
    docs_path = Path(args.source) / "docs" / "listeners.md"
    docs = documented_options(docs_path)
    docs_text = docs_path.read_text() if docs_path.exists() else ""
    args.max_body = parse_size(docs.get("max_body_bytes", ("10MiB", ""))[0]) or 10 * MiB
    budget = memory_budget(docs)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker needs fds

    workdir = Path(tempfile.mkdtemp(prefix="dhostile-", dir="/tmp"))
    app = App(workdir, args.source, args.nofile)
    print(f"daemonapp from {args.source}; app fd limit {args.nofile}; {args.seconds:g} s "
          f"per attack; load average {os.getloadavg()[0]:.2f}; workdir {workdir}")
    documented = ", ".join(f"{k} {docs[k][0].replace('`', '')}" for k in docs if re.search(
        r"timeout|max_body|max_param|budget|memory|buffer|connection|max_concurrent|backlog",
        k))
    print(f"documented (docs/listeners.md): {documented}; memory budget: {budget[0]}\n")
    results: list[Result] = []
    keys = ["fastcgi", "scgi", "http"] if args.listener == "all" else [args.listener]
    try:
        for key in keys:
            for attack in ATTACKS:
                if attack.name not in wanted or app.listeners[key].protocol not in \
                        attack.protocols:
                    continue
                bound = attack_bound(attack.name, args, docs, budget, docs_text)
                result = run_attack(app, attack, key, args, bound)
                results.append(result)
                print(report(result), flush=True)
    finally:
        app.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    if args.json:
        print(json.dumps({"results": [r.__dict__ for r in results]}))
    return 0


def table(results: list[Result]) -> str:
    rows = [("listener", "attack", "RSS base/peak MiB", "bound", "max gap s", "probes",
             "after", "status", "SIGTERM")]
    for r in results:
        rows.append((r.listener.split(" ")[0] + (" tcp" if "tcp" in r.listener else ""),
                     r.attack, f"{r.rss_before_mib:.0f}/{r.rss_peak_mib:.0f} "
                     f"[{mark(r.rss_ok)}]", "-" if r.budget_mib is None else
                     f"+{r.budget_mib:.0f}", f"{r.max_gap:.2f} [{mark(r.gap_ok)}]",
                     f"{r.probes_ok}/{r.probes}", r.after.split(" ")[0],
                     mark(r.status_ok), f"exit {r.exit_status} in {r.stop_seconds:.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)


if __name__ == "__main__":
    sys.exit(main())
