"""IPVS as the kernel lists it, for `kproxy dump` (the ipvsadm -Ln view, and as JSON) and for
drift detection. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Set
from typing import Any

from kproxy.backends.ipvs.aux import DROP_FRONTENDS, FRONTENDS, REJECT_FRONTENDS
from kproxy.backends.ipvs.objects import FWD_MASQ, ListedVirtual, VirtualKey
from kproxy.backends.nft.readback import TableListing
from kproxy.backends.view import FrontendView, ProgrammedView, ServicePortView
from kproxy.model import IPAddress
from kproxy.values import endpoint_text, ip_text

FORWARDING = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}


def read_view(virtuals: Mapping[VirtualKey, ListedVirtual], aux: Iterable[dict[str, Any] | None]) -> ProgrammedView:
    """The common dump view. IPVS knows no Service names: the auxiliary table's `frontends`
    set has them, in element comments ("namespace/name:port Kind"); a virtual server without
    one shows under its own address, kind IPVS."""
    names: dict[tuple[str, ...], str] = {}
    refused: dict[tuple[str, ...], str] = {}
    for listing in aux:
        table = TableListing(listing)
        names.update({k: c or "" for k, (_, c) in table.keys(FRONTENDS).items()})
        refused.update(dict.fromkeys(table.keys(REJECT_FRONTENDS), "reject"))
        refused.update(dict.fromkeys(table.keys(DROP_FRONTENDS), "drop"))
    by_port: dict[tuple[str, str], list[FrontendView]] = defaultdict(list)
    for key, vs in sorted(virtuals.items()):
        if key.fwmark:  # a Local-policy frontend's short-circuit: ipvsadm_text shows it
            continue
        parts = (ip_text(key.ip), key.protocol.nft, str(key.port))
        name, _, kind = (names.get(parts) or f"{key} IPVS").rpartition(" ")
        live = tuple(str(r) for r, stats in sorted(vs.reals.items()) if stats.weight > 0)
        verdict = "dnat" if live else refused.get(parts, "reject")
        by_port[(name, key.protocol.value)].append(FrontendView(
            kind=kind, address=endpoint_text(key.ip, key.port), endpoints=live, verdict=verdict))
    ports = tuple(ServicePortView(name=name, protocol=proto, frontends=tuple(sorted(fes)))
                  for (name, proto), fes in sorted(by_port.items()))
    return ProgrammedView(present=bool(virtuals), service_ports=ports)


def ipvsadm_text(virtuals: Mapping[VirtualKey, ListedVirtual]) -> str:
    """The table as `ipvsadm -Ln` shows it."""
    lines = ["IP Virtual Server (kproxy)",
             "Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for key, vs in sorted(virtuals.items()):
        persistent = f" persistent {vs.persistence}" if vs.persistence else ""
        lines.append(f"{str(key) if key.fwmark else f'{key.protocol.value:<4} {str(key).split()[1]}'} "
                     f"{vs.scheduler}{persistent}")
        for real, stats in sorted(vs.reals.items()):
            lines.append(f"  -> {real!s:<28} {FORWARDING.get(stats.forward, '?'):<7} {stats.weight:<6} "
                         f"{stats.active:<10} {stats.inactive}")
    return "\n".join(lines) + "\n"


def ipvs_json(virtuals: Mapping[VirtualKey, ListedVirtual]) -> list[dict[str, object]]:
    return [{
        "protocol": key.protocol.value, "address": str(key.ip), "port": key.port, "fwmark": key.fwmark,
        "scheduler": vs.scheduler, "persistence": vs.persistence,
        "real_servers": [{"address": str(r.ip), "port": r.port, "weight": s.weight,
                          "forward": FORWARDING.get(s.forward, "?"), "active": s.active, "inactive": s.inactive}
                         for r, s in sorted(vs.reals.items())],
    } for key, vs in sorted(virtuals.items())]


def record_differences(record: Mapping[VirtualKey, ListedVirtual], addresses: Set[IPAddress],
                       listed: Mapping[VirtualKey, ListedVirtual], listed_addresses: Set[IPAddress]) -> list[str]:
    """What the kernel holds that differs from what was applied (connection counts aside)."""
    out = [f"virtual server {k} missing" for k in sorted(record) if k not in listed]
    out += [f"virtual server {k} not kproxy's" for k in sorted(listed) if k not in record]
    for key in sorted(set(record) & set(listed)):
        mine, theirs = record[key], listed[key]
        if (mine.scheduler, mine.persistence) != (theirs.scheduler, theirs.persistence):
            out.append(f"virtual server {key}: scheduler/persistence changed")
        weights = {r: s.weight for r, s in mine.reals.items()}
        if weights != {r: s.weight for r, s in theirs.reals.items()}:
            out.append(f"virtual server {key}: real servers changed")
        if any(s.forward != FWD_MASQ for s in theirs.reals.values()):
            out.append(f"virtual server {key}: a real server is not masqueraded")
    out += [f"kube-ipvs0 address {ip} missing" for ip in sorted(addresses - listed_addresses)]
    out += [f"kube-ipvs0 address {ip} not kproxy's" for ip in sorted(listed_addresses - addresses)]
    return out
