"""Anchor for bench/spawned.sh: anchors/flup_app.py's server, spawned by lighttpd.

Usage (lighttpd's bin-path): python bench/spawned_flup.py ANCHORS_DIR
The same as anchors/flup_app.py (flup's threaded WSGIServer, multiplexed=False, flup's
default thread pool, the hello-world app of anchors/hello_wsgi.py) except that it gets
no bindAddress: flup's WSGIServer then serves FCGI_LISTENSOCK_FILENO, the listening
socket lighttpd passes as fd 0.
"""

import sys

sys.path.insert(0, sys.argv[1])

from flup.server.fcgi import WSGIServer
from hello_wsgi import app

WSGIServer(app, multiplexed=False).run()
