"""The agent: wires a source, the tracker, the planner and a backend, and runs syncs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from kproxy.backends.base import Backend
from kproxy.model import ClusterState, NodeConfig
from kproxy.plan import Plan
from kproxy.planner import PlanCache, compute_plan
from kproxy.tracker import Tracker

log = structlog.get_logger(__name__)

# Like upstream's nftables mode: partial syncs on changes, and a full rewrite now and
# then, which repairs anything changed behind kproxy's back.
FULL_SYNC_PERIOD_S = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncReport:
    service_ports: int
    endpoints: int
    operations: int
    full: bool
    plan_ms: float
    render_ms: float
    apply_ms: float
    total_ms: float


SyncHook = Callable[[Plan, SyncReport], object]


class Agent:
    """One sync = snapshot -> a plan per IP family -> each family's backend, serialised
    by a lock (upstream runs one proxier per family the same way)."""

    def __init__(self, node: NodeConfig, backends: Mapping[int, Backend], tracker: Tracker,
                 on_synced: Sequence[SyncHook] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.backends = dict(backends)
        self.tracker = tracker
        self._caches = {family: PlanCache() for family in self.backends}
        self._lock = threading.Lock()
        self.last_sync: SyncReport | None = None
        self._clock = clock
        self._last_full: float | None = None
        # called with each family's plan after each successful sync, outside the lock
        # (healthCheckNodePorts, UDP conntrack cleanup)
        self.on_synced = tuple(on_synced)

    def _node_now(self, state: ClusterState) -> NodeConfig:
        """The node config with this node's zone as its Node object says now."""
        info = state.nodes.get(self.node.hostname)
        zone = info.zone if info else None
        return self.node if zone == self.node.zone else replace(self.node, zone=zone)

    def sync(self, full: bool = False) -> SyncReport:
        with self._lock:
            started = time.perf_counter()
            state = self.tracker.snapshot()
            node = self._node_now(state)
            plans = [compute_plan(node, state, self._caches[f], family=f) for f in self.backends]
            planned = time.perf_counter()
            now = self._clock()
            full = full or self._last_full is None or now - self._last_full >= FULL_SYNC_PERIOD_S
            results = [self.backends[plan.family].sync(plan, full=full) for plan in plans]
            all_full = all(r.full for r in results)
            if all_full:
                self._last_full = now
            done = time.perf_counter()
            report = SyncReport(
                service_ports=sum(len(p.service_ports) for p in plans),
                endpoints=sum(len(sp.internal_targets) for p in plans for sp in p.service_ports),
                operations=sum(r.operations for r in results),
                full=all_full,
                plan_ms=round((planned - started) * 1000, 2),
                render_ms=round(sum(r.render_ms for r in results), 2),
                apply_ms=round(sum(r.apply_ms for r in results), 2),
                total_ms=round((done - started) * 1000, 2),
            )
            self.last_sync = report
        for plan in plans:
            for callback in self.on_synced:
                callback(plan, report)
        log.info("synced", service_ports=report.service_ports, endpoints=report.endpoints,
                 operations=report.operations, full=report.full, plan_ms=report.plan_ms,
                 render_ms=report.render_ms, apply_ms=report.apply_ms, total_ms=report.total_ms)
        return report
