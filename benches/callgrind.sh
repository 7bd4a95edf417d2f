#!/usr/bin/env bash
# Instructions per request under callgrind: three NGINX `return 200`
# backends, stickylb (`--profile profiling`, one worker thread) under
# valgrind, wrk with 64 keep-alive connections and 10,000 client ids.
# Instrumentation runs only for the measured 10 s, after a 3 s warm-up;
# the requests in that window come from stickylb_responses_total.
#
#   cargo build --profile profiling && benches/callgrind.sh [OUT] [CONNECTIONS]
#
# Needs nginx, valgrind and wrk. Prints "OUT: N requests, I instructions,
# I/N per request"; OUT.cg.1 is the profile (callgrind_annotate OUT.cg.1).
# STICKYLB_BIN overrides the binary. Everything started here is stopped
# by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-callgrind}"
conns="${2:-64}"
bin="${STICKYLB_BIN:-$here/target/profiling/stickylb}"
lua="$here/../shared/bench/hash_keys.lua"
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
[[backend]]
name = "b1"
address = "127.0.0.1:$b1"
[[backend]]
name = "b2"
address = "127.0.0.1:$b2"
[[backend]]
name = "b3"
address = "127.0.0.1:$b3"
CONF
valgrind --tool=callgrind --callgrind-out-file="$PWD/$out.cg" --instr-atstart=no \
  "$bin" --threads 1 -c "$tmp/stickylb.toml" run > "$tmp/stickylb.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 1 120); do
  curl -sf -o /dev/null "http://127.0.0.1:$ap/healthz" && break
  sleep 0.5
done
answered() {
  curl -s "http://127.0.0.1:$ap/metrics" | awk '/^stickylb_responses_total\{code_class="2xx"\}/{print $2}'
}
wrk -t1 -c"$conns" -d3s -s "$lua" "http://127.0.0.1:$lp/" -- 10000 > /dev/null
before=$(answered)
callgrind_control -i on "$vg" > /dev/null
wrk -t1 -c"$conns" -d10s -s "$lua" "http://127.0.0.1:$lp/" -- 10000 > /dev/null
callgrind_control -i off "$vg" > /dev/null
after=$(answered)
callgrind_control -d "$vg" > /dev/null
n=$((after - before))
total=$(callgrind_annotate "$out.cg.1" 2> /dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "$out: $n requests, $total instructions, $((total / n)) per request"
