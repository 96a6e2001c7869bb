"""bench/hostile.py, short: hostile peers against a real `daemonapp run`, per listener.

Two seconds per attack, smaller swarms than the full run (but 20 never-reading peers,
as in the full run: fewer would stay under the bound even without the fix). Asserted
here is every goal the listeners meet today (issue 14's acceptance, DESIGN §4 "Bounded
by default"):

- every attack: the daemon keeps its schedule (no gap between runs over run_every +
  0.25 s once the time its reactor waited for a CPU is taken off: a loaded machine's
  share, not the app's), a normal request is answered once the attackers are gone, and
  SIGTERM ends the app with exit status 0;
- every attack: peak RSS within the documented bound (the listener's memory budget,
  max_listener_buffer_bytes, + 8 MiB);
- every attack: the status socket answers during it (at the connection cap too) and
  `daemonapp status` after it;
- normal requests answered during every attack but fd exhaustion, multiplexed greed
  and endless bodies included (with request buffering a body still arriving holds no
  WSGI thread).

Not asserted, because it cannot hold (see bench/README.md): requests during fd
exhaustion (past max_connections a connection is accepted and closed: that is the cap).
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

#: attack -> (RSS within the documented bound, requests answered during it, status
#: answered during and after it), per listener; the daemon's schedule, the answer after
#: the attack and the exit status are asserted for every attack listed
GOALS: dict[str, dict[str, tuple[bool, bool, bool]]] = {
    "fastcgi": {"slow-headers": (True, True, True), "endless-body": (True, True, True),
                "mpx-greed": (True, True, True), "never-read": (True, True, True),
                "fd-exhaustion": (True, False, True), "garbage": (True, True, True)},
    "scgi": {"slow-headers": (True, True, True), "endless-body": (True, True, True),
             "never-read": (True, True, True), "fd-exhaustion": (True, False, True),
             "garbage": (True, True, True)},
    "http": {"slow-headers": (True, True, True), "endless-body": (True, True, True),
             "never-read": (True, True, True), "fd-exhaustion": (True, False, True),
             "garbage": (True, True, True)},
}

#: one bench run per group, so that the suite's two workers share the ~100 s evenly
GROUPS = [
    ("fastcgi", ("slow-headers", "endless-body", "mpx-greed")),
    ("fastcgi", ("never-read", "fd-exhaustion", "garbage")),
    ("scgi", ("slow-headers", "endless-body", "never-read")),
    ("scgi", ("fd-exhaustion", "garbage")),
    ("http", ("slow-headers", "endless-body", "never-read")),
    ("http", ("fd-exhaustion", "garbage")),
]


def test_the_groups_cover_the_goals() -> None:
    for listener, attacks in GOALS.items():
        grouped = [a for name, group in GROUPS if name == listener for a in group]
        assert sorted(grouped) == sorted(attacks), listener


def _run(listener: str, attacks: tuple[str, ...]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--listener", listener, "--json",
         "--attack", ",".join(attacks), "--seconds", "2", "--settle", "0.5",
         "--probe-timeout", "3", "--slow-conns", "50", "--body-conns", "8",
         "--read-conns", "20", "--garbage-conns", "100", "--fd-conns", "400"],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    print(done.stdout)
    return results


@pytest.mark.parametrize(("listener", "attacks"), GROUPS,
                         ids=[f"{name}-{group[0]}" for name, group in GROUPS])
def test_hostile_peers_short_run(listener: str, attacks: tuple[str, ...]) -> None:
    """Under each attack the daemon keeps its schedule and the app recovers and stops
    cleanly; the goals listed in GOALS for this listener hold too."""
    results = _run(listener, attacks)
    assert sorted(r["attack"] for r in results) == sorted(attacks)
    for r in results:
        where = f"{listener} / {r['attack']}: {r}"
        assert r["app_alive"], where
        assert r["runs"] >= 3, where
        assert r["gap_ok"], where
        assert r["after_ok"], where
        assert r["exit_status"] == 0, where
        rss, answered, status = GOALS[listener][r["attack"]]
        if rss:
            assert r["rss_ok"] is True, where
        if answered:
            # The prober is a thread of the bench's process, sharing its GIL with the
            # swarm that drives the attack: how many probes it gets through in the short
            # run measures the bench on a loaded machine, not the app. One answered probe
            # during the attack is the claim; each one tried must be answered.
            assert r["probes"] >= 1, where
            assert r["probes_ok"] == r["probes"], where
        if status:
            assert r["status_ok"], where
