"""Builds the Go tools the tests run against our server, unmodified, from pinned
versions through the Go module proxy (`go install <package>@<version>`), into a
cache directory named by a hash of the pins and the Go version (the cache of
scripts/gopeers.py), and prints that directory: grpcurl (reflection) and
grpc-health-probe (health).

    python3 scripts/gotools.py [--bin-root DIR]

The cache defaults to $CARGO_TARGET_DIR/go-tools (else ~/.cache/greet/go-tools).
Python standard library only."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gopeers  # noqa: E402

# Binary name -> package@version. Versions the Go module proxy lists
# (`go list -m -versions <module>`) that build with Go 1.26.
TOOLS = {
    "grpcurl": "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4",
    "grpc-health-probe": "github.com/grpc-ecosystem/grpc-health-probe@v0.4.62",
}


def ensure_tools(bin_root: Path) -> Path:
    """The directory holding every tool in TOOLS, building them if the cache misses."""
    go = gopeers.find_go()
    h = hashlib.sha256()
    for name, pin in sorted(TOOLS.items()):
        h.update(f"{name}={pin}\n".encode())
    h.update(gopeers.run([go, "version"], Path.cwd(), gopeers.go_env(), 60).encode())
    key = h.hexdigest()[:16]

    def build(tmp: Path) -> None:
        for pin in TOOLS.values():
            gopeers.log(f"go install {pin}")
            gopeers.go_install(go, pin, tmp, timeout=600)

    return gopeers.cached_build(bin_root, key, list(TOOLS), build)


def main() -> int:
    return gopeers.cli(__doc__.splitlines()[0], "go-tools", ensure_tools)


if __name__ == "__main__":
    sys.exit(main())
