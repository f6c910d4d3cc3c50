"""The walk of one request through the lab, hop by hop, each node hop told by
`kproxy trace` run inside that node (so it is what the kernel's rules do, not what the
lab expects), then real requests to show where they landed."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from kproxy.backends.trace import TraceResult, format_trace
from kproxy.lab import namespaces as netns
from kproxy.lab.build import Lab
from kproxy.lab.spec import (
    CLIENT_IP,
    DNS_IP,
    ROLE_INGRESS,
    ROLE_WEB,
    LabNode,
    LabPod,
    find_service,
    lb_forwards,
    service_port_number,
)

REQUESTS = 6  # real requests shown per walk


@dataclass
class Hop:
    where: str  # "client", "lb", a node or a pod
    text: str
    trace: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def trace_on(lab: Lab, node: str, src: str, dst: str) -> dict[str, Any]:
    out = netns.in_ns(lab.ns(node), sys.executable, "-m", "kproxy", "trace", "--from", src, "--to", dst, "--json")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def where_is(lab: Lab, endpoint: str) -> str:
    ip = endpoint.rsplit(":", 1)[0]
    pod = next((p for p in lab.pods() if str(p.ip) == ip), None)
    return f"{pod.name} on {pod.node}" if pod else "not a lab pod"


def trace_hop(lab: Lab, node: str, src: str, dst: str, why: str) -> Hop:
    result = trace_on(lab, node, src, dst)
    text = format_trace(src, dst, TraceResult.from_json(result))
    notes = [f"{e} is {where_is(lab, e)}" for e in result.get("endpoints", [])]
    return Hop(node, f"{why}\n$ kproxy trace --from {src} --to {dst}   (in {node})\n{text.rstrip()}",
               result, notes)


def _node_of(lab: Lab, pod: LabPod) -> LabNode:
    return next(n for n in lab.nodes() if n.name == pod.node)


def ingress_walk(lab: Lab) -> tuple[str, list[Hop]]:
    """client -> load balancer -> NodePort -> ingress pod -> cluster DNS -> ClusterIP -> website pod."""
    m = lab.manifests()
    services = lab.services(m)
    pods = lab.pods()
    route = next((r for r in m.ingresses if r.tls), m.ingresses[0] if m.ingresses else None)
    controller = next((p for p in pods if p.role == ROLE_INGRESS), None)
    if route is None or controller is None:
        return "", [Hop("lab", "no Ingress and ingress controller in this lab: no ingress walk")]
    scheme, port = ("https", 443) if route.tls else ("http", 80)
    url = f"{scheme}://{route.host}/"
    forward = next((f for f in lb_forwards(services, lab.nodes(), pods)
                    if f.port == port and f.service.startswith(f"{controller.namespace}/")), None)
    hops = [Hop("client", f"{route.host} resolves to {forward.vip if forward else '?'} (the client's public "
                          "DNS: its /etc/hosts)")]
    if forward is None or not forward.targets:
        return url, [*hops, Hop("lb", "no load balancer forwards this port: the walk stops here")]
    node_ip, node_port = forward.targets[0]
    node = next(n for n in lab.nodes() if n.ip == node_ip)
    spread = ", ".join(f"{ip}:{p}" for ip, p in forward.targets)
    hops.append(Hop("lb", f"the L4 load balancer DNATs {forward.vip}:{port}/tcp round robin to the NodePorts "
                          f"{spread}, keeping the client's address; this walk follows {node.name}"))
    hop = trace_hop(lab, node.name, str(CLIENT_IP), f"{node_ip}:{node_port}",
                    f"{node.name} receives the connection on its NodePort")
    if controller.node != node.name:
        hop.notes.append(f"{controller.name} lives on {controller.node}: {node.name} routes it there "
                         f"({_node_of(lab, controller).pod_cidr} via {_node_of(lab, controller).ip})")
    hops.append(hop)
    svc = find_service(services, route.namespace, route.service)
    number = service_port_number(svc, route.port) if svc else None
    fqdn = f"{route.service}.{route.namespace}.svc.cluster.local"
    hops.append(Hop(controller.name, f"{controller.name} terminates TLS with the certificate of {route.host} "
                                     f"and routes Host {route.host} to {fqdn}:{number}"
                    if route.tls else f"{controller.name} routes Host {route.host} to {fqdn}:{number}"))
    hops.append(trace_hop(lab, controller.node, str(controller.ip), f"{DNS_IP}:53/udp",
                          f"{controller.name} asks cluster DNS for {fqdn}"))
    if svc and number:
        hops.append(trace_hop(lab, controller.node, str(controller.ip), f"{svc['spec']['clusterIP']}:{number}",
                              f"{controller.name} connects to the ClusterIP of {route.namespace}/{route.service}"))
    return url, hops


def service_walk(lab: Lab) -> tuple[str, str, list[Hop]]:
    """One website pod calling another Service by its cluster DNS name (website1 ->
    website2 in the default lab)."""
    services = lab.services()
    pods = [p for p in lab.pods() if p.role == ROLE_WEB]
    # Services whose pods are web pods (not the ingress controller's, not DNS)
    web = [s for s in services if (s.get("spec") or {}).get("clusterIP") not in (None, "None")
           and any(p.namespace == s["metadata"].get("namespace", "default") and _selects(s, p) for p in pods)]
    if not pods or not web:
        return "", "", [Hop("lab", "no web pods and Services: no service-to-service walk")]
    caller = pods[0]
    callee = next((s for s in web if not _selects(s, caller)), web[0])
    name = callee["metadata"]["name"]
    namespace = callee["metadata"].get("namespace", "default")
    port = callee["spec"]["ports"][0]["port"]
    fqdn = f"{name}.{namespace}.svc.cluster.local"
    url = f"http://{fqdn}" + (f":{port}/" if port != 80 else "/")
    answer = netns.in_ns(lab.ns(caller.name), "getent", "ahostsv4", fqdn, check=False).stdout.split()
    hops = [
        trace_hop(lab, caller.node, str(caller.ip), f"{DNS_IP}:53/udp",
                  f"{caller.name} ({caller.ip} on {caller.node}) looks up {fqdn} in cluster DNS"),
        Hop(caller.name, f"cluster DNS answers {answer[0] if answer else 'nothing'} "
                         f"(the ClusterIP of {namespace}/{name})"),
        trace_hop(lab, caller.node, str(caller.ip), f"{callee['spec']['clusterIP']}:{port}",
                  f"{caller.name} connects to {callee['spec']['clusterIP']}:{port}"),
    ]
    return caller.name, url, hops


def _selects(svc: dict[str, Any], pod: LabPod) -> bool:
    selector = (svc.get("spec") or {}).get("selector") or {}
    return bool(selector) and all(dict(pod.labels).get(k) == v for k, v in selector.items())


def real_requests(lab: Lab, where: str, url: str, count: int = REQUESTS) -> list[dict[str, Any]]:
    argv = [sys.executable, "-m", "kproxy.lab.request", url, "--count", str(count), "--json"]
    if url.startswith("https"):
        argv += ["--cacert", str(lab.certs / "bundle.pem")]
    out = netns.in_ns(lab.ns(where), *argv, check=False, timeout=10 + 4 * count).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def format_hops(title: str, hops: list[Hop]) -> str:
    lines = [f"=== {title}"]
    for n, hop in enumerate(hops, 1):
        first, *rest = hop.text.splitlines()
        lines.append(f"{n}. [{hop.where}] {first}")
        lines += [f"     {line}" for line in rest]
        lines += [f"     -> {note}" for note in hop.notes]
    return "\n".join(lines) + "\n"


def format_requests(where: str, url: str, results: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        if r.get("status") == 200:
            key = r["body"] + (f"  [via {r['ingress']}]" if r.get("ingress") else "")
        else:
            key = f"FAILED: {r.get('error') or r.get('status')}"
        counts[key] = counts.get(key, 0) + 1
    lines = [f"   real requests: GET {url} x{len(results)} from {where}"]
    lines += [f"     {n} x {body}" for body, n in sorted(counts.items())]
    return "\n".join(lines) + "\n"


def walks(lab: Lab) -> str:
    url, hops = ingress_walk(lab)
    text = format_hops(f"Walk 1: {url or 'ingress'} from the client", hops)
    if url:
        text += format_requests("the client", url, real_requests(lab, "client", url))
    caller, url2, hops2 = service_walk(lab)
    text += "\n" + format_hops(f"Walk 2: {caller} calls {url2}", hops2)
    if url2:
        text += format_requests(caller, url2, real_requests(lab, caller, url2))
    return text
