"""The auxiliary rules of IPVS mode, in nftables table `kproxy-ipvs`: what upstream keeps in
iptables and ipsets (masquerade, reject, drop, source ranges) for the same packets. Pure.

IPVS sees packets at LOCAL_IN (priority 98) and LOCAL_OUT (-99), so the filter chains here
(-110) decide before it, and the masquerade mark set in nat prerouting/output stays on the
packet IPVS forwards, which then passes nat postrouting (net.ipv4.vs.conntrack=1). Every
per-Service fact is a set element; the chains never change, and use only constructs every
supported kernel loads (docs/kernels.md: no verdict map looked up as a set, no interval set
keyed with meta l4proto).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_network

from kproxy.backends.base import MASQUERADE_MARK
from kproxy.backends.ipvs.objects import SHORT_CIRCUIT_BIT, aux_table_of
from kproxy.backends.ipvs.render import short_circuits
from kproxy.backends.nft.elements import ElementTable
from kproxy.backends.nft.names import (
    CLUSTER_CIDRS,
    CLUSTER_FRONTENDS,
    CLUSTER_IPS,
    FIREWALL_FRONTENDS,
    FRONTEND_KEY,
    HAIRPIN,
    MARK_FOR_MASQUERADE,
    MASQ_FRONTENDS,
    MASQUERADING,
    NO_MASQ_SOURCES,
    REJECT_CHAIN,
    SERVICE_CIDRS,
)
from kproxy.backends.nft.objects import Chain, Element, SetSpec, Skeleton
from kproxy.backends.nft.render import PRESENT, Contribution, local_traffic
from kproxy.backends.nft.transaction import full_transaction
from kproxy.model import IPAddress, IPNetwork
from kproxy.plan import FrontendKind, Plan, ServicePortPlan
from kproxy.values import collapse_cidrs, ip_text

# Names only IPVS mode's table has
FRONTENDS = "frontends"  # every virtual server: ip . proto . port
REJECT_FRONTENDS = "reject-frontends"  # no usable endpoint anywhere
FIREWALL_ALLOW = "firewall-allow"  # LB ip . allowed source range (the frontend is checked first)
DROP_FRONTENDS = "drop-frontends"  # none on this node (a Local traffic policy)
SHORT_CIRCUIT_MARKS = "short-circuit-marks"  # Local-policy frontend -> its firewall-mark virtual server
NODE_OWNER = ""  # owner of the node-wide elements; sorts before every Service port


def render_aux(plan: Plan, nodeport_ips: tuple[IPAddress, ...]) -> str:
    """The whole table as one nft script that replaces what was there atomically."""
    table = ElementTable()
    for sp in plan.service_ports:
        table.replace(str(sp.name), None, service_port_elements(sp, nodeport_ips))
    table.replace(NODE_OWNER, None, node_elements(plan, plan.service_ports, nodeport_ips))
    return full_transaction(aux_skeleton(plan), table).text()


def aux_skeleton(plan: Plan) -> Skeleton:
    """The chains and set definitions: they depend on node-wide settings only."""
    sets = tuple(SetSpec(name=name, spec=spec, is_map=" : " in spec) for name, spec in _specs(plan.family).items())
    chains = tuple(Chain(name=name, hook=hook or None, rules=tuple(rules))
                   for name, (hook, *rules) in _chains(plan).items())
    return Skeleton(chains=chains, sets=sets, table=aux_table_of(plan.family))


def _specs(family: int) -> dict[str, str]:
    ip, addr = ("ip", "ipv4_addr") if family == 4 else ("ip6", "ipv6_addr")
    frontend = FRONTEND_KEY.format(ip=ip)
    return {
        FRONTENDS: f"typeof {frontend};", CLUSTER_FRONTENDS: f"typeof {frontend};",
        MASQ_FRONTENDS: f"typeof {frontend};", REJECT_FRONTENDS: f"typeof {frontend};",
        DROP_FRONTENDS: f"typeof {frontend};", FIREWALL_FRONTENDS: f"typeof {frontend};",
        FIREWALL_ALLOW: f"typeof {ip} daddr . {ip} saddr; flags interval;",
        HAIRPIN: f"typeof {ip} saddr . {ip} daddr;",
        CLUSTER_IPS: f"type {addr};",
        SERVICE_CIDRS: f"type {addr}; flags interval;",
        CLUSTER_CIDRS: f"type {addr}; flags interval;",
        SHORT_CIRCUIT_MARKS: f"typeof {frontend} : meta mark;",
        NO_MASQ_SOURCES: f"type {addr}; flags interval;",
    }


def _chains(plan: Plan) -> dict[str, tuple[str, ...]]:
    """chain -> (its hook or "", its rules...)"""
    ip = "ip" if plan.family == 4 else "ip6"
    frontend = FRONTEND_KEY.format(ip=ip)
    new = "ct state new"
    is_local, not_local = local_traffic(plan, ip)
    short_circuited = f"meta mark & {SHORT_CIRCUIT_BIT:#x} == {SHORT_CIRCUIT_BIT:#x}"
    chains: dict[str, tuple[str, ...]] = {
        # before the masquerade marks (nat, -100) and IPVS: pods and the node reaching a
        # Local-policy frontend get its firewall mark (see render.short_circuits)
        "short-circuit-prerouting": ("type filter hook prerouting priority -150; policy accept;",
                                     f"{is_local} meta mark set {frontend} "
                                     f"map @{SHORT_CIRCUIT_MARKS}"),
        "short-circuit-output": ("type filter hook output priority -150; policy accept;",
                                 f"meta mark set {frontend} map @{SHORT_CIRCUIT_MARKS}"),
        "filter-input": ("type filter hook input priority -110; policy accept;",
                         f"{new} jump endpoints-check", f"{new} jump cluster-ips-check"),
        "filter-forward": ("type filter hook forward priority -110; policy accept;",
                           f"{new} jump cluster-ips-check"),
        "filter-output": ("type filter hook output priority -110; policy accept;",
                          f"{new} jump endpoints-check", f"{new} jump cluster-ips-check"),
        "filter-prerouting": ("type filter hook prerouting priority -110; policy accept;",
                              f"{new} jump firewall-check"),
        "nat-prerouting": ("type nat hook prerouting priority dstnat; policy accept;", "jump services"),
        "nat-output": ("type nat hook output priority -100; policy accept;", "jump services"),
        "nat-postrouting": ("type nat hook postrouting priority srcnat; policy accept;",
                            # a pod that reached itself through a Service: after IPVS it is
                            # both source and destination, and must see the node as the peer
                            f"{ip} saddr . {ip} daddr @{HAIRPIN} jump {MARK_FOR_MASQUERADE}",
                            # the node's own short-circuited traffic: its source is a local
                            # address (often the frontend's), meaningless to the endpoint
                            f"{short_circuited} fib saddr type local jump {MARK_FOR_MASQUERADE}",
                            f"jump {MASQUERADING}"),
        "services": ("",
                     f"{frontend} @{CLUSTER_FRONTENDS} {not_local} jump {MARK_FOR_MASQUERADE}",
                     f"{frontend} @{MASQ_FRONTENDS} jump {MARK_FOR_MASQUERADE}"),
        "endpoints-check": ("", f"{frontend} @{REJECT_FRONTENDS} goto {REJECT_CHAIN}",
                            f"meta mark & {SHORT_CIRCUIT_BIT:#x} == 0 {frontend} @{DROP_FRONTENDS} drop"),
        "firewall-check": ("", f"{frontend} @{FIREWALL_FRONTENDS} {ip} daddr . {ip} saddr != @{FIREWALL_ALLOW} drop"),
        # a Service IP on a port no Service has is refused; the rest of the service CIDRs
        # is not in use, and dropped
        "cluster-ips-check": ("", f"{frontend} @{FRONTENDS} return",
                              f"{ip} daddr @{CLUSTER_IPS} goto {REJECT_CHAIN}",
                              f"{ip} daddr @{SERVICE_CIDRS} drop"),
        REJECT_CHAIN: ("", "meta l4proto tcp reject with tcp reset", "reject"),
        MARK_FOR_MASQUERADE: ("", f"meta mark set meta mark | {MASQUERADE_MARK}"),
        MASQUERADING: ("", f"meta mark & {MASQUERADE_MARK} == 0 return",
                       f"meta mark set meta mark ^ {MASQUERADE_MARK}", "masquerade fully-random"),
    }
    return chains


def delete_aux(family: int) -> str:
    table = aux_table_of(family)
    return f"add table {table}\ndelete table {table}\n"


def service_port_elements(sp: ServicePortPlan, nodeport_ips: tuple[IPAddress, ...]) -> Contribution:
    """What one Service port puts in the table's sets."""
    out: Contribution = {}

    def add(name: str, element: str, value: Element = PRESENT) -> None:
        out.setdefault(name, {})[element] = value  # type: ignore[assignment]  # plain sets only

    proto = sp.protocol.nft
    for fe in sp.frontends:
        ips = (fe.ip,) if fe.ip is not None else nodeport_ips
        for key in [f"{ip_text(ip)} . {proto} . {fe.port}" for ip in ips]:
            add(FRONTENDS, key, Element(comment=f"{sp.name} {fe.kind}"))  # what `kproxy dump` names it by
            if not sp.targets_for(fe):
                add(DROP_FRONTENDS if sp.empty_verdict() == "drop" else REJECT_FRONTENDS, key)
            if fe.kind is FrontendKind.CLUSTER_IP:
                add(CLUSTER_FRONTENDS, key)
            elif sp.masquerade_external:
                add(MASQ_FRONTENDS, key)
            if sp.source_ranges and fe.kind is FrontendKind.LOAD_BALANCER:
                add(FIREWALL_FRONTENDS, key)
        if fe.kind is FrontendKind.CLUSTER_IP and fe.ip is not None:
            add(CLUSTER_IPS, ip_text(fe.ip))
        if sp.source_ranges and fe.kind is FrontendKind.LOAD_BALANCER and fe.ip is not None:
            for cidr in sp.source_ranges:
                add(FIREWALL_ALLOW, f"{ip_text(fe.ip)} . {cidr}")
    for t in sp.all_targets():
        if t.is_local:
            add(HAIRPIN, f"{ip_text(t.ip)} . {ip_text(t.ip)}")
    return out


def node_elements(plan: Plan, short_circuited: Iterable[ServicePortPlan],
                  nodeport_ips: tuple[IPAddress, ...]) -> Contribution:
    """The node-wide elements: service and cluster CIDRs, and the short-circuit marks of
    the externalTrafficPolicy Local ports in `short_circuited`."""
    out: Contribution = {}
    if plan.service_cidrs:
        out[SERVICE_CIDRS] = _intervals(plan.service_cidrs)
    if plan.local.cidrs:
        out[CLUSTER_CIDRS] = _intervals(plan.local.cidrs)
    if not plan.masquerade_all and not plan.local.by_interface:
        everyone = (ip_network("0.0.0.0/0") if plan.family == 4 else ip_network("::/0"),)
        out[NO_MASQ_SOURCES] = _intervals(plan.local.cidrs or everyone)
    for key, (mark, _sp) in short_circuits(short_circuited, nodeport_ips).items():
        element = f"{ip_text(key.ip)} . {key.protocol.nft} . {key.port}"
        out.setdefault(SHORT_CIRCUIT_MARKS, {})[element] = Element(data=f"{mark:#x}")  # type: ignore[assignment]
    return out


def _intervals(cidrs: tuple[IPNetwork, ...]) -> dict[str, Element]:
    return {str(c): PRESENT for c in collapse_cidrs(cidrs)}
