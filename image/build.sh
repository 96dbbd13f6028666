#!/usr/bin/env bash
# Builds the OCI images greet-server:VERSION and greet-client:VERSION (VERSION
# from Cargo.toml) from the release binaries, with no base image and no
# registry: each is `FROM scratch` plus two tars ADDed with numeric owners,
#   base.tar  the shared libraries `ldd` lists for the stripped binaries (the
#             loader, libc, libm, libgcc_s, libssl, libcrypto; libstdc++ is
#             linked statically, build.rs),
#             Debian's CA bundle, /etc/passwd and /etc/group naming the one
#             user greet (65532), /data owned by it, an empty /tmp;
#   BIN.tar   /usr/local/bin/BIN, stripped;
# and image/{server,client}.Containerfile on top (user 65532, VOLUME /data,
# `server --data-dir /data`). buildah builds them with --timestamp 0 into the
# local containers storage (podman sees them); skopeo exports each as a
# docker-archive that `kind load image-archive`, `podman load` or
# `skopeo copy docker-archive:... docker://REGISTRY/...` take.
#
#   image/build.sh BIN_DIR OUT_DIR    # `make image`: BIN_DIR=$CARGO_TARGET_DIR/release
#
# OUT_DIR gets the build context and greet-{server,client}-VERSION.docker.tar.
# podman/buildah/skopeo/runc come from Debian (scripts/ensure-deps.sh
# podman buildah skopeo runc); CONTAINERS_CONF defaults to image/containers.conf.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/image/containers.conf}"

[ "$#" -eq 2 ] || { echo "usage: $0 BIN_DIR OUT_DIR" >&2; exit 2; }
bin_dir="$1" out="$2"
for b in server client; do
  [ -x "$bin_dir/$b" ] || { echo "image: $bin_dir/$b not found; run make build" >&2; exit 1; }
done
for tool in buildah skopeo strip ldd; do
  command -v "$tool" >/dev/null || { echo "image: $tool not installed; run scripts/ensure-deps.sh podman buildah skopeo runc" >&2; exit 1; }
done
version="$(awk -F'"' '/^\[package\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {print $2; exit}' "$repo/Cargo.toml")"
[ -n "$version" ] || { echo "image: no version in $repo/Cargo.toml [package]" >&2; exit 1; }

uid=65532
ctx="$out/context"
rm -rf "$ctx"
mkdir -p "$ctx/base" "$ctx/server/usr/local/bin" "$ctx/client/usr/local/bin"

for b in server client; do
  strip --strip-all -o "$ctx/$b/usr/local/bin/$b" "$bin_dir/$b"
done

# Every library the loader maps for either binary, at the path ldd names
# (the loader at its PT_INTERP path), copied as files, not links.
libs="$(for b in server client; do ldd "$ctx/$b/usr/local/bin/$b"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)"
for lib in $libs; do
  mkdir -p "$ctx/base$(dirname "$lib")"
  cp -L "$lib" "$ctx/base$lib"
done
mkdir -p "$ctx/base/etc/ssl/certs" "$ctx/base/data" "$ctx/base/tmp"
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/base/etc/ssl/certs/"
printf 'root:x:0:0:root:/nonexistent:/sbin/nologin\ngreet:x:%s:%s:greet:/data:/sbin/nologin\n' "$uid" "$uid" >"$ctx/base/etc/passwd"
printf 'root:x:0:\ngreet:x:%s:\n' "$uid" >"$ctx/base/etc/group"
chmod -R u=rwX,go=rX "$ctx/base" "$ctx/server" "$ctx/client"
chown -R 0:0 "$ctx/base" "$ctx/server" "$ctx/client"
chown "$uid:$uid" "$ctx/base/data"
chmod 0750 "$ctx/base/data"
chmod 1777 "$ctx/base/tmp"

# Reproducible tars: sorted, one mtime, numeric owners (kept by ADD).
for part in base server client; do
  tar --create --file "$ctx/$part.tar" --sort=name --mtime=@0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$ctx/$part" .
done
cp "$repo/image/server.Containerfile" "$repo/image/client.Containerfile" "$ctx/"

for b in server client; do
  name="greet-$b:$version"
  previous="$(podman image inspect --format '{{.Id}}' "localhost/$name" 2>/dev/null || true)"
  buildah build --quiet --timestamp 0 --layers=false -f "$ctx/$b.Containerfile" -t "$name" "$ctx" >/dev/null
  archive="$out/greet-$b-$version.docker.tar"
  rm -f "$archive"
  # skopeo logs an info line about the storage driver on every run: shown only on failure.
  if ! err="$(skopeo copy --quiet "containers-storage:localhost/$name" "docker-archive:$archive:$name" 2>&1)"; then
    echo "$err" >&2
    exit 1
  fi
  size="$(podman image inspect --format '{{.Size}}' "localhost/$name")"
  # The image this one replaced, unless a container still uses it.
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "localhost/$name")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "image: $name ($size bytes uncompressed) -> $archive"
done
