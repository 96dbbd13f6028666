"""Builds etcd, pinned, from its Go modules through the Go module proxy into a
cache directory named by a hash of the pin and the Go version (the cache of
scripts/gopeers.py), and prints the directory holding `etcd`.

    python3 scripts/etcd.py [--bin-root DIR]

etcd's own main module has replace directives, so `go install ...@version`
refuses it; instead a throwaway wrapper module in a temp dir requires the
pinned `go.etcd.io/etcd/server/v3` and calls its `etcdmain.Main`, the same
entry point etcd's binary runs. Nothing of etcd enters the repo. The chat's
etcd broker tests and the nemesis harness (nemesis/) run it. The cache
defaults to $CARGO_TARGET_DIR/etcd (else ~/.cache/greet/target/etcd); a cold
build takes a few minutes on 2 cores. Python standard library only."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gopeers  # noqa: E402

# The etcd server release whose modules the wrapper requires (v3.6.x builds with Go 1.26).
MODULE = "go.etcd.io/etcd/server/v3"
VERSION = "v3.6.16"

GO_MOD = f"""module etcdwrap

go 1.26.0

require {MODULE} {VERSION}
"""

MAIN_GO = """// etcd, as its own binary runs it: etcdmain.Main with the command line.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def ensure_etcd(bin_root: Path) -> Path:
    """The directory holding `etcd`, building it if the cache misses."""
    go = gopeers.find_go()
    h = hashlib.sha256()
    h.update(f"{MODULE}@{VERSION}\n{GO_MOD}{MAIN_GO}".encode())
    h.update(gopeers.run([go, "version"], Path.cwd(), gopeers.go_env(), 60).encode())
    key = h.hexdigest()[:16]

    def build(out: Path) -> None:
        module = Path(tempfile.mkdtemp(prefix="etcdwrap-"))
        try:
            (module / "go.mod").write_text(GO_MOD)
            (module / "main.go").write_text(MAIN_GO)
            env = dict(gopeers.go_env(), GOFLAGS="-mod=mod")
            gopeers.log(f"go mod tidy (wrapper of {MODULE}@{VERSION})")
            gopeers.run([go, "mod", "tidy"], module, env, 600)
            gopeers.log("go build etcd (a few minutes cold)")
            gopeers.run([go, "build", "-buildvcs=false", "-o", out / "etcd", "."], module, env, 900)
        finally:
            shutil.rmtree(module, ignore_errors=True)

    return gopeers.cached_build(bin_root, key, ["etcd"], build)


def main() -> int:
    return gopeers.cli(__doc__.splitlines()[0], "etcd", ensure_etcd)


if __name__ == "__main__":
    sys.exit(main())
