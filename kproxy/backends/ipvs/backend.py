"""IpvsBackend: renders a Plan as IPVS objects, diffs them against what the kernel holds, and
sends one netlink request per difference (many to a sendmsg); the auxiliary nftables table
gets the element changes, or is replaced whole when its chains changed.

What was applied is kept in memory, so a sync after the first renders only the Service ports
the planner says changed, diffs only the virtual servers and addresses they touched, and
reads back only the virtual servers whose real servers are draining. The first sync, the one
after a failure and a periodic full sync read the whole IPVS table back (IPVS has no
transactions: a refused request leaves the ones before it applied, and the next sync starts
from what the kernel has).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from kproxy.backends.base import SyncResult, Touched
from kproxy.backends.ipvs.aux import NODE_OWNER, aux_skeleton, node_elements, service_port_elements
from kproxy.backends.ipvs.desired import DesiredIpvs
from kproxy.backends.ipvs.diff import apply_to, diff_some, draining
from kproxy.backends.ipvs.kernel import IpvsKernel
from kproxy.backends.ipvs.objects import DEFAULT_SCHEDULER, ListedVirtual, RealKey, VirtualKey
from kproxy.backends.ipvs.readback import read_view, record_differences
from kproxy.backends.ipvs.render import nodeport_ips
from kproxy.backends.nft.elements import ElementDelta, ElementTable
from kproxy.backends.nft.objects import Skeleton
from kproxy.backends.nft.render import Contribution
from kproxy.backends.nft.transaction import NeedsFullSync, NftTransaction, full_transaction, incremental_transaction
from kproxy.backends.view import ProgrammedView
from kproxy.model import IPAddress, IPNetwork, ServicePortName
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
        # what the kernel holds, as far as kproxy knows; None: read the kernel first
        self._virtuals: dict[VirtualKey, ListedVirtual] | None = None
        self._addresses: set[IPAddress] = set()
        self._desired: DesiredIpvs | None = None
        self._aux = ElementTable()  # the auxiliary table's elements, by owner
        self._node: Contribution = {}
        self._skeleton: Skeleton | None = None  # None: replace the auxiliary table whole
        self._drain_since: dict[tuple[VirtualKey, RealKey], float] = {}

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        started = time.perf_counter()
        local = self._kernel.local_addresses() if plan.nodeport_all_local else ()
        np_ips = nodeport_ips(plan, local)
        desired, virtuals = self._desired, self._virtuals
        full = full or desired is None or virtuals is None or desired.nodeport_ips != np_ips
        delta: ElementDelta | None
        if full or desired is None or virtuals is None:
            virtuals = {key: vs for key, vs in self._kernel.list_virtuals().items()
                        if not any(key.ip in cidr for cidr in self.exclude)}
            addresses = self._kernel.addresses()
            desired, delta = DesiredIpvs(self.family, self.scheduler, np_ips), None
            self._aux, self._node, self._skeleton = ElementTable(), {}, None
            self._update(desired, plan, [sp.name for sp in plan.service_ports], set(), set(), None)
            keys: set[VirtualKey] = desired.keys() | virtuals.keys()
            ips: set[IPAddress] = {*desired.addresses(), *addresses}
        else:
            addresses = set(self._addresses)
            keys, ips, delta = set(), set(), ElementDelta()
            names = plan.changed if plan.changed is not None else {*desired.names(),
                                                                   *(sp.name for sp in plan.service_ports)}
            self._update(desired, plan, names, keys, ips, delta)
            for key in {key for key, _ in self._drain_since if key in virtuals}:
                keys.add(key)  # their connection counts decide whether they go now
                virtuals[key] = ListedVirtual(scheduler=virtuals[key].scheduler,
                                              persistence=virtuals[key].persistence,
                                              reals=self._kernel.list_reals(key))
        node = node_elements(plan, desired.short_circuited(), np_ips)
        if node != self._node:
            self._aux.replace(NODE_OWNER, self._node, node, delta)
            self._node = node
        skeleton = aux_skeleton(plan)
        aux = self._aux_script(skeleton, delta)
        now = self._clock()
        expired = {pair for pair, since in self._drain_since.items() if now - since >= self.drain_limit}
        ops = diff_some(desired.virtual, desired.has_address, virtuals, addresses, keys, ips, expired)
        rendered = time.perf_counter()
        # until the kernel took it all: a failure means reading it again
        self._virtuals = self._desired = self._skeleton = None
        sent = self._kernel.apply(ops)
        netlinked = time.perf_counter()
        transactions = 0
        if aux:
            self._kernel.apply_aux(aux.text())
            transactions = 1
        apply_to(virtuals, addresses, ops)
        self._virtuals, self._addresses, self._desired, self._skeleton = virtuals, addresses, desired, skeleton
        still = draining(virtuals, desired.virtual, keys)
        self._drain_since = {**{pair: since for pair, since in self._drain_since.items() if pair[0] not in keys},
                             **{pair: self._drain_since.get(pair, now) for pair in still}}
        done = time.perf_counter()
        return SyncResult(full=full, operations=sent + aux.operations, transactions=transactions,
                          render_ms=(rendered - started) * 1000, apply_ms=(done - rendered) * 1000,
                          netlink_ms=(netlinked - rendered) * 1000)

    def _aux_script(self, skeleton: Skeleton, delta: ElementDelta | None) -> NftTransaction:
        """The auxiliary table's changes, or the whole table after a failure, at the first
        sync, or when its chains or set definitions changed."""
        if delta is not None and self._skeleton is not None:
            try:
                return incremental_transaction(self._skeleton, skeleton, delta)
            except NeedsFullSync:
                pass
        return full_transaction(skeleton, self._aux)

    def _update(self, desired: DesiredIpvs, plan: Plan, names: Iterable[ServicePortName],
                keys: set[VirtualKey], ips: set[IPAddress], delta: ElementDelta | None) -> None:
        """Bring `names` to their plans in `plan`: the desired IPVS state, the auxiliary
        table's elements (changes recorded in `delta`), and what they touched."""
        for name in names:
            old, new = desired.plan(name), plan.service_ports.get(name)
            if old is new or old == new:
                continue
            desired.update(name, new, keys, ips)
            np_ips = desired.nodeport_ips
            self._aux.replace(str(name), service_port_elements(old, np_ips) if old is not None else None,
                              service_port_elements(new, np_ips) if new is not None else None, delta)
        desired.refresh_fwmarks(keys)

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
        self._virtuals, self._desired, self._skeleton, self._drain_since = None, None, None, {}
        return self._kernel.cleanup()
