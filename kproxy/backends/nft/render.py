"""Plan -> nftables objects. Pure.

The ruleset keeps every per-Service fact in named sets and maps, so the number of chains
does not grow with Services (docs/DESIGN.md §3): a frontend (ip . proto . port, or proto . port for
NodePorts) maps to `goto dnat-N`, where N is its endpoint count, and chain dnat-N picks
endpoint `numgen random mod N` from map endpoints-N keyed by frontend . index.

Chain layout and hook priorities follow upstream kube-proxy's nftables mode: reject/drop
checks in filter chains at dstnat-10 (and +10 after DNAT for output), source-range
checks in filter prerouting/output, DNAT in nat prerouting/output, masquerade by mark
0x4000 in nat postrouting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network, IPv6Network, collapse_addresses, ip_network

from kproxy.backends.base import MASQUERADE_MARK
from kproxy.backends.nft import affinity6 as affinity6_parts
from kproxy.backends.nft.names import (
    CLUSTER_CIDRS,
    CLUSTER_FRONTENDS,
    CLUSTER_IPS,
    DISPATCHES,
    FIREWALL_ALLOW_KEY,
    FIREWALL_FRONTENDS,
    FRONTEND_KEY,
    HAIRPIN,
    IPS,
    MARK_FOR_MASQUERADE,
    MASQ_FRONTENDS,
    MASQ_NODEPORTS,
    MASQUERADING,
    NO_ENDPOINT_FRONTENDS,
    NO_ENDPOINT_NODEPORTS,
    NO_MASQ_SOURCES,
    NODEPORT_IPS,
    NODEPORT_KEY,
    NODEPORTS,
    REJECT_CHAIN,
    SC_IPS,
    SC_MASQ_FRONTENDS,
    SC_MASQ_NODEPORTS,
    SC_NODEPORTS,
    SERVICE_CIDRS,
    SERVICES,
    SKELETON,
    Dispatch,
    affinity_names,
    affinity_timeout_of,
    firewall_allow,
    table_of,
)
from kproxy.backends.nft.objects import Chain, Element, SetSpec, Skeleton
from kproxy.model import IPNetwork
from kproxy.plan import Frontend, FrontendKind, Plan, ServicePortPlan, Target
from kproxy.values import ip_text

PROTOCOLS = ("tcp", "udp", "sctp")

# element tables: set name -> key -> element; for an endpoint map (names.is_endpoint_map),
# set name -> frontend key -> its endpoints by index: the plan's own Targets, so 100,000s of
# endpoints cost no element objects or strings while held (keys "<frontend> . <index>",
# elements endpoint_element(target))
Row = tuple[Target, ...]
Contribution = dict[str, dict[str, Element] | dict[str, Row]]


def endpoint_element(target: Target) -> Element:
    """An endpoint map's element for one endpoint: its address and port."""
    return Element(f"{ip_text(target.ip)} . {target.port}")

VERDICT_MAP = ": verdict;"
PRESENT = Element()  # a plain set's element: shared, there are 100,000s of them


def static_sets(ip: str, addr: str) -> list[SetSpec]:
    frontend = FRONTEND_KEY.format(ip=ip)
    return [
        SetSpec(name=SKELETON, spec="type inet_service;"),
        SetSpec(name=CLUSTER_IPS, spec=f"type {addr};"),
        SetSpec(name=NODEPORT_IPS, spec=f"type {addr};"),
        SetSpec(name=CLUSTER_CIDRS, spec=f"type {addr}; flags interval;"),
        SetSpec(name=NO_MASQ_SOURCES, spec=f"type {addr}; flags interval;"),
        SetSpec(name=SERVICE_CIDRS, spec=f"type {addr}; flags interval;"),
        SetSpec(name=CLUSTER_FRONTENDS, spec=f"typeof {frontend};"),
        SetSpec(name=MASQ_FRONTENDS, spec=f"typeof {frontend};"),
        SetSpec(name=MASQ_NODEPORTS, spec=f"typeof {NODEPORT_KEY};"),
        SetSpec(name=HAIRPIN, spec=f"typeof {ip} saddr . {ip} daddr;"),
        SetSpec(name=FIREWALL_FRONTENDS, spec=f"typeof {frontend};"),
        *(SetSpec(name=firewall_allow(p), spec=f"typeof {FIREWALL_ALLOW_KEY.format(ip=ip)}; flags interval;")
          for p in PROTOCOLS),
        SetSpec(name=SC_MASQ_FRONTENDS, spec=f"typeof {frontend};"),
        SetSpec(name=SC_MASQ_NODEPORTS, spec=f"typeof {NODEPORT_KEY};"),
        SetSpec(name=NO_ENDPOINT_FRONTENDS, spec=f"typeof {frontend} {VERDICT_MAP}", is_map=True),
        SetSpec(name=NO_ENDPOINT_NODEPORTS, spec=f"typeof {NODEPORT_KEY} {VERDICT_MAP}", is_map=True),
        *(SetSpec(name=d.vmap, spec=f"typeof {d.key.format(ip=ip)} {VERDICT_MAP}", is_map=True)
          for d in DISPATCHES),
    ]


def frontend_key(frontend: Frontend, protocol: str) -> str:
    if frontend.ip is None:
        return f"{protocol} . {frontend.port}"
    return f"{ip_text(frontend.ip)} . {protocol} . {frontend.port}"


def render_service_port(sp: ServicePortPlan) -> Contribution:
    """The set and map elements one Service port contributes."""
    out: Contribution = {}

    def add(set_name: str, key: str, element: Element = PRESENT) -> None:
        out.setdefault(set_name, {})[key] = element  # type: ignore[assignment]

    def dispatch(how: Dispatch, key: str, targets: tuple[Target, ...], comment: str) -> None:
        n = len(targets)
        add(how.vmap, key, Element(f"goto {how.chain_name(n)}", comment))
        out.setdefault(how.map_name(n), {})[key] = targets  # type: ignore[assignment]

    proto = sp.protocol.nft
    empty = "drop" if sp.empty_verdict() == "drop" else f"goto {REJECT_CHAIN}"
    for fe in sp.frontends:
        nodeport = fe.ip is None
        key = frontend_key(fe, proto)
        comment = f"{sp.name} {fe.kind}"
        targets = sp.targets_for(fe)
        if targets:
            dispatch(NODEPORTS if nodeport else IPS, key, targets, comment)
        else:
            add(NO_ENDPOINT_NODEPORTS if nodeport else NO_ENDPOINT_FRONTENDS, key, Element(empty, comment))
        if fe.ip is not None and not fe.kind.is_external:
            add(CLUSTER_IPS, ip_text(fe.ip))
            add(CLUSTER_FRONTENDS, key)
        elif fe.kind.is_external:
            if sp.masquerade_external:
                add(MASQ_NODEPORTS if nodeport else MASQ_FRONTENDS, key)
            if sp.external_policy_local and sp.short_circuit_targets:
                dispatch(SC_NODEPORTS if nodeport else SC_IPS, key, sp.short_circuit_targets, comment)
                add(SC_MASQ_NODEPORTS if nodeport else SC_MASQ_FRONTENDS, key)
        if sp.affinity_timeout:
            _, ips_set, nodeports_set = affinity_names(sp.affinity_timeout)
            add(nodeports_set if nodeport else ips_set, key)
        if sp.source_ranges and fe.kind is FrontendKind.LOAD_BALANCER and fe.ip is not None:
            add(FIREWALL_FRONTENDS, key)
            for cidr in sp.source_ranges:
                add(firewall_allow(proto), f"{ip_text(fe.ip)} . {fe.port} . {cidr}")
    # A pod reaching its own Service and landing on itself must be masqueraded, or it
    # would answer itself directly. Only pods on this node can do that, so only local
    # endpoints get an element (upstream marks every endpoint; at 100,000 endpoints that
    # would double the elements for no packet that could ever match).
    hairpin: dict[str, Element] = {}
    # by text, not by address (whose hash is Python code); each tuple of targets once
    # (with Cluster policies, internal and external are one tuple)
    groups = (sp.internal_targets, sp.external_targets, sp.short_circuit_targets)
    for targets in {id(group): group for group in groups}.values():
        for target in targets:
            if target.is_local:
                text = ip_text(target.ip)
                hairpin[f"{text} . {text}"] = PRESENT
    if hairpin:
        out[HAIRPIN] = hairpin
    return out


def _intervals(cidrs: Iterable[IPNetwork]) -> dict[str, Element]:
    """CIDRs as interval-set elements; overlapping ones merged (the kernel refuses overlaps)."""
    v4 = [c for c in cidrs if isinstance(c, IPv4Network)]
    v6 = [c for c in cidrs if isinstance(c, IPv6Network)]
    return {str(c): PRESENT for c in (*collapse_addresses(v4), *collapse_addresses(v6))}


def render_node(plan: Plan) -> Contribution:
    """Elements that come from node settings rather than from a Service: where NodePorts
    answer, the pod CIDRs, the service CIDRs, and whose ClusterIP traffic is not
    masqueraded (the pod CIDRs; nobody with --masquerade-all; everyone when no pod CIDR is
    known, as upstream masquerades nothing then)."""
    out: Contribution = {}
    if not plan.nodeport_all_local and plan.nodeport_ips:
        out[NODEPORT_IPS] = {ip_text(ip): PRESENT for ip in plan.nodeport_ips}
    if plan.local.cidrs:
        out[CLUSTER_CIDRS] = _intervals(plan.local.cidrs)
    if plan.service_cidrs:
        out[SERVICE_CIDRS] = _intervals(plan.service_cidrs)
    if not plan.masquerade_all and not plan.local.by_interface:
        everyone = (ip_network("0.0.0.0/0") if plan.family == 4 else ip_network("::/0"),)
        out[NO_MASQ_SOURCES] = _intervals(plan.local.cidrs or everyone)
    return out


def local_traffic(plan: Plan, ip: str) -> tuple[str, str]:
    """(is local, is not local) matches of the Plan's local-traffic detector: the source in
    the pod CIDRs (sets, so a change of them is an element change) or the input interface
    (nft's "name*" matches a prefix). With --masquerade-all, "not local" is everyone (the
    empty no-masq-sources); with no detector, no one (that set then holds everyone)."""
    not_local = f"{ip} saddr != @{NO_MASQ_SOURCES}"
    if not plan.local.by_interface:
        return f"{ip} saddr @{CLUSTER_CIDRS}", not_local
    name = plan.local.interface + ("*" if plan.local.interface_prefix else "")
    return f'iifname "{name}"', not_local if plan.masquerade_all else f'iifname != "{name}"'


def counts_in_use(set_names: Iterable[str]) -> dict[Dispatch, list[int]]:
    """Which endpoint counts each dispatch uses, from the names of non-empty maps."""
    found: dict[Dispatch, list[int]] = {d: [] for d in DISPATCHES}
    for name in set_names:
        for how in DISPATCHES:
            n = how.count_of(name)
            if n is not None and name == how.map_name(n):
                found[how].append(n)
    return found


def affinity_timeouts(set_names: Iterable[str]) -> list[int]:
    return sorted({t for t in map(affinity_timeout_of, set_names) if t is not None})


def render_skeleton(plan: Plan, counts: Mapping[Dispatch, Iterable[int]], timeouts: Iterable[int],
                    affinity6: Iterable[ServicePortPlan] = ()) -> Skeleton:
    """`affinity6`: the IPv6 Service ports with sessionAffinity (affinity6.py)."""
    ip, addr, loopback = ("ip", "ipv4_addr", "127.0.0.0/8") if plan.family == 4 else ("ip6", "ipv6_addr", "::1")
    frontend = FRONTEND_KEY.format(ip=ip)
    nodeport = (f"fib daddr type local {ip} daddr != {loopback}" if plan.nodeport_all_local
                else f"{ip} daddr @{NODEPORT_IPS}") + f" {NODEPORT_KEY}"
    masq = f"jump {MARK_FOR_MASQUERADE}"
    pods, not_local = local_traffic(plan, ip)
    node_own = "fib saddr type local"
    timeouts = sorted(set(timeouts))
    services = [
        # ClusterIP traffic from outside the pod CIDRs (or all of it: --masquerade-all)
        f"{frontend} @{CLUSTER_FRONTENDS} {not_local} {masq}",
        f"{frontend} @{MASQ_FRONTENDS} {masq}",
        f"{nodeport} @{MASQ_NODEPORTS} {masq}",
        # externalTrafficPolicy Local: the node's own traffic keeps no source worth
        # preserving (its source is a local address), so it is masqueraded
        f"{node_own} {frontend} @{SC_MASQ_FRONTENDS} {masq}",
        f"{node_own} {nodeport} @{SC_MASQ_NODEPORTS} {masq}",
    ]
    # sessionAffinity: a client seen within the timeout goes to the endpoint it had
    services += [f"dnat {ip} to {ip} saddr . {frontend} map @{affinity_names(t)[0]}" for t in timeouts]
    affinity6 = list(affinity6)
    if affinity6:
        lookups, recording, affinity6_maps = affinity6_parts.skeleton_parts(nodeport, plan.nodeport_all_local)
        services += lookups
    services += [
        f"{node_own} {frontend} vmap @{SC_IPS.vmap}",
        f"{pods} {frontend} vmap @{SC_IPS.vmap}",
        f"{node_own} {nodeport} vmap @{SC_NODEPORTS.vmap}",
        f"{pods} {nodeport} vmap @{SC_NODEPORTS.vmap}",
        f"{frontend} vmap @{IPS.vmap}",
        f"{nodeport} vmap @{NODEPORTS.vmap}",
    ]
    postrouting = [f"ct status dnat {ip} saddr . {ip} daddr @{HAIRPIN} {masq}"]
    postrouting += _affinity_recording(ip, timeouts, plan.nodeport_all_local)
    if affinity6:
        postrouting += recording
    postrouting.append(f"jump {MASQUERADING}")
    new = "ct state new"
    chains = [
        Chain(name="filter-prerouting", hook="type filter hook prerouting priority -110; policy accept;",
              rules=(f"{new} jump firewall-check",)),
        Chain(name="filter-input", hook="type filter hook input priority -110; policy accept;",
              rules=(f"{new} jump nodeport-endpoints-check", f"{new} jump service-endpoints-check")),
        Chain(name="filter-forward", hook="type filter hook forward priority -110; policy accept;",
              rules=(f"{new} jump service-endpoints-check", f"{new} jump cluster-ips-check")),
        Chain(name="filter-output", hook="type filter hook output priority -110; policy accept;",
              rules=(f"{new} jump service-endpoints-check", f"{new} jump firewall-check")),
        Chain(name="filter-output-post-dnat", hook="type filter hook output priority -90; policy accept;",
              rules=(f"{new} jump cluster-ips-check",)),
        Chain(name="nat-prerouting", hook="type nat hook prerouting priority dstnat; policy accept;",
              rules=(f"jump {SERVICES}",)),
        Chain(name="nat-output", hook="type nat hook output priority -100; policy accept;",
              rules=(f"jump {SERVICES}",)),
        Chain(name="nat-postrouting", hook="type nat hook postrouting priority srcnat; policy accept;",
              rules=tuple(postrouting)),
        Chain(name="service-endpoints-check", rules=(f"{frontend} vmap @{NO_ENDPOINT_FRONTENDS}",)),
        Chain(name="nodeport-endpoints-check", rules=(f"{nodeport} vmap @{NO_ENDPOINT_NODEPORTS}",)),
        Chain(name="firewall-check", rules=tuple(
            f"{frontend} @{FIREWALL_FRONTENDS} meta l4proto {p} "
            f"{FIREWALL_ALLOW_KEY.format(ip=ip)} != @{firewall_allow(p)} drop" for p in PROTOCOLS)),
        # a ClusterIP on a port it does not serve is refused; the rest of the service
        # CIDRs is not in use, and dropped
        Chain(name="cluster-ips-check", rules=(f"{ip} daddr @{CLUSTER_IPS} goto {REJECT_CHAIN}",
                                               f"{ip} daddr @{SERVICE_CIDRS} drop")),
        # TCP gets a reset: refused at once even where an ICMPv6 error would not end the
        # connect (seen with forwarded IPv6); everything else an ICMP port-unreachable
        Chain(name=REJECT_CHAIN, rules=("meta l4proto tcp reject with tcp reset", "reject")),
        Chain(name=MARK_FOR_MASQUERADE, rules=(f"meta mark set meta mark | {MASQUERADE_MARK}",)),
        Chain(name=MASQUERADING, rules=(
            f"meta mark & {MASQUERADE_MARK} == 0 return",
            f"meta mark set meta mark ^ {MASQUERADE_MARK}",
            "masquerade fully-random",
        )),
        Chain(name=SERVICES, rules=tuple(services)),
    ]
    sets = static_sets(ip, addr)
    for how in DISPATCHES:
        key = how.key.format(ip=ip)
        for n in sorted(set(counts.get(how, ()))):
            chains.append(Chain(name=how.chain_name(n), rules=(
                f"dnat {ip} to {key} . numgen random mod {n} map @{how.map_name(n)}",)))
            sets.append(SetSpec(name=how.map_name(n), is_map=True,
                                spec=f"typeof {key} . numgen random mod {n} : {ip} daddr . th dport;"))
    for t in timeouts:
        table, ips_set, nodeports_set = affinity_names(t)
        sets += [
            SetSpec(name=table, is_map=True, spec=(
                f"type {addr} . {addr} . inet_proto . inet_service : {addr} . inet_service; "
                f"flags dynamic,timeout; timeout {t}s;")),
            SetSpec(name=ips_set, spec=f"typeof {frontend};"),
            SetSpec(name=nodeports_set, spec=f"typeof {NODEPORT_KEY};"),
        ]
    if affinity6:
        sets += affinity6_maps
        for sp in affinity6:
            sp_chains, sp_sets = affinity6_parts.chains_and_sets(sp)
            chains += sp_chains
            sets += sp_sets
    return Skeleton(chains=tuple(chains), sets=tuple(sets), table=table_of(plan.family))


def _affinity_recording(ip: str, timeouts: Iterable[int], nodeport_all_local: bool) -> list[str]:
    """Rules that remember, after DNAT, which endpoint a client got, keyed by client and
    original destination. One per protocol: nft can type `ct original proto-dst` only
    with the protocol known."""
    original = f"ct original {ip} daddr . meta l4proto . ct original proto-dst"
    nodeport_ips = "" if nodeport_all_local else f"ct original {ip} daddr @{NODEPORT_IPS} "
    rules = []
    for t in timeouts:
        table, ips_set, nodeports_set = affinity_names(t)
        remember = f"update @{table} {{ {ip} saddr . {original} : {ip} daddr . th dport }}"
        for proto in PROTOCOLS:
            rules.append(f"meta l4proto {proto} ct status dnat {original} @{ips_set} {remember}")
            rules.append(f"meta l4proto {proto} ct status dnat {nodeport_ips}"
                         f"meta l4proto . ct original proto-dst @{nodeports_set} {remember}")
    return rules
