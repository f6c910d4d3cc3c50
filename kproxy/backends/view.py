"""What is programmed on a node, as read back from the kernel, and its text/JSON forms.

Backends fill a ProgrammedView from their own kernel objects; `kproxy dump` formats it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

KIND_ORDER = {"ClusterIP": 0, "NodePort": 1, "ExternalIP": 2, "LoadBalancer": 3}


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontendView:
    kind: str  # ClusterIP, NodePort, ExternalIP, LoadBalancer
    address: str  # ip:port; for NodePorts every NodePort address, comma-separated
    endpoints: tuple[str, ...]  # ip:port, each chosen with equal probability
    verdict: str  # "dnat"; "reject": no usable endpoints; "drop": none on this node (Local policy)

    def __lt__(self, other: FrontendView) -> bool:
        return (KIND_ORDER.get(self.kind, 9), self.address) < (KIND_ORDER.get(other.kind, 9), other.address)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePortView:
    name: str  # namespace/name:port
    protocol: str
    frontends: tuple[FrontendView, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgrammedView:
    present: bool  # False: kproxy has programmed nothing on this node
    service_ports: tuple[ServicePortView, ...] = ()
    nodeport_ips: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def merge_views(views: list[ProgrammedView]) -> ProgrammedView:
    """One view of several tables (IPv4 and IPv6): a Service port's frontends together."""
    ports: dict[tuple[str, str], list[FrontendView]] = {}
    for view in views:
        for sp in view.service_ports:
            ports.setdefault((sp.name, sp.protocol), []).extend(sp.frontends)
    return ProgrammedView(
        present=any(v.present for v in views),
        service_ports=tuple(ServicePortView(name=name, protocol=proto, frontends=tuple(sorted(fes)))
                            for (name, proto), fes in sorted(ports.items())),
        nodeport_ips=tuple(ip for v in views for ip in v.nodeport_ips),
    )


NOTHING_PROGRAMMED = "kproxy has programmed nothing on this node (no kproxy table)\n"  # dump and dump --raw


def format_view(view: ProgrammedView) -> str:
    if not view.present:
        return NOTHING_PROGRAMMED
    lines = [f"{len(view.service_ports)} service ports; NodePorts on "
             f"{', '.join(view.nodeport_ips) or 'every local address'}", ""]
    for sp in view.service_ports:
        lines.append(f"{sp.name} ({sp.protocol})")
        for fe in sp.frontends:
            if fe.verdict == "reject":
                target = "reject (no ready endpoints)"
            elif fe.verdict == "drop":
                target = "drop (no endpoints on this node; traffic policy Local)"
            else:
                n = len(fe.endpoints)
                share = f"{100 / n:.0f}% each" if n > 1 else "100%"
                target = f"{', '.join(fe.endpoints)}  [{n} endpoint{'s' * (n != 1)}, random, {share}]"
            lines.append(f"  {fe.kind:<13}{fe.address:<24} -> {target}")
        lines.append("")
    return "\n".join(lines)
