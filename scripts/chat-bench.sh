#!/usr/bin/env bash
# `make chat-bench` (also run by `make bench`): chat.v1.Chat fan-out measured
# with the `chat-bench` tool, on one replica (embedded SQLite) and on two
# replicas sharing a Redis broker, and on two replicas sharing a highly
# available Redis (primary, replica, three Sentinels) with and without the
# acknowledgement rule (a replica confirms each message, WAIT 1, before its
# echo): deliveries per second to the subscribers of one room during a
# burst, and send-to-receive latency at a fixed rate (a Say's latency to
# its echo, which is its acknowledgement). Last, two replicas on an etcd
# cluster of three members (scripts/etcd.py), where a message is
# acknowledged once a quorum has it on disk.
# Extra arguments go to chat-bench (e.g. --subscribers 100 --burst 2000).
# Prints a markdown table; the raw JSON lines go to stderr.
set -euo pipefail
bin="${1:?usage: chat-bench.sh <dir with the server and chat-bench binaries> [chat-bench args]}"
shift

. "$(dirname "$0")/chat-common.sh"

start_replica one
one=$(replica_addr one "${pids[-1]}")
one_json=$("$bin/chat-bench" --addr "$one" "$@")
echo "one replica: $one_json" >&2
start_redis
start_replica a --broker "$broker"
a=$(replica_addr a "${pids[-1]}")
start_replica b --broker "$broker"
b=$(replica_addr b "${pids[-1]}")
two_json=$("$bin/chat-bench" --addr "$a,$b" "$@")
echo "two replicas + Redis: $two_json" >&2
start_redis_ha
for ack in 1 0; do
  start_replica "ha$ack-a" --broker "$broker" --broker-ack-replicas "$ack"
  a=$(replica_addr "ha$ack-a" "${pids[-1]}")
  start_replica "ha$ack-b" --broker "$broker" --broker-ack-replicas "$ack"
  b=$(replica_addr "ha$ack-b" "${pids[-1]}")
  declare "ha${ack}_json=$("$bin/chat-bench" --addr "$a,$b" "$@")"
  echo "two replicas + Redis HA, --broker-ack-replicas $ack: $(eval echo "\$ha${ack}_json")" >&2
done
start_etcd_cluster
start_replica etcd-a --broker "$broker"
a=$(replica_addr etcd-a "${pids[-1]}")
start_replica etcd-b --broker "etcd://$(echo "${broker#etcd://}" | awk -F, '{print $2","$3","$1}')"
b=$(replica_addr etcd-b "${pids[-1]}")
etcd_json=$("$bin/chat-bench" --addr "$a,$b" "$@")
echo "two replicas + etcd (3 members): $etcd_json" >&2

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
row "two replicas + Redis HA (Sentinels), ack after 1 replica (WAIT)" "$ha1_json"
row "two replicas + Redis HA (Sentinels), ack without replica" "$ha0_json"
row "two replicas + etcd (3 members), ack after a quorum" "$etcd_json"
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
