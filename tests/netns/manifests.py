"""Small Service / EndpointSlice builders for the namespace lab, and a manifests writer.

Plain dicts shaped as `kubectl get -o yaml` would print them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import yaml
from topology import Pod


def service(
    name: str,
    cluster_ip: str,
    ports: Iterable[dict],
    *,
    type: str = "ClusterIP",
    external_ips: Iterable[str] = (),
    lb_ips: Iterable[str] = (),
    namespace: str = "default",
) -> dict:
    spec: dict = {
        "type": type,
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ipFamilies": ["IPv4"],
        "ports": list(ports),
    }
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    if lb_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}
    return obj


def port(
    port: int, target: int = 8080, *, name: str = "", protocol: str = "TCP", node_port: int | None = None
) -> dict:
    p: dict = {"port": port, "targetPort": target, "protocol": protocol}
    if name:
        p["name"] = name
    if node_port is not None:
        p["nodePort"] = node_port
    return p


def endpoint(pod: Pod, *, ready: bool = True, serving: bool | None = None, terminating: bool = False) -> dict:
    return {
        "addresses": [pod.ip],
        "conditions": {
            "ready": ready,
            "serving": ready if serving is None else serving,
            "terminating": terminating,
        },
        "nodeName": pod.node,
        "targetRef": {"kind": "Pod", "name": pod.name, "namespace": "default"},
    }


def endpoint_slice(
    service_name: str,
    endpoints: Iterable[dict],
    ports: Iterable[dict],
    *,
    suffix: str = "abcde",
    namespace: str = "default",
) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{suffix}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": list(ports),
    }


def slice_port(port: int = 8080, *, name: str = "", protocol: str = "TCP") -> dict:
    return {"name": name, "port": port, "protocol": protocol}


def write_manifests(path: Path, objects: Iterable[dict]) -> None:
    """Replace the file atomically, so a watching agent never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
    os.replace(tmp, path)
