#!/usr/bin/env bash
# FastCGI listener benchmark (DESIGN §4): everything behind the same nginx, in one run.
#
#   ./dev bench fastcgi [--rounds N] [--duration 5s] [--only floor,native,...]
#
# nginx (the anchors' nginx_fcgi.conf.in: keepalive 16 + fastcgi_keep_conn, one
# upstream and location per configuration, temp files in a mktemp dir) on a free
# loopback port; `wrk -t1 -c16 -d5s --latency` against each configuration in turn:
#   floor   anchors/twisted_fcgi_floor.py: the least a Twisted responder can do (anchor)
#   flup    anchors/flup_app.py: flup's threaded WSGIServer, hello world (anchor)
#   native  ours, a native handler                      goal >= 0.7x floor
#   wsgi    ours, hello_wsgi.py in the default pool     goal >= 3x flup
#   wsgi0   ours, the same with threads: 0              goal >= 3x flup
#   busy    ours native, in a DaemonApp beside 100 always-busy daemons (max_items 10)
#                                                       goal p99 <= 10 ms
#   busy2ms the same with the app's time_slice at 2 ms (default 10 ms): info
# Each server gets a 1 s warm-up first. With --rounds N the configurations run N times,
# interleaved, and the table shows medians. Anchors: ../shared/anchors from the project
# root (or $DAEMONAPP_ANCHORS). Absolute figures are noisy on a shared machine: compare
# the ratios, and check the load average printed in the header.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-$root/.venv/bin/python}
anchors=${DAEMONAPP_ANCHORS:-$root/../shared/anchors}
rounds=1
duration=5s
only=floor,flup,native,wsgi,wsgi0,busy,busy2ms
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "fastcgi.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "fastcgi.sh: $tool is not installed" >&2; exit 2; }
done
[ -x "$python" ] || { echo "fastcgi.sh: no python at $python (run ./dev venv)" >&2; exit 2; }
for anchor in twisted_fcgi_floor.py flup_app.py hello_wsgi.py; do
    [ -f "$anchors/$anchor" ] || { echo "fastcgi.sh: missing $anchors/$anchor" >&2; exit 2; }
done
anchors=$(cd "$anchors" && pwd)
IFS=, read -r -a configs <<<"$only"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dfcgi.XXXXXX")
nginx_pid=""
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && stop_server
    for pid in $nginx_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# --- nginx: the anchors' config, one upstream + location per configuration ---------------
{
    [ "$(id -u)" = 0 ] && echo "user root;"
    cat <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $tmp/client_body;
  fastcgi_temp_path $tmp/fastcgi_temp;
  proxy_temp_path $tmp/proxy_temp;
  scgi_temp_path $tmp/scgi_temp;
  uwsgi_temp_path $tmp/uwsgi_temp;
EOF
    for name in floor flup native wsgi wsgi0 busy busy2ms; do
        echo "  upstream $name { server unix:$tmp/$name.sock; keepalive 16; }"
    done
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    for name in floor flup native wsgi wsgi0 busy busy2ms; do
        echo "    location /$name/ { include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass $name; }"
    done
    echo "  }"
    echo "}"
} >"$tmp/nginx.conf"
nginx -e "$tmp/nginx-error.log" -p "$tmp" -c "$tmp/nginx.conf" >"$tmp/nginx.out" 2>&1 &
nginx_pid=$!

wait_for() {  # wait_for WHAT PYTHON-CONDITION (bounded: 20 s)
    local what=$1 code=$2 i
    for i in $(seq 400); do
        if "$python" -c "$code" 2>/dev/null; then return 0; fi
        if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "fastcgi.sh: $what did not come up" >&2
    return 1
}
wait_for nginx "import socket; socket.create_connection(('127.0.0.1', $port), 1).close()" \
    || { cat "$tmp/nginx.out" "$tmp/nginx-error.log" >&2; exit 1; }

start_server() {  # start_server NAME: start its server on $tmp/NAME.sock
    local name=$1 sock=$tmp/$1.sock
    rm -f "$sock"
    local command
    case "$name" in
        floor) command=("$python" "$anchors/twisted_fcgi_floor.py" "$sock") ;;
        flup) command=("$python" "$anchors/flup_app.py" "$sock") ;;
        *) command=("$python" "$root/bench/fastcgi_server.py" "$name" "$sock" "$anchors") ;;
    esac
    "${command[@]}" >"$tmp/$name.log" 2>&1 &   # a simple command: $! is the server itself
    server_pid=$!
    wait_for "the $name server" \
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('$sock'); s.close()" \
        || { cat "$tmp/$name.log" >&2; exit 1; }
    [ "$name" = flup ] && chmod 0666 "$sock"   # flup binds with the umask; nginx runs as root anyway
    return 0
}

stop_server() {  # SIGTERM, then SIGKILL after 5 s (flup may hang on nginx's idle connections)
    local i
    kill "$server_pid" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

echo "# FastCGI benchmark $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $("$python" -V)," \
     "wrk -t1 -c16 -d$duration, $rounds round(s)"
for round in $(seq "$rounds"); do
    for name in "${configs[@]}"; do
        start_server "$name"
        url="http://127.0.0.1:$port/$name/"
        "$python" - "$url" >"$tmp/$name.check.$round" 2>&1 <<'EOF' || true
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    print(answer.status, answer.read().decode("latin-1").strip())
EOF
        wrk -t1 -c16 -d1s "$url" >/dev/null 2>&1 || true     # warm-up
        wrk -t1 -c16 -d"$duration" --latency "$url" >"$tmp/$name.wrk.$round" 2>&1 || true
        stop_server
    done
done
"$python" "$root/bench/fastcgi_report.py" "$tmp" "$rounds" "${configs[@]}"
if [ -s "$tmp/nginx-error.log" ]; then
    echo "# nginx error log (last lines):"
    tail -5 "$tmp/nginx-error.log" | sed 's/^/#   /'
fi
