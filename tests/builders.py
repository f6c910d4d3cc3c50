"""Builders for Kubernetes Service and EndpointSlice JSON, as the API serves them.

Plain functions returning dicts, so tests can tweak any field afterwards::

    svc = service("web", cluster_ip="10.96.0.10", ports=[port(80, name="http")])
    sl = endpoint_slice("web", ["10.1.0.1", "10.1.0.2"], port=8080, port_name="http")
    parse_service(svc), parse_endpoint_slice(sl)

Defaults give a valid, minimal object: namespace "default", one TCP port 80, ClusterIP
10.96.0.1, a slice named "<service>-abc12" with ready endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def port(
    port: int = 80,
    *,
    name: str | None = None,
    protocol: str | None = "TCP",
    target_port: int | str | None = None,
    node_port: int | None = None,
) -> dict[str, Any]:
    """One entry of Service.spec.ports. Leave `name` None for an unnamed port."""
    out: dict[str, Any] = {"port": port}
    if name is not None:
        out["name"] = name
    if protocol is not None:
        out["protocol"] = protocol
    out["targetPort"] = target_port if target_port is not None else port
    if node_port is not None:
        out["nodePort"] = node_port
    return out


def service(
    name: str,
    ns: str = "default",
    *,
    cluster_ip: str | None = "10.96.0.1",
    ports: Sequence[dict[str, Any] | int] | None = None,
    type: str = "ClusterIP",
    node_port: int | None = None,
    external_ips: Iterable[str] = (),
    lb_ips: Iterable[str] = (),
    lb_ip_mode: str | None = None,
    labels: dict[str, str] | None = None,
    resource_version: str | None = None,
    **spec_extra: Any,
) -> dict[str, Any]:
    """A v1 Service.

    `ports` takes `port(...)` dicts or bare ints (TCP, unnamed when only one, else named
    "p<port>"); default one TCP port 80. `node_port` sets nodePort on the first port
    (type NodePort/LoadBalancer). `lb_ips` fill status.loadBalancer.ingress (each with
    ipMode `lb_ip_mode` when given). Extra keyword arguments land in `spec` as given
    (e.g. `externalTrafficPolicy="Local"`, `sessionAffinity="ClientIP"`).
    """
    raw_ports = list(ports) if ports is not None else [80]
    spec_ports = [
        p if isinstance(p, dict) else port(p, name=None if len(raw_ports) == 1 else f"p{p}")
        for p in raw_ports
    ]
    if node_port is not None and spec_ports:
        spec_ports[0] = {**spec_ports[0], "nodePort": node_port}
    spec: dict[str, Any] = {"type": type, "ports": spec_ports}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = [cluster_ip]
    external_ips = list(external_ips)
    if external_ips:
        spec["externalIPs"] = external_ips
    spec.update(spec_extra)
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        metadata["labels"] = dict(labels)
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    ingress = []
    for ip in lb_ips:
        entry: dict[str, Any] = {"ip": ip}
        if lb_ip_mode is not None:
            entry["ipMode"] = lb_ip_mode
        ingress.append(entry)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress} if ingress else {}},
    }


def endpoint(
    ip: str,
    *,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    node: str | None = None,
    zone: str | None = None,
) -> dict[str, Any]:
    """One entry of EndpointSlice.endpoints. A condition left None is omitted (nil),
    except that `serving` None with `ready` set copies `ready`, as the EndpointSlice
    controller does. For other shapes, edit the returned dict."""
    conditions: dict[str, bool] = {}
    if ready is not None:
        conditions["ready"] = ready
        conditions["serving"] = ready if serving is None else serving
    elif serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    out: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if node is not None:
        out["nodeName"] = node
    if zone is not None:
        out["zone"] = zone
    return out


def endpoint_slice(
    service: str,
    ips: Iterable[str | dict[str, Any]] = (),
    *,
    ns: str = "default",
    port: int | None = 80,
    port_name: str = "",
    protocol: str = "TCP",
    ports: Sequence[dict[str, Any]] | None = None,
    name: str | None = None,
    node: str | None = None,
    ready: bool | None = True,
    address_type: str = "IPv4",
    labels: dict[str, str] | None = None,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice for `service`.

    `ips` are addresses (each becomes `endpoint(ip, ready=ready, node=node)`) or
    ready-made `endpoint(...)` dicts. One port `port`/`port_name`/`protocol` unless
    `ports` (a list of {"name", "port", "protocol"} dicts) is given. `name` defaults to
    "<service>-abc12". `labels` are added to the kubernetes.io/service-name label.
    """
    endpoints = [
        ip if isinstance(ip, dict) else endpoint(ip, ready=ready, node=node) for ip in ips
    ]
    if ports is None:
        ports = [{"name": port_name, "port": port, "protocol": protocol}]
    metadata: dict[str, Any] = {
        "name": name or f"{service}-abc12",
        "namespace": ns,
        "labels": {"kubernetes.io/service-name": service, **(labels or {})},
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": address_type,
        "ports": list(ports),
        "endpoints": endpoints,
    }
