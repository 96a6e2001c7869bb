"""Anchor for bench/spawned.sh: anchors/twisted_fcgi_floor.py, spawned by lighttpd.

Usage (lighttpd's bin-path): python bench/spawned_floor.py ANCHORS_DIR
Runs the anchor script unchanged, except that its `reactor.listenUNIX(path, factory)`
adopts the listening socket lighttpd passes as fd 0 instead of binding a path: the least
a Twisted responder pays per request when the web server spawns it (lighttpd 1.4 opens a
new connection per request, so that includes an accept and a close each time).
"""

import os
import runpy
import socket
import sys
from typing import Any

from twisted.internet import reactor

rx: Any = reactor


def adopt_fd0(path: str, factory: Any, *args: Any, **kwargs: Any) -> Any:
    inherited = socket.socket(fileno=0)
    family = inherited.family
    inherited.setblocking(False)  # a blocking socket would hang the reactor in accept
    inherited.detach()
    return rx.adoptStreamPort(0, family, factory)


anchor = os.path.join(sys.argv[1], "twisted_fcgi_floor.py")
rx.listenUNIX = adopt_fd0
sys.argv = [anchor, "(fd 0)"]
runpy.run_path(anchor, run_name="__main__")
