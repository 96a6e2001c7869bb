"""bench/hostile.py, short: hostile peers against a real `daemonapp run`, per listener.

Two seconds per attack, smaller swarms than the full run. Asserted here are the goals
the listeners meet today (issue 14's acceptance, DESIGN §4 "Bounded by default"):

- every attack: the daemon keeps its schedule (no gap between runs over run_every +
  0.25 s), a normal request is answered once the attackers are gone, and SIGTERM
  ends the app with exit status 0;
- slow headers and garbage: RSS stays within the documented bound (connections x
  max_param_bytes), normal requests and `daemonapp status` are answered during the
  attack;
- endless bodies on FastCGI and HTTP (they end in a 413) and SCGI clients that never
  read: normal requests and status answered during the attack.

Not asserted, because the listeners do not meet them yet (see bench/README.md):
RSS of endless bodies and multiplexed greed (a request waiting for a thread buffers
its whole body), clients that never read on FastCGI and HTTP (answers pile up in
memory, the daemon falls behind), requests and status during fd exhaustion (no
connection cap), requests during SCGI endless bodies (every thread blocked in read).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "hostile.py"

#: attack -> (RSS within the documented bound, requests and status answered during it),
#: per listener; the daemon's schedule, the answer after and the exit status are
#: asserted for every attack listed
GOALS: dict[str, dict[str, tuple[bool, bool]]] = {
    "fastcgi": {"slow-headers": (True, True), "garbage": (True, True),
                "endless-body": (False, True), "fd-exhaustion": (False, False)},
    "scgi": {"slow-headers": (True, True), "garbage": (True, True),
             "never-read": (False, True), "endless-body": (False, False),
             "fd-exhaustion": (False, False)},
    "http": {"slow-headers": (True, True), "garbage": (True, True),
             "endless-body": (False, True), "fd-exhaustion": (False, False)},
}


def _run(listener: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--listener", listener, "--json",
         "--attack", ",".join(GOALS[listener]), "--seconds", "2", "--settle", "1",
         "--slow-conns", "50", "--body-conns", "8", "--read-conns", "8",
         "--garbage-conns", "100", "--fd-conns", "400"],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    print(done.stdout)
    return results


@pytest.mark.parametrize("listener", ["fastcgi", "scgi", "http"])
def test_hostile_peers_short_run(listener: str) -> None:
    """Under each attack the daemon keeps its schedule and the app recovers and stops
    cleanly; the goals listed in GOALS for this listener hold too."""
    results = _run(listener)
    assert sorted(r["attack"] for r in results) == sorted(GOALS[listener])
    for r in results:
        where = f"{listener} / {r['attack']}: {r}"
        assert r["app_alive"], where
        assert r["runs"] >= 3, where
        assert r["gap_ok"], where
        assert r["after_ok"], where
        assert r["exit_status"] == 0, where
        rss, answered = GOALS[listener][r["attack"]]
        if rss:
            assert r["rss_ok"] is True, where
        if answered:
            assert r["probes"] >= 2, where
            assert r["probes_ok"] == r["probes"], where
            assert r["status_ok"], where
