"""The nemesis's clients of chat.v1.Chat (Jepsen's generator side): a writer,
a reader and a History dump. Each runs as its own process inside a host's
network namespace, under the venv of nemesis/build.sh (grpcio and the
chat_pb2 modules it generated; NEMESIS_GEN names that directory), and
records what it did as JSON lines, flushed one by one, so that whatever
kills it leaves a readable record. Times are wall-clock seconds
(time.time()), comparable with the harness's fault times.

    client.py writer  --name A --addrs OWN,OTHER --room R --log FILE [--rate 20]
    client.py reader  --name A --addrs OWN,OTHER --room R --log FILE
    client.py history --addr ADDR --room R

A writer says numbered messages, one at a time: it waits for the echo of a
Say (its acknowledgement) before the next. A Say the server refuses (the
call ends with a status), or whose echo does not come within --ack-timeout
(indeterminate: recorded as "timeout"), is said again with the same
client_id, at most --resends times, each attempt on a fresh connection
that resumes from the last seq the writer saw: a message already stored
(its server died before the echo) is not echoed again, its first copy
comes in that backlog. A lost connection is re-made on its own server
first, then the other.
SIGTERM ends either client after the attempt in flight."""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time

sys.path.insert(0, os.environ.get("NEMESIS_GEN", ""))
import grpc  # noqa: E402
import chat_pb2  # noqa: E402
import chat_pb2_grpc  # noqa: E402

stopping = threading.Event()


class Record:
    """JSON lines to a file, one flushed write each."""

    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)

    def __call__(self, **event) -> None:
        event.setdefault("t", time.time())
        self.file.write(json.dumps(event, separators=(",", ":")) + "\n")


def status_of(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{name}: {details}"


def message_event(m, server: str) -> dict:
    return {"kind": "msg", "seq": m.seq, "cid": m.client_id, "user": m.user, "text": m.text, "server": server}


class Stream:
    """One Connect call: frames go out through a queue, events come back
    on a thread into another queue, ending with ("end", status)."""

    def __init__(self, channel, server: str, join):
        self.server = server
        self.out: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self.out.put(chat_pb2.ClientFrame(join=join))
        stub = chat_pb2_grpc.ChatStub(channel)
        self.call = stub.Connect(self._frames())
        threading.Thread(target=self._pump, daemon=True).start()

    def _frames(self):
        while True:
            frame = self.out.get()
            if frame is None:
                return
            yield frame

    def _pump(self) -> None:
        try:
            for event in self.call:
                self.events.put(("event", event))
            self.events.put(("end", "OK: the server ended the call"))
        except grpc.RpcError as e:
            self.events.put(("end", status_of(e)))

    def next(self, timeout: float):
        """("event", ServerEvent), ("end", status) or ("timeout", None)."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return ("timeout", None)

    def welcome(self, timeout: float):
        """The Welcome, or raises ConnectFailed with the status."""
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self.next(max(0.0, deadline - time.monotonic()))
            if kind == "event" and value.WhichOneof("event") == "welcome":
                return value.welcome
            if kind == "end":
                raise ConnectFailed(value)
            if kind == "timeout":
                self.close()
                raise ConnectFailed("TIMEOUT: no Welcome")

    def say(self, text: str, cid: str) -> None:
        self.out.put(chat_pb2.ClientFrame(say=chat_pb2.Say(text=text, client_id=cid)))

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()


class ConnectFailed(Exception):
    pass


class Connections:
    """Channels to the client's own server and the other one; connect()
    tries them in that order, again and again, until one welcomes it."""

    def __init__(self, addrs: list[str], record: Record):
        self.addrs = addrs
        self.channels = {a: grpc.insecure_channel(a) for a in addrs}
        self.record = record

    def connect(self, make_join):
        while not stopping.is_set():
            for addr in self.addrs:
                join = make_join()
                try:
                    stream = Stream(self.channels[addr], addr, join)
                    welcome = stream.welcome(3.0)
                except ConnectFailed as e:
                    self.record(kind="connect-failed", server=addr, status=str(e))
                    if "OUT_OF_RANGE" in str(e):
                        return None, str(e)
                    continue
                self.record(kind="connected", server=addr, epoch=welcome.epoch, last_seq=welcome.last_seq,
                            backlog=welcome.backlog, resume_after=join.resume_after if join.HasField("resume_after") else None)
                return stream, welcome
            stopping.wait(0.2)
        return None, None


def resuming_join(room: str, user: str, epoch: str | None, last: int | None):
    """A Join with no history that resumes after `last` in `epoch`, or a
    fresh one while either is unknown."""
    j = chat_pb2.Join(room=room, user=user, history=0)
    if epoch is not None and last is not None:
        j.resume_after = last
        j.epoch = epoch
    return j


def writer(args) -> None:
    record = Record(args.log)
    conns = Connections(args.addrs.split(","), record)
    stream = None
    # Where the writer's streams got to: a new connection resumes from there.
    seen = {"epoch": None, "last": None}

    def join():
        return resuming_join(args.room, args.name, seen["epoch"], seen["last"])

    period = 1.0 / args.rate
    next_at = time.monotonic()
    n = 0
    while not stopping.is_set():
        n += 1
        cid = f"{args.name}-{args.run}-{n}"
        text = f"{args.name} {n}"
        for attempt in range(1 + args.resends):
            if stopping.is_set():
                break
            stopping.wait(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + period, time.monotonic())
            if stream is None:
                stream, welcome = conns.connect(join)
                if stream is None and welcome is not None:  # OUT_OF_RANGE: the room was reset; join afresh
                    record(kind="reset", status=welcome)
                    seen.update(epoch=None, last=None)
                    stream, welcome = conns.connect(join)
                if stream is None:
                    break
                if welcome.epoch != seen["epoch"]:
                    seen.update(epoch=welcome.epoch, last=welcome.last_seq)
            sent = time.time()
            stream.say(text, cid)
            outcome = wait_ack(stream, cid, args.ack_timeout, record, seen)
            record(kind="attempt", n=n, cid=cid, attempt=attempt, server=stream.server, sent=sent,
                   epoch=seen["epoch"], **outcome)
            if outcome["outcome"] == "ack":
                break
            # The call ended (or is given up on): the next attempt gets a fresh one.
            stream.close()
            stream = None
    if stream is not None:
        stream.close()


def wait_ack(stream: Stream, cid: str, timeout: float, record: Record, seen: dict) -> dict:
    """Reads `stream` (the backlog of a resume, then live events) until the
    message `cid` comes; `seen["last"]` follows every message read."""
    deadline = time.monotonic() + timeout
    while True:
        kind, value = stream.next(max(0.0, deadline - time.monotonic()))
        if kind == "timeout":
            return {"outcome": "timeout"}
        if kind == "end":
            return {"outcome": "refused", "status": value}
        if value.WhichOneof("event") == "message":
            m = value.message
            record(epoch=seen["epoch"], **message_event(m, stream.server))
            seen["last"] = m.seq
            if m.client_id == cid:
                return {"outcome": "ack", "seq": m.seq}


def reader(args) -> None:
    record = Record(args.log)
    conns = Connections(args.addrs.split(","), record)
    epoch, last = None, None

    def join():
        return resuming_join(args.room, f"reader-{args.name}", epoch, last)

    while not stopping.is_set():
        stream, welcome = conns.connect(join)
        if stream is None:
            if welcome is not None:  # OUT_OF_RANGE: the room was reset; join afresh
                record(kind="reset", status=welcome)
                epoch, last = None, None
                continue
            break
        if welcome.epoch != epoch:
            epoch, last = welcome.epoch, welcome.last_seq
            record(kind="epoch", epoch=epoch, from_seq=last, server=stream.server)
        while not stopping.is_set():
            kind, value = stream.next(args.silence)
            if kind == "timeout":
                record(kind="lost", server=stream.server, status=f"silent for {args.silence}s")
                stream.close()
                break
            if kind == "end":
                record(kind="lost", server=stream.server, status=value)
                break
            if value.WhichOneof("event") == "message":
                m = value.message
                record(epoch=epoch, **message_event(m, stream.server))
                last = m.seq
        else:
            stream.close()


def history(args) -> None:
    """One JSON object on stdout: the room's epoch (from a Join) and every
    stored message, paged back with before_seq; or {"error": status}."""
    channel = grpc.insecure_channel(args.addr)
    stub = chat_pb2_grpc.ChatStub(channel)
    try:
        stream = Stream(channel, args.addr, chat_pb2.Join(room=args.room, user="history", history=0))
        welcome = stream.welcome(5.0)
        stream.close()
        messages, before = [], None
        while True:
            req = chat_pb2.HistoryRequest(room=args.room, limit=1000)
            if before is not None:
                req.before_seq = before
            page = [e.message for e in stub.History(req, timeout=10) if e.WhichOneof("event") == "message"]
            messages = [[m.seq, m.client_id, m.user, m.text] for m in page] + messages
            if len(page) < 1000 or page[0].seq <= 1:
                break
            before = page[0].seq
        print(json.dumps({"epoch": welcome.epoch, "last_seq": welcome.last_seq, "messages": messages}))
    except (grpc.RpcError, ConnectFailed) as e:
        print(json.dumps({"error": status_of(e) if isinstance(e, grpc.RpcError) else str(e)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("writer", "reader"):
        p = sub.add_parser(role)
        p.add_argument("--name", required=True)
        p.add_argument("--addrs", required=True, help="own server first, then the other")
        p.add_argument("--room", required=True)
        p.add_argument("--log", required=True)
        p.add_argument("--run", default=str(os.getpid()), help="makes client_ids unique to the run")
        p.add_argument("--rate", type=float, default=20.0)
        p.add_argument("--resends", type=int, default=3)
        p.add_argument("--ack-timeout", type=float, default=5.0)
        p.add_argument("--silence", type=float, default=5.0, help="reconnect after this long without an event")
    p = sub.add_parser("history")
    p.add_argument("--addr", required=True)
    p.add_argument("--room", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    {"writer": writer, "reader": reader, "history": history}[args.role](args)


if __name__ == "__main__":
    main()
