#!/usr/bin/env bash
# `make mesh-demo`: proxyless gRPC over xDS on loopback. Three replicas
# (r1, r2, r3), the xDS control plane of tests/xds/controlplane (built with
# Go) naming them in one round-robin cluster, and our client dialling
# xds:///greet with no proxy in the path: 6,000 calls at 1,000/s, each tried
# once (the route has no retry policy). Once half of them are answered, r3 is
# removed from the endpoints (the file rewritten, SIGHUP to the control
# plane). Prints the client's JSON summary (calls by status and by replica)
# and what r3 answered after the update; exits non-zero if any call failed.
set -euo pipefail
bin="${1:?usage: mesh-demo.sh <dir with the server and client binaries>}"
calls=6000
rps=1000

. "$(dirname "$0")/chat-common.sh"
repo=$(cd "$(dirname "$0")/.." && pwd)

go=$(command -v go || echo /usr/local/go/bin/go)
(cd "$repo/tests/xds/controlplane" &&
  GOTOOLCHAIN=local GOFLAGS=-mod=mod "$go" build -buildvcs=false -o "$work/xds-controlplane" .)

# SayHello calls the replica with admin address $1 has answered.
handled() {
  curl -s --max-time 2 "http://$1/metrics" |
    awk '/^grpc_server_handled_total\{/ && /grpc_method="SayHello"/ { n += $NF } END { print n + 0 }'
}

addrs=()
admins=()
for name in r1 r2 r3; do
  start_replica "$name" --instance-id "$name" --admin-addr 127.0.0.1:0
  addrs+=("$(replica_addr "$name" "${pids[-1]}")")
  admins+=("$(ready_addr "$work/server-$name.ready" admin)")
done
echo "${addrs[0]},${addrs[1]},${addrs[2]}" >"$work/endpoints"

"$work/xds-controlplane" -addr 127.0.0.1:0 -name greet -node greet-client \
  -endpoints-file "$work/endpoints" 2>"$work/controlplane.log" &
control_plane=$!
pids+=("$control_plane")
control_plane_addr=$(wait_for "$work/controlplane.log" '.*listening on \(.*\)' "$control_plane")
cat >"$work/bootstrap.json" <<JSON
{"xds_servers": [{"server_uri": "$control_plane_addr", "channel_creds": [{"type": "insecure"}],
  "server_features": ["xds_v3"]}], "node": {"id": "greet-client"}}
JSON
echo "mesh-demo: r1 ${addrs[0]}, r2 ${addrs[1]}, r3 ${addrs[2]}; control plane on $control_plane_addr" >&2

echo "mesh-demo: client --addr xds:///greet load --calls $calls --rps $rps" >&2
GRPC_XDS_BOOTSTRAP="$work/bootstrap.json" timeout 60 "$bin/client" --addr xds:///greet \
  --timeout 10s load --calls "$calls" --concurrency 8 --rps "$rps" --json >"$work/load.json" 2>"$work/load.err" &
client=$!
pids+=("$client")

# Midway: half the calls answered (up to 30 s, while the client runs).
answered=0
for _ in $(seq 600); do
  answered=$(($(handled "${admins[0]}") + $(handled "${admins[1]}") + $(handled "${admins[2]}")))
  [ "$answered" -ge $((calls / 2)) ] && break
  alive "$client" || break
  sleep 0.05
done
if [ "$answered" -lt $((calls / 2)) ]; then
  echo "mesh-demo: the load did not reach half its calls ($answered answered)" >&2
  cat "$work/load.err" >&2
  exit 1
fi

echo "mesh-demo: $answered calls answered; removing r3 from the endpoints (SIGHUP to the control plane)" >&2
echo "${addrs[0]},${addrs[1]}" >"$work/endpoints"
kill -HUP "$control_plane"
wait_for "$work/controlplane.log" '\(version 2:.*\)' "$control_plane" >&2
r3_at_update=$(handled "${admins[2]}")

status=0
wait "$client" || status=$?
r3_after=$(($(handled "${admins[2]}") - r3_at_update))

cat "$work/load.json"
echo "mesh-demo: r3 answered $r3_after call(s) after the control plane dropped it"
if [ "$status" -ne 0 ]; then
  echo "mesh-demo: the client failed (exit $status)" >&2
  cat "$work/load.err" >&2
fi
exit "$status"
