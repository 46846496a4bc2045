#!/usr/bin/env bash
# Redis commands per join, leave and heartbeat on a Redis Cluster (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BENCH_BIN:-target/release}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
ports=()
for _ in 1 2 3 4 5 6; do
  p=$(free_port); mkdir -p "$work/$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/$p" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 >/dev/null 2>&1 &
  track $!; wait_port "$p"; ports+=("$p")
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
for p in "${ports[@]}"; do until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.1; done; done
masters=$(for p in "${ports[@]}"; do if redis-cli -p "$p" role | head -1 | grep -q master; then echo "$p"; fi; done)
urls=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')
gw=$(free_port)
PHX_GATEWAY__REDIS__CLUSTER_URLS=$urls PHX_GATEWAY__HTTP__PORT=$gw PHX_GATEWAY__ADMIN__PORT=0 RUST_LOG=warn \
  "$bin/phx-gateway" --config config/bench.toml >"$work/gw.log" 2>&1 &
track $!; wait_port "$gw"
reset() { for m in $masters; do redis-cli -p "$m" config resetstat >/dev/null; done; }
stats() { # per master: cmd=calls, then the sum
  for m in $masters; do
    echo "master :$m $(redis-cli -p "$m" info commandstats | grep -o 'cmdstat_[a-z|]*:calls=[0-9]*' | sed 's/cmdstat_//; s/:calls=/=/' | sort | tr '\n' ' ')"
  done
}
sleep 6; reset; sleep 10; echo "== idle 10 s (one node, heartbeat_ms as configured)"; stats
reset
"$bin/phx-load" connect --addr "127.0.0.1:$gw" -n 1000 -k 1000 --topic-prefix room:c --users 1000 --rate 2000 --hold 4 >"$work/load.log" 2>&1 &
load=$!
sleep 3
echo "== 1,000 joins (each socket the first on its presence topic; includes up to one heartbeat)"; stats
reset
wait $load
sleep 1
echo "== their 1,000 leaves"; stats
