"""A small two-node "cluster" built from network namespaces, for data-plane tests.

Nothing here touches the host's own namespace: every link is created inside a
namespace of ours (veth peers are created straight into their target namespace),
every sysctl is set with `ip netns exec`, and every name carries a per-run prefix
so `Cluster.destroy()` can find and remove exactly what it made.

    client 192.168.50.100/24 (+192.168.60.100/24)
       |                routes 10.96.0.0/16, 203.0.113.0/24 via 192.168.50.10
    lan: bridge br-lan 192.168.50.1/24, the nodes' default gateway: routes only the
         pod subnets, answers "unreachable" for the rest
       |                                   |
    node1 up0 192.168.50.10/24          node2 up0 192.168.50.11/24
          (+192.168.60.10/24, outside      br0 10.244.2.1/24
           --nodeport-addresses)           pod4 10.244.2.2, pod5 10.244.2.3
          br0 10.244.1.1/24
          pod1 10.244.1.2, pod2 10.244.1.3, pod3 10.244.1.4

node1 runs kproxy; node2 is a plain router for its pods. Pod subnets are routed
between the nodes via their uplink IPs. The lab does not load br_netfilter, but needs it, as
any Kubernetes node does: a pod reaching a Service that picks another pod on the same bridge
gets the reply over the bridge, past node1's conntrack, unless bridged IPv4 passes netfilter.
This host's kernel has it built in; tests/vm loads the module in Debian's kernels.

Every link is dual-stack: the same picture in IPv6 (constants ending in 6, `Pod.ip6`):

    client fd00:50::100/64 (+fd00:60::100/64, deprecated: never a default source)
                        routes fd00:96::/112, fd00:203::/64 via fd00:50::10
    lan br-lan fd00:50::1/64 (routes fd00:244:1::/64, fd00:244:2::/64 only)
    node1 up0 fd00:50::10/64 (+fd00:60::10/64 ditto)   node2 up0 fd00:50::11/64
          br0 fd00:244:1::1/64                         br0 fd00:244:2::1/64
          pod1..3 fd00:244:1::2..4                     pod4, pod5 fd00:244:2::2..3

IPv6 addresses are added without DAD (and accept_dad=0 in every namespace) so they are
usable at once; nobody in the lab accepts ICMPv6 redirects; nodes and the lan forward.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers.py"

# Inside a qemu VM without KVM (tests/vm sets this), Python runs 10-20 times slower: waits
# for our own processes (servers starting, kproxy running) are scaled by it.
TIME_SCALE = float(os.environ.get("KPROXY_VM_TIME_SCALE") or 1)

NODE1_IP = "192.168.50.10"
NODE1_OTHER_IP = "192.168.60.10"  # a node address outside 192.168.50.0/24
NODE2_IP = "192.168.50.11"
LAN_GW = "192.168.50.1"
CLIENT_IP = "192.168.50.100"
CLIENT_OTHER_IP = "192.168.60.100"
NODE1_BRIDGE_IP = "10.244.1.1"
NODE2_BRIDGE_IP = "10.244.2.1"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
EXTERNAL_RANGE = "203.0.113.0/24"

# IPv6, one per IPv4 constant above (the lab is dual-stack).
NODE1_IP6 = "fd00:50::10"
NODE1_OTHER_IP6 = "fd00:60::10"  # a node address outside fd00:50::/64
NODE2_IP6 = "fd00:50::11"
LAN_GW6 = "fd00:50::1"
CLIENT_IP6 = "fd00:50::100"
CLIENT_OTHER_IP6 = "fd00:60::100"
NODE1_BRIDGE_IP6 = "fd00:244:1::1"
NODE2_BRIDGE_IP6 = "fd00:244:2::1"
NODE1_POD_CIDR6 = "fd00:244:1::/64"
NODE2_POD_CIDR6 = "fd00:244:2::/64"
CLUSTER_CIDR6 = "fd00:244::/32"
SERVICE_CIDR6 = "fd00:96::/112"
EXTERNAL_RANGE6 = "fd00:203::/64"

# Server ports every pod listens on (TCP and UDP).
SERVER_PORTS = (8080, 8081)


@dataclass(frozen=True)
class Pod:
    name: str  # short name, e.g. "pod1": what its server answers with
    ns: str  # namespace name
    node: str  # "node1" | "node2"
    ip: str
    veth: str  # the node-side veth name
    ip6: str = ""  # its IPv6 address (the lab gives every pod one)

    def addr(self, family: int = 4) -> str:
        """The pod's address of that IP family (4 or 6)."""
        return self.ip6 if family == 6 else self.ip


def sh(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Cluster:
    prefix: str = field(default_factory=lambda: f"kpt-{secrets.token_hex(3)}-")
    pods: dict[str, Pod] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    workdir: Path | None = None

    # -- names -------------------------------------------------------------
    def ns(self, short: str) -> str:
        return self.prefix + short

    @property
    def node1(self) -> str:
        return self.ns("node1")

    @property
    def node2(self) -> str:
        return self.ns("node2")

    @property
    def client(self) -> str:
        return self.ns("client")

    @property
    def lan(self) -> str:
        return self.ns("lan")

    # -- running things inside namespaces ------------------------------------
    def run(self, short_or_ns: str, *args: str, check: bool = True, timeout: float = 20):
        ns = short_or_ns if short_or_ns.startswith(self.prefix) else self.ns(short_or_ns)
        return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)

    def ip(self, short: str, *args: str) -> None:
        sh("ip", "-n", self.ns(short), *args)

    def sysctl(self, short: str, key: str, value: str) -> None:
        self.run(short, "sysctl", "-q", "-w", f"{key}={value}")

    def sysctls(self, short: str, settings: dict[str, str]) -> None:
        """Several sysctls inside one namespace, in one command."""
        self.run(short, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items()))

    def addr6(self, short: str, cidr: str, dev: str, secondary: bool = False) -> None:
        """An IPv6 address, usable at once (no duplicate address detection). A secondary
        one is deprecated (preferred_lft 0): it receives and can be bound to, but is never
        chosen as a source address, like an IPv4 secondary address."""
        extra = ("preferred_lft", "0") if secondary else ()
        self.ip(short, "-6", "addr", "add", cidr, "dev", dev, "nodad", *extra)

    def spawn(self, short: str, *args: str, log: Path) -> subprocess.Popen:
        out = open(log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(short), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self.processes.append(proc)
        return proc

    # -- building ------------------------------------------------------------
    def _add_ns(self, short: str) -> None:
        name = self.ns(short)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.ip(short, "link", "set", "lo", "up")
        # Before any link exists, so every link inherits them: IPv6 addresses (link-local
        # ones included) skip DAD and are usable at once; ICMPv6 redirects are ignored, so
        # a route "via node1" stays via node1 (the IPv4 side sends no redirects at all).
        self.sysctls(short, {
            "net.ipv6.conf.all.accept_dad": "0",
            "net.ipv6.conf.default.accept_dad": "0",
            "net.ipv6.conf.all.accept_redirects": "0",
            "net.ipv6.conf.default.accept_redirects": "0",
        })

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        # Created inside ns_a with its peer directly in ns_b: never in the host namespace.
        sh("ip", "-n", self.ns(ns_a), "link", "add", name_a, "type", "veth",
           "peer", "name", name_b, "netns", self.ns(ns_b))
        self.ip(ns_a, "link", "set", name_a, "up")
        self.ip(ns_b, "link", "set", name_b, "up")

    def _node(self, short: str, uplink_ip: str, bridge_ip: str, lan_port: str,
              uplink_ip6: str, bridge_ip6: str) -> None:
        self._add_ns(short)
        # Set before the links exist, so they inherit "default". No redirects: the client
        # reaches node1 for addresses node1 routes back out of the same link (an
        # endpoint-less Service), and each redirect resets the per-peer ICMP rate limit,
        # which would swallow the "port unreachable" of kproxy's reject.
        for conf in ("all", "default"):
            self.sysctl(short, f"net.ipv4.conf.{conf}.rp_filter", "0")
            self.sysctl(short, f"net.ipv4.conf.{conf}.send_redirects", "0")
        self.sysctl(short, "net.ipv4.ip_forward", "1")
        # IPv6 has no send_redirects switch; an ICMPv6 rate limit of 0 keeps the redirects
        # it sends from using up the per-peer budget of the "unreachable"s (as above).
        self.sysctls(short, {"net.ipv6.conf.all.forwarding": "1", "net.ipv6.icmp.ratelimit": "0"})
        self._veth(short, "up0", "lan", lan_port)
        self.ip("lan", "link", "set", lan_port, "master", "br-lan")
        self.ip(short, "addr", "add", f"{uplink_ip}/24", "dev", "up0")
        self.addr6(short, f"{uplink_ip6}/64", "up0")
        # No multicast snooping: neighbour discovery is multicast and must always flood.
        self.ip(short, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        self.ip(short, "addr", "add", f"{bridge_ip}/24", "dev", "br0")
        self.addr6(short, f"{bridge_ip6}/64", "br0")
        self.ip(short, "link", "set", "br0", "up")
        self.ip(short, "route", "add", "default", "via", LAN_GW)
        self.ip(short, "-6", "route", "add", "default", "via", LAN_GW6)

    def _pod(self, name: str, node: str, ip: str, gw: str, ip6: str, gw6: str) -> None:
        self._add_ns(name)
        veth = f"v{name}"
        self._veth(node, veth, name, "eth0")
        self.ip(node, "link", "set", veth, "master", "br0")
        # As kubelet does, so a pod can reach itself through a Service.
        self.run(node, "bridge", "link", "set", "dev", veth, "hairpin", "on")
        self.ip(name, "addr", "add", f"{ip}/24", "dev", "eth0")
        self.ip(name, "route", "add", "default", "via", gw)
        self.addr6(name, f"{ip6}/64", "eth0")
        self.ip(name, "-6", "route", "add", "default", "via", gw6)
        self.pods[name] = Pod(name=name, ns=self.ns(name), node=node, ip=ip, veth=veth, ip6=ip6)

    def build(self) -> Cluster:
        self._add_ns("lan")
        self.ip("lan", "link", "add", "br-lan", "type", "bridge", "mcast_snooping", "0")
        self.ip("lan", "addr", "add", f"{LAN_GW}/24", "dev", "br-lan")
        self.addr6("lan", f"{LAN_GW6}/64", "br-lan")
        self.ip("lan", "link", "set", "br-lan", "up")
        # The lan's gateway routes nothing: it answers "unreachable" for anything off the
        # lan, so a silent drop seen by a test is kproxy's, not the lab's. (IPv6 likewise:
        # no default route, so ICMPv6 "no route"; no rate limit on those.)
        self.sysctl("lan", "net.ipv4.ip_forward", "1")
        self.sysctls("lan", {"net.ipv6.conf.all.forwarding": "1", "net.ipv6.icmp.ratelimit": "0"})

        self._node("node1", NODE1_IP, NODE1_BRIDGE_IP, "p-node1", NODE1_IP6, NODE1_BRIDGE_IP6)
        self.ip("node1", "addr", "add", f"{NODE1_OTHER_IP}/24", "dev", "up0")
        self.addr6("node1", f"{NODE1_OTHER_IP6}/64", "up0", secondary=True)
        self._node("node2", NODE2_IP, NODE2_BRIDGE_IP, "p-node2", NODE2_IP6, NODE2_BRIDGE_IP6)
        self.ip("node1", "route", "add", "10.244.2.0/24", "via", NODE2_IP)
        self.ip("lan", "route", "add", "10.244.1.0/24", "via", NODE1_IP)
        self.ip("lan", "route", "add", "10.244.2.0/24", "via", NODE2_IP)
        self.ip("node2", "route", "add", "10.244.1.0/24", "via", NODE1_IP)
        self.ip("node1", "-6", "route", "add", NODE2_POD_CIDR6, "via", NODE2_IP6)
        self.ip("lan", "-6", "route", "add", NODE1_POD_CIDR6, "via", NODE1_IP6)
        self.ip("lan", "-6", "route", "add", NODE2_POD_CIDR6, "via", NODE2_IP6)
        self.ip("node2", "-6", "route", "add", NODE1_POD_CIDR6, "via", NODE1_IP6)

        self._add_ns("client")
        self._veth("client", "eth0", "lan", "p-client")
        self.ip("lan", "link", "set", "p-client", "master", "br-lan")
        self.ip("client", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        self.ip("client", "addr", "add", f"{CLIENT_OTHER_IP}/24", "dev", "eth0")
        self.ip("client", "route", "add", SERVICE_CIDR, "via", NODE1_IP)
        self.ip("client", "route", "add", EXTERNAL_RANGE, "via", NODE1_IP)
        self.addr6("client", f"{CLIENT_IP6}/64", "eth0")
        self.addr6("client", f"{CLIENT_OTHER_IP6}/64", "eth0", secondary=True)
        self.ip("client", "-6", "route", "add", SERVICE_CIDR6, "via", NODE1_IP6)
        self.ip("client", "-6", "route", "add", EXTERNAL_RANGE6, "via", NODE1_IP6)

        self._pod("pod1", "node1", "10.244.1.2", NODE1_BRIDGE_IP, "fd00:244:1::2", NODE1_BRIDGE_IP6)
        self._pod("pod2", "node1", "10.244.1.3", NODE1_BRIDGE_IP, "fd00:244:1::3", NODE1_BRIDGE_IP6)
        self._pod("pod3", "node1", "10.244.1.4", NODE1_BRIDGE_IP, "fd00:244:1::4", NODE1_BRIDGE_IP6)
        self._pod("pod4", "node2", "10.244.2.2", NODE2_BRIDGE_IP, "fd00:244:2::2", NODE2_BRIDGE_IP6)
        self._pod("pod5", "node2", "10.244.2.3", NODE2_BRIDGE_IP, "fd00:244:2::3", NODE2_BRIDGE_IP6)
        self._wait_ipv6_ready()
        return self

    def _wait_ipv6_ready(self, timeout: float = 5) -> None:
        """Bounded: no IPv6 address anywhere in the lab is still tentative (DAD is off, so
        this normally returns at once; link-local addresses appear with carrier)."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [ns for ns in self.namespaces
                       if sh("ip", "-n", ns, "-6", "addr", "show", "tentative").stdout.strip()]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"IPv6 addresses still tentative after {timeout}s in {pending}")
            time.sleep(0.05)

    def start_servers(self, workdir: Path, timeout: float = 10) -> None:
        """One echo server per pod on SERVER_PORTS (TCP and UDP); wait until all listen."""
        ready_files = []
        for pod in self.pods.values():
            ready = workdir / f"{pod.name}.ready"
            args = [sys.executable, str(SERVERS), "--name", pod.name, "--ready-file", str(ready)]
            for port in SERVER_PORTS:
                args += ["--tcp", str(port), "--udp", str(port)]
            self.spawn(pod.name, *args, log=workdir / f"{pod.name}.server.log")
            ready_files.append(ready)
        timeout *= TIME_SCALE
        deadline = time.monotonic() + timeout
        while not all(f.exists() for f in ready_files):
            if time.monotonic() > deadline:
                missing = [f.name for f in ready_files if not f.exists()]
                raise RuntimeError(f"servers not listening after {timeout}s: {missing}")
            time.sleep(0.05)

    # -- tearing down ----------------------------------------------------------
    def stop(self, proc: subprocess.Popen, timeout: float = 5) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=timeout)

    def destroy(self) -> None:
        for proc in self.processes:
            try:
                self.stop(proc)
            except Exception as exc:  # noqa: BLE001 - keep going: namespaces must go regardless
                print(f"could not stop pid {proc.pid}: {exc}", file=sys.stderr)
        # Anything else still running inside our namespaces (e.g. a stray probe).
        for ns in self.namespaces:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
