#!/usr/bin/env bash
# Upload benchmark (issue 14): 2 MB and 20 MB POSTs through one nginx to each daemonapp
# listener and to gunicorn, serving the same WSGI app (bench/uploads_app.py), in one run.
#
#   ./dev bench uploads [--rounds N] [--seconds S] [--connections C] [--burst N]
#                       [--sizes 2,20] [--reads whole,chunks] [--only fastcgi,scgi,...]
#                       [--profile DIR] [--source CHECKOUT]
#
# nginx (bench/_nginx.sh, as for bench/fastcgi.sh: the anchors' nginx_fcgi.conf.in, a
# private prefix in a mktemp dir, a free loopback port; client_max_body_size 64m, nginx's
# default request buffering) in front of, one at a time, each a fresh process:
#   fastcgi  daemonapp run, protocol fastcgi (fastcgi_pass, fastcgi_keep_conn, keepalive 16)
#   scgi     daemonapp run, protocol scgi    (scgi_pass)
#   http     daemonapp run, protocol http    (proxy_pass, HTTP/1.1, keepalive 16)
#   gsync    gunicorn, sync worker, 2 x cores + 1 workers (gunicorn's advice) (proxy_pass)
#   gthread  gunicorn, gthread worker, 1 worker x 10 threads: daemonapp's shape
#            (proxy_pass, HTTP/1.1, keepalive 16)
# daemonapp: threads 10 (the default), max_body_bytes 32MiB, unix sockets everywhere;
# `python -m daemonapp.cli run` importing daemonapp from --source (default: this
# checkout's tree, as it is now; a `git worktree` of a commit gives figures of that
# commit while others edit this tree), not from the venv's install.
# The app reads the body with read(CONTENT_LENGTH) (Django's request.body: "whole") or in
# 64 KiB pieces ("chunks") and answers its length and SHA-256.
# Per round, body size, read style and server: start the server; bench/uploads_load.py
# burst: one checked POST, idle RSS, VmHWM reset, N uploads at once (answers checked),
# peak RSS; then wrk -t1 -cC (1 s warm-up, then S seconds, --latency, -s post.lua) and
# the peak RSS during it; stop the server. Rounds interleave the servers; the table
# (bench/uploads_report.py) gives medians. Check the load average printed per round.
# --profile DIR: py-spy (pip install py-spy) samples each server during its wrk run, all
# threads and gunicorn's workers included, into DIR/NAME.SIZE.READ.ROUND.txt (collapsed
# stacks: one line per stack and its sample count).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${DAEMONAPP_VENV:-$root/.venv}
python=${PYTHON:-$venv/bin/python}
rounds=1
seconds=5
connections=8
burst=8
sizes=2,20
reads=whole,chunks
only=fastcgi,scgi,http,gsync,gthread
profile=""
source=$root
sync_workers=$(( 2 * $(nproc) + 1 ))
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --burst) burst=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --reads) reads=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --source) source=$(cd "$2" && pwd); shift 2 ;;
        --profile) profile=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "uploads.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || { echo "uploads.sh: $tool is not installed (.ci/run installs it)" >&2; exit 2; }
done
[ -f "$source/daemonapp/cli.py" ] || { echo "uploads.sh: no daemonapp/cli.py in $source" >&2; exit 2; }
for tool in python gunicorn; do
    [ -x "$venv/bin/$tool" ] || { echo "uploads.sh: no $venv/bin/$tool (run ./dev venv)" >&2; exit 2; }
done
if [ -n "$profile" ] && [ ! -x "$venv/bin/py-spy" ]; then
    echo "uploads.sh: --profile needs py-spy: $venv/bin/pip install py-spy" >&2; exit 2
fi
IFS=, read -r -a servers <<<"$only"
IFS=, read -r -a size_list <<<"$sizes"
IFS=, read -r -a read_list <<<"$reads"

bench=uploads.sh
. "$root/bench/_nginx.sh"
stop_grace=15
nginx_setup dupl

# --- bodies and wrk's script --------------------------------------------------------
for size in "${size_list[@]}"; do
    head -c "$(( size * 1000 * 1000 ))" /dev/urandom >"$tmp/body.$size"
done
cat >"$tmp/post.lua" <<'EOF'
-- POST the file named by $UPLOADS_BODY; wrk.format adds its Content-Length
local file = assert(io.open(os.getenv("UPLOADS_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

# --- nginx: one upstream + location per server ------------------------------------------
nginx_start "  client_max_body_size 64m;
  fastcgi_read_timeout 120s;
  scgi_read_timeout 120s;
  proxy_read_timeout 120s;
  upstream fastcgi { server unix:$tmp/fastcgi.sock; keepalive 16; }
  upstream scgi { server unix:$tmp/scgi.sock; }
  upstream http { server unix:$tmp/http.sock; keepalive 16; }
  upstream gsync { server unix:$tmp/gsync.sock; }
  upstream gthread { server unix:$tmp/gthread.sock; keepalive 16; }" \
"    location /fastcgi/ { include /etc/nginx/fastcgi_params; fastcgi_keep_conn on; fastcgi_pass fastcgi; }
    location /scgi/ { include /etc/nginx/scgi_params; scgi_pass scgi; }
    location /http/ { proxy_pass http://http; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
    location /gsync/ { proxy_pass http://gsync; }
    location /gthread/ { proxy_pass http://gthread; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"

start_server() {  # start_server NAME: a fresh server on $tmp/NAME.sock
    local name=$1 sock=$tmp/$1.sock
    rm -f "$sock"
    local command
    case "$name" in
        fastcgi|scgi|http)
            mkdir -p "$tmp/state-$name"
            chmod 0700 "$tmp/state-$name"
            cat >"$tmp/$name.yaml" <<EOF
app:
  state_dir: $tmp/state-$name
  stop_timeout: 10s
  log: {level: warn}
listeners:
  - protocol: $name
    endpoint: unix:$sock
    mode: 0666
    wsgi: uploads_app:app
    max_body_bytes: 32MiB
    request_timeout: 120s
EOF
            # -P: python -m would put the working directory (this checkout) first
            command=(env "PYTHONPATH=$source:$root/bench" "$python" -P -m daemonapp.cli run
                     "$tmp/$name.yaml") ;;
        gsync)
            command=("$venv/bin/gunicorn" --worker-class sync --workers "$sync_workers"
                     --timeout 120 --bind "unix:$sock" --log-level warning uploads_app:app) ;;
        gthread)
            command=("$venv/bin/gunicorn" --worker-class gthread --workers 1 --threads 10
                     --timeout 120 --bind "unix:$sock" --log-level warning uploads_app:app) ;;
        *) echo "uploads.sh: unknown server $name" >&2; exit 2 ;;
    esac
    # a simple command: $! is the server itself (gunicorn: its master)
    PYTHONPATH=$root/bench "${command[@]}" >>"$tmp/$name.log" 2>&1 &
    server_pid=$!
    wait_for_socket "$name" "$sock"
    chmod 0666 "$sock"   # gunicorn binds with the umask; nginx's workers run as root anyway
    if [ "$name" = gsync ] || [ "$name" = gthread ]; then
        sleep 0.5        # the master binds before its workers have booted
    fi
}

echo "# Upload benchmark $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $("$python" -V)," \
     "gunicorn $("$venv/bin/gunicorn" --version | cut -d' ' -f3 | tr -d ')')," \
     "wrk -t1 -c$connections -d${seconds}s, burst $burst, $rounds round(s)"
imported=$(PYTHONPATH=$source "$python" -P -c 'import daemonapp; print(daemonapp.__file__)')
case "$imported" in
    "$source"/*) ;;
    *) echo "uploads.sh: daemonapp imports from $imported, not from $source" >&2; exit 2 ;;
esac
echo "# daemonapp from $source: $(git -C "$source" log -1 --format='%h %cs' 2>/dev/null || echo '?')," \
     "$(if git -C "$source" diff --quiet HEAD -- daemonapp 2>/dev/null; then echo 'daemonapp/ as committed';
        else echo 'daemonapp/ WITH UNCOMMITTED CHANGES'; fi)"
for round in $(seq "$rounds"); do
    echo "round $round start $(cut -d' ' -f1-3 /proc/loadavg)" >>"$tmp/load"
    for size in "${size_list[@]}"; do
        for read in "${read_list[@]}"; do
            query=""
            [ "$read" = chunks ] && query="?read=chunks"
            for name in "${servers[@]}"; do
                key=$name.$size.$read.$round
                start_server "$name"
                url="http://127.0.0.1:$port/$name/upload$query"
                "$python" "$root/bench/uploads_load.py" burst "$url" "$tmp/body.$size" \
                    "$burst" "$server_pid" >"$tmp/$key.burst" 2>&1 || true
                UPLOADS_BODY=$tmp/body.$size wrk -t1 -c"$connections" -d1s --timeout 60s \
                    -s "$tmp/post.lua" "$url" >/dev/null 2>&1 || true          # warm-up
                "$python" "$root/bench/uploads_load.py" reset "$server_pid" >"$tmp/$key.pre"
                spy_pid=""
                if [ -n "$profile" ]; then
                    "$venv/bin/py-spy" record --subprocesses --threads --nonblocking -r 250 \
                        -d "$seconds" -f raw -o "$profile/$key.txt" -p "$server_pid" \
                        >"$profile/$key.log" 2>&1 &
                    spy_pid=$!
                fi
                UPLOADS_BODY=$tmp/body.$size wrk -t1 -c"$connections" -d"${seconds}s" \
                    --timeout 60s --latency -s "$tmp/post.lua" "$url" >"$tmp/$key.wrk" 2>&1 || true
                "$python" "$root/bench/uploads_load.py" hwm "$server_pid" >"$tmp/$key.hwm"
                [ -n "$spy_pid" ] && { wait "$spy_pid" || true; }
                stop_server
                printf '.' >&2
            done
        done
    done
    echo "round $round end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$tmp/load"
    echo >&2
done
status=0
"$python" "$root/bench/uploads_report.py" "$tmp" "$rounds" "$connections" "$sync_workers" \
    "$only" "$sizes" "$reads" || status=$?
cat "$tmp/load" | sed 's/^/# load average /'
# nginx warns about every body it spools to a file (all of them here): count those
spooled=$(grep -c 'buffered to a temporary file' "$tmp/nginx-error.log" || true)
echo "# nginx spooled $spooled request bodies to its temp files (the same for every server)"
if grep -v 'buffered to a temporary file' "$tmp/nginx-error.log" | grep -q .; then
    echo "# nginx error log (last lines):"
    grep -v 'buffered to a temporary file' "$tmp/nginx-error.log" | tail -5 | sed 's/^/#   /'
fi
for name in "${servers[@]}"; do
    if [ -s "$tmp/$name.log" ]; then
        echo "# $name log (last lines):"
        tail -3 "$tmp/$name.log" | sed 's/^/#   /'
    fi
done
exit "$status"
