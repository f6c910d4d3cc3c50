"""`kproxy trace`: what this node's programmed nftables rules do with one new connection.

Pure: it evaluates the kernel's own listing of `ip kproxy` / `ip6 kproxy` (JSON for the sets
and maps, the rule text for the CIDRs in the masquerade rules), not the planner's intent,
and follows the same order the kernel does: source ranges, NodePort/ClusterIP dispatch,
short-circuit for pods and the node, masquerade marks, reject/drop checks.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any

from kproxy.model import IPAddress


# the reasons and steps both backends' traces give, worded alike so their --json compares
NOTHING_PROGRAMMED = "kproxy has programmed nothing on this node"
NOT_A_SERVICE = "not a Service address: kproxy's rules let it pass"
SOURCE_RANGES_DROP = "source not in loadBalancerSourceRanges"
SOURCE_ALLOWED = "source allowed by loadBalancerSourceRanges"
SHORT_CIRCUIT = "short-circuit: pods and the node itself use every endpoint (externalTrafficPolicy Local)"
NO_LOCAL_ENDPOINT = "no endpoint on this node (traffic policy Local)"
NO_ENDPOINTS = "no ready endpoints"
WRONG_PORT = "a ClusterIP, but not on this port"
UNALLOCATED = "an unallocated address in the service CIDR"
MASQ_ALL = "--masquerade-all"
MASQ_OFF_CLUSTER_REASON = "ClusterIP traffic from outside the cluster CIDR"
MASQ_EXTERNAL = "external traffic (externalTrafficPolicy Cluster): replies must return through this node"
MASQ_NODE_OWN = "the node's own traffic to an externalTrafficPolicy Local frontend"
MASQ_HAIRPIN = "hairpin: if it lands on the source pod itself"


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceResult:
    verdict: str  # dnat, reject, drop, none (not a Service address: kproxy lets it pass)
    reason: str
    service_port: str | None = None
    frontend: str | None = None  # ClusterIP, NodePort, ExternalIP, LoadBalancer
    source_kind: str = "external"  # pod (inside --cluster-cidr), node (a local address), external
    endpoints: tuple[str, ...] = ()  # each chosen with equal share
    local_endpoints: tuple[str, ...] = ()  # those on this node (kproxy's hairpin rules list them)
    masquerade: bool = False
    masquerade_reasons: tuple[str, ...] = ()
    affinity_seconds: int | None = None
    steps: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Ruleset:
    """The parts of one kproxy table a trace needs, read from `nft -j list table`."""

    def __init__(self, listing: dict[str, Any] | None, text: str = "") -> None:
        self.sets: dict[str, list[Any]] = {}
        for item in (listing or {}).get("nftables", []):
            for kind in ("set", "map"):
                if kind in item:
                    self.sets[item[kind]["name"]] = item[kind].get("elem") or []
        self.pod_cidrs = _cidrs_after(text, r"@cluster-frontends ip6? saddr != (\{[^}]*\}|\S+)")
        self.masquerade_all = re.search(r"th dport @cluster-frontends jump mark-for-masquerade", text) is not None
        self.service_cidrs = _cidrs_after(text, r"ip6? daddr (\{[^}]*\}|\S+) drop")
        self.present = listing is not None

    def keys(self, name: str) -> dict[tuple[str, ...], tuple[Any, str | None]]:
        """element key (as text parts) -> (data, comment)."""
        found = {}
        for entry in self.sets.get(name, []):
            key, data = (entry if isinstance(entry, list) and len(entry) == 2 else (entry, None))
            comment = None
            if isinstance(key, dict) and "elem" in key:
                comment = key["elem"].get("comment")
                key = key["elem"]["val"]
            parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
            found[tuple(_text(p) for p in parts)] = (data, comment)
        return found

    def endpoints(self, prefix: str, key: tuple[str, ...], data: Any) -> tuple[str, ...]:
        target = (data or {}).get("goto", {}).get("target", "")
        n = target.rsplit("-", 1)[-1]
        table = self.keys(f"{prefix}-{n}")
        chosen = []
        for index in range(int(n) if n.isdigit() else 0):
            value = table.get((*key, str(index)), (None, None))[0]
            if value:
                ip, port = value["concat"]
                chosen.append(endpoint_text(ip, port))
        return tuple(chosen)


def endpoint_text(ip: object, port: int | None = None) -> str:
    """10.0.0.1, 80 -> "10.0.0.1:80"; fd00::1, 80 -> "[fd00::1]:80"; no port: the address alone."""
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"{host}:{port}" if port is not None else host


def endpoint_host(endpoint: str) -> str:
    """"10.0.0.1:80" -> "10.0.0.1", "[fd00::1]:80" -> "fd00::1"."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


def _text(part: Any) -> str:
    """One key part as nft prints it: an address, a number, or a prefix as addr/len."""
    if isinstance(part, dict) and "prefix" in part:
        return f"{part['prefix']['addr']}/{part['prefix']['len']}"
    return str(part)


def _cidrs_after(text: str, pattern: str) -> tuple[Any, ...]:
    match = re.search(pattern, text)
    if not match:
        return ()
    # nft prints one CIDR bare and several as an anonymous set in braces
    return tuple(ip_network(c.strip(), strict=False) for c in match.group(1).strip("{} ").split(","))


def trace(rules: Ruleset, src: IPAddress, dst: IPAddress, port: int, proto: str) -> TraceResult:
    steps: list[str] = []
    if not rules.present:
        return TraceResult(verdict="none", reason=NOTHING_PROGRAMMED)
    nodeport_ips = {str(k[0]) for k in rules.keys("nodeport-ips")}
    src_kind = "pod" if any(src in c for c in rules.pod_cidrs) else (
        "node" if str(src) in nodeport_ips else "external")
    steps.append(f"source {src} is {'a pod (inside the cluster CIDR)' if src_kind == 'pod' else src_kind}")
    ip_key = (str(dst), proto, str(port))
    np_key = (proto, str(port))
    is_nodeport = str(dst) in nodeport_ips

    # filter prerouting/output: loadBalancerSourceRanges
    if ip_key in rules.keys("firewall-frontends"):
        allowed = [k for k in rules.keys("firewall-allow") if k[:3] == ip_key]
        if not any(src in ip_network(k[3], strict=False) for k in allowed):
            return TraceResult(verdict="drop", reason=SOURCE_RANGES_DROP,
                               source_kind=src_kind, steps=tuple(steps))
        steps.append(SOURCE_ALLOWED)

    # filter output (priority -110) runs before nat output (-100): the node's own new
    # connections meet the no-endpoint check before any DNAT, short-circuit included, as in
    # upstream's nftables mode (forwarded pod traffic meets it after DNAT, so it is spared)
    hit = rules.keys("no-endpoint-frontends").get(ip_key) if src_kind == "node" else None
    if hit is not None:
        steps.append("the node's own connection meets the no-endpoint check before DNAT (filter output)")
        return _empty_frontend(hit, src_kind, steps)

    # nat: which dispatch map holds the destination
    found = None
    for vmap, sc_vmap, prefix, sc_prefix, key in (
        ("frontends", "sc-frontends", "endpoints", "sc-endpoints", ip_key),
        ("nodeport-frontends", "sc-nodeport-frontends", "nodeport-endpoints", "sc-nodeport-endpoints", np_key),
    ):
        if key is np_key and not is_nodeport:
            continue
        sc = rules.keys(sc_vmap).get(key)
        if sc is not None and src_kind in ("pod", "node"):
            found = (sc, sc_prefix, key, SHORT_CIRCUIT)
            break
        hit = rules.keys(vmap).get(key)
        if hit is not None:
            found = (hit, prefix, key, None)
            break
    if found is None:
        return _not_dispatched(rules, src_kind, ip_key, np_key, is_nodeport, dst, steps)
    (data, comment), prefix, key, note = found
    name, _, kind = (comment or "? ?").rpartition(" ")
    steps.append(f"{kind} frontend of {name}")
    if note:
        steps.append(note)
    endpoints = rules.endpoints(prefix, key, data)
    reasons = _masquerade_reasons(rules, src, src_kind, kind, ip_key, np_key, note is not None)
    if any(endpoint_host(e) == str(src) for e in endpoints):
        reasons.append(MASQ_HAIRPIN)
    affinity = None
    for set_name in rules.sets:
        if set_name.startswith(("affinity-frontends-", "affinity-nodeports-")):
            if (np_key if set_name.startswith("affinity-nodeports-") else ip_key) in rules.keys(set_name):
                affinity = int(set_name.rsplit("-", 1)[1])
    if affinity:
        steps.append(f"sessionAffinity ClientIP: a client keeps its endpoint for {affinity}s")
    steps.append(f"DNAT to one of {len(endpoints)} endpoint(s) at random")
    local = {k[0] for k in rules.keys("hairpin")}
    return TraceResult(verdict="dnat", reason="DNAT to an endpoint", service_port=name, frontend=kind,
                       source_kind=src_kind, endpoints=endpoints,
                       local_endpoints=tuple(e for e in endpoints if endpoint_host(e) in local), masquerade=bool(reasons),
                       masquerade_reasons=tuple(reasons), affinity_seconds=affinity, steps=tuple(steps))


def _masquerade_reasons(rules: Ruleset, src: IPAddress, src_kind: str, kind: str,
                        ip_key: tuple[str, ...], np_key: tuple[str, ...], short_circuit: bool) -> list[str]:
    reasons = []
    if kind == "ClusterIP":
        if rules.masquerade_all:
            reasons.append(MASQ_ALL)
        elif rules.pod_cidrs and not any(src in c for c in rules.pod_cidrs):
            reasons.append(MASQ_OFF_CLUSTER_REASON)
    elif ip_key in rules.keys("masq-frontends") or np_key in rules.keys("masq-nodeports"):
        reasons.append(MASQ_EXTERNAL)
    elif short_circuit and src_kind == "node":
        reasons.append(MASQ_NODE_OWN)
    return reasons


def _not_dispatched(rules: Ruleset, src_kind: str, ip_key: tuple[str, ...], np_key: tuple[str, ...],
                    is_nodeport: bool, dst: IPAddress, steps: list[str]) -> TraceResult:
    for name, key in (("no-endpoint-frontends", ip_key), ("no-endpoint-nodeports", np_key)):
        if key is np_key and not is_nodeport:
            continue
        hit = rules.keys(name).get(key)
        if hit is not None:
            return _empty_frontend(hit, src_kind, steps)
    if (str(dst),) in rules.keys("cluster-ips"):
        return TraceResult(verdict="reject", reason=WRONG_PORT, source_kind=src_kind,
                           steps=tuple(steps))
    if any(dst in c for c in rules.service_cidrs):
        return TraceResult(verdict="drop", reason=UNALLOCATED,
                           source_kind=src_kind, steps=tuple(steps))
    return TraceResult(verdict="none", reason=NOT_A_SERVICE,
                       source_kind=src_kind, steps=tuple(steps))


def _empty_frontend(hit: tuple[Any, str | None], src_kind: str, steps: list[str]) -> TraceResult:
    """A frontend in a no-endpoint map: drop (none on this node, Local policy) or reject."""
    data, comment = hit
    service, _, kind = (comment or "? ?").rpartition(" ")
    verdict = "drop" if "drop" in str(data) else "reject"
    why = NO_LOCAL_ENDPOINT if verdict == "drop" else NO_ENDPOINTS
    return TraceResult(verdict=verdict, reason=why, service_port=service, frontend=kind,
                       source_kind=src_kind, steps=tuple(steps))


def format_trace(src: str, dst: str, result: TraceResult) -> str:
    lines = [f"trace {src} -> {dst}"]
    lines += [f"  - {step}" for step in result.steps]
    head = f"verdict: {result.verdict.upper()} ({result.reason})"
    if result.service_port:
        head += f" — {result.frontend} of {result.service_port}"
    lines.append(head)
    for endpoint in result.endpoints:
        where = "this node" if endpoint in result.local_endpoints else "another node"
        lines.append(f"  endpoint {endpoint}  share {100 / len(result.endpoints):.0f}%  ({where})")
    if result.verdict == "dnat":
        lines.append("masquerade: " + ("; ".join(result.masquerade_reasons) if result.masquerade
                                         else "no (the endpoint sees the client's address)"))
    return "\n".join(lines) + "\n"


def parse_target(text: str) -> tuple[IPAddress, int, str]:
    """DST:PORT[/tcp|udp|sctp], IPv6 as [addr]:port."""
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        proto = proto.lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise ValueError(f"unknown protocol {proto!r} (tcp, udp or sctp)")
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDRESS:PORT")
    return ip_address(host), int(port), proto
