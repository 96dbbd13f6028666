#!/usr/bin/env bash
# Profiles one server under the unary load of `make bench`'s unary_max row
# (h2load, 50 connections x 4 streams, helloworld SayHello), or with
# LOAD=bidi the load of its bidi_1 row (our loadgen: one stream, 64 requests
# in flight, GreetService SayHelloBidirectionalStreaming), with Debian's
# perf, sampling that server's process only, and writes what it spends per
# shared object and per symbol:
#
#   bench/profile.sh NAME PORT -- SERVER ARGV...
#   bench/profile.sh ours 50151 -- $CARGO_TARGET_DIR/release/server --addr 127.0.0.1:50151 --threads 1 --stream-interval 0
#   bench/profile.sh cpp 50152 -- $CARGO_TARGET_DIR/cpp-peer/*/cpp-peer --addr 127.0.0.1:50152 --threads 1
#
# The server runs on core 0 and h2load on core 1, as in run.py; 2 s of
# warm-up, then 6 s recorded at 2,999 Hz. Output in $OUT (default
# $CARGO_TARGET_DIR/bench/profile): NAME.data (perf's), NAME.txt (h2load's
# rate, then the table by object and by symbol). PERF_ARGS replaces
# `-F 2999` (e.g. `-F 999 --call-graph dwarf` for call stacks).
# FLAME=1 records call stacks (`-F 999 --call-graph dwarf`, unless PERF_ARGS
# says otherwise) and also writes NAME.folded (one line per stack with its
# sample count) and NAME.svg, a flame graph, with inferno (pinned below,
# installed by cargo on first use under $CARGO_TARGET_DIR/tools/).
# Needs root (or perf_event_paranoid <= 1), perf (`apt-get install
# linux-perf`) and h2load (nghttp2-client, which run.py installs); LOAD=bidi
# needs the loadgen that bench/run.py builds (found under
# $BENCH_BIN_DIR, by default ~/.cache/greet/bench-bin).
set -euo pipefail

[ "$#" -ge 4 ] && [ "$3" = "--" ] || { echo "usage: $0 NAME PORT -- SERVER ARGV..." >&2; exit 2; }
name=$1 port=$2
shift 3
for tool in perf h2load taskset; do
  command -v "$tool" >/dev/null || { echo "profile: $tool is not installed" >&2; exit 1; }
done
target="${CARGO_TARGET_DIR:-$HOME/.cache/greet/target}"
out="${OUT:-$target/bench/profile}"
mkdir -p "$out"
flame="${FLAME:-0}"
if [ "$flame" = 1 ]; then
  # inferno: perf's stacks folded and drawn as a flame graph (crates.io).
  inferno_version=0.12.8
  inferno="$target/tools/inferno-$inferno_version/bin"
  if [ ! -x "$inferno/inferno-flamegraph" ]; then
    cargo install --quiet --locked --root "$target/tools/inferno-$inferno_version" inferno --version "$inferno_version" \
      || { echo "profile: could not install inferno $inferno_version" >&2; exit 1; }
  fi
  PERF_ARGS="${PERF_ARGS:--F 999 --call-graph dwarf,32768}"
fi
# HelloRequest{name: "world"} as one gRPC frame: not compressed, length 7.
printf '\x00\x00\x00\x00\x07\x0a\x05world' >"$out/frame.bin"

case "${LOAD:-unary}" in
  unary)
    load() {
      taskset -c 1 h2load -c 50 -m 4 -t 1 -D "$1" -d "$out/frame.bin" \
        -H "content-type: application/grpc" -H "te: trailers" "http://127.0.0.1:$port/helloworld.Greeter/SayHello"
    }
    ;;
  bidi)
    loadgen="$(compgen -G "${BENCH_BIN_DIR:-$HOME/.cache/greet/bench-bin}/*/loadgen" | head -n 1 || true)"
    [ -x "$loadgen" ] || { echo "profile: no loadgen under ${BENCH_BIN_DIR:-$HOME/.cache/greet/bench-bin} (bench/run.py builds it)" >&2; exit 1; }
    # Prints "finished in Ns, R msg/s" like h2load's line, from loadgen's JSON.
    load() {
      taskset -c 1 "$loadgen" bidi -addr "127.0.0.1:$port" -streams 1 -conns 1 -window 64 -warmup 0s -duration "$1s" |
        python3 -c 'import json, sys; r = json.loads(sys.stdin.read().split()[-1]); print("finished in %.2fs, %.2f msg/s" % (r["seconds"], r["per_second"]))'
    }
    ;;
  *) echo "profile: LOAD is unary or bidi, not $LOAD" >&2; exit 2 ;;
esac

taskset -c 0 "$@" >"$out/$name.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "profile: the server exited; its log: $out/$name.log" >&2; exit 1; }
  sleep 0.1
done
load 2 >/dev/null
# shellcheck disable=SC2086 # PERF_ARGS is a list of arguments
perf record ${PERF_ARGS:--F 2999} -p "$pid" -o "$out/$name.data" -- sleep 6 2>/dev/null &
recorder=$!
rate="$(load 6 | grep -E '^finished in')"
wait "$recorder" || true
{
  echo "$rate"
  perf report -i "$out/$name.data" --no-children --sort dso --stdio 2>/dev/null | grep '%'
  perf report -i "$out/$name.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep '%'
} >"$out/$name.txt"
echo "profile: $out/$name.txt ($rate)"
if [ "$flame" = 1 ]; then
  perf script -i "$out/$name.data" 2>/dev/null | "$inferno/inferno-collapse-perf" >"$out/$name.folded"
  "$inferno/inferno-flamegraph" --title "$name: $rate" --width 1600 <"$out/$name.folded" >"$out/$name.svg"
  echo "profile: $out/$name.svg"
fi
