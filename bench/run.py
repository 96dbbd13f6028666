#!/usr/bin/env python3
"""Side-by-side benchmark: our server against grpc-go and tonic, one machine, one run.

`make bench` runs this. It installs what is missing (h2load from nghttp2-client,
protoc from protobuf-compiler; it says so), builds our release server, builds the
Go peers from pinned versions and the tonic peer from its own lock file, runs every
measurement rotating ours / grpc-go / tonic, writes <out-dir>/<UTC time>.json
(every round, raw), <out-dir>/latest.md and <out-dir>/latency.svg, and prints the
table. <out-dir> is $CARGO_TARGET_DIR/bench unless --out-dir says otherwise;
--publish also copies the three files into bench/results/, the snapshot the
README quotes (replacing the JSON there).

Layout:
  bench/run.py            this runner (Python 3.11 stdlib only)
  bench/go/go.mod, go.sum pin grpc-go, its examples module (the official greeter_server)
                          and the protoc plugins; GHZ_VERSION below pins ghz
  bench/costs.py          load-independent costs of our server (callgrind instructions,
                          socket writes, RSS) for comparing builds and settings
  bench/go/loadgen        our Go load generator for the streaming measurements
  bench/go/internal/greetpb  generated from protos/greet.proto at build time (git-ignored)
  bench/tonic-peer/       the tonic server (its own crate, workspace and Cargo.lock, built
                          into $CARGO_TARGET_DIR/tonic-peer; the product never depends on it)
  bench/cpp-peer/         the C++ server on the C core we link (grpc++ from grpcio-sys's source;
                          build.sh builds it into $CARGO_TARGET_DIR/cpp-peer)
  bench/results/          the published snapshot: latest.md, latency.svg and their JSON

Placement: every server runs on core 0 (`taskset -c 0`; ours with --threads 1,
grpc-go with GOMAXPROCS=1, tonic's multi-threaded runtime then has one worker),
every load generator on core 1. Peers:
  helloworld.Greeter/SayHello       grpc-go examples/helloworld/greeter_server, unmodified
  greet_service.GreetService        the grpc-go GreetService server of tests/interop
                                    (built by tests/interop/run_matrix.py --build-only,
                                    or --go-greet-server PATH)
  both, on tonic                    bench/tonic-peer (tonic + prost, tokio multi-threaded)
  both, on "cpp"                    bench/cpp-peer: gRPC's C++ async generic API on the same C core
                                    (1.56.2) as ours, one completion-queue thread: the floor of the
                                    stack this project chose; issue 22's goals are ratios against it
  both, on "baseline"               another build of our server (--baseline-server PATH, e.g.
                                    an older commit), run exactly like ours: a change's cost
                                    measured side by side in one run

Measurements (each one per round and per server, a fresh server each time):
  unary_max        h2load, 50 connections x 4 streams, posts a prebuilt gRPC frame;
                   req/s and server CPU per call (utime+stime from /proc/<pid>/stat)
  unary_greet_max  the same on GreetService/SayHello: neither server logs per call there
                   (the official greeter_server logs every request, to a file here)
  unary_fixed      ghz at a fixed rate; p50/p90/p99 and server CPU per call
  bidi_1, bidi_100 loadgen: echoed messages/s on 1 stream, on 100 streams (10 connections)
  server_stream    loadgen: SayHelloServerStreaming with 100,000 names, messages/s
  memory           server VmRSS idle, and with 1,000 idle bidi streams over 10 connections
  server_stream_64k, server_stream_1m, bidi_64k, bidi_1m
                   the same calls with 64 KiB and 1 MiB names (answers 6 bytes longer): MB/s of
                   answers and server CPU per MB (ours with --max-name-bytes raised to allow them)
  unary_max_all, bidi_100_all
                   all cores: every server on both cores (ours and cpp with 2 completion-queue
                   threads, grpc-go GOMAXPROCS=2, tonic with 2 workers) and the load generator on
                   the same two cores, sharing them with the server

Tracing cost (ours only, after the rounds; --no-tracing-cost skips it): unary_greet_max
on our server with tracing off, on at 100% sampling and at 1%, exporting to
tests/otlp/receiver (an OTLP/HTTP endpoint, built with Go); server CPU per call and
the ratios to tracing off, rotating the three settings over the rounds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts"))
import gopeers  # noqa: E402  (scripts/gopeers.py, shared with tests/interop/run_matrix.py)
GO_DIR = HERE / "go"
RESULTS = HERE / "results"
TONIC_PEER = HERE / "tonic-peer"
# Every server implementation, in the order of the table's columns.
IMPLS = ("ours", "grpc-go", "tonic", "cpp", "baseline")
CPP_PEER = HERE / "cpp-peer"
PROTOS = REPO / "protos"
GREET_PROTO = PROTOS / "greet.proto"
HELLOWORLD_PROTO = PROTOS / "helloworld.proto"
GO_MODULE = "greet.local/bench"

GHZ_VERSION = "v0.121.0"
GHZ_PKG = "github.com/bojand/ghz/cmd/ghz"
GREETER_SERVER_PKG = "google.golang.org/grpc/examples/helloworld/greeter_server"
PROTOC_PLUGINS = {
    "protoc-gen-go": "google.golang.org/protobuf/cmd/protoc-gen-go",
    "protoc-gen-go-grpc": "google.golang.org/grpc/cmd/protoc-gen-go-grpc",
}

SERVER_CORE = "0"
CLIENT_CORE = "1"
# The all-cores rows: servers and load generators both on these.
ALL_CORES = "0,1"

CLK_TCK = os.sysconf("SC_CLK_TCK")

# gRPC frames h2load posts: 1 byte "not compressed", 4 bytes big-endian length, message.
HELLO_NAME = b"world"
HELLOWORLD_FRAME = b"\x00" + (2 + len(HELLO_NAME)).to_bytes(4, "big") + b"\x0a" + bytes([len(HELLO_NAME)]) + HELLO_NAME
NOPARAM_FRAME = b"\x00\x00\x00\x00\x00"
# What a correct answer's DATA is: 5-byte prefix + HelloReply/HelloResponse{message}.
HELLOWORLD_REPLY_BYTES = 5 + 2 + len(b"Hello world")
GREET_REPLY_BYTES = 5 + 2 + len(b"Hello")


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(argv: list, cwd: Path = REPO, env: dict | None = None, timeout: float = 1800) -> str:
    try:
        return gopeers.run(argv, cwd, env, timeout)
    except gopeers.GoBuildError as e:
        raise BenchError(str(e)) from None


# --------------------------------------------------------------------------- set-up


def ensure_apt(packages: dict[str, str]) -> None:
    """packages: command -> Debian package that provides it."""
    missing = sorted({pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None})
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get (needed: {', '.join(c for c in packages if shutil.which(c) is None)})")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(sudo + ["apt-get", "update", "-qq"], env=env)
    run(sudo + ["apt-get", "install", "-y", "-qq", *missing], env=env)


def cargo_target() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "greet" / "target"))


def build_ours() -> Path:
    env = dict(os.environ, CARGO_TARGET_DIR=str(cargo_target()))
    # Only the server: a half-finished other binary in the tree must not stop a benchmark.
    log(f"building our server: cargo build --release --bin server (CARGO_TARGET_DIR={cargo_target()})")
    started = time.monotonic()
    run(["cargo", "build", "--release", "--bin", "server"], env=env, timeout=3600)
    log(f"our server built in {time.monotonic() - started:.0f}s")
    server = cargo_target() / "release" / "server"
    if not os.access(server, os.X_OK):
        raise BenchError(f"no server binary at {server}")
    return server


def build_tonic_peer() -> Path:
    """The tonic server, from its own crate and Cargo.lock into $CARGO_TARGET_DIR/tonic-peer:
    cargo rebuilds it only when its sources or lock change (a no-op build takes a second)."""
    target = cargo_target() / "tonic-peer"
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    log(f"building the tonic peer: cargo build --release --locked (bench/tonic-peer, CARGO_TARGET_DIR={target}; "
        "about 2 CPU-minutes the first time)")
    started = time.monotonic()
    run(["cargo", "build", "--release", "--locked", "--manifest-path", TONIC_PEER / "Cargo.toml"], env=env,
        timeout=3600)
    log(f"tonic peer ready in {time.monotonic() - started:.0f}s")
    peer = target / "release" / "tonic-peer"
    if not os.access(peer, os.X_OK):
        raise BenchError(f"no tonic peer binary at {peer}")
    return peer


def build_cpp_peer() -> Path:
    """The C++ peer: bench/cpp-peer/build.sh builds grpc++ from grpcio-sys's bundled source
    (minutes, the first time) into $CARGO_TARGET_DIR/cpp-peer and prints the binary's path."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(cargo_target()))
    log("building the cpp peer: bench/cpp-peer/build.sh (grpc++ from grpcio-sys's source; 7-15 minutes on 2 "
        "cores the first time, cached afterwards)")
    started = time.monotonic()
    try:
        proc = subprocess.run(["bash", str(CPP_PEER / "build.sh")], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, timeout=7200)
    except subprocess.TimeoutExpired:
        raise BenchError("bench/cpp-peer/build.sh timed out after 2 hours") from None
    lines = proc.stdout.strip().splitlines()
    peer = Path(lines[-1]) if proc.returncode == 0 and lines else None
    if peer is None or not os.access(peer, os.X_OK):
        raise BenchError(f"bench/cpp-peer/build.sh failed ({proc.returncode}); its error is above")
    log(f"cpp peer ready in {time.monotonic() - started:.0f}s: {peer}")
    return peer


def grpcio_sys_version() -> str:
    m = re.search(r'name = "grpcio-sys"\nversion = "([^"]+)"', (REPO / "Cargo.lock").read_text())
    return m[1] if m else "?"


def tonic_version() -> str:
    lock = (TONIC_PEER / "Cargo.lock").read_text()
    m = re.search(r'name = "tonic"\nversion = "([^"]+)"', lock)
    return m[1] if m else "?"


def build_go_peers(bin_root: Path) -> Path:
    """ghz, grpc-go's greeter_server and our loadgen, cached under bin_root/<hash of the pins>."""
    go, protoc = gopeers.find_go(), gopeers.find_protoc()
    sources = [GO_DIR / "go.mod", GO_DIR / "go.sum", GREET_PROTO, *sorted((GO_DIR / "loadgen").rglob("*.go"))]
    key = gopeers.source_key(REPO, sources, go, protoc, extra=GHZ_VERSION)

    def build(tmp: Path) -> None:
        for name, pkg in PROTOC_PLUGINS.items():
            gopeers.go_build(go, GO_DIR, tmp / name, pkg)
        gopeers.generate_greetpb(protoc, tmp, GREET_PROTO, GO_DIR, GO_MODULE)
        gopeers.go_build(go, GO_DIR, tmp / "loadgen", "./loadgen")
        gopeers.go_build(go, GO_DIR, tmp / "greeter_server", GREETER_SERVER_PKG)
        # ghz is built from its own module, as published (go install honours its go.mod).
        gopeers.go_install(go, f"{GHZ_PKG}@{GHZ_VERSION}", tmp)

    return gopeers.cached_build(bin_root, key, ["ghz", "greeter_server", "loadgen"], build)


def build_go_greet_server() -> Path:
    matrix = REPO / "tests" / "interop" / "run_matrix.py"
    if not matrix.is_file():
        raise BenchError(f"{matrix} not found: pass --go-greet-server PATH (a grpc-go GreetService server "
                         "taking -addr and -interval)")
    log("go GreetService server: tests/interop/run_matrix.py --build-only")
    out = run([sys.executable, matrix, "--build-only"], timeout=1800).strip().splitlines()
    server = Path(out[-1]) / "greet_server" if out else None
    if server is None or not os.access(server, os.X_OK):
        raise BenchError("run_matrix.py --build-only did not give a directory with greet_server; "
                         "pass --go-greet-server PATH")
    return server


# --------------------------------------------------------------------------- processes


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (everything resident), or RssAnon (the process's own heap and stacks,
    without the code and libraries mapped from files, which other processes share)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


class Server:
    """One server process pinned to `cores` (SERVER_CORE, or ALL_CORES for the all-cores rows)."""

    def __init__(self, impl: str, argv: list, port: int, env: dict, log_path: Path, cores: str = SERVER_CORE):
        self.impl, self.argv, self.port, self.env, self.log_path = impl, argv, port, env, log_path
        self.cores = cores
        # Load generators run beside a server on one core, and with it on all cores.
        self.client_cores = CLIENT_CORE if cores == SERVER_CORE else cores
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["taskset", "-c", self.cores, *map(str, self.argv)], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=self.log_file)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.impl} server exited ({self.proc.returncode}); log in {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                time.sleep(0.3)  # let it settle after the probe connection
                return self
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"{self.impl} server did not accept on port {self.port}; log in {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kib(self, field: str = "VmRSS") -> int:
        return proc_rss_kib(self.pid, field)

    def __exit__(self, *exc) -> None:
        if self.proc:
            gopeers.stop_process(self.proc, grace=5)
        self.log_file.close()


class Peers:
    def __init__(self, args: argparse.Namespace, ours: Path, go_bin: Path, go_greet: Path | None,
                 tonic: Path | None, cpp: Path | None, log_dir: Path):
        self.ours, self.go_bin, self.go_greet, self.tonic, self.log_dir = ours, go_bin, go_greet, tonic, log_dir
        self.cpp = cpp
        self.args = args

    def server(self, impl: str, service: str, cores: str = SERVER_CORE, max_name_bytes: int = 0) -> Server:
        """A fresh server: impl one of IMPLS; service 'helloworld' or 'greet'; on `cores`, with
        as many threads (completion queues, GOMAXPROCS, tokio workers) as cores. max_name_bytes
        raises our server's name limit (1 KiB) for the large-message rows; the others have none."""
        port = gopeers.free_port()
        log_path = self.log_dir / f"{impl}-{service}.log"
        threads = str(len(cores.split(",")))
        if impl in ("ours", "baseline"):
            env = dict(os.environ, RUST_LOG="warn")
            binary = self.ours if impl == "ours" else self.args.baseline_server
            argv = [binary, "--addr", f"127.0.0.1:{port}", "--stream-interval", "0", "--threads", threads]
            if max_name_bytes:
                argv += ["--max-name-bytes", max_name_bytes]
        elif impl == "tonic":
            # One binary serves both services, with no per-call log; its runtime has one
            # worker per core of its affinity.
            env = dict(os.environ)
            argv = [self.tonic, "--addr", f"127.0.0.1:{port}"]
        elif impl == "cpp":
            env = dict(os.environ)
            argv = [self.cpp, "--addr", f"127.0.0.1:{port}", "--threads", threads]
        else:
            env = dict(os.environ, GOMAXPROCS=threads)
            if service == "helloworld":
                # The official program: it listens on all interfaces and logs every request.
                argv = [self.go_bin / "greeter_server", "-port", port]
            else:
                argv = [self.go_greet, "-addr", f"127.0.0.1:{port}", "-interval", "0"]
        return Server(impl, argv, port, env, log_path, cores)

    def tool(self, name: str) -> Path:
        return self.go_bin / name


def run_client(argv: list, timeout: float, stdout=None, cores: str = CLIENT_CORE) -> tuple[int, float, float]:
    """Runs a load generator on `cores`; returns (exit code, its CPU seconds, wall seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", cores, *map(str, argv)], stdin=subprocess.DEVNULL,
                            stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE if stdout is None else stdout)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime, time.monotonic() - started


# --------------------------------------------------------------------------- measurements


def check_served_by(server: Server, path: str, data: Path) -> None:
    """Ours answers every call with `x-served-by: HOST:PORT` (its instance id, by default the
    bound address), and cpp must answer the same: without it the floor would save the header's
    encoding (about 150 ns a call) and its 29 bytes. One call with curl, its headers read."""
    argv = ["curl", "-s", "--max-time", "10", "--http2-prior-knowledge", "-H", "content-type: application/grpc",
            "-H", "te: trailers", "--data-binary", f"@{data}", "-D", "-", "-o", "/dev/null",
            f"http://127.0.0.1:{server.port}{path}"]
    try:
        headers = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{server.impl}: cannot read its answer's headers with curl: {e}") from None
    want = f"x-served-by: 127.0.0.1:{server.port}"
    if want not in headers.splitlines():
        raise BenchError(f"{server.impl}: its answer on {path} lacks `{want}`; headers:\n{headers}")


def h2load(peers: Peers, server: Server, path: str, frame: bytes, reply_bytes: int, seconds: float,
           tmp: Path) -> dict:
    data = tmp / f"frame-{len(frame)}.bin"
    data.write_bytes(frame)
    if server.impl in ("ours", "cpp"):
        check_served_by(server, path, data)
    out_path = tmp / "h2load.out"
    # One h2load thread, on all cores too: at these rates it stays under half a core, and with two
    # threads its count of 2xx answers can include one that ended after the stop.
    argv = ["h2load", "-c", "50", "-m", "4", "-t", "1", "-D", max(1, round(seconds)), "-d", data,
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{server.port}{path}"]
    cpu0 = server.cpu()
    with open(out_path, "w") as out:
        code, gen_cpu, wall = run_client(argv, seconds + 60, stdout=out, cores=server.client_cores)
    server_cpu = server.cpu() - cpu0
    text = out_path.read_text()
    if code != 0:
        raise BenchError(f"h2load failed ({code}):\n{text[-2000:]}")
    # h2load prints the run time in the unit that suits it: "999.97ms", "3.00s".
    m_rate = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", text)
    m_req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", text)
    m_status = re.search(r"status codes: (\d+) 2xx", text)
    m_data = re.search(r"traffic: .*?, ([\d.]+\w*) \((\d+)\) data", text)
    if not (m_rate and m_req and m_status and m_data):
        raise BenchError(f"cannot read h2load output:\n{text[-2000:]}")
    done, ok, failed, errored = int(m_req[3]), int(m_req[4]), int(m_req[5]), int(m_req[6])
    data_bytes = int(m_data[2])
    # A gRPC error would come as HTTP 200 with a trailers-only answer and no DATA: the
    # DATA bytes per response show every call got its reply message.
    per_reply = data_bytes / max(ok, 1)
    # A stream whose headers came before h2load's stop but whose end came after counts as 2xx
    # and not as done: at most the 200 streams in flight.
    if failed or errored or not 0 <= int(m_status[1]) - ok <= 200 or abs(per_reply - reply_bytes) > 0.01:
        raise BenchError(f"{server.impl}: h2load saw failures or wrong replies ({ok} ok, {failed} failed, "
                         f"{errored} errored, {per_reply:.2f} DATA bytes per reply, want {reply_bytes}):\n{text[-1500:]}")
    return {
        "req_per_s": float(m_rate[3]), "calls": done,
        "seconds": float(m_rate[1]) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m_rate[2]],
        "server_cpu_s": server_cpu, "server_cpu_us_per_call": server_cpu / done * 1e6,
        "server_core_pct": 100 * server_cpu / wall,
        "generator_cpu_s": gen_cpu, "generator_core_pct": 100 * gen_cpu / wall,
    }


def quantiles(sorted_values: list[float]) -> dict[str, float]:
    """Quantiles for the plot: every 0.1% up to 99.9%, then 99.95, 99.99 and the max."""
    n = len(sorted_values)
    out = {}
    ps = [i / 1000 for i in range(1000)] + [0.999, 0.9995, 0.9999]
    for p in ps:
        out[f"{p * 100:g}"] = sorted_values[min(n - 1, int(p * n))]
    out["100"] = sorted_values[-1]
    return out


def ghz_fixed_rate(peers: Peers, server: Server, rps: int, seconds: float, warmup: float, tmp: Path) -> dict:
    skip = int(rps * warmup)
    total = skip + int(rps * seconds)
    out_path = tmp / "ghz.json"
    argv = [peers.tool("ghz"), "--insecure", "--proto", HELLOWORLD_PROTO, "--call", "helloworld.Greeter.SayHello",
            "-d", json.dumps({"name": HELLO_NAME.decode()}), "--rps", rps, "-n", total, "-c", "50",
            "--connections", "10", "--skipFirst", skip, "-O", "json", "-o", out_path,
            f"127.0.0.1:{server.port}"]
    cpu0 = server.cpu()
    code, gen_cpu, wall = run_client(argv, total / rps + 120, cores=server.client_cores)
    server_cpu = server.cpu() - cpu0
    if code != 0 or not out_path.is_file():
        raise BenchError(f"ghz failed ({code})")
    report = json.loads(out_path.read_text())
    statuses = report.get("statusCodeDistribution", {})
    if set(statuses) != {"OK"}:
        raise BenchError(f"{server.impl}: ghz saw non-OK statuses {statuses} {report.get('errorDistribution')}")
    lat = sorted(d["latency"] / 1000 for d in report["details"])  # ns -> µs
    q = quantiles(lat)
    return {
        "offered_rps": rps, "achieved_rps": report["rps"], "calls": total, "measured_calls": len(lat),
        "p50_us": q["50"], "p90_us": q["90"], "p99_us": q["99"], "p99.9_us": q["99.9"], "max_us": q["100"],
        "ghz_latency_distribution": report.get("latencyDistribution"),
        "latency_quantiles_us": q,
        "server_cpu_s": server_cpu, "server_cpu_us_per_call": server_cpu / total * 1e6,
        "server_core_pct": 100 * server_cpu / wall,
        "generator_cpu_s": gen_cpu, "generator_core_pct": 100 * gen_cpu / wall,
    }


def loadgen(peers: Peers, server: Server, mode: str, flags: list, timeout: float) -> dict:
    """Runs loadgen, sampling the server's CPU when it opens and closes its measured window."""
    argv = ["taskset", "-c", server.client_cores, peers.tool("loadgen"), mode, "-addr", f"127.0.0.1:{server.port}",
            *flags]
    proc = subprocess.Popen(list(map(str, argv)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    cpu = {}
    try:
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            line = line.strip()
            if line == "MEASURE_START":
                cpu["start"] = server.cpu()
            elif line == "MEASURE_END":
                cpu["end"] = server.cpu()
            elif line:
                last = line
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or "start" not in cpu or "end" not in cpu:
        raise BenchError(f"loadgen {mode} against {server.impl} failed ({proc.returncode}): {stderr.strip()[-1500:]}")
    res = json.loads(last)
    if res["errors"]:
        raise BenchError(f"loadgen {mode} against {server.impl}: {res['errors']} errors")
    server_cpu = cpu["end"] - cpu["start"]
    megabytes = res.get("bytes", 0) / 1e6
    return {
        "msgs_per_s": res["per_second"], "messages": res["messages"], "seconds": res["seconds"],
        "server_cpu_s": server_cpu, "server_cpu_us_per_msg": server_cpu / res["messages"] * 1e6,
        "server_core_pct": 100 * server_cpu / res["seconds"],
        "generator_cpu_s": res["generator_cpu_seconds"],
        "generator_core_pct": 100 * res["generator_cpu_seconds"] / res["seconds"],
        # Answers' message bytes (without framing), for the large-message rows.
        "megabytes": megabytes, "mb_per_s": megabytes / res["seconds"],
        "server_cpu_us_per_mb": server_cpu / megabytes * 1e6 if megabytes else None,
    }


def memory(peers: Peers, server: Server, streams: int, conns: int) -> dict:
    idle, idle_anon = server.rss_kib(), server.rss_kib("RssAnon")
    argv = ["taskset", "-c", CLIENT_CORE, peers.tool("loadgen"), "hold", "-addr", f"127.0.0.1:{server.port}",
            "-streams", streams, "-conns", conns]
    proc = subprocess.Popen(list(map(str, argv)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(120, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().strip()
        if line != "READY":
            proc.kill()
            raise BenchError(f"loadgen hold against {server.impl}: {line} {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(1.0)  # let both sides finish whatever the last round trips started
        held, held_anon = server.rss_kib(), server.rss_kib("RssAnon")
        proc.stdin.close()
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"idle_rss_kib": idle, "streams": streams, "connections": conns, "held_rss_kib": held,
            "per_stream_kib": (held - idle) / streams, "idle_anon_kib": idle_anon, "held_anon_kib": held_anon}


# --------------------------------------------------------------------------- the run


def measurement_plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(measurement, service) in the order each round runs them."""
    plan = [("unary_max", "helloworld"), ("unary_fixed", "helloworld"), ("unary_greet_max", "greet"),
            ("bidi_1", "greet"), ("bidi_100", "greet"), ("server_stream", "greet"), ("memory", "greet"),
            *((name, "greet") for name in LARGE_MESSAGES), *ALL_CORES_PLAN]
    if args.only:
        plan = [p for p in plan if p[0] in args.only]
    return plan


# Large-message measurements: name -> (pattern, bytes in each name). Each server-stream call
# carries as many names as fit in 3 MiB, under the 4 MiB receive limit every server keeps;
# bidi keeps 1 MiB (64 KiB) or 4 MiB (1 MiB) in flight per stream.
LARGE_MESSAGES = {"server_stream_64k": ("server-stream", 64 << 10), "server_stream_1m": ("server-stream", 1 << 20),
                  "bidi_64k": ("bidi", 64 << 10), "bidi_1m": ("bidi", 1 << 20)}
# All cores: measurement -> the one-core measurement it repeats with servers and generators on ALL_CORES.
ALL_CORES_PLAN = [("unary_max_all", "helloworld"), ("bidi_100_all", "greet")]


def measure_large(peers: Peers, args: argparse.Namespace, name: str, impl: str, service: str) -> dict:
    pattern, size = LARGE_MESSAGES[name]
    with peers.server(impl, service, max_name_bytes=size) as server:
        if pattern == "bidi":
            window = 4 if size >= 1 << 20 else (1 << 20) // size
            return loadgen(peers, server, "bidi", ["-streams", 1, "-conns", 1, "-window", window, "-size", size,
                                                   "-warmup", f"{args.warmup}s", "-duration", f"{args.duration}s"],
                           args.duration + 90)
        names = (3 << 20) // size
        calls = max(1, args.large_megabytes * (1 << 20) // (names * size))
        return loadgen(peers, server, "server-stream", ["-names", names, "-calls", calls, "-size", size], 300)


def measure(peers: Peers, args: argparse.Namespace, name: str, impl: str, service: str, tmp: Path) -> dict:
    d = args.duration
    if name in LARGE_MESSAGES:
        return measure_large(peers, args, name, impl, service)
    cores = ALL_CORES if name.endswith("_all") else SERVER_CORE
    name = name.removesuffix("_all")
    with peers.server(impl, service, cores) as server:
        if name == "unary_max":
            h2load(peers, server, "/helloworld.Greeter/SayHello", HELLOWORLD_FRAME, HELLOWORLD_REPLY_BYTES,
                   args.warmup, tmp)
            return h2load(peers, server, "/helloworld.Greeter/SayHello", HELLOWORLD_FRAME, HELLOWORLD_REPLY_BYTES,
                          d, tmp)
        if name == "unary_greet_max":
            h2load(peers, server, "/greet_service.GreetService/SayHello", NOPARAM_FRAME, GREET_REPLY_BYTES,
                   args.warmup, tmp)
            return h2load(peers, server, "/greet_service.GreetService/SayHello", NOPARAM_FRAME, GREET_REPLY_BYTES,
                          d, tmp)
        if name == "unary_fixed":
            return ghz_fixed_rate(peers, server, args.rps, args.fixed_duration, args.warmup, tmp)
        if name in ("bidi_1", "bidi_100"):
            streams, conns = (1, 1) if name == "bidi_1" else (100, 10)
            return loadgen(peers, server, "bidi", ["-streams", streams, "-conns", conns, "-window", args.window,
                                                   "-warmup", f"{args.warmup}s", "-duration", f"{d}s"], d + 90)
        if name == "server_stream":
            return loadgen(peers, server, "server-stream", ["-names", 100000, "-calls", args.stream_calls], 180)
        if name == "memory":
            return memory(peers, server, 1000, 10)
    raise AssertionError(name)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run_rounds(peers: Peers, args: argparse.Namespace, tmp: Path) -> list[dict]:
    records = []
    plan = measurement_plan(args)
    for rnd in range(args.rounds):
        # Rotate who goes first, so drift in the machine's state hits every side alike.
        shift = rnd % len(args.impls)
        order = args.impls[shift:] + args.impls[:shift]
        for name, service in plan:
            for impl in order:
                started = time.monotonic()
                result = measure(peers, args, name, impl, service, tmp)
                records.append({"round": rnd, "measurement": name, "impl": impl, "loadavg_1m": loadavg()[0],
                                **result})
                log(f"round {rnd + 1}/{args.rounds} {name:<16} {impl:<8} {headline(name, result)} "
                    f"({time.monotonic() - started:.1f}s)")
    return records


# --------------------------------------------------------------------------- tracing cost

# (label, the server's OTEL_* variables); the first is the reference.
TRACING_SETTINGS = [
    ("tracing off", {}),
    ("tracing on, 100% sampled", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1"}),
    ("tracing on, 1% sampled", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}),
]


def tracing_cost(peers: Peers, args: argparse.Namespace, tmp: Path) -> tuple[str, dict]:
    """Server CPU per unary call (h2load on GreetService/SayHello) of our server with
    each of TRACING_SETTINGS, exporting to tests/otlp/receiver; a markdown table and
    the raw figures. h2load sends no traceparent: the server's sampler decides."""
    receiver = tmp / "otlp-receiver"
    gopeers.go_build(gopeers.find_go(), REPO / "tests" / "otlp" / "receiver", receiver, ".")
    ready = tmp / "otlp-ready"
    collector = subprocess.Popen([receiver, "-out", tmp / "spans.jsonl", "-ready", ready],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if time.monotonic() > deadline or collector.poll() is not None:
                raise BenchError("tests/otlp/receiver did not start")
            time.sleep(0.05)
        endpoint = f"http://{ready.read_text().strip()}"
        per_call: dict[str, list[float]] = {label: [] for label, _ in TRACING_SETTINGS}
        for rnd in range(args.rounds):
            shift = rnd % len(TRACING_SETTINGS)
            for label, variables in TRACING_SETTINGS[shift:] + TRACING_SETTINGS[:shift]:
                server = peers.server("ours", "greet")
                if variables:
                    server.env = dict(server.env, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, **variables)
                with server:
                    path = "/greet_service.GreetService/SayHello"
                    h2load(peers, server, path, NOPARAM_FRAME, GREET_REPLY_BYTES, args.warmup, tmp)
                    result = h2load(peers, server, path, NOPARAM_FRAME, GREET_REPLY_BYTES, args.duration, tmp)
                per_call[label].append(result["server_cpu_us_per_call"])
                log(f"tracing cost round {rnd + 1}/{args.rounds} {label:<26} {headline('unary_greet_max', result)}")
    finally:
        gopeers.stop_process(collector, grace=5)
    off = statistics.median(per_call[TRACING_SETTINGS[0][0]])
    lines = ["", "## Tracing cost (server CPU per unary call, GreetService/SayHello at max)", "",
             "| setting | µs/call | ratio to tracing off |", "|---|---|---|"]
    for label, _ in TRACING_SETTINGS:
        values = per_call[label]
        lines.append(f"| {label} | {cell(values)} | {statistics.median(values) / off:.2f}x |")
    lines.append("")
    return "\n".join(lines) + "\n", per_call


# --------------------------------------------------------------------------- reporting

# (row label, measurement, field, unit, scale, goal as (op, ratio ours/grpc-go) or None: issue 10's goals)
ROWS = [
    ("unary max req/s (helloworld, h2load 50x4)", "unary_max", "req_per_s", "req/s", 1, (">=", 0.95)),
    ("server CPU per call at max (helloworld)", "unary_max", "server_cpu_us_per_call", "µs", 1, ("<=", 1.05)),
    ("unary max req/s (GreetService/SayHello, no per-call log either side)", "unary_greet_max", "req_per_s",
     "req/s", 1, None),
    ("server CPU per call at max (GreetService/SayHello)", "unary_greet_max", "server_cpu_us_per_call", "µs", 1,
     None),
    ("p50 latency at {rps} req/s (ghz)", "unary_fixed", "p50_us", "ms", 1e-3, None),
    ("p90 latency at {rps} req/s", "unary_fixed", "p90_us", "ms", 1e-3, None),
    ("p99 latency at {rps} req/s", "unary_fixed", "p99_us", "ms", 1e-3, ("<=", 1.0)),
    ("server CPU per call at {rps} req/s", "unary_fixed", "server_cpu_us_per_call", "µs", 1, ("<=", 0.6)),
    ("bidi msgs/s, 1 stream", "bidi_1", "msgs_per_s", "msg/s", 1, (">=", 0.8)),
    ("server CPU per msg, bidi 1 stream", "bidi_1", "server_cpu_us_per_msg", "µs", 1, None),
    ("bidi msgs/s, 100 streams / 10 conns", "bidi_100", "msgs_per_s", "msg/s", 1, (">=", 0.6)),
    ("server CPU per msg, bidi 100 streams", "bidi_100", "server_cpu_us_per_msg", "µs", 1, None),
    ("server-stream msgs/s (100,000 names)", "server_stream", "msgs_per_s", "msg/s", 1, (">=", 1.0)),
    ("server CPU per msg, server-stream", "server_stream", "server_cpu_us_per_msg", "µs", 1, None),
    ("RSS idle", "memory", "idle_rss_kib", "MiB", 1 / 1024, None),
    ("RSS with 1,000 idle bidi streams / 10 conns", "memory", "held_rss_kib", "MiB", 1 / 1024, ("<=", 1.0)),
    ("RSS per held stream", "memory", "per_stream_kib", "KiB", 1, None),
    ("anonymous RSS idle (RssAnon: no code or libraries)", "memory", "idle_anon_kib", "MiB", 1 / 1024, None),
    ("anonymous RSS with 1,000 idle bidi streams", "memory", "held_anon_kib", "MiB", 1 / 1024, None),
]

# Large messages (issue 22): MB/s of answers and server CPU per MB of answers.
for _name, (_pattern, _size) in LARGE_MESSAGES.items():
    _what = f"{'bidi, 1 stream' if _pattern == 'bidi' else 'server-stream'}, {_size >> 10:,} KiB messages"
    ROWS += [(f"{_what}: MB/s", _name, "mb_per_s", "MB/s", 1, None),
             (f"{_what}: server CPU per MB", _name, "server_cpu_us_per_mb", "µs", 1, None)]

# All cores (issue 22): servers and generators sharing cores 0 and 1.
ROWS += [
    ("ALL CORES: unary max req/s (helloworld, h2load 50x4, 2 threads)", "unary_max_all", "req_per_s", "req/s", 1, None),
    ("ALL CORES: server CPU per call at max (helloworld)", "unary_max_all", "server_cpu_us_per_call", "µs", 1, None),
    ("ALL CORES: bidi msgs/s, 100 streams / 10 conns", "bidi_100_all", "msgs_per_s", "msg/s", 1, None),
    ("ALL CORES: server CPU per msg, bidi 100 streams", "bidi_100_all", "server_cpu_us_per_msg", "µs", 1, None),
]


def floor_goal(field: str) -> tuple[str, float] | None:
    """Issue 22's goal for a row, against cpp (the floor of the stack): ours/cpp >= 0.97 on
    throughput, <= 1.03 on server CPU per call, message or MB, and idle RSS within 1 MiB ("+")."""
    if field in ("req_per_s", "msgs_per_s", "mb_per_s"):
        return (">=", 0.97)
    if field.startswith("server_cpu_us_per_"):
        return ("<=", 1.03)
    if field == "idle_rss_kib":
        return ("+", 1.0)  # the row is in MiB
    return None


def floor_verdict(goal: tuple[str, float] | None, ours: float | None, cpp: float | None) -> str:
    if goal is None or ours is None or not cpp:
        return ""
    op, target = goal
    if op == "+":
        ok = ours - cpp <= target
        return f"within {target:g} MiB: {'met' if ok else 'NOT met'} ({ours - cpp:+.1f} MiB)"
    ok = ours / cpp >= target if op == ">=" else ours / cpp <= target
    return f"{op} {target:g}: {'met' if ok else 'NOT met'}"


def headline(name: str, r: dict) -> str:
    if "req_per_s" in r:
        return (f"{r['req_per_s']:.0f} req/s, {r['server_cpu_us_per_call']:.1f} µs/call, server {r['server_core_pct']:.0f}%, "
                f"gen {r['generator_core_pct']:.0f}%")
    if "p99_us" in r:
        return (f"p50 {r['p50_us'] / 1e3:.2f} p99 {r['p99_us'] / 1e3:.2f} ms, {r['server_cpu_us_per_call']:.1f} µs/call, "
                f"server {r['server_core_pct']:.0f}%, gen {r['generator_core_pct']:.0f}%")
    if "msgs_per_s" in r:
        return (f"{r['msgs_per_s']:.0f} msg/s, {r['server_cpu_us_per_msg']:.2f} µs/msg, server {r['server_core_pct']:.0f}%, "
                f"gen {r['generator_core_pct']:.0f}%")
    return f"RSS idle {r['idle_rss_kib'] / 1024:.1f} MiB, held {r['held_rss_kib'] / 1024:.1f} MiB"


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{min(digits, 3)}f}"


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    return fmt(med) if len(values) == 1 else f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})"


def summarize(records: list[dict], args: argparse.Namespace) -> tuple[str, list[dict]]:
    """The table: each server's median (min–max), ours over each peer (ratio of the medians,
    its range over same-round pairs), the goal against grpc-go, and the CPU columns."""
    impls = list(args.impls)
    peers = [i for i in impls if i != "ours"]
    rows = []
    for label, meas, field, unit, scale, goal in ROWS:
        by = {impl: {r["round"]: r for r in records if r["measurement"] == meas and r["impl"] == impl}
              for impl in impls}
        if not any(by.values()):
            continue
        vals = {impl: [r[field] * scale for r in by[impl].values()] for impl in by}
        gen = {impl: [r["generator_core_pct"] for r in by[impl].values() if "generator_core_pct" in r] for impl in by}
        srv = {impl: [r["server_core_pct"] for r in by[impl].values() if "server_core_pct" in r] for impl in by}
        med = {impl: statistics.median(v) if v else None for impl, v in vals.items()}
        ratio, ratios = {}, {}
        for peer in peers:
            ratios[peer] = [by["ours"][k][field] / by[peer][k][field] for k in by.get("ours", {})
                            if k in by[peer] and by[peer][k][field]]
            ratio[peer] = med["ours"] / med[peer] if med.get("ours") is not None and med[peer] else None
        verdict = ""
        if goal and ratio.get("grpc-go") is not None:
            op, target = goal
            ok = ratio["grpc-go"] >= target if op == ">=" else ratio["grpc-go"] <= target
            verdict = f"{op} {target:g}: {'met' if ok else 'NOT met'}"
        floor = floor_verdict(floor_goal(field), med.get("ours"), med.get("cpp")) if "cpp" in peers else ""
        rows.append({"label": label.format(rps=f"{args.rps:,}"), "unit": unit, "values": vals, "ratio": ratio,
                     "ratios": ratios, "goal": verdict, "floor_goal": floor, "generator_core_pct": gen,
                     "server_core_pct": srv})

    def ratio_cell(r: dict, peer: str) -> str:
        if r["ratio"].get(peer) is None:
            return "–"
        spread = r["ratios"][peer]
        return f"{r['ratio'][peer]:.2f}" + (f" ({min(spread):.2f}–{max(spread):.2f})" if len(spread) > 1 else "")

    def cpu_cell(by_impl: dict) -> str:
        if not all(by_impl[i] for i in impls):
            return "–"
        return " / ".join(f"{statistics.median(by_impl[i]):.0f}" for i in impls)

    names = " / ".join(impls)
    head = ["measurement", "unit", *impls, *(f"ours/{p} (min–max)" for p in peers),
            *(["goal ours/grpc-go"] if "grpc-go" in peers else []),
            *(["goal ours/cpp (issue 22)"] if "cpp" in peers else []), f"server CPU % {names}",
            f"generator CPU % {names}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], r["unit"], *(cell(r["values"][i]) for i in impls), *(ratio_cell(r, p) for p in peers),
                 *([r["goal"]] if "grpc-go" in peers else []), *([r["floor_goal"]] if "cpp" in peers else []),
                 cpu_cell(r["server_core_pct"]),
                 cpu_cell(r["generator_core_pct"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + floor_summary(rows), rows


def floor_summary(rows: list[dict]) -> str:
    """One line: how many of issue 22's goals against cpp this run met, and which it missed."""
    judged = [r for r in rows if r.get("floor_goal")]
    if not judged:
        return ""
    def shortfall(r: dict) -> str:
        # The RSS verdict carries its difference in MiB; the others are ratios.
        if "MiB)" in r["floor_goal"]:
            return r["floor_goal"].rsplit("(", 1)[1].rstrip(")")
        return f"ours/cpp {r['ratio']['cpp']:.2f}"

    missed = [f"{r['label']} ({shortfall(r)})" for r in judged if "NOT met" in r["floor_goal"]]
    return (f"\nIssue 22's goals against cpp (ours/cpp >= 0.97 on throughput, <= 1.03 on server CPU per call, "
            f"message or MB, idle RSS within 1 MiB): {len(judged) - len(missed)} of {len(judged)} met"
            + (f"; not met: {'; '.join(missed)}" if missed else "") + ".\n")


def svg_plot(records: list[dict], path: Path, rps: int) -> None:
    """Latency by percentile at the fixed rate, every round of both servers (HdrHistogram-style x axis)."""
    runs = [r for r in records if r["measurement"] == "unary_fixed"]
    if not runs:
        return
    W, H, L, R, T, B = 760, 440, 70, 170, 40, 60
    pw, ph = W - L - R, H - T - B
    xmax = 3.0  # -log10(1 - p): 0 -> p0, 3 -> p99.9
    ymax = max(float(v) for r in runs for k, v in r["latency_quantiles_us"].items() if float(k) <= 99.9) / 1e3
    ymax = max(ymax * 1.05, 0.1)
    colors = {"ours": "#d95f02", "grpc-go": "#1b9e77", "tonic": "#7570b3", "cpp": "#e7298a", "baseline": "#666666"}

    def x(p: float) -> float:
        return L + pw * min(-math.log10(max(1 - p / 100, 1e-3)), xmax) / xmax

    def y(ms: float) -> float:
        return T + ph * (1 - ms / ymax)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="14">helloworld.Greeter/SayHello latency at {rps:,} req/s '
           f'(ghz, server on 1 core), every round</text>']
    for p in (0, 50, 90, 99, 99.9):
        out.append(f'<line x1="{x(p):.1f}" y1="{T}" x2="{x(p):.1f}" y2="{T + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x(p):.1f}" y="{T + ph + 18}" text-anchor="middle">p{p:g}</text>')
    step = 10 ** math.floor(math.log10(ymax / 4))
    step = next(s * step for s in (1, 2, 5, 10) if ymax / (s * step) <= 6)
    v = 0.0
    while v <= ymax:
        out.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{L + pw}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v = round(v + step, 9)
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 15}" text-anchor="middle">percentile</text>')
    out.append(f'<text transform="translate(18 {T + ph / 2}) rotate(-90)" text-anchor="middle">latency (ms)</text>')
    for r in runs:
        pts = sorted((float(k), v / 1e3) for k, v in r["latency_quantiles_us"].items() if float(k) <= 99.9)
        d = " ".join(f"{x(p):.1f},{y(min(ms, ymax)):.1f}" for p, ms in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{colors[r["impl"]]}" stroke-width="1.5" '
                   f'stroke-opacity="0.8"><title>{r["impl"]} round {r["round"] + 1}</title></polyline>')
    shown = [impl for impl in colors if any(r["impl"] == impl for r in runs)]
    for i, (impl, color) in enumerate((impl, colors[impl]) for impl in shown):
        yy = T + 10 + 22 * i
        out.append(f'<line x1="{L + pw + 15}" y1="{yy}" x2="{L + pw + 40}" y2="{yy}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{L + pw + 46}" y="{yy + 4}">{impl}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def tool_versions(peers: Peers) -> dict:
    def first_line(argv: list) -> str:
        try:
            return run(argv, timeout=30).strip().splitlines()[0]
        except (BenchError, IndexError):
            return "?"
    return {"go": first_line([gopeers.find_go(), "version"]), "h2load": first_line(["h2load", "--version"]),
            "ghz": GHZ_VERSION, "grpc-go": "see bench/go/go.mod", "tonic": tonic_version(),
            "grpc C core (ours and cpp)": f"grpcio-sys {grpcio_sys_version()}",
            "rustc": first_line(["rustc", "--version"]), "kernel": os.uname().release}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="1 round, short windows: for working on the harness")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; --quick 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per throughput window (default 5; quick 1)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up load (default 1; quick 0.5)")
    p.add_argument("--rps", type=int, default=5000, help="offered rate of the latency measurement (default 5000)")
    p.add_argument("--fixed-duration", type=float, default=None,
                   help="measured seconds at the fixed rate (default 8; quick 2)")
    p.add_argument("--window", type=int, default=64, help="requests in flight per bidi stream (default 64)")
    p.add_argument("--stream-calls", type=int, default=None,
                   help="100,000-name server-streaming calls per measurement (default 3; quick 1)")
    p.add_argument("--large-megabytes", type=int, default=None,
                   help="MiB of answers per large-message server-streaming measurement (default 512; quick 32)")
    p.add_argument("--only", default="", help="comma-separated subset of: " +
                   ",".join(n for n, _ in measurement_plan(argparse.Namespace(only=""))))
    p.add_argument("--go-greet-server", type=Path, default=None,
                   help="grpc-go GreetService server binary (default: built by tests/interop/run_matrix.py)")
    p.add_argument("--server", type=Path, default=None, help="our server binary (default: cargo build --release)")
    p.add_argument("--bin-dir", type=Path, default=Path(os.environ.get(
        "BENCH_BIN_DIR", Path.home() / ".cache" / "greet" / "bench-bin")), help="cache of the Go peers")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where results go (default $CARGO_TARGET_DIR/bench, outside the clone)")
    p.add_argument("--publish", action="store_true",
                   help="also copy latest.md, latency.svg and their JSON into bench/results/ (the snapshot the "
                        "README quotes), removing the JSON they replace")
    p.add_argument("--peers", default="grpc-go,tonic,cpp",
                   help=f"servers to compare ours with, comma-separated, of {','.join(IMPLS[1:])} (default "
                        "grpc-go,tonic,cpp; --baseline-server adds baseline)")
    p.add_argument("--baseline-server", type=Path, default=None,
                   help="another build of our server, measured as the peer 'baseline' (e.g. an older commit's)")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="wait up to this many seconds for the 1-minute load average to drop below 0.5")
    p.add_argument("--keep-logs", action="store_true", help="keep server logs (their directory is printed)")
    p.add_argument("--no-tracing-cost", action="store_true", help="skip the tracing cost (see above)")
    a = p.parse_args(argv)
    a.only = [s for s in a.only.split(",") if s]
    known = [n for n, _ in measurement_plan(argparse.Namespace(only=[]))]
    if any(n not in known for n in a.only):
        p.error(f"--only: unknown {','.join(n for n in a.only if n not in known)} (known: {','.join(known)})")
    peers = [s for s in a.peers.split(",") if s]
    if a.baseline_server:
        if not a.baseline_server.is_file():
            p.error(f"--baseline-server: no file {a.baseline_server}")
        peers.append("baseline")
    elif "baseline" in peers:
        p.error("--peers baseline needs --baseline-server PATH")
    unknown = [s for s in peers if s not in IMPLS[1:]]
    if unknown:
        p.error(f"--peers: unknown {','.join(unknown)} (known: {','.join(IMPLS[1:])})")
    a.impls = ["ours", *(i for i in IMPLS[1:] if i in peers)]
    a.out_dir = a.out_dir or cargo_target() / "bench"
    quick = a.quick
    a.rounds = (1 if quick else 3) if a.rounds is None else a.rounds
    a.duration = (1.0 if quick else 5.0) if a.duration is None else a.duration
    a.warmup = (0.5 if quick else 1.0) if a.warmup is None else a.warmup
    a.fixed_duration = (2.0 if quick else 8.0) if a.fixed_duration is None else a.fixed_duration
    a.stream_calls = (1 if quick else 3) if a.stream_calls is None else a.stream_calls
    a.large_megabytes = (32 if quick else 512) if a.large_megabytes is None else a.large_megabytes
    for flag in ("rounds", "duration", "warmup", "fixed_duration", "stream_calls", "large_megabytes", "rps", "window"):
        if getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    return a


CPP_NOTE = ("`cpp` is the floor of the stack this project chose: gRPC's own C++ async generic API "
            f"(bench/cpp-peer/) on the same C core as ours (grpcio-sys {grpcio_sys_version()}, built from its "
            "bundled source), serving the same methods with the same answers, headers included (`x-served-by`, "
            "checked before each unary measurement), set up like ours (no core "
            "message-size filter, a 4 MiB receive limit checked by the peer, 256 pre-requested calls per "
            "queue); issue 22's goals are ratios against it. ")


def publish(out_dir: Path, json_path: Path) -> None:
    """Makes this run the snapshot in bench/results/: its table, plot and JSON, and no other JSON."""
    if out_dir.resolve() != RESULTS.resolve():
        RESULTS.mkdir(exist_ok=True)
        for name in ("latest.md", "latency.svg"):
            shutil.copyfile(out_dir / name, RESULTS / name)
        shutil.copyfile(json_path, RESULTS / json_path.name)
    for old in RESULTS.glob("*.json"):
        if old.name != json_path.name:
            old.unlink()
    log(f"published into {RESULTS}: latest.md, latency.svg, {json_path.name} (commit them with the README)")


def _interrupt(signum, frame) -> None:
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so every server and generator is stopped.
    raise KeyboardInterrupt()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        if (os.cpu_count() or 1) < 2:
            raise BenchError("needs 2 cores: servers on core 0, load generators on core 1")
        ensure_apt({"h2load": "nghttp2-client", "protoc": "protobuf-compiler", "taskset": "util-linux", "curl": "curl"})
        ours = args.server or build_ours()
        # ghz and loadgen drive every server, so the Go peers are always built.
        go_bin = build_go_peers(args.bin_dir)
        go_greet = (args.go_greet_server or build_go_greet_server()) if "grpc-go" in args.impls else None
        tonic = build_tonic_peer() if "tonic" in args.impls else None
        cpp = build_cpp_peer() if "cpp" in args.impls else None
        deadline = time.monotonic() + args.wait_quiet
        while loadavg()[0] >= 0.5 and time.monotonic() < deadline:
            log(f"load average {loadavg()[0]:.2f}: waiting for < 0.5 (--wait-quiet {args.wait_quiet:g}s)")
            time.sleep(10)
        load = loadavg()
        if load[0] >= 0.5:
            log(f"WARNING: load average {load[0]:.2f} >= 0.5: something else is running; numbers may be noisy")
        log_dir = Path(tempfile.mkdtemp(prefix="greet-bench-"))
        tmp = Path(tempfile.mkdtemp(prefix="greet-bench-tmp-"))
        peers = Peers(args, ours, go_bin, go_greet, tonic, cpp, log_dir)
        run_started = time.monotonic()
        try:
            records = run_rounds(peers, args, tmp)
            tracing_table, tracing_raw = ("", {}) if args.no_tracing_cost else tracing_cost(peers, args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.keep_logs:
                log(f"server logs in {log_dir}")
            else:
                shutil.rmtree(log_dir, ignore_errors=True)
        table, rows = summarize(records, args)
        table += tracing_table
        now = dt.datetime.now(dt.timezone.utc)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        raw = {
            "date": now.isoformat(timespec="seconds"), "quick": args.quick, "rounds": args.rounds,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "placement": {"server_core": SERVER_CORE, "generator_core": CLIENT_CORE,
                          "ours": "--threads 1", "baseline": "--threads 1", "grpc-go": "GOMAXPROCS=1",
                          "tonic": "tokio multi-threaded runtime, one worker (affinity)",
                          "cpp": "--threads 1 (one completion-queue thread)",
                          "all cores (*_all)": f"servers and generators on cores {ALL_CORES}: ours and cpp "
                                               "--threads 2, grpc-go GOMAXPROCS=2, tonic two workers"},
            "loadavg_before": load, "loadavg_after": loadavg(), "tools": tool_versions(peers),
            "run_seconds": time.monotonic() - run_started, "records": records,
            "tracing_cost_us_per_call": tracing_raw,
        }
        json_path = args.out_dir / f"{now.strftime('%Y-%m-%dT%H%M%SZ')}{'-quick' if args.quick else ''}.json"
        json_path.write_text(json.dumps(raw, indent=1) + "\n")
        header = (f"# Benchmark: {' vs '.join(args.impls)}\n\n{now:%Y-%m-%d %H:%M} UTC, {args.rounds} rotating "
                  f"round(s){' (--quick)' if args.quick else ''}; each figure is the median (min–max) over rounds; a "
                  f"ratio is of the medians, its range over same-round pairs; goals are issue 10's, against grpc-go. "
                  f"Servers on core 0 (ours `--threads 1`, grpc-go GOMAXPROCS=1, tonic {tonic_version()} on a "
                  f"multi-threaded tokio runtime with one worker"
                  f"{', cpp on one completion-queue thread' if cpp else ''}"
                  f"{', baseline `' + str(args.baseline_server) + '` run like ours' if args.baseline_server else ''}), "
                  f"load generators on core 1; the ALL CORES rows put every server on both cores (two threads, "
                  f"GOMAXPROCS=2, two tokio workers) and the load generator on the same two cores, so server and "
                  f"generator share them. "
                  f"{CPP_NOTE if cpp else ''}Load average before/after: "
                  f"{load[0]:.2f} / {loadavg()[0]:.2f}. Raw: `{json_path.name}`. Generator CPU is % of its one core: "
                  f"near 100 means the generator, not the server, set the rate; server CPU is % of core 0 over the same window (near 100: the server was the bottleneck; well below 100 for both: something waited).\n\n")
        (args.out_dir / "latest.md").write_text(header + table)
        svg_plot(records, args.out_dir / "latency.svg", args.rps)
        print(table, end="")
        log(f"wrote {json_path}, {args.out_dir / 'latest.md'}, {args.out_dir / 'latency.svg'}; "
            f"measurements took {raw['run_seconds']:.0f}s, everything {time.monotonic() - started:.0f}s")
        if args.publish:
            publish(args.out_dir, json_path)

        return 0
    except (BenchError, gopeers.GoBuildError) as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
