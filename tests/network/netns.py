"""Several hosts on one machine: a bridge in the root namespace, a network namespace per node.

The hub (broker and edge-server) runs in the root namespace on the bridge's address; each
node's processes run in its own namespace, with its own address on the bridge, so that
what the nodes say about where they are reachable is tested as on a real site. Killing a
node's processes, or cutting its cable (its link down), is what a crash or a network
failure does. Needs root (`ip netns`), as CI has.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IP = "ip"
# 10.213.<n>.0/24: private, and only ever on interfaces these tests create.
SUBNET = "10.213"


class NetnsError(RuntimeError):
    """The namespaces could not be made (not root, or no iproute2)."""


def _ip(*args: str) -> None:
    result = subprocess.run([IP, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _links() -> str:
    return subprocess.run([IP, "-o", "link"], capture_output=True, text=True).stdout


@dataclass
class Host:
    """A node's namespace: its name, address, and the processes started in it."""

    site: Site
    name: str
    address: str
    veth: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def popen(
        self, args: Sequence[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[str]:
        """Start `args` inside the namespace, in a process group of its own, output to `log`."""
        handle = log.open("a")
        process = subprocess.Popen(
            [IP, "netns", "exec", self.name, *args],
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        handle.close()
        self.processes.append(process)
        return process

    def kill(self) -> None:
        """SIGKILL every process started here, children included: a crash."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM every process started here and wait for it (SIGKILL if it hangs)."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def cable(self, connected: bool) -> None:
        """Plug or unplug the node's cable (its veth in the root namespace)."""
        _ip("link", "set", self.veth, "up" if connected else "down")


class Site:
    """A bridge with the hub's address and the nodes' namespaces on it."""

    def __init__(self) -> None:
        # One subnet per test run: the bridge's name says which are taken.
        taken = _links()
        index = next(i for i in range(1, 250) if f"pyebr{i}:" not in taken)
        self.index = index
        self.bridge = f"pyebr{index}"
        self.hub_address = f"{SUBNET}.{index}.1"
        self.hosts: list[Host] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
        except NetnsError as exc:
            raise NetnsError(f"{exc} (the multi-node tests need root and iproute2)") from exc
        # A fixed address: a bridge without one takes its ports' lowest, which changes as
        # nodes are plugged in, and the nodes' ARP entries for the hub then point nowhere
        # for half a minute (a connection from a node made just before times out).
        _ip("link", "set", self.bridge, "address", f"02:00:0a:d5:{index:02x}:01")
        _ip("addr", "add", f"{self.hub_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self) -> Host:
        """A new namespace plugged into the bridge with the next address."""
        number = len(self.hosts) + 1
        name = f"pye{self.index}n{number}"
        veth = f"pye{self.index}v{number}"
        address = f"{SUBNET}.{self.index}.{10 + number}"
        _ip("netns", "add", name)
        host = Host(self, name, address, veth)
        self.hosts.append(host)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Stop every process and remove the namespaces and the bridge."""
        for host in self.hosts:
            host.kill()
            subprocess.run([IP, "link", "del", host.veth], capture_output=True)
            subprocess.run([IP, "netns", "del", host.name], capture_output=True)
        subprocess.run([IP, "link", "del", self.bridge], capture_output=True)
