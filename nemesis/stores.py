"""The stores the chat's broker runs on, laid out on the nemesis's hosts, and
the one question every fault asks of them: which process is the leader.

- Redis (`--broker redis`): h1 holds the primary, replica R1 and Sentinel 1;
  h2 replica R2 and Sentinel 2; h3 Sentinel 3. Persistence on (appendonly),
  Sentinels with quorum 2, down after 3 s (as tests/it/common/chat.rs and
  scripts/chat-common.sh start it). The leader is the node the Sentinels
  name as primary.
- etcd (`--broker etcd`): one member on each host, a 3-node cluster; its
  leader is moved to h1 before the run, so the leader faults hit the host
  that chat server A and its clients share with it. The leader is found,
  and moved, through etcd's JSON gateway on the client port
  (/v3/maintenance/status, /v3/maintenance/transfer-leadership), with curl
  inside a host's namespace.

Python standard library only."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from hosts import HOSTS, HarnessError, Net, ip_of


def poll(what: str, bound: float, check, interval: float = 0.1):
    """check() until it returns something truthy, for at most `bound` seconds."""
    deadline = time.monotonic() + bound
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise HarnessError(f"gave up after {bound:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A long-running process in a host, restartable with the same command line."""

    def __init__(self, net: Net, name: str, host: str, argv: list[str], logs: Path):
        self.net, self.name, self.host, self.argv = net, name, host, argv
        self.log = logs / f"{name}.log"
        self.popen: subprocess.Popen | None = None
        self.addr: str | None = None  # host:port, for the stores' nodes

    def start(self, argv: list[str] | None = None) -> "Proc":
        if argv is not None:
            self.argv = argv
        self.popen = self.net.spawn(self.host, self.argv, self.log)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen is not None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.popen.wait()


class Redis:
    MASTER = "chat"
    SENTINEL_PORT = 26379

    def __init__(self, net: Net, work: Path, logs: Path):
        self.net, self.work, self.logs = net, work, logs
        self.nodes: dict[str, Proc] = {}
        self.sentinels: list[Proc] = []

    def _node_argv(self, name: str, host: str, port: int, replica_of: str | None) -> list[str]:
        d = self.work / f"redis-{name}"
        d.mkdir(exist_ok=True)
        argv = ["redis-server", "--bind", ip_of(host), "--port", str(port), "--dir", str(d), "--appendonly", "yes",
                "--save", "", "--protected-mode", "no", "--daemonize", "no"]
        if replica_of:
            argv += ["--replicaof"] + replica_of.split(":")
        return argv

    def cli(self, host: str, addr: str, *args: str, timeout: float = 5) -> str:
        ip, port = addr.split(":")
        return self.net.run(host, ["timeout", str(timeout), "redis-cli", "-h", ip, "-p", port, *args],
                            timeout=timeout + 5, check=False)

    def start(self) -> None:
        primary = f"{ip_of('h1')}:6379"
        layout = [("primary", "h1", 6379, None), ("r1", "h1", 6380, primary), ("r2", "h2", 6379, primary)]
        for name, host, port, of in layout:
            self.nodes[name] = Proc(self.net, f"redis-{name}", host, self._node_argv(name, host, port, of),
                                    self.logs).start()
            self.nodes[name].addr = f"{ip_of(host)}:{port}"
        poll("the Redis primary", 20, lambda: "PONG" in self.cli("h1", primary, "ping"))
        for name in ("r1", "r2"):
            node = self.nodes[name]
            poll(f"Redis {name} to sync", 30,
                 lambda: "master_link_status:up" in self.cli(node.host, node.addr, "info", "replication"))
        for i, host in enumerate(HOSTS, start=1):
            conf = self.work / f"sentinel{i}.conf"
            conf.write_text(
                f"port {self.SENTINEL_PORT}\nbind {ip_of(host)}\ndir {self.work}\nprotected-mode no\n"
                f"sentinel monitor {self.MASTER} {ip_of('h1')} 6379 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 3000\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n")
            self.sentinels.append(Proc(self.net, f"sentinel{i}", host, ["redis-server", str(conf), "--sentinel"],
                                       self.logs).start())
        for host in HOSTS:
            def ready():
                out = self.cli(host, f"{ip_of(host)}:{self.SENTINEL_PORT}", "sentinel", "master", self.MASTER).split()
                info = dict(zip(out[::2], out[1::2]))
                return info.get("num-slaves") == "2" and info.get("num-other-sentinels") == "2"
            poll(f"Sentinel on {host} to know the replicas and the other Sentinels", 30, ready)
        if self.leader() is not self.nodes["primary"]:
            raise HarnessError("the Sentinels do not name the primary on h1")

    def broker_url(self, own: str) -> str:
        # The Sentinel on the server's own host first, then the others.
        order = [own] + [h for h in HOSTS if h != own]
        return "redis+sentinel://" + ",".join(f"{ip_of(h)}:{self.SENTINEL_PORT}" for h in order) + f"/{self.MASTER}"

    def primary_addr(self, hosts=HOSTS) -> str | None:
        """The primary as most of the asked Sentinels name it."""
        votes = {}
        for host in hosts:
            out = self.cli(host, f"{ip_of(host)}:{self.SENTINEL_PORT}", "sentinel", "get-master-addr-by-name",
                           self.MASTER, timeout=2).split()
            if len(out) == 2:
                addr = f"{out[0]}:{out[1]}"
                votes[addr] = votes.get(addr, 0) + 1
        return max(votes, key=votes.get) if votes else None

    def leader(self) -> Proc:
        addr = self.primary_addr()
        for node in self.nodes.values():
            if node.addr == addr:
                return node
        raise HarnessError(f"the Sentinels name {addr} as primary, which is none of ours")

    def restart_after_kill(self, node: Proc) -> str:
        """Restarts a killed node from its data, as a supervisor that asks the
        Sentinels would: as a replica of whichever node they promoted (bounded
        wait for the failover), else as it was."""
        try:
            new = poll("the Sentinels to promote another node", 15,
                       lambda: (a := self.primary_addr(("h2", "h3"))) and a != node.addr and a)
        except HarnessError:
            new = None
        argv = [a for a in node.argv]
        if "--replicaof" in argv:
            i = argv.index("--replicaof")
            del argv[i:i + 3]
        if new:
            argv += ["--replicaof"] + new.split(":")
        node.start(argv)
        return f"restarted {node.name} as " + (f"a replica of {new}" if new else "it was (no failover seen)")

    def describe(self) -> dict:
        return {"primary": self.primary_addr()}


class Etcd:
    CLIENT_PORT, PEER_PORT = 2379, 2380

    def __init__(self, net: Net, work: Path, logs: Path, binary: str):
        self.net, self.work, self.logs, self.binary = net, work, logs, binary
        self.members: dict[str, Proc] = {}
        self.ids: dict[str, str] = {}  # host -> member id (decimal string, as the gateway prints it)

    def url(self, host: str, port: int) -> str:
        return f"http://{ip_of(host)}:{port}"

    def gateway(self, host: str, path: str, body: dict, timeout: float = 2) -> dict | None:
        out = self.net.run(host, ["curl", "-s", "-m", str(timeout), "-X", "POST", self.url(host, self.CLIENT_PORT) + path,
                                  "-d", json.dumps(body)], timeout=timeout + 5, check=False)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            return None

    def start(self) -> None:
        cluster = ",".join(f"e{i}={self.url(h, self.PEER_PORT)}" for i, h in enumerate(HOSTS, start=1))
        for i, host in enumerate(HOSTS, start=1):
            argv = [self.binary, "--name", f"e{i}", "--data-dir", str(self.work / f"etcd-e{i}"),
                    "--listen-client-urls", self.url(host, self.CLIENT_PORT),
                    "--advertise-client-urls", self.url(host, self.CLIENT_PORT),
                    "--listen-peer-urls", self.url(host, self.PEER_PORT),
                    "--initial-advertise-peer-urls", self.url(host, self.PEER_PORT),
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", self.net.prefix + "etcd",
                    "--heartbeat-interval", "100", "--election-timeout", "1000",
                    "--auto-compaction-mode=revision", "--auto-compaction-retention=100000"]
            self.members[host] = Proc(self.net, f"etcd-e{i}", host, argv, self.logs).start()
        for host in HOSTS:
            status = poll(f"etcd on {host} to report a leader", 30,
                          lambda: (s := self.gateway(host, "/v3/maintenance/status", {})) and s.get("leader") and s)
            self.ids[host] = status["header"]["member_id"]
        self.move_leader("h1")

    def broker_url(self, own: str) -> str:
        order = [own] + [h for h in HOSTS if h != own]
        return "etcd://" + ",".join(f"{ip_of(h)}:{self.CLIENT_PORT}" for h in order)

    def leader_host(self) -> str | None:
        """The leader as most reachable members name it."""
        votes = {}
        for host in HOSTS:
            s = self.gateway(host, "/v3/maintenance/status", {}, timeout=1)
            if s and s.get("leader"):
                votes[s["leader"]] = votes.get(s["leader"], 0) + 1
        if not votes:
            return None
        leader = max(votes, key=votes.get)
        return next((h for h, i in self.ids.items() if i == leader), None)

    def move_leader(self, target: str) -> None:
        """Transfers the leadership to `target`, asking again while it has not
        moved (a member that just rejoined must catch up before it can lead)."""
        def moved() -> bool:
            current = self.leader_host()
            if current is not None and current != target:
                self.gateway(current, "/v3/maintenance/transfer-leadership", {"targetID": self.ids[target]},
                             timeout=5)
            return current == target
        poll(f"the etcd leader to move to {target}", 30, moved, interval=0.5)

    def leader(self) -> Proc:
        host = poll("an etcd leader", 20, self.leader_host)
        return self.members[host]

    def restart_after_kill(self, member: Proc) -> str:
        """Restarts a killed member from its data dir (it rejoins the cluster it was in)."""
        member.start()
        return f"restarted {member.name} from its data"

    def describe(self) -> dict:
        return {"leader": self.leader_host()}
