"""Plan -> nftables objects. Pure.

The ruleset keeps every per-Service fact in named sets and maps, so the number of chains
does not grow with Services (DESIGN §3): a frontend (ip . proto . port, or proto . port for
NodePorts) maps to `goto dnat-N`, where N is its endpoint count, and chain dnat-N picks
endpoint `numgen random mod N` from map endpoints-N keyed by frontend . index.

Chain layout and hook priorities follow upstream kube-proxy's nftables mode: reject/drop
checks in filter chains at dstnat-10 (and +10 after DNAT for output), DNAT in nat
prerouting/output, masquerade by mark 0x4000 in nat postrouting.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

from kproxy.backends.nft.objects import Chain, Element, SetSpec, Skeleton
from kproxy.plan import Frontend, Plan, ServicePortPlan

MASQUERADE_MARK = "0x4000"  # upstream's default --iptables-masquerade-bit 14

# element tables: set name -> key -> element
Contribution = dict[str, dict[str, Element]]

FRONTEND_KEY = "ip daddr . meta l4proto . th dport"
NODEPORT_KEY = "meta l4proto . th dport"

STATIC_SETS = (
    SetSpec(name="cluster-ips", spec="type ipv4_addr;"),
    SetSpec(name="nodeport-ips", spec="type ipv4_addr;"),
    SetSpec(name="cluster-frontends", spec=f"typeof {FRONTEND_KEY};"),
    SetSpec(name="masq-frontends", spec=f"typeof {FRONTEND_KEY};"),
    SetSpec(name="masq-nodeports", spec=f"typeof {NODEPORT_KEY};"),
    SetSpec(name="hairpin", spec="typeof ip saddr . ip daddr;"),
    SetSpec(name="frontends", spec=f"typeof {FRONTEND_KEY} : verdict;", is_map=True),
    SetSpec(name="nodeport-frontends", spec=f"typeof {NODEPORT_KEY} : verdict;", is_map=True),
    SetSpec(name="no-endpoint-frontends", spec=f"typeof {FRONTEND_KEY} : verdict;", is_map=True),
    SetSpec(name="no-endpoint-nodeports", spec=f"typeof {NODEPORT_KEY} : verdict;", is_map=True),
)


def endpoints_map(n: int, nodeport: bool) -> str:
    return f"nodeport-endpoints-{n}" if nodeport else f"endpoints-{n}"


def dnat_chain(n: int, nodeport: bool) -> str:
    return f"dnat-nodeport-{n}" if nodeport else f"dnat-{n}"


def ip_text(ip: IPv4Address) -> str:
    # str(IPv4Address) is pure-Python and slow; this is 5x faster over 100,000 endpoints
    n = int(ip)
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def frontend_key(frontend: Frontend, protocol: str) -> str:
    if frontend.ip is None:
        return f"{protocol} . {frontend.port}"
    return f"{ip_text(frontend.ip)} . {protocol} . {frontend.port}"


def render_service_port(sp: ServicePortPlan) -> Contribution:
    """The set and map elements one Service port contributes."""
    out: Contribution = {}

    def add(set_name: str, key: str, element: Element = Element()) -> None:
        out.setdefault(set_name, {})[key] = element

    proto = sp.protocol.nft
    for fe in sp.frontends:
        nodeport = fe.ip is None
        key = frontend_key(fe, proto)
        label = Element(comment=f"{sp.name} {fe.kind}")
        targets = sp.targets_for(fe)
        if targets:
            n = len(targets)
            add("nodeport-frontends" if nodeport else "frontends", key,
                Element(f"goto {dnat_chain(n, nodeport)}", label.comment))
            ep_map = endpoints_map(n, nodeport)
            for i, t in enumerate(targets):
                add(ep_map, f"{key} . {i}", Element(f"{ip_text(t.ip)} . {t.port}"))
        else:
            add("no-endpoint-nodeports" if nodeport else "no-endpoint-frontends", key,
                Element("goto reject-chain", label.comment))
        if not fe.kind.is_external:
            add("cluster-ips", ip_text(fe.ip))
            add("cluster-frontends", key)
        elif sp.masquerade_external:
            add("masq-nodeports" if nodeport else "masq-frontends", key)
    # A pod reaching its own Service and landing on itself must be masqueraded, or it
    # would answer itself directly. Only pods on this node can do that, so only local
    # endpoints get an element (upstream marks every endpoint; at 100,000 endpoints that
    # would double the elements for no packet that could ever match).
    for t in (*sp.cluster_targets, *sp.external_targets):
        if t.is_local:
            text = ip_text(t.ip)
            add("hairpin", f"{text} . {text}")
    return out


def render_node(plan: Plan) -> Contribution:
    """Elements that come from node settings rather than from a Service."""
    if plan.nodeport_all_local or not plan.nodeport_ips:
        return {}
    return {"nodeport-ips": {str(ip): Element() for ip in plan.nodeport_ips}}


def render_skeleton(plan: Plan, dnat_counts: Iterable[int], nodeport_counts: Iterable[int]) -> Skeleton:
    nodeport_match = (
        "fib daddr type local ip daddr != 127.0.0.0/8" if plan.nodeport_all_local else "ip daddr @nodeport-ips"
    )
    masq = "jump mark-for-masquerade"
    services = []
    if plan.masquerade_all:
        services.append(f"{FRONTEND_KEY} @cluster-frontends {masq}")
    elif plan.cluster_cidrs:
        cidrs = ", ".join(str(c) for c in plan.cluster_cidrs)
        services.append(f"{FRONTEND_KEY} @cluster-frontends ip saddr != {{ {cidrs} }} {masq}")
    services += [
        f"{FRONTEND_KEY} @masq-frontends {masq}",
        f"{nodeport_match} {NODEPORT_KEY} @masq-nodeports {masq}",
        f"{FRONTEND_KEY} vmap @frontends",
        f"{nodeport_match} {NODEPORT_KEY} vmap @nodeport-frontends",
    ]
    cluster_ips_check = ["ip daddr @cluster-ips reject"]
    if plan.service_cidrs:
        cidrs = ", ".join(str(c) for c in plan.service_cidrs)
        cluster_ips_check.append(f"ip daddr {{ {cidrs} }} drop")
    new = "ct state new"
    chains = [
        Chain(name="filter-input", hook="type filter hook input priority -110; policy accept;",
              rules=(f"{new} jump nodeport-endpoints-check", f"{new} jump service-endpoints-check")),
        Chain(name="filter-forward", hook="type filter hook forward priority -110; policy accept;",
              rules=(f"{new} jump service-endpoints-check", f"{new} jump cluster-ips-check")),
        Chain(name="filter-output", hook="type filter hook output priority -110; policy accept;",
              rules=(f"{new} jump service-endpoints-check",)),
        Chain(name="filter-output-post-dnat", hook="type filter hook output priority -90; policy accept;",
              rules=(f"{new} jump cluster-ips-check",)),
        Chain(name="nat-prerouting", hook="type nat hook prerouting priority dstnat; policy accept;",
              rules=("jump services",)),
        Chain(name="nat-output", hook="type nat hook output priority -100; policy accept;",
              rules=("jump services",)),
        Chain(name="nat-postrouting", hook="type nat hook postrouting priority srcnat; policy accept;",
              rules=(f"ct status dnat ip saddr . ip daddr @hairpin {masq}", "jump masquerading")),
        Chain(name="service-endpoints-check", rules=(f"{FRONTEND_KEY} vmap @no-endpoint-frontends",)),
        Chain(name="nodeport-endpoints-check",
              rules=(f"{nodeport_match} {NODEPORT_KEY} vmap @no-endpoint-nodeports",)),
        Chain(name="cluster-ips-check", rules=tuple(cluster_ips_check)),
        Chain(name="reject-chain", rules=("reject",)),
        Chain(name="mark-for-masquerade", rules=(f"meta mark set meta mark | {MASQUERADE_MARK}",)),
        Chain(name="masquerading", rules=(
            f"meta mark & {MASQUERADE_MARK} == 0 return",
            f"meta mark set meta mark ^ {MASQUERADE_MARK}",
            "masquerade fully-random",
        )),
        Chain(name="services", rules=tuple(services)),
    ]
    sets = list(STATIC_SETS)
    for n in sorted(set(dnat_counts)):
        chains.append(Chain(name=dnat_chain(n, False), rules=(
            f"dnat ip to {FRONTEND_KEY} . numgen random mod {n} map @{endpoints_map(n, False)}",)))
        sets.append(SetSpec(name=endpoints_map(n, False), is_map=True,
                            spec=f"typeof {FRONTEND_KEY} . numgen random mod {n} : ip daddr . th dport;"))
    for n in sorted(set(nodeport_counts)):
        chains.append(Chain(name=dnat_chain(n, True), rules=(
            f"dnat ip to {NODEPORT_KEY} . numgen random mod {n} map @{endpoints_map(n, True)}",)))
        sets.append(SetSpec(name=endpoints_map(n, True), is_map=True,
                            spec=f"typeof {NODEPORT_KEY} . numgen random mod {n} : ip daddr . th dport;"))
    return Skeleton(chains=tuple(chains), sets=tuple(sets))
