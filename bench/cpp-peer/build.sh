#!/usr/bin/env bash
# Builds bench/run.py's `cpp` peer (cpp_peer.cc) and prints the binary's path
# as its last line of output.
#
# What it builds: grpc++ and the gRPC C core under it, from the source that
# grpcio-sys bundles in cargo's registry (the very core our server links; the
# version is read from Cargo.lock, and `cargo fetch` brings the crate if it is
# not there; nothing is copied into the repo), and the peer on top, with CMake
# (CMakeLists.txt here: what is built and with which options) and Ninja when
# installed. How long: 7-15 minutes on 2 cores the first time (docs/benchmarks.md),
# seconds afterwards.
#
# Where: $CARGO_TARGET_DIR/cpp-peer/<grpcio-sys version>-<hash of CMakeLists.txt>,
# outside the clone like every other build; a new grpcio-sys or a change to
# the recipe gets a fresh directory (older ones are left for `rm -r`), while a
# change to cpp_peer.cc recompiles only the peer.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/greet/target}"

version="$(awk '/^name = "grpcio-sys"$/ { getline; gsub(/^version = "|"$/, ""); print; exit }' "$repo/Cargo.lock")"
if [ -z "$version" ]; then
  echo "cpp-peer/build.sh: no grpcio-sys in $repo/Cargo.lock" >&2
  exit 1
fi
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
find_source() { compgen -G "$registry/*/grpcio-sys-$version/grpc/CMakeLists.txt" | head -n 1 | xargs -r dirname; }
source_dir="$(find_source || true)"
if [ -z "$source_dir" ]; then
  echo "cpp-peer/build.sh: fetching grpcio-sys $version into cargo's registry (cargo fetch)" >&2
  cargo fetch --locked --manifest-path "$repo/Cargo.toml" >&2
  source_dir="$(find_source || true)"
  [ -n "$source_dir" ] || { echo "cpp-peer/build.sh: grpcio-sys $version has no grpc/ source under $registry" >&2; exit 1; }
fi

recipe="$(sha256sum "$here/CMakeLists.txt" | cut -c1-12)"
build_dir="$target/cpp-peer/grpcio-sys-$version-$recipe"
generator="Unix Makefiles"
command -v ninja >/dev/null 2>&1 && generator="Ninja"
# CMake ties a build directory to one source directory, and a clone's path
# changes from one checkout to the next: the peer's two files are copied into
# the build directory (only when they changed, so an unchanged peer is not
# recompiled) and CMake configures from that copy.
src="$build_dir/src"
mkdir -p "$src"
for f in CMakeLists.txt cpp_peer.cc; do
  cmp -s "$here/$f" "$src/$f" || cp "$here/$f" "$src/$f"
done
# A cache made for another source or build directory (a build directory copied
# or moved, or configured from a clone) is thrown away and configured afresh.
cache="$build_dir/CMakeCache.txt"
if [ -f "$cache" ] && ! { grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$src" "$cache" &&
  grep -qxF "CMAKE_CACHEFILE_DIR:INTERNAL=$build_dir" "$cache"; }; then
  echo "cpp-peer/build.sh: $cache was made for another directory; configuring afresh" >&2
  rm -rf "$cache" "$build_dir/CMakeFiles"
fi
if [ ! -f "$cache" ]; then
  echo "cpp-peer/build.sh: configuring grpc++ $version from $source_dir into $build_dir ($generator)" >&2
  cmake -G "$generator" -S "$src" -B "$build_dir" -DGRPC_SOURCE_DIR="$source_dir" >"$build_dir/configure.log" 2>&1 ||
    { tail -n 30 "$build_dir/configure.log" >&2; exit 1; }
fi
if [ ! -x "$build_dir/cpp-peer" ]; then
  echo "cpp-peer/build.sh: building grpc++ and the peer (the first time takes minutes; log in $build_dir/build.log)" >&2
fi
started=$(date +%s)
cmake --build "$build_dir" --target cpp-peer -j "$(nproc)" >"$build_dir/build.log" 2>&1 ||
  { tail -n 30 "$build_dir/build.log" >&2; exit 1; }
took=$(($(date +%s) - started))
if [ "$took" -gt 60 ]; then
  echo "$took" >"$build_dir/build-seconds"
  echo "cpp-peer/build.sh: built in ${took}s (recorded in $build_dir/build-seconds)" >&2
fi
echo "$build_dir/cpp-peer"
