#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the phoenix.js end-to-end tests under
# Node, the headless Chromium test of the demo page, the chart checks and a bounded fuzzing
# run. Installs what a fresh Debian machine lacks (Chromium, Node/npm, redis-server,
# redis-tools, redis-sentinel, openssl, make and a C compiler for jemalloc; cargo-fuzz) first; fuzzing needs the nightly toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

missing=()
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
# jemalloc (the release allocator) is built from C sources.
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(gcc)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

log "npm ci (phoenix client, ws, playwright-core)"
npm ci --no-audit --no-fund --loglevel=error

log "cargo build (the binary the Node tests start); disk free: $(df -h --output=avail . | tail -n 1)"
# On failure the build's whole output comes first, then its error lines and the disk left,
# so that the end of a CI log says why (a C dependency's build prints hundreds of lines).
build_log=$(mktemp)
if ! cargo build --bins --quiet 2>"$build_log"; then
  cat "$build_log" >&2
  log "cargo build failed: its error lines, then the disk left"
  grep -E '^error|No space left|Killed|panicked|fatal|failed to' "$build_log" | tail -n 30 >&2 || true
  df -h . >&2
  exit 1
fi
rm -f "$build_log"

log "cargo test"
cargo test

log "node --test (phoenix.js end-to-end, headless Chromium demo)"
PHX_GATEWAY_BIN="$PWD/target/debug/phx-gateway" npm test

log "Helm chart and Docker image checks"
scripts/test-chart.sh

# cargo-fuzz targets (nightly toolchain), 20 s each from the committed corpus; without the
# address sanitizer, which safe Rust does not need and which doubles the build time.
log "fuzzing: ${FUZZ_SECONDS:-20} s per target"
FUZZ_SECONDS=${FUZZ_SECONDS:-20} FUZZ_SANITIZER=${FUZZ_SANITIZER:-none} scripts/fuzz.sh
