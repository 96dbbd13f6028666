#!/usr/bin/env python3
"""Load-independent costs of our server, for comparing builds and settings on a busy machine.

Wall-clock rates move with whatever else the machine runs; these do not (much):

  instructions per unary call, bidi message and server-stream message
      the server runs under `valgrind --tool=callgrind`; each workload runs at two
      sizes and the cost is the difference in the server's total instructions over
      the difference in work, so start-up and shutdown cancel out;
  socket writes per message
      `perf stat -e syscalls:sys_enter_*` on the server (natively, no valgrind) over
      the bigger size of each workload; this one does depend on timing (coalescing
      depends on how much is queued), so it is a figure for a loaded loopback;
  RSS
      VmRSS idle, and with 1,000 bidi streams held over 10 connections.

Each --variant is `NAME=ARGS`: server arguments (after the ones every run gets:
--addr, --threads 1, --stream-interval 0), or `NAME=@/path/to/server ARGS` for
another binary. Example (bench/README.md has the figures):

  python3 bench/costs.py --variant base= --variant minimal='--core-arg grpc.minimal_stack=1'

The server runs on core 0 and the load generators (h2load; bench/go/loadgen,
built by bench/run.py's cached Go build) on core 1, like bench/run.py.
Writes <out-dir>/costs-<UTC time>.json and prints a table; --keep-profiles keeps
the callgrind files (callgrind_annotate shows the per-function costs).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (bench/run.py: builds, process helpers)
from run import CLIENT_CORE, SERVER_CORE, BenchError, gopeers, log  # noqa: E402

# (name, unit, small size, big size): the two sizes of each workload.
WORKLOADS = [
    ("unary", "call", 1000, 5000),
    ("bidi_1", "msg", 2000, 10000),
    ("bidi_100", "msg", 2000, 10000),
    ("server_stream", "msg", 20000, 60000),
]
WRITE_SYSCALLS = ("sendmsg", "write", "writev", "sendto")


class Variant:
    def __init__(self, spec: str, default_server: Path):
        name, _, rest = spec.partition("=")
        if not name:
            raise BenchError(f"--variant {spec!r}: expected NAME=ARGS")
        args = shlex.split(rest)
        self.name, self.server = name, default_server
        if args and args[0].startswith("@"):
            self.server = Path(args.pop(0)[1:])
        self.args = args


def start_server(variant: Variant, port: int, wrapper: list, log_file) -> subprocess.Popen:
    argv = ["taskset", "-c", SERVER_CORE, *wrapper, variant.server, "--addr", f"127.0.0.1:{port}",
            "--threads", "1", "--stream-interval", "0", *variant.args]
    proc = subprocess.Popen(list(map(str, argv)), env=dict(os.environ, RUST_LOG="warn"), stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=log_file)
    deadline = time.monotonic() + 180  # valgrind takes its time to start the core
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server {variant.name} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    gopeers.stop_process(proc, 5)
    raise BenchError(f"server {variant.name} did not accept on {port}")


def drive(workload: str, size: int, port: int, loadgen: Path, tmp: Path) -> int:
    """Runs `size` units of a workload against the server; returns the units done."""
    addr = f"127.0.0.1:{port}"
    if workload == "unary":
        frame = tmp / "noparam.bin"
        frame.write_bytes(bench.NOPARAM_FRAME)
        argv = ["h2load", "-n", size, "-c", 10, "-m", 4, "-t", 1, "-d", frame, "-H", "content-type: application/grpc",
                "-H", "te: trailers", f"http://{addr}/greet_service.GreetService/SayHello"]
        out = subprocess.run(["taskset", "-c", CLIENT_CORE, *map(str, argv)], capture_output=True, text=True,
                             timeout=1800)
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
        if out.returncode != 0 or not m or int(m[1]) != size:
            raise BenchError(f"h2load: {out.stdout[-1500:]} {out.stderr[-500:]}")
        return size
    if workload.startswith("bidi"):
        streams, conns = (1, 1) if workload == "bidi_1" else (100, 10)
        flags = ["bidi", "-streams", streams, "-conns", conns, "-window", 64, "-messages", size // streams]
    else:
        # loadgen makes one unmeasured call first: size/2 names, 1 measured call, 2 in all.
        flags = ["server-stream", "-names", size // 2, "-calls", 1]
    out = subprocess.run(["taskset", "-c", CLIENT_CORE, str(loadgen), flags[0], "-addr", addr, *map(str, flags[1:])],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise BenchError(f"loadgen {flags[0]}: {out.stderr[-1500:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["errors"]:
        raise BenchError(f"loadgen {flags[0]}: {res['errors']} errors")
    return size


def instructions(variant: Variant, workload: str, size: int, loadgen: Path, tmp: Path, keep: Path | None) -> int:
    """The server's instructions (callgrind Ir) for start + `size` units of work + shutdown."""
    out = tmp / f"callgrind-{variant.name}-{workload}-{size}.out"
    port = gopeers.free_port()
    with open(tmp / "server.log", "ab") as log_file:
        proc = start_server(variant, port, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
                           log_file)
        try:
            drive(workload, size, port, loadgen, tmp)
        finally:
            gopeers.stop_process(proc, 120)
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    if not m:
        raise BenchError(f"no totals in {out}")
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, keep / out.name)
    return int(m[1])


def writes(variant: Variant, workload: str, size: int, loadgen: Path, tmp: Path) -> dict:
    """Write syscalls of the native server over one run of `size` units (perf tracepoints)."""
    port = gopeers.free_port()
    events = ",".join(f"syscalls:sys_enter_{s}" for s in WRITE_SYSCALLS)
    with open(tmp / "server.log", "ab") as log_file:
        proc = start_server(variant, port, [], log_file)
        try:
            perf_out = tmp / "perf.txt"
            perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(proc.pid), "-o",
                                     str(perf_out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # perf attaches
            drive(workload, size, port, loadgen, tmp)
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=30)
        finally:
            gopeers.stop_process(proc, 10)
    counts = {}
    for line in perf_out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
            counts[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0]) if parts[0].isdigit() else 0
    return counts


def rss(variant: Variant, loadgen: Path, tmp: Path) -> dict:
    port = gopeers.free_port()
    with open(tmp / "server.log", "ab") as log_file:
        proc = start_server(variant, port, [], log_file)
        try:
            time.sleep(0.5)
            idle, idle_anon = bench.proc_rss_kib(proc.pid), bench.proc_rss_kib(proc.pid, "RssAnon")
            hold = subprocess.Popen(["taskset", "-c", CLIENT_CORE, str(loadgen), "hold", "-addr", f"127.0.0.1:{port}",
                                     "-streams", "1000", "-conns", "10"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert hold.stdout is not None and hold.stdin is not None
                if hold.stdout.readline().strip() != "READY":
                    raise BenchError("loadgen hold did not get ready")
                time.sleep(1.0)
                held, held_anon = bench.proc_rss_kib(proc.pid), bench.proc_rss_kib(proc.pid, "RssAnon")
                hold.stdin.close()
                hold.wait(timeout=60)
            finally:
                if hold.poll() is None:
                    hold.kill()
                    hold.wait()
        finally:
            gopeers.stop_process(proc, 10)
    return {"idle_rss_kib": idle, "held_rss_kib": held, "per_stream_kib": (held - idle) / 1000,
            "idle_anon_kib": idle_anon, "held_anon_kib": held_anon}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", default=[], help="NAME=ARGS or NAME=@BINARY ARGS (repeatable)")
    p.add_argument("--only", default="", help="comma-separated subset of: " +
                   ",".join([w[0] for w in WORKLOADS] + ["writes", "rss"]))
    p.add_argument("--server", type=Path, default=None, help="our server binary (default: cargo build --release)")
    p.add_argument("--bin-dir", type=Path, default=Path(os.environ.get(
        "BENCH_BIN_DIR", Path.home() / ".cache" / "greet" / "bench-bin")), help="cache of the Go peers")
    p.add_argument("--out-dir", type=Path, default=None, help="default $CARGO_TARGET_DIR/bench")
    p.add_argument("--keep-profiles", action="store_true", help="keep the callgrind files in the out dir")
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    out_dir = args.out_dir or bench.cargo_target() / "bench"
    try:
        server = args.server or bench.build_ours()
        loadgen = bench.build_go_peers(args.bin_dir) / "loadgen"
        variants = [Variant(v, server) for v in args.variant or ["base="]]
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        keep = out_dir / f"profiles-{now}" if args.keep_profiles else None
        results: dict[str, dict] = {v.name: {"args": v.args, "server": str(v.server)} for v in variants}
        tmp = Path(tempfile.mkdtemp(prefix="greet-costs-"))
        try:
            for name, unit, small, big in WORKLOADS:
                if only and name not in only:
                    continue
                for v in variants:
                    ir = [instructions(v, name, n, loadgen, tmp, keep if n == big else None) for n in (small, big)]
                    per = (ir[1] - ir[0]) / (big - small)
                    results[v.name][f"{name}_instructions_per_{unit}"] = per
                    log(f"{v.name:<12} {name:<14} {per:,.0f} instructions/{unit} (Ir {ir[0]:,} at {small}, "
                        f"{ir[1]:,} at {big})")
            for name, unit, small, big in WORKLOADS:
                if only and "writes" not in only:
                    break
                for v in variants:
                    counts = writes(v, name, big, loadgen, tmp)
                    per = sum(counts.values()) / big
                    results[v.name][f"{name}_write_syscalls_per_{unit}"] = per
                    results[v.name][f"{name}_write_syscalls"] = counts
                    log(f"{v.name:<12} {name:<14} {per:.3f} write syscalls/{unit} {counts}")
            if not only or "rss" in only:
                for v in variants:
                    results[v.name].update(rss(v, loadgen, tmp))
                    r = results[v.name]
                    log(f"{v.name:<12} RSS idle {r['idle_rss_kib'] / 1024:.1f} MiB, held "
                        f"{r['held_rss_kib'] / 1024:.1f} MiB, {r['per_stream_kib']:.1f} KiB/stream; anonymous idle "
                        f"{r['idle_anon_kib'] / 1024:.1f} MiB, held {r['held_anon_kib'] / 1024:.1f} MiB")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"costs-{now}.json"
        path.write_text(json.dumps({"date": now, "loadavg": bench.loadavg(), "variants": results}, indent=1) + "\n")
        fields = sorted({k for r in results.values() for k, v in r.items() if isinstance(v, (int, float))})
        print("| figure | " + " | ".join(results) + " |")
        print("|---|" + "---|" * len(results))
        for f in fields:
            print(f"| {f} | " + " | ".join(f"{r[f]:,.2f}" if f in r else "–" for r in results.values()) + " |")
        log(f"wrote {path}" + (f"; callgrind files in {keep}" if keep else ""))
        return 0
    except (BenchError, gopeers.GoBuildError) as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
