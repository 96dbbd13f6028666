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
  echo "cluster: stopped"
}

# The address a replica logged after "$2" in its log file $1, waiting up to 20 s.
logged_addr() {
  for _ in $(seq 200); do
    addr="$(sed -n "s/.*$2 \([^ ]*\).*/\1/p" "$1" | head -n 1)"
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    sleep 0.1
  done
  echo "cluster: no '$2' line in $1" >&2
  return 1
}

start() {
  local bin="$1" n="${2:-3}" port="${3:-8080}"
  [ -x "$bin/server" ] || { echo "cluster: $bin/server not found; run make build" >&2; exit 1; }
  command -v haproxy >/dev/null || { echo "cluster: haproxy not installed; run make deps" >&2; exit 1; }
  if [ -n "$(ls "$dir"/*.pid 2>/dev/null)" ]; then
    echo "cluster: already running (make cluster-stop first)" >&2; exit 1
  fi
  mkdir -p "$dir"
  # One "name addr admin_port" per replica; every @NAME@ line of the template
  # (there is one per backend) is written once per replica.
  local replicas=""
  for i in $(seq "$n"); do
    RUST_LOG=info "$bin/server" --addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --instance-id "replica-$i" \
      --drain-delay 2s >"$dir/replica-$i.log" 2>&1 &
    echo $! >"$dir/replica-$i.pid"
  done
  for i in $(seq "$n"); do
    local addr admin
    addr="$(logged_addr "$dir/replica-$i.log" 'Server started at')"
    admin="$(logged_addr "$dir/replica-$i.log" 'Admin HTTP port at')"
    replicas+="replica-$i $addr ${admin##*:}"$'\n'
    echo "cluster: replica-$i at $addr (admin http://$admin/healthz)"
  done
  awk -v bind="127.0.0.1:$port" -v replicas="$replicas" '
    BEGIN { n = split(replicas, rows, "\n") }
    /@NAME@/ && !/^ *#/ {
      for (i = 1; i <= n; i++) {
        if (split(rows[i], f, " ") < 3) continue
        line = $0
        gsub(/@NAME@/, f[1], line); gsub(/@ADDR@/, f[2], line); gsub(/@ADMIN_PORT@/, f[3], line)
        gsub(/ *@BACKUP@/, "", line)
        print line
      }
      next
    }
    { gsub(/@BIND@/, bind); print }' "$repo/deploy/haproxy/haproxy.cfg" >"$dir/haproxy.cfg"
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
