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
# STICKYLB_BIN overrides the binary; CALLGRIND_FLAGS adds valgrind flags
# (for example "--cache-sim=yes --LL=1048576,16,64" simulates a 1 MiB
# per-core last-level cache: misses per request by function). Everything
# started here is stopped by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-callgrind}"
conns="${2:-64}"
bin="${STICKYLB_BIN:-$here/target/profiling/stickylb}"
lua="$here/../shared/bench/hash_keys.lua"
. "$here/benches/backends.sh"
stickylb_config
# shellcheck disable=SC2086
valgrind --tool=callgrind --callgrind-out-file="$PWD/$out.cg" --instr-atstart=no ${CALLGRIND_FLAGS:-} \
  "$bin" --threads 1 -c "$tmp/stickylb.toml" run > "$tmp/stickylb.log" 2>&1 &
vg=$!
pids+=($vg)
wait_for_admin
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
