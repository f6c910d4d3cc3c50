"""The one small HTTP server kproxy runs: /metrics, /healthz and the healthCheckNodePorts.

/healthz listens on every address and healthCheckNodePorts on node addresses: strangers
reach them. So a client costs a coroutine, not a thread; it has HEADER_TIMEOUT_S to send
its request; each server holds at most MAX_CONNECTIONS and drops its oldest waiting
client to take a new one, so idle connections cannot starve a load balancer's probe; and
a client that vanishes is a debug line, not a traceback. Every server shares one event
loop thread. A server binds in the caller's network namespace, on one address of either
family or on every address of both ("" as the host); port 0 picks a free port (`port`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from ipaddress import ip_address

import structlog

log = structlog.get_logger(__name__)

TEXT = "text/plain; charset=utf-8"
# status, then a content type or every header, then the body
Response = tuple[int, str | Mapping[str, str], bytes]
Route = Callable[[], Response]
ANY_PATH = "*"  # a route for every path not routed otherwise (Go's "/" pattern)

HEADER_TIMEOUT_S = 10.0  # to send the request line and headers
WRITE_TIMEOUT_S = 10.0  # to take the response
MAX_REQUEST_BYTES = 16 * 1024
MAX_CONNECTIONS = 4096  # per server


def split_address(address: str) -> tuple[str, int]:
    """"IP:PORT" or "[IPv6]:PORT" (already checked by the CLI) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening now, so a port in use fails here, in the caller."""
    if host == "":  # every address of both families; IPv4 only where IPv6 is off
        try:
            return _bind(socket.AF_INET6, "::", port, dual_stack=True)
        except OSError:
            return _bind(socket.AF_INET, "0.0.0.0", port)
    family = socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET
    return _bind(family, host, port)


def _bind(family: socket.AddressFamily, host: str, port: int, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Loop:
    """The event loop every server shares, in one daemon thread, started on first use."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="http", daemon=True).start()
                cls._loop = loop
            return cls._loop


def encode_response(status: int, headers: str | Mapping[str, str], body: bytes, head: bool = False) -> bytes:
    fields = {"Content-Type": headers} if isinstance(headers, str) else dict(headers)
    fields.update({"Content-Length": str(len(body)), "X-Content-Type-Options": "nosniff", "Connection": "close"})
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


class RouteServer:
    def __init__(self, address: str, routes: Mapping[str, Route], name: str) -> None:
        host, port = split_address(address)
        self.routes = dict(routes)
        self.name = name
        self.host = host
        self._socket = _listening_socket(host, port)
        self.port: int = self._socket.getsockname()[1]
        self._server: asyncio.AbstractServer | None = None
        # clients still sending their request, oldest first: the first to go when full
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self._open = 0

    def start(self, announce: bool = True) -> RouteServer:
        loop = _Loop.get()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, sock=self._socket, limit=MAX_REQUEST_BYTES, backlog=1024), loop)
        self._server = future.result(timeout=10)
        if announce:
            log.info("serving", server=self.name, address=f"{self.host}:{self.port}")
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            self._socket.close()
            return

        async def stop() -> None:
            server.close()
            for writer in list(self._waiting):
                writer.close()

        asyncio.run_coroutine_threadsafe(stop(), _Loop.get()).result(timeout=10)

    def answer(self, path: str) -> Response:
        route = self.routes.get(path) or self.routes.get(ANY_PATH)
        if route is None:
            return 404, TEXT, b"404 page not found\n"
        try:
            return route()
        except Exception as err:  # noqa: BLE001 - one failing scrape must not kill the server
            log.error("http handler failed", server=self.name, path=path, error=str(err))
            return 500, TEXT, b"internal error\n"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        if self._open > MAX_CONNECTIONS and self._waiting:
            next(iter(self._waiting)).close()  # the longest-waiting client makes room
        self._waiting[writer] = None
        try:
            async with asyncio.timeout(HEADER_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            self._waiting.pop(writer, None)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method in ("GET", "HEAD"):
                status, headers, body = self.answer(path)
            else:
                status, headers, body = 405, TEXT, b"method not allowed\n"
            writer.write(encode_response(status, headers, body, head=method == "HEAD"))
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                UnicodeDecodeError, ValueError) as err:
            # too slow, too big, gone or garbled: the client's problem, not kproxy's
            log.debug("http client dropped", server=self.name, reason=type(err).__name__)
        finally:
            self._waiting.pop(writer, None)
            self._open -= 1
            writer.close()
