#!/usr/bin/env bash
# The connection path (docs/benchmarks.md, "The connection path"). Not part of CI. Needs
# release builds (`cargo build --release --bins --examples`) and `ulimit -n` >= 20000.
# Each round, on one node with config/bench.toml and the ceiling broadcaster in the same run:
#   - RSS per idle socket: 15,000 sockets over 1,000 topics, without presence (fan:*) and with
#     presence (room:*, 15 users per topic), fresh server processes;
#   - fan-out to 5,000 subscribers at fixed rates (10 s each, ascending, gateway and ceiling
#     alternating): the highest rate with no loss and p99 <= 100 ms;
#   - fan-out to 500 subscribers (step mode) and closed-loop rpc with 50 sockets.
#   BENCH_ROUNDS=1   BENCH_BIN=target/release   BENCH_RATES="94 147 230 288 360" (messages/s)
#   BENCH_PARTS="memory fanout small" (any subset)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-1}
bin=${BENCH_BIN:-target/release}
rates=${BENCH_RATES:-94 147 230 288 360}
parts=${BENCH_PARTS:-memory fanout small}
has() { [[ " $parts " == *" $1 "* ]]; }
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
gateway() { # prints "port pid"
  local port; port=$(free_port)
  PHX_GATEWAY__HTTP__PORT="$port" PHX_GATEWAY__ADMIN__PORT=0 RUST_LOG=warn \
    "$bin/phx-gateway" --config config/bench.toml >"$work/gw-$port.log" 2>&1 &
  track $!; wait_port "$port"; echo "$port $!"
}
ceiling() { # prints "port pid"
  local port; port=$(free_port)
  "$bin/examples/ceiling_broadcaster" "127.0.0.1:$port" >/dev/null 2>&1 &
  track $!; wait_port "$port"; echo "$port $!"
}
memory() { # $1 port, $2 pid, $3 topic prefix, extra args
  local port=$1 pid=$2 prefix=$3; shift 3
  "$bin/phx-load" connect --addr "127.0.0.1:$port" -n 15000 -k 1000 --topic-prefix "$prefix" \
    --rate 5000 --sources 4 --hold 10 --server-pid "$pid" "$@" 2>&1 | grep -E "RSS|CPU while"
}
fanout() { # $1 port, $2 messages/s
  "$bin/phx-load" fanout --addrs "127.0.0.1:$1" -n 5000 --rate "$2" --duration 10 --sources 4 2>&1 |
    grep "^result:"
}
for round in $(seq "$rounds"); do
  has memory && for kind in gateway ceiling; do
    for prefix in fan: room:; do
      read -r port pid < <($kind)
      [ "$prefix" = room: ] && extra=(--users 15000) || extra=()
      echo "== round $round $kind memory, $prefix: $(memory "$port" "$pid" "$prefix" "${extra[@]}" | tr '\n' ' ')"
      kill_all
    done
  done
  read -r g _ < <(gateway)
  read -r c _ < <(ceiling)
  has fanout && for rate in $rates; do
    echo "== round $round fan-out 5,000 x $rate/s gateway: $(fanout "$g" "$rate")"
    echo "== round $round fan-out 5,000 x $rate/s ceiling: $(fanout "$c" "$rate")"
  done
  has small && for addr in "$g" "$c"; do
    echo "== round $round fan-out 500, step, :$addr: $("$bin/phx-load" fanout --addrs "127.0.0.1:$addr" -n 500 --rate 1562 --duration 3 --sources 2 --step 2>&1 | grep highest)"
    echo "== round $round rpc, 50 sockets, :$addr: $("$bin/phx-load" rpc --addr "127.0.0.1:$addr" -n 50 --duration 5 2>&1 | grep -E "^(replies|latency)" | tr '\n' ' ')"
  done
  kill_all
done
