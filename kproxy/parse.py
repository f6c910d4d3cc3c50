"""Kubernetes JSON (dicts) -> kproxy.model values, cleaned once at the edge.

`None` means "upstream kube-proxy ignores this object silently"; `InvalidObject` means
the object is malformed and must be left out (the caller logs it once).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from ipaddress import AddressValueError, IPv4Address, ip_address, ip_network
from typing import Any

from kproxy.model import (
    EndpointSlice,
    IPAddress,
    IPNetwork,
    NodeInfo,
    Protocol,
    Service,
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
ANNOTATION_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
ANNOTATION_SOURCE_RANGES = "service.beta.kubernetes.io/load-balancer-source-ranges"
ADDRESS_FAMILIES = {"IPv4": 4, "IPv6": 6}  # slice addressType; FQDN slices are not proxied
DEFAULT_AFFINITY_TIMEOUT = 10800  # upstream's default sessionAffinityConfig.clientIP.timeoutSeconds
# Label selector for list/watch calls that mirrors upstream's informer filter.
UPSTREAM_LABEL_SELECTOR = f"!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}"


class InvalidObject(ValueError):
    """A malformed object: names the kind, "namespace/name", the field and the problem."""

    def __init__(self, kind: str, key: str, field: str, message: str) -> None:
        super().__init__(f"{kind} {key}: {field}: {message}")
        self.kind = kind
        self.key = key
        self.field = field
        self.message = message


def object_key(obj: dict[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a raw object; a missing namespace means "default" (as kubectl)."""
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "default", meta.get("name") or "")


class _Ctx:
    """Carries kind and key so every error names the object without repeating it."""

    __slots__ = ("key", "kind")

    def __init__(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = kind
        namespace, name = object_key(obj)
        self.key = f"{namespace}/{name}"
        if not name:
            raise self.error("metadata.name", "missing name")

    def error(self, field: str, message: str) -> InvalidObject:
        return InvalidObject(self.kind, self.key, field, message)

    def ip(self, value: Any, field: str) -> IPAddress:
        if not isinstance(value, str):
            raise self.error(field, f"not an IP address: {value!r}")
        try:
            # inet_pton is strict (no "010.1.1.1", no "1") and ~10x faster than
            # ipaddress's parser, which matters at 100,000 endpoints.
            return IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big"))
        except OSError:
            pass
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
        try:
            return Protocol(value)
        except ValueError:
            raise self.error(field, f"protocol must be TCP, UDP or SCTP, got {value!r}") from None


    def entries(self, value: Any, field: str) -> list[tuple[str, dict[str, Any]]]:
        """A list of objects as (field path, entry) pairs; null means empty."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, "must be a list")
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise self.error(f"{field}[{i}]", "must be an object")
        return [(f"{field}[{i}]", entry) for i, entry in enumerate(value)]


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def parse_service(obj: dict[str, Any]) -> Service | None:
    ctx = _Ctx("Service", obj)
    spec = obj.get("spec") or {}
    type_name = spec.get("type") or "ClusterIP"
    if type_name == "ExternalName" or LABEL_SERVICE_PROXY_NAME in _labels(obj):
        return None
    try:
        service_type = ServiceType(type_name)
    except ValueError:
        raise ctx.error("spec.type", f"unknown Service type {type_name!r}") from None
    cluster_ips = _cluster_ips(ctx, spec)
    if not cluster_ips:
        return None
    namespace, name = object_key(obj)
    service_name = ServiceName(namespace, name)
    external_ips = tuple(ctx.ip(raw, f"spec.externalIPs[{i}]") for i, raw in enumerate(spec.get("externalIPs") or ()))
    lb_ips = _load_balancer_ips(ctx, obj) if service_type is ServiceType.LOAD_BALANCER else ()
    policies = _policies(ctx, obj, service_type)
    raw_ports = ctx.entries(spec.get("ports"), "spec.ports")
    ports: list[ServicePort] = []
    seen: set[str] = set()
    for field, raw in raw_ports:
        port_name = raw.get("name") or ""
        if len(raw_ports) > 1 and not port_name:
            # Two unnamed ports would share one ServicePortName: the API forbids it.
            raise ctx.error(f"{field}.name", "missing port name (required with several ports)")
        if port_name in seen:
            raise ctx.error(f"{field}.name", f"duplicate port name {port_name!r}")
        seen.add(port_name)
        node_port = raw.get("nodePort")
        if service_type is ServiceType.CLUSTER_IP or not node_port:
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
                **policies,
            )
            port = replace(port, source_ranges=tuple(r for r in port.source_ranges if r.version == family))
            # upstream: externalTrafficPolicy applies only to externally reachable ports
            if port.external_policy_local and not port.externally_accessible:
                port = replace(port, external_policy_local=False)
            ports.append(port)
    return Service(name=service_name, type=service_type, cluster_ip=cluster_ips[0], ports=tuple(ports))


def _policies(ctx: _Ctx, obj: dict[str, Any], service_type: ServiceType) -> dict[str, Any]:
    """Traffic policies, affinity, health check port and source ranges, as ServicePort fields."""
    spec = obj.get("spec") or {}
    found: dict[str, Any] = {}
    if spec.get("sessionAffinity") == "ClientIP":
        config = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        timeout = config.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
            raise ctx.error("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            f"must be 1-86400, got {timeout!r}")
        found["affinity_timeout"] = timeout
    found["external_policy_local"] = service_type is not ServiceType.CLUSTER_IP and (
        spec.get("externalTrafficPolicy") in ("Local", "OnlyLocal"))
    found["internal_policy_local"] = spec.get("internalTrafficPolicy") == "Local"
    if found["external_policy_local"] and service_type is ServiceType.LOAD_BALANCER and spec.get(
            "healthCheckNodePort"):
        found["health_check_node_port"] = ctx.port(spec["healthCheckNodePort"], "spec.healthCheckNodePort")
    if service_type is ServiceType.LOAD_BALANCER:
        found["source_ranges"] = _source_ranges(ctx, obj)
    return found


def _source_ranges(ctx: _Ctx, obj: dict[str, Any]) -> tuple[IPNetwork, ...]:
    # spec.loadBalancerSourceRanges wins; the older annotation is read when it is empty (upstream)
    raw = (obj.get("spec") or {}).get("loadBalancerSourceRanges") or []
    field = "spec.loadBalancerSourceRanges"
    if not raw:
        annotation = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SOURCE_RANGES, "")
        raw = [part.strip() for part in annotation.split(",") if part.strip()]
        field = f"metadata.annotations[{ANNOTATION_SOURCE_RANGES}]"
    if not isinstance(raw, list):
        raise ctx.error(field, "must be a list of CIDRs")
    ranges: list[IPNetwork] = []
    for i, cidr in enumerate(raw):
        try:
            net = ip_network(str(cidr).strip(), strict=False)
        except ValueError:
            raise ctx.error(f"{field}[{i}]", f"not a CIDR: {cidr!r}") from None
        ranges.append(net)
    return tuple(ranges)


def _cluster_ips(ctx: _Ctx, spec: dict[str, Any]) -> tuple[IPAddress, ...]:
    """The Service's ClusterIPs, at most one per family, primary first; () when headless."""
    cluster_ips = spec.get("clusterIPs") or []
    primary = spec.get("clusterIP") or (cluster_ips[0] if cluster_ips else None)
    if not primary or primary == "None":
        return ()  # headless
    candidates = [("spec.clusterIP" if spec.get("clusterIP") else "spec.clusterIPs[0]", primary)]
    candidates += [(f"spec.clusterIPs[{i}]", raw) for i, raw in enumerate(cluster_ips)]
    found: dict[int, IPAddress] = {}
    for field, raw in candidates:
        ip = ctx.ip(raw, field)
        found.setdefault(ip.version, ip)
    return tuple(found.values())


def _load_balancer_ips(ctx: _Ctx, obj: dict[str, Any]) -> tuple[IPAddress, ...]:
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    ips: list[IPAddress] = []
    for field, entry in ctx.entries(ingress, "status.loadBalancer.ingress"):
        raw = entry.get("ip")
        # ipMode Proxy: the balancer proxies to the node, so traffic to this IP must not
        # be short-circuited on the node (upstream, KEP-1860). Hostname-only entries are
        # not addresses.
        if not raw or entry.get("ipMode") == "Proxy":
            continue
        ips.append(ctx.ip(raw, f"{field}.ip"))
    return tuple(ips)


def _trigger_time(obj: dict[str, Any]) -> float | None:
    """The slice's last-change-trigger-time annotation (RFC 3339) as epoch seconds; a
    missing or malformed one is no reason to skip the slice (upstream ignores it too)."""
    from datetime import datetime

    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_TRIGGER_TIME)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def parse_endpoint_slice(obj: dict[str, Any]) -> EndpointSlice | None:
    ctx = _Ctx("EndpointSlice", obj)
    labels = _labels(obj)
    service = labels.get(LABEL_SERVICE_NAME)
    if (
        obj.get("addressType") not in ADDRESS_FAMILIES
        or not service
        or LABEL_SERVICE_PROXY_NAME in labels
        or LABEL_HEADLESS in labels
    ):
        return None
    namespace, name = object_key(obj)
    family = ADDRESS_FAMILIES[obj["addressType"]]
    ports: list[SlicePort] = []
    for field, raw in ctx.entries(obj.get("ports"), "ports"):
        if raw.get("port") is None:
            continue  # upstream skips a port without a number
        ports.append(
            SlicePort(
                name=raw.get("name") or "",
                port=ctx.port(raw.get("port"), f"{field}.port"),
                protocol=ctx.protocol(raw.get("protocol"), f"{field}.protocol"),
            )
        )
    endpoints: list[SliceEndpoint] = []
    for field, raw in ctx.entries(obj.get("endpoints"), "endpoints"):
        conditions = raw.get("conditions") or {}
        # API semantics (and upstream's endpointslicecache): ready and serving nil -> true,
        # terminating nil -> false.
        ready = conditions.get("ready") is not False
        serving = conditions.get("serving") is not False
        terminating = conditions.get("terminating") is True
        raw_hints = raw.get("hints") or {}

        def hints(kind: str, raw_hints: dict[str, Any] = raw_hints) -> tuple[str, ...]:
            return tuple(sorted(h.get("name", "") for h in raw_hints.get(kind) or () if isinstance(h, dict)))

        for j, address in enumerate(raw.get("addresses") or ()):
            ip = ctx.ip(address, f"{field}.addresses[{j}]")
            if ip.version != family:
                raise ctx.error(f"{field}.addresses[{j}]", f"not an {obj['addressType']} address: {address!r}")
            endpoints.append(
                SliceEndpoint(
                    ip=ip,
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    node_name=raw.get("nodeName") or None,
                    zone=raw.get("zone") or None,
                    zone_hints=hints("forZones"),
                    node_hints=hints("forNodes"),
                )
            )
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service=ServiceName(namespace, service),
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        family=family,
        trigger_time=_trigger_time(obj),
    )


LABEL_ZONE = "topology.kubernetes.io/zone"


def parse_node(obj: dict[str, Any]) -> NodeInfo | None:
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise InvalidObject("Node", "/", "metadata.name", "missing name")
    return NodeInfo(name=name, zone=_labels(obj).get(LABEL_ZONE) or None)
