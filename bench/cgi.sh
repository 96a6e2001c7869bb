#!/usr/bin/env bash
# CGI frontend benchmark (DESIGN §5): daemonapp-cgi answering through a running daemon
# vs `python -c pass` on the same interpreter (the venv's python, never a pyenv shim),
# median and p95, goal <= 1.3x; and cold start (daemon down -> first answer), goal <= 1 s.
# Usage: bench/cgi.sh [--runs N] [--cold-runs M] [--daemon auto|fake|real] [--python PATH]
#                     [--layout production|default]
#                     [--source CHECKOUT]
# --daemon real starts `daemonapp run`; fake uses the stdlib stand-in
# tests/cgi_fixtures/fake_daemon.py; auto (default) picks real when daemonapp.cli imports.
# The output says which one ran.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)
unset PYTHONDONTWRITEBYTECODE   # the timings use warm .pyc caches, as an install has
exec "$python" bench/cgi_timing.py --python "$python" "$@"
