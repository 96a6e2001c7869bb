"""A stand-in for ``daemonapp run``: an SCGI or FastCGI server on a unix socket.

It answers every request with a JSON description of what it received (parameters in
order, body, its own pid and environment), so tests can check what the CGI frontend
relays. ``--mode half`` sends half an answer and SIGKILLs itself (``half-unsized``: one
without Content-Length, as a streaming app would); ``--mode never``
starts but never listens. Each start is appended to ``--starts`` as one line (the pid).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time


def read_exact(rfile: object, n: int) -> bytes:
    data = rfile.read(n)  # type: ignore[attr-defined]
    if len(data) != n:
        raise EOFError("short read")
    return bytes(data)


def read_scgi(rfile: object) -> tuple[list[tuple[str, str]], bytes]:
    digits = b""
    while True:
        c = read_exact(rfile, 1)
        if c == b":":
            break
        digits += c
    header = read_exact(rfile, int(digits))
    if read_exact(rfile, 1) != b",":
        raise ValueError("bad netstring")
    fields = header.split(b"\0")[:-1]
    params = [
        (fields[i].decode("latin-1"), fields[i + 1].decode("latin-1"))
        for i in range(0, len(fields), 2)
    ]
    length = int(dict(params).get("CONTENT_LENGTH", "0") or 0)
    return params, read_exact(rfile, length)


def read_fastcgi(rfile: object) -> tuple[list[tuple[str, str]], bytes]:
    params_data = b""
    body = b""
    while True:
        header = read_exact(rfile, 8)
        record_type = header[1]
        length = (header[4] << 8) | header[5]
        content = read_exact(rfile, length)
        read_exact(rfile, header[6])
        if record_type == 4:
            params_data += content
        elif record_type == 5:
            if not content:
                break
            body += content
    params = []
    i = 0
    while i < len(params_data):
        lengths = []
        for _ in range(2):
            if params_data[i] < 128:
                lengths.append(params_data[i])
                i += 1
            else:
                lengths.append(int.from_bytes(params_data[i : i + 4], "big") & 0x7FFFFFFF)
                i += 4
        name = params_data[i : i + lengths[0]].decode("latin-1")
        i += lengths[0]
        value = params_data[i : i + lengths[1]].decode("latin-1")
        i += lengths[1]
        params.append((name, value))
    return params, body


def fcgi_record(record_type: int, content: bytes) -> bytes:
    n = len(content)
    return bytes((1, record_type, 0, 1, n >> 8, n & 255, 0, 0)) + content


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--protocol", choices=["scgi", "fastcgi"], default="scgi")
    parser.add_argument(
        "--mode", choices=["ok", "half", "half-unsized", "never", "exit"], default="ok"
    )
    parser.add_argument("--starts")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--idle-exit", type=float, default=60.0)
    args = parser.parse_args()

    if args.starts:
        fd = os.open(args.starts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)
    if args.mode == "exit":
        return 3
    time.sleep(args.startup_delay)  # a slow start widens the race the frontend must handle
    if args.mode == "never":
        time.sleep(args.idle_exit)
        return 0

    last_request = [time.monotonic()]

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            last_request[0] = time.monotonic()
            reader = read_fastcgi if args.protocol == "fastcgi" else read_scgi
            try:
                params, body = reader(self.rfile)
            except (EOFError, ValueError):
                return  # a probe that connected and closed
            payload = json.dumps(
                {
                    "params": params,
                    "body": body.decode("latin-1"),
                    "daemon_pid": os.getpid(),
                    "daemon_env": dict(os.environ),
                }
            ).encode()
            cut = args.mode.startswith("half")
            if cut:
                payload = payload * 50  # big enough to be sent in pieces
            head = b"Status: 200 OK\r\nContent-Type: application/json\r\n"
            if args.mode != "half-unsized":
                head += b"Content-Length: %d\r\n" % len(payload)
            answer = head + b"\r\n" + payload
            if cut:
                answer = answer[: len(answer) // 2]
            if args.protocol == "fastcgi":
                out = b"".join(
                    fcgi_record(6, answer[i : i + 32768]) for i in range(0, len(answer), 32768)
                )
                if args.mode == "ok":
                    out += fcgi_record(6, b"") + fcgi_record(3, b"\0\0\0\0\0\0\0\0")
            else:
                out = answer
            self.wfile.write(out)
            self.wfile.flush()
            if cut:
                os.kill(os.getpid(), signal.SIGKILL)

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    server = Server(args.socket, Handler)

    def watchdog() -> None:
        while time.monotonic() - last_request[0] < args.idle_exit:
            time.sleep(0.2)
        server.shutdown()

    threading.Thread(target=watchdog, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        try:
            os.unlink(args.socket)
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    raise SystemExit(main())
