"""Builds the grpc-go programs that the interop matrix (tests/interop/run_matrix.py)
and the benchmarks (bench/run.py) run against ours, the same way for both: from a
Go module of ours that pins them, into a cache directory named by a hash of
everything they are built from, so a changed pin, proto or source rebuilds them
and nothing else does. Also the two process helpers both harnesses need: a free
loopback port and a bounded stop. Python standard library only."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


class GoBuildError(Exception):
    """A Go peer could not be built (no go, no protoc, a failed command)."""


def log(msg: str) -> None:
    print(f"go peers: {msg}", file=sys.stderr, flush=True)


def find_go() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise GoBuildError("go not found on PATH nor at /usr/local/go/bin/go (Go 1.26 is needed)")
    return go


def find_protoc() -> str:
    protoc = shutil.which("protoc")
    if protoc is None:
        raise GoBuildError("protoc not found: apt-get install -y protobuf-compiler")
    return protoc


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never fetch another toolchain: our go.mod files say go 1.26.0, the machine has 1.26.x.
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def run(argv: list, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GoBuildError(f"{' '.join(argv)}: timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise GoBuildError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    return proc.stdout


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL; always reaps."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def go_build(go: str, module_dir: Path, out: Path, pkg: str) -> None:
    # -buildvcs=false: our packages sit in the project's git tree, whose state is not theirs to stamp.
    run([go, "build", "-buildvcs=false", "-o", out, pkg], module_dir, go_env())


def go_install(go: str, pin: str, out_dir: Path, timeout: float = 900) -> None:
    """`go install <package>@<version>` into out_dir: a tool built unmodified from its own
    module as published, its go.mod resolved through the module proxy."""
    env = dict(go_env(), GOBIN=str(out_dir), GOFLAGS="-mod=mod")
    run([go, "install", pin], out_dir, env, timeout)


def source_key(repo: Path, sources: list[Path], go: str, protoc: str, extra: str = "") -> str:
    """Hash of the files the binaries are built from, the toolchain versions and `extra`."""
    h = hashlib.sha256()
    for path in sources:
        h.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(extra.encode())
    h.update(run([go, "version"], repo, go_env(), 60).encode())
    h.update(run([protoc, "--version"], repo, None, 60).encode())
    return h.hexdigest()[:16]


def generate_greetpb(protoc: str, plugin_dir: Path, proto: Path, module_dir: Path, module_path: str) -> None:
    """Generates <module_dir>/internal/greetpb from `proto` (git-ignored, never committed).
    The M option maps the proto to our package, so its go_package needs no change."""
    shutil.rmtree(module_dir / "internal" / "greetpb", ignore_errors=True)
    mapping = f"M{proto.name}={module_path}/internal/greetpb"
    run([protoc, f"-I{proto.parent}",
         f"--plugin=protoc-gen-go={plugin_dir / 'protoc-gen-go'}",
         f"--plugin=protoc-gen-go-grpc={plugin_dir / 'protoc-gen-go-grpc'}",
         f"--go_out={module_dir}", f"--go_opt=module={module_path}", f"--go_opt={mapping}",
         f"--go-grpc_out={module_dir}", f"--go-grpc_opt=module={module_path}", f"--go-grpc_opt={mapping}",
         proto.name], module_dir, go_env(), 120)


def cached_build(bin_root: Path, key: str, wanted: list[str], build: Callable[[Path], None]) -> Path:
    """bin_root/key when it holds every wanted binary; otherwise runs build(tmp) into a
    fresh directory, moves it there and removes older keys (stale builds)."""
    out = bin_root / key
    if (out / "STAMP").is_file() and all((out / name).is_file() for name in wanted):
        log(f"cached in {out}")
        return out
    started = time.monotonic()
    log(f"building into {out} (about 80 s cold on 2 cores, seconds with a warm Go build cache)")
    bin_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=bin_root))
    try:
        build(tmp)
        (tmp / "STAMP").write_text(f"built in {time.monotonic() - started:.0f}s\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in bin_root.iterdir():
        if old != out and old.is_dir() and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    log(f"built in {time.monotonic() - started:.0f}s")
    return out


def cache_root(name: str) -> Path:
    """Where a cached Go build named `name` lives: under the cargo target directory,
    outside the clone."""
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "greet" / "target")
    return Path(target) / name


def cli(description: str, cache_name: str, ensure: Callable[[Path], Path]) -> int:
    """The command line every Go-build script shares: `--bin-root DIR` (default
    cache_root(cache_name)); prints the directory `ensure` returns, or one error line
    and exit status 1."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bin-root", type=Path, default=cache_root(cache_name))
    args = parser.parse_args()
    try:
        print(ensure(args.bin_root))
    except GoBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
