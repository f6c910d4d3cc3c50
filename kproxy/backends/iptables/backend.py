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

from kproxy.backends.base import SyncResult
from kproxy.backends.iptables.drift import differences
from kproxy.backends.iptables.kernel import IptablesKernel
from kproxy.backends.iptables.localnet import route_localnet_or_warn  # KUBE-FIREWALL guards what it opens
from kproxy.backends.iptables.render import (
    Chains,
    ServicePortRules,
    assemble,
    jumps,
    render_node,
    render_service_port,
)
from kproxy.backends.iptables.restore import RestoreInput, cleanup_restore, full_restore, partial_restore
from kproxy.backends.iptables.save import parse_save_all, read_view
from kproxy.backends.view import ProgrammedView
from kproxy.model import IPNetwork, ServicePortName
from kproxy.plan import Plan, ServicePortPlan

log = structlog.get_logger(__name__)


class IptablesBackend:
    mode = "iptables"

    def __init__(self, kernel: IptablesKernel, localhost_nodeports: bool = True,
                 route_localnet: Callable[[], bool | None] = route_localnet_or_warn, family: int = 4) -> None:
        self._kernel = kernel
        self.family = family
        self._localhost_nodeports = localhost_nodeports and family == 4
        self._route_localnet = route_localnet
        self._applied: Chains | None = None  # None: the next sync is a full one
        self._rules: dict[ServicePortName, tuple[ServicePortPlan, ServicePortRules]] = {}
        self._render_key: tuple[bool, tuple[IPNetwork, ...], int] | None = None

    @property
    def variant(self) -> str:
        return self._kernel.variant

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        if plan.family != self.family:
            raise ValueError(f"an IPv{plan.family} plan given to the IPv{self.family} iptables backend")
        started = time.perf_counter()
        full = full or self._applied is None
        # False: route_localnet cannot be set (warned once); localhost NodePorts stay off
        if full and self._localhost_nodeports and self._route_localnet() is False:
            self._localhost_nodeports = False
        desired = self._render(plan)
        if full:
            existing = parse_save_all(self._kernel.save_all())
            restore = full_restore(desired, existing, jumps(self._localhost_nodeports))
        else:
            assert self._applied is not None
            restore = partial_restore(self._applied, desired)
        return self._apply(restore, desired, started, full)

    def _apply(self, restore: RestoreInput, desired: Chains, started: float, full: bool) -> SyncResult:
        rendered = time.perf_counter()
        if restore:
            try:
                self._kernel.restore(restore.text)
            except Exception:
                # A table may have kept its old state: trust nothing, rewrite all next time.
                self._applied = None
                raise
        self._applied = desired
        done = time.perf_counter()
        return SyncResult(full=full, operations=restore.operations, transactions=restore.tables,
                          render_ms=(rendered - started) * 1000, apply_ms=(done - rendered) * 1000)

    def _render(self, plan: Plan) -> Chains:
        key = (plan.masquerade_all, plan.cluster_cidrs, plan.family)
        if key != self._render_key:
            self._rules, self._render_key = {}, key
        old = self._rules
        rules: dict[ServicePortName, tuple[ServicePortPlan, ServicePortRules]] = {}
        for sp in plan.service_ports:
            hit = old.get(sp.name)
            if hit is not None and (hit[0] is sp or hit[0] == sp):
                rules[sp.name] = hit
            else:
                rules[sp.name] = (sp, render_service_port(sp, *key))
        self._rules = rules
        return assemble(render_node(plan, self._localhost_nodeports), (r for _sp, r in rules.values()))

    def differences(self) -> list[str]:
        """What differs between iptables-save and what this backend last restored."""
        if self._applied is None:
            return []
        existing = parse_save_all(self._kernel.save_all())
        return differences(self._applied, existing, jumps(self._localhost_nodeports))

    def read_view(self) -> ProgrammedView:
        return read_view(parse_save_all(self._kernel.save_all()))

    def cleanup(self) -> bool:
        self._applied = None
        restore = cleanup_restore(parse_save_all(self._kernel.save_all()))
        if restore:
            self._kernel.restore(restore.text)
        return bool(restore)

