"""A small in-process Kubernetes API server speaking the real list/watch protocol.

Serves /api/v1/services, /apis/discovery.k8s.io/v1/endpointslices, /api/v1/nodes (and one
Node by name) and
/apis/networking.k8s.io/v1/servicecidrs (404 with `Store(serve_service_cidrs=False)`, as an
API server older than 1.33 without the beta API), and takes POSTed events.k8s.io/v1 Events
(kept in `Store.events`):
- list: `{"kind": "ServiceList", "metadata": {"resourceVersion"}, "items": [...]}` (items
  without kind, as the real server sends them); with `limit`, in pages of a consistent
  snapshot: `metadata.continue` names the next page, and a continue token older than the
  last `expire()` (or `expire_continues()`) gets HTTP 410 Expired, as from etcd compaction;
- watch (`?watch=true&resourceVersion=N`): chunked newline-delimited JSON events after N
  (ADDED/MODIFIED/DELETED/BOOKMARK), ending after timeoutSeconds;
- 410 Gone for a watch from a version older than the last `expire()`, either as an
  ERROR event in a 200 stream (the watch cache's way) or as an HTTP 410 Status;
- faults: `drop_watches()` cuts open watches mid-stream, `stall_next()` makes the next
  list or watch response stop halfway through its body, and `apply(obj, kind=, key=)`
  stores an object of any shape (a malformed one) as a server that does not validate.

The `Store` outlives a `FakeApiServer`, so a test can stop the server, change objects
and start a new server on the same port: a client resuming its watch gets the events it
missed, as from a real API server that came back.
"""

from __future__ import annotations

import base64
import copy
import ctypes
import itertools
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

PATHS = {
    "/api/v1/services": ("services", "Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
    "/api/v1/nodes": ("nodes", "Node", "v1"),
    "/apis/networking.k8s.io/v1/servicecidrs": ("servicecidrs", "ServiceCIDR", "networking.k8s.io/v1"),
}
RESOURCE_OF_KIND = {"Service": "services", "EndpointSlice": "endpointslices", "Node": "nodes",
                    "ServiceCIDR": "servicecidrs"}
EVENTS_PATH = re.compile(r"/apis/events\.k8s\.io/v1/namespaces/([^/]+)/events")
STALL_S = 30.0  # a stalled response is given up by the server after this long at most
SNAPSHOTS_KEPT = 16  # paged lists in progress; older continue tokens expire
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results."
)  # the real server's words


class Store:
    """Objects, per-resource event history and one resourceVersion counter."""

    def __init__(self, gone_mode: str = "event", serve_service_cidrs: bool = True) -> None:
        self.serve_service_cidrs = serve_service_cidrs
        self.events: list[tuple[str, dict[str, Any]]] = []  # (namespace, Event) as POSTed
        self.cond = threading.Condition()
        self.version = 1000
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCE_OF_KIND.values()}
        # each object as a list item, JSON-encoded once when stored: a list costs the server
        # about what it costs a real one (Go, serving from its cache), not json.dumps per page
        self.listed: dict[str, dict[tuple[str, str], bytes]] = {r: {} for r in RESOURCE_OF_KIND.values()}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {r: [] for r in RESOURCE_OF_KIND.values()}
        self.oldest = 0  # watches from a version below this get 410 Gone
        self.generation = 0  # bumped by expire(): open watches end with 410
        self.frozen = False  # open watches deliver nothing while frozen
        self.gone_mode = gone_mode  # "event" or "http"
        self.drops = 0  # bumped by drop_watches(): open watches are cut mid-stream
        self.stalls: list[tuple[str, str]] = []  # one-shot (resource, "list"|"watch") stalls mid-body
        self.stalled: Counter[tuple[str, str]] = Counter()  # stalls served
        self.calls: Counter[tuple[str, str]] = Counter()  # (resource, "list"|"watch")
        self.watch_versions: list[tuple[str, str]] = []  # (resource, resourceVersion asked)
        self.list_limits: list[tuple[str, int, bool]] = []  # (resource, limit asked, a continue given)
        # paged lists in progress: snapshot id -> (version, encoded items in key order)
        self.snapshots: dict[int, tuple[int, list[bytes]]] = {}
        self.continue_expiries: list[str] = []  # one-shot: the next continue of the resource gets 410
        self._snapshot_ids = itertools.count(1)

    # --- changes, as a controller would make them -------------------------------------

    def apply(self, obj: Any, *, kind: str | None = None, key: tuple[str, str] | None = None) -> int:
        """Create or replace an object (by kind/namespace/name); returns its version.

        With `kind` and `key` the object is stored under that key as it is, whatever its
        shape (a malformed object: a list, metadata a string, ...), as a server that does
        not validate would serve it; its resourceVersion is set if it has metadata."""
        obj = copy.deepcopy(obj)
        if key is None:
            kind = obj["kind"]
            meta = obj.setdefault("metadata", {})
            key = (meta.setdefault("namespace", "default"), meta["name"])
        else:
            meta = obj.get("metadata") if isinstance(obj, dict) else None
        assert kind is not None
        resource = RESOURCE_OF_KIND[kind]
        with self.cond:
            self.version += 1
            if isinstance(meta, dict):
                meta["resourceVersion"] = str(self.version)
            event = "MODIFIED" if key in self.objects[resource] else "ADDED"
            self.objects[resource][key] = obj
            self.listed[resource][key] = json.dumps(_without_type(obj)).encode()
            self.history[resource].append((self.version, event, obj))
            self.cond.notify_all()
            return self.version

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        resource = RESOURCE_OF_KIND[kind]
        with self.cond:
            obj = copy.deepcopy(self.objects[resource].pop((namespace, name)))
            del self.listed[resource][(namespace, name)]
            self.version += 1
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            if isinstance(meta, dict):
                meta["resourceVersion"] = str(self.version)
            self.history[resource].append((self.version, "DELETED", obj))
            self.cond.notify_all()

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current version on every resource's open watches."""
        with self.cond:
            self.version += 1  # a version no object has: only a bookmark can teach it
            for resource, (_, kind, api_version) in _by_resource().items():
                mark = {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(self.version)}}
                self.history[resource].append((self.version, "BOOKMARK", mark))
            self.cond.notify_all()
            return self.version

    def freeze(self) -> None:
        """Hold back events from open watches: what happens next is 'missed'."""
        with self.cond:
            self.frozen = True

    def drop_watches(self) -> None:
        """Cut every open watch mid-stream (no terminating chunk); the server stays up."""
        with self.cond:
            self.drops += 1
            self.cond.notify_all()

    def stall_next(self, resource: str, what: str) -> None:
        """The next `what` ("list" or "watch") response of `resource` sends half of its body
        (for a watch: half of its next event's line) and then nothing, until the client
        gives up or the server stops (at most STALL_S)."""
        with self.cond:
            self.stalls.append((resource, what))

    def take_stall(self, resource: str, what: str) -> bool:
        with self.cond:
            if (resource, what) not in self.stalls:
                return False
            self.stalls.remove((resource, what))
            self.stalled[(resource, what)] += 1
            return True

    def expire(self) -> None:
        """Compact history: open watches end with 410 and older versions are Gone."""
        with self.cond:
            self.oldest = self.version
            self.generation += 1
            self.frozen = False
            self.snapshots.clear()
            self.cond.notify_all()

    def expire_continues(self, resource: str | None = None) -> None:
        """Continue tokens of paged lists in progress expire (410 on their next page): at
        once, or with `resource`, when that resource's next page is asked for."""
        with self.cond:
            if resource is None:
                self.snapshots.clear()
            else:
                self.continue_expiries.append(resource)

    # --- serving ------------------------------------------------------------------------

    def list_body(self, resource: str, kind: str, api_version: str, limit: int = 0,
                  token: str | None = None) -> bytes | None:
        """A list response, or one page of it with `limit`, as JSON; None: `token` has expired."""
        with self.cond:
            self.calls[(resource, "list")] += 1
            self.list_limits.append((resource, limit, bool(token)))
            if token and resource in self.continue_expiries:
                self.continue_expiries.remove(resource)
                self.snapshots.clear()
            if token:
                snapshot_id, start = _decode_continue(token)
                if snapshot_id not in self.snapshots:
                    return None
                version, items = self.snapshots[snapshot_id]
            else:
                snapshot_id, start, version = next(self._snapshot_ids), 0, self.version
                items = [self.listed[resource][key] for key in sorted(self.listed[resource])]
            end = start + limit if limit > 0 else len(items)
            metadata: dict[str, Any] = {"resourceVersion": str(version)}
            if end < len(items):
                self.snapshots[snapshot_id] = (version, items)
                while len(self.snapshots) > SNAPSHOTS_KEPT:
                    del self.snapshots[min(self.snapshots)]
                metadata["continue"] = _encode_continue(snapshot_id, end)
                metadata["remainingItemCount"] = len(items) - end
            else:
                self.snapshots.pop(snapshot_id, None)
            page = items[start:end]
        head = {"kind": f"{kind}List", "apiVersion": api_version, "metadata": metadata}
        return json.dumps(head).encode()[:-1] + b', "items": [' + b", ".join(page) + b"]}"


def _without_type(item: Any) -> Any:
    """A list item as the real server sends it: no kind or apiVersion (a shallow copy)."""
    if not isinstance(item, dict):
        return item
    return {k: v for k, v in item.items() if k not in ("kind", "apiVersion")}


def _encode_continue(snapshot_id: int, start: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([snapshot_id, start]).encode()).decode()


def _decode_continue(token: str) -> tuple[int, int]:
    try:
        snapshot_id, start = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(snapshot_id), int(start)
    except (ValueError, TypeError):
        return -1, 0  # unknown: expired


def _by_resource() -> dict[str, tuple[str, str, str]]:
    return {r: (r, k, v) for r, k, v in PATHS.values()}


class FakeApiServer:
    """Serves a Store on 127.0.0.1 (an ephemeral port unless `port` is given)."""

    def __init__(self, store: Store, port: int = 0) -> None:
        self.store = store
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Go away: stop accepting and cut every open connection (watches included)."""
        self.stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=5)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


def _make_handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    store = server.store

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            server.track(self.connection, True)

        def finish(self) -> None:
            server.track(self.connection, False)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path.endswith("/servicecidrs") and not store.serve_service_cidrs:
                with store.cond:
                    store.calls[("servicecidrs", "watch" if query.get("watch") else "list")] += 1
                return self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))
            if url.path.startswith("/api/v1/nodes/"):  # one Node, by name
                name = url.path.removeprefix("/api/v1/nodes/")
                with store.cond:
                    found = [obj for (_, n), obj in store.objects["nodes"].items() if n == name]
                if not found:
                    return self._json(404, _status(404, "NotFound", f'nodes "{name}" not found'))
                return self._json(200, {"apiVersion": "v1", "kind": "Node", **found[0]})
            if url.path not in PATHS:
                return self._json(404, _status(404, "NotFound", f"no route {url.path}"))
            resource, kind, api_version = PATHS[url.path]
            if query.get("watch") in ("true", "1"):
                return self._watch(resource, query)
            try:
                limit = int(query.get("limit") or 0)
            except ValueError:
                return self._json(400, _status(400, "BadRequest", f"limit: {query['limit']!r}"))
            body = store.list_body(resource, kind, api_version, limit, query.get("continue"))
            if body is None:
                return self._json(410, _status(410, "Expired", CONTINUE_EXPIRED))
            if store.take_stall(resource, "list"):
                data = body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                return self._stall()
            return self._send(200, body)

        def do_POST(self) -> None:
            match = EVENTS_PATH.fullmatch(urlparse(self.path).path)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            if not match or not isinstance(body, dict):
                return self._json(404, _status(404, "NotFound", f"no route {self.path}"))
            with store.cond:
                store.events.append((match.group(1), body))
                store.cond.notify_all()
            return self._json(201, body)

        def _stall(self) -> None:
            """Send nothing more: wait for the server to stop (bounded), then close."""
            server.stopping.wait(STALL_S)
            self.close_connection = True

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode())

        def _send(self, code: int, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _watch(self, resource: str, query: dict[str, str]) -> None:
            since = int(query.get("resourceVersion") or 0)
            timeout = float(query.get("timeoutSeconds") or 1800)
            with store.cond:
                store.calls[(resource, "watch")] += 1
                store.watch_versions.append((resource, query.get("resourceVersion", "")))
                gone = since < store.oldest
                generation = store.generation
                drops = store.drops
                history = store.history[resource]
                index = next((i for i, (v, _, _) in enumerate(history) if v > since), len(history))
            gone_event = {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since}")}
            if gone and store.gone_mode == "http":
                return self._json(410, gone_event["object"])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = time.monotonic() + timeout
            try:
                if gone:
                    self._chunk(json.dumps(gone_event).encode() + b"\n")
                else:
                    while not server.stopping.is_set() and time.monotonic() < deadline:
                        with store.cond:
                            store.cond.wait_for(
                                lambda index=index: server.stopping.is_set()
                                or store.generation != generation
                                or store.drops != drops
                                or (not store.frozen and len(history) > index),
                                timeout=min(0.1, max(0.0, deadline - time.monotonic())),
                            )
                            expired = store.generation != generation
                            dropped = store.drops != drops
                            pending = [] if store.frozen else history[index:]
                            index += len(pending)
                        if dropped:
                            self.close_connection = True
                            return  # cut mid-stream, no terminating chunk
                        if pending and store.take_stall(resource, "watch"):
                            line = json.dumps({"type": pending[0][1], "object": pending[0][2]}).encode()
                            self._chunk(line[: len(line) // 2])
                            return self._stall()
                        if expired:
                            if store.gone_mode == "event":
                                self._chunk(json.dumps(gone_event).encode() + b"\n")
                            break  # "http": the client's next watch gets HTTP 410
                        for _, event, obj in pending:
                            self._chunk(json.dumps({"type": event, "object": obj}).encode() + b"\n")
                if server.stopping.is_set():
                    self.close_connection = True
                    return  # cut, no terminating chunk: the client sees a broken stream
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                self.close_connection = True

    return Handler


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(netns: str, make: Callable[[], T]) -> T:
    """Call `make` in a thread that joined network namespace `netns` (by its name under
    /run/netns): sockets it opens, such as a FakeApiServer's, live there."""
    out: dict[str, Any] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
        finally:
            os.close(fd)
        try:
            out["value"] = make()
        except Exception as err:  # noqa: BLE001 - handed to the caller
            out["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=10)
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def write_kubeconfig(path: Any, url: str) -> None:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
