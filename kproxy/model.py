"""The values kproxy reasons about, cleaned once at the edge.

Kubernetes JSON is parsed into these (see kproxy.parse); nothing further in
reads raw dicts. Everything is frozen and ordered so plans and diffs are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NamedTuple, TypeVar

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def nft(self) -> str:
        return self.value.lower()


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class ServiceName(NamedTuple):
    # NamedTuple rather than a dataclass: these are dict keys on every hot path, and a
    # tuple's hash and comparisons run in C (10,000 Services make that matter).
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class ServicePortName(NamedTuple):
    """Upstream's key for one port of one Service: namespace/name:portname."""

    service: ServiceName
    port: str  # the port's name; "" for a single unnamed port

    def __str__(self) -> str:
        return f"{self.service}:{self.port}" if self.port else str(self.service)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    """One port of one Service, with every frontend it is reachable on."""

    name: ServicePortName
    protocol: Protocol
    port: int
    cluster_ip: IPAddress  # one family per ServicePort: a dual-stack Service has one of each
    node_port: int | None = None
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    # sessionAffinity ClientIP: seconds a client sticks to its endpoint; None: no affinity
    affinity_timeout: int | None = None
    # externalTrafficPolicy / internalTrafficPolicy Local
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int | None = None
    # loadBalancerSourceRanges: only these sources reach the LB IPs (empty: everyone)
    source_ranges: tuple[IPNetwork, ...] = ()

    @property
    def family(self) -> int:
        return self.cluster_ip.version

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: ServiceName
    type: ServiceType
    cluster_ip: IPAddress  # the primary one
    ports: tuple[ServicePort, ...]  # per port and per IP family


@dataclass(frozen=True, slots=True, kw_only=True)
class SlicePort:
    name: str  # "" when unnamed
    port: int
    protocol: Protocol


class SliceEndpoint(NamedTuple):
    """One address of an EndpointSlice with its conditions, as upstream reads them. A
    NamedTuple for the same reason as ServiceName: 500,000 of them at 50,000 Services."""

    ip: IPAddress
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    # topology hints set by the EndpointSlice controller (trafficDistribution, topology mode)
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSlice:
    namespace: str
    name: str
    service: ServiceName
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]
    family: int = 4  # addressType IPv4 or IPv6
    # endpoints.kubernetes.io/last-change-trigger-time, epoch seconds, for the network
    # programming latency metric. Not compared: a new trigger time alone needs no sync.
    trigger_time: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What kproxy reads from a Node object: its zone, for topology hints, and its
    spec.podCIDRs, for --detect-local-mode NodeCIDR."""

    name: str
    zone: str | None = None
    pod_cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceCIDR:
    """A networking.k8s.io/v1 ServiceCIDR: ranges ClusterIPs are allocated from."""

    name: str
    cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterState:
    """A snapshot of what the sources know: Services and EndpointSlices by key."""

    services: dict[ServiceName, Service] = field(default_factory=dict)
    slices: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    # The same slices grouped by Service, sorted by name, when the producer keeps such an
    # index (the tracker does, with stable tuples for unchanged groups); None: group anew.
    slices_by_service: dict[ServiceName, tuple[EndpointSlice, ...]] | None = None
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)

    def all_service_cidrs(self) -> tuple[IPNetwork, ...]:
        return union_service_cidrs(self.service_cidrs.values())


def union_service_cidrs(objects: Iterable[ServiceCIDR]) -> tuple[IPNetwork, ...]:
    """Every ServiceCIDR's ranges, sorted, each once (upstream's union of spec.cidrs)."""
    found = {cidr for sc in objects for cidr in sc.cidrs}
    return tuple(sorted(found, key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


class LocalMode(StrEnum):
    """How traffic from this node's pods is told from the rest (upstream's detectLocalMode)."""

    CLUSTER_CIDR = "ClusterCIDR"  # source address in --cluster-cidr
    NODE_CIDR = "NodeCIDR"  # source address in this node's Node spec.podCIDRs
    BRIDGE_INTERFACE = "BridgeInterface"  # arrives on --pod-bridge-interface
    INTERFACE_NAME_PREFIX = "InterfaceNamePrefix"  # arrives on an interface named --pod-interface-name-prefix*


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDelta:
    """What changed since the last delta: the Services named (each with its slices as they
    are now; None: the Service is gone), or every Service when `full`."""

    full: bool
    services: dict[ServiceName, Service | None] = field(default_factory=dict)
    slices: dict[ServiceName, tuple[EndpointSlice, ...]] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)

    @staticmethod
    def of(state: ClusterState) -> ClusterDelta:
        """A full delta of a whole snapshot."""
        grouped = state.slices_by_service
        if grouped is None:
            lists: dict[ServiceName, list[EndpointSlice]] = {}
            for s in sorted(state.slices.values(), key=lambda s: s.name):
                lists.setdefault(s.service, []).append(s)
            grouped = {name: tuple(group) for name, group in lists.items()}
        names = sorted(state.services)
        return ClusterDelta(full=True, services={n: state.services[n] for n in names},
                            slices={n: grouped.get(n, ()) for n in names}, nodes=dict(state.nodes))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """What the planner needs to know about the node it plans for.

    `nodeport_cidrs` empty means upstream's nftables default, "primary": NodePorts answer
    on the node's own IPs (`node_ips`). `local_ips` are the node's interface addresses, read
    by the agent, used to resolve `nodeport_cidrs`.
    """

    hostname: str
    node_ips: tuple[IPAddress, ...] = ()
    local_ips: tuple[IPAddress, ...] = ()
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    service_cidrs: tuple[IPNetwork, ...] = ()
    nodeport_cidrs: tuple[IPNetwork, ...] = ()
    masquerade_all: bool = False
    # topology.kubernetes.io/zone of this node's Node object, for zone hints
    zone: str | None = None
    # which traffic is local (from this node's pods); pod_cidrs: the Node's spec.podCIDRs
    local_mode: LocalMode = LocalMode.CLUSTER_CIDR
    pod_bridge_interface: str = ""
    pod_interface_prefix: str = ""
    pod_cidrs: tuple[IPNetwork, ...] = ()
    # --external-ip-cidrs: externalIPs outside these are not programmed; None: all are
    external_ip_cidrs: tuple[IPNetwork, ...] | None = None

    def families(self) -> tuple[int, ...]:
        """IP families to program: IPv4, and IPv6 once the node has an IPv6 address or
        CIDR (upstream runs one proxier per family the node has)."""
        v6 = any(a.version == 6 for a in (*self.node_ips, *self.cluster_cidrs, *self.service_cidrs))
        return (4, 6) if v6 else (4,)

    def for_family(self, family: int) -> NodeConfig:
        """This node's settings of one IP family only."""
        allowed = self.external_ip_cidrs
        return replace(self, node_ips=_of_family(self.node_ips, family),
                       local_ips=_of_family(self.local_ips, family),
                       cluster_cidrs=_of_family(self.cluster_cidrs, family),
                       service_cidrs=_of_family(self.service_cidrs, family),
                       nodeport_cidrs=_of_family(self.nodeport_cidrs, family),
                       pod_cidrs=_of_family(self.pod_cidrs, family),
                       external_ip_cidrs=None if allowed is None else _of_family(allowed, family))


_Versioned = TypeVar("_Versioned", IPAddress, IPNetwork)


def _of_family(items: tuple[_Versioned, ...], family: int) -> tuple[_Versioned, ...]:
    return tuple(i for i in items if i.version == family)
