# The nginx in front of bench/fastcgi.sh and bench/uploads.sh (sourced by both, not run).
#
# A private nginx (the anchors' nginx_fcgi.conf.in: one worker, or $nginx_workers, a
# prefix and temp files in a mktemp dir) on a free loopback port, in front of one server
# at a time. Set $bench (the script's name, for messages) and $python first, then:
#   nginx_setup PREFIX           $tmp (a mktemp dir, removed at exit), $port, the traps
#   nginx_start HTTP SERVER      write $tmp/nginx.conf with the lines HTTP inside http {}
#                                (upstreams, limits) and SERVER inside server {}
#                                (locations), start nginx and wait for it
#   wait_for WHAT CONDITION      poll a Python condition, 20 s at most
#   wait_for_socket WHAT PATH    the server accepts on the unix socket PATH (else its log
#                                $tmp/NAME.log is shown and the script exits 1)
#   stop_server                  SIGTERM $server_pid, SIGKILL after $stop_grace s (5)
# The script sets $server_pid when it starts a server; cleanup stops it and nginx.

nginx_pid=""
server_pid=""
stop_grace=5

nginx_setup() {  # nginx_setup PREFIX
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap _nginx_cleanup EXIT
    trap 'exit 130' INT TERM
    port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
}

_nginx_cleanup() {
    [ -n "$server_pid" ] && stop_server
    if [ -n "$nginx_pid" ]; then
        kill "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}

nginx_start() {  # nginx_start HTTP-LINES SERVER-LINES
    {
        [ "$(id -u)" = 0 ] && echo "user root;"
        cat <<EOF
worker_processes ${nginx_workers:-1};
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
$1
  server {
    listen 127.0.0.1:$port;
$2
  }
}
EOF
    } >"$tmp/nginx.conf"
    nginx -e "$tmp/nginx-error.log" -p "$tmp" -c "$tmp/nginx.conf" >"$tmp/nginx.out" 2>&1 &
    nginx_pid=$!
    wait_for nginx "import socket; socket.create_connection(('127.0.0.1', $port), 1).close()" \
        || { cat "$tmp/nginx.out" "$tmp/nginx-error.log" >&2; exit 1; }
}

wait_for() {  # wait_for WHAT PYTHON-CONDITION (bounded: 20 s)
    local what=$1 code=$2 i
    for i in $(seq 400); do
        if "$python" -c "$code" 2>/dev/null; then return 0; fi
        if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "$bench: $what did not come up" >&2
    return 1
}

wait_for_socket() {  # wait_for_socket NAME PATH: the server NAME accepts on PATH
    wait_for "the $1 server" \
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('$2'); s.close()" \
        || { cat "$tmp/$1.log" >&2; exit 1; }
}

stop_server() {  # SIGTERM, then SIGKILL after $stop_grace seconds
    local i
    kill "$server_pid" 2>/dev/null || true
    for i in $(seq $(( stop_grace * 20 ))); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
