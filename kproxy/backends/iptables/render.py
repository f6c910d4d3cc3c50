"""Plan -> iptables rules, as iptables-restore lines. Pure.

Layout after upstream kube-proxy's iptables mode, with one change for scale: there are
no per-endpoint KUBE-SEP-* chains. A Service port's KUBE-SVC-* chain (ClusterIP) and
KUBE-EXT-* chain (NodePort, externalIPs, LB IPs) pick endpoint i of n with
`-m statistic --mode random --probability 1/(n-i)` and DNAT directly; hairpin masquerade
(a pod reaching itself) is one rule per local pod, checked in KUBE-POSTROUTING for DNATed
connections, as the nftables backend does with a set. Chain count then grows with Service
ports, not endpoints: on iptables-nft, 10,000 Services with 50,000 local endpoints took
more than 8 minutes to restore with a KUBE-SEP-* chain per local endpoint (docs/DESIGN.md
§3: chains are what costs). The hairpin rules are spread over 64 chains KUBE-HAIRPIN-00..63
by the pod address's last 6 bits; those that hold rules exist, and KUBE-HAIRPIN jumps to
them (`-d 0.0.0.7/0.0.0.63 -j KUBE-HAIRPIN-07`): iptables-nft-restore reads a whole chain to
delete or insert one rule in it, 0.8 s for a chain of 50,000 rules, and a new connection
walks one short chain, not every local pod.

nat: PREROUTING/OUTPUT -> KUBE-SERVICES: frontend -> KUBE-SVC-X | KUBE-EXT-X, then the
     NodePort addresses -> KUBE-NODEPORTS: port -> KUBE-EXT-X. POSTROUTING ->
     KUBE-POSTROUTING: hairpin marks, then masquerade what carries mark 0x4000.
filter (after DNAT: only connections nothing DNATed are still addressed to a Service):
     INPUT -> KUBE-EXTERNAL-SERVICES (NodePort addresses -> KUBE-NODEPORTS) and
     KUBE-SERVICES: reject (or drop) frontends without endpoints;
     FORWARD/OUTPUT -> KUBE-SERVICES, KUBE-CLUSTER-IPS: reject ClusterIPs on ports they
     do not serve, drop the rest of the service CIDRs;
     INPUT/OUTPUT -> KUBE-FIREWALL: upstream's CVE-2020-8558 rule, with localhost NodePorts.
IPv6 (a Plan of family 6, through ip6tables-restore) has the same layout with IPv6
addresses, REJECT with icmp6-port-unreachable (TCP: tcp-reset), and no localhost NodePorts
(upstream: IPv4 only), so no KUBE-FIREWALL.
Every frontend rule carries a comment "namespace/name:port Kind" so read-back (save.py)
and people can tell which Service it belongs to.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from kproxy.backends.base import MASQUERADE_MARK
from kproxy.model import IPAddress, IPNetwork
from kproxy.plan import FrontendKind, HealthCheck, LocalDetector, Plan, ServicePortPlan, Target
from kproxy.values import endpoint_text, ip_text

NAT, FILTER = "nat", "filter"
TABLES = (FILTER, NAT)  # restore order, as upstream

# Chains that are kproxy's whole (created, flushed, deleted by it).
NAT_SERVICES = "KUBE-SERVICES"
NAT_NODEPORTS = "KUBE-NODEPORTS"
POSTROUTING = "KUBE-POSTROUTING"
MARK_MASQ = "KUBE-MARK-MASQ"
MASQ_OFF_CLUSTER = "KUBE-MASQ-OFF-CLUSTER"
HAIRPIN = "KUBE-HAIRPIN"
HAIRPIN_BUCKETS = 64  # chains KUBE-HAIRPIN-00..63, by the pod address's last 6 bits
HAIRPIN_CHAINS = tuple(f"{HAIRPIN}-{b:02d}" for b in range(HAIRPIN_BUCKETS))  # there while they hold rules
FILTER_SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
FILTER_NODEPORTS = "KUBE-NODEPORTS"
CLUSTER_IPS = "KUBE-CLUSTER-IPS"
# Shared with kubelet, which keeps an identical rule: never deleted by kproxy.
FIREWALL = "KUBE-FIREWALL"

# Per-Service-port chains: SVC (ClusterIP), EXT (external frontends), FW (LB source
# ranges), SCT (short-circuit targets, when they differ from the ClusterIP's); upstream's
# KUBE-SEP/SVL are removed when found.
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SCT-", "KUBE-SEP-", "KUBE-SVL-")
STATIC_CHAINS = {
    NAT: (NAT_SERVICES, NAT_NODEPORTS, POSTROUTING, MARK_MASQ, MASQ_OFF_CLUSTER, HAIRPIN),
    FILTER: (FILTER_SERVICES, EXTERNAL_SERVICES, FILTER_NODEPORTS, CLUSTER_IPS),
}

NEW = "-m conntrack --ctstate NEW"

# the kernel's own chains per table, shared with everyone on the node
BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain (shared with everyone on the node) into ours."""

    table: str
    chain: str
    target: str
    spec: str  # matches, without -A/-I CHAIN and without -j

    def rule(self) -> str:
        return f"{self.spec} -j {self.target}".strip()


def jumps(localhost_nodeports: bool) -> tuple[Jump, ...]:
    found = [
        Jump(NAT, "PREROUTING", NAT_SERVICES, '-m comment --comment "kubernetes service portals"'),
        Jump(NAT, "OUTPUT", NAT_SERVICES, '-m comment --comment "kubernetes service portals"'),
        Jump(NAT, "POSTROUTING", POSTROUTING, '-m comment --comment "kubernetes postrouting rules"'),
        Jump(FILTER, "INPUT", EXTERNAL_SERVICES,
             f'{NEW} -m comment --comment "kubernetes externally-visible service portals"'),
        Jump(FILTER, "INPUT", FILTER_SERVICES, f'{NEW} -m comment --comment "kubernetes service portals"'),
        Jump(FILTER, "FORWARD", FILTER_SERVICES, f'{NEW} -m comment --comment "kubernetes service portals"'),
        Jump(FILTER, "FORWARD", CLUSTER_IPS, f'{NEW} -m comment --comment "kubernetes cluster IPs"'),
        Jump(FILTER, "OUTPUT", FILTER_SERVICES, f'{NEW} -m comment --comment "kubernetes service portals"'),
        Jump(FILTER, "OUTPUT", CLUSTER_IPS, f'{NEW} -m comment --comment "kubernetes cluster IPs"'),
    ]
    if localhost_nodeports:
        found += [Jump(FILTER, "INPUT", FIREWALL, ""), Jump(FILTER, "OUTPUT", FIREWALL, "")]
    return tuple(found)


def chain_hash(*parts: str) -> str:
    """Upstream's portProtoHash: base32(sha256(parts joined)) cut to 16 characters."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def svc_chain(sp: ServicePortPlan) -> str:
    return "KUBE-SVC-" + chain_hash(str(sp.name), sp.protocol.nft)


def ext_chain(sp: ServicePortPlan) -> str:
    return "KUBE-EXT-" + chain_hash(str(sp.name), sp.protocol.nft)


def host(ip: IPAddress) -> str:
    """One address as a -s/-d match: a.b.c.d/32 or x::y/128."""
    return f"{ip_text(ip)}/{ip.max_prefixlen}"


def dnat_to(ip: IPAddress, port: int) -> str:
    return endpoint_text(ip_text(ip), port)


def reject(family: int, protocol: str | None) -> str:
    """The REJECT target (after -j). IPv6 rejects TCP with a reset: forwarded IPv6
    connects were not refused by the ICMPv6 error alone (nft backend: same choice)."""
    if family == 4:
        return "REJECT"
    if protocol == "tcp":
        return "REJECT --reject-with tcp-reset"
    return "REJECT --reject-with icmp6-port-unreachable"


HOST_MASK = {4: "255.255.255.255", 6: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}


def comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def port_match(protocol: str, port: int) -> str:
    return f"-p {protocol} -m {protocol} --dport {port}"


@dataclass(slots=True)
class ServicePortRules:
    """What one Service port contributes: its own chains, and its lines in shared chains."""

    chains: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (table, chain)
    shared: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, table: str, chain: str, rule: str) -> None:
        self.shared.setdefault((table, chain), []).append(f"-A {chain} {rule}")


def _dispatch(chain: str, targets: tuple[Target, ...], proto: str, affinity: int | None,
              family: int = 4) -> list[str]:
    """Pick one of `targets` at random, each with equal chance; DNAT to it. With ClientIP
    affinity a client seen within the timeout goes where it went before (one xt_recent
    list per endpoint, as upstream; an endpoint removed takes its list's rule with it)."""
    rules = []
    n = len(targets)
    dnat = [f"-p {proto} -j DNAT --to-destination {dnat_to(t.ip, t.port)}" for t in targets]
    recent = [f"{chain}-{ip_text(t.ip)}-{t.port}" for t in targets]
    mask = HOST_MASK[family]
    if affinity:
        for action, list_name in zip(dnat, recent, strict=True):
            rules.append(f"-A {chain} -m recent --name {list_name} --mask {mask} --rsource --rcheck "
                         f"--seconds {affinity} --reap {action}")
    for i, (action, list_name) in enumerate(zip(dnat, recent, strict=True)):
        pick = f"-m statistic --mode random --probability {1.0 / (n - i):.10f} " if i < n - 1 else ""
        remember = f"-m recent --name {list_name} --mask {mask} --rsource --set " if affinity else ""
        rules.append(f"-A {chain} {pick}{remember}{action}")
    return rules


NO_DETECTOR = LocalDetector()


def local_matches(local: LocalDetector) -> list[str]:
    """One match per rule for traffic the detector calls local: a source CIDR, or the
    input interface (iptables' "name+" matches a prefix)."""
    if local.by_interface:
        return [f"-i {local.interface}{'+' if local.interface_prefix else ''}"]
    return [f"-s {cidr}" for cidr in local.cidrs]


def render_service_port(sp: ServicePortPlan, masquerade_all: bool,
                        local: LocalDetector = NO_DETECTOR, family: int = 4) -> ServicePortRules:
    out = ServicePortRules()
    proto = sp.protocol.nft
    name = str(sp.name)
    svc, ext, fw = svc_chain(sp), ext_chain(sp), "KUBE-FW-" + svc_chain(sp)[9:]
    affinity = sp.affinity_timeout
    empty = "DROP" if sp.empty_verdict() == "drop" else reject(family, proto)
    internal = sp.internal_targets
    short_circuit = sp.short_circuit_targets if sp.external_policy_local else ()
    uses_ext = False
    uses_fw = False
    for fe in sp.frontends:
        targets = sp.targets_for(fe)
        label = comment(f"{name} {fe.kind}")
        match = f"{label} {port_match(proto, fe.port)}"
        if fe.kind is FrontendKind.CLUSTER_IP and fe.ip is not None:
            where = f"-d {host(fe.ip)}"
            if targets:
                out.add(NAT, NAT_SERVICES, f"{where} {match} -j {svc}")
            else:
                out.add(FILTER, FILTER_SERVICES, f"{where} {match} -j {empty}")
            continue
        nodeport = fe.ip is None
        where = "" if fe.ip is None else f"-d {host(fe.ip)} "
        if targets or short_circuit:
            uses_ext = True
            jump = ext
            if fe.kind is FrontendKind.LOAD_BALANCER and sp.source_ranges:
                # loadBalancerSourceRanges: DNAT only the allowed sources; the filter
                # table drops what stayed addressed to the LB IP.
                jump, uses_fw = fw, True
                out.add(FILTER, FILTER_SERVICES,
                        f"{where}{comment(f'{name} LoadBalancer source ranges')} "
                        f"{port_match(proto, fe.port)} -j DROP")
            out.add(NAT, NAT_NODEPORTS if nodeport else NAT_SERVICES, f"{where}{match} -j {jump}")
        if not targets:
            # also what short-circuit rules leave: traffic from outside the node
            out.add(FILTER, FILTER_NODEPORTS if nodeport else FILTER_SERVICES, f"{where}{match} -j {empty}")
    if internal:
        rules = []
        vip, vport = next((fe.ip, fe.port) for fe in sp.frontends
                          if fe.kind is FrontendKind.CLUSTER_IP and fe.ip is not None)
        dest = f"-d {host(vip)} {port_match(proto, vport)}"
        if masquerade_all:
            rules.append(f"-A {svc} {dest} -j {MARK_MASQ}")
        elif local.implemented:
            rules.append(f"-A {svc} {dest} -j {MASQ_OFF_CLUSTER}")
        rules += _dispatch(svc, internal, proto, affinity, family)
        out.chains[(NAT, svc)] = tuple(rules)
    if uses_fw:
        out.chains[(NAT, fw)] = tuple(f"-A {fw} -s {cidr} -j {ext}" for cidr in sp.source_ranges
                                      if cidr.version == family)
    if uses_ext:
        rules = []
        if sp.masquerade_external:
            rules.append(f"-A {ext} {comment(f'masquerade traffic for {name} external destinations')} "
                         f"-j {MARK_MASQ}")
        if short_circuit:
            # externalTrafficPolicy Local: pods and the node itself reach every endpoint
            # (upstream's short-circuit); the node's own traffic is masqueraded.
            if short_circuit == internal:
                to = svc
            else:
                to = "KUBE-SCT-" + svc[9:]
                out.chains[(NAT, to)] = tuple(_dispatch(to, short_circuit, proto, affinity, family))
            rules += [f"-A {ext} {match} {comment(f'pod traffic for {name} external destinations')} -j {to}"
                      for match in local_matches(local)]
            rules += [
                f"-A {ext} -m addrtype --src-type LOCAL {comment(f'masquerade LOCAL traffic for {name}')} "
                f"-j {MARK_MASQ}",
                f"-A {ext} -m addrtype --src-type LOCAL {comment(f'route LOCAL traffic for {name}')} -j {to}",
            ]
        external = sp.external_targets
        if external and external == internal:
            rules.append(f"-A {ext} -j {svc}")
        elif external:
            rules += _dispatch(ext, external, proto, affinity, family)
        out.chains[(NAT, ext)] = tuple(rules)
    # A pod reaching its own Service and landing on itself must be masqueraded, or it
    # would answer itself directly; only pods on this node can (nft backend: same rule).
    for t in (*internal, *sp.external_targets, *short_circuit):
        if t.is_local:
            text = host(t.ip)
            chain, addresses = hairpin_bucket(t.ip)
            out.add(NAT, HAIRPIN, f"-d {addresses} -j {chain}")
            out.add(NAT, chain, f"-s {text} -d {text} -j {MARK_MASQ}")
    return out


def hairpin_bucket(ip: IPAddress) -> tuple[str, str]:
    """`ip`'s hairpin chain, and the addresses KUBE-HAIRPIN sends there, as iptables-save
    prints them (address/mask)."""
    mask = HAIRPIN_BUCKETS - 1
    bucket = int(ip) & mask
    return HAIRPIN_CHAINS[bucket], f"{type(ip)(bucket)}/{type(ip)(mask)}"


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What render_node reads of a Plan: the backend renders the node's chains again only
    when these change (cluster_ips alone is 10,000 lines at 10,000 Services)."""

    family: int
    localhost_nodeports: bool
    nodeport_all_local: bool
    nodeport_ips: tuple[IPAddress, ...]
    health_checks: tuple[HealthCheck, ...]
    local: LocalDetector
    cluster_ips: tuple[IPAddress, ...]
    service_cidrs: tuple[IPNetwork, ...]

    @classmethod
    def of(cls, plan: Plan, localhost_nodeports: bool) -> NodeFacts:
        return cls(plan.family, localhost_nodeports and plan.family == 4, plan.nodeport_all_local,
                   plan.nodeport_ips, plan.health_checks, plan.local, plan.cluster_ips, plan.service_cidrs)


def nodeport_address_rules(node: NodeFacts) -> list[str]:
    """Matches (one per rule) for the addresses NodePorts answer on (IPv6: never ::1, and
    no localhost NodePorts)."""
    loopback = "127.0.0.0/8" if node.family == 4 else "::1/128"
    if node.nodeport_all_local:
        found = ["-m addrtype --dst-type LOCAL" + ("" if node.localhost_nodeports else f" ! -d {loopback}")]
    else:
        found = [f"-d {host(ip)}" for ip in node.nodeport_ips]
        if node.localhost_nodeports:
            found.append("-d 127.0.0.1/32")
    return found


def render_node(node: NodeFacts) -> dict[tuple[str, str], tuple[str, ...]]:
    """The node-wide chains, and node-wide lines of shared chains (the head or tail parts)."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    addresses = nodeport_address_rules(node)
    out[(NAT, "tail:" + NAT_SERVICES)] = tuple(
        f"-A {NAT_SERVICES} {a} {comment('kubernetes service nodeports')} -j {NAT_NODEPORTS}" for a in addresses)
    out[(FILTER, "head:" + FILTER_NODEPORTS)] = tuple(
        f"-A {FILTER_NODEPORTS} {comment(f'{hc.service} health check node port')} "
        f"{port_match('tcp', hc.node_port)} -j ACCEPT" for hc in node.health_checks)
    out[(NAT, MARK_MASQ)] = (f"-A {MARK_MASQ} -j MARK --or-mark {MASQUERADE_MARK}",)
    out[(NAT, MASQ_OFF_CLUSTER)] = (
        *(f"-A {MASQ_OFF_CLUSTER} {match} -j RETURN" for match in local_matches(node.local)),
        f"-A {MASQ_OFF_CLUSTER} -j {MARK_MASQ}",
    )
    out[(NAT, POSTROUTING)] = (
        f"-A {POSTROUTING} -m conntrack --ctstate DNAT -j {HAIRPIN}",
        f"-A {POSTROUTING} -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN",
        f"-A {POSTROUTING} -j MARK --xor-mark {MASQUERADE_MARK}",
        f"-A {POSTROUTING} {comment('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully",
    )
    out[(FILTER, EXTERNAL_SERVICES)] = tuple(f"-A {EXTERNAL_SERVICES} {a} -j {FILTER_NODEPORTS}" for a in addresses)
    cluster_ips = []
    for ip in node.cluster_ips:
        where = f"-A {CLUSTER_IPS} -d {host(ip)} {comment('cluster IP, port not served')}"
        if node.family != 4:
            cluster_ips.append(f"{where} -p tcp -j {reject(node.family, 'tcp')}")
        cluster_ips.append(f"{where} -j {reject(node.family, None)}")
    cluster_ips += [f"-A {CLUSTER_IPS} -d {c} {comment('unallocated service IP')} -j DROP"
                    for c in node.service_cidrs]
    out[(FILTER, CLUSTER_IPS)] = tuple(cluster_ips)
    if node.localhost_nodeports:
        out[(FILTER, FIREWALL)] = (
            f"-A {FIREWALL} {comment('block incoming localnet connections')} -d 127.0.0.0/8 ! -s 127.0.0.0/8 "
            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",)
    return out


Chains = dict[str, dict[str, tuple[str, ...]]]  # table -> chain -> rules


def assemble(node: dict[tuple[str, str], tuple[str, ...]], ports: Iterable[ServicePortRules]) -> Chains:
    """All chains of the desired ruleset."""
    chains: Chains = {table: {c: () for c in STATIC_CHAINS[table]} for table in TABLES}
    shared: dict[tuple[str, str], list[str]] = {}
    for rules in ports:
        for (table, chain), lines in rules.chains.items():
            chains[table][chain] = lines
        for key, shared_lines in rules.shared.items():
            bucket = shared.get(key)
            if bucket is None:
                shared[key] = list(shared_lines)
            else:
                bucket.extend(shared_lines)
    for (table, chain), joined in shared.items():
        # sorted, each line once (one hairpin rule per local pod, however many Services it
        # backs): the order a partial sync's inserts keep (chains.ChainState)
        chains[table][chain] = tuple(sorted(set(joined)))
    for (table, chain), lines in node.items():
        if chain.startswith("tail:"):
            chain = chain[5:]
            chains[table][chain] = chains[table][chain] + lines
        elif chain.startswith("head:"):
            chain = chain[5:]
            chains[table][chain] = lines + chains[table][chain]
        else:
            chains[table][chain] = lines
    return chains


def render(plan: Plan, localhost_nodeports: bool = True) -> Chains:
    """The whole desired ruleset, uncached (the backend caches per Service port)."""
    return assemble(render_node(NodeFacts.of(plan, localhost_nodeports)),
                    (render_service_port(sp, plan.masquerade_all, plan.local, plan.family)
                     for sp in plan.service_ports))
