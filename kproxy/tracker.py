"""Tracker: the thread-safe store of parsed cluster state that sources feed.

Sources hand it raw objects (dicts); it parses each once, keeps the result by key and
tells the runner (`on_change`) only when something really changed, so a relist or a
manifests reload that brings nothing new costs no sync.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog

from kproxy.model import (
    ClusterDelta,
    ClusterState,
    EndpointSlice,
    IPNetwork,
    NodeInfo,
    Service,
    ServiceCIDR,
    ServiceName,
    union_service_cidrs,
)
from kproxy.parse import (
    InvalidObject,
    describe_key,
    object_key,
    parse_endpoint_slice,
    parse_node,
    parse_service,
    parse_service_cidr,
)

log = structlog.get_logger(__name__)

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
KINDS = (SERVICE, ENDPOINT_SLICE)  # what the change metrics count
NODE = "Node"  # only this node's: its zone (topology hints) and podCIDRs (NodeCIDR)
SERVICE_CIDR = "ServiceCIDR"  # the service CIDRs, when --service-cluster-ip-range is not given
SOURCE_KINDS = (SERVICE, ENDPOINT_SLICE, NODE, SERVICE_CIDR)
InvalidKey = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeCounts:
    """Changes seen (upstream counts every accepted update) and objects changed since the
    last `take_changes`, per kind; read by the metrics."""

    total: dict[str, int]
    pending: dict[str, int]


class Tracker:
    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []
        self._lock = threading.Lock()
        self._services: dict[ServiceName, Service] = {}
        self._slices: dict[tuple[str, str], EndpointSlice] = {}
        self._by_service = SliceIndex()
        self._nodes: dict[str, NodeInfo] = {}
        self._service_cidrs: dict[str, ServiceCIDR] = {}
        # Last error logged per invalid object: a relist or reload that brings the same
        # broken object again does not log it again. Key: kind, namespace, name and an
        # ordinal that tells apart the unnamed ones of one list (0 for the rest).
        self._invalid: dict[InvalidKey, tuple[str, str]] = {}
        self._changes_total = dict.fromkeys(KINDS, 0)
        self._pending: dict[str, set[Any]] = {kind: set() for kind in KINDS}
        self._trigger_times: dict[Any, float] = {}  # earliest pending trigger time per slice
        # Services whose object or slices changed since the last delta
        self._changed: set[ServiceName] = set()

    def listen(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` too whenever something really changed."""
        self._listeners.append(on_change)

    def _on_change(self) -> None:
        for listener in self._listeners:
            listener()

    def replace(self, kind: str, objects: Iterable[Any]) -> None:
        """The full state of one kind, after a (re)list or a manifests reload."""
        self.replace_all({kind: objects})

    def replace_all(self, objects_by_kind: Mapping[str, Iterable[Any]]) -> None:
        """The full state of several kinds in one transaction: a snapshot never sees one
        kind relisted and the other not (a relisted Service without its slices)."""
        parsed = self.parsed_list()
        for kind, objects in objects_by_kind.items():
            parsed.add(kind, objects)
        self.replace_parsed(parsed)

    def parsed_list(self) -> ParsedList:
        """An empty full state to fill a page at a time (`add`), then `replace_parsed`: a
        paged list never holds more than one page of raw objects."""
        return ParsedList(self._parse, self.settled)

    def replace_parsed(self, parsed: ParsedList) -> None:
        """`replace_all` of objects already parsed: every kind added to `parsed` is replaced."""
        changed = False
        with self._lock:
            for kind, store in parsed.stores.items():
                changed = self._replace_locked(kind, store) or changed
            to_log = {k: e for k, e in parsed.invalid.items() if self._invalid.get(k) != e}
            self._invalid = {k: e for k, e in self._invalid.items() if k[0] not in parsed.stores}
            self._invalid.update(parsed.invalid)
        self._log_invalid(to_log)
        if changed:
            self._on_change()

    def _replace_locked(self, kind: str, store: dict[Any, Any]) -> bool:
        current = self._store(kind)
        updates = [(current.pop(key), None) for key in current.keys() - store.keys()]
        for key, value in store.items():
            before = current.get(key)
            if before is not None and (before is value or before == value):
                # keep the stored object: the planner's cache recognises it by identity
                store[key] = before
            else:
                updates.append((before, value))
        for before, value in updates:
            self._count(kind, before, value)
        if updates:
            current.clear()
            current.update(store)
            if kind == ENDPOINT_SLICE:
                for before, value in updates:
                    self._by_service.update(before, value)
        return bool(updates)

    def upsert(self, kind: str, obj: Any) -> None:
        """One ADDED/MODIFIED event. An object now skipped or invalid replaces (removes) the
        version stored before: upstream keeps nothing for it either."""
        key, value, error = self._parse(kind, obj)
        invalid_key = (kind, *object_key(obj), 0)
        log_it = False
        with self._lock:
            store = self._store(kind)
            before = store.get(key)
            if value is None:
                changed = store.pop(key, None) is not None
            else:
                changed = before != value
                if changed:
                    store[key] = value
            if changed:
                self._count(kind, before, value)
            if changed and kind == ENDPOINT_SLICE:
                self._by_service.update(before, value)
            if error is None:
                self._invalid.pop(invalid_key, None)
            elif self._invalid.get(invalid_key) != error:
                self._invalid[invalid_key] = error
                log_it = True
        if log_it and error is not None:
            self._log_invalid({invalid_key: error})
        if changed:
            self._on_change()

    def delete(self, kind: str, obj: Any) -> None:
        """One DELETED event: only the object's namespace/name matter."""
        key = self._key(kind, obj)
        with self._lock:
            before = self._store(kind).pop(key, None)
            changed = before is not None
            if changed:
                self._count(kind, before, None)
            if changed and kind == ENDPOINT_SLICE:
                self._by_service.update(before, None)
            self._invalid.pop((kind, *object_key(obj), 0), None)
        if changed:
            self._on_change()

    def delta(self, full: bool = False) -> ClusterDelta:
        """The Services changed since the last delta, with their slices as they are now (or
        every Service, when `full`). Taking it starts the next one: a sync that fails must
        take a full one next."""
        with self._lock:
            names = sorted(self._services) if full else self._changed
            self._changed = set()
            return ClusterDelta(
                full=full,
                services={name: self._services.get(name) for name in names},
                slices={name: self._by_service.group(name) for name in names},
                nodes=dict(self._nodes),
            )

    def nodes(self) -> dict[str, NodeInfo]:
        with self._lock:
            return dict(self._nodes)

    def service_cidrs(self) -> tuple[IPNetwork, ...]:
        """The union of the ServiceCIDR objects' ranges."""
        with self._lock:
            return union_service_cidrs(self._service_cidrs.values())

    def invalid_count(self) -> int:
        """How many objects are left out now because they are malformed."""
        with self._lock:
            return len(self._invalid)

    def snapshot(self) -> ClusterState:
        # Shallow copies: the values are frozen, so sharing them is safe and cheap.
        with self._lock:
            return ClusterState(services=dict(self._services), slices=dict(self._slices),
                                slices_by_service=self._by_service.grouped(), nodes=dict(self._nodes),
                                service_cidrs=dict(self._service_cidrs))

    def change_counts(self) -> ChangeCounts:
        with self._lock:
            return ChangeCounts(total=dict(self._changes_total),
                                pending={kind: len(keys) for kind, keys in self._pending.items()})

    def take_changes(self) -> tuple[float, ...]:
        """Mark pending changes as taken by a sync; return their EndpointSlices' trigger
        times (endpoints.kubernetes.io/last-change-trigger-time, epoch seconds)."""
        with self._lock:
            triggers = tuple(self._trigger_times.values())
            self._pending = {kind: set() for kind in KINDS}
            self._trigger_times = {}
        return triggers

    def _count(self, kind: str, before: Any, after: Any) -> None:  # under the lock
        obj = after if after is not None else before
        for changed in (before, after):
            if changed is not None and kind in (SERVICE, ENDPOINT_SLICE):
                self._changed.add(changed.name if kind == SERVICE else changed.service)
        if kind not in self._changes_total:
            return
        self._changes_total[kind] += 1
        key = obj.name if kind == SERVICE else (obj.namespace, obj.name)
        self._pending[kind].add(key)
        trigger = getattr(after, "trigger_time", None)  # a deletion has none
        if trigger is not None and key not in self._trigger_times:
            self._trigger_times[key] = trigger

    def _store(self, kind: str) -> dict[Any, Any]:
        if kind == SERVICE:
            return self._services
        if kind == ENDPOINT_SLICE:
            return self._slices
        if kind == NODE:
            return self._nodes
        if kind == SERVICE_CIDR:
            return self._service_cidrs
        raise ValueError(f"unknown kind {kind!r}; expected one of {SOURCE_KINDS}")

    @staticmethod
    def _key(kind: str, obj: Any) -> Any:
        namespace, name = object_key(obj)
        if kind in (NODE, SERVICE_CIDR):
            return name  # cluster-scoped
        return ServiceName(namespace, name) if kind == SERVICE else (namespace, name)

    def _parse(self, kind: str, obj: Any) -> tuple[Any, Any, tuple[str, str] | None]:
        """(key, parsed value or None, (field, message) or None)."""
        self._store(kind)  # rejects unknown kinds before anything is parsed
        parse = {SERVICE: parse_service, ENDPOINT_SLICE: parse_endpoint_slice, NODE: parse_node,
                 SERVICE_CIDR: parse_service_cidr}[kind]
        key = self._key(kind, obj)
        try:
            value = parse(obj)
        except InvalidObject as exc:
            return key, None, (exc.field, exc.message)
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost one object, not the watch
            return key, None, ("(object)", f"cannot be parsed: {type(exc).__name__}: {exc}"[:300])
        return key, self.settled(kind, key, value), None

    def settled(self, kind: str, key: Any, value: Any) -> Any:
        """`value`, or the stored one when equal. An object that did not change is the stored
        one from here on: a relist or a manifests reload then never holds the cluster twice
        (the new copies die at once), and the planner recognises it by identity. (A read
        without the lock: either value compares right.)"""
        before = self._store(kind).get(key)
        return before if before is not None and before == value else value

    @staticmethod
    def _log_invalid(invalid: dict[InvalidKey, tuple[str, str]]) -> None:
        for (kind, namespace, name, _), (field, message) in sorted(invalid.items()):
            log.warning(
                "skipping invalid object",
                kind=kind,
                object=describe_key(namespace, name),
                field=field,
                error=message,
            )


class Parsed(NamedTuple):
    """An object parsed before it reached a ParsedList, under its tracker key."""

    key: Any
    value: Any


class ParsedList:
    """Objects of a (re)list parsed as they come, page by page; raw objects are dropped
    as soon as they are parsed."""

    def __init__(self, parse: Callable[[str, Any], tuple[Any, Any, tuple[str, str] | None]],
                 settled: Callable[[str, Any, Any], Any]) -> None:
        self._parse = parse
        self._settled = settled
        self.stores: dict[str, dict[Any, Any]] = {}
        self.invalid: dict[InvalidKey, tuple[str, str]] = {}
        self._unnamed: dict[str, int] = {}

    def add(self, kind: str, objects: Iterable[Any]) -> None:
        """Parse more objects of `kind` (also none: the kind is then replaced by nothing);
        a Parsed one was parsed already (list_pages)."""
        store = self.stores.setdefault(kind, {})
        for obj in objects:
            if type(obj) is Parsed:
                store[obj.key] = self._settled(kind, obj.key, obj.value)
                continue
            key, value, error = self._parse(kind, obj)
            if error is not None:
                self._add_invalid(kind, *object_key(obj), error)
            elif value is not None:
                store[key] = value

    def absorb(self, other: ParsedList) -> None:
        """Another file's parsed objects on top of these (its objects win, as when the
        files are read in order)."""
        for kind, store in other.stores.items():
            self.stores.setdefault(kind, {}).update(store)
        for (kind, namespace, name, _ordinal), error in other.invalid.items():
            self._add_invalid(kind, namespace, name, error)

    def _add_invalid(self, kind: str, namespace: str, name: str, error: tuple[str, str]) -> None:
        if not name:  # the unnamed ones of one list are told apart by an ordinal
            self._unnamed[kind] = self._unnamed.get(kind, 0) + 1
        self.invalid[(kind, namespace, name, 0 if name else self._unnamed[kind])] = error


class SliceIndex:
    """EndpointSlices grouped by Service, sorted by name. A group's tuple stays the same
    object until one of its slices changes, so the planner can skip unchanged Services by
    identity instead of re-planning 10,000 of them for one endpoint."""

    def __init__(self) -> None:
        self._members: dict[ServiceName, dict[str, EndpointSlice]] = {}
        self._grouped: dict[ServiceName, tuple[EndpointSlice, ...]] = {}
        self._dirty: set[ServiceName] = set()

    def update(self, before: EndpointSlice | None, after: EndpointSlice | None) -> None:
        if before is not None:
            group = self._members.get(before.service, {})
            group.pop(before.name, None)
            if not group:
                self._members.pop(before.service, None)
            self._dirty.add(before.service)
        if after is not None:
            self._members.setdefault(after.service, {})[after.name] = after
            self._dirty.add(after.service)

    def group(self, name: ServiceName) -> tuple[EndpointSlice, ...]:
        """One Service's slices, sorted by name."""
        if name in self._dirty:
            self._regroup(name)
        return self._grouped.get(name, ())

    def grouped(self) -> dict[ServiceName, tuple[EndpointSlice, ...]]:
        for name in list(self._dirty):
            self._regroup(name)
        return dict(self._grouped)

    def _regroup(self, name: ServiceName) -> None:
        self._dirty.discard(name)
        members = self._members.get(name)
        if not members:
            self._grouped.pop(name, None)
            return
        group = tuple(members[n] for n in sorted(members))
        old = self._grouped.get(name)
        if old is None or len(old) != len(group) or any(a is not b for a, b in zip(old, group, strict=True)):
            self._grouped[name] = group
