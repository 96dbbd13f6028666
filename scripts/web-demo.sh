#!/usr/bin/env bash
# `make web-demo`: the chat page in a browser (docs/web.md). Starts a Redis,
# two replicas sharing it and Envoy in front of them, which serves the page
# built by web/build.sh and turns its gRPC-Web into gRPC; prints one line,
# `web: http://127.0.0.1:PORT/`, and runs until interrupted. Open
# http://127.0.0.1:PORT/?room=lobby&user=alice in two windows (another user).
# WEB_DEMO_CORS_ORIGIN allows another origin's pages to call (CORS);
# WEB_DEMO_ONCE=1 stops everything once the line is printed (CI's smoke run).
set -euo pipefail
bin=${1:?usage: web-demo.sh BIN_DIR}
. "$(dirname "$0")/chat-common.sh"
root=$(cd "$(dirname "$0")/.." && pwd)

page=$("$root/web/build.sh")
start_redis
start_replica a --broker "$broker"; a=$(replica_addr a "${pids[-1]}")
start_replica b --broker "$broker"; b=$(replica_addr b "${pids[-1]}")
envoy=$(python3 "$root/scripts/envoy.py")
port=$(free_port)
cors=()
[ -n "${WEB_DEMO_CORS_ORIGIN:-}" ] && cors=(--cors-origin "$WEB_DEMO_CORS_ORIGIN")
python3 "$root/deploy/envoy/render.py" --bind "127.0.0.1:$port" --admin 127.0.0.1:0 \
  --server "replica-a=$a" --server "replica-b=$b" --web-root "$page" "${cors[@]}" >"$work/envoy.yaml"
"$envoy" -c "$work/envoy.yaml" --use-dynamic-base-id --disable-hot-restart -l warning --concurrency 2 \
  >"$work/envoy.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/envoy.log" >&2; exit 1; }
  sleep 0.05
done
curl -fsS -o /dev/null "http://127.0.0.1:$port/" || { echo "web-demo: Envoy does not serve the page" >&2; cat "$work/envoy.log" >&2; exit 1; }
echo "web: http://127.0.0.1:$port/"
[ "${WEB_DEMO_ONCE:-}" = 1 ] && exit 0
wait "${pids[-1]}"
