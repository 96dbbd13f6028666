"""The nemesis's hosts: Linux network namespaces h1, h2, h3 on a bridge that
lives in a namespace of its own, so nothing is added to the root namespace
(no interface, no route, no rule). Their addresses (SUBNET) exist only in
those namespaces and reach nothing but each other. Namespaces are named
`nm<harness pid>-<name>`, so a later run can tell a stale one (its owner is
dead) and remove it. Partitions are iptables DROP rules inside a host's
namespace. Python standard library only; needs root, ip and iptables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

SUBNET = "10.231.0"
HOSTS = ("h1", "h2", "h3")
NAME = re.compile(r"^nm(\d+)-(\w+)$")


class HarnessError(Exception):
    """The harness itself failed (not the system under test)."""


def sh(argv: list[str], timeout: float = 30, check: bool = True) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{' '.join(argv)}: timed out after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout


def ip_of(host: str) -> str:
    return f"{SUBNET}.{HOSTS.index(host) + 1}"


def namespaces() -> list[str]:
    out = sh(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    out = sh(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def remove_namespaces(names: list[str], bound: float = 10) -> None:
    """SIGKILLs every process in the namespaces, waits (bounded) until they
    are gone, then deletes the namespaces. Safe to call twice."""
    for ns in names:
        for pid in pids_in(ns):
            try:
                os.kill(pid, signal.SIGCONT)  # a stopped process dies of SIGKILL too, but be plain
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + bound
    while any(pids_in(ns) for ns in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    for ns in names:
        sh(["ip", "netns", "del", ns], check=False)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Removes the namespaces of earlier runs whose harness is dead; returns their names."""
    stale = [ns for ns in namespaces() if (m := NAME.match(ns)) and not alive(int(m.group(1)))]
    if stale:
        remove_namespaces(stale)
    return stale


class Net:
    """The bridge namespace and the three hosts; run() starts a process in one."""

    def __init__(self, owner: int):
        self.prefix = f"nm{owner}-"
        self.bridge = self.prefix + "br"
        self.ns = {h: self.prefix + h for h in HOSTS}

    def names(self) -> list[str]:
        return [self.ns[h] for h in HOSTS] + [self.bridge]

    def create(self) -> None:
        sh(["ip", "netns", "add", self.bridge])
        sh(["ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.bridge, "link", "set", "br0", "up"])
        for i, h in enumerate(HOSTS, start=1):
            ns = self.ns[h]
            sh(["ip", "netns", "add", ns])
            sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{i}", "netns", self.bridge])
            sh(["ip", "-n", ns, "addr", "add", f"{ip_of(h)}/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", self.bridge, "link", "set", f"p{i}", "master", "br0"])
            sh(["ip", "-n", self.bridge, "link", "set", f"p{i}", "up"])

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host]] + [str(a) for a in argv]

    def run(self, host: str, argv: list[str], timeout: float = 30, check: bool = True) -> str:
        return sh(self.exec_argv(host, argv), timeout, check)

    def spawn(self, host: str, argv: list[str], log_path, env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "ab")
        try:
            return subprocess.Popen(self.exec_argv(host, argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env)
        finally:
            log.close()

    # Faults: iptables rules in one host's namespace; heal() flushes them all.

    def isolate(self, host: str) -> None:
        """Drops every packet between `host` and the others, both ways."""
        for other in HOSTS:
            if other != host:
                self.run(host, ["iptables", "-A", "INPUT", "-s", ip_of(other), "-j", "DROP"])
                self.run(host, ["iptables", "-A", "OUTPUT", "-d", ip_of(other), "-j", "DROP"])

    def deafen(self, host: str) -> None:
        """`host` receives nothing from the others; what it sends still leaves."""
        for other in HOSTS:
            if other != host:
                self.run(host, ["iptables", "-A", "INPUT", "-s", ip_of(other), "-j", "DROP"])

    def heal(self) -> None:
        for h in HOSTS:
            self.run(h, ["iptables", "-F"])

    def rules(self, host: str) -> str:
        return self.run(host, ["iptables", "-S"])
