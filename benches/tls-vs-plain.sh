#!/usr/bin/env bash
# HTTPS requests/s relative to plain HTTP through the same stickylb process:
# one release binary listening plain on 127.0.0.1:18080 and TLS on
# 127.0.0.1:18443 (listen.tls_address), three nginx backends (as in the
# shared benchmark), wrk with keep-alive over HTTP/1.1 alternating between
# the two URLs. Proxy pinned to CPU 1 with one worker thread, load to CPU 0.
#
#   cargo build --release && benches/tls-vs-plain.sh [ROUNDS] [SECONDS]
#
# Needs nginx, wrk, openssl (only to make a throwaway certificate), taskset.
set -euo pipefail
rounds=${1:-3}
secs=${2:-5}
here="$(cd "$(dirname "$0")/.." && pwd)"
lua="${BENCH_LUA:-$here/../shared/bench/hash_keys.lua}"
tmp=$(mktemp -d)
chmod 755 "$tmp"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

cat > "$tmp/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:19001; return 200 "backend-1\n"; }
  server { listen 127.0.0.1:19002; return 200 "backend-2\n"; }
  server { listen 127.0.0.1:19003; return 200 "backend-3\n"; }
}
NGINX

cat > "$tmp/stickylb.toml" <<TOML
[listen]
address = "127.0.0.1:18080"
tls_address = "127.0.0.1:18443"
tls = { cert = "cert.pem", key = "key.pem" }
[admin]
address = "127.0.0.1:18090"
[routing]
key = ["header:x-client-id"]
[[backend]]
name = "backend-1"
address = "127.0.0.1:19001"
[[backend]]
name = "backend-2"
address = "127.0.0.1:19002"
[[backend]]
name = "backend-3"
address = "127.0.0.1:19003"
TOML

setsid taskset -c 0 nginx -p "$tmp/" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" &
pids+=($!)
RUST_LOG=warn,rustls=error setsid taskset -c 1 "$here/target/release/stickylb" --threads 1 \
  --config "$tmp/stickylb.toml" run &
pids+=($!)
for _ in $(seq 100); do
  curl -sf -o /dev/null http://127.0.0.1:18080/ -H 'X-Client-Id: a' &&
    curl -sfk -o /dev/null https://127.0.0.1:18443/ -H 'X-Client-Id: a' && break
  sleep 0.1
done

run() { # URL -> requests/s
  taskset -c 0 wrk -t1 -c64 -d"${secs}s" -s "$lua" "$1" -- 10000 |
    sed -n 's/.*BENCH_RESULT.* rps=\([0-9.]*\).*/\1/p'
}
run http://127.0.0.1:18080/ > /dev/null # warm-up
plain_all=() tls_all=()
for r in $(seq "$rounds"); do
  p=$(run http://127.0.0.1:18080/)
  t=$(run https://127.0.0.1:18443/)
  plain_all+=("$p") tls_all+=("$t")
  echo "round $r: http $p req/s, https $t req/s, ratio $(echo "scale=3; $t / $p" | bc)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p=$(median "${plain_all[@]}") t=$(median "${tls_all[@]}")
echo "median: http $p req/s, https $t req/s, https/http = $(echo "scale=3; $t / $p" | bc)"
