"""A small HTTP server for /metrics, /proxyMode, /healthz and /livez, one thread per server.

It binds in the caller's network namespace (the node's, when kproxy runs in one).
Port 0 picks a free port (tests); `port` tells which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from socket import AF_INET6

import structlog

log = structlog.get_logger(__name__)

Response = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Response]


def split_address(address: str) -> tuple[str, int]:
    """"IP:PORT" or "[IPv6]:PORT" (already checked by the CLI) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class RouteServer:
    def __init__(self, address: str, routes: Mapping[str, Route], name: str) -> None:
        host, port = split_address(address)
        routes = dict(routes)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, ctype, body = 404, "text/plain; charset=utf-8", b"404 page not found\n"
                else:
                    try:
                        status, ctype, body = route()
                    except Exception as err:  # noqa: BLE001 - one failing scrape must not kill the server
                        log.error("http handler failed", server=name, path=self.path, error=str(err))
                        status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:  # one line per sync is enough
                pass

        server_class = ThreadingHTTPServer
        if ip_address(host).version == 6:
            server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": AF_INET6})
        self._server = server_class((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self.name = name
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"http-{name}", daemon=True)

    def start(self) -> RouteServer:
        self._thread.start()
        log.info("serving", server=self.name, address=f"{self.host}:{self.port}")
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
