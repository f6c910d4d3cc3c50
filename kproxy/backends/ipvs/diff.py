"""What to change in IPVS to go from what the kernel holds to the desired state: a list of
operations, each one netlink request, so a one-endpoint change is one request. Pure.

Graceful termination as upstream's: a real server that is no longer wanted gets weight 0
(no new connections) and stays while it has connections, unless its protocol is UDP or
SCTP (deleted at once: expire_nodest_conn ends their flows) or its drain time is up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass

from kproxy.backends.ipvs.objects import IpvsState, ListedVirtual, RealKey, RealStats, VirtualKey, VirtualServer
from kproxy.model import IPAddress, Protocol

GRACEFUL_PROTOCOLS = frozenset({Protocol.TCP})


@dataclass(frozen=True, slots=True, kw_only=True)
class AddAddress:
    ip: IPAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class DelAddress:
    ip: IPAddress


@dataclass(frozen=True, slots=True, kw_only=True)
class AddVirtual:
    key: VirtualKey
    scheduler: str
    persistence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EditVirtual:
    key: VirtualKey
    scheduler: str
    persistence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DelVirtual:
    key: VirtualKey


@dataclass(frozen=True, slots=True, kw_only=True)
class AddReal:
    virtual: VirtualKey
    real: RealKey
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SetWeight:
    virtual: VirtualKey
    real: RealKey
    weight: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DelReal:
    virtual: VirtualKey
    real: RealKey


Operation = AddAddress | DelAddress | AddVirtual | EditVirtual | DelVirtual | AddReal | SetWeight | DelReal


def diff(desired: IpvsState, virtuals: Mapping[VirtualKey, ListedVirtual], addresses: Set[IPAddress],
         drain_expired: Set[tuple[VirtualKey, RealKey]] = frozenset()) -> list[Operation]:
    """Operations that make (virtuals, addresses) into `desired`, in an order the kernel
    accepts and that never leaves a wanted frontend without its address or server."""
    return diff_some(desired.virtuals.get, desired.addresses.__contains__, virtuals, addresses,
                     desired.virtuals.keys() | virtuals.keys(), desired.addresses | addresses, drain_expired)


def diff_some(want: Callable[[VirtualKey], VirtualServer | None], want_address: Callable[[IPAddress], bool],
              virtuals: Mapping[VirtualKey, ListedVirtual], addresses: Set[IPAddress],
              keys: Iterable[VirtualKey], ips: Iterable[IPAddress],
              drain_expired: Set[tuple[VirtualKey, RealKey]] = frozenset()) -> list[Operation]:
    """`diff` looking only at the virtual servers `keys` and the addresses `ips`: what a
    change touched, so its cost follows the change and not the size of the cluster."""
    ips = sorted(ips)
    ops: list[Operation] = [AddAddress(ip=ip) for ip in ips if ip not in addresses and want_address(ip)]
    gone: list[Operation] = []
    for key in sorted(keys):
        wanted = want(key)
        have = virtuals.get(key)
        if wanted is None:
            if have is not None:
                gone.append(DelVirtual(key=key))
        elif have is None:
            ops.append(AddVirtual(key=key, scheduler=wanted.scheduler, persistence=wanted.persistence))
            ops.extend(AddReal(virtual=key, real=r, weight=w) for r, w in sorted(wanted.reals.items()))
        else:
            if (have.scheduler, have.persistence) != wanted.settings():
                ops.append(EditVirtual(key=key, scheduler=wanted.scheduler, persistence=wanted.persistence))
            ops.extend(_reals(key, wanted, have, drain_expired))
    ops.extend(gone)
    ops.extend(DelAddress(ip=ip) for ip in ips if ip in addresses and not want_address(ip))
    return ops


def _reals(key: VirtualKey, want: VirtualServer, have: ListedVirtual,
           drain_expired: Set[tuple[VirtualKey, RealKey]]) -> list[Operation]:
    ops: list[Operation] = []
    for real, weight in sorted(want.reals.items()):
        stats = have.reals.get(real)
        if stats is None:
            ops.append(AddReal(virtual=key, real=real, weight=weight))
        elif stats.weight != weight:  # a changed weight, or a draining server wanted again
            ops.append(SetWeight(virtual=key, real=real, weight=weight))
    for real, stats in sorted(have.reals.items()):
        if real in want.reals:
            continue
        if (key.protocol not in GRACEFUL_PROTOCOLS or (key, real) in drain_expired
                or (stats.weight == 0 and stats.connections == 0)):
            ops.append(DelReal(virtual=key, real=real))
        elif stats.weight != 0:
            ops.append(SetWeight(virtual=key, real=real, weight=0))
    return ops


def draining(virtuals: Mapping[VirtualKey, ListedVirtual], want: Callable[[VirtualKey], VirtualServer | None],
             keys: Iterable[VirtualKey]) -> set[tuple[VirtualKey, RealKey]]:
    """Real servers of the virtual servers `keys` kept at weight 0 until their connections end."""
    out: set[tuple[VirtualKey, RealKey]] = set()
    for key in keys:
        have, wanted = virtuals.get(key), want(key)
        if have is not None and wanted is not None:
            out.update((key, real) for real, stats in have.reals.items()
                       if real not in wanted.reals and stats.weight == 0)
    return out


def apply_to(virtuals: dict[VirtualKey, ListedVirtual], addresses: set[IPAddress],
             ops: list[Operation]) -> None:
    """What the kernel holds after `ops` (connection counts kept as they were): the backend's
    record of what it applied, and the fake's kernel."""
    for op in ops:
        match op:
            case AddAddress(ip=ip):
                addresses.add(ip)
            case DelAddress(ip=ip):
                addresses.discard(ip)
            case AddVirtual(key=key) | EditVirtual(key=key):
                old = virtuals.get(key)
                virtuals[key] = ListedVirtual(scheduler=op.scheduler, persistence=op.persistence,
                                              reals=dict(old.reals) if old else {})
            case DelVirtual(key=key):
                virtuals.pop(key, None)
            case AddReal(virtual=key, real=real, weight=weight):
                virtuals[key].reals[real] = RealStats(weight=weight)
            case SetWeight(virtual=key, real=real, weight=weight):
                old_stats = virtuals[key].reals[real]
                virtuals[key].reals[real] = RealStats(weight=weight, active=old_stats.active,
                                                      inactive=old_stats.inactive)
            case DelReal(virtual=key, real=real):
                virtuals[key].reals.pop(real, None)
