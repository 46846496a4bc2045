#!/usr/bin/env bash
# A bounded soak (not part of CI): two release gateway nodes on one redis-server, 10,000
# sockets with presence over 1,000 topics, 10% of them closed and reopened every minute,
# 100 broadcasts a second, for 10 minutes. Prints a sample of each node's memory, sockets,
# channel tasks and presences and of Redis's memory every minute, then the same after every
# socket closed, and the error count (docs/soak.md has the last results).
#
#   SOAK_SECONDS=600 SOAK_SOCKETS=10000 SOAK_TOPICS=1000 SOAK_RATE=100 scripts/soak.sh
#
# SOAK_BIN=target/release runs the binaries found there instead of building them (e.g. a
# build with another allocator). SOAK_CHURN=0.10 is the share of sockets reopened per minute. Before the baseline sample,
# SOAK_WARMUP=180 seconds of fast churn (every socket reopened once a minute) let the
# allocator reach its working set (docs/soak.md). Everything listens on
# loopback; all processes are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SOAK_SECONDS:-600}
sockets=${SOAK_SOCKETS:-10000}
topics=${SOAK_TOPICS:-1000}
rate=${SOAK_RATE:-100}
redis_port=${SOAK_REDIS_PORT:-6899}
ports=(4751 4752)
admins=(4851 4852)

bin=${SOAK_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bins --quiet
  bin=target/release
fi
ulimit -n 20000 2>/dev/null || true

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
wait_port() {
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "soak.sh: nothing listens on port $1" >&2; exit 1
}
wait_port "$redis_port"
for i in 0 1; do
  PHX_GATEWAY__HTTP__PORT=${ports[$i]} PHX_GATEWAY__ADMIN__PORT=${admins[$i]} \
  PHX_GATEWAY__REDIS__URL=redis://127.0.0.1:$redis_port PHX_GATEWAY__REDIS__NODE_NAME=soak$i \
  RUST_LOG=warn "$bin/phx-gateway" --config config/bench.toml &
  pids+=($!)
done
for port in "${ports[@]}"; do wait_port "$port"; done

"$bin/phx-load" soak \
  --addrs "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}" \
  --admin "127.0.0.1:${admins[0]},127.0.0.1:${admins[1]}" \
  --redis "redis://127.0.0.1:$redis_port" \
  -n "$sockets" -k "$topics" --topic-prefix room:soak --churn-per-minute "${SOAK_CHURN:-0.10}" \
  --rate "$rate" --duration "$secs" --sample-every 60 --sources 4 \
  --warmup "${SOAK_WARMUP:-180}" --warmup-churn-per-minute 1.0
