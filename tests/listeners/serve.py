"""Run one listener on the real reactor, for the integration tests and benchmarks.

Usage: python tests/listeners/serve.py '<json listener options>'
Prints "READY <json snapshot>" once listening; SIGTERM drains, prints
"DONE <json snapshot>" and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.internet import reactor

from daemonapp.listeners import build_listener


def main() -> None:
    """Build, start, wait for SIGTERM, drain."""
    options = json.loads(sys.argv[1])
    rx: Any = reactor
    listener: Any = build_listener(options, reactor=rx, base_dir=os.getcwd())
    listener.startService()

    def done(_: object) -> None:
        print("DONE " + json.dumps(listener.snapshot()), flush=True)
        rx.stop()

    def stop() -> None:
        listener.drain().addBoth(done)

    signal.signal(signal.SIGTERM, lambda *_: rx.callFromThread(stop))
    print("READY " + json.dumps(listener.snapshot()), flush=True)
    rx.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
