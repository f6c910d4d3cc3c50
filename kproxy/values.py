"""Small values spelled one way everywhere: durations, booleans, addresses, CIDR lists,
and how an address or an endpoint is printed. Pure.

Flags and the configuration file both parse through these, so a value means the same
whichever way it arrives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def parse_duration(text: str) -> float:
    """Go's time.Duration spelling, as upstream's flags and metav1.Duration take it:
    30s, 500ms, 1m30s, 2h22m, 0.2s; "0" is zero. Seconds as a float; ValueError if not one."""
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (examples: 30s, 500ms, 1m0s)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling: 30s, 500ms, 1m30s, 1h0m0s."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours:g}h{minutes:g}m{secs:g}s"
    if minutes:
        return f"{minutes:g}m{secs:g}s"
    return f"{secs:g}s"


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool spellings, as upstream's flags take them."""
    value = _BOOLS.get(text.lower())
    if value is None:
        raise ValueError(f"invalid boolean {text!r} (true or false)")
    return value


def parse_ip(text: str) -> IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def parse_cidr_list(text: str) -> tuple[IPNetwork, ...]:
    """"10.244.0.0/16,fd00::/48" -> both networks (host bits allowed, as upstream)."""
    found = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            found.append(ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR") from None
    return tuple(found)


def collapse_cidrs(cidrs: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Overlapping and adjacent CIDRs merged, per family (nft interval sets refuse overlaps)."""
    v4 = [c for c in cidrs if isinstance(c, IPv4Network)]
    v6 = [c for c in cidrs if isinstance(c, IPv6Network)]
    return (*collapse_addresses(v4), *collapse_addresses(v6))


_INTERFACE_NAME = re.compile(r"[^\s/:\"'*+]{1,15}")


def parse_interface_name(text: str) -> str:
    """An interface name (or a prefix of one) as Linux allows it: 1-15 characters, no
    space, '/' or ':'; no quote or wildcard either, as nft and iptables rules quote it."""
    if not text:
        raise ValueError("is empty (an interface name is needed)")
    if not _INTERFACE_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not an interface name (1-15 characters, no space, '/', ':', quote, * or +)")
    return text


def ip_text(ip: IPAddress) -> str:
    """An address as nft, iptables and people write it."""
    if ip.version == 6:
        return str(ip)
    # str(IPv4Address) is pure Python and slow; this is 5x faster over 100,000 endpoints
    n = int(ip)
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def endpoint_text(ip: object, port: int | str | None = None) -> str:
    """10.0.0.1, 80 -> "10.0.0.1:80"; fd00::1, 80 -> "[fd00::1]:80"; no port: the address alone."""
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"{host}:{port}" if port is not None else host


def endpoint_host(endpoint: str) -> str:
    """"10.0.0.1:80" -> "10.0.0.1", "[fd00::1]:80" -> "fd00::1"."""
    return endpoint.rsplit(":", 1)[0].strip("[]")
