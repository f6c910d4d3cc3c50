"""The agent: one sync is a snapshot of the tracker, a plan per IP family, and each
family's backend making the kernel match it; plus the check that nobody changed the
rules behind kproxy's back since the last sync.

That check costs nothing while the nftables ruleset generation stays where kproxy's own
commits left it. On a real node it moves all the time (kubelet and CNIs commit through
iptables-nft), so a commit watch (nftables' netlink events) says which tables, chains and
sets other programs' commits touched: a commit elsewhere costs no read at all, one that
touched kproxy's table a read of what it touched. When the watch lost events, or has
none, the whole table is read, streamed (backends/nft/drift.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from kproxy.backends.base import Backend, SyncResult, Touched
from kproxy.model import IPAddress, IPNetwork, NodeConfig, NodeInfo, ServiceName
from kproxy.plan import Plan
from kproxy.planner import FamilyPlanner
from kproxy.runner import gc_paused
from kproxy.tracker import Tracker

log = structlog.get_logger(__name__)

# Like upstream's nftables mode: partial syncs on changes, and a full rewrite now and
# then, which repairs anything the drift check below could not see.
FULL_SYNC_PERIOD_S = 3600.0
# Without a ruleset generation to watch (iptables-legacy), the kernel is read back at most
# this often to look for drift (the agent's --sync-period is passed in its place).
DEFAULT_VERIFY_INTERVAL_S = 30.0

Generation = Callable[[], int | None]  # the nftables ruleset generation, None: unknown


class CommitWatch(Protocol):
    """What other programs' commits touched in kproxy's tables (backends/nft/netlink.py)."""

    def drain(self) -> None:
        """Read the events queued so far (kproxy's own commits' among them)."""

    def take(self) -> Mapping[str, Touched] | None:
        """Touched objects per table ("ip kproxy") since the last take or forget; None: unknown."""

    def forget(self) -> None:
        """Everything drained so far was kproxy's own doing."""

    def own(self, after: int, through: int) -> None:
        """The commits of generations after `after` up to `through` were kproxy's own."""

    def pause(self) -> None:
        """Stop listening (around kproxy's own full rewrites); what comes meanwhile is unknown."""

    def resume(self) -> None: ...

    def seen(self, generation: int) -> bool:
        """Whether the events of every commit up to `generation` have been read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilySync:
    """One IP family's part of a sync, for the per-family metrics."""

    family: int
    full: bool
    seconds: float  # plan + render + apply
    drift: tuple[str, ...] = ()  # what differed from what kproxy applied (repaired by a full sync)


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
    families: tuple[FamilySync, ...] = ()
    netlink_ms: float | None = None  # IPVS mode only (SyncResult.netlink_ms)


SyncHook = Callable[[Plan, SyncReport], object]


class GenerationLedger:
    """The ruleset generation at which the kernel was last known to hold exactly what
    kproxy applied. A kproxy transaction moves the generation by one; when it moved by
    more, someone else committed, and the kernel must be checked once to be sure (the
    commit watch, if any, says what to read)."""

    def __init__(self, read: Generation, verify_interval: float, clock: Callable[[], float],
                 watch: CommitWatch | None = None) -> None:
        self._read = read
        self._verify_interval = verify_interval
        self._clock = clock
        self.watch = watch
        self.known: int | None = None
        self._last_verified = float("-inf")

    def current(self) -> int | None:
        return self._read()

    def must_verify(self, generation: int | None) -> bool:
        if generation is not None:
            return generation != self.known
        # no generation to watch: read the kernel back now and then
        return self._clock() - self._last_verified >= self._verify_interval

    def touched(self) -> Mapping[str, Touched] | None:
        return self.watch.take() if self.watch is not None else None

    def verified(self, generation: int | None) -> None:
        self._last_verified = self._clock()
        # a commit counted in `generation` whose events have not come yet would be
        # forgotten with kproxy's own at the end of the sync: check again next time
        if generation is not None and self.watch is not None and not self.watch.seen(generation):
            generation = None
        self.known = generation

    def after_sync(self, known_before: bool, before: int | None, applied_from: int | None, commits: int) -> None:
        """After this sync's transactions (the generation was `before` when the sync began,
        `applied_from` when its first transaction began): still known if the state before
        was known (or replaced whole) and only kproxy committed since. Then what the watch
        saw since it was last read was kproxy's own (events lost while kproxy's own full
        sync overflowed the socket included). Otherwise the next sync asks the watch what
        others touched, without kproxy's own commits if the transactions alone moved the
        generation (a long drift check does not make kproxy read its own commits back)."""
        if self.watch is not None:
            self.watch.drain()  # before reading the generation: a commit in between is not exact
        after = self._read()
        exact = before is not None and after is not None and after == before + commits
        self.known = after if known_before and exact else None
        if self.watch is None or after is None:
            return
        if self.known is not None:
            self.watch.forget()
        elif commits and applied_from is not None and after == applied_from + commits:
            self.watch.own(applied_from, after)


class RefusedExternalIPs:
    """One warning per Service whose externalIPs --external-ip-cidrs leaves out (again only
    if the set it leaves out changes), not one per sync."""

    def __init__(self) -> None:
        self._logged: dict[ServiceName, frozenset[IPAddress]] = {}

    def report(self, plans: Sequence[Plan]) -> None:
        refused: dict[ServiceName, set[IPAddress]] = {}
        for plan in plans:
            for sp in plan.service_ports:
                if sp.refused_external_ips:
                    refused.setdefault(sp.name.service, set()).update(sp.refused_external_ips)
        now = {name: frozenset(ips) for name, ips in refused.items()}
        for name, ips in sorted(now.items()):
            if self._logged.get(name) != ips:
                log.warning("externalIPs outside --external-ip-cidrs are not programmed", service=str(name),
                            external_ips=",".join(map(str, sorted(ips, key=lambda ip: (ip.version, int(ip))))))
        self._logged = now


class Agent:
    """One sync = snapshot -> a plan per IP family -> each family's backend, serialised
    by a lock (upstream runs one proxier per family the same way)."""

    def __init__(self, node: NodeConfig, backends: Mapping[int, Backend], tracker: Tracker,
                 on_synced: Sequence[SyncHook] = (), clock: Callable[[], float] = time.monotonic,
                 generation: Generation = lambda: None,
                 verify_interval: float = DEFAULT_VERIFY_INTERVAL_S, watch: CommitWatch | None = None) -> None:
        self.node = node
        self.backends = dict(backends)
        self.tracker = tracker
        self._planners = {family: FamilyPlanner(family) for family in self.backends}
        self._failed = True  # the last sync did not finish: the next one plans everything
        self._lock = threading.Lock()
        self.last_sync: SyncReport | None = None
        self._clock = clock
        self._last_full: float | None = None
        self._ledger = GenerationLedger(generation, verify_interval, clock, watch)
        self._refused = RefusedExternalIPs() if node.external_ip_cidrs is not None else None
        # called with each family's plan after each successful sync, outside the lock
        # (healthCheckNodePorts, UDP conntrack cleanup)
        self.on_synced = tuple(on_synced)

    def _node_now(self, nodes: dict[str, NodeInfo], service_cidrs: tuple[IPNetwork, ...]) -> NodeConfig:
        """The node config with this node's zone and pod CIDRs as its Node object says now
        (NodeCIDR follows spec.podCIDRs; upstream restarts when they change), and, unless
        --service-cluster-ip-range gave them, the service CIDRs of the ServiceCIDR objects
        (as upstream's nftables mode)."""
        info = nodes.get(self.node.hostname)
        zone, pod_cidrs = (info.zone, info.pod_cidrs) if info else (None, ())
        service_cidrs = self.node.service_cidrs or service_cidrs
        if (zone, pod_cidrs, service_cidrs) == (self.node.zone, self.node.pod_cidrs, self.node.service_cidrs):
            return self.node
        return replace(self.node, zone=zone, pod_cidrs=pod_cidrs, service_cidrs=service_cidrs)

    def _drift(self, generation: int | None) -> dict[int, tuple[str, ...]] | None:
        """What each backend's rules lack or have beyond what it applied, when the ruleset
        generation says someone else may have changed them; None: not checked (no need).
        A backend whose table the watch saw no other commit touch is not read at all."""
        if not self._ledger.must_verify(generation):
            return None
        touched = self._ledger.touched()
        found = {}
        for family, backend in self.backends.items():
            table = backend.watched_table
            if touched is None or table is None:
                found[family] = tuple(backend.differences())
            elif scope := touched.get(table):
                found[family] = tuple(backend.differences(scope))
        drifted = {family: diff for family, diff in found.items() if diff}
        self._ledger.verified(generation if not drifted else None)
        return drifted

    def sync(self, full: bool = False) -> SyncReport:
        with self._lock, ExitStack() as pause:
            started = time.perf_counter()
            now = self._clock()
            full = full or self._last_full is None or now - self._last_full >= FULL_SYNC_PERIOD_S
            node = self._node_now(self.tracker.nodes(), self.tracker.service_cidrs())
            # Only the Services that changed since the last sync are planned again, unless
            # this sync rewrites everything, follows a failure, or the node itself changed.
            everything = full or self._failed or any(p.needs_full(node) for p in self._planners.values())
            if everything:
                pause.enter_context(gc_paused())  # millions of allocations, no cycles
            delta = self.tracker.delta(full=everything)
            self._failed = True
            plans = [self._planners[f].plan(node, delta) for f in self.backends]
            if self._refused is not None:
                self._refused.report(plans)
            planned = time.perf_counter()
            generation = self._ledger.current()
            checked = None if full else self._drift(generation)
            # the transactions' own window, to tell them from others' commits during a check
            applied_from = self._ledger.current() if checked is not None and self._ledger.watch else generation
            drift = checked or {}
            # known: replaced whole, unchanged since kproxy's last commit or verified just now
            # (the ledger then holds this generation), or every family drifted and is
            # replaced whole below
            known_before = (full or generation == self._ledger.known
                            or (bool(drift) and drift.keys() == self.backends.keys()))
            results: list[SyncResult] = []
            families = []
            self._ledger.known = None  # until this sync's commits are accounted for
            quiet = self._ledger.watch if full or drift else None
            if quiet is not None:
                quiet.pause()  # not to hear kproxy's own full rewrite: 200,000 element events
            try:
                for plan in plans:
                    family_started = time.perf_counter()
                    repair = drift.get(plan.family, ())
                    if repair:
                        log.warning("drift repaired", proxy_mode=self.backends[plan.family].mode,
                                    ip_family=f"IPv{plan.family}", drifted=_summary(repair))
                    result = self.backends[plan.family].sync(plan, full=full or bool(repair))
                    results.append(result)
                    families.append(FamilySync(family=plan.family, full=result.full, drift=repair,
                                               seconds=time.perf_counter() - family_started
                                               + (planned - started) / len(plans)))
            finally:
                if quiet is not None:
                    quiet.resume()
            self._ledger.after_sync(known_before, generation, applied_from, sum(r.transactions for r in results))
            self._failed = False
            all_full = all(r.full for r in results)
            if all_full:
                self._last_full = now
            done = time.perf_counter()
            report = SyncReport(
                service_ports=sum(len(p.service_ports) for p in plans),
                endpoints=sum(p.endpoints for p in plans),
                operations=sum(r.operations for r in results),
                full=all_full,
                plan_ms=round((planned - started) * 1000, 2),
                render_ms=round(sum(r.render_ms for r in results), 2),
                apply_ms=round(sum(r.apply_ms for r in results), 2),
                total_ms=round((done - started) * 1000, 2),
                families=tuple(families),
                netlink_ms=(round(sum(r.netlink_ms or 0 for r in results), 2)
                            if any(r.netlink_ms is not None for r in results) else None),
            )
            self.last_sync = report
        for plan in plans:
            for callback in self.on_synced:
                callback(plan, report)
        extra = {} if report.netlink_ms is None else {"netlink_ms": report.netlink_ms}
        log.info("synced", service_ports=report.service_ports, endpoints=report.endpoints,
                 operations=report.operations, full=report.full, plan_ms=report.plan_ms,
                 render_ms=report.render_ms, apply_ms=report.apply_ms, total_ms=report.total_ms, **extra)
        return report


def _summary(found: tuple[str, ...], named: int = 5) -> str:
    """One log line's worth: the first few differences, then how many more."""
    shown = "; ".join(found[:named])
    return shown + (f"; and {len(found) - named} more" if len(found) > named else "")
