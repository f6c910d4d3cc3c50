"""healthCheckNodePort servers: one HTTP listener per Service with
externalTrafficPolicy Local, telling load balancers whether this node has endpoints.

Answers as upstream's service health server does: 200 when the node has local ready
endpoints (and kproxy itself is healthy), else 503; a JSON body naming the Service, and
the endpoint count in the X-Load-Balancing-Endpoint-Weight header. Listeners bind every
address of both families, as upstream's do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import structlog

from kproxy.health.http import ANY_PATH, Response, RouteServer
from kproxy.model import ServiceName
from kproxy.plan import HealthCheck, Plan

log = structlog.get_logger(__name__)


def health_answer(service: ServiceName, local_endpoints: int, proxy_healthy: bool) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for one health check request. Pure."""
    body = {
        "service": {"namespace": service.namespace, "name": service.name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    }
    headers = {
        "Content-Type": "application/json",
        "X-Load-Balancing-Endpoint-Weight": str(local_endpoints),
    }
    status = 200 if local_endpoints and proxy_healthy else 503
    return status, headers, json.dumps(body, indent=2).encode()


class _Listener:
    def __init__(self, address: str, check: HealthCheck, proxy_healthy: Callable[[], bool]) -> None:
        self.check = check

        def answer() -> Response:
            return health_answer(self.check.service, self.check.local_endpoints, proxy_healthy())

        host = f"[{address}]" if ":" in address else address  # split_address takes [v6]:port
        self.server = RouteServer(f"{host}:{check.node_port}", {ANY_PATH: answer}, f"healthcheck-{check.node_port}")
        self.server.start(announce=False)

    def close(self) -> None:
        self.server.close()


class ServiceHealthServer:
    """Keeps one listener per HealthCheck of the latest plan; counts update in place."""

    def __init__(self, address: str = "", proxy_healthy: Callable[[], bool] = lambda: True) -> None:
        self._address = address  # "": every address of both families
        self._proxy_healthy = proxy_healthy
        self._listeners: dict[int, _Listener] = {}
        self._by_family: dict[int, tuple[HealthCheck, ...]] = {}

    def after_sync(self, plan: Plan, _report: object = None) -> None:
        """Agent hook: the plan of one IP family was programmed."""
        self.sync(plan.health_checks, plan.family)

    def sync(self, checks: Iterable[HealthCheck], family: int = 4) -> None:
        """The checks of one IP family's plan; a dual-stack Service's pods count once."""
        self._by_family[family] = tuple(checks)
        wanted: dict[int, HealthCheck] = {}
        for check in (c for family_checks in self._by_family.values() for c in family_checks):
            known = wanted.get(check.node_port)
            if known is None or known.local_endpoints < check.local_endpoints:
                wanted[check.node_port] = check
        for port in [p for p, lis in self._listeners.items() if wanted.get(p) is None
                     or wanted[p].service != lis.check.service]:
            self._listeners.pop(port).close()
        for port, check in wanted.items():
            if port in self._listeners:
                self._listeners[port].check = check
                continue
            try:
                self._listeners[port] = _Listener(self._address, check, self._proxy_healthy)
            except OSError as err:
                # as upstream: a port we cannot bind is logged and retried next sync
                log.error("cannot serve healthCheckNodePort", service=str(check.service), port=port,
                          error=str(err))

    def close(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        self._listeners = {}
