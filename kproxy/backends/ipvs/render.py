"""A Plan as IPVS objects: one virtual server per (IP, protocol, port) frontend, the planner's
endpoints for that frontend as its real servers, and kube-ipvs0 holding every Service IP. Pure.

As upstream's IPVS mode: NodePorts are one virtual server per NodePort address; ClusterIPs,
externalIPs and LB IPs are addresses of the dummy link kube-ipvs0, so they are local and IPVS
(hooked at LOCAL_IN and LOCAL_OUT) takes their packets.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from ipaddress import ip_address

from kproxy.backends.ipvs.objects import (
    DEFAULT_SCHEDULER,
    SHORT_CIRCUIT_BIT,
    IpvsState,
    RealKey,
    VirtualKey,
    VirtualServer,
)
from kproxy.model import IPAddress, Protocol
from kproxy.plan import Plan, ServicePortPlan

MARK_SPACE = 0x0FFFBFFF  # the bits a short-circuit mark varies in: not 0x4000, not SHORT_CIRCUIT_BIT


def render_state(plan: Plan, *, scheduler: str = DEFAULT_SCHEDULER,
                 local_addresses: Iterable[IPAddress] = ()) -> IpvsState:
    """`local_addresses`: the node's addresses of this family (not kube-ipvs0's, not loopback),
    used for NodePorts when the plan says every local address answers."""
    np_ips = nodeport_ips(plan, local_addresses)
    virtuals: dict[VirtualKey, VirtualServer] = {}
    addresses: set[IPAddress] = set()
    # Sorted: when two Service ports claim the same frontend, the same one wins every time.
    for sp in sorted(plan.service_ports, key=lambda s: s.name):
        for key, server in render_service_port(sp, np_ips, scheduler):
            virtuals.setdefault(key, server)
        addresses.update(fe.ip for fe in sp.frontends if fe.ip is not None)
    virtuals.update(fwmark_virtuals(plan.service_ports, np_ips, plan.family, scheduler))
    return IpvsState(virtuals=virtuals, addresses=frozenset(addresses))


def fwmark_virtuals(service_ports: Iterable[ServicePortPlan], np_ips: tuple[IPAddress, ...], family: int,
                    scheduler: str) -> dict[VirtualKey, VirtualServer]:
    """The firewall-mark virtual servers that take short-circuited traffic (below)."""
    unspecified = ip_address("0.0.0.0" if family == 4 else "::")
    return {VirtualKey(ip=unspecified, protocol=Protocol.TCP, port=0, fwmark=mark): VirtualServer(
                scheduler=scheduler, persistence=sp.affinity_timeout or 0,
                reals={RealKey(ip=t.ip, port=t.port): 1 for t in sp.short_circuit_targets})
            for mark, sp in short_circuits(service_ports, np_ips).values()}


def short_circuits(service_ports: Iterable[ServicePortPlan],
                   np_ips: tuple[IPAddress, ...]) -> dict[VirtualKey, tuple[int, ServicePortPlan]]:
    """externalTrafficPolicy Local: traffic from pods and from the node to an external
    frontend goes to every endpoint, as in the other modes. IPVS has one set of real servers
    per (ip, proto, port), so the auxiliary table marks that traffic and a firewall-mark
    virtual server (looked up before the address ones) takes it. frontend -> (its mark, the
    Service port). Marks come from a hash of the frontend, so they stay put when other
    Services come and go."""
    found: dict[VirtualKey, ServicePortPlan] = {}
    for sp in sorted(service_ports, key=lambda s: s.name):
        if not (sp.external_policy_local and sp.short_circuit_targets):
            continue
        for fe in sp.frontends:
            if fe.kind.is_external:
                for ip in (fe.ip,) if fe.ip is not None else np_ips:
                    found.setdefault(VirtualKey(ip=ip, protocol=sp.protocol, port=fe.port), sp)
    out: dict[VirtualKey, tuple[int, ServicePortPlan]] = {}
    used: set[int] = set()
    for key, sp in sorted(found.items()):
        n = zlib.crc32(str(key).encode()) & MARK_SPACE
        while (SHORT_CIRCUIT_BIT | n) in used:  # a collision: the next free one, deterministically
            n = ((n + 1) & MARK_SPACE) or 1
        used.add(SHORT_CIRCUIT_BIT | n)
        out[key] = (SHORT_CIRCUIT_BIT | n, sp)
    return out


def render_service_port(sp: ServicePortPlan, nodeport_ips: tuple[IPAddress, ...],
                        scheduler: str) -> list[tuple[VirtualKey, VirtualServer]]:
    out = []
    for fe in sp.frontends:
        reals = {RealKey(ip=t.ip, port=t.port): 1 for t in sp.targets_for(fe)}
        server = VirtualServer(scheduler=scheduler, persistence=sp.affinity_timeout or 0, reals=reals)
        for ip in (fe.ip,) if fe.ip is not None else nodeport_ips:
            out.append((VirtualKey(ip=ip, protocol=sp.protocol, port=fe.port), server))
    return out


def nodeport_ips(plan: Plan, local_addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    if not plan.nodeport_all_local:
        return plan.nodeport_ips
    service_ips = {fe.ip for sp in plan.service_ports for fe in sp.frontends if fe.ip is not None}
    return tuple(sorted(ip for ip in set(local_addresses)
                        if ip.version == plan.family and not ip.is_loopback and ip not in service_ips))
