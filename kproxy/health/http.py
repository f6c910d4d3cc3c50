"""The one small HTTP server kproxy runs: /metrics, /healthz and the healthCheckNodePorts.

A server binds in the caller's network namespace (the node's, when kproxy runs in one), on
one address of either family, or on every address of both ("" as the host). Port 0 picks a
free port (tests); `port` tells which.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

import structlog

log = structlog.get_logger(__name__)

TEXT = "text/plain; charset=utf-8"
# status, then a content type or every header, then the body
Response = tuple[int, str | Mapping[str, str], bytes]
Route = Callable[[], Response]
ANY_PATH = "*"  # a route for every path not routed otherwise (Go's "/" pattern)


def split_address(address: str) -> tuple[str, int]:
    """"IP:PORT" or "[IPv6]:PORT" (already checked by the CLI) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # a client that vanished mid-request is not kproxy's problem: no traceback
        log.debug("http client error", client=str(client_address))


class _DualStackServer(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def _bind(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> _Server:
    if host == "":  # every address of both families; IPv4 only where IPv6 is off
        try:
            return _DualStackServer(("::", port), handler)
        except OSError:
            return _Server(("0.0.0.0", port), handler)
    server_class = _IPv6Server if ip_address(host).version == 6 else _Server
    return server_class((host, port), handler)


class RouteServer:
    def __init__(self, address: str, routes: Mapping[str, Route], name: str) -> None:
        host, port = split_address(address)
        self.routes = dict(routes)
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds a client may take to send its request

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                route = server.routes.get(path) or server.routes.get(ANY_PATH)
                headers: str | Mapping[str, str]
                if route is None:
                    status, headers, body = 404, TEXT, b"404 page not found\n"
                else:
                    try:
                        status, headers, body = route()
                    except Exception as err:  # noqa: BLE001 - one failing scrape must not kill the server
                        log.error("http handler failed", server=name, path=self.path, error=str(err))
                        status, headers, body = 500, TEXT, b"internal error\n"
                self.send_response(status)
                for key, value in ({"Content-Type": headers} if isinstance(headers, str) else headers).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:  # one line per sync is enough
                pass

        self._server = _bind(host, port, Handler)
        self.host = host
        self.port: int = self._server.server_address[1]
        self.name = name
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"http-{name}", daemon=True)

    def start(self, announce: bool = True) -> RouteServer:
        self._thread.start()
        if announce:
            log.info("serving", server=self.name, address=f"{self.host}:{self.port}")
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
