#!/usr/bin/env python3
"""A/B of servers under the unary load of bench/run.py's unary_max row, for
builds run.py cannot take as a peer (its --baseline-server runs a build of
ours; this runs any command, e.g. two builds of the cpp peer):

    bench/ab_unary.py --rounds 4 old=/tmp/cpp-peer-before new='bench/... --flag'

Each NAME=COMMAND is started with `--addr 127.0.0.1:PORT --threads 1`
appended, on core 0, one at a time; h2load (50 connections x 4 streams,
helloworld SayHello, as run.py) loads it from core 1 for 1 s of warm-up and
a 5 s window. Rounds alternate the order. Prints each window, then per
server the median requests/s and server CPU per call (from /proc over the
window), and each server's ratio to the first.
"""
import argparse
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# HelloRequest{name: "world"} as one gRPC frame, as run.py and profile.sh send it.
FRAME = b"\x00\x00\x00\x00\x07\x0a\x05world"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def h2load(port: int, seconds: int, frame: Path) -> tuple[float, int]:
    argv = ["taskset", "-c", "1", "h2load", "-c", "50", "-m", "4", "-t", "1", "-D", str(seconds), "-d", str(frame),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}/helloworld.Greeter/SayHello"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not rate or not done or done[1] != done[2]:
        sys.exit(f"ab_unary: h2load failed or saw failed calls:\n{out[-1500:]}")
    return float(rate[1]), int(done[1])


def window(command: str, frame: Path) -> tuple[float, float]:
    """(requests/s, server CPU µs per call) of one 5 s window against a fresh server."""
    port = free_port()
    argv = ["taskset", "-c", "0", *shlex.split(command), "--addr", f"127.0.0.1:{port}", "--threads", "1"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, RUST_LOG="warn"))
    try:
        deadline = time.monotonic() + 20
        while True:
            if server.poll() is not None:
                sys.exit(f"ab_unary: {command!r} exited ({server.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"ab_unary: {command!r} did not accept on port {port}")
                time.sleep(0.05)
        h2load(port, 1, frame)
        before = cpu_seconds(server.pid)
        rate, calls = h2load(port, 5, frame)
        return rate, (cpu_seconds(server.pid) - before) / calls * 1e6
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("servers", nargs="+", metavar="NAME=COMMAND")
    args = p.parse_args()
    servers = []
    for spec in args.servers:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            p.error(f"want NAME=COMMAND, got {spec!r}")
        servers.append((name, command))
    with tempfile.TemporaryDirectory() as tmp:
        frame = Path(tmp) / "frame.bin"
        frame.write_bytes(FRAME)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in servers}
        for r in range(args.rounds):
            for name, command in servers if r % 2 == 0 else servers[::-1]:
                rate, cpu = window(command, frame)
                results[name].append((rate, cpu))
                print(f"round {r + 1} {name}: {rate:,.0f} req/s, {cpu:.2f} µs of server CPU a call", flush=True)
    first = servers[0][0]
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for n, v in results.items()}
    for name, (rate, cpu) in med.items():
        print(f"{name}: median {rate:,.0f} req/s ({rate / med[first][0]:.3f} of {first}), "
              f"{cpu:.2f} µs a call ({cpu / med[first][1]:.3f} of {first})")


if __name__ == "__main__":
    main()
