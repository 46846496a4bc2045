#!/usr/bin/env bash
# Memory under churn (docs/benchmarks.md, "Memory under churn"). Not part of CI. Needs a
# release build (`cargo build --release --bins`, with the allocator to measure) and
# `ulimit -n` >= 20000.
# One gateway node on a fresh redis-server (config/bench.toml). Each round, CHURN_SOCKETS
# sockets with new user ids open, join one of CHURN_TOPICS presence topics (room:), are held
# a second and close. Each round prints the highest RSS while its sockets were open (sampled
# every 0.5 s) and the RSS with them closed: once the node counts no socket, channel task or
# presence, and CHURN_SETTLE seconds more (what the allocator hands back within seconds is
# not counted as kept), with the live heap by the allocator's count (jemalloc builds; 0 with
# another allocator). After the last round: the RSS every 10 s for CHURN_AFTER seconds
# with nothing connected (memory handed back to the OS), against the highest RSS of the run.
#   CHURN_ROUNDS=40 CHURN_SOCKETS=5000 CHURN_TOPICS=100 CHURN_SETTLE=3 CHURN_AFTER=60
#   BENCH_BIN=target/release
#   CHURN_LABEL=jemalloc (printed with every line, to tell runs apart)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${CHURN_ROUNDS:-40}
sockets=${CHURN_SOCKETS:-5000}
topics=${CHURN_TOPICS:-100}
after=${CHURN_AFTER:-60}
settle=${CHURN_SETTLE:-3}
bin=${BENCH_BIN:-target/release}
label=${CHURN_LABEL:-churn}
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
track $!
wait_port "$redis_port"
port=$(free_port)
admin=$(free_port)
PHX_GATEWAY__HTTP__PORT="$port" PHX_GATEWAY__ADMIN__PORT="$admin" \
  PHX_GATEWAY__REDIS__URL="redis://127.0.0.1:$redis_port" RUST_LOG=warn \
  "$bin/phx-gateway" --config config/bench.toml >"$work/gw.log" 2>&1 &
pid=$!
track "$pid"
wait_port "$port"
wait_port "$admin"

rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
metric() { # sum of a metric's series on the admin page
  curl -sf "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }'
}
idle() { # waits (60 s at most) until the node holds nothing
  for _ in $(seq 600); do
    if [ "$(metric phx_gateway_sockets)" = 0 ] && [ "$(metric phx_gateway_channel_tasks)" = 0 ] &&
      [ "$(metric phx_gateway_presence_entries)" = 0 ]; then return 0; fi
    sleep 0.1
  done
  echo "the node still holds sockets, tasks or presences" >&2
  return 1
}
peak_file="$work/peak"
echo 0 >"$peak_file"
top=0
( while kill -0 "$pid" 2>/dev/null; do
    r=$(rss_mib); awk -v r="$r" '{ if (r > $1) print r; else print $1 }' "$peak_file" >"$peak_file.new"
    mv "$peak_file.new" "$peak_file"; sleep 0.5
  done ) &
sampler=$!
echo "[$label] start: RSS $(rss_mib) MiB"
for round in $(seq "$rounds"); do
  "$bin/phx-load" connect --addr "127.0.0.1:$port" -n "$sockets" -k "$topics" --topic-prefix room:churn \
    --users "$sockets" --user-prefix "r$round-u" --rate 5000 --sources 4 --hold 1 >"$work/load.log" 2>&1 ||
    { cat "$work/load.log"; exit 1; }
  errors=$(grep -c "^errors:" "$work/load.log" || true)
  idle
  sleep "$settle"
  open=$(cat "$peak_file")
  echo 0 >"$peak_file"
  top=$(awk -v a="$top" -v b="$open" 'BEGIN { print (b > a) ? b : a }')
  heap=$(metric phx_gateway_heap_allocated_bytes | awk '{ printf "%.1f", $1 / 1048576 }')
  echo "[$label] round $round: RSS $open MiB open, $(rss_mib) MiB closed, live heap $heap MiB (load errors: $errors)"
done
echo "[$label] peak RSS $top MiB"
for t in $(seq 10 10 "$after"); do
  sleep 10
  echo "[$label] ${t} s after the last close: RSS $(rss_mib) MiB"
done
kill "$sampler" 2>/dev/null || true
