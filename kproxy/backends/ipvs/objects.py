"""IPVS kernel objects as values: virtual servers, real servers, the state of a node. Pure.

Every name kproxy's IPVS mode gives a kernel object is spelled here too."""

from __future__ import annotations

from dataclasses import dataclass, field

from kproxy.model import IPAddress, Protocol
from kproxy.values import endpoint_text

DUMMY_LINK = "kube-ipvs0"  # upstream's name: holds every ClusterIP, externalIP and LB IP
AUX_TABLE = "kproxy-ipvs"  # the nftables table with masquerade, reject, drop, source ranges
DEFAULT_SCHEDULER = "rr"
# Upstream's IPVS forwarding is masquerading (NAT); ipvsadm's and pyroute2's default is 3 (DR).
FWD_MASQ = 0
PERSISTENT = 0x1  # IP_VS_SVC_F_PERSISTENT
# Marks of short-circuited traffic (pods and the node reaching an externalTrafficPolicy:
# Local frontend): this bit, never the masquerade bit 0x4000.
SHORT_CIRCUIT_BIT = 0x10000000


def aux_table_of(family: int) -> str:
    return f"ip {AUX_TABLE}" if family == 4 else f"ip6 {AUX_TABLE}"


@dataclass(frozen=True, slots=True, order=True, kw_only=True)
class VirtualKey:
    """What identifies a virtual server: ip, protocol, port; or a firewall mark (then ip is
    the family's unspecified address, protocol TCP and port 0, as the kernel keeps them)."""

    ip: IPAddress
    protocol: Protocol
    port: int
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark:#x}"
        return f"{self.protocol} {endpoint_text(self.ip, self.port)}"


@dataclass(frozen=True, slots=True, order=True, kw_only=True)
class RealKey:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return endpoint_text(self.ip, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServer:
    """A virtual server's settings and its real servers with their weights."""

    scheduler: str = DEFAULT_SCHEDULER
    persistence: int = 0  # seconds; 0: not persistent (sessionAffinity None)
    reals: dict[RealKey, int] = field(default_factory=dict)

    def settings(self) -> tuple[str, int]:
        return (self.scheduler, self.persistence)


@dataclass(frozen=True, slots=True, kw_only=True)
class RealStats:
    """A real server as the kernel lists it."""

    weight: int
    active: int = 0
    inactive: int = 0
    forward: int = FWD_MASQ

    @property
    def connections(self) -> int:
        return self.active + self.inactive


@dataclass(frozen=True, slots=True, kw_only=True)
class ListedVirtual:
    """A virtual server as the kernel lists it."""

    scheduler: str
    persistence: int
    reals: dict[RealKey, RealStats]


@dataclass(frozen=True, slots=True, kw_only=True)
class IpvsState:
    """What IPVS mode programs for one IP family: virtual servers and kube-ipvs0's addresses."""

    virtuals: dict[VirtualKey, VirtualServer] = field(default_factory=dict)
    addresses: frozenset[IPAddress] = frozenset()
