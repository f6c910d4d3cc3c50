"""`kproxy trace` for the nftables backend: what this node's programmed table does with
one new connection. Pure.

It evaluates the kernel's own JSON listing of `ip kproxy` / `ip6 kproxy` (sets and maps
only: every fact the rules depend on is an element), not the planner's intent, in the
order the kernel does: source ranges, NodePort/ClusterIP dispatch, short-circuit for pods
and the node, masquerade marks, reject/drop checks.
"""

from __future__ import annotations

import json
from ipaddress import ip_network
from typing import Any

from kproxy.backends.nft import affinity6
from kproxy.backends.nft.names import (
    AFFINITY_NODEPORTS_PREFIX,
    CLUSTER_CIDRS,
    CLUSTER_FRONTENDS,
    CLUSTER_IPS,
    FIREWALL_FRONTENDS,
    HAIRPIN,
    IPS,
    MASQ_FRONTENDS,
    MASQ_NODEPORTS,
    NO_ENDPOINT_FRONTENDS,
    NO_ENDPOINT_NODEPORTS,
    NO_MASQ_SOURCES,
    NODEPORT_IPS,
    NODEPORTS,
    SC_IPS,
    SC_NODEPORTS,
    SERVICE_CIDRS,
    SERVICES,
    affinity_timeout_of,
    firewall_allow,
)
from kproxy.backends.nft.readback import Key, TableListing
from kproxy.backends.trace import (
    MASQ_ALL,
    MASQ_EXTERNAL,
    MASQ_HAIRPIN,
    MASQ_NODE_OWN,
    MASQ_OFF_CLUSTER_REASON,
    NO_ENDPOINTS,
    NO_LOCAL_ENDPOINT,
    NOT_A_SERVICE,
    NOTHING_PROGRAMMED,
    SHORT_CIRCUIT,
    SOURCE_ALLOWED,
    SOURCE_RANGES_DROP,
    UNALLOCATED,
    WRONG_PORT,
    TraceResult,
)
from kproxy.model import IPAddress, IPNetwork
from kproxy.values import endpoint_host


class Ruleset(TableListing):
    """The parts of one kproxy table a trace needs, from `nft -j list table`."""

    def __init__(self, listing: dict[str, Any] | None) -> None:
        super().__init__(listing)
        self.pod_cidrs = self.cidrs(CLUSTER_CIDRS)
        self.service_cidrs = self.cidrs(SERVICE_CIDRS)
        # ClusterIP traffic is masqueraded from sources outside this set: all of it when
        # the set is empty (--masquerade-all)
        self.unmasqueraded = self.cidrs(NO_MASQ_SOURCES)
        # --detect-local-mode BridgeInterface / InterfaceNamePrefix: local means the input
        # interface, which a traced address does not have: its traffic counts as not local
        self.local_by_interface = any(
            rule.get("chain") == SERVICES and CLUSTER_FRONTENDS in (text := json.dumps(rule.get("expr")))
            and '"iifname"' in text
            for rule in (item["rule"] for item in (listing or {}).get("nftables", []) if "rule" in item))
        self.masquerade_all = self.present and not self.unmasqueraded and not self.local_by_interface

    def cidrs(self, name: str) -> tuple[IPNetwork, ...]:
        return tuple(ip_network(v, strict=False) for v in self.values(name))


def trace(rules: Ruleset, src: IPAddress, dst: IPAddress, port: int, proto: str) -> TraceResult:
    steps: list[str] = []
    if not rules.present:
        return TraceResult(verdict="none", reason=NOTHING_PROGRAMMED)
    nodeport_ips = set(rules.values(NODEPORT_IPS))
    src_kind = "pod" if any(src in c for c in rules.pod_cidrs) else (
        "node" if str(src) in nodeport_ips else "external")
    steps.append(f"source {src} is {'a pod (inside the cluster CIDR)' if src_kind == 'pod' else src_kind}")
    ip_key = (str(dst), proto, str(port))
    np_key = (proto, str(port))
    is_nodeport = str(dst) in nodeport_ips

    # filter prerouting/output: loadBalancerSourceRanges
    if ip_key in rules.keys(FIREWALL_FRONTENDS):
        allowed = [k for k in rules.keys(firewall_allow(proto)) if k[:2] == (str(dst), str(port))]
        if not any(src in ip_network(k[2], strict=False) for k in allowed):
            return TraceResult(verdict="drop", reason=SOURCE_RANGES_DROP,
                               source_kind=src_kind, steps=tuple(steps))
        steps.append(SOURCE_ALLOWED)

    # filter output (priority -110) runs before nat output (-100): the node's own new
    # connections meet the no-endpoint check before any DNAT, short-circuit included, as in
    # upstream's nftables mode (forwarded pod traffic meets it after DNAT, so it is spared)
    hit = rules.keys(NO_ENDPOINT_FRONTENDS).get(ip_key) if src_kind == "node" else None
    if hit is not None:
        steps.append("the node's own connection meets the no-endpoint check before DNAT (filter output)")
        return _empty_frontend(hit, src_kind, steps)

    # nat: which dispatch map holds the destination
    found: tuple[tuple[Any, str | None], str, Key, str | None] | None = None
    for how, short_circuit, key in ((IPS, SC_IPS, ip_key), (NODEPORTS, SC_NODEPORTS, np_key)):
        if key is np_key and not is_nodeport:
            continue
        sc = rules.keys(short_circuit.vmap).get(key)
        if sc is not None and src_kind in ("pod", "node"):
            found = (sc, short_circuit.endpoints, key, SHORT_CIRCUIT)
            break
        hit = rules.keys(how.vmap).get(key)
        if hit is not None:
            found = (hit, how.endpoints, key, None)
            break
    if found is None:
        return _not_dispatched(rules, src_kind, ip_key, np_key, is_nodeport, dst, steps)
    (data, comment), prefix, dispatched, note = found
    name, _, kind = (comment or "? ?").rpartition(" ")
    steps.append(f"{kind} frontend of {name}")
    if note:
        steps.append(note)
    endpoints = rules.endpoints(prefix, dispatched, data)
    reasons = _masquerade_reasons(rules, src, src_kind, kind, ip_key, np_key, note is not None)
    if any(endpoint_host(e) == str(src) for e in endpoints):
        reasons.append(MASQ_HAIRPIN)
    affinity = None
    for set_name in rules.sets:
        timeout = affinity_timeout_of(set_name)
        key = np_key if set_name.startswith(AFFINITY_NODEPORTS_PREFIX) else ip_key
        if timeout is not None and key in rules.keys(set_name):
            affinity = timeout
    for vmap, key in ((affinity6.FRONTENDS, ip_key), (affinity6.NODEPORTS, np_key)):
        data = rules.keys(vmap).get(key, (None, None))[0]  # IPv6: {"jump": {"target": chain}}
        timeout = affinity6.timeout_of_chain((data or {}).get("jump", {}).get("target", ""))
        if timeout is not None:
            affinity = timeout
    if affinity:
        steps.append(f"sessionAffinity ClientIP: a client keeps its endpoint for {affinity}s")
    steps.append(f"DNAT to one of {len(endpoints)} endpoint(s) at random")
    local = {k[0] for k in rules.keys(HAIRPIN)}
    return TraceResult(verdict="dnat", reason="DNAT to an endpoint", service_port=name, frontend=kind,
                       source_kind=src_kind, endpoints=endpoints,
                       local_endpoints=tuple(e for e in endpoints if endpoint_host(e) in local),
                       masquerade=bool(reasons), masquerade_reasons=tuple(reasons), affinity_seconds=affinity,
                       steps=tuple(steps))


def _masquerade_reasons(rules: Ruleset, src: IPAddress, src_kind: str, kind: str,
                        ip_key: Key, np_key: Key, short_circuit: bool) -> list[str]:
    reasons = []
    if kind == "ClusterIP":
        if rules.masquerade_all:
            reasons.append(MASQ_ALL)
        elif not any(src in c for c in rules.unmasqueraded):
            reasons.append(MASQ_OFF_CLUSTER_REASON)
    elif ip_key in rules.keys(MASQ_FRONTENDS) or np_key in rules.keys(MASQ_NODEPORTS):
        reasons.append(MASQ_EXTERNAL)
    elif short_circuit and src_kind == "node":
        reasons.append(MASQ_NODE_OWN)
    return reasons


def _not_dispatched(rules: Ruleset, src_kind: str, ip_key: Key, np_key: Key,
                    is_nodeport: bool, dst: IPAddress, steps: list[str]) -> TraceResult:
    for name, key in ((NO_ENDPOINT_FRONTENDS, ip_key), (NO_ENDPOINT_NODEPORTS, np_key)):
        if key is np_key and not is_nodeport:
            continue
        hit = rules.keys(name).get(key)
        if hit is not None:
            return _empty_frontend(hit, src_kind, steps)
    if (str(dst),) in rules.keys(CLUSTER_IPS):
        return TraceResult(verdict="reject", reason=WRONG_PORT, source_kind=src_kind, steps=tuple(steps))
    if any(dst in c for c in rules.service_cidrs):
        return TraceResult(verdict="drop", reason=UNALLOCATED, source_kind=src_kind, steps=tuple(steps))
    return TraceResult(verdict="none", reason=NOT_A_SERVICE, source_kind=src_kind, steps=tuple(steps))


def _empty_frontend(hit: tuple[Any, str | None], src_kind: str, steps: list[str]) -> TraceResult:
    """A frontend in a no-endpoint map: drop (none on this node, Local policy) or reject."""
    data, comment = hit
    service, _, kind = (comment or "? ?").rpartition(" ")
    verdict = "drop" if "drop" in str(data) else "reject"
    why = NO_LOCAL_ENDPOINT if verdict == "drop" else NO_ENDPOINTS
    return TraceResult(verdict=verdict, reason=why, service_port=service, frontend=kind,
                       source_kind=src_kind, steps=tuple(steps))
