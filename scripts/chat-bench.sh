#!/usr/bin/env bash
# `make chat-bench` (also run by `make bench`): chat.v1.Chat fan-out measured
# with the `chat-bench` tool, on one replica (embedded SQLite) and on two
# replicas sharing a Redis broker: deliveries per second to the subscribers
# of one room during a burst, and send-to-receive latency at a fixed rate.
# Extra arguments go to chat-bench (e.g. --subscribers 100 --burst 2000).
# Prints a markdown table; the raw JSON lines go to stderr.
set -euo pipefail
bin="${1:?usage: chat-bench.sh <dir with the server and chat-bench binaries> [chat-bench args]}"
shift

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Prints the sed group of the first line of log $1 matching $2, waiting up to 10 s.
wait_for() {
  local found=""
  for _ in $(seq 200); do
    found=$(sed -n "s/$2/\\1/p" "$1" | head -n1)
    [ -n "$found" ] && { echo "$found"; return 0; }
    sleep 0.05
  done
  echo "chat-bench: gave up waiting for $2 in $1" >&2
  cat "$1" >&2
  return 1
}

redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "$work/redis.log" '.*\([Rr]eady to accept connections\).*' >/dev/null

replica() {
  local name=$1; shift
  "$bin/server" --addr 127.0.0.1:0 --data-dir "$work/data-$name" "$@" >/dev/null 2>"$work/$name.log" &
  pids+=($!)
  wait_for "$work/$name.log" '.*Server started at \(.*\)$'
}

one=$(replica one)
one_json=$("$bin/chat-bench" --addr "$one" "$@")
echo "one replica: $one_json" >&2
a=$(replica a --broker "redis+unix://$work/redis.sock")
b=$(replica b --broker "redis+unix://$work/redis.sock")
two_json=$("$bin/chat-bench" --addr "$a,$b" "$@")
echo "two replicas + Redis: $two_json" >&2

row() {
  python3 - "$1" "$2" <<'PY'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
print("| %s | %d | %s | %s | %.2f | %.2f |" % (name, r["subscribers"], format(r["deliveries_per_sec"], ",.0f"),
      format(r["messages_per_sec"], ",.0f"), r["latency_p50_ms"], r["latency_p99_ms"]))
PY
}
echo "| setup | subscribers | deliveries/s (burst) | messages/s (burst) | latency p50, ms | latency p99, ms |"
echo "|---|---|---|---|---|---|"
row "one replica (SQLite)" "$one_json"
row "two replicas + Redis" "$two_json"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
