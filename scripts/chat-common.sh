# Sourced by chat-demo.sh, chat-bench.sh and mesh-demo.sh: a work dir and the
# processes started in it, all stopped on exit (SIGKILL after 5 s); waiting
# for a log line; a redis-server on a unix socket; a server replica (ready
# once its --ready-file is written).
. "$(dirname "${BASH_SOURCE[0]}")/ready-file.sh"
work=$(mktemp -d)
pids=()
# Alive: running, not a zombie waiting to be reaped (Linux /proc).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
  [ -n "$state" ] && [ "$state" != Z ]
}
# Bounded: what has not exited 5 s after SIGTERM gets SIGKILL (a Redis
# replica writing its first append-only file refuses SIGTERM, and keeps
# refusing it).
cleanup() {
  [ "${#pids[@]}" -gt 0 ] || { rm -rf "$work"; return; }
  kill "${pids[@]}" 2>/dev/null || true
  (sleep 5; kill -KILL "${pids[@]}") >/dev/null 2>&1 &
  local reaper=$!
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  kill "$reaper" 2>/dev/null || true
  wait "$reaper" 2>/dev/null || true
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

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits (up to 30 s) until `redis-cli -p $1 $2...` prints something matching $pattern.
wait_redis() {
  local port=$1 pattern=$2; shift 2
  for _ in $(seq 600); do
    redis-cli -p "$port" "$@" 2>/dev/null | grep -q "$pattern" && return 0
    sleep 0.05
  done
  echo "$(basename "$0"): gave up waiting for redis on $port ($* ~ $pattern)" >&2
  return 1
}

# Redis highly available on loopback ports: a primary, a replica and three
# Sentinels (quorum 2, down after 3 s: at 1 s, close to the Sentinels' ping
# period, one of them may declare a just-promoted primary down and fail over
# again), persistence on (appendonly). Sets $broker (redis+sentinel://...),
# $redis_primary_port, $redis_replica_port, $redis_primary_pid, $redis_replica_pid.
start_redis_ha() {
  local name port
  redis_node() {  # name port [redis-server args...]
    local name=$1 port=$2; shift 2
    mkdir -p "$work/redis-$name"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis-$name" --appendonly yes --save '' "$@" \
      >>"$work/redis-$name.log" 2>&1 &
    pids+=($!)
  }
  redis_primary_port=$(free_port)
  redis_node primary "$redis_primary_port"; redis_primary_pid=${pids[-1]}
  wait_redis "$redis_primary_port" PONG ping
  redis_replica_port=$(free_port)
  redis_node replica "$redis_replica_port" --replicaof 127.0.0.1 "$redis_primary_port"; redis_replica_pid=${pids[-1]}
  wait_redis "$redis_replica_port" master_link_status:up info replication
  local sentinels=()
  for i in 1 2 3; do
    port=$(free_port)
    cat >"$work/sentinel$i.conf" <<CONF
port $port
bind 127.0.0.1
dir $work
sentinel monitor chat 127.0.0.1 $redis_primary_port 2
sentinel down-after-milliseconds chat 3000
sentinel failover-timeout chat 10000
CONF
    redis-server "$work/sentinel$i.conf" --sentinel >"$work/sentinel$i.log" 2>&1 &
    pids+=($!)
    sentinels+=("127.0.0.1:$port")
  done
  for s in "${sentinels[@]}"; do
    for _ in $(seq 600); do
      out=$(redis-cli -p "${s#*:}" sentinel master chat 2>/dev/null | tr '\n' ' ')
      [[ "$out" == *"num-slaves 1 "* && "$out" == *"num-other-sentinels 2 "* ]] && break
      sleep 0.05
    done
    [[ "$out" == *"num-other-sentinels 2 "* ]] || { echo "$(basename "$0"): sentinel $s not ready: $out" >&2; return 1; }
  done
  broker="redis+sentinel://$(IFS=,; echo "${sentinels[*]}")/chat"
}

# SIGKILLs the Redis primary, waits (up to 30 s) for the Sentinels to
# promote the replica, then starts the old primary again on the same port
# and data as the new primary's replica, as a supervisor that asks the
# Sentinels would (acknowledgements need a replica; left to itself the old
# primary comes back as a primary and the Sentinels take ~10 s to demote it).
kill_and_restart_redis_primary() {
  local sentinel_port
  sentinel_port=$(echo "$broker" | sed 's|redis+sentinel://127.0.0.1:\([0-9]*\).*|\1|')
  kill -KILL "$redis_primary_pid"; wait "$redis_primary_pid" 2>/dev/null || true
  wait_redis "$sentinel_port" "^$redis_replica_port\$" sentinel get-master-addr-by-name chat
  echo "$(basename "$0"): the Sentinels promoted the replica (:$redis_replica_port); restarting the old primary" >&2
  redis_node primary "$redis_primary_port" --replicaof 127.0.0.1 "$redis_replica_port"; redis_primary_pid=${pids[-1]}
}

# An etcd cluster of three members on loopback ports (scripts/etcd.py builds
# the pinned etcd), each with its own data dir. Sets $broker (etcd://...),
# $etcd_pids, $etcd_client_ports and $etcd_names.
start_etcd_cluster() {
  local etcd_bin i cluster="" peer_ports=()
  etcd_bin="$(python3 "$(dirname "${BASH_SOURCE[0]}")/etcd.py")/etcd"
  etcd_pids=(); etcd_client_ports=(); etcd_names=(e1 e2 e3)
  for i in 0 1 2; do
    etcd_client_ports+=("$(free_port)"); peer_ports+=("$(free_port)")
    cluster+="${cluster:+,}${etcd_names[$i]}=http://127.0.0.1:${peer_ports[$i]}"
  done
  for i in 0 1 2; do
    "$etcd_bin" --name "${etcd_names[$i]}" --data-dir "$work/etcd-${etcd_names[$i]}" \
      --listen-client-urls "http://127.0.0.1:${etcd_client_ports[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${etcd_client_ports[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "chat-$$" \
      --auto-compaction-mode revision --auto-compaction-retention 100000 \
      >"$work/etcd-${etcd_names[$i]}.log" 2>&1 &
    pids+=($!); etcd_pids+=($!)
  done
  for _ in $(seq 600); do
    [ -n "$(etcd_leader)" ] && break
    sleep 0.05
  done
  [ -n "$(etcd_leader)" ] || { echo "$(basename "$0"): the etcd cluster elected no leader" >&2; return 1; }
  broker="etcd://$(printf '127.0.0.1:%s,' "${etcd_client_ports[@]}" | sed 's/,$//')"
}

# The index (0-2) of the etcd member that is the leader, asked of each live
# member through etcd's JSON gateway; empty while there is none.
etcd_leader() {
  local i
  for i in 0 1 2; do
    alive "${etcd_pids[$i]}" || continue
    curl -s -m 1 -X POST -d '{}' "http://127.0.0.1:${etcd_client_ports[$i]}/v3/maintenance/status" 2>/dev/null |
      python3 -c 'import json, sys; s = json.load(sys.stdin); sys.exit(0 if s.get("leader") and s["leader"] == s["header"]["member_id"] else 1)' \
      2>/dev/null && { echo "$i"; return 0; }
  done
  return 0
}

# SIGKILLs the etcd leader, waits (up to 30 s) for the two others to elect
# one, then starts the killed member again from its data dir, as a
# supervisor would.
kill_and_restart_etcd_leader() {
  local leader args
  leader=$(etcd_leader)
  [ -n "$leader" ] || { echo "$(basename "$0"): no etcd leader to kill" >&2; return 1; }
  args=$(tr '\0' ' ' <"/proc/${etcd_pids[$leader]}/cmdline")
  kill -KILL "${etcd_pids[$leader]}"; wait "${etcd_pids[$leader]}" 2>/dev/null || true
  for _ in $(seq 600); do
    local now; now=$(etcd_leader)
    [ -n "$now" ] && [ "$now" != "$leader" ] && break
    sleep 0.05
  done
  echo "$(basename "$0"): the etcd members elected ${etcd_names[$(etcd_leader)]:-nobody}; restarting ${etcd_names[$leader]}" >&2
  # The member's own command line, with its cluster state now "existing".
  # shellcheck disable=SC2086
  ${args/--initial-cluster-state new/--initial-cluster-state existing} >>"$work/etcd-${etcd_names[$leader]}.log" 2>&1 &
  pids+=($!); etcd_pids[$leader]=$!
}
