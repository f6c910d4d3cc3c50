"""FakeIpvs: an in-memory IpvsKernel for tests without root. It refuses what the kernel
refuses (a virtual server twice, a real server of a missing virtual server, an address
twice), lists what was applied the way the kernel lists it, and lets a test give real
servers connections."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kproxy.backends.ipvs.diff import AddAddress, AddReal, AddVirtual, DelAddress, DelReal, Operation, apply_to
from kproxy.backends.ipvs.kernel import IpvsError
from kproxy.backends.ipvs.objects import ListedVirtual, RealKey, RealStats, VirtualKey, aux_table_of
from kproxy.backends.nft.fake import FakeNft
from kproxy.model import IPAddress


class FakeIpvs:
    def __init__(self, local: Iterable[IPAddress] = (), family: int = 4) -> None:
        self.virtuals: dict[VirtualKey, ListedVirtual] = {}
        self.addrs: set[IPAddress] = set()
        self.local = tuple(local)
        self.aux_scripts: list[str] = []
        self.aux = FakeNft(aux_table_of(family))  # the auxiliary table, as nft would hold it
        self.requests = 0  # netlink requests a real kernel would have received
        self.fail_on: type | None = None  # the next operation of this type is refused

    def list_virtuals(self) -> dict[VirtualKey, ListedVirtual]:
        return {k: ListedVirtual(scheduler=v.scheduler, persistence=v.persistence, reals=dict(v.reals))
                for k, v in self.virtuals.items()}

    def list_reals(self, key: VirtualKey) -> dict[RealKey, RealStats]:
        if key not in self.virtuals:
            raise IpvsError(f"{key}: No such process")
        return dict(self.virtuals[key].reals)

    def addresses(self) -> set[IPAddress]:
        return set(self.addrs)

    def local_addresses(self) -> tuple[IPAddress, ...]:
        return self.local

    def apply(self, ops: Iterable[Operation]) -> int:
        count = 0
        for op in ops:
            self._check(op)
            apply_to(self.virtuals, self.addrs, [op])
            self.requests += 1
            count += 1
        return count

    def _check(self, op: Operation) -> None:
        if self.fail_on is not None and isinstance(op, self.fail_on):
            self.fail_on = None
            raise IpvsError(f"{type(op).__name__}: refused (test)")
        match op:
            case AddAddress(ip=ip) if ip in self.addrs:
                raise IpvsError(f"address {ip}: File exists")
            case DelAddress(ip=ip) if ip not in self.addrs:
                raise IpvsError(f"address {ip}: Cannot assign requested address")
            case AddVirtual(key=key) if key in self.virtuals:
                raise IpvsError(f"{key}: File exists")
            case AddReal(virtual=key, real=real) if key in self.virtuals and real in self.virtuals[key].reals:
                raise IpvsError(f"{key} {real}: File exists")
            case DelReal(virtual=key, real=real) if key in self.virtuals and real not in self.virtuals[key].reals:
                raise IpvsError(f"{key} {real}: No such file or directory")
        target = getattr(op, "key", None) or getattr(op, "virtual", None)
        if target is not None and not isinstance(op, AddVirtual) and target not in self.virtuals:
            raise IpvsError(f"{target}: No such process")

    def set_connections(self, key: VirtualKey, real: RealKey, active: int, inactive: int = 0) -> None:
        stats = self.virtuals[key].reals[real]
        self.virtuals[key].reals[real] = RealStats(weight=stats.weight, active=active, inactive=inactive)

    def apply_aux(self, script: str) -> None:
        self.aux.apply(script)
        self.aux_scripts.append(script)

    def aux_table(self) -> dict[str, Any] | None:
        return None  # FakeNft lists no rule expressions; tests read self.aux

    def cleanup(self) -> bool:
        had = bool(self.virtuals or self.addrs or self.aux_scripts)
        self.virtuals.clear()
        self.addrs.clear()
        self.aux_scripts.clear()
        self.aux.delete_table()
        return had
