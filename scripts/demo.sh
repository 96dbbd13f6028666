#!/usr/bin/env bash
# Starts the server on a free loopback port, runs the client through the four
# call patterns with the demo's names and pacing, stops the server and exits
# with the client's status.
set -euo pipefail
bin="${1:?usage: demo.sh <dir with the server and client binaries>}"

. "$(dirname "$0")/ready-file.sh"

work=$(mktemp -d)
log="$work/server.log"
"$bin/server" --addr 127.0.0.1:0 --ready-file "$work/ready.json" 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready "$work/ready.json" "$server" || { echo "demo: the server did not start" >&2; cat "$log" >&2; exit 1; }
addr=$(ready_addr "$work/ready.json" grpc)
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
