"""One page of a list answer, decoded. Pure.

Services and EndpointSlices are what an agent lists (10,000s, with 100,000 endpoints).
Their pages are decoded by msgspec straight into typed records, which checks the JSON
types in C, and the usual object (an IPv4 slice without topology hints; a single-stack
IPv4 ClusterIP or NodePort Service without externalIPs, affinity or Local external
policy) is made into its value from those: no dict per JSON object, no type check per
field in Python. That is half the instructions json.loads and parse.py take for the same
page. Any other object, a page whose JSON does not fit the records, and every other
kind are decoded as plain JSON and parsed by parse.py, which names what is wrong.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import msgspec

from kproxy.model import (
    EndpointSlice,
    Protocol,
    Service,
    ServiceName,
    ServicePort,
    ServicePortName,
    ServiceType,
    SliceEndpoint,
    SlicePort,
)
from kproxy.parse import (
    ANNOTATION_TRIGGER_TIME,
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME,
    parse_ipv4,
    parse_trigger_time,
)
from kproxy.tracker import Parsed


class NotAList(ValueError):
    """The answer is not a JSON object with a list of items (the message says which)."""


@dataclass(slots=True)
class Page:
    version: str  # metadata.resourceVersion ("" when missing)
    token: str | None  # metadata.continue: the next page's, None on the last page
    # in the answer's order: JSON objects for parse.py, and the usual objects Parsed already
    items: list[Any] = field(default_factory=list)


def decode_page(kind: str, data: bytes) -> Page:
    """A list answer's page: its items as JSON objects, and for Services and EndpointSlices
    the usual ones Parsed already (keyed as the tracker keys them). NotAList when it is not
    a list."""
    typed = _TYPED.get(kind)
    if typed is not None:
        decoder, usual = typed
        try:
            return _typed_page(data, decoder.decode(data), usual)
        except msgspec.DecodeError:  # invalid JSON, or JSON the records do not fit
            pass
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise NotAList("is not JSON") from None
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(items, list | None):
        raise NotAList("has no list of items")
    meta = body.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    token = meta.get("continue") if isinstance(meta, dict) else None
    return Page(version=version if isinstance(version, str) else "", token=token if isinstance(token, str) else None,
                items=items or [])


# --- the records msgspec decodes a slice page into (JSON's camelCase names; unknown fields are skipped)

class _Conditions(msgspec.Struct, gc=False, rename="camel"):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class _Endpoint(msgspec.Struct, gc=False, rename="camel"):
    addresses: list[str]
    conditions: _Conditions | None = None
    node_name: str | None = None
    zone: str | None = None
    hints: Any = None  # any hints: parse.py reads them


class _Port(msgspec.Struct, gc=False, rename="camel"):
    name: str | None = None
    port: int | None = None
    protocol: str | None = None


class _Meta(msgspec.Struct, gc=False, rename="camel"):
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class _Slice(msgspec.Struct, gc=False, rename="camel"):
    metadata: _Meta | None = None
    address_type: str | None = None
    ports: list[_Port | None] | None = None
    endpoints: list[_Endpoint | None] | None = None


class _ServicePort(msgspec.Struct, gc=False, rename="camel"):
    name: str | None = None
    protocol: str | None = None
    port: int | None = None
    node_port: int | None = None


class _ServiceSpec(msgspec.Struct, gc=False, rename="camel"):
    type: str | None = None
    cluster_ip: str | None = msgspec.field(default=None, name="clusterIP")
    cluster_ips: list[str] | None = msgspec.field(default=None, name="clusterIPs")
    external_ips: list[Any] | None = msgspec.field(default=None, name="externalIPs")
    session_affinity: str | None = None
    external_traffic_policy: str | None = None
    internal_traffic_policy: str | None = None
    ports: list[_ServicePort | None] | None = None


class _Service(msgspec.Struct, gc=False, rename="camel"):
    metadata: _Meta | None = None
    spec: _ServiceSpec | None = None


class _ListMeta(msgspec.Struct, gc=False, rename="camel"):
    resource_version: str | None = None
    token: str | None = msgspec.field(default=None, name="continue")


class _SlicePage(msgspec.Struct, gc=False, rename="camel"):
    metadata: _ListMeta | None = None
    items: list[_Slice] | None = None


class _ServicePage(msgspec.Struct, gc=False, rename="camel"):
    metadata: _ListMeta | None = None
    items: list[_Service] | None = None


_PROTOCOLS: dict[str | None, Protocol] = {None: Protocol.TCP, **{p.value: p for p in Protocol}}  # None: the default


def _typed_page(data: bytes, page: _SlicePage | _ServicePage, usual: Callable[[Any], Parsed | None]) -> Page:
    meta = page.metadata or _ListMeta()
    found = Page(version=meta.resource_version or "", token=meta.token)
    raw: list[Any] | None = None
    for index, item in enumerate(page.items or ()):
        try:
            parsed = usual(item)
        except Exception:  # noqa: BLE001 - a bug here must cost no object: parse.py reads it (and names the error)
            parsed = None
        if parsed is None:
            if raw is None:  # decoded again as plain JSON, once, for the unusual items
                raw = msgspec.json.decode(data)["items"]
            parsed = raw[index]
        found.items.append(parsed)
    return found


def _usual_service(item: _Service) -> Parsed | None:
    """parse_service() of a usual Service, from its record; None for any other."""
    meta, spec = item.metadata, item.spec
    if meta is None or not meta.name or spec is None or (meta.labels and LABEL_SERVICE_PROXY_NAME in meta.labels):
        return None
    service_type = _PLAIN_TYPES.get(spec.type)
    cluster_ip = parse_ipv4(spec.cluster_ip) if spec.cluster_ip else None
    if (service_type is None or cluster_ip is None or spec.external_ips or spec.session_affinity == "ClientIP"
            or not (spec.cluster_ips is None or spec.cluster_ips == [spec.cluster_ip])
            or (service_type is ServiceType.NODE_PORT and spec.external_traffic_policy in ("Local", "OnlyLocal"))):
        return None
    namespace = sys.intern(meta.namespace) if meta.namespace else "default"
    name = ServiceName(namespace, meta.name)
    internal_local = spec.internal_traffic_policy == "Local"
    ports: list[ServicePort] = []
    for port in spec.ports or ():
        if port is None or port.protocol not in _PROTOCOLS or port.port is None or not _valid_port(port.port):
            return None
        node_port = port.node_port if service_type is ServiceType.NODE_PORT and port.node_port else None
        if node_port is not None and not _valid_port(node_port):
            return None
        ports.append(ServicePort(name=ServicePortName(name, sys.intern(port.name or "")),
                                 protocol=_PROTOCOLS[port.protocol], port=port.port, cluster_ip=cluster_ip,
                                 node_port=node_port, internal_policy_local=internal_local))
    names = {p.name.port for p in ports}
    if len(names) != len(ports) or (len(ports) > 1 and "" in names):
        return None  # parse.py names the duplicate or missing port name
    return Parsed(name, Service(name=name, type=service_type, cluster_ip=cluster_ip, ports=tuple(ports)))


_PLAIN_TYPES = {None: ServiceType.CLUSTER_IP, "": ServiceType.CLUSTER_IP, "ClusterIP": ServiceType.CLUSTER_IP,
                "NodePort": ServiceType.NODE_PORT}


def _valid_port(number: int) -> bool:
    return 1 <= number <= 65535


def _usual_slice(item: _Slice) -> Parsed | None:
    """parse_endpoint_slice() of a usual slice, from its record; None for any other."""
    meta = item.metadata
    if meta is None or not meta.name or item.address_type != "IPv4":
        return None
    labels = meta.labels or {}
    service = labels.get(LABEL_SERVICE_NAME)
    if not service or LABEL_SERVICE_PROXY_NAME in labels or LABEL_HEADLESS in labels:
        return None
    intern = sys.intern
    ports: list[SlicePort] = []
    for port in item.ports or ():
        if port is None or port.protocol not in _PROTOCOLS or not (port.port is None or _valid_port(port.port)):
            return None
        if port.port is not None:  # upstream skips a port without a number
            ports.append(SlicePort(name=intern(port.name or ""), port=port.port, protocol=_PROTOCOLS[port.protocol]))
    endpoints: list[SliceEndpoint] = []
    add, pton = endpoints.append, socket.inet_pton
    for entry in item.endpoints or ():
        if entry is None or entry.hints is not None:
            return None
        conditions = entry.conditions or _NO_CONDITIONS
        # API semantics (as parse.py): ready and serving nil -> true, terminating nil -> false
        ready, serving, terminating = (conditions.ready is not False, conditions.serving is not False,
                                       conditions.terminating is True)
        node_name = intern(entry.node_name) if entry.node_name else None
        zone = intern(entry.zone) if entry.zone else None
        for address in entry.addresses:
            try:
                ip = IPv4Address(int.from_bytes(pton(socket.AF_INET, address), "big"))  # parse_ipv4(), inline
            except (OSError, ValueError):
                return None
            add(SliceEndpoint(ip, ready, serving, terminating, node_name, zone))
    namespace = intern(meta.namespace) if meta.namespace else "default"
    value = EndpointSlice(namespace=namespace, name=meta.name, service=ServiceName(namespace, service),
                          ports=tuple(ports), endpoints=tuple(endpoints), family=4,
                          trigger_time=parse_trigger_time((meta.annotations or {}).get(ANNOTATION_TRIGGER_TIME)))
    return Parsed((namespace, meta.name), value)


_NO_CONDITIONS = _Conditions()
_TYPED: dict[str, tuple[msgspec.json.Decoder[Any], Callable[[Any], Parsed | None]]] = {
    "Service": (msgspec.json.Decoder(_ServicePage), _usual_service),
    "EndpointSlice": (msgspec.json.Decoder(_SlicePage), _usual_slice),
}
