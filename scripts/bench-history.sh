#!/usr/bin/env bash
# The cost of history (docs/benchmarks.md, "History"). Not part of CI. Needs release builds:
#   cargo build --release --bins --examples
# Fan-out to 500 subscribers on a route without history (fan:*) and with history (hist:*,
# 100 messages), on one node and across two nodes over Redis (`phx-load fanout --step`), the
# ceiling broadcaster in the same run; then the join latency of a 100-message backfill
# (scripts/bench-history-join.mjs).
#   BENCH_ROUNDS=2   BENCH_BIN=target/release   BENCH_STEP_FACTOR=1.25 (finer: more steps)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-2}
bin=${BENCH_BIN:-target/release}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
start() { # $1: redis url or "" ; prints the port
  local port; port=$(free_port)
  env ${1:+PHX_GATEWAY__REDIS__URL=$1} PHX_GATEWAY__HTTP__PORT="$port" PHX_GATEWAY__ADMIN__PORT=0 RUST_LOG=warn \
    "$bin/phx-gateway" --config config/bench.toml >"$work/gw-$port.log" 2>&1 &
  track $!; wait_port "$port"; echo "$port"
}
step() { "$bin/phx-load" fanout "$@" -n 500 --rate 1562 --duration 3 --sources 2 --step --step-factor "${BENCH_STEP_FACTOR:-1.25}" 2>&1 | grep highest; }
for round in $(seq "$rounds"); do
  cport=$(free_port)
  "$bin/examples/ceiling_broadcaster" "127.0.0.1:$cport" >/dev/null 2>&1 &
  track $!; wait_port "$cport"
  echo "== round $round ceiling: $(step --addrs "127.0.0.1:$cport")"
  kill_all
  a=$(start "")
  for topic in fan:load hist:load; do
    echo "== round $round one node, $topic: $(step --addrs "127.0.0.1:$a" --topic "$topic")"
  done
  kill_all
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null 2>&1 &
  track $!; wait_port "$rport"
  a=$(start "redis://127.0.0.1:$rport"); b=$(start "redis://127.0.0.1:$rport")
  for topic in fan:load hist:load; do
    echo "== round $round two nodes, $topic: $(step --addrs "127.0.0.1:$b" --publish-to "127.0.0.1:$a" --topic "$topic")"
  done
  echo "== round $round join with a 100-message backfill (two nodes): $(node scripts/bench-history-join.mjs "127.0.0.1:$a" "127.0.0.1:$b")"
  kill_all
done
