"""The desired state of one node, as values: what every backend renders.

A Plan says, per Service port, which frontends exist, which endpoints serve them, and
whether traffic is masqueraded; plus the node-wide facts (NodePort addresses, service
CIDRs, masquerade rule for ClusterIPs). Policy is decided in kproxy.planner, never in a
backend.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, overload

from kproxy.model import IPAddress, IPNetwork, Protocol, ServiceName, ServicePortName


class FrontendKind(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    EXTERNAL_IP = "ExternalIP"
    LOAD_BALANCER = "LoadBalancer"

    @property
    def is_external(self) -> bool:
        return self is not FrontendKind.CLUSTER_IP


@dataclass(frozen=True, slots=True, order=True, kw_only=True)
class Frontend:
    """An address traffic for a Service port arrives on. NodePorts have no ip:
    they answer on every NodePort address of the node (Plan.nodeport_ips)."""

    kind: FrontendKind
    ip: IPAddress | None
    port: int

    def __str__(self) -> str:
        where = "*" if self.ip is None else str(self.ip)
        return f"{where}:{self.port}"


class Target(NamedTuple):
    """An endpoint a connection may be DNATed to. A NamedTuple rather than a frozen
    dataclass: a full plan at 50,000 Services makes 500,000 of them, and a tuple is built,
    hashed and compared in C."""

    ip: IPAddress
    port: int
    node_name: str | None = None
    is_local: bool = False

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePortPlan:
    name: ServicePortName
    protocol: Protocol
    frontends: tuple[Frontend, ...]
    # Endpoints for traffic to the ClusterIP (internal) and to the external frontends
    # (NodePort, externalIPs, LB IPs). Empty: reject when the Service has no usable
    # endpoint anywhere, drop when only this node has none (a Local traffic policy).
    internal_targets: tuple[Target, ...]
    external_targets: tuple[Target, ...]
    has_endpoints: bool = True
    # externalTrafficPolicy Local: external traffic keeps its source address and only
    # reaches local endpoints; traffic from pods and from this node to the external
    # frontends short-circuits to every (Cluster) endpoint instead, as upstream does.
    external_policy_local: bool = False
    short_circuit_targets: tuple[Target, ...] = ()
    local_ready_endpoints: int = 0  # what the healthCheckNodePort reports (externalTrafficPolicy Local only)
    affinity_timeout: int | None = None  # sessionAffinity ClientIP, seconds
    # loadBalancerSourceRanges (plus the LB IPs themselves when a range holds the node IP)
    source_ranges: tuple[IPNetwork, ...] = ()
    # externalIPs left out by --external-ip-cidrs (the agent logs them once per Service)
    refused_external_ips: tuple[IPAddress, ...] = ()

    def targets_for(self, frontend: Frontend) -> tuple[Target, ...]:
        return self.external_targets if frontend.kind.is_external else self.internal_targets

    def all_targets(self) -> tuple[Target, ...]:
        """Every target any frontend may DNAT to (repeats included)."""
        return (*self.internal_targets, *self.external_targets, *self.short_circuit_targets)

    @property
    def masquerade_external(self) -> bool:
        return not self.external_policy_local

    def empty_verdict(self) -> str:
        """What a frontend with no targets does with new connections."""
        return "drop" if self.has_endpoints else "reject"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalDetector:
    """What makes a packet "local" (from one of this node's pods), as upstream's
    LocalTrafficDetector: its source address in `cidrs`, or the interface it arrived on
    (`interface`; a name prefix when `interface_prefix`). Neither: nothing is local, so
    ClusterIP traffic is not masqueraded and no pod short-circuits (upstream's no-op
    detector). Every backend renders it: a source match or an input-interface match."""

    cidrs: tuple[IPNetwork, ...] = ()
    interface: str = ""
    interface_prefix: bool = False

    @property
    def implemented(self) -> bool:
        return bool(self.cidrs or self.interface)

    @property
    def by_interface(self) -> bool:
        return bool(self.interface)

    def __str__(self) -> str:
        if self.interface:
            return f"interface {self.interface}{'*' if self.interface_prefix else ''}"
        return "source in " + ",".join(map(str, self.cidrs)) if self.cidrs else "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """A healthCheckNodePort to serve: 200 while this node has local endpoints."""

    service: ServiceName
    node_port: int
    local_endpoints: int


class PortPlans(Sequence[ServicePortPlan]):
    """Every Service port's plan, in order, and by name. Immutable. A plan made after a
    change shares the bulk (`_base`) with the plans before it and holds only what changed
    since (PortTable.snapshot): at 50,000 Service ports, copying the whole table for every
    plan cost 0.9 ms of a 5 ms sync.

    The order is a dict's under the same changes: a replaced plan keeps its place, a new or
    re-added one goes last."""

    __slots__ = ("_appended", "_base", "_deleted", "_replaced", "_values")

    def __init__(self, by_name: Mapping[ServicePortName, ServicePortPlan] | Sequence[ServicePortPlan] = ()) -> None:
        if isinstance(by_name, Mapping):
            self._base: dict[ServicePortName, ServicePortPlan] = dict(by_name)
        else:
            self._base = {sp.name: sp for sp in by_name}
        self._replaced: dict[ServicePortName, ServicePortPlan] = {}  # base names, plan changed in place
        self._deleted: frozenset[ServicePortName] = frozenset()  # base names gone from their place
        self._appended: dict[ServicePortName, ServicePortPlan] = {}  # new (or re-added) names, last
        self._values: tuple[ServicePortPlan, ...] | None = None

    @classmethod
    def _of(cls, base: dict[ServicePortName, ServicePortPlan], replaced: dict[ServicePortName, ServicePortPlan],
            deleted: frozenset[ServicePortName], appended: dict[ServicePortName, ServicePortPlan]) -> PortPlans:
        plans = cls.__new__(cls)
        plans._base, plans._replaced, plans._deleted, plans._appended = base, replaced, deleted, appended
        plans._values = None
        return plans

    def get(self, name: ServicePortName) -> ServicePortPlan | None:
        if not (self._replaced or self._deleted or self._appended):
            return self._base.get(name)
        return _lookup(self._base, self._replaced, self._deleted, self._appended, name)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, ServicePortPlan):
            return self.get(item.name) == item
        return isinstance(item, ServicePortName) and self.get(item) is not None

    def __iter__(self) -> Iterator[ServicePortPlan]:
        if not (self._replaced or self._deleted or self._appended):
            return iter(self._base.values())
        return self._merged()

    def _merged(self) -> Iterator[ServicePortPlan]:
        replaced, deleted = self._replaced, self._deleted
        for name, sp in self._base.items():
            if name not in deleted:
                yield replaced.get(name, sp)
        yield from self._appended.values()

    def __len__(self) -> int:
        return len(self._base) - len(self._deleted) + len(self._appended)

    @overload
    def __getitem__(self, index: int) -> ServicePortPlan: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ServicePortPlan, ...]: ...

    def __getitem__(self, index: int | slice) -> ServicePortPlan | tuple[ServicePortPlan, ...]:
        if self._values is None:
            self._values = tuple(self)
        return self._values[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PortPlans):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sp.name for sp in self))

    def __repr__(self) -> str:
        return f"PortPlans({list(self)!r})"


def _lookup(base: Mapping[ServicePortName, ServicePortPlan], replaced: Mapping[ServicePortName, ServicePortPlan],
            deleted: Collection[ServicePortName], appended: Mapping[ServicePortName, ServicePortPlan],
            name: ServicePortName) -> ServicePortPlan | None:
    """One name's plan in a shared base with changes beside it (PortPlans, PortTable)."""
    found = appended.get(name)
    if found is not None or name in deleted:
        return found
    return replaced.get(name) or base.get(name)


class PortTable:
    """The planner's Service port plans, changed in place. `snapshot()` hands out a
    PortPlans in time proportional to the changes since the bulk was last copied, which
    happens once they pass an eighth of the table (at least COMPACT_AT)."""

    COMPACT_AT = 512

    def __init__(self) -> None:
        self._base: dict[ServicePortName, ServicePortPlan] = {}  # shared with snapshots: never changed
        self._replaced: dict[ServicePortName, ServicePortPlan] = {}
        self._deleted: set[ServicePortName] = set()
        self._appended: dict[ServicePortName, ServicePortPlan] = {}

    def get(self, name: ServicePortName) -> ServicePortPlan | None:
        return _lookup(self._base, self._replaced, self._deleted, self._appended, name)

    def set(self, sp: ServicePortPlan) -> None:
        name = sp.name
        if name in self._appended or name in self._deleted or name not in self._base:
            self._appended[name] = sp  # a dict keeps the place of a key it has, appends a new one
        else:
            self._replaced[name] = sp

    def delete(self, name: ServicePortName) -> None:
        if self._appended.pop(name, None) is None and name in self._base and name not in self._deleted:
            self._deleted.add(name)
            self._replaced.pop(name, None)

    def snapshot(self) -> PortPlans:
        held = len(self._replaced) + len(self._deleted) + len(self._appended)
        if held > max(self.COMPACT_AT, len(self._base) // 8):
            self._base = {sp.name: sp for sp in PortPlans._of(self._base, self._replaced, frozenset(self._deleted),
                                                               self._appended)}
            self._replaced, self._deleted, self._appended = {}, set(), {}
        return PortPlans._of(self._base, dict(self._replaced), frozenset(self._deleted), dict(self._appended))


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The desired state of one IP family (a dual-stack node has two Plans)."""

    family: int = 4
    service_ports: PortPlans = field(default_factory=PortPlans)
    # The Service ports whose plan differs from this family's previous plan (added,
    # changed or gone); None: this plan is not relative to another (start, node change).
    changed: frozenset[ServicePortName] | None = field(default=None, compare=False)
    endpoints: int = 0  # targets of the ClusterIPs, summed (for the synced line)
    # Addresses NodePorts answer on; nodeport_all_local means every local address but loopback.
    nodeport_ips: tuple[IPAddress, ...] = ()
    nodeport_all_local: bool = False
    cluster_ips: tuple[IPAddress, ...] = ()
    service_cidrs: tuple[IPNetwork, ...] = ()
    # Masquerade ClusterIP traffic: all of it, or only what is not local (nothing local: never).
    masquerade_all: bool = False
    local: LocalDetector = LocalDetector()
    health_checks: tuple[HealthCheck, ...] = ()
