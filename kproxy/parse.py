"""Kubernetes JSON (dicts) -> kproxy.model values, cleaned once at the edge.

`None` means "upstream kube-proxy ignores this object silently"; `InvalidObject` means
the object is malformed and must be left out (the caller logs it once). Every field is
type-checked before it is used: any JSON value at any place (a string where the schema
says object, a list where it says string, ...) ends in InvalidObject naming the field,
never in another exception (tests/property checks this with arbitrary objects).
"""

from __future__ import annotations

import socket
import sys
from dataclasses import replace
from datetime import datetime
from ipaddress import AddressValueError, IPv4Address, ip_address, ip_network
from typing import Any

from kproxy.model import (
    EndpointSlice,
    IPAddress,
    IPNetwork,
    NodeInfo,
    Protocol,
    Service,
    ServiceCIDR,
    ServiceName,
    ServicePort,
    ServicePortName,
    ServiceType,
    SliceEndpoint,
    SlicePort,
)

# Upstream's informers select on these labels: a Service (and its slices) carrying
# service-proxy-name belongs to another proxy; the headless label marks headless slices.
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_ZONE = "topology.kubernetes.io/zone"
ANNOTATION_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
ANNOTATION_SOURCE_RANGES = "service.beta.kubernetes.io/load-balancer-source-ranges"
ADDRESS_FAMILIES = {"IPv4": 4, "IPv6": 6}  # slice addressType; FQDN slices are not proxied
DEFAULT_AFFINITY_TIMEOUT = 10800  # upstream's default sessionAffinityConfig.clientIP.timeoutSeconds
# Label selector for list/watch calls that mirrors upstream's informer filter.
UPSTREAM_LABEL_SELECTOR = f"!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}"
UNNAMED = "unnamed"  # how an object without a usable name is called in messages


class InvalidObject(ValueError):
    """A malformed object: names the kind, "namespace/name" (or "unnamed"), the field and
    the problem."""

    def __init__(self, kind: str, key: str, field: str, message: str) -> None:
        super().__init__(f"{kind} {key}: {field}: {message}")
        self.kind = kind
        self.key = key
        self.field = field
        self.message = message


def object_key(obj: Any) -> tuple[str, str]:
    """(namespace, name) of a raw object; a missing namespace means "default" (as kubectl).
    Any shape is accepted: a name that is not a non-empty string gives "" (unnamed)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return ("default", "")
    namespace, name = meta.get("namespace"), meta.get("name")
    return (shared(namespace) if isinstance(namespace, str) and namespace else "default",
            name if isinstance(name, str) else "")


def shared(text: str) -> str:
    """One string object for a value that repeats across objects (namespaces, node names,
    zones, port names): each JSON document otherwise brings its own copy, and 100,000
    endpoints would keep 100,000 copies of a few node names."""
    return sys.intern(text) if type(text) is str else text


def describe_key(namespace: str, name: str) -> str:
    """"namespace/name" as messages name an object; "unnamed" without a name."""
    return f"{namespace}/{name}" if name else UNNAMED


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Ctx:
    """Carries kind and key so every error names the object without repeating it, and
    checks the JSON type of each field before it is used."""

    __slots__ = ("kind", "meta", "name", "namespace")

    def __init__(self, kind: str, obj: Any) -> None:
        self.kind = kind
        self.namespace, self.name = object_key(obj)
        if not isinstance(obj, dict):
            raise self.error("(object)", f"must be an object, got {_json_type(obj)}")
        self.meta = self.mapping(obj.get("metadata"), "metadata")
        namespace = self.meta.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            raise self.error("metadata.namespace", f"must be a string, got {_json_type(namespace)}")
        name = self.meta.get("name")
        if name is not None and not isinstance(name, str):
            raise self.error("metadata.name", f"must be a string, got {_json_type(name)}")
        if not name:
            raise self.error("metadata.name", "missing name")

    def error(self, field: str, message: str) -> InvalidObject:
        return InvalidObject(self.kind, describe_key(self.namespace, self.name), field, message)

    # --- JSON types ---------------------------------------------------------------------

    def mapping(self, value: Any, field: str) -> dict[str, Any]:
        """An object; null (or absent) is an empty one."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(field, f"must be an object, got {_json_type(value)}")
        return value

    def text(self, value: Any, field: str) -> str:
        """A string; null (or absent) is ""."""
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {_json_type(value)}")
        return value

    def flag(self, value: Any, field: str) -> bool | None:
        """A boolean, or None when null or absent."""
        if value is not None and not isinstance(value, bool):
            raise self.error(field, f"must be true or false, got {_json_type(value)}")
        return value

    def items(self, value: Any, field: str) -> list[tuple[str, Any]]:
        """A list as (field path, item) pairs; null means empty."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, f"must be a list, got {_json_type(value)}")
        return [(f"{field}[{i}]", item) for i, item in enumerate(value)]

    def entries(self, value: Any, field: str) -> list[tuple[str, dict[str, Any]]]:
        """A list of objects as (field path, entry) pairs; null means empty."""
        return [(path, self.mapping(item, path) if item is not None else self._null(path))
                for path, item in self.items(value, field)]

    def _null(self, field: str) -> dict[str, Any]:
        raise self.error(field, "must be an object, got null")

    def labels(self) -> dict[str, Any]:
        return self.mapping(self.meta.get("labels"), "metadata.labels")

    def annotations(self) -> dict[str, Any]:
        return self.mapping(self.meta.get("annotations"), "metadata.annotations")

    # --- values ---------------------------------------------------------------------------

    def ip(self, value: Any, field: str) -> IPAddress:
        if not isinstance(value, str):
            raise self.error(field, f"not an IP address: {value!r}")
        ip = parse_ipv4(value)
        if ip is not None:
            return ip
        try:
            return ip_address(value)
        except (AddressValueError, ValueError):
            raise self.error(field, f"not an IP address: {value!r}") from None

    def port(self, value: Any, field: str) -> int:
        # bool is an int subclass: reject it explicitly.
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise self.error(field, f"port must be 1-65535, got {value!r}")
        return value

    def protocol(self, value: Any, field: str) -> Protocol:
        if value is None:
            return Protocol.TCP  # the API's default
        if isinstance(value, str):
            try:
                return Protocol(value)
            except ValueError:
                pass
        raise self.error(field, f"protocol must be TCP, UDP or SCTP, got {value!r}")


def parse_ipv4(text: str) -> IPv4Address | None:
    """An IPv4 address, None when `text` is not one. inet_pton is strict (no "010.1.1.1",
    no "1") and ~10x faster than ipaddress's parser, which matters at 100,000 endpoints."""
    try:
        return IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def parse_service(obj: Any) -> Service | None:
    ctx = _Ctx("Service", obj)
    spec = ctx.mapping(obj.get("spec"), "spec")
    labels = ctx.labels()
    type_name = ctx.text(spec.get("type"), "spec.type") or "ClusterIP"
    if type_name == "ExternalName" or LABEL_SERVICE_PROXY_NAME in labels:
        return None
    try:
        service_type = ServiceType(type_name)
    except ValueError:
        raise ctx.error("spec.type", f"unknown Service type {type_name!r}") from None
    cluster_ips = _cluster_ips(ctx, spec)
    if not cluster_ips:
        return None
    service_name = ServiceName(ctx.namespace, ctx.name)
    external_ips = tuple(ctx.ip(raw, field) for field, raw in ctx.items(spec.get("externalIPs"), "spec.externalIPs"))
    lb_ips = _load_balancer_ips(ctx, obj) if service_type is ServiceType.LOAD_BALANCER else ()
    policies = _policies(ctx, spec, service_type)
    source_ranges = policies.pop("source_ranges", ())
    external_local = policies.pop("external_policy_local")
    raw_ports = ctx.entries(spec.get("ports"), "spec.ports")
    ports: list[ServicePort] = []
    seen: set[str] = set()
    for field, raw in raw_ports:
        port_name = shared(ctx.text(raw.get("name"), f"{field}.name"))
        if len(raw_ports) > 1 and not port_name:
            # Two unnamed ports would share one ServicePortName: the API forbids it.
            raise ctx.error(f"{field}.name", "missing port name (required with several ports)")
        if port_name in seen:
            raise ctx.error(f"{field}.name", f"duplicate port name {port_name!r}")
        seen.add(port_name)
        node_port = raw.get("nodePort")
        if service_type is ServiceType.CLUSTER_IP or node_port is None or node_port == 0:
            node_port = None  # upstream ignores a stale nodePort on a ClusterIP Service
        else:
            node_port = ctx.port(node_port, f"{field}.nodePort")
        protocol = ctx.protocol(raw.get("protocol"), f"{field}.protocol")
        number = ctx.port(raw.get("port"), f"{field}.port")
        for cluster_ip in cluster_ips:  # one ServicePort per IP family
            family = cluster_ip.version
            port = ServicePort(
                name=ServicePortName(service_name, port_name),
                protocol=protocol,
                port=number,
                cluster_ip=cluster_ip,
                node_port=node_port,
                external_ips=tuple(ip for ip in external_ips if ip.version == family),
                load_balancer_ips=tuple(ip for ip in lb_ips if ip.version == family),
                source_ranges=tuple(r for r in source_ranges if r.version == family),
                external_policy_local=external_local,
                **policies,
            )
            # upstream: externalTrafficPolicy applies only to externally reachable ports
            if port.external_policy_local and not port.externally_accessible:
                port = replace(port, external_policy_local=False)
            ports.append(port)
    return Service(name=service_name, type=service_type, cluster_ip=cluster_ips[0], ports=tuple(ports))


def _policies(ctx: _Ctx, spec: dict[str, Any], service_type: ServiceType) -> dict[str, Any]:
    """Traffic policies, affinity, health check port and source ranges, as ServicePort fields."""
    found: dict[str, Any] = {}
    if ctx.text(spec.get("sessionAffinity"), "spec.sessionAffinity") == "ClientIP":
        config = ctx.mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
        client_ip = ctx.mapping(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
        timeout = client_ip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
            raise ctx.error("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            f"must be 1-86400, got {timeout!r}")
        found["affinity_timeout"] = timeout
    external = ctx.text(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy")
    internal = ctx.text(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy")
    found["external_policy_local"] = service_type is not ServiceType.CLUSTER_IP and external in ("Local", "OnlyLocal")
    found["internal_policy_local"] = internal == "Local"
    health_port = spec.get("healthCheckNodePort")
    if found["external_policy_local"] and service_type is ServiceType.LOAD_BALANCER and health_port:
        found["health_check_node_port"] = ctx.port(health_port, "spec.healthCheckNodePort")
    if service_type is ServiceType.LOAD_BALANCER:
        found["source_ranges"] = _source_ranges(ctx, spec)
    return found


def _source_ranges(ctx: _Ctx, spec: dict[str, Any]) -> tuple[IPNetwork, ...]:
    # spec.loadBalancerSourceRanges wins; the older annotation is read when it is empty (upstream)
    field = "spec.loadBalancerSourceRanges"
    raw = ctx.items(spec.get("loadBalancerSourceRanges"), field)
    if not raw:
        field = f"metadata.annotations[{ANNOTATION_SOURCE_RANGES}]"
        annotation = ctx.text(ctx.annotations().get(ANNOTATION_SOURCE_RANGES), field)
        parts = [part.strip() for part in annotation.split(",") if part.strip()]
        raw = [(f"{field}[{i}]", part) for i, part in enumerate(parts)]
    ranges: list[IPNetwork] = []
    for path, cidr in raw:
        if not isinstance(cidr, str):
            raise ctx.error(path, f"not a CIDR: {cidr!r}")
        try:
            ranges.append(ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ctx.error(path, f"not a CIDR: {cidr!r}") from None
    return tuple(ranges)


def _cluster_ips(ctx: _Ctx, spec: dict[str, Any]) -> tuple[IPAddress, ...]:
    """The Service's ClusterIPs, at most one per family, primary first; () when headless."""
    cluster_ips = ctx.items(spec.get("clusterIPs"), "spec.clusterIPs")
    cluster_ip = spec.get("clusterIP")
    if cluster_ip is not None and not isinstance(cluster_ip, str):
        raise ctx.error("spec.clusterIP", f"not an IP address: {cluster_ip!r}")
    candidates = [("spec.clusterIP", cluster_ip)] if cluster_ip else cluster_ips[:1]
    if not candidates or not candidates[0][1] or candidates[0][1] == "None":
        return ()  # headless
    found: dict[int, IPAddress] = {}
    for field, raw in candidates + cluster_ips:
        ip = ctx.ip(raw, field)
        found.setdefault(ip.version, ip)
    return tuple(found.values())


def _load_balancer_ips(ctx: _Ctx, obj: dict[str, Any]) -> tuple[IPAddress, ...]:
    status = ctx.mapping(obj.get("status"), "status")
    balancer = ctx.mapping(status.get("loadBalancer"), "status.loadBalancer")
    ips: list[IPAddress] = []
    for field, entry in ctx.entries(balancer.get("ingress"), "status.loadBalancer.ingress"):
        raw = entry.get("ip")
        # ipMode Proxy: the balancer proxies to the node, so traffic to this IP must not
        # be short-circuited on the node (upstream, KEP-1860). Hostname-only entries are
        # not addresses.
        if not raw or ctx.text(entry.get("ipMode"), f"{field}.ipMode") == "Proxy":
            continue
        ips.append(ctx.ip(raw, f"{field}.ip"))
    return tuple(ips)


def parse_trigger_time(value: Any) -> float | None:
    """A slice's last-change-trigger-time annotation (RFC 3339) as epoch seconds; a
    missing or malformed one is no reason to skip the slice (upstream ignores it too)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):  # out-of-range years too
        return None


def parse_endpoint_slice(obj: Any) -> EndpointSlice | None:
    ctx = _Ctx("EndpointSlice", obj)
    labels = ctx.labels()
    service = ctx.text(labels.get(LABEL_SERVICE_NAME), f"metadata.labels[{LABEL_SERVICE_NAME}]")
    address_type = ctx.text(obj.get("addressType"), "addressType")
    if (
        address_type not in ADDRESS_FAMILIES
        or not service
        or LABEL_SERVICE_PROXY_NAME in labels
        or LABEL_HEADLESS in labels
    ):
        return None
    family = ADDRESS_FAMILIES[address_type]
    ports: list[SlicePort] = []
    for field, raw in ctx.entries(obj.get("ports"), "ports"):
        if raw.get("port") is None:
            continue  # upstream skips a port without a number
        ports.append(
            SlicePort(
                name=shared(ctx.text(raw.get("name"), f"{field}.name")),
                port=ctx.port(raw.get("port"), f"{field}.port"),
                protocol=ctx.protocol(raw.get("protocol"), f"{field}.protocol"),
            )
        )
    raw_endpoints = obj.get("endpoints")
    endpoints = _plain_endpoints(raw_endpoints, family) if type(raw_endpoints) is list else None
    if endpoints is None:
        endpoints = []
        for field, raw in ctx.entries(raw_endpoints, "endpoints"):
            endpoints.extend(_endpoints(ctx, field, raw, family, address_type))
    return EndpointSlice(
        namespace=ctx.namespace,
        name=ctx.name,
        service=ServiceName(ctx.namespace, service),
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        family=family,
        trigger_time=parse_trigger_time(ctx.annotations().get(ANNOTATION_TRIGGER_TIME)),
    )


_CONDITION = (type(None), bool)  # by type: 0 == False, yet 0 is no condition


def _plain_endpoints(entries: list[Any], family: int) -> list[SliceEndpoint] | None:
    """_endpoints() of every entry, for the usual ones (IPv4 addresses, no hints, fields of
    the right types), in one loop and without a field path per value: a third of the time
    at 100,000 endpoints. None when any entry is not usual: _endpoints() then reads them
    all (and names what is wrong)."""
    if family != 4:
        return None
    out: list[SliceEndpoint] = []
    add, pton, intern = out.append, socket.inet_pton, sys.intern
    for raw in entries:
        if type(raw) is not dict or raw.get("hints") is not None:
            return None
        conditions = raw.get("conditions")
        if conditions is None:
            ready = serving = terminating = None
        elif type(conditions) is dict:
            get = conditions.get
            ready, serving, terminating = get("ready"), get("serving"), get("terminating")
        else:
            return None
        node_name, zone, addresses = raw.get("nodeName"), raw.get("zone"), raw.get("addresses")
        if (type(ready) not in _CONDITION or type(serving) not in _CONDITION or type(terminating) not in _CONDITION
                or not (node_name is None or type(node_name) is str) or not (zone is None or type(zone) is str)
                or type(addresses) is not list):
            return None
        node_name = intern(node_name) if node_name else None  # as shared() does
        zone = intern(zone) if zone else None
        ready, serving, terminating = ready is not False, serving is not False, terminating is True
        for address in addresses:
            if type(address) is not str:
                return None
            try:
                ip = IPv4Address(int.from_bytes(pton(socket.AF_INET, address), "big"))
            except (OSError, ValueError):
                return None
            add(SliceEndpoint(ip, ready, serving, terminating, node_name, zone))
    return out


def _endpoints(ctx: _Ctx, field: str, raw: dict[str, Any], family: int, address_type: str) -> list[SliceEndpoint]:
    """One entry of a slice's endpoints: a SliceEndpoint per address."""
    conditions = ctx.mapping(raw.get("conditions"), f"{field}.conditions")
    flags = {c: ctx.flag(conditions.get(c), f"{field}.conditions.{c}") for c in ("ready", "serving", "terminating")}
    raw_hints = ctx.mapping(raw.get("hints"), f"{field}.hints")
    hints: dict[str, tuple[str, ...]] = {}
    for kind in ("forZones", "forNodes"):
        names = [shared(ctx.text(hint.get("name"), f"{path}.name"))
                 for path, hint in ctx.entries(raw_hints.get(kind), f"{field}.hints.{kind}")]
        hints[kind] = tuple(sorted(names))
    node_name = shared(ctx.text(raw.get("nodeName"), f"{field}.nodeName")) or None
    zone = shared(ctx.text(raw.get("zone"), f"{field}.zone")) or None
    out: list[SliceEndpoint] = []
    for path, address in ctx.items(raw.get("addresses"), f"{field}.addresses"):
        ip = ctx.ip(address, path)
        if ip.version != family:
            raise ctx.error(path, f"not an {address_type} address: {address!r}")
        out.append(
            SliceEndpoint(
                ip=ip,
                # API semantics (and upstream's endpointslicecache): ready and serving nil
                # -> true, terminating nil -> false.
                ready=flags["ready"] is not False,
                serving=flags["serving"] is not False,
                terminating=flags["terminating"] is True,
                node_name=node_name,
                zone=zone,
                zone_hints=hints["forZones"],
                node_hints=hints["forNodes"],
            )
        )
    return out


def parse_service_cidr(obj: Any) -> ServiceCIDR:
    ctx = _Ctx("ServiceCIDR", obj)
    spec = ctx.mapping(obj.get("spec"), "spec")
    return ServiceCIDR(name=ctx.name, cidrs=_cidrs(ctx, spec.get("cidrs"), "spec.cidrs"))


def _cidrs(ctx: _Ctx, value: Any, field: str) -> tuple[IPNetwork, ...]:
    found = []
    for path, item in ctx.items(value, field):
        try:
            found.append(ip_network(ctx.text(item, path), strict=False))
        except ValueError:
            raise ctx.error(path, f"not a CIDR: {item!r}") from None
    return tuple(found)


def parse_node(obj: Any) -> NodeInfo | None:
    ctx = _Ctx("Node", obj)
    zone = ctx.text(ctx.labels().get(LABEL_ZONE), f"metadata.labels[{LABEL_ZONE}]")
    spec = ctx.mapping(obj.get("spec"), "spec")
    return NodeInfo(name=ctx.name, zone=zone or None, pod_cidrs=_cidrs(ctx, spec.get("podCIDRs"), "spec.podCIDRs"))
