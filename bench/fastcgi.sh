#!/usr/bin/env bash
# FastCGI listener benchmark (DESIGN §4): everything behind the same nginx, in one run.
#
#   ./dev bench fastcgi [--rounds N] [--duration 5s] [--only floor,native,...]
#                       [--nginx-workers N]
#
# nginx (bench/_nginx.sh, the anchors' nginx_fcgi.conf.in: keepalive 16 +
# fastcgi_keep_conn, one upstream and location per configuration, temp files in a
# mktemp dir) on a free loopback port; `wrk -t1 -c16 -d5s --latency` against each configuration in turn:
#   floor   anchors/twisted_fcgi_floor.py: the least a Twisted responder can do (anchor)
#   flup    anchors/flup_app.py: flup's threaded WSGIServer, hello world (anchor)
#   native  ours, a native handler                      goal >= 0.7x floor
#   wsgi    ours, hello_wsgi.py in the default pool     goal >= 3x flup
#   wsgi0   ours, the same with threads: 0              goal >= 3x flup
#   busy    ours native, in a DaemonApp beside 100 always-busy daemons (max_items 10)
#                                                       goal p99 <= 10 ms
#   busy2ms the same with the app's time_slice at 2 ms (default 10 ms): info
# Several processes (DESIGN §11), `daemonapp run` with app.processes, `wrk -t2 -c32`:
#   flup32     flup as above, with wrk -t2 -c32 (anchor)
#   native_p1  ours native, processes: 1 (anchor)
#   native_p2  ours native, processes: 2               goal >= 1.6x native_p1
#   wsgi_p1    ours WSGI, processes: 1 (anchor)
#   wsgi_p2    ours WSGI, processes: 2                 goal >= 1.6x wsgi_p1, >= 4x flup32
# Each server gets a 1 s warm-up first. With --rounds N the configurations run N times,
# interleaved, and the table shows medians. Anchors: ../shared/anchors from the project
# root (or $DAEMONAPP_ANCHORS). Absolute figures are noisy on a shared machine: compare
# the ratios, and check the load average printed in the header. --nginx-workers N runs
# nginx with N worker processes (default 1, as the anchors' config) for every row.
# wrk runs under bench/fastcgi_cpu.py, which reads the CPU the app (all its processes),
# nginx and wrk used in its window and the machine's idle share; a second table gives
# them per request, with each process's share for processes 2 and the ceiling the 2
# cores allow for p2/p1 (information: the verdicts above stand).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-$root/.venv/bin/python}
anchors=${DAEMONAPP_ANCHORS:-$root/../shared/anchors}
rounds=1
duration=5s
only=floor,flup,native,wsgi,wsgi0,busy,busy2ms,flup32,native_p1,native_p2,wsgi_p1,wsgi_p2
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --nginx-workers) nginx_workers=$2; shift 2 ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
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

bench=fastcgi.sh
. "$root/bench/_nginx.sh"
nginx_setup dfcgi
names=(floor flup native wsgi wsgi0 busy busy2ms flup32 native_p1 native_p2 wsgi_p1 wsgi_p2)
upstreams="" locations=""
for name in "${names[@]}"; do  # one upstream + location per configuration
    upstreams+="  upstream $name { server unix:$tmp/$name.sock; keepalive 16; }"$'\n'
    locations+="    location /$name/ { include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass $name; }"$'\n'
done
nginx_start "$upstreams" "$locations"

start_server() {  # start_server NAME: start its server on $tmp/NAME.sock
    local name=$1 sock=$tmp/$1.sock
    rm -f "$sock"
    local command
    case "$name" in
        floor) command=("$python" "$anchors/twisted_fcgi_floor.py" "$sock") ;;
        flup|flup32) command=("$python" "$anchors/flup_app.py" "$sock") ;;
        *) command=("$python" "$root/bench/fastcgi_server.py" "$name" "$sock" "$anchors") ;;
    esac
    "${command[@]}" >"$tmp/$name.log" 2>&1 &   # a simple command: $! is the server itself
    server_pid=$!
    wait_for_socket "$name" "$sock"
    case "$name" in flup*) chmod 0666 "$sock" ;; esac   # flup binds with the umask; nginx runs as root anyway
    return 0
}

echo "# FastCGI benchmark $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $("$python" -V)," \
     "wrk -t1 -c16 (flup32, *_p1, *_p2: -t2 -c32) -d$duration, $rounds round(s)," \
     "nginx worker_processes ${nginx_workers:-1}"
for round in $(seq "$rounds"); do
    for name in "${configs[@]}"; do
        start_server "$name"
        url="http://127.0.0.1:$port/$name/"
        "$python" - "$url" >"$tmp/$name.check.$round" 2>&1 <<'EOF' || true
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    print(answer.status, answer.read().decode("latin-1").strip())
EOF
        load=(-t1 -c16)
        case "$name" in flup32|*_p1|*_p2) load=(-t2 -c32) ;; esac
        wrk "${load[@]}" -d1s "$url" >/dev/null 2>&1 || true     # warm-up
        # wrk as a child of fastcgi_cpu.py, which reads the CPU of the app, nginx and wrk
        "$python" "$root/bench/fastcgi_cpu.py" "$tmp/$name.cpu.$round" "$server_pid" \
            "$nginx_pid" -- wrk "${load[@]}" -d"$duration" --latency "$url" \
            >"$tmp/$name.wrk.$round" 2>&1 || true
        stop_server
    done
done
"$python" "$root/bench/fastcgi_report.py" "$tmp" "$rounds" "${configs[@]}"
if [ -s "$tmp/nginx-error.log" ]; then
    echo "# nginx error log (last lines):"
    tail -5 "$tmp/nginx-error.log" | sed 's/^/#   /'
fi
