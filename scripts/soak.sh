#!/usr/bin/env bash
# A bounded soak (not part of CI): two release gateway nodes on one redis-server, 10,000
# sockets with presence over 1,000 topics, 10% of them closed and reopened every minute,
# 100 broadcasts a second, for 10 minutes. Prints a sample of each node's memory, sockets,
# channel tasks and presences and of Redis's memory every minute, then the same after every
# socket closed and 60 s later, the error count, and each node's peak RSS (the kernel's
# high-water mark; docs/soak.md has the last results).
#
#   SOAK_SECONDS=600 SOAK_SOCKETS=10000 SOAK_TOPICS=1000 SOAK_RATE=100 scripts/soak.sh
#
# SOAK_BIN=target/release runs the binaries found there instead of building them (e.g. a
# build with another allocator). SOAK_CHURN=0.10 is the share of sockets reopened per minute. Before the baseline sample,
# SOAK_WARMUP=180 seconds of fast churn (every socket reopened once a minute) let the
# allocator reach its working set (docs/soak.md). Everything listens on free
# loopback ports; all processes are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SOAK_SECONDS:-600}
sockets=${SOAK_SOCKETS:-10000}
topics=${SOAK_TOPICS:-1000}
rate=${SOAK_RATE:-100}

bin=${SOAK_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bins --quiet
  bin=target/release
fi
ulimit -n 20000 2>/dev/null || true

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

redis_port=$(free_port)
# Started processes are disowned: bench-lib.sh kills them on exit, without job reports.
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
track $!
disown
wait_port "$redis_port"
ports=() admins=() gateways=()
for i in 0 1; do
  ports+=("$(free_port)")
  admins+=("$(free_port)")
  PHX_GATEWAY__HTTP__PORT=${ports[$i]} PHX_GATEWAY__ADMIN__PORT=${admins[$i]} \
  PHX_GATEWAY__REDIS__URL=redis://127.0.0.1:$redis_port PHX_GATEWAY__REDIS__NODE_NAME=soak$i \
  RUST_LOG=warn "$bin/phx-gateway" --config config/bench.toml &
  gateways+=($!)
  track $!
  disown
done
for port in "${ports[@]}"; do wait_port "$port"; done

"$bin/phx-load" soak \
  --addrs "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}" \
  --admin "127.0.0.1:${admins[0]},127.0.0.1:${admins[1]}" \
  --redis "redis://127.0.0.1:$redis_port" \
  -n "$sockets" -k "$topics" --topic-prefix room:soak --churn-per-minute "${SOAK_CHURN:-0.10}" \
  --rate "$rate" --duration "$secs" --sample-every 60 --sources 4 \
  --warmup "${SOAK_WARMUP:-180}" --warmup-churn-per-minute 1.0

# The samples are a minute apart; the kernel's high-water mark is the true peak.
for i in 0 1; do
  echo "node$i: peak RSS $(awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/${gateways[$i]}/status")"
done
