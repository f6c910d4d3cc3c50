"""Facts about this node read from the kernel: its addresses. (I/O, kept out of the planner.)"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

from pyroute2 import IPRoute

from kproxy.model import IPAddress


def local_addresses() -> tuple[IPAddress, ...]:
    """Every address on an interface of this network namespace, loopback and IPv6
    link-local excluded (NodePorts never answer there)."""
    with IPRoute() as ipr:
        found = {ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}
    usable = [ip for ip in found if not ip.is_loopback and not ip.is_link_local]
    return tuple(sorted(usable, key=lambda ip: (ip.version, int(ip))))


def default_route_ipv4() -> IPv4Address | None:
    """The source address of the default route, as kubelet picks a node IP without --node-ip."""
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
    return tuple(ip for ip in local_addresses() if ip.version == 4)[:1]
