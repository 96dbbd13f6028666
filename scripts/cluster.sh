#!/usr/bin/env bash
# A local cluster: N `server` replicas on free loopback ports, each with an
# admin port, and HAProxy in front of them with deploy/haproxy/haproxy.cfg.
#
#   scripts/cluster.sh start BIN_DIR [N] [PORT]   # N=3, PORT=8080 (HAProxy's)
#   scripts/cluster.sh stop
#
# State (pids, logs, the rendered config) lives in $CLUSTER_DIR
# (default $CARGO_TARGET_DIR/cluster). `make cluster` / `make cluster-stop` call it.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CLUSTER_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/greet/target}/cluster}"

stop() {
  [ -d "$dir" ] || { echo "cluster: nothing running"; return 0; }
  for pidfile in "$dir"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      # Bounded wait for a graceful exit, then SIGKILL.
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  rm -f "$dir"/*.ready
  echo "cluster: stopped"
}

. "$repo/scripts/ready-file.sh"

start() {
  local bin="$1" n="${2:-3}" port="${3:-8080}"
  [ -x "$bin/server" ] || { echo "cluster: $bin/server not found; run make build" >&2; exit 1; }
  command -v haproxy >/dev/null || { echo "cluster: haproxy not installed; run make deps" >&2; exit 1; }
  if [ -n "$(ls "$dir"/*.pid 2>/dev/null)" ]; then
    echo "cluster: already running (make cluster-stop first)" >&2; exit 1
  fi
  mkdir -p "$dir"
  rm -f "$dir"/*.ready
  local servers=()
  for i in $(seq "$n"); do
    RUST_LOG=info "$bin/server" --addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --instance-id "replica-$i" \
      --drain-delay 2s --ready-file "$dir/replica-$i.ready" >"$dir/replica-$i.log" 2>&1 &
    echo $! >"$dir/replica-$i.pid"
  done
  for i in $(seq "$n"); do
    local addr admin
    wait_ready "$dir/replica-$i.ready" "$(cat "$dir/replica-$i.pid")" || { cat "$dir/replica-$i.log" >&2; exit 1; }
    addr="$(ready_addr "$dir/replica-$i.ready" grpc)"
    admin="$(ready_addr "$dir/replica-$i.ready" admin)"
    servers+=(--server "replica-$i=$addr,${admin##*:}")
    echo "cluster: replica-$i at $addr (admin http://$admin/healthz)"
  done
  python3 "$repo/deploy/haproxy/render.py" --bind "127.0.0.1:$port" "${servers[@]}" >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg"
  haproxy -D -p "$dir/haproxy.pid" -f "$dir/haproxy.cfg"
  echo "cluster: $n replicas behind HAProxy at 127.0.0.1:$port"
  echo "  try:  $bin/client --addr 127.0.0.1:$port load --calls 2000"
  echo "  stop: make cluster-stop"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start BIN_DIR [N] [PORT] | stop" >&2; exit 2 ;;
esac
