"""Plan -> nftables objects. Pure.

The ruleset keeps every per-Service fact in named sets and maps, so the number of chains
does not grow with Services (DESIGN §3): a frontend (ip . proto . port, or proto . port for
NodePorts) maps to `goto dnat-N`, where N is its endpoint count, and chain dnat-N picks
endpoint `numgen random mod N` from map endpoints-N keyed by frontend . index.

Chain layout and hook priorities follow upstream kube-proxy's nftables mode: reject/drop
checks in filter chains at dstnat-10 (and +10 after DNAT for output), source-range
checks in filter prerouting/output, DNAT in nat prerouting/output, masquerade by mark
0x4000 in nat postrouting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kproxy.backends.nft.objects import Chain, Element, SetSpec, Skeleton, table_of
from kproxy.model import IPAddress
from kproxy.plan import Frontend, FrontendKind, Plan, ServicePortPlan, Target

MASQUERADE_MARK = "0x4000"  # upstream's default --iptables-masquerade-bit 14
PROTOCOLS = ("tcp", "udp", "sctp")

# element tables: set name -> key -> element
Contribution = dict[str, dict[str, Element]]

# "{ip}" is "ip" or "ip6": the IPv4 and IPv6 tables differ only in such words
FRONTEND_KEY = "{ip} daddr . meta l4proto . th dport"
NODEPORT_KEY = "meta l4proto . th dport"
VERDICT_MAP = ": verdict;"
PRESENT = Element()  # a plain set's element: shared, there are 100,000s of them


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One way of choosing an endpoint: a verdict map from frontend to `goto <chain>-N`,
    and per endpoint count N a chain and a map of frontend . index -> endpoint."""

    vmap: str
    chain: str
    endpoints: str
    key: str

    def chain_name(self, n: int) -> str:
        return f"{self.chain}-{n}"

    def map_name(self, n: int) -> str:
        return f"{self.endpoints}-{n}"


IPS = Dispatch("frontends", "dnat", "endpoints", FRONTEND_KEY)
NODEPORTS = Dispatch("nodeport-frontends", "dnat-nodeport", "nodeport-endpoints", NODEPORT_KEY)
# externalTrafficPolicy Local: traffic from pods and from the node itself to an external
# frontend goes to every endpoint (upstream's "short-circuit"), through these.
SC_IPS = Dispatch("sc-frontends", "sc-dnat", "sc-endpoints", FRONTEND_KEY)
SC_NODEPORTS = Dispatch("sc-nodeport-frontends", "sc-dnat-nodeport", "sc-nodeport-endpoints", NODEPORT_KEY)
DISPATCHES = (IPS, NODEPORTS, SC_IPS, SC_NODEPORTS)

def static_sets(ip: str, addr: str) -> list[SetSpec]:
    frontend = FRONTEND_KEY.format(ip=ip)
    return [
        SetSpec(name="cluster-ips", spec=f"type {addr};"),
        SetSpec(name="nodeport-ips", spec=f"type {addr};"),
        SetSpec(name="cluster-frontends", spec=f"typeof {frontend};"),
        SetSpec(name="masq-frontends", spec=f"typeof {frontend};"),
        SetSpec(name="masq-nodeports", spec=f"typeof {NODEPORT_KEY};"),
        SetSpec(name="hairpin", spec=f"typeof {ip} saddr . {ip} daddr;"),
        SetSpec(name="firewall-frontends", spec=f"typeof {frontend};"),
        SetSpec(name="firewall-allow", spec=f"typeof {frontend} . {ip} saddr; flags interval;"),
        SetSpec(name="no-endpoint-frontends", spec=f"typeof {frontend} {VERDICT_MAP}", is_map=True),
        SetSpec(name="no-endpoint-nodeports", spec=f"typeof {NODEPORT_KEY} {VERDICT_MAP}", is_map=True),
        *(SetSpec(name=d.vmap, spec=f"typeof {d.key.format(ip=ip)} {VERDICT_MAP}", is_map=True)
          for d in DISPATCHES),
    ]


def ip_text(ip: IPAddress) -> str:
    if ip.version == 6:
        return str(ip)
    # str(IPv4Address) is pure-Python and slow; this is 5x faster over 100,000 endpoints
    n = int(ip)
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def frontend_key(frontend: Frontend, protocol: str) -> str:
    if frontend.ip is None:
        return f"{protocol} . {frontend.port}"
    return f"{ip_text(frontend.ip)} . {protocol} . {frontend.port}"


def affinity_names(timeout: int) -> tuple[str, str, str]:
    """(map, ip frontends set, nodeport frontends set) for one affinity timeout."""
    return f"affinity-{timeout}", f"affinity-frontends-{timeout}", f"affinity-nodeports-{timeout}"


def render_service_port(sp: ServicePortPlan) -> Contribution:
    """The set and map elements one Service port contributes."""
    out: Contribution = {}

    def add(set_name: str, key: str, element: Element = PRESENT) -> None:
        out.setdefault(set_name, {})[key] = element

    def dispatch(how: Dispatch, key: str, targets: tuple[Target, ...], comment: str) -> None:
        n = len(targets)
        add(how.vmap, key, Element(f"goto {how.chain_name(n)}", comment))
        ep_map = how.map_name(n)
        for i, t in enumerate(targets):
            add(ep_map, f"{key} . {i}", Element(f"{ip_text(t.ip)} . {t.port}"))

    proto = sp.protocol.nft
    empty = "drop" if sp.empty_verdict() == "drop" else "goto reject-chain"
    for fe in sp.frontends:
        nodeport = fe.ip is None
        key = frontend_key(fe, proto)
        comment = f"{sp.name} {fe.kind}"
        targets = sp.targets_for(fe)
        if targets:
            dispatch(NODEPORTS if nodeport else IPS, key, targets, comment)
        else:
            add("no-endpoint-nodeports" if nodeport else "no-endpoint-frontends", key, Element(empty, comment))
        if not fe.kind.is_external:
            add("cluster-ips", ip_text(fe.ip))  # type: ignore[arg-type]
            add("cluster-frontends", key)
        else:
            if sp.masquerade_external:
                add("masq-nodeports" if nodeport else "masq-frontends", key)
            if sp.external_policy_local and sp.short_circuit_targets:
                dispatch(SC_NODEPORTS if nodeport else SC_IPS, key, sp.short_circuit_targets, comment)
        if sp.affinity_timeout:
            _, ips_set, nodeports_set = affinity_names(sp.affinity_timeout)
            add(nodeports_set if nodeport else ips_set, key)
        if sp.source_ranges and fe.kind is FrontendKind.LOAD_BALANCER:
            add("firewall-frontends", key)
            for cidr in sp.source_ranges:
                add("firewall-allow", f"{key} . {cidr}")
    # A pod reaching its own Service and landing on itself must be masqueraded, or it
    # would answer itself directly. Only pods on this node can do that, so only local
    # endpoints get an element (upstream marks every endpoint; at 100,000 endpoints that
    # would double the elements for no packet that could ever match).
    for t in sp.all_targets():
        if t.is_local:
            text = ip_text(t.ip)
            add("hairpin", f"{text} . {text}")
    return out


def render_node(plan: Plan) -> Contribution:
    """Elements that come from node settings rather than from a Service."""
    if plan.nodeport_all_local or not plan.nodeport_ips:
        return {}
    return {"nodeport-ips": {ip_text(ip): PRESENT for ip in plan.nodeport_ips}}


def counts_in_use(set_names: Iterable[str]) -> dict[Dispatch, list[int]]:
    """Which endpoint counts each dispatch uses, from the names of non-empty maps."""
    found: dict[Dispatch, list[int]] = {d: [] for d in DISPATCHES}
    by_prefix = {f"{d.endpoints}-": d for d in DISPATCHES}
    for name in set_names:
        prefix, _, count = name.rpartition("-")
        how = by_prefix.get(prefix + "-")
        if how is not None and count.isdigit():
            found[how].append(int(count))
    return found


def affinity_timeouts(set_names: Iterable[str]) -> list[int]:
    timeouts = set()
    for name in set_names:
        for prefix in ("affinity-frontends-", "affinity-nodeports-"):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                timeouts.add(int(name[len(prefix):]))
    return sorted(timeouts)


def render_skeleton(plan: Plan, counts: Mapping[Dispatch, Iterable[int]], timeouts: Iterable[int]) -> Skeleton:
    ip, addr, loopback = ("ip", "ipv4_addr", "127.0.0.0/8") if plan.family == 4 else ("ip6", "ipv6_addr", "::1")
    frontend = FRONTEND_KEY.format(ip=ip)
    nodeport_match = (
        f"fib daddr type local {ip} daddr != {loopback}" if plan.nodeport_all_local else f"{ip} daddr @nodeport-ips"
    )
    masq = "jump mark-for-masquerade"
    pods = ", ".join(str(c) for c in plan.cluster_cidrs)
    timeouts = sorted(set(timeouts))
    services = []
    if plan.masquerade_all:
        services.append(f"{frontend} @cluster-frontends {masq}")
    elif plan.cluster_cidrs:
        services.append(f"{frontend} @cluster-frontends {ip} saddr != {{ {pods} }} {masq}")
    services += [
        f"{frontend} @masq-frontends {masq}",
        f"{nodeport_match} {NODEPORT_KEY} @masq-nodeports {masq}",
        # externalTrafficPolicy Local: the node's own traffic keeps no source worth
        # preserving (its source is a local address), so it is masqueraded
        f"fib saddr type local {frontend} @sc-frontends {masq}",
        f"fib saddr type local {nodeport_match} {NODEPORT_KEY} @sc-nodeport-frontends {masq}",
    ]
    # sessionAffinity: a client seen within the timeout goes to the endpoint it had
    services += [f"dnat {ip} to {ip} saddr . {frontend} map @{affinity_names(t)[0]}" for t in timeouts]
    services.append(f"fib saddr type local {frontend} vmap @sc-frontends")
    if plan.cluster_cidrs:
        services.append(f"{ip} saddr {{ {pods} }} {frontend} vmap @sc-frontends")
    services.append(f"fib saddr type local {nodeport_match} {NODEPORT_KEY} vmap @sc-nodeport-frontends")
    if plan.cluster_cidrs:
        services.append(f"{ip} saddr {{ {pods} }} {nodeport_match} {NODEPORT_KEY} vmap @sc-nodeport-frontends")
    services += [
        f"{frontend} vmap @frontends",
        f"{nodeport_match} {NODEPORT_KEY} vmap @nodeport-frontends",
    ]
    postrouting = [f"ct status dnat {ip} saddr . {ip} daddr @hairpin {masq}"]
    postrouting += _affinity_recording(ip, timeouts, plan.nodeport_all_local)
    postrouting.append("jump masquerading")
    cluster_ips_check = [f"{ip} daddr @cluster-ips goto reject-chain"]
    if plan.service_cidrs:
        cidrs = ", ".join(str(c) for c in plan.service_cidrs)
        cluster_ips_check.append(f"{ip} daddr {{ {cidrs} }} drop")
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
              rules=("jump services",)),
        Chain(name="nat-output", hook="type nat hook output priority -100; policy accept;",
              rules=("jump services",)),
        Chain(name="nat-postrouting", hook="type nat hook postrouting priority srcnat; policy accept;",
              rules=tuple(postrouting)),
        Chain(name="service-endpoints-check", rules=(f"{frontend} vmap @no-endpoint-frontends",)),
        Chain(name="nodeport-endpoints-check",
              rules=(f"{nodeport_match} {NODEPORT_KEY} vmap @no-endpoint-nodeports",)),
        Chain(name="firewall-check", rules=(
            f"{frontend} @firewall-frontends {frontend} . {ip} saddr != @firewall-allow drop",)),
        Chain(name="cluster-ips-check", rules=tuple(cluster_ips_check)),
        # TCP gets a reset: refused at once even where an ICMPv6 error would not end the
        # connect (seen with forwarded IPv6); everything else an ICMP port-unreachable
        Chain(name="reject-chain", rules=("meta l4proto tcp reject with tcp reset", "reject")),
        Chain(name="mark-for-masquerade", rules=(f"meta mark set meta mark | {MASQUERADE_MARK}",)),
        Chain(name="masquerading", rules=(
            f"meta mark & {MASQUERADE_MARK} == 0 return",
            f"meta mark set meta mark ^ {MASQUERADE_MARK}",
            "masquerade fully-random",
        )),
        Chain(name="services", rules=tuple(services)),
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
    return Skeleton(chains=tuple(chains), sets=tuple(sets), table=table_of(plan.family))


def _affinity_recording(ip: str, timeouts: Iterable[int], nodeport_all_local: bool) -> list[str]:
    """Rules that remember, after DNAT, which endpoint a client got, keyed by client and
    original destination. One per protocol: nft can type `ct original proto-dst` only
    with the protocol known."""
    original = f"ct original {ip} daddr . meta l4proto . ct original proto-dst"
    nodeport_ips = "" if nodeport_all_local else f"ct original {ip} daddr @nodeport-ips "
    rules = []
    for t in timeouts:
        table, ips_set, nodeports_set = affinity_names(t)
        remember = f"update @{table} {{ {ip} saddr . {original} : {ip} daddr . th dport }}"
        for proto in PROTOCOLS:
            rules.append(f"meta l4proto {proto} ct status dnat {original} @{ips_set} {remember}")
            rules.append(f"meta l4proto {proto} ct status dnat {nodeport_ips}"
                         f"meta l4proto . ct original proto-dst @{nodeports_set} {remember}")
    return rules
