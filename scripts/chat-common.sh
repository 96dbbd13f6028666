# Sourced by chat-demo.sh and chat-bench.sh: a work dir and the processes
# started in it, all stopped on exit; waiting for a log line; a redis-server
# on a unix socket; a server replica (ready once its --ready-file is written).
. "$(dirname "${BASH_SOURCE[0]}")/ready-file.sh"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Waits (up to 10 s) for a line of log $1 matching sed regex $2 (with one
# \(group\)) while process $3 lives; prints the group.
wait_for() {
  local log=$1 extract=$2 pid=$3 found=""
  for _ in $(seq 200); do
    found=$(sed -n "s/$extract/\\1/p" "$log" | head -n1)
    [ -n "$found" ] && { echo "$found"; return 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$(basename "$0"): gave up waiting for $extract in $log" >&2
  cat "$log" >&2
  return 1
}

# Starts redis-server on $work/redis.sock, without persistence; sets $broker.
start_redis() {
  redis-server --port 0 --unixsocket "$work/redis.sock" --save '' --appendonly no >"$work/redis.log" 2>&1 &
  pids+=($!)
  wait_for "$work/redis.log" '.*\([Rr]eady to accept connections\).*' "${pids[-1]}" >/dev/null
  broker="redis+unix://$work/redis.sock"
}

# Starts replica $1 of "$bin/server" with the other arguments; its pid is
# ${pids[-1]}, its log $work/server-$1.log. Use `replica_addr $1 PID` for its address.
start_replica() {
  local name=$1; shift
  rm -f "$work/server-$name.ready"
  "$bin/server" --addr 127.0.0.1:0 --data-dir "$work/data-$name" --grace 1s "$@" \
    --ready-file "$work/server-$name.ready" >/dev/null 2>"$work/server-$name.log" &
  pids+=($!)
}

# The gRPC address of replica $1 (process $2), once it serves.
replica_addr() {
  wait_ready "$work/server-$1.ready" "$2" || { cat "$work/server-$1.log" >&2; return 1; }
  ready_addr "$work/server-$1.ready" grpc
}
