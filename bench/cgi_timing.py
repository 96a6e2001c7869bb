"""CGI frontend benchmark: ``daemonapp-cgi`` through a running daemon vs ``python -c pass``.

Usage: python bench/cgi_timing.py [--runs N] [--cold-runs M] [--daemon auto|fake|real]
                                  [--python PATH] [--source DIR]

Prints one table with the median and p95 wall time of

- ``python -c pass`` (the anchor, same interpreter, same run, interleaved),
- ``daemonapp-cgi`` answering a GET through a running daemon (goal: median <= 1.3x the anchor),
- ``python -c "import daemonapp.cgi_frontend"`` (where the time goes),
- a cold start: daemon down, load in range → first answer (goal: <= 1 s).

Every program runs as a child of this process with the same environment; the module
caches (.pyc) live in a private PYTHONPYCACHEPREFIX and are warm before timing, as
after an install. ``--daemon real`` lets the frontend start ``daemonapp run``;
``--daemon fake`` uses tests/cgi_fixtures/fake_daemon.py, a stdlib SCGI server standing
in for it; ``auto`` (the default) picks real when ``daemonapp.cli`` imports.
Uses hyperfine for the warm comparison when it is installed. ``--source DIR`` imports
daemonapp from another checkout (default: this one), for A/B comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "daemonapp-cgi"
FAKE_DAEMON = ROOT / "tests" / "cgi_fixtures" / "fake_daemon.py"
sys.path.insert(0, str(ROOT))

from daemonapp.cgi_frontend import write_sidecar  # noqa: E402

WARM_GOAL = 1.3
COLD_GOAL = 1.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, bytes]:
    """Wall time, CPU time (user + sys of the child alone) and stdout of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # cwd "/": `python -c` puts the cwd first on sys.path, never a checkout's daemonapp.
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60, check=False, cwd="/")
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0 or (done.stdout.startswith(b"Status: 5") and done.stderr):
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stdout.decode()!r} "
                         f"{done.stderr.decode()}")
    return elapsed, cpu, done.stdout


def status_of(answer: bytes) -> str:
    first = answer.split(b"\n", 1)[0].strip()
    return first[len(b"Status: "):].decode() if first.startswith(b"Status: ") else "200 OK"


def wait_listening(path: Path, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(path))
                return
            except OSError:
                time.sleep(0.01)
    raise SystemExit(f"nothing listens on {path} after {timeout} s")


def stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


class Site:
    """A temp directory with a sidecar (fake) or a YAML file (real) and its daemons."""

    def __init__(self, kind: str, python: str, layout: str = "production") -> None:
        self.kind = kind
        self.python = python
        self.root = Path(tempfile.mkdtemp(prefix="dcgib-", dir="/tmp"))
        self.sock = self.root / "app.sock"
        self.starts = self.root / "starts"
        if layout == "production":
            # The usual production layout: the file in etc/, the state elsewhere, named
            # by an absolute, quoted path with comments around it.
            (self.root / "etc").mkdir()
            self.config = self.root / "etc" / "daemons.yaml"
            self.state_dir = self.root / "srv" / "var"
            app_section = (f"app:\n  # state lives outside the config directory\n"
                           f"  state_dir: \"{self.state_dir}\"   # absolute\n"
                           "  stay_alive_for: 10m\n")
        else:
            self.config = self.root / "app.yaml"
            self.state_dir = self.root / "var"
            app_section = "app: {state_dir: ./var, stay_alive_for: 10m}\n"
        if kind == "fake":
            write_sidecar(str(self.state_dir), {
                "socket": str(self.sock), "protocol": "scgi", "min_load": 0.0,
                "max_load": None, "start_timeout": 10.0, "lock_timeout": 10.0,
                "state_dir": str(self.state_dir),
                "argv": [python, str(FAKE_DAEMON), "--socket", str(self.sock),
                         "--starts", str(self.starts), "--idle-exit", "600"],
            })
        else:
            self.config.write_text(
                app_section
                + "listeners:\n"
                f"  - {{protocol: scgi, endpoint: 'unix:{self.sock}:mode=0600',"
                " wsgi: 'bench.cgi_app:application', threads: 0}\n"
                "cgi: {min_load: 0, max_load: 1000, start_timeout: 10s}\n"
            )

    def cgi_env(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update({
            "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "localhost", "SERVER_PORT": "80", "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "/app", "PATH_INFO": "/bench", "QUERY_STRING": "",
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "localhost",
            "DAEMONAPP_CGI_LOADAVG": "1.0",
        })
        if self.kind == "fake":
            env["DAEMONAPP_STATE_DIR"] = str(self.state_dir)
        else:
            env["DAEMONAPP_CONFIG"] = str(self.config)
        return env

    def daemon_pids(self) -> list[int]:
        if self.kind == "fake":
            return [int(p) for p in self.starts.read_text().split()] if self.starts.exists() else []
        pids_dir = self.state_dir / "pids"
        names = os.listdir(pids_dir) if pids_dir.exists() else []
        return [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]

    def stop_daemons(self) -> None:
        for pid in self.daemon_pids():
            stop_pid(pid)
        deadline = time.monotonic() + 10
        while self.sock.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.sock.exists():
            self.sock.unlink()

    def close(self) -> None:
        self.stop_daemons()
        shutil.rmtree(self.root, ignore_errors=True)


def row(name: str, values: list[float]) -> str:
    return (f"{name:<44} {len(values):>5} {percentile(values, 0.5) * 1000:>9.2f}"
            f" {percentile(values, 0.95) * 1000:>9.2f} {min(values) * 1000:>9.2f}")


def hyperfine_medians(pass_argv: list[str], cgi_argv: list[str], env: dict[str, str],
                      runs: int, root: Path) -> tuple[list[float], list[float]] | None:
    exe = shutil.which("hyperfine")
    if exe is None:
        return None
    out = root / "hyperfine.json"
    subprocess.run([exe, "-N", "--warmup", "10", "--runs", str(runs), "--export-json",
                    str(out), " ".join(pass_argv), " ".join(cgi_argv)],
                   env=env, check=True, stdin=subprocess.DEVNULL)
    results = json.loads(out.read_text())["results"]
    return results[0]["times"], results[1]["times"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--daemon", choices=["auto", "fake", "real"], default="auto",
                        help="auto: `daemonapp run` when daemonapp.cli imports, else the fake")
    parser.add_argument("--source", default=str(ROOT), help="checkout to import daemonapp from")
    parser.add_argument("--layout", choices=["production", "default"], default="production",
                        help="production: the file in etc/ and state_dir elsewhere (absolute, "
                             "quoted, commented); default: state_dir ./var next to the file")
    venv_python = ROOT / ".venv" / "bin" / "python"
    parser.add_argument("--python", default=str(venv_python if venv_python.exists()
                                                 else sys.executable))
    args = parser.parse_args()

    # Run the venv's python by its venv path (a symlink): its realpath is the base
    # interpreter, outside the venv. Refuse a shim: a shell script in front of python.
    python = os.path.abspath(args.python)
    with open(os.path.realpath(python), "rb") as f:
        if f.read(2) == b"#!":
            raise SystemExit(f"{python} is a script (a pyenv shim?), not an interpreter")
    if args.daemon == "auto":
        probe = subprocess.run([python, "-c", "import daemonapp.cli"], cwd="/",
                               env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                    "PYTHONPATH": os.path.abspath(args.source)},
                               capture_output=True, check=False)
        args.daemon = "real" if probe.returncode == 0 else "fake"
    site = Site(args.daemon, python, args.layout)
    pycache = site.root / "pycache"
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": os.path.abspath(args.source) + os.pathsep + str(ROOT),
        "PYTHONPYCACHEPREFIX": str(pycache),
    }
    env = site.cgi_env(base)
    pass_argv = [python, "-c", "pass"]
    cgi_argv = [python, os.path.join(args.source, "scripts", "daemonapp-cgi")]
    import_argv = [python, "-c", "import daemonapp.cgi_frontend"]
    try:
        # Warm the module caches as an install does (compileall), outside the timings.
        subprocess.run([python, "-c", "import daemonapp.cgi_frontend, yaml"], env=base,
                       check=True, cwd="/")
        cold: list[float] = []
        for _ in range(args.cold_runs):
            site.stop_daemons()
            elapsed, _, answer = timed(cgi_argv, env)
            if not status_of(answer).startswith("200"):
                raise SystemExit(f"cold start answered {status_of(answer)}")
            cold.append(elapsed)
        wait_listening(site.sock)
        cases = {"pass": pass_argv, "cgi": cgi_argv, "import": import_argv}
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(10 + args.runs):  # interleaved: load drift hits all alike
            for name, argv in cases.items():
                elapsed, used, answer = timed(argv, env)
                if name == "cgi" and not status_of(answer).startswith("200"):
                    raise SystemExit(f"daemonapp-cgi answered {status_of(answer)}")
                if round_ >= 10:  # the first rounds warm up
                    wall[name].append(elapsed)
                    cpu[name].append(used)
        tool = "bench/cgi_timing.py loop (hyperfine not installed)"
        measured = hyperfine_medians(pass_argv, cgi_argv, env, args.runs, site.root)
        if measured is not None:
            tool = "hyperfine (wall times); CPU times from bench/cgi_timing.py loop"
            wall["pass"], wall["cgi"] = measured
    finally:
        site.close()

    ratio = percentile(wall["cgi"], 0.5) / percentile(wall["pass"], 0.5)
    cpu_ratio = percentile(cpu["cgi"], 0.5) / percentile(cpu["pass"], 0.5)
    min_ratio = min(wall["cgi"]) / min(wall["pass"])
    cold_median = percentile(cold, 0.5)
    daemon = ("tests/cgi_fixtures/fake_daemon.py (stand-in for `daemonapp run`)"
              if args.daemon == "fake" else "daemonapp run (real)")
    print(f"interpreter: {python} -> {os.path.realpath(python)}")
    print(f"daemon:      {daemon}")
    print(f"layout:      {args.layout} (config {site.config.relative_to(site.root)}, "
          f"state_dir {site.state_dir.relative_to(site.root)})")
    print(f"timing:      {tool}")
    print(f"daemonapp:   imported from {os.path.abspath(args.source)}")
    print(f"load:        {os.getloadavg()[0]:.2f} (1-minute average at the end; >= cores "
          "means a busy machine and noisy wall times)")
    print()
    print(f"{'case':<44} {'runs':>5} {'median ms':>9} {'p95 ms':>9} {'min ms':>9}"
          f" {'CPU med ms':>10}")
    for name, label in (("pass", "python -c pass (anchor)"),
                        ("cgi", "daemonapp-cgi through a running daemon"),
                        ("import", "python -c 'import daemonapp.cgi_frontend'")):
        print(row(label, wall[name]) + f" {percentile(cpu[name], 0.5) * 1000:>10.2f}")
    print(row("cold start: daemon down -> first answer", cold))
    print()
    print(f"warm: median ratio {ratio:.2f}x python -c pass, goal <= {WARM_GOAL}x: "
          f"{'PASS' if ratio <= WARM_GOAL else 'MISS'}  (min/min {min_ratio:.2f}x, "
          f"CPU median {cpu_ratio:.2f}x)")
    print(f"cold: median {cold_median:.3f} s, goal <= {COLD_GOAL:g} s: "
          f"{'PASS' if cold_median <= COLD_GOAL else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
