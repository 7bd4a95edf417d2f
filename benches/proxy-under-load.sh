#!/usr/bin/env bash
# Starts stickylb for the side-by-side load benchmark (shared/bench/run.sh):
# writes a config for $LISTEN and $BACKENDS into $BENCH_TMP and runs the
# release binary in the foreground with one worker thread, like the other
# proxies there. Build first: cargo build --release (STICKYLB_BIN overrides
# the binary, to compare two builds).
#
#   ../shared/bench/run.sh --proxies nginx,haproxy,direct,custom \
#     --custom-cmd "exec $PWD/benches/proxy-under-load.sh"
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
config="${BENCH_TMP:?}/stickylb.toml"
{
  printf '[listen]\naddress = "%s"\n[admin]\naddress = "127.0.0.1:18090"\n' "${LISTEN:?}"
  printf '[routing]\nkey = ["header:x-client-id"]\n'
  i=1
  IFS=',' read -ra addrs <<< "${BACKENDS:?}"
  for a in "${addrs[@]}"; do
    printf '[[backend]]\nname = "backend-%d"\naddress = "%s"\n' "$i" "$a"
    i=$((i + 1))
  done
} > "$config"
RUST_LOG="${RUST_LOG:-warn}" exec "${STICKYLB_BIN:-$here/target/release/stickylb}" --threads "${STICKYLB_THREADS:-1}" --config "$config" run
