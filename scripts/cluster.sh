#!/usr/bin/env bash
# A local cluster: N `server` replicas on free loopback ports, each with an
# admin port, and a proxy in front of them: Envoy with deploy/envoy/envoy.yaml
# (the default; Envoy from `scripts/envoy.py`), or HAProxy with
# deploy/haproxy/haproxy.cfg when PROXY=haproxy (the alternative: it does not
# hold streams reset just after a chat Connect request, docs/security.md).
#
#   [PROXY=envoy|haproxy] scripts/cluster.sh start BIN_DIR [N] [PORT]   # N=3, PORT=8080 (the proxy's)
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

# Envoy with deploy/envoy/envoy.yaml rendered for the replicas (from $3 on:
# render.py --server arguments), its admin interface on a free loopback port
# (written to $dir/envoy.admin), in the background; returns once its health
# checks have found a replica healthy.
start_envoy() {
  local envoy="$1" port="$2"
  shift 2
  python3 "$repo/deploy/envoy/render.py" --bind "127.0.0.1:$port" --admin 127.0.0.1:0 "$@" >"$dir/envoy.yaml"
  "$envoy" --mode validate -c "$dir/envoy.yaml" -l error >/dev/null
  rm -f "$dir/envoy.admin"
  # Detached, like `haproxy -D`: in its own session, its parent a subshell
  # that exits at once (Envoy started as a child of this script gets SIGTERM
  # when the script exits).
  ( setsid "$envoy" -c "$dir/envoy.yaml" --admin-address-path "$dir/envoy.admin" \
      --use-dynamic-base-id -l warning </dev/null >"$dir/envoy.log" 2>&1 &
    echo $! >"$dir/envoy.pid" )
  local admin=""
  for _ in $(seq 200); do
    kill -0 "$(cat "$dir/envoy.pid")" 2>/dev/null || { cat "$dir/envoy.log" >&2; exit 1; }
    admin="$(cat "$dir/envoy.admin" 2>/dev/null || true)"
    # A healthy replica in both clusters (unary calls, streaming calls).
    if [ -n "$admin" ] && [ "$(curl -fsS "http://$admin/clusters" 2>/dev/null |
        grep -E '^greet_(replicas|streams)::.*::health_flags::healthy$' | cut -d: -f1 | sort -u | wc -l)" -eq 2 ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "cluster: Envoy found no healthy replica within 20 s; see $dir/envoy.log" >&2
  exit 1
}

start() {
  local bin="$1" n="${2:-3}" port="${3:-8080}" proxy="${PROXY:-envoy}" envoy=""
  [ -x "$bin/server" ] || { echo "cluster: $bin/server not found; run make build" >&2; exit 1; }
  case "$proxy" in
    haproxy) command -v haproxy >/dev/null || { echo "cluster: haproxy not installed; run make deps" >&2; exit 1; } ;;
    envoy) envoy="$(python3 "$repo/scripts/envoy.py")" ;;
    *) echo "cluster: PROXY=$proxy: envoy or haproxy" >&2; exit 2 ;;
  esac
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
  local envoy_servers=()
  for i in $(seq "$n"); do
    local addr admin
    wait_ready "$dir/replica-$i.ready" "$(cat "$dir/replica-$i.pid")" || { cat "$dir/replica-$i.log" >&2; exit 1; }
    addr="$(ready_addr "$dir/replica-$i.ready" grpc)"
    admin="$(ready_addr "$dir/replica-$i.ready" admin)"
    servers+=(--server "replica-$i=$addr,${admin##*:}")
    if [ "$proxy" = envoy ]; then
      envoy_servers+=(--server "replica-$i=$addr")
    fi
    echo "cluster: replica-$i at $addr (admin http://$admin/healthz)"
  done
  if [ "$proxy" = envoy ]; then
    start_envoy "$envoy" "$port" "${envoy_servers[@]}"
    echo "cluster: $n replicas behind Envoy at 127.0.0.1:$port (Envoy's admin: $(cat "$dir/envoy.admin"))"
    echo "  try:  $bin/client --addr 127.0.0.1:$port load --calls 2000"
    echo "  stop: make cluster-stop"
    return
  fi
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
