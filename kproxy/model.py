"""The values kproxy reasons about, cleaned once at the edge.

Kubernetes JSON is parsed into these (see kproxy.sources.parse); nothing further in
reads raw dicts. Everything is frozen and ordered so plans and diffs are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import NamedTuple


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
    cluster_ip: IPv4Address
    node_port: int | None = None
    external_ips: tuple[IPv4Address, ...] = ()
    load_balancer_ips: tuple[IPv4Address, ...] = ()
    # sessionAffinity ClientIP: seconds a client sticks to its endpoint; None: no affinity
    affinity_timeout: int | None = None
    # externalTrafficPolicy / internalTrafficPolicy Local
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int | None = None
    # loadBalancerSourceRanges: only these sources reach the LB IPs (empty: everyone)
    source_ranges: tuple[IPv4Network, ...] = ()

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: ServiceName
    type: ServiceType
    cluster_ip: IPv4Address
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SlicePort:
    name: str  # "" when unnamed
    port: int
    protocol: Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceEndpoint:
    """One address of an EndpointSlice with its conditions, as upstream reads them."""

    ip: IPv4Address
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
    # endpoints.kubernetes.io/last-change-trigger-time, epoch seconds, for the network
    # programming latency metric. Not compared: a new trigger time alone needs no sync.
    trigger_time: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """What kproxy reads from a Node object: its zone, for topology hints."""

    name: str
    zone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterState:
    """A snapshot of what the sources know: Services and EndpointSlices by key."""

    services: dict[ServiceName, Service] = field(default_factory=dict)
    slices: dict[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    # The same slices grouped by Service, sorted by name, when the producer keeps such an
    # index (the tracker does, with stable tuples for unchanged groups); None: group anew.
    slices_by_service: dict[ServiceName, tuple[EndpointSlice, ...]] | None = None
    nodes: dict[str, NodeInfo] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """What the planner needs to know about the node it plans for.

    `nodeport_cidrs` empty means upstream's nftables default, "primary": NodePorts answer
    on the node's own IPs (`node_ips`). `local_ips` are the node's interface addresses, read
    by the agent, used to resolve `nodeport_cidrs`.
    """

    hostname: str
    node_ips: tuple[IPv4Address, ...] = ()
    local_ips: tuple[IPv4Address, ...] = ()
    cluster_cidrs: tuple[IPv4Network, ...] = ()
    service_cidrs: tuple[IPv4Network, ...] = ()
    nodeport_cidrs: tuple[IPv4Network, ...] = ()
    masquerade_all: bool = False
    # topology.kubernetes.io/zone of this node's Node object, for zone hints
    zone: str | None = None
