"""Forgetting session affinity to endpoints that went away. Pure.

Affinity lives in dynamic maps the kernel fills (client . frontend -> endpoint, with a
timeout). When an endpoint leaves a Service, clients stuck to it must re-pick at once,
as upstream does by deleting that endpoint's affinity set; here the matching entries
are found in a listing of the map and deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kproxy.backends.nft.names import affinity_names
from kproxy.backends.nft.readback import key_parts
from kproxy.plan import ServicePortPlan
from kproxy.values import ip_text


def _targets(sp: ServicePortPlan | None) -> set[tuple[str, int]]:
    if sp is None or not sp.affinity_timeout:
        return set()
    return {(ip_text(t.ip), t.port) for t in sp.all_targets()}


def _frontends(sp: ServicePortPlan) -> tuple[set[tuple[str, str, int]], set[tuple[str, int]]]:
    """(ip . proto . port) and (proto . port) keys of the frontends."""
    proto = sp.protocol.nft
    ips = {(ip_text(fe.ip), proto, fe.port) for fe in sp.frontends if fe.ip is not None}
    nodeports = {(proto, fe.port) for fe in sp.frontends if fe.ip is None}
    return ips, nodeports


def stale_entries(
    changes: Iterable[tuple[ServicePortPlan, ServicePortPlan | None]],
    listings: dict[str, dict[str, Any] | None],
) -> dict[str, list[str]]:
    """Keys to delete per affinity map: entries of a changed Service port that point at
    an endpoint it no longer has (all of them, if it lost affinity or changed timeout)."""
    stale: dict[str, list[str]] = {}
    for old, new in changes:
        if not old.affinity_timeout:
            continue
        table = affinity_names(old.affinity_timeout)[0]
        keep = _targets(new) if new is not None and new.affinity_timeout == old.affinity_timeout else set()
        ips, nodeports = _frontends(old)
        for key, value in _elements(listings.get(table)):
            client, daddr, proto, port = key
            if (daddr, proto, port) not in ips and (proto, port) not in nodeports:
                continue
            if (value[0], value[1]) not in keep:
                stale.setdefault(table, []).append(f"{client} . {daddr} . {proto} . {port}")
    return stale


def _elements(listing: dict[str, Any] | None) -> Iterable[tuple[list[Any], list[Any]]]:
    for item in (listing or {}).get("nftables", []):
        for key, value in (item.get("map") or {}).get("elem") or []:
            yield key_parts(key)[0], key_parts(value)[0]
