"""Node config + Services + EndpointSlices -> Plan. Pure: no I/O.

Every policy decision lives here so that each backend only renders. Semantics follow
upstream kube-proxy's nftables mode (pkg/proxy/nftables, pkg/proxy/topology.go).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network, IPv6Network, collapse_addresses, ip_network

from kproxy.model import (
    ClusterDelta,
    ClusterState,
    EndpointSlice,
    IPAddress,
    IPNetwork,
    LocalMode,
    NodeConfig,
    Protocol,
    Service,
    ServiceName,
    ServicePort,
    ServicePortName,
    SliceEndpoint,
)
from kproxy.plan import Frontend, FrontendKind, HealthCheck, LocalDetector, Plan, PortTable, ServicePortPlan, Target
from kproxy.topology import categorize_endpoints

ALL_ADDRESSES = (ip_network("0.0.0.0/0"), ip_network("::/0"))


class FamilyPlanner:
    """The plans of one IP family, kept between syncs so a delta naming a few Services
    re-plans only those: the cost of a sync follows the change, not the cluster. A full
    delta (start, after a failure, periodic) or a new node config plans everything anew;
    either way the Plan is the same as compute_plan of the whole state."""

    def __init__(self, family: int = 4) -> None:
        self.family = family
        self._node: NodeConfig | None = None
        self._reset()

    def _reset(self) -> None:
        self._by_service: dict[ServiceName, tuple[ServicePortPlan, ...]] = {}
        self._ports = PortTable()
        self._cluster_ips: Counter[IPAddress] = Counter()
        self._sorted_cluster_ips: tuple[IPAddress, ...] | None = ()
        self._checks: dict[ServiceName, HealthCheck] = {}
        self._endpoints = 0

    def needs_full(self, node: NodeConfig) -> bool:
        """Whether the next plan must start from a full delta (first plan, new node config)."""
        return self._node is None or self._node != node.for_family(self.family)

    def plan(self, node: NodeConfig, delta: ClusterDelta) -> Plan:
        node = node.for_family(self.family)
        if not delta.full and self.needs_full(node):
            raise ValueError("a first plan, or one for a new node config, needs a full delta")
        if delta.full:
            self._reset()
            self._node = node
        changed: set[ServicePortName] = set()
        for name, service in delta.services.items():
            self._replan(node, name, service, delta.slices.get(name, ()), changed)
        nodeport_all_local, nodeport_ips = nodeport_addresses(node)
        if self._sorted_cluster_ips is None:
            self._sorted_cluster_ips = tuple(sorted(self._cluster_ips, key=int))
        return Plan(
            family=self.family,
            service_ports=self._ports.snapshot(),
            changed=None if delta.full else frozenset(changed),
            endpoints=self._endpoints,
            nodeport_ips=nodeport_ips,
            nodeport_all_local=nodeport_all_local,
            cluster_ips=self._sorted_cluster_ips,
            service_cidrs=node.service_cidrs,
            masquerade_all=node.masquerade_all,
            local=local_detector(node),
            health_checks=tuple(self._checks[n] for n in sorted(self._checks)),
        )

    def _replan(self, node: NodeConfig, name: ServiceName, service: Service | None,
                slices: tuple[EndpointSlice, ...], changed: set[ServicePortName]) -> None:
        old = self._by_service.pop(name, ())
        new = plan_service(node, service, slices, self.family) if service is not None else ()
        if new:
            self._by_service[name] = new
        kept = {sp.name for sp in new}
        for sp in old:
            self._endpoints -= len(sp.internal_targets)
            if sp.name not in kept:
                self._ports.delete(sp.name)
                changed.add(sp.name)
        for sp in new:
            self._endpoints += len(sp.internal_targets)
            if self._ports.get(sp.name) != sp:
                self._ports.set(sp)
                changed.add(sp.name)
        # every port of a Service has the Service's ClusterIP of this family, first
        ip_before = old[0].frontends[0].ip if old else None
        ip_after = new[0].frontends[0].ip if new else None
        if ip_before is not ip_after and ip_before != ip_after:
            if ip_before is not None:
                self._cluster_ips[ip_before] -= 1
                if self._cluster_ips[ip_before] <= 0:
                    del self._cluster_ips[ip_before]  # no Service holds it any more
            if ip_after is not None:
                self._cluster_ips[ip_after] += 1
            self._sorted_cluster_ips = None
        check = health_check(service, new) if service is not None else None
        if check is None:
            self._checks.pop(name, None)
        else:
            self._checks[name] = check


def compute_plan(node: NodeConfig, state: ClusterState, family: int = 4) -> Plan:
    """The Plan of one IP family for a whole cluster state."""
    return FamilyPlanner(family).plan(node, ClusterDelta.of(state))


def plan_service(node: NodeConfig, service: Service, slices: Iterable[EndpointSlice],
                 family: int = 4) -> tuple[ServicePortPlan, ...]:
    endpoints = endpoints_by_port((s for s in slices if s.family == family), node.hostname)
    return tuple(
        plan_service_port(node, port, endpoints.get((port.name.port, port.protocol), {}))
        for port in service.ports if port.family == family
    )


def plan_service_port(
    node: NodeConfig, port: ServicePort, candidates: Mapping[Target, SliceEndpoint]
) -> ServicePortPlan:
    eps = categorize_endpoints(node, port, candidates)
    external_ips, refused = allowed_external_ips(node, port)
    internal = eps.local if port.internal_policy_local else eps.cluster
    external = eps.local if port.external_policy_local else eps.cluster
    return ServicePortPlan(
        name=port.name,
        protocol=port.protocol,
        frontends=frontends_of(port, external_ips),
        internal_targets=internal if eps.has_any else (),
        external_targets=external if eps.has_any else (),
        has_endpoints=eps.has_any,
        external_policy_local=port.external_policy_local,
        short_circuit_targets=eps.cluster if port.external_policy_local else (),
        # only a port with externalTrafficPolicy Local has a health check to report it
        local_ready_endpoints=sum(1 for t, ep in candidates.items() if t.is_local and ep.ready)
        if port.external_policy_local else 0,
        affinity_timeout=port.affinity_timeout,
        source_ranges=source_ranges(node, port),
        refused_external_ips=refused,
    )


def local_detector(node: NodeConfig) -> LocalDetector:
    """Upstream's getLocalDetectors, for the node's settings of one IP family: without a
    CIDR of this family (ClusterCIDR, NodeCIDR), nothing is local."""
    if node.local_mode is LocalMode.BRIDGE_INTERFACE:
        return LocalDetector(interface=node.pod_bridge_interface)
    if node.local_mode is LocalMode.INTERFACE_NAME_PREFIX:
        return LocalDetector(interface=node.pod_interface_prefix, interface_prefix=True)
    cidrs = node.pod_cidrs if node.local_mode is LocalMode.NODE_CIDR else node.cluster_cidrs
    return LocalDetector(cidrs=cidrs)


def allowed_external_ips(node: NodeConfig, port: ServicePort) -> tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]:
    """(programmed, refused) externalIPs: with --external-ip-cidrs, only those inside it
    are programmed (CVE-2020-8554: any user who can write a Service could otherwise
    capture traffic to any address); without it, all of them, as upstream."""
    allowed = node.external_ip_cidrs
    if allowed is None or not port.external_ips:
        return port.external_ips, ()
    inside = tuple(ip for ip in port.external_ips if any(ip in cidr for cidr in allowed))
    return inside, tuple(ip for ip in port.external_ips if ip not in inside)


def source_ranges(node: NodeConfig, port: ServicePort) -> tuple[IPNetwork, ...]:
    """loadBalancerSourceRanges; when one holds a node IP, the LB IPs are allowed too:
    a node reaching an LB IP that is local to it loops back with the LB IP as source.
    Overlapping ranges are merged: the kernel refuses overlapping intervals in one set
    (10.0.0.0/8 with 10.1.0.0/16, or an LB IP inside a range), which failed the whole sync."""
    if not port.source_ranges or not port.load_balancer_ips:
        return ()
    ranges = list(port.source_ranges)
    if any(ip in cidr for cidr in port.source_ranges for ip in node.node_ips):
        ranges += [ip_network(ip) for ip in port.load_balancer_ips]
    return (*collapse_addresses(r for r in ranges if isinstance(r, IPv4Network)),
            *collapse_addresses(r for r in ranges if isinstance(r, IPv6Network)))


def frontends_of(port: ServicePort, external_ips: tuple[IPAddress, ...] | None = None) -> tuple[Frontend, ...]:
    """The frontends of a port; `external_ips`: those allowed (default: all of them)."""
    external_ips = port.external_ips if external_ips is None else external_ips
    found = [Frontend(kind=FrontendKind.CLUSTER_IP, ip=port.cluster_ip, port=port.port)]
    if port.node_port:
        found.append(Frontend(kind=FrontendKind.NODE_PORT, ip=None, port=port.node_port))
    if not external_ips and not port.load_balancer_ips:
        return tuple(found)  # nearly every port: nothing can repeat
    found += [Frontend(kind=FrontendKind.EXTERNAL_IP, ip=ip, port=port.port) for ip in external_ips]
    found += [Frontend(kind=FrontendKind.LOAD_BALANCER, ip=ip, port=port.port) for ip in port.load_balancer_ips]
    return tuple(dict.fromkeys(found))  # an IP listed twice is one frontend


def health_check(service: Service, plans: Iterable[ServicePortPlan]) -> HealthCheck | None:
    """A Service with externalTrafficPolicy Local and a healthCheckNodePort gets one; the
    count is local ready endpoints summed over its ports, as upstream reports it."""
    plans = [sp for sp in plans if sp.external_policy_local]
    port = service.ports[0].health_check_node_port if service.ports else None
    if not plans or not port:
        return None
    return HealthCheck(service=service.name, node_port=port,
                       local_endpoints=sum(sp.local_ready_endpoints for sp in plans))


def group_slices(slices: Iterable[EndpointSlice]) -> dict[ServiceName, tuple[EndpointSlice, ...]]:
    """Slices per Service, sorted by name (what the tracker's index keeps ready-made)."""
    grouped: dict[ServiceName, list[EndpointSlice]] = defaultdict(list)
    for s in slices:
        grouped[s.service].append(s)
    return {name: tuple(sorted(group, key=lambda s: s.name)) for name, group in grouped.items()}


def endpoints_by_port(
    slices: Iterable[EndpointSlice], hostname: str
) -> dict[tuple[str, Protocol], dict[Target, SliceEndpoint]]:
    """Endpoints per (slice port name, protocol), the key upstream matches Service ports by.

    The same ip:port in two slices (as during a slice handover) counts once; the first
    slice by name wins, so the result does not depend on event order.
    """
    found: dict[tuple[str, Protocol], dict[Target, SliceEndpoint]] = defaultdict(dict)
    for s in slices:
        for sp in s.ports:
            bucket, port = found[(sp.name, sp.protocol)], sp.port
            for ep in s.endpoints:
                # positional: 100,000s of these at scale (ip, port, node_name, is_local)
                bucket.setdefault(Target(ep.ip, port, ep.node_name, ep.node_name == hostname), ep)
    return found


def nodeport_addresses(node: NodeConfig) -> tuple[bool, tuple[IPAddress, ...]]:
    """(all local addresses?, the addresses) NodePorts answer on.

    Upstream nftables mode: no --nodeport-addresses means the node's primary IPs; a CIDR
    list means the local addresses inside those CIDRs; 0.0.0.0/0 means every local address.
    """
    if not node.nodeport_cidrs:
        return False, tuple(sorted(set(node.node_ips)))
    if any(cidr in ALL_ADDRESSES for cidr in node.nodeport_cidrs):
        return True, ()
    inside = {ip for ip in node.local_ips if any(ip in cidr for cidr in node.nodeport_cidrs)}
    return False, tuple(sorted(inside))

