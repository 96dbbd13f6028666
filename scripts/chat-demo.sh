#!/usr/bin/env bash
# `make chat-demo`: Redis highly available (a primary, a replica and three
# Sentinels on loopback ports, appendonly on), two server replicas sharing
# it through the Sentinels, and three scripted users talking in one room:
# alice on replica A, bob on replica B, carol on A with B as her fallback.
# Halfway through, replica A is killed (SIGKILL), and so is the Redis
# primary (then restarted, as a supervisor would: it comes back as the new
# primary's replica): alice and carol resume on B, the Sentinels promote
# the Redis replica, and everyone's messages go on. Prints what each user
# saw and exits non-zero if any of them missed or repeated a message.
# `make chat-demo-etcd` (second argument `etcd`): the same on a three-member
# etcd cluster, whose leader is killed (and restarted) instead.
set -euo pipefail
bin="${1:?usage: chat-demo.sh <dir with the server and client binaries> [redis|etcd]}"
store="${2:-redis}"

. "$(dirname "$0")/chat-common.sh"

case "$store" in
  redis)
    start_redis_ha
    echo "chat-demo: Redis primary on :$redis_primary_port, replica on :$redis_replica_port, broker $broker" >&2
    ;;
  etcd)
    start_etcd_cluster
    echo "chat-demo: etcd members on :${etcd_client_ports[*]}, leader ${etcd_names[$(etcd_leader)]}, broker $broker" >&2
    ;;
  *) echo "chat-demo: unknown store $store (redis or etcd)" >&2; exit 2 ;;
esac
start_replica A --broker "$broker"; pid_a=${pids[-1]}
addr_a=$(replica_addr A "$pid_a")
start_replica B --broker "$broker"
addr_b=$(replica_addr B "${pids[-1]}")
echo "chat-demo: replica A on $addr_a, replica B on $addr_b" >&2

user_pids=()
# One user: says each "delay line" pair after its delay, stays until it has
# heard the two others say goodbye (up to 30 s: the failover may delay
# them), then leaves (EOF).
user() {
  local name=$1 addrs=$2; shift 2
  {
    while [ "$#" -gt 0 ]; do sleep "$1"; echo "$2"; shift 2; done
    for _ in $(seq 300); do
      [ "$(grep -c '^\[[0-9:]*\] [a-z]*: bye' "$work/$name.out")" -ge 2 ] && break
      sleep 0.1
    done
  } | "$bin/client" --addr "$addrs" --timeout 30s chat --room demo --user "$name" --history 0 \
      >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  user_pids+=($!)
}

user alice "$addr_a,$addr_b" 0.5 "hi all, alice here (replica A)" 1.5 "anyone seen the build?" \
  2.5 "still here after A went down" 1.0 "bye"
user bob "$addr_b" 1.0 "bob on replica B" 1.5 "build is green" \
  2.0 "A is gone? I did not notice" 1.5 "bye from bob"
user carol "$addr_a,$addr_b" 1.5 "carol, on A with B as fallback" 1.5 "nice" \
  2.0 "resumed on B, nothing missed" 1.0 "bye from carol"

sleep 3.5
echo "chat-demo: killing replica A (SIGKILL) mid-conversation" >&2
kill -KILL "$pid_a"
wait "$pid_a" 2>/dev/null || true
if [ "$store" = etcd ]; then
  echo "chat-demo: killing the etcd leader (SIGKILL); the two other members elect another" >&2
  kill_and_restart_etcd_leader
else
  echo "chat-demo: killing the Redis primary (SIGKILL); the Sentinels promote its replica" >&2
  kill_and_restart_redis_primary
fi

status=0
for pid in "${user_pids[@]}"; do wait "$pid" || status=$?; done

for name in alice bob carol; do
  echo "--- $name saw"
  cat "$work/$name.out"
  sed 's/^/    (stderr) /' "$work/$name.err"
done

# Each user sees the 8 lines of the two others: nothing lost, nothing twice.
for name in alice bob carol; do
  lines=$(grep -c '^\[' "$work/$name.out" || true)
  unique=$(grep '^\[' "$work/$name.out" | cut -d' ' -f2- | sort -u | wc -l)
  if [ "$lines" -ne 8 ] || [ "$unique" -ne 8 ]; then
    echo "chat-demo: $name saw $lines messages ($unique distinct), expected 8" >&2
    status=1
  fi
done
echo "--- replica B log (tail)"
tail -n 5 "$work/server-B.log"
[ "$store" = etcd ] && { echo "--- the etcd leader is now ${etcd_names[$(etcd_leader)]:-nobody}"; exit "$status"; }
echo "--- the Redis primary is now on :$(redis-cli -p "$(echo "$broker" | sed 's|redis+sentinel://127.0.0.1:\([0-9]*\).*|\1|')" sentinel get-master-addr-by-name chat | tail -n1) (it was on :$redis_primary_port)"
exit "$status"
