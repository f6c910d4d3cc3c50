"""Kernel JSON (`nft -j list table ip kproxy`) -> ProgrammedView. Pure.

This reads what is really programmed, not what the planner meant, so `kproxy dump`
shows the kernel's truth: frontends come from the verdict maps (their element comments
carry "namespace/name:port Kind"), endpoints from the endpoints-N maps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kproxy.view import FrontendView, ProgrammedView, ServicePortView


def key_parts(key: Any) -> tuple[list[Any], str | None]:
    comment = None
    if isinstance(key, dict) and "elem" in key:
        comment = key["elem"].get("comment")
        key = key["elem"]["val"]
    if isinstance(key, dict) and "concat" in key:
        return list(key["concat"]), comment
    return [key], comment


def _elements(objects: dict[str, dict[str, Any]], name: str) -> list[Any]:
    return (objects.get(name) or {}).get("elem") or []


def read_view(listing: dict[str, Any] | None) -> ProgrammedView:
    if listing is None:
        return ProgrammedView(present=False)
    objects: dict[str, dict[str, Any]] = {}
    for item in listing.get("nftables", []):
        for kind in ("map", "set"):
            if kind in item:
                objects[item[kind]["name"]] = item[kind]
    nodeport_ips = [str(e) for e in _elements(objects, "nodeport-ips")]
    # endpoints by frontend key, in index order
    endpoints: dict[tuple[Any, ...], dict[int, str]] = defaultdict(dict)
    for name, obj in objects.items():
        if name.startswith(("endpoints-", "nodeport-endpoints-")):
            for key, data in obj.get("elem") or []:
                parts, _ = key_parts(key)
                target, _ = key_parts(data)
                endpoints[tuple(parts[:-1])][int(parts[-1])] = f"{target[0]}:{target[1]}"
    by_port: dict[str, list[FrontendView]] = defaultdict(list)
    protocols: dict[str, str] = {}
    for map_name, reject in (("frontends", False), ("nodeport-frontends", False),
                             ("no-endpoint-frontends", True), ("no-endpoint-nodeports", True)):
        for key, verdict in _elements(objects, map_name):
            parts, comment = key_parts(key)
            name, _, kind = (comment or "?").rpartition(" ")
            if len(parts) == 3:
                address, proto, port = f"{parts[0]}:{parts[2]}", parts[1], parts[2]
            else:
                proto, port = parts
                address = ",".join(f"{ip}:{port}" for ip in nodeport_ips) or f"*:{port}"
            eps = endpoints.get(tuple(parts), {})
            by_port[name].append(FrontendView(
                kind=kind, address=address,
                endpoints=tuple(eps[i] for i in sorted(eps)),
                verdict=("drop" if "drop" in verdict else "reject") if reject else "dnat",
            ))
            protocols[name] = str(proto).upper()
    ports = tuple(
        ServicePortView(name=name, protocol=protocols[name], frontends=tuple(sorted(fes)))
        for name, fes in sorted(by_port.items())
    )
    return ProgrammedView(present=True, service_ports=ports, nodeport_ips=tuple(nodeport_ips))
