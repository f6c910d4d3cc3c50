"""Upstream's proxier health (pkg/proxy/healthcheck ProxyHealthServer), without the HTTP part.

Healthy unless an update has been queued (a Service or EndpointSlice changed, or the agent
started) and no sync has completed within `timeout` since the oldest such update; upstream
uses twice the sync period. /healthz also fails while this node is being deleted
(deletionTimestamp set), so load balancers drain it; /livez ignores the node. Both fail
for good once a source thread cannot continue (`fail`): the agent is about to exit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from kproxy.health.http import Response


def _timestamp(seconds: float | None) -> str:
    if seconds is None:
        return "0001-01-01T00:00:00Z"  # Go's zero time, as upstream prints before any sync
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class HealthStatus:
    healthy: bool  # the proxier's own health
    last_updated: float | None
    current_time: float
    node_eligible: bool


class ProxyHealth:
    def __init__(self, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_updated: float | None = None
        self._oldest_queued: float | None = None
        self._node_eligible = True
        self.failure: str | None = None

    def queued_update(self) -> None:
        """Something changed that needs a sync; only the oldest unsynced one counts."""
        with self._lock:
            if self._oldest_queued is None:
                self._oldest_queued = self._clock()

    def updated(self) -> None:
        """A sync completed: the rules reflect everything queued before it."""
        with self._lock:
            self._oldest_queued = None
            self._last_updated = self._clock()

    def fail(self, reason: str) -> None:
        """A source thread cannot continue: unhealthy from now on, whatever syncs do."""
        with self._lock:
            self.failure = reason

    def sync_node(self, deleting: bool) -> None:
        with self._lock:
            self._node_eligible = not deleting

    def status(self) -> HealthStatus:
        with self._lock:
            now = self._clock()
            healthy = self.failure is None and (
                self._oldest_queued is None or now - self._oldest_queued < self.timeout)
            return HealthStatus(healthy, self._last_updated, now, self._node_eligible)


class HealthEndpoints:
    """The bodies upstream serves on :10256; `count(path, code)` feeds the metrics."""

    def __init__(self, health: ProxyHealth, count: Callable[[str, int], None] = lambda _p, _c: None) -> None:
        self._health = health
        self._count = count

    def healthz(self) -> Response:
        s = self._health.status()
        healthy = s.healthy and s.node_eligible
        # Like upstream: when healthy, lastUpdated is "now" (older releases reported the last
        # loop run even when nothing changed); the metrics carry the real sync times.
        last = s.current_time if healthy else s.last_updated
        body = {"lastUpdated": _timestamp(last), "currentTime": _timestamp(s.current_time),
                "nodeEligible": s.node_eligible}
        return self._respond("healthz", healthy, body)

    def livez(self) -> Response:
        s = self._health.status()
        last = s.current_time if s.healthy else s.last_updated
        body = {"lastUpdated": _timestamp(last), "currentTime": _timestamp(s.current_time)}
        return self._respond("livez", s.healthy, body)

    def _respond(self, path: str, healthy: bool, body: Mapping[str, object]) -> Response:
        code = 200 if healthy else 503
        self._count(path, code)
        return code, "application/json", json.dumps(body).encode()


def watch_node_deletion(read_node: Callable[[], dict[str, object] | None], health: ProxyHealth,
                        stop: threading.Event, interval: float = 10.0) -> None:
    """Poll this node's Node object; a deletionTimestamp makes /healthz fail. A read that
    fails (None) changes nothing: an API outage must not take the node out of rotation."""
    while not stop.is_set():
        node = read_node()
        if node is not None:
            meta = node.get("metadata")
            health.sync_node(deleting=bool(isinstance(meta, dict) and meta.get("deletionTimestamp")))
        stop.wait(interval)
