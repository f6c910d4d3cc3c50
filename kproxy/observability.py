"""Wiring for `kproxy run`: metrics and health state, their HTTP servers, the sync wrapper."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from kproxy.health import HealthEndpoints, ProxyHealth
from kproxy.http_server import Response, RouteServer
from kproxy.metrics import ChangeSource, ObservedSync, ProxyMetrics, SyncReportLike

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Observability:
    metrics: ProxyMetrics
    health: ProxyHealth
    servers: list[RouteServer] = field(default_factory=list)

    def queued(self) -> None:
        """A change arrived that needs a sync (called by the tracker's on_change)."""
        self.health.queued_update()
        self.metrics.queued(time.time())

    def observe(self, sync: Callable[[], SyncReportLike], changes: ChangeSource) -> ObservedSync:
        return ObservedSync(sync, changes, self.metrics, self.health)

    def close(self) -> None:
        for server in self.servers:
            server.close()


def metrics_routes(metrics: ProxyMetrics) -> dict[str, Callable[[], Response]]:
    text = "text/plain; charset=utf-8"
    return {
        "/metrics": lambda: (200, *metrics.exposition()),
        "/proxyMode": lambda: (200, text, metrics.mode.encode()),
        # upstream's metrics server also answers /healthz (plain "ok": the process is up)
        "/healthz": lambda: (200, text, b"ok"),
    }


def start_observability(mode: str, changes: ChangeSource, sync_period: float,
                        metrics_address: str | None, healthz_address: str | None,
                        clock: Callable[[], float] = time.time) -> Observability:
    """Servers that cannot bind are logged and left out (upstream's bindAddressHardFail: false)."""
    metrics = ProxyMetrics(mode, changes)
    health = ProxyHealth(timeout=2 * sync_period, clock=clock)
    endpoints = HealthEndpoints(
        health, lambda path, code: (metrics.healthz if path == "healthz" else metrics.livez).labels(str(code)).inc())
    obs = Observability(metrics, health)
    wanted = [
        ("metrics", metrics_address, metrics_routes(metrics)),
        ("healthz", healthz_address, {"/healthz": endpoints.healthz, "/livez": endpoints.livez}),
    ]
    for name, address, routes in wanted:
        if not address:
            continue
        try:
            obs.servers.append(RouteServer(address, routes, name).start())
        except OSError as err:
            log.error("cannot serve", server=name, address=address, error=err.strerror or str(err))
    obs.queued()  # the first sync is due: /healthz fails if it does not happen in time
    return obs
