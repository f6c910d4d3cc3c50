"""healthCheckNodePort servers: one HTTP listener per Service with
externalTrafficPolicy Local, telling load balancers whether this node has endpoints.

Answers as upstream's service health server does: 200 when the node has local ready
endpoints (and kproxy itself is healthy), else 503; a JSON body naming the Service, and
the endpoint count in the X-Load-Balancing-Endpoint-Weight header.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

from kproxy.model import ServiceName
from kproxy.plan import HealthCheck

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
        "X-Content-Type-Options": "nosniff",
        "X-Load-Balancing-Endpoint-Weight": str(local_endpoints),
    }
    status = 200 if local_endpoints and proxy_healthy else 503
    return status, headers, json.dumps(body, indent=2).encode()


class _Listener:
    def __init__(self, address: str, check: HealthCheck, proxy_healthy: Callable[[], bool]) -> None:
        self.check = check
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, headers, body = health_answer(
                    listener.check.service, listener.check.local_endpoints, proxy_healthy())
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer((address, check.node_port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name=f"healthcheck-{check.node_port}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ServiceHealthServer:
    """Keeps one listener per HealthCheck of the latest plan; counts update in place."""

    def __init__(self, address: str = "0.0.0.0", proxy_healthy: Callable[[], bool] = lambda: True) -> None:
        self._address = address
        self._proxy_healthy = proxy_healthy
        self._listeners: dict[int, _Listener] = {}
        self._by_family: dict[int, tuple[HealthCheck, ...]] = {}

    def sync(self, checks: Iterable[HealthCheck], family: int = 4) -> None:
        """The checks of one IP family's plan; a dual-stack Service's pods count once."""
        self._by_family[family] = tuple(checks)
        wanted: dict[int, HealthCheck] = {}
        for check in (c for family_checks in self._by_family.values() for c in family_checks):
            known = wanted.get(check.node_port)
            if known is None or known.local_endpoints < check.local_endpoints:
                wanted[check.node_port] = check
        for port in [p for p, lis in self._listeners.items() if wanted.get(p, None) is None
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
