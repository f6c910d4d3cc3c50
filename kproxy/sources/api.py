"""API source: list then watch Services and EndpointSlices, feeding a Tracker.

Bodies are read as raw JSON (`_preload_content=False`): the client's model classes cost
seconds at 10k objects and we parse into kproxy.model anyway. The protocol is the one
client-go's reflector speaks: list, watch from the list's resourceVersion with bookmarks,
re-watch from the last seen version when a watch ends, relist on 410 Gone, back off on
errors. The tracker is never cleared because the API is unreachable: the rules
programmed from the last known state keep traffic flowing.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kproxy.parse import UPSTREAM_LABEL_SELECTOR
from kproxy.tracker import ENDPOINT_SLICE, NODE, SERVICE, Tracker

log = structlog.get_logger(__name__)


class ApiConfigError(Exception):
    """The Kubernetes client cannot be configured; str() is one line."""


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from `kubeconfig`, else the in-cluster service account, else the default
    kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    cfg = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
    except Exception as exc:  # noqa: BLE001 - the loaders raise ConfigException, OSError, YAML errors...
        where = kubeconfig or "the in-cluster service account or the default kubeconfig"
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ApiConfigError(f"cannot configure the Kubernetes client from {where}: {detail}") from None
    return client.ApiClient(configuration=cfg)


class _Gone(Exception):
    """410: the resourceVersion we hold is too old; only a relist recovers."""


@dataclass(frozen=True, slots=True)
class _Resource:
    kind: str
    list_call: Callable[..., Any]


@dataclass(slots=True)
class _Progress:
    """Where a watch got to; kept when the stream breaks, so the next watch resumes there."""

    version: str
    events: int = 0


class ApiSource:
    def __init__(
        self,
        api_client: client.ApiClient,
        tracker: Tracker,
        stop_event: threading.Event,
        *,
        watch_timeout: int = 300,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        connect_timeout: float = 5.0,
        list_read_timeout: float = 60.0,
        label_selector: str = UPSTREAM_LABEL_SELECTOR,
        node_name: str | None = None,
    ) -> None:
        self._tracker = tracker
        self._stop = stop_event
        self._watch_timeout = watch_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._connect_timeout = connect_timeout
        self._list_read_timeout = list_read_timeout
        self._label_selector = label_selector
        self._resources: tuple[_Resource, ...] = (
            _Resource(SERVICE, client.CoreV1Api(api_client).list_service_for_all_namespaces),
            _Resource(
                ENDPOINT_SLICE,
                client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces,
            ),
        )
        if node_name:
            # only this node's Node object: its zone label drives topology hints
            self._resources += (_Resource(NODE, functools.partial(
                client.CoreV1Api(api_client).list_node, field_selector=f"metadata.name={node_name}")),)
        self._synced = {r.kind: threading.Event() for r in self._resources}
        self._threads: list[threading.Thread] = []
        # Responses being read, so a stop can shut their sockets down: a blocked read
        # returns at once instead of waiting for the next event.
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    def run(self) -> None:
        """Start the watch threads (and a stopper) and return."""
        for resource in self._resources:
            thread = threading.Thread(
                target=self._loop, args=(resource,), name=f"api-{resource.kind}", daemon=True
            )
            self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._stopper, name="api-stop", daemon=True))
        for thread in self._threads:
            thread.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list of both kinds has reached the tracker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # the Node (zone only) is not waited for: rules need not wait for topology
        for event in (self._synced[SERVICE], self._synced[ENDPOINT_SLICE]):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining):
                return False
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the threads to end after the stop event; True if they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # --- one kind --------------------------------------------------------------------------

    def _loop(self, resource: _Resource) -> None:
        version: str | None = None  # None: (re)list first
        backoff = self._initial_backoff
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(resource)
                    self._synced[resource.kind].set()
                    backoff = self._initial_backoff
                started = time.monotonic()
                progress = _Progress(version)
                try:
                    self._watch(resource, progress)
                finally:
                    version = progress.version
                if progress.events or time.monotonic() - started > 1.0:
                    backoff = self._initial_backoff
                    continue
                # A watch closed at once with nothing in it: don't spin on such a server.
            except _Gone:
                log.info("resource version expired, relisting", kind=resource.kind)
                version = None
                continue
            except Exception as exc:  # noqa: BLE001 - any API trouble is retried with backoff
                if self._stop.is_set():
                    break
                log.warning(
                    "api request failed",
                    kind=resource.kind,
                    phase="list" if version is None else "watch",
                    error=_describe(exc),
                    retry_in=round(backoff, 2),
                )
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self._max_backoff)
        log.debug("api watch stopped", kind=resource.kind)

    def _list(self, resource: _Resource) -> str:
        started = time.monotonic()
        response = resource.list_call(
            label_selector=self._label_selector,
            _preload_content=False,
            _request_timeout=(self._connect_timeout, self._list_read_timeout),
        )
        with self._reading(response):
            body = json.loads(response.read())
        items = body.get("items") or []
        for item in items:
            item["kind"] = resource.kind  # list items carry no kind
        self._tracker.replace(resource.kind, items)
        version = (body.get("metadata") or {}).get("resourceVersion") or ""
        log.info(
            "listed",
            kind=resource.kind,
            objects=len(items),
            resource_version=version,
            ms=round((time.monotonic() - started) * 1000),
        )
        return version

    def _watch(self, resource: _Resource, progress: _Progress) -> None:
        """Follow one watch request until it ends, advancing `progress`."""
        try:
            response = resource.list_call(
                watch=True,
                resource_version=progress.version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                label_selector=self._label_selector,
                _preload_content=False,
                # The server ends the watch after timeout_seconds; a longer silence means
                # a dead connection.
                _request_timeout=(self._connect_timeout, self._watch_timeout + 30),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise
        with self._reading(response):
            buffer = b""
            while not self._stop.is_set():
                data = response.read1(65536)
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        progress.version = self._handle(resource, json.loads(line), progress.version)
                        progress.events += 1

    def _handle(self, resource: _Resource, event: dict[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise _Gone()
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        new_version = (obj.get("metadata") or {}).get("resourceVersion") or version
        if kind in ("ADDED", "MODIFIED"):
            obj["kind"] = resource.kind
            self._tracker.upsert(resource.kind, obj)
        elif kind == "DELETED":
            obj["kind"] = resource.kind
            self._tracker.delete(resource.kind, obj)
        elif kind != "BOOKMARK":
            log.warning("unknown watch event", kind=resource.kind, type=kind)
            return version
        return new_version

    # --- stopping promptly -------------------------------------------------------------

    @contextmanager
    def _reading(self, response: Any) -> Iterator[None]:
        """Register a response while it is read, so the stopper can cut it; close it after."""
        with self._open_lock:
            self._open.add(response)
        try:
            if self._stop.is_set():
                _shutdown(response)  # the stopper may have run just before we registered
            yield
        finally:
            with self._open_lock:
                self._open.discard(response)
            response.close()

    def _stopper(self) -> None:
        self._stop.wait()
        with self._open_lock:
            responses = list(self._open)
        for response in responses:
            _shutdown(response)


def _shutdown(response: Any) -> None:
    try:
        response.shutdown()  # urllib3 >= 2.3: shuts the socket's read side
    except Exception:  # noqa: BLE001 - older urllib3, or already closed
        try:
            response.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
