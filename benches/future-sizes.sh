#!/usr/bin/env bash
# The sizes of the futures a connection and a request keep alive, as rustc
# lays them out (`-Zprint-type-sizes`, taken from a stable toolchain with
# RUSTC_BOOTSTRAP; a separate target directory, so nothing else rebuilds).
# Every byte of the request future is copied when it is boxed, and every
# byte of the connection future stays allocated while the connection is
# open.
#
#   benches/future-sizes.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${TMPDIR:-/tmp}/stickylb-type-sizes.txt"
cd "$here"
export CARGO_TARGET_DIR="${TMPDIR:-/tmp}/stickylb-type-sizes"
# Sizes are printed only when the crate is compiled.
cargo clean --release -p stickylb 2> /dev/null
RUSTC_BOOTSTRAP=1 cargo rustc --release --lib -- -Zprint-type-sizes > "$out" 2>&1
grep -E 'print-type-size type: `(\{async (fn body of http::(proxy::Proxy::forward|server::Connection::serve\(|server::Connection::serve_http<http::idle)|block@src/http/proxy.rs)|http::proxy::(Job|Timed|Reply)|http::upstream::Sending)' "$out" |
  sed -E 's/^print-type-size type: `//; s/`: / : /; s/\{async block@hyper[^ ]*\{closure#0\}\}/hyper'"'"'s send future/; s/, alignment: 8 bytes//'
