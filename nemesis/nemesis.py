"""A Jepsen-style fault-injection harness for the chat tier: three hosts
(network namespaces), a store (Redis with Sentinels, or a 3-member etcd),
chat servers A (on h1) and B (on h2) on it, a writer and a reader on each,
one fault on a schedule, then a checker over what the clients recorded.
See nemesis/README.md.

    nemesis.py --broker redis|etcd --fault FAULT [--server-bin PATH] [--etcd-bin PATH]

Prints one JSON summary line on stdout and a table on stderr; exits 0 when
the run completed whatever it found, 1 when the harness failed, 2 on bad
input, 3 when the wall-clock cap (--max-seconds) stopped it, 77 when not
root. Records go to --out (default $CARGO_TARGET_DIR/nemesis-runs/<run>)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import checker  # noqa: E402
import hosts  # noqa: E402
from hosts import HarnessError, Net, ip_of  # noqa: E402
from stores import Etcd, Proc, Redis, poll  # noqa: E402

REPO = HERE.parent
ROOM = "nemesis"
CHAT_PORT = 7000
# fault -> seconds it lasts before the heal (kill-leader: until the restart).
FAULTS = {
    "none": 20,
    "partition-leader-host": 20,
    "partition-replica-host": 20,
    "one-way": 20,
    "pause-leader": 10,
    "kill-leader": 5,
    "kill-server": 20,
}
EXIT_FAILED, EXIT_USAGE, EXIT_CAPPED, EXIT_NOT_ROOT = 1, 2, 3, 77


class Capped(Exception):
    pass


class Interrupted(Exception):
    pass


def log(msg: str) -> None:
    print(f"nemesis: {msg}", file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"nemesis: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "greet" / "target")


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True, choices=["redis", "etcd"])
    p.add_argument("--fault", required=True, choices=list(FAULTS))
    p.add_argument("--server-bin", type=Path, default=target_dir() / "release" / "server")
    p.add_argument("--etcd-bin", type=Path, help="default: built by scripts/etcd.py")
    p.add_argument("--venv", type=Path, help="default: built by nemesis/build.sh")
    p.add_argument("--out", type=Path, help="where the records go")
    p.add_argument("--before", type=float, default=10, help="seconds of writing before the fault")
    p.add_argument("--fault-seconds", type=float, help="how long the fault lasts (default per fault)")
    p.add_argument("--after", type=float, default=10, help="seconds of writing after the heal")
    p.add_argument("--until-promoted", type=float, metavar="SECONDS",
                   help="redis: hold the fault past --fault-seconds until the Sentinels of h2 and h3 name "
                        "another primary, for at most SECONDS from its start (two Sentinels that start a "
                        "failover in the same moment split their votes and retry only after twice "
                        "failover-timeout)")
    p.add_argument("--settle", type=float, default=30, help="at most this long for the servers to agree")
    p.add_argument("--rate", type=float, default=20, help="Says per second per writer")
    p.add_argument("--max-seconds", type=float, default=240, help="hard cap on the run, set-up to clean-up")
    p.add_argument("--no-watchdog", action="store_true",
                   help="start no watchdog: a SIGKILL then leaves the namespaces behind (what the "
                        "watchdog is for, shown by tests/abuse/nemesis.rs)")
    args = p.parse_args()
    if not args.server_bin.is_file() or not os.access(args.server_bin, os.X_OK):
        p.error(f"--server-bin {args.server_bin}: no such executable (cargo build --release --bin server)")
    if args.etcd_bin is not None and not os.access(args.etcd_bin, os.X_OK):
        p.error(f"--etcd-bin {args.etcd_bin}: no such executable")
    for name in ("before", "after", "settle", "rate", "max_seconds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.fault_seconds is None:
        args.fault_seconds = FAULTS[args.fault]
    if args.until_promoted is not None:
        if args.broker != "redis":
            p.error("--until-promoted is for --broker redis (etcd elects without Sentinels)")
        if args.until_promoted < args.fault_seconds:
            p.error("--until-promoted must be at least --fault-seconds")
    return args


def build(argv: list[str], what: str) -> Path:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed: {proc.stderr.strip()[-800:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def stop_clients(clients: list[Proc]) -> None:
    """SIGTERM (a client ends after the call in flight), SIGKILL after 10 s."""
    for c in clients:
        c.signal(signal.SIGTERM)
    for c in clients:
        try:
            c.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            c.kill()


class Run:
    def __init__(self, args: argparse.Namespace, work: Path, out: Path, venv: Path):
        self.args, self.work, self.out, self.venv = args, work, out, venv
        self.net = Net(os.getpid())
        self.servers: dict[str, Proc] = {}
        self.clients: list[Proc] = []
        self.timeline: dict[str, float] = {}
        self.notes: list[str] = []
        self.store = None
        self.unsettled = ""  # why the last settle poll failed

    def note(self, msg: str) -> None:
        self.notes.append(f"{time.time() - self.timeline.get('start', time.time()):6.1f}s {msg}")
        log(msg)

    # --- set-up

    def start_store(self) -> None:
        if self.args.broker == "redis":
            self.store = Redis(self.net, self.work, self.out)
        else:
            self.store = Etcd(self.net, self.work, self.out, str(self.args.etcd_bin))
        self.store.start()
        self.note(f"store up: {self.store.describe()}")

    def addr(self, side: str) -> str:
        return f"{ip_of(self.host_of(side))}:{CHAT_PORT}"

    @staticmethod
    def host_of(side: str) -> str:
        return {"A": "h1", "B": "h2"}[side]

    def start_server(self, side: str) -> None:
        host = self.host_of(side)
        ready = self.work / f"server-{side}.ready"
        ready.unlink(missing_ok=True)
        argv = [str(self.args.server_bin), "--addr", self.addr(side), "--data-dir", str(self.work / f"data-{side}"),
                "--ready-file", str(ready), "--heartbeat", "1s", "--grace", "1s",
                "--broker", self.store.broker_url(host)]
        proc = self.servers.get(side) or Proc(self.net, f"server-{side}", host, argv, self.out)
        self.servers[side] = proc.start()

        def serving() -> bool:
            if not proc.alive():
                raise HarnessError(f"chat server {side} exited: see {proc.log}")
            return ready.is_file()
        poll(f"chat server {side} to serve", 30, serving)

    def client_env(self) -> dict[str, str]:
        """The clients' environment: the generated modules, and no proxy (grpcio honours *_proxy)."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["NEMESIS_GEN"] = str(self.venv / "gen")
        return env

    def start_client(self, role: str, side: str) -> Proc:
        other = "B" if side == "A" else "A"
        log_path = self.out / f"{role}-{side}.jsonl"
        argv = [str(self.venv / "bin" / "python"), str(HERE / "client.py"), role, "--name", side,
                "--addrs", f"{self.addr(side)},{self.addr(other)}", "--room", ROOM, "--log", str(log_path),
                "--run", str(os.getpid()), "--rate", str(self.args.rate)]
        proc = Proc(self.net, f"{role}-{side}-stderr", self.host_of(side), argv, self.out)
        proc.popen = self.net.spawn(proc.host, argv, proc.log, env=self.client_env())
        proc.events = log_path  # its JSON-lines record
        self.clients.append(proc)
        poll(f"{role} {side} to join", 20, lambda: any(e["kind"] == "connected" for e in checker.read_log(log_path)))
        return proc

    # --- the fault

    def inject(self) -> callable:
        """Starts the fault and marks when it has taken effect (what is sent
        from then on meets it); returns what heals it."""
        if isinstance(self.store, Etcd):
            self.store.move_leader("h1")  # the faults on h1 hit the leader's host, as with Redis
        heal = self.start_fault()
        self.timeline["fault"] = time.time()
        return heal

    def start_fault(self) -> callable:
        fault, net = self.args.fault, self.net
        if fault == "none":
            return lambda: None
        if fault in ("partition-leader-host", "partition-replica-host"):
            host = "h1" if fault == "partition-leader-host" else "h2"
            net.isolate(host)
            self.note(f"{host} cut off from the others: {' | '.join(net.rules(host).splitlines()[3:])}")
            return net.heal
        if fault == "one-way":
            net.deafen("h1")
            self.note(f"h1 receives nothing from h2, h3 (it can send): {' | '.join(net.rules('h1').splitlines()[3:])}")
            return net.heal
        if fault == "kill-server":
            self.servers["A"].kill()
            self.note("SIGKILLed chat server A")
            return lambda: self.start_server("A")
        leader = self.store.leader()
        if fault == "pause-leader":
            leader.signal(signal.SIGSTOP)
            self.note(f"SIGSTOPped the leader {leader.name} on {leader.host}")
            return lambda: leader.signal(signal.SIGCONT)
        if fault == "kill-leader":
            leader.kill()
            self.note(f"SIGKILLed the leader {leader.name} on {leader.host}")
            return lambda: self.note(self.store.restart_after_kill(leader))
        raise HarnessError(f"unknown fault {fault}")

    def hold_until_promoted(self, old: str | None, bound: float) -> None:
        """Keeps the fault on until the Sentinels on h2 and h3 name a primary
        other than `old`, for at most `bound` more seconds; notes which."""
        start = time.monotonic()
        try:
            new = poll("the Sentinels of h2, h3 to promote another node", bound,
                       lambda: (x := self.store.primary_addr(("h2", "h3"))) and x != old and x, interval=0.5)
            self.note(f"the Sentinels of h2, h3 promoted {new}; fault held {time.monotonic() - start:.1f}s "
                      f"past --fault-seconds")
        except HarnessError:
            self.note("no promotion by the Sentinels of h2, h3 within --until-promoted; healing")

    # --- the run

    def history(self, side: str) -> dict:
        env = self.client_env()
        argv = self.net.exec_argv(self.host_of(side), [self.venv / "bin" / "python", HERE / "client.py", "history",
                                                       "--addr", self.addr(side), "--room", ROOM])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
            return json.loads(proc.stdout)
        except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
            return {"error": f"history client: {e}"}

    def settled(self) -> dict | None:
        """Both Histories, once they agree and every reader has reached their end."""
        h = {side: self.history(side) for side in ("A", "B")}
        errors = [f"History of {side}: {x['error']}" for side, x in h.items() if "error" in x]
        if errors:
            self.unsettled = "; ".join(errors)
            return None
        if h["A"]["messages"] != h["B"]["messages"] or h["A"]["epoch"] != h["B"]["epoch"]:
            self.unsettled = (f"Histories differ: A {len(h['A']['messages'])} messages (epoch {h['A']['epoch']}), "
                              f"B {len(h['B']['messages'])} (epoch {h['B']['epoch']})")
            return None
        last = h["A"]["messages"][-1][0] if h["A"]["messages"] else 0
        for reader in (c for c in self.clients if c.name.startswith("reader")):
            msgs = [e for e in checker.read_log(reader.events) if e["kind"] == "msg"]
            if not msgs or msgs[-1]["seq"] < last:
                self.unsettled = f"{reader.name} at seq {msgs[-1]['seq'] if msgs else None}, History at {last}"
                return None
        return h

    def go(self) -> dict:
        a = self.args
        self.timeline["start"] = time.time()
        stale = hosts.remove_stale()
        if stale:
            self.note(f"removed stale namespaces {' '.join(stale)}")
        self.net.create()
        self.start_store()
        for side in ("A", "B"):
            self.start_server(side)
        readers = [self.start_client("reader", s) for s in ("A", "B")]
        writers = [self.start_client("writer", s) for s in ("A", "B")]
        self.timeline["writing"] = time.time()
        time.sleep(a.before)  # a fixed phase of the schedule, not a wait for a condition
        old_primary = self.store.primary_addr() if a.until_promoted else None
        heal = self.inject()
        time.sleep(a.fault_seconds)
        if a.until_promoted:
            self.hold_until_promoted(old_primary, a.until_promoted - a.fault_seconds)
        heal()
        self.timeline["heal"] = time.time()
        self.note(f"healed ({a.fault}); store: {self.store.describe()}")
        time.sleep(a.after)
        self.timeline["stop_writing"] = time.time()
        stop_clients(writers)
        histories = None
        deadline = time.monotonic() + a.settle
        while histories is None and time.monotonic() < deadline:
            histories = self.settled()
            if histories is None:
                time.sleep(0.5)  # polling interval
        settled = histories is not None
        self.timeline["end"] = time.time()
        self.note("servers agree, readers caught up" if settled
                  else f"not settled after {a.settle:.0f}s: {self.unsettled}")
        stop_clients(readers)
        if histories is None:
            histories = {side: self.history(side) for side in ("A", "B")}
        (self.out / "histories.json").write_text(json.dumps(histories))
        summary = checker.check(
            writers={s: checker.read_log(self.out / f"writer-{s}.jsonl") for s in ("A", "B")},
            readers={s: checker.read_log(self.out / f"reader-{s}.jsonl") for s in ("A", "B")},
            histories=histories, servers={s: self.addr(s) for s in ("A", "B")}, timeline=self.timeline)
        t0 = self.timeline["writing"]
        return dict({"broker": a.broker, "fault": a.fault, "settled": settled,
                     "timeline_s": {k: round(v - t0, 2) for k, v in self.timeline.items()},
                     "notes": self.notes, "records": str(self.out)}, **summary)

    def clean(self) -> None:
        for c in self.clients:
            c.signal(signal.SIGTERM)
        hosts.remove_namespaces(self.net.names())


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("nemesis: must run as root (it makes network namespaces and iptables rules); not run",
              file=sys.stderr)
        return EXIT_NOT_ROOT
    for tool in ("ip", "iptables", "curl", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"nemesis: {tool} not found (scripts/ensure-deps.sh installs it)", file=sys.stderr)
            return EXIT_FAILED
    try:
        venv = args.venv or build([str(HERE / "build.sh")], "nemesis/build.sh")
        if args.broker == "etcd" and args.etcd_bin is None:
            args.etcd_bin = build([sys.executable, str(REPO / "scripts" / "etcd.py")], "scripts/etcd.py") / "etcd"
    except (HarnessError, subprocess.TimeoutExpired) as e:
        print(f"nemesis: {e}", file=sys.stderr)
        return EXIT_FAILED
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or target_dir() / "nemesis-runs" / f"{args.broker}-{args.fault}-{stamp}-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nemesis-"))

    # The watchdog: whatever ends this process closes the pipe's write end, which only it holds.
    read_end, write_end = os.pipe()
    if not args.no_watchdog:
        os.set_inheritable(read_end, True)
        subprocess.Popen([sys.executable, str(HERE / "watchdog.py"), str(read_end), f"nm{os.getpid()}-", str(work)],
                         pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL)  # stdout is the summary's alone
    os.close(read_end)

    def interrupted(sig, _frame):
        raise Interrupted(signal.Signals(sig).name)

    def capped(_sig, _frame):
        raise Capped()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    signal.signal(signal.SIGALRM, capped)
    signal.setitimer(signal.ITIMER_REAL, args.max_seconds)
    run = Run(args, work, out, venv)
    code = 0
    try:
        summary = run.go()
        signal.setitimer(signal.ITIMER_REAL, 0)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, separators=(",", ":")), flush=True)
        log(f"{args.broker} / {args.fault} (records in {out}):\n" + checker.table(summary))
    except Capped:
        log(f"gave up: the run passed its cap of {args.max_seconds:.0f}s (records in {out})")
        code = EXIT_CAPPED
    except Interrupted as e:
        log(f"interrupted by {e}; cleaning up")
        code = EXIT_FAILED
    except HarnessError as e:
        log(f"harness failed: {e} (records in {out})")
        code = EXIT_FAILED
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up itself is not interrupted
        run.clean()
        shutil.rmtree(work, ignore_errors=True)
        os.close(write_end)
    return code


if __name__ == "__main__":
    sys.exit(main())
