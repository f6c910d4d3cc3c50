"""Malformed objects: a wrong JSON type at each level of a Service or an EndpointSlice.

Each `Shape` breaks one field of a valid object (from tests/builders.py) and names the
field the warning must name. Shared by the tracker, API-source and namespace tests, so
every path is proven against the same shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.builders import endpoint, endpoint_slice, service

Obj = Any


@dataclass(frozen=True)
class Shape:
    id: str
    kind: str  # "Service" or "EndpointSlice"
    field: str  # what the warning names
    breaks: Callable[[dict[str, Any]], Obj]  # a valid object -> the malformed one
    named: bool = True  # False: the object has no usable name ("unnamed" in the warning)

    def make(self, name: str, ns: str = "default") -> Obj:
        good = good_service(name, ns) if self.kind == "Service" else good_slice(name, ns)
        return self.breaks(copy.deepcopy(good))


def good_service(name: str, ns: str = "default", cluster_ip: str = "10.96.0.200") -> dict[str, Any]:
    return service(name, ns, cluster_ip=cluster_ip, type="LoadBalancer", node_port=30200,
                   lb_ips=["203.0.113.200"], sessionAffinity="ClientIP")


def good_slice(name: str, ns: str = "default") -> dict[str, Any]:
    ep = endpoint("10.244.9.9", node="node9", zone="z1")
    ep["hints"] = {"forZones": [{"name": "z1"}]}
    return endpoint_slice(name, [ep], ns=ns, name=name)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], Obj]:
    """Replace the value at a dotted path (numbers index lists)."""

    def breaks(obj: dict[str, Any]) -> Obj:
        *parents, last = path.split(".")
        here: Any = obj
        for part in parents:
            here = here[int(part)] if part.isdigit() else here.setdefault(part, {})
        here[int(last) if last.isdigit() else last] = value
        return obj

    return breaks


SERVICE_SHAPES = [
    Shape("svc-object-is-a-list", "Service", "(object)", lambda o: [o], named=False),
    Shape("svc-metadata-is-a-list", "Service", "metadata", _set("metadata", ["x"]), named=False),
    Shape("svc-name-is-a-number", "Service", "metadata.name", _set("metadata.name", 7), named=False),
    Shape("svc-namespace-is-an-object", "Service", "metadata.namespace", _set("metadata.namespace", {"a": 1})),
    Shape("svc-labels-is-a-list", "Service", "metadata.labels", _set("metadata.labels", ["a"])),
    Shape("svc-spec-is-a-string", "Service", "spec", _set("spec", "oops")),
    Shape("svc-type-is-an-object", "Service", "spec.type", _set("spec.type", {"LoadBalancer": True})),
    Shape("svc-clusterIP-is-a-number", "Service", "spec.clusterIP", _set("spec.clusterIP", 10)),
    Shape("svc-clusterIPs-is-a-string", "Service", "spec.clusterIPs", _set("spec.clusterIPs", "10.96.0.200")),
    Shape("svc-ports-is-an-object", "Service", "spec.ports", _set("spec.ports", {"port": 80})),
    Shape("svc-port-entry-is-a-string", "Service", "spec.ports[0]", _set("spec.ports.0", "80/TCP")),
    Shape("svc-port-entry-is-null", "Service", "spec.ports[0]", _set("spec.ports.0", None)),
    Shape("svc-port-is-a-string", "Service", "spec.ports[0].port", _set("spec.ports.0.port", "80")),
    Shape("svc-port-name-is-a-number", "Service", "spec.ports[0].name", _set("spec.ports.0.name", 80)),
    Shape("svc-protocol-is-a-list", "Service", "spec.ports[0].protocol", _set("spec.ports.0.protocol", ["TCP"])),
    Shape("svc-nodePort-is-a-list", "Service", "spec.ports[0].nodePort", _set("spec.ports.0.nodePort", [30200])),
    Shape("svc-externalIPs-is-an-object", "Service", "spec.externalIPs", _set("spec.externalIPs", {"ip": "1.2.3.4"})),
    Shape("svc-externalIP-is-a-number", "Service", "spec.externalIPs[0]", _set("spec.externalIPs", [1])),
    Shape("svc-affinity-is-a-number", "Service", "spec.sessionAffinity", _set("spec.sessionAffinity", 1)),
    Shape("svc-affinity-config-is-a-string", "Service", "spec.sessionAffinityConfig",
          _set("spec.sessionAffinityConfig", "ClientIP")),
    Shape("svc-traffic-policy-is-a-list", "Service", "spec.externalTrafficPolicy",
          _set("spec.externalTrafficPolicy", ["Local"])),
    Shape("svc-source-ranges-is-a-string", "Service", "spec.loadBalancerSourceRanges",
          _set("spec.loadBalancerSourceRanges", "10.0.0.0/8")),
    Shape("svc-status-is-a-list", "Service", "status", _set("status", [])),
    Shape("svc-ingress-is-an-object", "Service", "status.loadBalancer.ingress",
          _set("status.loadBalancer", {"ingress": {"ip": "203.0.113.200"}})),
    Shape("svc-ingress-ip-is-a-number", "Service", "status.loadBalancer.ingress[0].ip",
          _set("status.loadBalancer", {"ingress": [{"ip": 3}]})),
]

SLICE_SHAPES = [
    Shape("slice-metadata-is-a-string", "EndpointSlice", "metadata", _set("metadata", "web"), named=False),
    Shape("slice-service-label-is-a-number", "EndpointSlice", "metadata.labels[kubernetes.io/service-name]",
          _set("metadata.labels", {"kubernetes.io/service-name": 5})),
    Shape("slice-addressType-is-a-list", "EndpointSlice", "addressType", _set("addressType", ["IPv4"])),
    Shape("slice-ports-is-an-object", "EndpointSlice", "ports", _set("ports", {"port": 80})),
    Shape("slice-port-is-a-string", "EndpointSlice", "ports[0].port", _set("ports.0.port", "http")),
    Shape("slice-endpoints-is-a-string", "EndpointSlice", "endpoints", _set("endpoints", "10.244.9.9")),
    Shape("slice-addresses-is-a-number", "EndpointSlice", "endpoints[0].addresses", _set("endpoints.0.addresses", 4)),
    Shape("slice-conditions-is-a-string", "EndpointSlice", "endpoints[0].conditions",
          _set("endpoints.0.conditions", "ready")),
    Shape("slice-ready-is-a-string", "EndpointSlice", "endpoints[0].conditions.ready",
          _set("endpoints.0.conditions.ready", "yes")),
    Shape("slice-hints-is-a-list", "EndpointSlice", "endpoints[0].hints", _set("endpoints.0.hints", [])),
    Shape("slice-zone-hint-is-a-string", "EndpointSlice", "endpoints[0].hints.forZones[0]",
          _set("endpoints.0.hints.forZones", ["z1"])),
    Shape("slice-nodeName-is-a-number", "EndpointSlice", "endpoints[0].nodeName", _set("endpoints.0.nodeName", 9)),
]

SHAPES = SERVICE_SHAPES + SLICE_SHAPES
