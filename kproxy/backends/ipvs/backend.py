"""IpvsBackend: renders a Plan as IPVS objects, diffs them against what the kernel holds, and
sends one netlink request per difference; the auxiliary nftables table is replaced in one
batch when it changed.

What was applied is kept in memory, so a sync after the first reads back only the virtual
servers whose real servers are draining. The first sync, the one after a failure and a
periodic full sync read the whole IPVS table back (IPVS has no transactions: a refused
request leaves the ones before it applied, and the next sync starts from what the kernel has).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from kproxy.backends.base import SyncResult, Touched
from kproxy.backends.ipvs.aux import render_aux
from kproxy.backends.ipvs.diff import apply_to, diff, draining
from kproxy.backends.ipvs.kernel import IpvsKernel
from kproxy.backends.ipvs.objects import DEFAULT_SCHEDULER, ListedVirtual, RealKey, VirtualKey
from kproxy.backends.ipvs.readback import read_view, record_differences
from kproxy.backends.ipvs.render import nodeport_ips, render_state
from kproxy.backends.view import ProgrammedView
from kproxy.model import IPAddress, IPNetwork
from kproxy.plan import Plan

log = structlog.get_logger(__name__)

# A draining real server is deleted after this long even with connections left (upstream
# waits for them without a bound; a long-lived idle connection would keep it for hours).
DRAIN_LIMIT = 15 * 60.0


class IpvsBackend:
    mode = "ipvs"
    watched_table: str | None = None  # IPVS is not nftables: a generation change means a whole check

    def __init__(self, kernel: IpvsKernel, family: int = 4, *, scheduler: str = DEFAULT_SCHEDULER,
                 drain_limit: float = DRAIN_LIMIT, clock: Callable[[], float] = time.monotonic,
                 exclude: tuple[IPNetwork, ...] = ()) -> None:
        self._kernel = kernel
        self.family = family
        self.scheduler = scheduler
        self.drain_limit = drain_limit
        self._clock = clock
        self.exclude = exclude  # --ipvs-exclude-cidrs: virtual servers there are someone else's
        self._virtuals: dict[VirtualKey, ListedVirtual] | None = None  # None: read the kernel first
        self._addresses: set[IPAddress] = set()
        self._aux: str | None = None
        self._drain_since: dict[tuple[VirtualKey, RealKey], float] = {}

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        started = time.perf_counter()
        full = full or self._virtuals is None
        if full or self._virtuals is None:
            virtuals = {key: vs for key, vs in self._kernel.list_virtuals().items()
                        if not any(key.ip in cidr for cidr in self.exclude)}
            addresses = self._kernel.addresses()
        else:
            virtuals, addresses = self._virtuals, set(self._addresses)
            for key in {key for key, _ in self._drain_since if key in virtuals}:
                virtuals[key] = ListedVirtual(scheduler=virtuals[key].scheduler,
                                              persistence=virtuals[key].persistence,
                                              reals=self._kernel.list_reals(key))
        local = self._kernel.local_addresses() if plan.nodeport_all_local else ()
        desired = render_state(plan, scheduler=self.scheduler, local_addresses=local)
        now = self._clock()
        expired = {pair for pair, since in self._drain_since.items() if now - since >= self.drain_limit}
        ops = diff(desired, virtuals, addresses, expired)
        aux = render_aux(plan, nodeport_ips(plan, local))
        rendered = time.perf_counter()
        self._virtuals = None  # until the kernel took it all: a failure means reading it again
        sent = self._kernel.apply(ops)
        transactions = 0
        if aux != self._aux or full:
            self._aux = None
            self._kernel.apply_aux(aux)
            self._aux, transactions = aux, 1
        apply_to(virtuals, addresses, ops)
        self._virtuals, self._addresses = virtuals, addresses
        still = draining(virtuals, desired)
        self._drain_since = {pair: self._drain_since.get(pair, now) for pair in still}
        done = time.perf_counter()
        return SyncResult(full=full, operations=sent, transactions=transactions,
                          render_ms=(rendered - started) * 1000, apply_ms=(done - rendered) * 1000)

    def draining(self) -> list[tuple[VirtualKey, RealKey]]:
        return sorted(self._drain_since)

    def differences(self, touched: Touched | None = None) -> list[str]:
        if self._virtuals is None:
            return []
        return record_differences(self._virtuals, self._addresses, self._kernel.list_virtuals(),
                                  self._kernel.addresses())

    def read_view(self) -> ProgrammedView:
        return read_view(self._kernel.list_virtuals(), [self._kernel.aux_table()])

    def cleanup(self) -> bool:
        self._virtuals, self._aux, self._drain_since = None, None, {}
        return self._kernel.cleanup()

