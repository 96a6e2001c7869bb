"""bench/fastcgi_report.py's CPU figures: per request, per process, and the ceiling of
processes 2 against 1 that the cores allow, from the files bench/fastcgi.sh leaves."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # last: bench/'s scripts must shadow no module

import fastcgi_report as report  # noqa: E402  (bench/ is not a package)

WRK = """Running 5s test @ http://127.0.0.1:1/x/
  2 threads and 32 connections
  Latency Distribution
     50%    1.00ms
     99%    {p99}
  {requests} requests in 5.00s, 1.00MB read
Requests/sec:  {rps}
Transfer/sec:      1.00MB
"""


def cpu_file(app: list[tuple[str, float, int | None]], nginx_s: float, wrk_s: float,
             idle_ticks: int, total_ticks: int) -> dict[str, Any]:
    """What bench/fastcgi_cpu.py writes for a 5 s window on 2 cores."""
    processes = []
    for number, (role, cpu_s, requests) in enumerate(app):
        entry: dict[str, Any] = {"pid": 100 + number, "role": role, "cpu_s": cpu_s,
                                 "born_in_window": False}
        if requests is not None:
            entry["requests"] = requests
            entry["connections"] = [8, 8, 9]
        processes.append(entry)
    return {"window_s": 5.0, "cpus": 2, "clk_tck": 100, "app_processes": processes,
            "app_ended_in_window": [], "app_s": sum(cpu for _, cpu, _ in app),
            "nginx_s": nginx_s, "wrk_s": wrk_s,
            "machine_ticks": {"idle": idle_ticks, "irq": 0, "total": total_ticks},
            "wrk_status": 0}


def test_ratio_ceiling_is_2a_over_a_plus_c_on_two_cores() -> None:
    """The model of issue 19: a = 134 us, c = 66 us gives 1.34x; c = a/4 gives 1.6x."""
    assert report.ratio_ceiling(134.0, 66.0, 2) == pytest.approx(1.34)
    assert report.ratio_ceiling(100.0, 25.0, 2) == pytest.approx(1.6)


def test_ratio_ceiling_is_at_most_two_processes_worth() -> None:
    """With cores to spare, two processes are the bound: 2x, not 4 * 30/40 = 3x."""
    assert report.ratio_ceiling(30.0, 10.0, 4) == 2.0


def test_rate_ceiling_is_every_core_busy_or_each_process_on_its_core() -> None:
    """2 cores at 100 + 50 us make 13,333 req/s; on 8 cores 2 processes of 100 us, 20,000;
    one process of 100 us, 10,000 on any number of cores."""
    assert report.rate_ceiling(100.0, 50.0, 2, 2) == pytest.approx(13333.33, abs=0.01)
    assert report.rate_ceiling(100.0, 50.0, 8, 2) == pytest.approx(20000.0)
    assert report.rate_ceiling(100.0, 50.0, 2, 1) == pytest.approx(10000.0)


def test_cpu_round_per_request_cores_idle_and_processes() -> None:
    """4 s of app, 2 of nginx, 1 of wrk and 9 busy in all over 50,000 requests in 5 s."""
    cpu = cpu_file([("worker", 1.5, 20000), ("supervisor", 2.5, 30000)], 2.0, 1.0,
                   idle_ticks=100, total_ticks=1000)
    figures = report.cpu_round(cpu, 50000)
    assert [round(figures[key], 3) for key in ("app", "nginx", "wrk", "rest")] == \
        [80.0, 40.0, 20.0, 40.0]
    assert [round(figures[key], 3) for key in ("app_cores", "nginx_cores", "wrk_cores",
                                               "rest_cores", "idle")] == \
        [0.8, 0.4, 0.2, 0.4, 0.1]
    assert figures["processes"] == [
        {"role": "supervisor", "cpu": 0.625, "requests": 0.6,
         "us": pytest.approx(83.333, abs=0.001), "connections": 8},
        {"role": "worker", "cpu": 0.375, "requests": 0.4, "us": 75.0, "connections": 8},
    ]


def test_report_prints_the_ceiling_and_keeps_the_miss(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """native p2 at 1.2x p1 is a MISS of the 1.6x goal; the ceiling is printed beside it."""
    # p1: 50,000 requests, the app 100 us each; p2: 60,000, the app 90 us, nginx + wrk 30;
    # 10 s of CPU in each 5 s window, 6.5 and 7.2 busy: nothing else ran
    runs = {"native_p1": (10000, 50000, [("process", 5.0, None)], 1.0, 0.5, 350),
            "native_p2": (12000, 60000, [("supervisor", 2.7, 30000), ("worker", 2.7, 30000)],
                          1.2, 0.6, 280)}
    for name, (rps, requests, app, nginx_s, wrk_s, idle) in runs.items():
        (tmp_path / f"{name}.check.1").write_text("200 Hello, world!\n")
        (tmp_path / f"{name}.wrk.1").write_text(
            WRK.format(p99="4.00ms", requests=requests, rps=rps))
        (tmp_path / f"{name}.cpu.1").write_text(json.dumps(
            cpu_file(app, nginx_s, wrk_s, idle_ticks=idle, total_ticks=1000)))
    monkeypatch.setattr(sys, "argv", ["fastcgi_report.py", str(tmp_path), "1",
                                      "native_p1", "native_p2"])
    assert report.main() == 0
    lines = capsys.readouterr().out.splitlines()
    verdict = next(line for line in lines if line.startswith("ours: native, processes 2"))
    assert verdict.endswith("1.20x native_p1 >= 1.6x native_p1  MISS")
    assert "# native_p2: supervisor 50% of the CPU, 50% of the requests, 90 us each, " \
        "8 connections; worker 50% of the CPU, 50% of the requests, 90 us each, " \
        "8 connections" in lines
    # a = 100 us at p1, c = 20 + 10 us at p2: 2 * 100/130 = 1.54x; p1 at its own costs
    # 1e6/100 = 10,000 req/s, p2 at a = 90 us 2e6/120 = 16,667 req/s: 1.67x
    assert "# native_p2/native_p1: measured 1.20x; ceiling 2a/(a+c) = 1.54x (a = 100.0 " \
        "us, the app at p1; c = 30.0 us, nginx + wrk at p2; 2 cores)" in lines
    assert "#   what the cores allow each at its own costs: p1 10,000 req/s, p2 16,667 " \
        "(a = 90.0 us): 1.67x; measured p1 10,000 (100% of it), p2 12,000 (72%)" in lines
    assert "#   idle: p1 35.0%, p2 28.0%; the rest of the machine took 0.00 cores at p1, " \
        "0.00 at p2; the app at p1 used 1.00 of its core" in lines
