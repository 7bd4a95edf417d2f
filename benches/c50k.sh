#!/usr/bin/env bash
# C50K through stickylb: three NGINX backends (`return 200`), stickylb in
# front (release build), and the c50k load tool (benches/c50k.rs) holding
# N keep-alive connections that each send a request every few seconds.
# Everything started here is stopped by PID at the end.
#
#   benches/c50k.sh [CONNECTIONS] [extra c50k flags...]     # default 50000
#
# STICKYLB_THREADS sets --threads (default 1). The proxy needs an open
# files limit above CONNECTIONS (it says so, and serves fewer, if not).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-50000}"
shift || true
command -v nginx > /dev/null || { echo "c50k.sh: needs nginx for the backends" >&2; exit 2; }
tmp="$(mktemp -d)"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$tmp"
}
trap stop EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(free_port); b2=$(free_port); b3=$(free_port); lp=$(free_port); ap=$(free_port)
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$b1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$b2; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$b3; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$tmp/nginx.conf" -p "$tmp" > /dev/null 2>&1 &
pids+=($!)
cat > "$tmp/stickylb.toml" <<CONF
[listen]
address = "127.0.0.1:$lp"
[admin]
address = "127.0.0.1:$ap"
[routing]
key = ["header:x-client-id"]
[limits]
max_connections = $((n + 1000))
max_backend_connections = 256
[[backend]]
name = "backend-1"
address = "127.0.0.1:$b1"
[[backend]]
name = "backend-2"
address = "127.0.0.1:$b2"
[[backend]]
name = "backend-3"
address = "127.0.0.1:$b3"
CONF
RUST_LOG="${RUST_LOG:-warn}" "${STICKYLB_BIN:-$here/target/release/stickylb}" \
  --threads "${STICKYLB_THREADS:-1}" --config "$tmp/stickylb.toml" run &
proxy=$!
pids+=($proxy)
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$ap/healthz" && break
  sleep 0.1
done
cd "$here"
status=0
cargo bench --bench c50k -- --target "127.0.0.1:$lp" --connections "$n" --pid "$proxy" "$@" || status=$?
echo "stickylb's own count:"
curl -s "http://127.0.0.1:$ap/metrics" | grep -E '^stickylb_(responses_total|proxy_responses_total|upstream_errors_total)' | grep -v ' 0$' || true
exit "$status"
