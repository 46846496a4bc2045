#!/usr/bin/env bash
# Rooms of 15,000 (docs/benchmarks.md, "Rooms of 15,000"). Not part of CI. Needs release
# builds (`cargo build --release --bins`), redis-server and `ulimit -n` >= 20000.
# Fresh gateway processes with config/bench.toml for every run:
#   - 15,000 users join one topic (500 handshakes in flight, 4 source addresses) and leave
#     at once: no presence (fan:big, the memory baseline), the full list (room:big, a
#     watcher applying presence like phoenix.js), counts only (count:big); one node, then
#     two nodes on one Redis (7,500 each);
#   - fan-out to 15,000 subscribers of one topic at fixed rates, with every subscriber
#     tracked (room:big) and without presence (fan:big).
#   BENCH_USERS=15000   BENCH_BIN=target/release   BENCH_RATES="5 10 20" (messages/s)
#   BENCH_PARTS="rooms cluster fanout" (any subset)
set -euo pipefail
cd "$(dirname "$0")/.."
users=${BENCH_USERS:-15000}
bin=${BENCH_BIN:-target/release}
rates=${BENCH_RATES:-5 10 20}
parts=${BENCH_PARTS:-rooms cluster fanout}
has() { [[ " $parts " == *" $1 "* ]]; }
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
gateway() { # $1: redis URL or empty; prints "port pid"
  local port; port=$(free_port)
  PHX_GATEWAY__HTTP__PORT="$port" PHX_GATEWAY__ADMIN__PORT=0 RUST_LOG=warn \
    PHX_GATEWAY__REDIS__URL="${1:-}" \
    "$bin/phx-gateway" --config config/bench.toml >"$work/gw-$port.log" 2>&1 &
  track $!; wait_port "$port"; echo "$port $!"
}
redis() { # prints the URL
  local port; port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  track $!; wait_port "$port"; echo "redis://127.0.0.1:$port"
}
presence() { # $1 addrs, $2 pids, $3 mode, $4 topic
  "$bin/phx-load" presence --addrs "$1" --server-pids "$2" --mode "$3" --topic "$4" \
    -n "$users" --sources 4 --in-flight 500 2>&1 | grep -v "^user"
}
rooms() { # $1: number of nodes (more than one share a fresh Redis)
  local nodes=$1 run mode topic url="" addrs="" pids="" port pid
  for run in "none fan:big" "list room:big" "counts count:big"; do
    read -r mode topic <<<"$run"
    url="" addrs="" pids=""
    [ "$nodes" -gt 1 ] && url=$(redis)
    for _ in $(seq "$nodes"); do
      read -r port pid < <(gateway "$url")
      addrs+="${addrs:+,}127.0.0.1:$port" pids+="${pids:+,}$pid"
    done
    echo "== $nodes node(s)${url:+ on one Redis}, $mode"
    presence "$addrs" "$pids" "$mode" "$topic"
    kill_all
  done
}
# What the nodes' heartbeats cost Redis with a big room held is in the test suite
# (cluster::heartbeats_cost_the_same_for_a_big_room_...): O(1) commands per topic.
has rooms && rooms 1
has cluster && rooms 2
if has fanout; then
  for rate in $rates; do
    for run in "--tracked room:big" "-- fan:big"; do
      read -r flag topic <<<"$run"
      read -r port _ < <(gateway "")
      [ "$flag" = "--" ] && flag=()
      echo "== fan-out to $users x $rate/s, $topic: $("$bin/phx-load" fanout --addrs "127.0.0.1:$port" \
        -n "$users" --rate "$rate" --duration 10 --sources 4 --topic "$topic" ${flag[@]+"${flag[@]}"} 2>&1 | grep "^result:")"
      kill_all
    done
  done
fi
