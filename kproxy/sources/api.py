"""API source: list then watch Services and EndpointSlices, feeding a Tracker.

Bodies are read as raw JSON (sources/api_request.py): the client's model classes cost
seconds at 10k objects and we parse into kproxy.model anyway. The protocol is the one
client-go's reflector speaks: list, watch from the list's resourceVersion with bookmarks,
re-watch from the last seen version when a watch ends, relist on 410 Gone, back off on
errors; lists are read in pages (`limit`/`continue`, 500 objects a page), each parsed
before the next is read, and an expired continue token means a full relist. The tracker
is never cleared because the API is unreachable: the rules programmed from the last
known state keep traffic flowing.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kproxy.parse import UPSTREAM_LABEL_SELECTOR
from kproxy.runner import gc_keep, gc_paused
from kproxy.sources.api_request import Collection
from kproxy.sources.list_pages import NotAList, Page, decode_page
from kproxy.sources.threads import start_guarded
from kproxy.tracker import ENDPOINT_SLICE, NODE, SERVICE, SERVICE_CIDR, ParsedList, Tracker

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


class _NotServed(Exception):
    """404 (or 403) on a list of an optional kind: this API server does not serve it to us."""


class _Gone(Exception):
    """410: the resourceVersion we hold is too old; only a relist recovers."""


class _Trouble(Exception):
    """An API request failed. `answered`: the server sent something (an error status, a
    body that broke off or made no sense); otherwise it could not be reached at all."""

    def __init__(self, error: BaseException | str, answered: bool) -> None:
        super().__init__(error if isinstance(error, str) else _describe(error))
        self.answered = answered


# What talking to the API may raise; anything else escaping a watch thread is a bug, and
# stops the agent (sources/threads.py) instead of being retried forever.
_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


LISTED_TOGETHER = (SERVICE, ENDPOINT_SLICE)


def _answered(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and bool(exc.status)  # status 0: no response


@dataclass(frozen=True, slots=True)
class _Resource:
    kind: str
    collection: Collection
    optional: bool = False  # an API server may not serve it (404): then it is not watched


@dataclass(slots=True)
class _Cursor:
    """Where a kind's watch resumes (None: list first), and the generation of the list it
    follows: a newer list makes a watch of an older one stale."""

    version: str | None = None
    generation: int = 0


@dataclass(slots=True)
class _Progress:
    """One watch request: the list generation it follows and the events it delivered."""

    generation: int
    events: int = 0


class Backoff:
    """Exponential backoff with jitter. While the server cannot be reached at all, retries
    stay at most `probe` apart (a refused connection costs the server nothing, and the
    agent catches up within about that long of its return); a server that answers with
    errors gets the full exponential backoff up to `maximum`."""

    def __init__(self, initial: float, maximum: float, probe: float,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.probe = probe
        self._rng = rng
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next(self, answered: bool) -> float:
        cap = self.maximum if answered else min(self.probe, self.maximum)
        delay: float = min(cap, self.initial * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return delay * (0.5 + 0.5 * self._rng())  # jitter: nodes do not retry in step


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
        probe_backoff: float = 1.0,
        connect_timeout: float = 5.0,
        list_read_timeout: float = 60.0,
        list_page_size: int = 500,
        watch_read_timeout: float | None = None,
        label_selector: str = UPSTREAM_LABEL_SELECTOR,
        node_name: str | None = None,
        service_cidrs: bool = False,
        wait_for_node: bool = False,
        on_fatal: Callable[[str], object] = lambda _reason: None,
    ) -> None:
        self._tracker = tracker
        self._stop = stop_event
        self._watch_timeout = watch_timeout
        self._backoff = (initial_backoff, max_backoff, probe_backoff)
        self._connect_timeout = connect_timeout
        self._list_read_timeout = list_read_timeout
        self._list_page_size = list_page_size  # 0: one request for the whole list
        # The server ends a watch after watch_timeout; a longer silence means a dead connection.
        self._watch_read_timeout = watch_read_timeout or watch_timeout + 30
        self._label_selector = label_selector
        self._on_fatal = on_fatal
        self._resources: tuple[_Resource, ...] = (
            _Resource(SERVICE, Collection(api_client, "/api/v1/services")),
            _Resource(ENDPOINT_SLICE, Collection(api_client, "/apis/discovery.k8s.io/v1/endpointslices")),
        )
        if node_name:
            # only this node's Node object: its zone label drives topology hints
            self._resources += (_Resource(NODE, Collection(api_client, "/api/v1/nodes",
                                                           fieldSelector=f"metadata.name={node_name}")),)
        if service_cidrs:
            # the service CIDRs, when --service-cluster-ip-range is not given (upstream's
            # nftables mode reads them from here too); API servers before 1.33 have none
            cidrs = Collection(api_client, "/apis/networking.k8s.io/v1/servicecidrs")
            self._resources += (_Resource(SERVICE_CIDR, cidrs, optional=True),)
        self._synced = {r.kind: threading.Event() for r in self._resources}
        # NodeCIDR: the first rules need the Node's podCIDRs, so its first list is awaited too
        self._awaited = (SERVICE, ENDPOINT_SLICE, *((NODE,) if wait_for_node and node_name else ()))
        self._threads: list[threading.Thread] = []
        # Services and EndpointSlices are always listed together and applied in one tracker
        # transaction: no sync sees relisted Services without their slices. _state guards
        # the cursors and orders events against lists; _relist_lock lets one thread list.
        self._cursors = {r.kind: _Cursor() for r in self._resources}
        self._state = threading.Lock()
        self._relist_lock = threading.Lock()
        # Responses being read, per kind, so a stop (or a relist that makes a watch stale)
        # can shut their sockets down: a blocked read returns at once.
        self._open: dict[str, set[Any]] = {r.kind: set() for r in self._resources}
        self._open_lock = threading.Lock()

    def run(self) -> None:
        """Start the watch threads (and a stopper) and return."""
        for resource in self._resources:
            self._threads.append(start_guarded(f"api-{resource.kind}", self._loop, self._on_fatal, resource))
        self._threads.append(start_guarded("api-stop", self._stopper, self._on_fatal))

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list of Services and EndpointSlices (and of this Node, with
        `wait_for_node`) has reached the tracker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # the Node is otherwise not waited for: rules need not wait for topology
        for event in (self._synced[kind] for kind in self._awaited):
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

    def _cursor(self, kind: str) -> _Cursor:
        with self._state:
            cursor = self._cursors[kind]
            return _Cursor(cursor.version, cursor.generation)

    def _loop(self, resource: _Resource) -> None:
        kind = resource.kind
        backoff = Backoff(*self._backoff)
        while not self._stop.is_set():
            cursor = self._cursor(kind)
            progress = _Progress(cursor.generation)
            started = time.monotonic()
            try:
                if cursor.version is None:
                    self._list_group(kind, cursor.generation)
                    backoff.reset()
                    continue
                self._watch(resource, cursor.version, progress)
                if progress.events or time.monotonic() - started > 1.0 or self._stale(kind, progress):
                    backoff.reset()
                    continue
                # A watch closed at once with nothing in it: don't spin on such a server.
                delay = backoff.next(answered=True)
            except _NotServed as exc:
                # not served (before Kubernetes 1.33), or not allowed (an older ClusterRole):
                # the agent goes on without it rather than retrying for ever
                log.info("the API server does not serve this kind; not watching it", kind=kind, error=str(exc))
                self._synced[kind].set()
                return
            except _Gone:
                log.info("resource version expired, relisting", kind=kind)
                with self._state:
                    if self._cursors[kind].generation == cursor.generation:
                        self._cursors[kind].version = None
                continue
            except _Trouble as exc:
                if self._stop.is_set():
                    break
                if self._stale(kind, progress):
                    continue  # another kind's relist ended this watch: resume from the new list
                if progress.events or time.monotonic() - started > 1.0:
                    backoff.reset()  # a watch that had been working: this is a new outage
                delay = backoff.next(exc.answered)
                log.warning(
                    "api request failed",
                    kind=kind,
                    phase="list" if cursor.version is None else "watch",
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
            if self._stop.wait(delay):
                break
        log.debug("api watch stopped", kind=kind)

    def _stale(self, kind: str, progress: _Progress) -> bool:
        with self._state:
            return self._cursors[kind].generation != progress.generation

    def _group(self, kind: str) -> tuple[_Resource, ...]:
        """The resources listed together with `kind`: Services and EndpointSlices; the Node alone."""
        kinds = LISTED_TOGETHER if kind in LISTED_TOGETHER else (kind,)
        return tuple(r for r in self._resources if r.kind in kinds)

    def _list_group(self, kind: str, generation: int) -> None:
        """List `kind` and the kinds it goes with, then apply them in one transaction and
        make every watch of theirs that followed an older list stale."""
        group = self._group(kind)
        with self._relist_lock:
            if self._cursor(kind).generation != generation:
                return  # another thread listed while this one waited
            with gc_paused():
                parsed = self._tracker.parsed_list()
                versions = {r.kind: self._list(r, parsed) for r in group}
                with self._state:
                    self._tracker.replace_parsed(parsed)
                    for k, version in versions.items():
                        self._cursors[k] = _Cursor(version, self._cursors[k].generation + 1)
                gc_keep()
        for r in group:
            self._synced[r.kind].set()
            if r.kind != kind:
                self._cut(r.kind)

    def _list(self, resource: _Resource, parsed: ParsedList) -> str:
        """List one kind in pages of `list_page_size` (as client-go's reflector does), each
        parsed into `parsed` while the next is fetched (as client-go's pager buffers pages
        ahead: the server's and the network's time per page hides behind the parse);
        returns the list's resourceVersion. An expired continue token (410) means a full
        relist, as for an expired watch."""
        started = time.monotonic()
        pages = objects = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"api-{resource.kind}-page") as fetcher:
            page = self._list_page(resource, None)
            while True:
                version = page.version
                ahead = fetcher.submit(self._list_page, resource, page.token) if page.token else None
                for item in page.items:
                    if isinstance(item, dict):
                        item["kind"] = resource.kind  # list items carry no kind
                parsed.add(resource.kind, page.items)
                pages, objects = pages + 1, objects + len(page.items)
                del page  # a page parsed, the next one read: never more raw objects than that
                if ahead is None:
                    break
                page = ahead.result()
        log.info(
            "listed",
            kind=resource.kind,
            objects=objects,
            pages=pages,
            resource_version=version,
            ms=round((time.monotonic() - started) * 1000),
        )
        return version

    def _list_page(self, resource: _Resource, token: str | None) -> Page:
        """One list request (a page after `token` if given), decoded."""
        query = {
            "labelSelector": self._label_selector,
            "limit": self._list_page_size if self._list_page_size > 0 else None,
            "continue": token or None,
        }
        try:
            response = resource.collection.get(query, timeout=(self._connect_timeout, self._list_read_timeout))
        except ApiException as exc:
            if resource.optional and exc.status in (403, 404):
                raise _NotServed(f"HTTP {exc.status} {exc.reason}") from None
            if exc.status == 410 and token:
                log.info("list continue token expired, relisting", kind=resource.kind)
                raise _Gone() from exc
            raise _Trouble(exc, answered=_answered(exc)) from None
        except _API_ERRORS as exc:
            raise _Trouble(exc, answered=False) from None
        with self._reading(resource.kind, response):
            try:
                raw = response.read()
            except _API_ERRORS as exc:
                raise _Trouble(exc, answered=True) from None
        try:
            return decode_page(resource.kind, raw)
        except NotAList as err:
            raise _Trouble(f"the {resource.kind} list {err} ({len(raw)} bytes)", answered=True) from None

    def _watch(self, resource: _Resource, version: str, progress: _Progress) -> None:
        """Follow one watch request until it ends or a newer list makes it stale."""
        try:
            query: dict[str, str | int | bool | None] = {
                "watch": True,
                "resourceVersion": version,
                "allowWatchBookmarks": True,
                "timeoutSeconds": self._watch_timeout,
                "labelSelector": self._label_selector,
            }
            response = resource.collection.get(query, timeout=(self._connect_timeout, self._watch_read_timeout))
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from exc
            raise _Trouble(exc, answered=_answered(exc)) from None
        except _API_ERRORS as exc:
            raise _Trouble(exc, answered=False) from None
        with self._reading(resource.kind, response):
            if self._stale(resource.kind, progress):
                return  # a relist ran since this watch began (and may have missed cutting it)
            buffer = b""
            while not self._stop.is_set():
                try:
                    data = response.read1(65536)
                except _API_ERRORS as exc:
                    raise _Trouble(exc, answered=True) from None
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = msgspec.json.decode(line)
                    except ValueError:
                        raise _Trouble("a watch event is not JSON", answered=True) from None
                    if not self._handle(resource, event, progress):
                        return

    def _handle(self, resource: _Resource, event: Any, progress: _Progress) -> bool:
        """Apply one watch event; False when the watch is stale (a newer list was applied)."""
        kind = resource.kind
        if not isinstance(event, dict):
            log.warning("skipping a malformed watch event", kind=kind, event=str(event)[:100])
            return True
        event_type, obj = event.get("type"), event.get("object")
        if event_type == "ERROR":
            status = obj if isinstance(obj, dict) else {}
            if status.get("code") == 410 or status.get("reason") in ("Expired", "Gone"):
                raise _Gone()
            raise _Trouble(f"watch error {status.get('code')}: {status.get('message')}", answered=True)
        if event_type not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            log.warning("unknown watch event", kind=kind, type=str(event_type)[:40])
            return True
        if isinstance(obj, dict):
            obj["kind"] = kind
        with self._state:  # ordered against lists: an event of a stale watch is dropped
            cursor = self._cursors[kind]
            if cursor.generation != progress.generation:
                return False
            if event_type == "DELETED":
                self._tracker.delete(kind, obj)
            elif event_type != "BOOKMARK":
                self._tracker.upsert(kind, obj)  # a malformed object: one warning, then skipped
            cursor.version = _resource_version(obj) or cursor.version
        progress.events += 1
        return True

    # --- stopping promptly -------------------------------------------------------------

    @contextmanager
    def _reading(self, kind: str, response: Any) -> Iterator[None]:
        """Register a response while it is read, so the stopper can cut it; close it after."""
        with self._open_lock:
            self._open[kind].add(response)
        try:
            if self._stop.is_set():
                _shutdown(response)  # the stopper may have run just before we registered
            yield
        finally:
            with self._open_lock:
                self._open[kind].discard(response)
            response.close()

    def _cut(self, kind: str) -> None:
        with self._open_lock:
            responses = list(self._open[kind])
        for response in responses:
            _shutdown(response)

    def _stopper(self) -> None:
        self._stop.wait()
        for kind in self._open:
            self._cut(kind)


def _resource_version(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else ""


def _shutdown(response: Any) -> None:
    try:
        response.shutdown()  # urllib3 >= 2.3: shuts the socket's read side
    except Exception:  # noqa: BLE001 - older urllib3, or already closed
        try:
            response.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
