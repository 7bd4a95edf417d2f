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
. "$here/benches/backends.sh"
stickylb_config "[limits]
max_connections = $((n + 1000))
max_backend_connections = 256"
RUST_LOG="${RUST_LOG:-warn}" "${STICKYLB_BIN:-$here/target/release/stickylb}" \
  --threads "${STICKYLB_THREADS:-1}" --config "$tmp/stickylb.toml" run &
proxy=$!
pids+=($proxy)
wait_for_admin 10
cd "$here"
status=0
cargo bench --bench c50k -- --target "127.0.0.1:$lp" --connections "$n" --pid "$proxy" "$@" || status=$?
echo "stickylb's own count:"
curl -s "http://127.0.0.1:$ap/metrics" | grep -E '^stickylb_(responses_total|proxy_responses_total|upstream_errors_total)' | grep -v ' 0$' || true
exit "$status"
