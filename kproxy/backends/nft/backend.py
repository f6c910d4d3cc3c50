"""NftBackend: renders a Plan, diffs it against what it last applied, applies one batch.

What was applied is kept in memory (reading a large ruleset back costs seconds:
docs/DESIGN.md §3).
The first sync, and the one after any failure, replaces the whole table in a single atomic
batch: that adopts whatever an earlier run left without a moment of missing rules, and
makes any in-memory record that a failed batch left behind irrelevant.
"""

from __future__ import annotations

import time

import structlog

from kproxy.backends.base import SyncResult
from kproxy.backends.nft.affinity import stale_entries
from kproxy.backends.nft.drift import differences
from kproxy.backends.nft.elements import ElementDelta, ElementTable
from kproxy.backends.nft.kernel import NftError, NftKernel
from kproxy.backends.nft.names import affinity_names, table_of
from kproxy.backends.nft.objects import Skeleton
from kproxy.backends.nft.readback import read_view
from kproxy.backends.nft.render import (
    Contribution,
    affinity_timeouts,
    counts_in_use,
    render_node,
    render_service_port,
    render_skeleton,
)
from kproxy.backends.nft.transaction import NeedsFullSync, NftTransaction, full_transaction, incremental_transaction
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
        self._reset()

    def _reset(self) -> None:
        self._table = ElementTable()
        self._plans: dict[ServicePortName, ServicePortPlan] = {}
        self._node: Contribution = {}
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
        return self._apply(full_transaction(skeleton, self._table), skeleton, started, full=True)

    def _apply(self, tx: NftTransaction, skeleton: Skeleton, started: float, full: bool) -> SyncResult:
        rendered = time.perf_counter()
        if tx:
            try:
                self._apply_script(tx.text())
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
        return SyncResult(full=full, operations=tx.operations, transactions=self._transactions,
                          render_ms=(rendered - started) * 1000, apply_ms=(done - rendered) * 1000)

    def _apply_script(self, script: str) -> None:
        self._kernel.apply(script)
        self._transactions += 1

    def differences(self) -> list[str]:
        """What differs between the kernel and what this backend applied (nothing before
        the first sync). Lists the whole table: the agent asks only when the ruleset
        generation says someone else changed nftables."""
        if self._skeleton is None:
            return []
        return differences(self._skeleton, self._table, self._kernel.list_table())

    def _update_elements(self, plan: Plan, delta: ElementDelta | None) -> None:
        node = render_node(plan)
        if node != self._node:
            self._table.replace(NODE_OWNER, self._node, node, delta)
            self._node = node
        wanted = {sp.name: sp for sp in plan.service_ports}
        for name in [n for n in self._plans if n not in wanted]:
            gone = self._plans.pop(name)
            # render is pure, so what `gone` contributed is rendered again rather than kept
            self._table.replace(str(name), render_service_port(gone), None, delta)
            self._note_affinity(gone, None)
        for name, sp in wanted.items():
            old = self._plans.get(name)
            if old is sp or old == sp:
                continue
            if old is not None:
                self._note_affinity(old, sp)
            before = render_service_port(old) if old is not None else None
            self._table.replace(str(name), before, render_service_port(sp), delta)
            self._plans[name] = sp

    def _note_affinity(self, old: ServicePortPlan, new: ServicePortPlan | None) -> None:
        if old.affinity_timeout:
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
        return render_skeleton(plan, counts_in_use(in_use), affinity_timeouts(in_use))

    def read_view(self) -> ProgrammedView:
        return read_view(self._kernel.list_table())

    def cleanup(self) -> bool:
        self._reset()
        return self._kernel.delete_table()
