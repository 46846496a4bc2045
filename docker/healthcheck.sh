#!/bin/bash
# Container health check for phx-gateway: GET /healthz on the admin port, exit 0 on HTTP 200.
# The runtime image carries no curl or wget, so this speaks HTTP/1.0 through bash's /dev/tcp.
#
# Environment: PHX_GATEWAY__ADMIN__PORT (default 9568), HEALTHCHECK_HOST (default 127.0.0.1),
# HEALTHCHECK_PATH (default /healthz), HEALTHCHECK_TIMEOUT seconds (default 3).
set -u
host="${HEALTHCHECK_HOST:-127.0.0.1}"
port="${PHX_GATEWAY__ADMIN__PORT:-9568}"
path="${HEALTHCHECK_PATH:-/healthz}"
timeout="${HEALTHCHECK_TIMEOUT:-3}"

if ! exec 3<>"/dev/tcp/${host}/${port}"; then
  echo "healthcheck: cannot connect to ${host}:${port}" >&2
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
status_line=""
IFS= read -r -t "$timeout" status_line <&3 || true
exec 3<&- 3>&-
case "$status_line" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *)
    echo "healthcheck: GET ${path} answered: ${status_line:-nothing}" >&2
    exit 1
    ;;
esac
