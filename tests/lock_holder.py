"""A highlander lock holder run as a child process by the lock tests.

contend: take the lock COUNT times, appending "start PID TOKEN NS" and "end PID TOKEN NS"
lines (CLOCK_MONOTONIC, shared by all processes) to OUT while holding it.
hold: take it, print "held TOKEN HOLDER", then answer stdin commands one a line:
"still_held" -> "True"/"False", "release" -> "released", EOF -> exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from daemonapp.locks import highlander


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["contend", "hold"])
    parser.add_argument("name")
    parser.add_argument("--state-dir")
    parser.add_argument("--url")
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--hold-for", type=float, default=0.01)
    parser.add_argument("--out")
    args = parser.parse_args()
    lock = highlander(args.name, state_dir=args.state_dir, url=args.url, ttl=args.ttl)
    pid = os.getpid()
    if args.mode == "contend":
        for _ in range(args.count):
            if not lock.acquire(timeout=60):
                return 3
            _append(args.out, f"start {pid} {lock.token} {time.monotonic_ns()}\n")
            time.sleep(args.hold_for)
            _append(args.out, f"end {pid} {lock.token} {time.monotonic_ns()}\n")
            lock.release()
        return 0
    if not lock.acquire(timeout=60):
        return 3
    print(f"held {lock.token} {lock.holder}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "still_held":
            print(lock.still_held(), flush=True)
        elif command == "release":
            lock.release()
            print("released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
