#!/usr/bin/python3
"""`make security-check`: HTTP/2 attacks against up to four targets on loopback, one
table of outcomes.

Targets (--targets; by default bare,envoy: the server alone and the default front):
  bare      our `server` binary, alone
  envoy     our `server` behind Envoy with the shipped deploy/envoy/envoy.yaml (rendered by
            deploy/envoy/render.py, as `make cluster` does; Envoy from scripts/envoy.py)
  proxied   our `server` behind HAProxy with the shipped deploy/haproxy/haproxy.cfg (the
            alternative front, `make cluster PROXY=haproxy`)
  grpc-go   grpc-go's official helloworld greeter_server (v1.85, tests/interop/go pins it)

Attacks (each against a freshly started target; bounded, loopback only; all but
h2spec run scripts/h2flood.py while a well-behaved client calls SayHello at
500 calls/s from 127.0.0.1):
  rapid reset              4 connections x 5 s of HEADERS+RST_STREAM (CVE-2023-44487) from 127.0.0.2
  rapid reset, 16 sources  16 connections from 127.0.0.10..25, each paced to 4,000 streams/s, 6 s
  rapid reset + DATA       the same with a 5-byte DATA frame before each RST_STREAM
  rapid reset, same addr   4 connections x 5 s from 127.0.0.1, the client's own address
  reset after body         HEADERS + a whole request, RST_STREAM 5 ms later, 50 at a time, 4 conns x 5 s;
                           and 2 ms later from 16 addresses, on SayHello and on chat Connect (a streaming path)
  short connections        8 workers x 5 s, each connection 5 whole requests then closed
  slow body                8 connections x 90 streams, each body 1 byte per 100 ms, 5 s
  ping flood               1 connection x 3 s of PING frames
  settings flood           1 connection x 3 s of empty SETTINGS frames
  h2spec                   HTTP/2 conformance (github.com/summerwind/h2spec, pinned in scripts/h2spec/go.mod)

Needs Debian's python3-h2 (run with /usr/bin/python3), haproxy, Envoy (for the envoy
target; scripts/envoy.py installs it), Go, protoc and our
release `server` (the Makefile target builds it). Writes the table to stdout and
every raw figure to $CARGO_TARGET_DIR/security-check.json. About 10 minutes for all four targets.
--replicas N puts N replicas behind each proxy (the RSS cell shows the largest replica;
the proxy's own peak is in the JSON); --haproxy-template and --envoy-template run
another config in place of the shipped one (to compare).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import gopeers  # noqa: E402



def load_renderer(proxy: str):
    """deploy/PROXY/render.py, the project's one renderer of that proxy's template."""
    spec = importlib.util.spec_from_file_location(f"{proxy}_render", REPO / "deploy" / proxy / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


haproxy_render = load_renderer("haproxy")
envoy_render = load_renderer("envoy")

H2FLOOD = HERE / "h2flood.py"
HAPROXY_TEMPLATE = REPO / "deploy" / "haproxy" / "haproxy.cfg"
ENVOY_TEMPLATE = REPO / "deploy" / "envoy" / "envoy.yaml"
PROXIES = ("proxied", "envoy")
INTEROP_GO = REPO / "tests" / "interop" / "go"
H2SPEC_GO = HERE / "h2spec"
GREETER_SERVER_PKG = "google.golang.org/grpc/examples/helloworld/greeter_server"
H2SPEC_PKG = "github.com/summerwind/h2spec/cmd/h2spec"

SIXTEEN = ["--sources", "127.0.0.10-127.0.0.25", "--connections", "16", "--rate", "4000", "--seconds", "6"]
ATTACKS = {
    "rapid reset (4 conns x 5 s)": ["--attack", "rapid-reset", "--connections", "4", "--seconds", "5"],
    "rapid reset from 16 addresses (16 conns x 4000 streams/s x 6 s)": ["--attack", "rapid-reset", *SIXTEEN],
    "rapid reset + DATA from 16 addresses (16 conns x 4000 streams/s x 6 s)": ["--attack", "rapid-reset-data", *SIXTEEN],
    "rapid reset from the client's address (4 conns x 5 s)": ["--attack", "rapid-reset", "--source", "127.0.0.1",
                                                              "--connections", "4", "--seconds", "5"],
    "reset 5 ms after a whole request (4 conns x 5 s)": ["--attack", "reset-after-body", "--reset-after-ms", "5",
                                                         "--connections", "4", "--seconds", "5"],
    "HEADERS reset 2 ms later on a streaming method from 16 addresses (16 conns x 6 s)": [
        "--attack", "reset-after-headers", "--reset-after-ms", "2", "--path",
        "/greet_service.GreetService/SayHelloBidirectionalStreaming", "--sources", "16", "--connections", "16",
        "--seconds", "6"],
    "reset 2 ms after a whole request from 16 addresses (16 conns x 6 s)": [
        "--attack", "reset-after-body", "--reset-after-ms", "2", "--sources", "16", "--connections", "16",
        "--seconds", "6"],
    "reset 2 ms after a chat Connect request from 16 addresses (16 conns x 6 s)": [
        "--attack", "reset-after-body", "--reset-after-ms", "2", "--sources", "16", "--connections", "16",
        "--seconds", "6", "--path", "/chat.v1.Chat/Connect"],
    "short connections of 5 requests (8 workers x 5 s)": ["--attack", "short-connections",
                                                             "--connections", "8", "--seconds", "5"],
    "slow bodies of 1 byte/100 ms (8 conns x 90 streams x 5 s)": ["--attack", "slow-body", "--connections", "8",
                                                               "--seconds", "5"],
    "ping flood (1 conn x 3 s)": ["--attack", "ping", "--connections", "1", "--seconds", "3"],
    "settings flood (1 conn x 3 s)": ["--attack", "settings", "--connections", "1", "--seconds", "3"],
}


def log(msg: str) -> None:
    print(f"security-check: {msg}", file=sys.stderr, flush=True)


def cargo_target() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "greet" / "target"))


def go_tools(bin_root: Path) -> Path:
    """grpc-go's greeter_server and h2spec, built from their pinned modules into a cache."""
    go, protoc = gopeers.find_go(), gopeers.find_protoc()
    sources = [INTEROP_GO / "go.mod", INTEROP_GO / "go.sum", H2SPEC_GO / "go.mod", H2SPEC_GO / "go.sum"]
    key = gopeers.source_key(REPO, sources, go, protoc, extra="security-check")

    def build(tmp: Path) -> None:
        gopeers.go_build(go, INTEROP_GO, tmp / "greeter_server", GREETER_SERVER_PKG)
        gopeers.go_build(go, H2SPEC_GO, tmp / "h2spec", H2SPEC_PKG)

    return gopeers.cached_build(bin_root, key, ["greeter_server", "h2spec"], build)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is not up yet; bounded by the deadline
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class Target:
    """A started target: `port` for the flood and the probe, `pids` whose RSS to report."""

    def __init__(self, name: str, server_bin: Path, go_bin: Path | None, tmp: Path, replicas: int = 1,
                 templates: dict[str, Path] | None = None):
        templates = templates or {"proxied": HAPROXY_TEMPLATE, "envoy": ENVOY_TEMPLATE}
        self.name, self.procs, self.port, self.pids, self.proxy_pid = name, [], 0, [], 0
        if name == "grpc-go":
            assert go_bin is not None
            self.port = gopeers.free_port()
            self.pids.append(self.spawn([go_bin / "greeter_server", f"-port={self.port}"], tmp / "greeter_server.log"))
            wait_port(self.port, self.procs[-1])
            return
        backends = []
        for i in range(replicas if name in PROXIES else 1):
            grpc_port, admin_port = gopeers.free_port(), gopeers.free_port()
            argv = [server_bin, "--addr", f"127.0.0.1:{grpc_port}", "--stream-interval", "0"]
            if name in PROXIES:
                argv += ["--admin-addr", f"127.0.0.1:{admin_port}"]
            self.pids.append(self.spawn(argv, tmp / f"{name}-server-{i}.log"))
            wait_port(grpc_port, self.procs[-1])
            backends.append((f"127.0.0.1:{grpc_port}", admin_port))
            self.port = grpc_port
        if name == "proxied":
            self.port = gopeers.free_port()
            cfg = tmp / "haproxy.cfg"
            cfg.write_text(render_haproxy(self.port, backends, templates[name]))
            self.spawn(["haproxy", "-db", "-f", cfg], tmp / "haproxy.log")
        if name == "envoy":
            self.port = gopeers.free_port()
            cfg = tmp / "envoy.yaml"
            servers = [(f"replica{i}", *envoy_render.split_addr(addr)) for i, (addr, _) in enumerate(backends, 1)]
            cfg.write_text(envoy_render.render(templates[name].read_text(), f"127.0.0.1:{self.port}", "127.0.0.1:0",
                                               servers))
            # As scripts/cluster.sh starts it; --concurrency 2 as the tests do.
            self.proxy_pid = self.spawn([envoy_binary(), "-c", cfg, "--use-dynamic-base-id", "--disable-hot-restart",
                                         "-l", "warning", "--concurrency", "2"], tmp / "envoy.log")
        if name in PROXIES:
            if name == "proxied":
                self.proxy_pid = self.procs[-1].pid
            wait_port(self.port, self.procs[-1])
            wait_healthy(self.port)

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def spawn(self, argv: list, log_path: Path) -> int:
        out = open(log_path, "ab")
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.procs.append(proc)
        return proc.pid

    def stop(self) -> None:
        for proc in reversed(self.procs):
            gopeers.stop_process(proc, 5)


def render_haproxy(bind_port: int, replicas: list[tuple[str, int]], template: Path = HAPROXY_TEMPLATE) -> str:
    """The template with our ports, by the project's one renderer (deploy/haproxy/render.py)."""
    servers = [f"replica{i}={addr},{admin_port}" for i, (addr, admin_port) in enumerate(replicas, 1)]
    return haproxy_render.render(template.read_text(), f"127.0.0.1:{bind_port}",
                                 [haproxy_render.parse_server(s) for s in servers])


@functools.lru_cache(maxsize=None)
def envoy_binary() -> str:
    """The pinned Envoy (scripts/envoy.py installs it once, then finds it)."""
    out = subprocess.run([sys.executable, str(HERE / "envoy.py")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/envoy.py failed: {out.stderr.strip()[-2000:]}")
    return out.stdout.strip()


def wait_healthy(port: int, timeout: float = 20) -> None:
    """Until one probe call through the proxy is OK (its health check has passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = flood(port, 0, ["--attack", "none", "--warmup", "0", "--seconds", "0", "--after", "0.2",
                                 "--probe-rate", "20"])
        probe = report["probe"]["after"]
        if probe["calls"] and probe["ok"] == probe["calls"]:
            return
    raise RuntimeError(f"no call through the proxy on :{port} succeeded within {timeout:.0f}s")


def flood(port: int, pids: int | list[int], args: list) -> dict:
    argv = ["/usr/bin/python3", H2FLOOD, "--target", f"127.0.0.1:{port}", *args]
    for pid in [pids] if isinstance(pids, int) else pids:
        if pid:
            argv += ["--server-pid", str(pid)]
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"h2flood failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def h2spec(h2spec_bin: Path, port: int) -> dict:
    out = subprocess.run([str(h2spec_bin), "-h", "127.0.0.1", "-p", str(port), "-o", "1"],
                         capture_output=True, text=True, timeout=600)
    # "145 tests, 92 passed, 0 skipped, 53 failed"
    m = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", out.stdout)
    if not m:
        return {"error": (out.stdout + out.stderr).strip()[-500:]}
    total, passed, skipped, failed = map(int, m.groups())
    return {"tests": total, "passed": passed, "skipped": skipped, "failed": failed}


def describe_flood(report: dict, pids: list[int], proxy_pid: int = 0) -> str:
    probe = report["probe"]["during"]
    parts = []
    if probe["calls"]:
        parts.append(f"{probe['ok']}/{probe['calls']} OK")
        if probe["p99_ms"] is not None:
            parts.append(f"p99 {probe['p99_ms']:.0f} ms")
    recovery = report["probe"]["recovery_s"]
    parts.append(f"recovered {recovery:.1f} s after" if recovery is not None else "not recovered 5 s after")
    rss = [report["rss_mib"][str(pid)] for pid in pids if str(pid) in report["rss_mib"]]
    if rss:
        top = max(rss, key=lambda r: r["peak"])
        parts.append(f"RSS {top['before']:.0f}->{top['peak']:.0f} MB")
    proxy = report["rss_mib"].get(str(proxy_pid))
    if proxy:
        parts.append(f"proxy RSS {proxy['before']:.0f}->{proxy['peak']:.0f} MB")
    f = report["flood"]
    if f["goaway"]:
        debug = {json.loads(g)["debug"] or f"code {json.loads(g)['error_code']}" for g in f["goaway"]}
        parts.append("GOAWAY " + "/".join(sorted(debug)))
    elif f["connections_closed_by_server"]:
        parts.append(f"{f['connections_closed_by_server']} conn closed")
    return ", ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-bin", type=Path, default=cargo_target() / "release" / "server")
    ap.add_argument("--go-bin-root", type=Path, default=Path.home() / ".cache" / "greet-security" / "bin")
    ap.add_argument("--targets", default="bare,envoy",
                    help="comma separated, of bare, envoy, proxied (HAProxy), grpc-go (default: %(default)s)")
    ap.add_argument("--no-h2spec", action="store_true")
    ap.add_argument("--attacks", help="only the attacks whose name starts with one of these, comma separated")
    ap.add_argument("--json", type=Path, default=cargo_target() / "security-check.json")
    ap.add_argument("--replicas", type=int, default=1, help="replicas behind the proxy")
    ap.add_argument("--haproxy-template", type=Path, default=HAPROXY_TEMPLATE,
                    help="an HAProxy config template to use instead of the shipped one")
    ap.add_argument("--envoy-template", type=Path, default=ENVOY_TEMPLATE,
                    help="an Envoy config template to use instead of the shipped one")
    args = ap.parse_args()
    targets = args.targets.split(",")
    unknown = [t for t in targets if t not in ("bare", "envoy", "proxied", "grpc-go")]
    if unknown:
        sys.exit(f"security-check: --targets {','.join(unknown)}: each must be one of bare, envoy, proxied, grpc-go")
    # Go is only needed for grpc-go and h2spec.
    go_bin = go_tools(args.go_bin_root) if "grpc-go" in targets or not args.no_h2spec else None
    results: dict = {}
    rows: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="greet-security-") as tmp_name:
        tmp = Path(tmp_name)
        checks = list(ATTACKS) + ([] if args.no_h2spec else ["h2spec (HTTP/2 conformance)"])
        if args.attacks:
            checks = [c for c in checks if c.startswith(tuple(args.attacks.split(",")))]
        for check in checks:
            for name in targets:
                log(f"{check} against {name}")
                target = Target(name, args.server_bin, go_bin, tmp, args.replicas,
                                {"proxied": args.haproxy_template, "envoy": args.envoy_template})
                try:
                    if check in ATTACKS:
                        report = flood(target.port, target.pids + [target.proxy_pid], ATTACKS[check])
                        rows.setdefault(check, {})[name] = describe_flood(report, target.pids, target.proxy_pid) + \
                            ("" if target.alive() else ", SERVER DIED")
                        log(rows[check][name] + f" ({report['flood']['streams_opened']} streams sent)")
                    else:
                        assert go_bin is not None
                        report = h2spec(go_bin / "h2spec", target.port)
                        rows.setdefault(check, {})[name] = (f"{report['passed']}/{report['tests']} passed"
                                                            if "passed" in report else report["error"])
                    results.setdefault(check, {})[name] = report
                finally:
                    target.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    header = {"bare": "bare server", "proxied": "proxied (HAProxy)", "envoy": "proxied (Envoy)",
              "grpc-go": "grpc-go greeter_server"}
    print("| attack | " + " | ".join(header[t] for t in targets) + " |")
    print("|---|" + "---|" * len(targets))
    for check, cells in rows.items():
        print(f"| {check} | " + " | ".join(cells.get(t, "") for t in targets) + " |")
    print(f"\nraw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
