"""NftBackend: renders a Plan, diffs it against what it last applied, applies one batch.

What was applied is kept in memory (reading a large ruleset back costs seconds:
docs/DESIGN.md §3).
The first sync, and the one after any failure, rewrites every element of the table (and
its skeleton, unless the kernel holds that very skeleton): that adopts whatever an earlier
run left without a moment of missing rules, and makes any in-memory record that a failed
batch left behind irrelevant (_load says how).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial

import structlog

from kproxy.backends.base import SyncResult, Touched
from kproxy.backends.nft import affinity6
from kproxy.backends.nft.affinity import stale_entries
from kproxy.backends.nft.drift import CheckStats, differences
from kproxy.backends.nft.elements import ElementDelta, ElementTable
from kproxy.backends.nft.kernel import NftError, NftKernel
from kproxy.backends.nft.names import SKELETON, affinity_names, is_endpoint_map, table_of
from kproxy.backends.nft.objects import Element, SetSpec, Skeleton
from kproxy.backends.nft.readback import read_view
from kproxy.backends.nft.render import (
    Contribution,
    affinity_timeouts,
    counts_in_use,
    frontend_key,
    render_node,
    render_service_port,
    render_skeleton,
)
from kproxy.backends.nft.transaction import (
    NeedsFullSync,
    NftTransaction,
    full_transaction,
    incremental_transaction,
    skeleton_transaction,
)
from kproxy.backends.view import ProgrammedView
from kproxy.model import ServicePortName
from kproxy.plan import Plan, ServicePortPlan

log = structlog.get_logger(__name__)

NODE_OWNER = ""  # owner of node-wide elements; sorts before every Service port


class NftBackend:
    mode = "nftables"

    def __init__(self, kernel: NftKernel, family: int = 4) -> None:
        self._kernel = kernel
        self.family = family
        self.watched_table: str | None = table_of(family)
        self._reset()

    def _reset(self) -> None:
        self._table = ElementTable(is_endpoint_map)
        self._plans: dict[ServicePortName, ServicePortPlan] = {}
        self._affinity6: dict[ServicePortName, ServicePortPlan] = {}  # IPv6 Service ports with affinity
        self._node: Contribution = {}
        self._marker: Contribution = {}
        self._skeleton: Skeleton | None = None
        self._transactions = 0  # kernel transactions committed by the current sync
        # changed Service ports that had affinity: (old plan, new plan or None)
        self._affinity_changes: list[tuple[ServicePortPlan, ServicePortPlan | None]] = []

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        started = time.perf_counter()
        self._transactions = 0
        if full or self._skeleton is None:
            return self._full_sync(plan, started)
        delta = ElementDelta()
        self._update_elements(plan, delta)
        skeleton = self._render_skeleton(plan)
        self._mark(skeleton, delta)
        try:
            tx = incremental_transaction(self._skeleton, skeleton, delta)
        except NeedsFullSync as why:
            log.info("full sync needed", reason=str(why))
            return self._full_sync(plan, started)
        return self._apply(tx, skeleton, started, full=False)

    def _full_sync(self, plan: Plan, started: float) -> SyncResult:
        self._reset()
        self._update_elements(plan, None)
        skeleton = self._render_skeleton(plan)
        self._mark(skeleton, None)
        operations = sum(self._table.count(spec.name) for spec in skeleton.sets)
        return self._commit(partial(self._load, skeleton), operations, skeleton, started, full=True)

    def _load(self, skeleton: Skeleton) -> None:
        """A full sync. The elements go in a transaction of their own, after the skeleton
        (nft would parse each into an expression tree: kernel.load_elements):
        - no table yet: the skeleton with empty sets, then the elements, in transactions of a
          size the kernel takes fastest. Nothing was served before, so nothing is lost
          meanwhile; a failed load removes the table again.
        - the kernel holds this very skeleton (a restart, a periodic full sync): one
          transaction empties each set and fills it again.
        - another skeleton, or one someone else changed: one nft batch replaces the whole
          table, elements included (slower, never a moment without rules)."""
        loaded = [(spec, self._table.elements(spec.name)) for spec in skeleton.sets]
        held = self._kernel.holds(skeleton)
        if held is None:
            self._apply_script(skeleton_transaction(skeleton).text())
            try:
                self._load_elements(skeleton.table, loaded, flush=False, atomic=False)
            except Exception:
                self._kernel.delete_table()
                self._transactions += 1
                raise
        elif held:
            # affinity maps too: a full sync starts them afresh, as a replaced table would
            self._load_elements(skeleton.table, loaded, flush=True)
        else:
            self._apply_script(full_transaction(skeleton, self._table).text())

    def _apply(self, tx: NftTransaction, skeleton: Skeleton, started: float, full: bool) -> SyncResult:
        return self._commit(partial(self._apply_script, tx.text()) if tx else None, tx.operations, skeleton,
                            started, full)

    def _commit(self, work: Callable[[], None] | None, operations: int, skeleton: Skeleton, started: float,
                full: bool) -> SyncResult:
        rendered = time.perf_counter()
        if work is not None:
            try:
                work()
            except Exception:
                # The kernel kept its previous state; our record is ahead of it now, so the
                # next sync rebuilds the table whole instead of trusting the record.
                self._skeleton = None
                raise
        self._skeleton = skeleton
        if not full:
            self._forget_stale_affinity()
        self._affinity_changes = []
        done = time.perf_counter()
        return SyncResult(full=full, operations=operations, transactions=self._transactions,
                          render_ms=(rendered - started) * 1000, apply_ms=(done - rendered) * 1000)

    def _apply_script(self, script: str) -> None:
        self._kernel.apply(script)
        self._transactions += 1

    def _load_elements(self, table: str, sets: Sequence[tuple[SetSpec, Iterable[tuple[str, Element]]]],
                       flush: bool, atomic: bool = True) -> None:
        self._transactions += self._kernel.load_elements(table, sets, flush, atomic)

    def differences(self, touched: Touched | None = None) -> list[str]:
        """What differs between the kernel and what this backend applied (nothing before
        the first sync). The agent asks only when another program's commit may have changed
        the table; `touched` says which sets it changed (None: any), and only those sets'
        elements are read, streamed over netlink (drift.py)."""
        if self._skeleton is None:
            return []
        started = time.perf_counter()
        stats = CheckStats()
        found = differences(self._skeleton, self._table, self._kernel, touched, stats)
        log.info("drift checked", ip_family=f"IPv{self.family}",
                 touched="anything" if touched is None else touched.describe(), sets_read=stats.sets_read,
                 elements_read=stats.elements_read, differences=len(found),
                 ms=round((time.perf_counter() - started) * 1000, 1))
        return found

    def _update_elements(self, plan: Plan, delta: ElementDelta | None) -> None:
        node = render_node(plan)
        if node != self._node:
            self._table.replace(NODE_OWNER, self._node, node, delta)
            self._node = node
        # only the Service ports the planner says changed (all of them for a full sync, or a
        # plan that is not relative to the previous one)
        if delta is None or plan.changed is None:
            names: Iterable[ServicePortName] = [*self._plans, *(sp.name for sp in plan.service_ports)]
        else:
            names = plan.changed
        for name in names:
            old = self._plans.get(name)
            sp = plan.service_ports.get(name)
            if old is sp or old == sp:
                continue
            if old is not None:
                self._note_affinity(old, sp)
            # render is pure, so what `old` contributed is rendered again rather than kept
            before = self._render(old) if old is not None else None
            self._table.replace(str(name), before, self._render(sp) if sp is not None else None, delta)
            if sp is None:
                del self._plans[name]
            else:
                self._plans[name] = sp
            if sp is not None and sp.affinity_timeout and self.family == 6:
                self._affinity6[name] = sp
            else:
                self._affinity6.pop(name, None)

    def _mark(self, skeleton: Skeleton, delta: ElementDelta | None) -> None:
        """The element that names the skeleton the table holds (names.SKELETON)."""
        marker: Contribution = {SKELETON: {"0": Element(comment=skeleton.digest())}}
        if marker != self._marker:
            self._table.replace(SKELETON, self._marker or None, marker, delta)
            self._marker = marker

    def _render(self, sp: ServicePortPlan) -> Contribution:
        if not (sp.affinity_timeout and self.family == 6):
            return render_service_port(sp)
        # IPv6 affinity has a layout of its own (affinity6.py): the frontends' elements
        # without the IPv4 affinity sets, plus verdict-map elements into its chains
        out = render_service_port(replace(sp, affinity_timeout=None))
        proto = sp.protocol.nft
        frontends = [(frontend_key(fe, proto), fe.ip is None, fe.kind.is_external) for fe in sp.frontends]
        out.update(affinity6.elements(sp, frontends))
        return out

    def _note_affinity(self, old: ServicePortPlan, new: ServicePortPlan | None) -> None:
        if old.affinity_timeout and self.family == 4:
            self._affinity_changes.append((old, new))

    def _forget_stale_affinity(self) -> None:
        changes, self._affinity_changes = self._affinity_changes, []
        if not changes:
            return
        tables = {affinity_names(old.affinity_timeout)[0] for old, _ in changes if old.affinity_timeout}
        try:
            stale = stale_entries(changes, {t: self._kernel.list_map(t) for t in tables})
            for table, keys in stale.items():
                self._apply_script(f"delete element {table_of(self.family)} {table} {{ {', '.join(keys)} }}\n")
        except NftError as err:
            # an entry may time out between listing and deleting; the rest expire anyway
            log.info("could not forget stale affinity", error=str(err))

    def _render_skeleton(self, plan: Plan) -> Skeleton:
        in_use = self._table.set_names()
        return render_skeleton(plan, counts_in_use(in_use), affinity_timeouts(in_use),
                               [self._affinity6[name] for name in sorted(self._affinity6)])

    def read_view(self) -> ProgrammedView:
        return read_view(self._kernel.list_table())

    def cleanup(self) -> bool:
        self._reset()
        return self._kernel.delete_table()
