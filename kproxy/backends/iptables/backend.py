"""IptablesBackend: renders a Plan to chains, writes only what changed, through
iptables-restore --noflush (one transaction per table, the xtables lock held).

The first sync, the one after a failure and every full sync (agent: periodic) read the
kernel's nat and filter tables, rewrite all of kproxy's chains, delete chains of ours the
plan no longer has (also upstream kube-proxy's KUBE-SEP-*, ...) and add the jumps from the
built-in chains when they are missing. Other syncs rewrite only chains whose rules
changed: a Service port's own chains when it changed, shared chains when their lines did.
One backend per IP family: family 6 runs ip6tables-restore of the same variant, and has no
localhost NodePorts (upstream: IPv4 only).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from kproxy.backends.base import SyncResult, Touched
from kproxy.backends.iptables.chains import ChainState
from kproxy.backends.iptables.drift import differences
from kproxy.backends.iptables.kernel import IptablesKernel
from kproxy.backends.iptables.localnet import route_localnet_or_warn  # KUBE-FIREWALL guards what it opens
from kproxy.backends.iptables.render import (
    NodeFacts,
    ServicePortRules,
    jumps,
    render_node,
    render_service_port,
)
from kproxy.backends.iptables.restore import cleanup_restore, full_restore, incremental_restore
from kproxy.backends.iptables.save import parse_save_all, read_view
from kproxy.backends.view import ProgrammedView
from kproxy.plan import Plan, ServicePortPlan

log = structlog.get_logger(__name__)


class IptablesBackend:
    mode = "iptables"
    watched_table: str | None = None  # iptables-nft tables are shared with kubelet: any commit means a check

    def __init__(self, kernel: IptablesKernel, localhost_nodeports: bool = True,
                 route_localnet: Callable[[], bool | None] = route_localnet_or_warn, family: int = 4) -> None:
        self._kernel = kernel
        self.family = family
        self._localhost_nodeports = localhost_nodeports and family == 4
        self._route_localnet = route_localnet
        self._state: ChainState | None = None  # None: the next sync is a full one
        self._node: tuple[NodeFacts, dict[tuple[str, str], tuple[str, ...]]] | None = None  # last rendered

    @property
    def variant(self) -> str:
        return self._kernel.variant

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        if plan.family != self.family:
            raise ValueError(f"an IPv{plan.family} plan given to the IPv{self.family} iptables backend")
        started = time.perf_counter()
        key = (plan.masquerade_all, plan.local, plan.family)

        def render(sp: ServicePortPlan) -> ServicePortRules:
            return render_service_port(sp, plan.masquerade_all, plan.local, plan.family)

        state = self._state
        full = full or state is None or state.key != key
        if full:
            # False: route_localnet cannot be set (warned once); localhost NodePorts stay off
            if self._localhost_nodeports and self._route_localnet() is False:
                self._localhost_nodeports = False
            state = ChainState(key)
            node_changes = state.update([sp.name for sp in plan.service_ports], plan.service_ports, render)
            state.set_node(self._render_node(plan), node_changes)
            existing = parse_save_all(self._kernel.save_all())
            restore = full_restore(state.chains(), existing, jumps(self._localhost_nodeports))
        else:
            assert state is not None
            names = state.names() | {sp.name for sp in plan.service_ports} if plan.changed is None else plan.changed
            changes = state.update(names, plan.service_ports, render)
            state.set_node(self._render_node(plan), changes)
            restore = incremental_restore(changes)
        self._state = None  # until the kernel took it
        rendered = time.perf_counter()
        if restore:
            self._kernel.restore(restore.text)  # on failure the next sync rewrites everything
        self._state = state
        done = time.perf_counter()
        return SyncResult(full=full, operations=restore.operations, transactions=restore.tables,
                          render_ms=(rendered - started) * 1000, apply_ms=(done - rendered) * 1000)

    def _render_node(self, plan: Plan) -> dict[tuple[str, str], tuple[str, ...]]:
        facts = NodeFacts.of(plan, self._localhost_nodeports)
        if self._node is None or self._node[0] != facts:
            self._node = (facts, render_node(facts))
        return self._node[1]

    def differences(self, touched: Touched | None = None) -> list[str]:
        """What differs between iptables-save and what this backend last restored."""
        if self._state is None:
            return []
        existing = parse_save_all(self._kernel.save_all())
        return differences(self._state.chains(), existing, jumps(self._localhost_nodeports))

    def read_view(self) -> ProgrammedView:
        return read_view(parse_save_all(self._kernel.save_all()))

    def cleanup(self) -> bool:
        self._state = None
        restore = cleanup_restore(parse_save_all(self._kernel.save_all()))
        if restore:
            self._kernel.restore(restore.text)
        return bool(restore)

