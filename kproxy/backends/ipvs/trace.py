"""`kproxy trace` for IPVS mode: what this node's virtual servers and auxiliary table do with
one new connection. Pure.

It reads what the kernel holds (IPVS's listing and the `kproxy-ipvs` table's JSON), in the
order packets meet them: source ranges and the short-circuit mark (prerouting), reject/drop
checks (filter, before IPVS), the virtual server IPVS picks (firewall mark first), masquerade.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import ip_network
from typing import Any

from kproxy.backends.ipvs.aux import DROP_FRONTENDS, FIREWALL_ALLOW, FRONTENDS, REJECT_FRONTENDS, SHORT_CIRCUIT_MARKS
from kproxy.backends.ipvs.objects import ListedVirtual, VirtualKey
from kproxy.backends.nft.names import (
    CLUSTER_FRONTENDS,
    CLUSTER_IPS,
    FIREWALL_FRONTENDS,
    HAIRPIN,
    MASQ_FRONTENDS,
)
from kproxy.backends.nft.trace import Ruleset
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
from kproxy.model import IPAddress, Protocol
from kproxy.values import endpoint_host, ip_text


def trace_ipvs(virtuals: Mapping[VirtualKey, ListedVirtual], aux: dict[str, Any] | None, src: IPAddress,
               dst: IPAddress, port: int, proto: str, local_ips: Iterable[IPAddress]) -> TraceResult:
    rules = Ruleset(aux)
    if not rules.present and not virtuals:
        return TraceResult(verdict="none", reason=NOTHING_PROGRAMMED)
    src_kind = "pod" if any(src in c for c in rules.pod_cidrs) else (
        "node" if src in set(local_ips) else "external")
    steps = [f"source {src} is {'a pod (inside the cluster CIDR)' if src_kind == 'pod' else src_kind}"]
    key = (ip_text(dst), proto, str(port))
    named = rules.keys(FRONTENDS).get(key)
    if named is None:
        if (ip_text(dst),) in rules.keys(CLUSTER_IPS):
            return TraceResult(verdict="reject", reason=WRONG_PORT, source_kind=src_kind, steps=tuple(steps))
        if any(dst in c for c in rules.service_cidrs):
            return TraceResult(verdict="drop", reason=UNALLOCATED, source_kind=src_kind, steps=tuple(steps))
        return TraceResult(verdict="none", reason=NOT_A_SERVICE, source_kind=src_kind, steps=tuple(steps))
    name, _, kind = (named[1] or "? ?").rpartition(" ")
    steps.append(f"{kind} frontend of {name}: virtual server {proto.upper()} {dst}:{port}")
    base = TraceResult(verdict="none", reason="", service_port=name, frontend=kind, source_kind=src_kind)
    if key in rules.keys(FIREWALL_FRONTENDS):
        allowed = [k for k in rules.keys(FIREWALL_ALLOW) if k[0] == key[0]]
        if not any(src in ip_network(k[1], strict=False) for k in allowed):
            return replace(base, verdict="drop", reason=SOURCE_RANGES_DROP, steps=tuple(steps))
        steps.append(SOURCE_ALLOWED)
    marked = rules.keys(SHORT_CIRCUIT_MARKS).get(key)
    mark = int(str(marked[0]), 0) if marked is not None and src_kind in ("pod", "node") else 0
    short_circuit = bool(mark)
    if short_circuit:
        steps.append(f"{SHORT_CIRCUIT}: firewall mark {mark:#x}")
    elif key in rules.keys(DROP_FRONTENDS):
        return replace(base, verdict="drop", reason=NO_LOCAL_ENDPOINT, steps=tuple(steps))
    if key in rules.keys(REJECT_FRONTENDS):
        return replace(base, verdict="reject", reason=NO_ENDPOINTS, steps=tuple(steps))
    server = _virtual_server(virtuals, dst, port, proto, mark)
    if server is None:
        return replace(base, verdict="reject", reason=NO_ENDPOINTS, steps=(*steps, "IPVS has no such virtual server"))
    endpoints = tuple(str(r) for r, stats in sorted(server.reals.items()) if stats.weight > 0)
    reasons = []
    if kind == "ClusterIP" and key in rules.keys(CLUSTER_FRONTENDS):
        if rules.masquerade_all:
            reasons.append(MASQ_ALL)
        elif not any(src in c for c in rules.unmasqueraded):
            reasons.append(MASQ_OFF_CLUSTER_REASON)
    elif key in rules.keys(MASQ_FRONTENDS):
        reasons.append(MASQ_EXTERNAL)
    elif short_circuit and src_kind == "node":
        reasons.append(MASQ_NODE_OWN)
    if any(endpoint_host(e) == str(src) for e in endpoints):
        reasons.append(MASQ_HAIRPIN)
    if server.persistence:
        steps.append(f"sessionAffinity ClientIP: a client keeps its endpoint for {server.persistence}s")
    steps.append(f"IPVS picks one of {len(endpoints)} real server(s) ({server.scheduler}), NAT")
    local = {k[0] for k in rules.keys(HAIRPIN)}
    return replace(base, verdict="dnat", reason="DNAT to an endpoint", endpoints=endpoints,
                   local_endpoints=tuple(e for e in endpoints if endpoint_host(e) in local),
                   masquerade=bool(reasons), masquerade_reasons=tuple(reasons),
                   affinity_seconds=server.persistence or None, steps=tuple(steps))


def _virtual_server(virtuals: Mapping[VirtualKey, ListedVirtual], dst: IPAddress, port: int, proto: str,
                    fwmark: int) -> ListedVirtual | None:
    if fwmark:
        return next((vs for k, vs in virtuals.items() if k.fwmark == fwmark), None)
    return virtuals.get(VirtualKey(ip=dst, protocol=Protocol(proto.upper()), port=port))
