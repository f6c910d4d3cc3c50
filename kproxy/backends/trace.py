"""`kproxy trace`'s answer, whichever backend's rules were evaluated: a TraceResult, the
reasons worded once (so both backends' `--json` compare), and its text form. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TraceResult:
        """A result as `kproxy trace --json` printed it (fields it does not know are left out)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


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
