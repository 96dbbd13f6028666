#!/usr/bin/env bash
# Builds what the nemesis harness's clients run on, and prints its directory:
# a Python virtual environment of Debian's python3 with grpcio, grpcio-tools
# and protobuf pinned from PyPI, and chat_pb2.py / chat_pb2_grpc.py generated
# by grpcio-tools from protos/chat.proto into <dir>/gen. The directory is
# $CARGO_TARGET_DIR/nemesis/<key> (else ~/.cache/greet/target/nemesis/<key>),
# the key a hash of the pins, the proto and the Python version, so a changed
# proto or pin rebuilds it and a second run reuses it; older keys are removed.
# Nothing is generated into the repo. Needs python3-venv (scripts/ensure-deps.sh).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)
pins="grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2"
proto="$repo/protos/chat.proto"

root="${CARGO_TARGET_DIR:-$HOME/.cache/greet/target}/nemesis"
key=$({ echo "$pins"; "$python" --version; cat "$proto"; } | sha256sum | cut -c1-16)
out="$root/$key"
if [ -f "$out/STAMP" ] && [ -f "$out/gen/chat_pb2_grpc.py" ] && [ -x "$out/bin/python" ]; then
  echo "$out"
  exit 0
fi

echo "nemesis build: installing $pins into $out" >&2
mkdir -p "$root"
# The venv is built in place at its final path (a venv records its own path), then stamped.
rm -rf "$out"
"$python" -m venv "$out" >&2
# shellcheck disable=SC2086 # the pins are words
"$out/bin/python" -m pip install --quiet --disable-pip-version-check $pins >&2
mkdir -p "$out/gen"
"$out/bin/python" -m grpc_tools.protoc -I"$(dirname "$proto")" \
  --python_out="$out/gen" --grpc_python_out="$out/gen" "$(basename "$proto")" >&2
date -u +"built %Y-%m-%dT%H:%M:%SZ" >"$out/STAMP"
for old in "$root"/*; do
  [ "$old" = "$out" ] || [ ! -d "$old" ] || rm -rf "$old"
done
echo "$out"
