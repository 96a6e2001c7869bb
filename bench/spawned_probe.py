"""The first request after a spawn, for bench/spawned.sh.

Usage: python bench/spawned_probe.py PORT PATH READY_FILE T0_FILE

Creates READY_FILE once it is polling, then connects to 127.0.0.1:PORT every 0.5 ms
until lighttpd listens, and sends `GET PATH` (one request per connection) until one is
answered 200 with anchors/hello_wsgi.py's body. spawned.sh writes T0_FILE (lighttpd's
start, seconds since the epoch from bash's $EPOCHREALTIME) just before it starts lighttpd;
time.time() reads the same clock. Prints one JSON object:

- start_to_200_ms: lighttpd's start -> the first 200 answer (what the goal is judged on)
- first_request_ms: the first request lighttpd accepted, from its send to its answer
  (lighttpd binds its port before it spawns, so this request waits for the spawn too)
- first_status, attempts, statuses: what the requests before the 200 got (non-200
  answers are retried after 1 ms)
Exit status 1 when no 200 came within 30 s.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

EXPECTED_BODY = b"Hello, world!\n"
DEADLINE_S = 30.0


def ask(port: int, path: str, timeout: float) -> tuple[float, float, str, bytes] | None:
    """One request on a fresh connection: (sent, answered, status, body); None if refused."""
    sock = socket.socket()
    try:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return None
        sock.settimeout(timeout)
        sent = time.time()
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
                     .encode())
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        answered = time.time()
    finally:
        sock.close()
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    status = status_line.split(" ", 2)[1] if status_line.count(" ") >= 1 else "no answer"
    return sent, answered, status, body


def main() -> int:
    port, path = int(sys.argv[1]), sys.argv[2]
    ready, t0_file = Path(sys.argv[3]), Path(sys.argv[4])
    ready.write_text("ready\n")
    deadline = time.time() + DEADLINE_S
    statuses: list[str] = []
    first: tuple[float, float, str] | None = None
    while time.time() < deadline:
        result = ask(port, path, max(0.1, deadline - time.time()))
        if result is None:
            time.sleep(0.0005)
            continue
        sent, answered, status, body = result
        if first is None:
            first = (sent, answered, status)
        statuses.append(status)
        if status == "200" and body == EXPECTED_BODY:
            t0 = float(t0_file.read_text().strip())
            print(json.dumps({
                "start_to_200_ms": round((answered - t0) * 1000, 1),
                "first_request_ms": round((first[1] - first[0]) * 1000, 1),
                "first_status": first[2],
                "attempts": len(statuses),
                "statuses": statuses[:10],
            }))
            return 0
        if status == "200":
            statuses[-1] = f"200 with body {body[:60]!r}"
        time.sleep(0.001)
    print(json.dumps({"error": f"no 200 within {DEADLINE_S:g} s", "statuses": statuses[:10]}))
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
