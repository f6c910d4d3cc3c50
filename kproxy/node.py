"""Everything kproxy learns about the node it runs on: its addresses (from the kernel)
and what its Node object (read by sources.api_request) says. I/O, kept out of the planner."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, ip_address
from typing import Any

import structlog

from kproxy.model import IPAddress

log = structlog.get_logger(__name__)


# --- the kernel's view --------------------------------------------------------------------

def local_addresses() -> tuple[IPAddress, ...]:
    """Every address on an interface of this network namespace, loopback and IPv6
    link-local excluded (NodePorts never answer there)."""
    from pyroute2 import IPRoute  # imported when used: ~10 MB that most nodes never need

    with IPRoute() as ipr:
        found = {ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}
    usable = [ip for ip in found if not ip.is_loopback and not ip.is_link_local]
    return tuple(sorted(usable, key=lambda ip: (ip.version, int(ip))))


def interface_exists(name: str) -> bool:
    """Whether this network namespace has an interface of that name."""
    try:
        return socket.if_nametoindex(name) > 0
    except OSError:
        return False


def default_route_ipv4() -> IPv4Address | None:
    """The source address of the default route, as kubelet picks a node IP without --node-ip."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst="1.1.1.1")
        except Exception:  # noqa: BLE001 - no route: no answer
            return None
    for route in routes:
        src = route.get_attr("RTA_PREFSRC")
        if src:
            return IPv4Address(src)
    return None


def detect_node_ips() -> tuple[IPv4Address, ...]:
    ip = default_route_ipv4()
    if ip is not None:
        return (ip,)
    return tuple(ip for ip in local_addresses() if isinstance(ip, IPv4Address))[:1]


# --- the API's view -----------------------------------------------------------------------

def node_ips_of(node: dict[str, Any] | None) -> tuple[IPAddress, ...]:
    """Upstream's GetNodeHostIPs: InternalIPs, then ExternalIPs; the first address, and the
    first of the other family after it (a dual-stack node has one of each). Pure."""
    status = (node or {}).get("status")
    entries = status.get("addresses") if isinstance(status, dict) else None
    found: list[IPAddress] = []
    for wanted in ("InternalIP", "ExternalIP"):
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict) or entry.get("type") != wanted:
                continue
            try:
                found.append(ip_address(str(entry.get("address", ""))))
            except ValueError:
                continue
    if not found:
        return ()
    other = next((ip for ip in found if ip.version != found[0].version), None)
    return (found[0],) if other is None else (found[0], other)


def node_ips_from_api(node: dict[str, Any] | None, node_name: str) -> tuple[IPAddress, ...]:
    """This node's IPs from its Node object as read from the API (None: it could not be
    read); empty when it cannot tell."""
    if node is None:
        log.warning("cannot read this node's addresses from the API", node=node_name)
    return node_ips_of(node)
