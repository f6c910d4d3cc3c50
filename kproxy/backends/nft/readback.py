"""Kernel JSON (`nft -j list table ip kproxy`) -> what is programmed. Pure.

This reads what is really programmed, not what the planner meant, so `kproxy dump` and
`kproxy trace` show the kernel's truth: frontends come from the verdict maps (their
element comments carry "namespace/name:port Kind"), endpoints from the endpoints-N maps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kproxy.backends.nft.names import (
    IPS,
    NO_ENDPOINT_FRONTENDS,
    NO_ENDPOINT_NODEPORTS,
    NODEPORT_IPS,
    NODEPORTS,
)
from kproxy.backends.view import FrontendView, ProgrammedView, ServicePortView
from kproxy.values import endpoint_text

Key = tuple[str, ...]  # an element's key as text parts: ("10.96.0.1", "tcp", "80")


def key_parts(key: Any) -> tuple[list[Any], str | None]:
    """One element key or value of the JSON listing -> (its parts, its comment)."""
    comment = None
    if isinstance(key, dict) and "elem" in key:
        comment = key["elem"].get("comment")
        key = key["elem"]["val"]
    if isinstance(key, dict) and "concat" in key:
        return list(key["concat"]), comment
    return [key], comment


def part_text(part: Any) -> str:
    """One key part as nft prints it: an address, a number, or a prefix as addr/len."""
    if isinstance(part, dict) and "prefix" in part:
        return f"{part['prefix']['addr']}/{part['prefix']['len']}"
    return str(part)


class TableListing:
    """The sets and maps of one kproxy table, from its JSON listing (None: no table)."""

    def __init__(self, listing: dict[str, Any] | None) -> None:
        self.present = listing is not None
        self.sets: dict[str, list[Any]] = {}
        for item in (listing or {}).get("nftables", []):
            for kind in ("set", "map"):
                if kind in item:
                    self.sets[item[kind]["name"]] = item[kind].get("elem") or []
        self._keys: dict[str, dict[Key, tuple[Any, str | None]]] = {}

    def keys(self, name: str) -> dict[Key, tuple[Any, str | None]]:
        """element key (as text parts) -> (map data or None, comment)."""
        found = self._keys.get(name)
        if found is None:
            found = {}
            for entry in self.sets.get(name, []):
                key, data = entry if isinstance(entry, list) and len(entry) == 2 else (entry, None)
                parts, comment = key_parts(key)
                found[tuple(part_text(p) for p in parts)] = (data, comment)
            self._keys[name] = found
        return found

    def values(self, name: str) -> list[str]:
        """The elements of a one-part set as text (addresses, prefixes)."""
        return [k[0] for k in self.keys(name)]

    def endpoints(self, endpoints_prefix: str, key: Key, data: Any) -> tuple[str, ...]:
        """The endpoints a dispatch element (`goto <chain>-N`) picks from, in index order."""
        target = (data or {}).get("goto", {}).get("target", "")
        n = target.rsplit("-", 1)[-1]
        table = self.keys(f"{endpoints_prefix}-{n}")
        chosen = []
        for index in range(int(n) if n.isdigit() else 0):
            value = table.get((*key, str(index)), (None, None))[0]
            if value:
                ip, port = key_parts(value)[0]
                chosen.append(endpoint_text(ip, port))
        return tuple(chosen)


def read_view(listing: dict[str, Any] | None) -> ProgrammedView:
    if listing is None:
        return ProgrammedView(present=False)
    table = TableListing(listing)
    nodeport_ips = table.values(NODEPORT_IPS)
    by_port: dict[str, list[FrontendView]] = defaultdict(list)
    protocols: dict[str, str] = {}
    for dispatch in (IPS, NODEPORTS):
        _read_frontends(table, dispatch.vmap, dispatch.endpoints, nodeport_ips, by_port, protocols)
    for name in (NO_ENDPOINT_FRONTENDS, NO_ENDPOINT_NODEPORTS):
        _read_frontends(table, name, None, nodeport_ips, by_port, protocols)
    ports = tuple(
        ServicePortView(name=name, protocol=protocols[name], frontends=tuple(sorted(fes)))
        for name, fes in sorted(by_port.items())
    )
    return ProgrammedView(present=True, service_ports=ports, nodeport_ips=tuple(nodeport_ips))


def _read_frontends(table: TableListing, map_name: str, endpoints_prefix: str | None, nodeport_ips: list[str],
                    by_port: dict[str, list[FrontendView]], protocols: dict[str, str]) -> None:
    """Frontends of one verdict map: dispatched (endpoints_prefix given) or without endpoints."""
    for key, (verdict, comment) in table.keys(map_name).items():
        name, _, kind = (comment or "?").rpartition(" ")
        if len(key) == 3:
            address, proto = endpoint_text(key[0], key[2]), key[1]
        else:
            proto, port = key
            address = ",".join(endpoint_text(ip, port) for ip in nodeport_ips) or f"*:{port}"
        if endpoints_prefix is None:
            endpoints: tuple[str, ...] = ()
            how = "drop" if "drop" in str(verdict) else "reject"
        else:
            endpoints, how = table.endpoints(endpoints_prefix, key, verdict), "dnat"
        by_port[name].append(FrontendView(kind=kind, address=address, endpoints=endpoints, verdict=how))
        protocols[name] = proto.upper()

