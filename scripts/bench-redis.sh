#!/usr/bin/env bash
# Cross-node fan-out on each Redis topology, with the ceiling broadcaster measured in the same
# run (docs/benchmarks.md, "Redis topologies"). Not part of CI. Needs release builds:
#   cargo build --release --bins --examples
# Two gateway nodes (config/bench.toml), 500 subscribers on node B, the publisher on node A,
# so every delivery crosses Redis; `phx-load fanout --step` (x1.25 per step until loss or
# p99 > 100 ms). Rounds alternate topologies so that machine noise hits both alike.
#
#   BENCH_ROUNDS=2              rounds per topology
#   BENCH_TOPOLOGIES="single cluster"
#   BENCH_BIN=target/release    where phx-gateway, phx-load and examples/ are
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${BENCH_ROUNDS:-2}
topologies=${BENCH_TOPOLOGIES:-"single cluster"}
bin=${BENCH_BIN:-target/release}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

# Starts a redis-server; extra args follow the port. Prints the port.
redis() {
  local port dir
  port=$(free_port)
  dir="$work/redis-$port"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" "$@" >"$dir/log" 2>&1 &
  track $!
  wait_port "$port"
  echo "$port"
}

# Sets REDIS_ENV for the topology.
start_topology() {
  case "$1" in
    single)
      local p
      p=$(redis)
      REDIS_ENV=(PHX_GATEWAY__REDIS__URL="redis://127.0.0.1:$p")
      ;;
    cluster)
      local ports=() p
      for _ in 1 2 3 4 5 6; do
        ports+=("$(redis --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000)")
      done
      redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
      for p in "${ports[@]}"; do
        until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
      done
      CLUSTER_PORTS=("${ports[@]}")
      REDIS_ENV=(PHX_GATEWAY__REDIS__CLUSTER_URLS="$(printf 'redis://127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')")
      ;;
  esac
}

node() {
  local port
  port=$(free_port)
  env "${REDIS_ENV[@]}" PHX_GATEWAY__HTTP__PORT="$port" PHX_GATEWAY__ADMIN__PORT=0 RUST_LOG=warn \
    "$bin/phx-gateway" --config config/bench.toml >"$work/node-$port.log" 2>&1 &
  track $!
  wait_port "$port"
  echo "$port"
}

fanout() {
  "$bin/phx-load" fanout --addrs "127.0.0.1:$1" --publish-to "127.0.0.1:$2" -n 500 --rate 1562 \
    --duration 3 --sources 2 --step 2>&1 | tail -n 3
}

ceiling() {
  local port
  port=$(free_port)
  "$bin/examples/ceiling_broadcaster" "127.0.0.1:$port" >/dev/null 2>&1 &
  local pid=$!
  wait_port "$port"
  echo "== ceiling broadcaster, 500 subscribers (one process, no Redis)"
  "$bin/phx-load" fanout --addrs "127.0.0.1:$port" -n 500 --rate 1562 --duration 3 --sources 2 --step 2>&1 | tail -n 3
  kill -9 "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  ceiling
  for t in $topologies; do
    start_topology "$t"
    a=$(node)
    b=$(node)
    echo "== round $round, $t: 2 nodes, 500 subscribers on B, publisher on A"
    fanout "$b" "$a"
    kill_all || true
      done
done
