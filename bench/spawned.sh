#!/usr/bin/env bash
# Spawned FastCGI benchmark (DESIGN §4 "Started by the web server"): the backend is
# started by lighttpd's mod_fastcgi `bin-path` and serves the listening socket lighttpd
# passes as fd 0; everything behind the same lighttpd build, in one run.
#
#   ./dev bench spawned [--rounds N] [--duration 5s] [--only floor,flup,native,wsgi,wsgi0]
#
# Each configuration gets a fresh lighttpd (Debian's) on a free loopback port, config and
# sockets in a mktemp dir, with one fastcgi.server entry: bin-path, max-procs 1,
# check-local disable, PYTHONPATH=bench:anchors in bin-environment:
#   floor   bench/spawned_floor.py: anchors/twisted_fcgi_floor.py adopting fd 0: the least
#           a Twisted responder pays per request here (info)
#   flup    bench/spawned_flup.py: anchors/flup_app.py's WSGIServer with no bindAddress,
#           so it serves fd 0; hello_wsgi.py (anchor)
#   native  `daemonapp run CONFIG`, a fastcgi item without endpoint, a native handler
#           (bench/fastcgi_apps.py:hello)                         info: ratios to both
#   wsgi    the same serving hello_wsgi.py in the default pool (threads 10)
#                                                                 goal >= 3x flup
#   wsgi0   the same with threads: 0                              goal >= 3x flup
# bench/spawned_probe.py polls lighttpd's port from before lighttpd starts: lighttpd's
# start -> first 200 (goal <= 1 s for ours, judged on the worst round), and that first
# request's own latency. Then a 1 s warm-up, `wrk -t1 -c16 -d5s --latency`, and lighttpd
# is stopped (SIGTERM, which it passes on to its backend); the backend must then exit.
# With --rounds N the configurations run N times, interleaved; the tables show medians.
# lighttpd 1.4 opens a new FastCGI connection per request (no FCGI_KEEP_CONN), for flup
# and ours alike. daemonapp comes from the venv (./dev bench refreshes it first).
# Anchors: ../shared/anchors from the project root (or $DAEMONAPP_ANCHORS). Compare the
# ratios, and check the load average printed in the header.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-$root/.venv/bin/python}
daemonapp=$(dirname "$python")/daemonapp
anchors=${DAEMONAPP_ANCHORS:-$root/../shared/anchors}
rounds=1
duration=5s
only=floor,flup,native,wsgi,wsgi0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "spawned.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in lighttpd wrk pgrep; do
    command -v "$tool" >/dev/null || { echo "spawned.sh: $tool is not installed" >&2; exit 2; }
done
[ -x "$python" ] || { echo "spawned.sh: no python at $python (run ./dev venv)" >&2; exit 2; }
[ -x "$daemonapp" ] || { echo "spawned.sh: no $daemonapp (run ./dev venv)" >&2; exit 2; }
"$python" -c 'import flup' 2>/dev/null \
    || { echo "spawned.sh: flup is not installed in the venv (setup.cfg's bench extra)" >&2; exit 2; }
for anchor in twisted_fcgi_floor.py flup_app.py hello_wsgi.py; do
    [ -f "$anchors/$anchor" ] || { echo "spawned.sh: missing $anchors/$anchor" >&2; exit 2; }
done
anchors=$(cd "$anchors" && pwd)
IFS=, read -r -a configs <<<"$only"
for name in "${configs[@]}"; do
    case "$name" in
        floor|flup|native|wsgi|wsgi0) ;;
        *) echo "spawned.sh: unknown configuration $name" >&2; exit 2 ;;
    esac
done
unset PYTHONDONTWRITEBYTECODE   # warm .pyc caches for the first request, as after an install

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dspawn.XXXXXX")
case "$root$anchors$python$tmp" in   # lighttpd splits bin-path at whitespace, no quoting
    *[[:space:]]*) echo "spawned.sh: a path contains whitespace; lighttpd's bin-path" \
                        "cannot hold it" >&2; rm -rf "$tmp"; exit 2 ;;
esac
lighttpd_pid=""
probe_pid=""
wrk_pid=""
backends=""     # what the current lighttpd spawned, until each is seen gone
cleanup() {
    [ -n "$probe_pid" ] && { kill "$probe_pid" 2>/dev/null || true; }
    [ -n "$wrk_pid" ] && { kill "$wrk_pid" 2>/dev/null || true; }
    [ -n "$lighttpd_pid" ] && stop_lighttpd cleanup
    for pid in $backends; do alive "$pid" && { kill -9 "$pid" 2>/dev/null || true; }; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() {  # seconds since the epoch, microseconds, without a fork (time.time()'s clock)
    echo "${EPOCHREALTIME/,/.}"
}

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() {  # alive PID: running (a zombie nobody reaped yet counts as gone)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

descendants() {  # descendants PID: the pids of its children, their children, ...
    local child
    for child in $(pgrep -P "$1" || true); do
        echo "$child"
        descendants "$child"
    done
}

cpu_ticks() {  # cpu_ticks PID...: user + system time of these processes, all threads
    local pid stat fields total=0
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))    # utime and stime, fields 14 and 15
    done
    echo "$total"
}
clk_tck=$(getconf CLK_TCK)

# --- the backends: the app configurations and lighttpd's config --------------------------
for mode in wsgi wsgi0 native; do
    {
        echo "app:"
        echo "  log: {format: text, level: warn}"
        echo "listeners:"
        echo "  - protocol: fastcgi      # no endpoint: the socket lighttpd passes as fd 0"
        case "$mode" in
            wsgi) echo "    wsgi: hello_wsgi:app" ;;
            wsgi0) echo "    wsgi: hello_wsgi:app"; echo "    threads: 0" ;;
            native) echo "    native: fastcgi_apps:hello" ;;
        esac
    } >"$tmp/$mode.yaml"
done

write_lighttpd_conf() {  # write_lighttpd_conf NAME PORT
    local name=$1 port=$2 bin_path
    case "$name" in
        floor) bin_path="$python $root/bench/spawned_floor.py $anchors" ;;
        flup) bin_path="$python $root/bench/spawned_flup.py $anchors" ;;
        *) bin_path="$daemonapp run $tmp/$name.yaml" ;;
    esac
    cat >"$tmp/lighttpd.conf" <<EOF
server.document-root = "$tmp"
server.bind = "127.0.0.1"
server.port = $port
server.errorlog = "$tmp/lighttpd-error.log"
server.modules += ("mod_fastcgi")
fastcgi.server = ( "/$name/" => ((
    "socket" => "$tmp/$name.sock",
    "bin-path" => "$bin_path",
    "bin-environment" => ( "PYTHONPATH" => "$root/bench:$anchors" ),
    "max-procs" => 1,
    "check-local" => "disable",
)))
EOF
}

wait_file() {  # wait_file PATH (bounded: 20 s)
    local i
    for i in $(seq 400); do
        [ -e "$1" ] && return 0
        sleep 0.05
    done
    echo "spawned.sh: $1 did not appear" >&2
    return 1
}

start_lighttpd() {  # start_lighttpd NAME ROUND: lighttpd up, the first 200 measured
    local name=$1 round=$2 port
    port=$(free_port)
    write_lighttpd_conf "$name" "$port"
    url="http://127.0.0.1:$port/$name/"
    rm -f "$tmp/probe.ready" "$tmp/t0"
    "$python" "$root/bench/spawned_probe.py" "$port" "/$name/" "$tmp/probe.ready" "$tmp/t0" \
        >"$tmp/$name.first.$round" 2>&1 &
    probe_pid=$!
    wait_file "$tmp/probe.ready" || { cat "$tmp/$name.first.$round" >&2; exit 1; }
    now >"$tmp/t0"
    lighttpd -D -f "$tmp/lighttpd.conf" >>"$tmp/lighttpd.out" 2>&1 &
    lighttpd_pid=$!
    wait "$probe_pid" || true          # the probe gives up after 30 s
    probe_pid=""
    local spawned
    spawned=$(descendants "$lighttpd_pid" | tr '\n' ' ')
    backends=$spawned
    echo "$spawned" >"$tmp/$name.pids.$round"
    if [ "$(wc -w <"$tmp/$name.pids.$round")" != 1 ]; then
        echo "$name: round $round: lighttpd runs ${spawned:-no} processes, not 1" >>"$tmp/notes"
    fi
    if ! alive "$lighttpd_pid"; then
        echo "spawned.sh: lighttpd exited:" >&2
        cat "$tmp/lighttpd.out" "$tmp/lighttpd-error.log" >&2
        exit 1
    fi
}

stop_lighttpd() {  # stop_lighttpd [NAME ROUND]: SIGTERM lighttpd; its backends must exit too
    local name=${1:-} round=${2:-} pids pid i start
    pids=$(echo "$backends $(descendants "$lighttpd_pid")" | tr ' ' '\n' | sort -un)
    backends=$pids
    start=$(now)
    kill "$lighttpd_pid" 2>/dev/null || true
    wait "$lighttpd_pid" 2>/dev/null || true
    lighttpd_pid=""
    # lighttpd passes SIGTERM on and exits at once, without waiting for its backends
    for pid in $pids; do
        for i in $(seq 500); do
            alive "$pid" || break
            sleep 0.01
        done
        if alive "$pid"; then
            kill -9 "$pid" 2>/dev/null || true
            [ -n "$round" ] && echo "$name: round $round: pid $pid still ran 5 s after" \
                "lighttpd's SIGTERM: killed" >>"$tmp/notes"
        fi
    done
    backends=""
    if [ -n "$round" ]; then
        "$python" -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000))" \
            "$start" "$(now)" >"$tmp/$name.exit.$round"
    fi
}

run_wrk() {  # run_wrk OUT ARGS...
    # In the background: a trapped signal interrupts `wait` at once, whereas wrk in the
    # foreground stops on Ctrl-C with status 0 and the run would go on.
    local out=$1; shift
    wrk "$@" >"$out" 2>&1 &
    wrk_pid=$!
    wait "$wrk_pid" || true
    wrk_pid=""
}

echo "# Spawned FastCGI benchmark $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(lighttpd -v 2>&1 | head -1 | cut -d' ' -f1) mod_fastcgi bin-path, max-procs 1," \
     "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $("$python" -V), flup" \
     "$("$python" -c 'from importlib.metadata import version; print(version("flup"))')," \
     "wrk -t1 -c16 -d$duration, $rounds round(s)"
for round in $(seq "$rounds"); do
    for name in "${configs[@]}"; do
        start_lighttpd "$name" "$round"
        run_wrk /dev/null -t1 -c16 -d1s "$url"     # warm-up
        cpu_before=$(cpu_ticks $(cat "$tmp/$name.pids.$round"))
        run_wrk "$tmp/$name.wrk.$round" -t1 -c16 -d"$duration" --latency "$url"
        echo "$(($(cpu_ticks $(cat "$tmp/$name.pids.$round")) - cpu_before)) $clk_tck" \
            >"$tmp/$name.cpu.$round"
        stop_lighttpd "$name" "$round"
    done
done
status=0
"$python" "$root/bench/spawned_report.py" "$tmp" "$rounds" "${configs[@]}" || status=$?
exits=""
for name in "${configs[@]}"; do
    exits="$exits $name $(cat "$tmp/$name".exit.* 2>/dev/null | sort -n | tail -1 || true),"
done
echo "# backend gone after lighttpd's SIGTERM, ms (worst round):${exits%,}"
if grep -qv -e 'server started' -e 'server stopped' "$tmp/lighttpd-error.log" 2>/dev/null; then
    echo "# lighttpd error log (last lines):"
    grep -v -e 'server started' -e 'server stopped' "$tmp/lighttpd-error.log" | tail -5 \
        | sed 's/^/#   /'
fi
exit "$status"
