#!/usr/bin/env bash
# Publish a broadcast into phx-gateway straight through Redis, as an application backend in
# any language can: PUBLISH the documented envelope (docs/redis.md) on the topic's channel.
#
#   REDIS_URL=redis://127.0.0.1:6379 examples/redis-publish.sh room:lobby srv_push '{"body":"hi"}'
#
# Every subscriber of the topic, on every node, receives [null,null,topic,event,payload].
set -euo pipefail
topic=${1:?usage: redis-publish.sh TOPIC EVENT [JSON_PAYLOAD]}
event=${2:?usage: redis-publish.sh TOPIC EVENT [JSON_PAYLOAD]}
payload=${3:-{\}}
prefix=${KEY_PREFIX:-phx}

# The channel name carries the topic escaped: ASCII letters, digits and :_-.@/ are kept,
# every other byte becomes %XX (so no glob character or brace reaches Redis raw).
escaped=""
while IFS= read -r -n1 -d '' ch; do
  case "$ch" in
    [A-Za-z0-9:_.@/-]) escaped+="$ch" ;;
    *) for byte in $(printf '%s' "$ch" | od -An -tx1); do escaped+="%${byte^^}"; done ;;
  esac
done < <(printf '%s' "$topic")

json_string() { # a JSON string literal
  local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"
}
envelope="{\"v\":1,\"topic\":$(json_string "$topic"),\"event\":$(json_string "$event"),\"payload\":$payload}"
redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" PUBLISH "$prefix:b:{$escaped}" "$envelope" >/dev/null
