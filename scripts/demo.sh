#!/usr/bin/env bash
# Starts the server on a free loopback port, runs the client through the four
# call patterns with the demo's names and pacing, stops the server and exits
# with the client's status.
set -euo pipefail
bin="${1:?usage: demo.sh <dir with the server and client binaries>}"

log=$(mktemp)
"$bin/server" --addr 127.0.0.1:0 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT

addr=""
for _ in $(seq 200); do
  addr=$(sed -n 's/.*Server started at //p' "$log" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.05
done
[ -n "$addr" ] || { echo "demo: the server did not start" >&2; cat "$log" >&2; exit 1; }
echo "demo: server listening on $addr" >&2

status=0
for pattern in unary server-stream client-stream bidi; do
  echo "--- $pattern" >&2
  "$bin/client" --addr "$addr" "$pattern" || status=$?
done

kill -TERM "$server"
wait "$server" || status=$?
echo "--- server log" >&2
cat "$log" >&2
exit "$status"
