"""Upstream kube-proxy's metrics (names, types, buckets, labels), with prometheus_client.

Per-family metrics carry ip_family="IPv4" or "IPv6", one series per family the node
programs, as upstream's one proxier per family does. Change counts are read from the
tracker at scrape time; sync results are recorded by `ObservedSync`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


def family_label(family: int) -> str:
    return f"IPv{family}"


SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))  # ExponentialBuckets(0.001, 2, 15)
# upstream's merge(): a 0 bucket, 0.25s, 0.5s, 1..59s, 60..115s by 5s, 2..5min by 30s
NETWORK_PROGRAMMING_BUCKETS = (
    (0.0, 0.25, 0.5)
    + tuple(float(s) for s in range(1, 60))
    + tuple(float(s) for s in range(60, 120, 5))
    + tuple(float(s) for s in range(120, 330, 30))
)
FAILURE_COUNTERS = {  # per mode, as upstream names them
    "nftables": ("kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "Cumulative proxy nftables sync failures"),
    "iptables": ("kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                 "Cumulative proxy iptables restore failures"),
}
FAILURE_COUNTERS["ipvs"] = FAILURE_COUNTERS["iptables"]  # upstream's IPVS mode counts its iptables restores


class ChangeCountsLike(Protocol):
    """kproxy.tracker.ChangeCounts: changes seen and pending, per kind."""

    @property
    def total(self) -> Mapping[str, int]: ...

    @property
    def pending(self) -> Mapping[str, int]: ...


class ChangeSource(Protocol):
    """What the tracker tells the metrics (kproxy.tracker.Tracker)."""

    def change_counts(self) -> ChangeCountsLike: ...
    def take_changes(self) -> tuple[float, ...]: ...


class _ChangeCollector:
    """kubeproxy_sync_proxy_rules_{service,endpoint}_changes_{total,pending}, read at scrape."""

    def __init__(self, source: ChangeSource) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # collected on demand only; no duplicate-name checks needed

    def collect(self) -> Iterator[Metric]:
        counts = self._source.change_counts()
        for kind, word, label in (("Service", "service", "Service"), ("EndpointSlice", "endpoint", "Endpoint")):
            yield CounterMetricFamily(f"kubeproxy_sync_proxy_rules_{word}_changes",
                                      f"Cumulative proxy rules {label} changes",
                                      value=counts.total.get(kind, 0))
            yield GaugeMetricFamily(f"kubeproxy_sync_proxy_rules_{word}_changes_pending",
                                    f"Pending proxy rules {label} changes",
                                    value=counts.pending.get(kind, 0))


class ProxyMetrics:
    def __init__(self, mode: str, changes: ChangeSource | None = None,
                 registry: CollectorRegistry | None = None, families: tuple[int, ...] = (4,)) -> None:
        self.mode = mode
        self.families = tuple(family_label(f) for f in families)
        # what is not per family in kproxy (network programming latency, failures) goes
        # to the first family, the node's primary one
        self._primary_family = families[0]
        self.primary = family_label(families[0])
        self.registry = registry or CollectorRegistry()
        r = self.registry
        family = ("ip_family",)
        self.sync_duration = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds", family,
                                       buckets=SYNC_BUCKETS, registry=r)
        self.full_sync_duration = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                            "SyncProxyRules latency in seconds for full resyncs", family,
                                            buckets=SYNC_BUCKETS, registry=r)
        self.partial_sync_duration = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                               "SyncProxyRules latency in seconds for partial resyncs", family,
                                               buckets=SYNC_BUCKETS, registry=r)
        self.last_timestamp = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                                    "The last time proxy rules were successfully synced", family, registry=r)
        self.last_queued_timestamp = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                           "The last time a sync of proxy rules was queued", family, registry=r)
        self.network_programming = Histogram("kubeproxy_network_programming_duration_seconds",
                                             "In Cluster Network Programming Latency in seconds", family,
                                             buckets=NETWORK_PROGRAMMING_BUCKETS, registry=r)
        name, doc = FAILURE_COUNTERS.get(mode, FAILURE_COUNTERS["nftables"])
        self.sync_failures = Counter(name, doc, family, registry=r)
        self.healthz = Counter("kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status",
                               ("code",), registry=r)
        self.livez = Counter("kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status",
                             ("code",), registry=r)
        # kproxy's own: full rewrites because the kernel's rules differed from what kproxy
        # had applied (another agent or an admin changed them)
        self.drift_repairs = Counter("kproxy_sync_proxy_rules_drift_repairs_total",
                                     "Full rewrites repairing rules changed behind kproxy's back", family,
                                     registry=r)
        # Children exist from the start, so a scrape before the first sync shows zeros.
        for metric in (self.sync_duration, self.full_sync_duration, self.partial_sync_duration,
                       self.network_programming, self.sync_failures, self.drift_repairs):
            for label in self.families:
                metric.labels(label)
        if changes is not None:
            r.register(_ChangeCollector(changes))
        if registry is None:
            ProcessCollector(registry=r)  # process_cpu_seconds_total etc., as upstream serves

    def queued(self, now: float) -> None:
        for label in self.families:
            self.last_queued_timestamp.labels(label).set(now)

    def synced(self, report: SyncReportLike, now: float, trigger_times: tuple[float, ...]) -> None:
        families = report.families or (_Whole(family=self._primary_family, full=report.full,
                                              seconds=report.total_ms / 1000, drift=()),)
        for part in families:
            label = family_label(part.family)
            self.sync_duration.labels(label).observe(part.seconds)
            (self.full_sync_duration if part.full else self.partial_sync_duration).labels(label).observe(part.seconds)
            self.last_timestamp.labels(label).set(now)
            if part.drift:
                self.drift_repairs.labels(label).inc()
        for trigger in trigger_times:
            if now >= trigger:
                self.network_programming.labels(self.primary).observe(now - trigger)

    def sync_failed(self) -> None:
        self.sync_failures.labels(self.primary).inc()

    def exposition(self) -> tuple[str, bytes]:
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)


class FamilySyncLike(Protocol):
    """kproxy.agent.FamilySync: one IP family's part of a sync."""

    @property
    def family(self) -> int: ...

    @property
    def full(self) -> bool: ...

    @property
    def seconds(self) -> float: ...

    @property
    def drift(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class _Whole:
    """A report without per-family parts, counted as the primary family's."""

    family: int
    full: bool
    seconds: float
    drift: tuple[str, ...]


class SyncReportLike(Protocol):
    @property
    def full(self) -> bool: ...

    @property
    def total_ms(self) -> float: ...

    @property
    def families(self) -> Sequence[FamilySyncLike]: ...


class SyncListener(Protocol):
    def updated(self) -> None: ...


class ObservedSync:
    """Wraps the agent's sync: takes the tracker's pending changes, records the outcome in
    the metrics and tells the health server. Trigger times of a failed sync are kept for
    the next successful one (their changes were not programmed yet)."""

    def __init__(self, sync: Callable[[], SyncReportLike], changes: ChangeSource, metrics: ProxyMetrics,
                 health: SyncListener | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self._sync = sync
        self._changes = changes
        self._metrics = metrics
        self._health = health
        self._clock = wall_clock
        self._carried: tuple[float, ...] = ()

    def __call__(self) -> SyncReportLike:
        triggers = self._carried + self._changes.take_changes()
        try:
            report = self._sync()
        except Exception:
            self._carried = triggers
            self._metrics.sync_failed()
            raise
        self._carried = ()
        self._metrics.synced(report, self._clock(), triggers)
        if self._health is not None:
            self._health.updated()
        return report
