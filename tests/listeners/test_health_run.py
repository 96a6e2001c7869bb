"""GET /healthz and GET /metrics from a real `daemonapp run` (DESIGN §10, issue 18)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._processes import ROOT, wait_until

TIMEOUT = 20.0


def http_get(path: Path, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` over the unix socket at ``path``: (status, headers, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.integration
def test_healthz_and_metrics_then_503_while_a_stop_drains(tmp_path: Path) -> None:
    """/healthz 200 and /metrics parsed while running; after SIGTERM with a run in flight,
    /healthz 503 and other paths 503 + Retry-After until the run ends; then exit 0."""
    sock = tmp_path / "run" / "http.sock"
    marker = tmp_path / "run-started"
    config = tmp_path / "app.yaml"
    config.write_text(
        "app: {state_dir: ./var, stop_timeout: 30s}\n"
        "listeners:\n"
        f"  - {{protocol: http, endpoint: 'unix:{sock}', health: true, metrics: true,\n"
        "      native: tests.listeners.apps:hello_native, queue_timeout: 3s}\n"
        "daemons:\n"
        "  slow:\n"
        "    type: tests.listeners.slow_daemons:SlowOnce\n"
        f"    marker: {marker}\n"
        "    seconds: 4\n"
        "    start_delay: 1s\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(sock.exists, TIMEOUT), "the socket never appeared"
        status, headers, body = http_get(sock, "/healthz")
        assert (status, headers["content-type"]) == (200, "application/json")
        assert json.loads(body)["status"] == "ok"
        status, headers, body = http_get(sock, "/metrics")
        assert status == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode())
                   for s in family.samples}
        assert samples[("daemonapp_up", ())] == 1.0
        assert samples[("daemonapp_daemon_paused", (("daemon", "slow"),))] == 0.0
        assert 0.0 <= samples[("daemonapp_loop_lag_seconds", ())] < 1.0

        assert wait_until(marker.exists, TIMEOUT), "the run never started"
        proc.send_signal(signal.SIGTERM)
        answers: list[tuple[int, dict[str, str], bytes]] = []

        def stopping() -> bool:
            answers.append(http_get(sock, "/healthz"))
            return answers[-1][0] == 503

        assert wait_until(stopping, TIMEOUT)
        assert json.loads(answers[-1][2])["reasons"] == ["stopping: signal SIGTERM"]
        status, headers, body = http_get(sock, "/")
        assert (status, headers["retry-after"]) == (503, "3")
        assert b"Service Unavailable\n" in body  # chunked: twisted.web's framing around it
        assert proc.poll() is None  # the run is still in flight: the app waits for it
        started = time.monotonic()
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, output
        assert time.monotonic() - started < TIMEOUT
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


@pytest.mark.integration
def test_healthz_503_while_a_daemon_is_in_alert_then_200_after_its_recovery(
        tmp_path: Path) -> None:
    """A daemon that fails every run with alert_after 2 turns /healthz 503, naming it, and
    the first run that works after it turns it back to 200; /metrics says the same."""
    sock = tmp_path / "run" / "http.sock"
    broken = tmp_path / "broken"
    broken.touch()
    config = tmp_path / "app.yaml"
    config.write_text(
        "app: {state_dir: ./var}\n"
        "listeners:\n"
        f"  - {{protocol: http, endpoint: 'unix:{sock}', health: true, metrics: true,\n"
        "      native: tests.listeners.apps:hello_native}\n"
        "daemons:\n"
        "  flaky:\n"
        "    type: tests.listeners.slow_daemons:FailsWhile\n"
        f"    broken: {broken}\n"
        "    run_every: 0.2s\n"
        "    maximum_idle: 0.3s\n"
        "    alert_after: 2\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def healthz_is(status: int) -> Callable[[], bool]:
        def check() -> bool:
            answers.append(http_get(sock, "/healthz"))
            return answers[-1][0] == status
        return check

    def alert_metric() -> float:
        status, _, body = http_get(sock, "/metrics")
        assert status == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode())
                   for s in family.samples}
        return samples[("daemonapp_daemon_in_alert", (("daemon", "flaky"),))]

    try:
        assert wait_until(sock.exists, TIMEOUT), "the socket never appeared"
        assert wait_until(healthz_is(503), TIMEOUT), answers[-1:]
        body = json.loads(answers[-1][2])
        assert body["status"] == "unavailable"
        assert body["in_alert"] == 1
        [reason] = body["reasons"]
        assert reason.startswith("daemon flaky in alert: ")
        assert reason.endswith(" failed run(s) in a row")
        assert int(reason.split(": ")[1].split()[0]) >= 2
        assert alert_metric() == 1.0

        broken.unlink()
        assert wait_until(healthz_is(200), TIMEOUT), answers[-1:]
        body = json.loads(answers[-1][2])
        assert (body["status"], body["reasons"], body["in_alert"]) == ("ok", [], 0)
        assert alert_metric() == 0.0

        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, output
        assert "flaky" in output and "alert" in output  # the default target: the log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
