"""What a lab cluster is, computed from manifests. Pure: no I/O.

Input: Deployments, Services and Ingresses, as one would `kubectl apply` them. Output:
the nodes; the pods (placement and addresses, as a scheduler and an IPAM plugin would
choose); the Services completed as the API server and a cloud controller would (ClusterIPs,
NodePorts, load-balancer IPs); the EndpointSlices the endpoint-slice controller would
write; the cluster DNS records; the ingress controller's nginx configuration; and the rules
of the L4 load balancer in front of the nodes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

LAN = IPv4Network("10.1.1.0/24")
LAN_GATEWAY = IPv4Address("10.1.1.1")  # the load balancer's address on the node network
CLUSTER_CIDR = ip_network("10.244.0.0/16")
SERVICE_CIDR = ip_network("10.96.0.0/16")
DNS_IP = IPv4Address("10.96.0.10")
FIRST_CLUSTER_IP = IPv4Address("10.96.0.100")
PUBLIC_NET = ip_network("203.0.113.0/24")  # TEST-NET-3: the load balancer's public addresses
FIRST_PUBLIC_IP = IPv4Address("203.0.113.10")
CLIENT_NET = ip_network("198.51.100.0/24")  # TEST-NET-2: "the internet" the client sits on
LB_CLIENT_SIDE = IPv4Address("198.51.100.1")
CLIENT_IP = IPv4Address("198.51.100.100")
CLUSTER_DOMAIN = "cluster.local"
NODE_PORT_RANGE = range(30000, 32768)
MAX_NODES = 20
ZONES = ("zone-a", "zone-b", "zone-c")

# What a pod runs, chosen from its image (the lab runs no containers).
ROLE_WEB = "web"  # the lab's echo server on every containerPort: answers with pod and node
ROLE_INGRESS = "ingress"  # nginx, configured from the Ingress objects
ROLE_DNS = "dns"  # dnsmasq, answering <svc>.<ns>.svc.cluster.local


class LabError(ValueError):
    """A manifest the lab cannot use; the message names the object."""


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    namespace: str
    name: str
    replicas: int
    labels: tuple[tuple[str, str], ...]
    ports: tuple[ContainerPort, ...]
    role: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class LabNode:
    name: str
    ip: IPv4Address
    pod_cidr: IPv4Network
    gateway: IPv4Address  # the node's address on its pod bridge
    zone: str


@dataclass(frozen=True, slots=True)
class LabPod:
    name: str
    namespace: str
    workload: str  # Workload.key
    node: str
    ip: IPv4Address
    index: int  # unique in the lab: names the node-side veth
    role: str
    ports: tuple[ContainerPort, ...]
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class IngressRoute:
    host: str
    path: str
    namespace: str
    service: str
    port: int | str  # the Service port's number or name
    tls: bool


@dataclass(frozen=True, slots=True)
class LbForward:
    """One port of a LoadBalancer Service on the lab's L4 load balancer."""

    service: str  # namespace/name:port
    vip: IPv4Address
    port: int
    protocol: str
    targets: tuple[tuple[IPv4Address, int], ...]  # (node IP, NodePort), round robin


@dataclass(frozen=True, slots=True)
class Manifests:
    workloads: tuple[Workload, ...]
    services: tuple[dict[str, Any], ...]
    ingresses: tuple[IngressRoute, ...]
    warnings: tuple[str, ...]


def lab_nodes(count: int) -> tuple[LabNode, ...]:
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"--nodes must be between 1 and {MAX_NODES}, not {count}")
    return tuple(
        LabNode(name=f"node{i}", ip=LAN.network_address + 9 + i, pod_cidr=IPv4Network(f"10.244.{i}.0/24"),
                gateway=IPv4Address(f"10.244.{i}.1"), zone=ZONES[(i - 1) % len(ZONES)])
        for i in range(1, count + 1)
    )


# -- reading manifests ------------------------------------------------------------------------

def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def role_of(image: str) -> str:
    if "ingress-nginx" in image or image.split("/")[-1].startswith("nginx-ingress"):
        return ROLE_INGRESS
    if "coredns" in image or "dnsmasq" in image:
        return ROLE_DNS
    return ROLE_WEB


def parse_workload(obj: dict[str, Any]) -> Workload:
    namespace, name = _key(obj)
    where = f"Deployment {namespace}/{name}"
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        raise LabError(f"{where}: spec.replicas: not a count: {replicas!r}")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        raise LabError(f"{where}: spec.template.spec.containers: none")
    ports = []
    for c in containers:
        for p in c.get("ports") or []:
            number = p.get("containerPort")
            if not isinstance(number, int) or not 0 < number < 65536:
                raise LabError(f"{where}: containerPort: not a port: {number!r}")
            protocol = p.get("protocol", "TCP")
            if protocol not in ("TCP", "UDP"):
                raise LabError(f"{where}: protocol {protocol}: the lab's pods serve TCP and UDP only")
            ports.append(ContainerPort(number, protocol, p.get("name", "")))
    return Workload(namespace=namespace, name=name, replicas=replicas,
                    labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                    ports=tuple(ports), role=role_of(str(containers[0].get("image", ""))))


def parse_ingress(obj: dict[str, Any]) -> list[IngressRoute]:
    namespace, name = _key(obj)
    spec = obj.get("spec") or {}
    tls_hosts = {h for t in spec.get("tls") or [] for h in t.get("hosts") or []}
    routes = []
    for rule in spec.get("rules") or []:
        host = rule.get("host")
        if not host:
            raise LabError(f"Ingress {namespace}/{name}: rules[].host: the lab routes by host only")
        for path in (rule.get("http") or {}).get("paths") or []:
            backend = (path.get("backend") or {}).get("service") or {}
            port = backend.get("port") or {}
            number = port.get("number", port.get("name"))
            if not backend.get("name") or number is None:
                raise LabError(f"Ingress {namespace}/{name}: {host}: backend.service needs name and port")
            routes.append(IngressRoute(host=host, path=path.get("path") or "/", namespace=namespace,
                                       service=backend["name"], port=number, tls=host in tls_hosts))
    return routes


def read_manifests(objects: Iterable[dict[str, Any]]) -> Manifests:
    """Deployments, Services and Ingresses; anything malformed is left out with a warning."""
    workloads: list[Workload] = []
    services: list[dict[str, Any]] = []
    routes: list[IngressRoute] = []
    warnings: list[str] = []
    for obj in objects:
        kind = obj.get("kind")
        try:
            if kind == "Deployment":
                workloads.append(parse_workload(obj))
            elif kind == "Service":
                if not _key(obj)[1]:
                    raise LabError("Service without metadata.name")
                services.append(copy.deepcopy(obj))
            elif kind == "Ingress":
                routes.extend(parse_ingress(obj))
            else:
                warnings.append(f"{kind} {'/'.join(_key(obj))}: not used by the lab (it reads "
                                "Deployments, Services and Ingresses)")
        except LabError as err:
            warnings.append(str(err))
    return Manifests(tuple(workloads), tuple(services), tuple(routes), tuple(warnings))


# -- scheduling and addresses -----------------------------------------------------------------

def place(workloads: Sequence[Workload], existing: Sequence[LabPod], nodes: Sequence[LabNode]) -> tuple[LabPod, ...]:
    """Pods for every workload at its replica count. Existing pods stay where they are (a
    scale-down removes the newest first); new ones go to the node with the fewest pods of
    their workload, then the fewest pods, so replicas spread over nodes."""
    by_workload: dict[str, list[LabPod]] = {}
    for pod in existing:
        by_workload.setdefault(pod.workload, []).append(pod)
    kept: list[LabPod] = []
    for wl in workloads:
        pods = sorted(by_workload.get(wl.key, []), key=lambda p: p.index)[:wl.replicas]
        kept.extend(replace(p, ports=wl.ports, labels=wl.labels, role=wl.role) for p in pods)
    result = list(kept)
    next_index = max((p.index for p in existing), default=0) + 1
    for wl in workloads:
        mine = [p for p in result if p.workload == wl.key]
        for _ in range(wl.replicas - len(mine)):
            node = min(nodes, key=lambda n: (sum(p.node == n.name for p in mine),
                                             sum(p.node == n.name for p in result)))
            # pod names are unique in the whole lab: each names a namespace
            taken = {p.name for p in result} | {p.name for p in existing}
            number = next(i for i in range(1, len(taken) + 2) if f"{wl.name}-{i}" not in taken)
            pod = LabPod(name=f"{wl.name}-{number}", namespace=wl.namespace, workload=wl.key, node=node.name,
                         ip=_free_ip(node, result), index=next_index, role=wl.role, ports=wl.ports,
                         labels=wl.labels)
            next_index += 1
            mine.append(pod)
            result.append(pod)
    return tuple(result)


def pod_mac(ip: IPv4Address) -> str:
    """A pod's MAC address, derived from its IP (as Docker does): a pod that reuses the IP of
    one just removed (scale to 0 and back) also has its MAC, so no neighbour cache on the way
    keeps sending to a MAC that is gone."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _free_ip(node: LabNode, pods: Sequence[LabPod]) -> IPv4Address:
    used = {p.ip for p in pods}
    for offset in range(10, node.pod_cidr.num_addresses - 1):
        candidate = node.pod_cidr.network_address + offset
        if candidate not in used:
            return candidate
    raise LabError(f"{node.name}: pod subnet {node.pod_cidr} is full")


# -- what the API server and the controllers would write --------------------------------------

def _service_type(svc: dict[str, Any]) -> str:
    return (svc.get("spec") or {}).get("type") or "ClusterIP"


def complete_services(services: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Allocate what is missing, as the API server (ClusterIP, NodePorts) and a cloud
    controller (load-balancer IP) would; explicit values are kept."""
    out = [copy.deepcopy(s) for s in services]
    specs = [s.setdefault("spec", {}) for s in out]
    used_ips = {ip_address(s["clusterIP"]) for s in specs if s.get("clusterIP") not in (None, "", "None")}
    used_ports = {p["nodePort"] for s in specs for p in s.get("ports") or [] if p.get("nodePort")}
    used_vips = {ip_address(i["ip"]) for s in out
                 for i in ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [] if i.get("ip")}
    free_ips = (FIRST_CLUSTER_IP + i for i in range(SERVICE_CIDR.num_addresses) if FIRST_CLUSTER_IP + i not in used_ips)
    free_ports = (p for p in NODE_PORT_RANGE if p not in used_ports)
    free_vips = (FIRST_PUBLIC_IP + i for i in range(200) if FIRST_PUBLIC_IP + i not in used_vips)
    for svc, spec in sorted(zip(out, specs, strict=True), key=lambda pair: _key(pair[0])):
        if not spec.get("clusterIP"):
            spec["clusterIP"] = str(next(free_ips))
        if spec["clusterIP"] != "None":
            spec["clusterIPs"] = [spec["clusterIP"]]
        kind = _service_type(svc)
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            if kind in ("NodePort", "LoadBalancer") and not port.get("nodePort"):
                port["nodePort"] = next(free_ports)
        if kind == "LoadBalancer":
            lb = svc.setdefault("status", {}).setdefault("loadBalancer", {})
            if not lb.get("ingress"):
                lb["ingress"] = [{"ip": str(next(free_vips)), "ipMode": "VIP"}]
    return out


def _matches(selector: dict[str, str], pod: LabPod) -> bool:
    labels = dict(pod.labels)
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _target_port(svc_port: dict[str, Any], pod: LabPod) -> int | None:
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    named = [c.port for c in pod.ports if c.name == target and c.protocol == svc_port.get("protocol", "TCP")]
    return named[0] if named else None


def endpoint_slices(services: Sequence[dict[str, Any]], pods: Sequence[LabPod],
                    nodes: Sequence[LabNode], terminating: Sequence[LabPod] = ()) -> list[dict[str, Any]]:
    """One slice per Service with a selector and per distinct resolved port set (named
    target ports can differ between pods), as the endpoint-slice controller writes them."""
    zone = {n.name: n.zone for n in nodes}
    slices = []
    for svc in services:
        namespace, name = _key(svc)
        spec = svc.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector:
            continue  # no selector: the user manages the endpoints
        groups: dict[tuple[tuple[str, int, str], ...], list[tuple[LabPod, bool]]] = {}
        members = [(p, True) for p in pods] + [(p, False) for p in terminating]
        for pod, ready in members:
            if pod.namespace != namespace or not _matches(selector, pod):
                continue
            wanted = [(p.get("name", ""), _target_port(p, pod), p.get("protocol", "TCP"))
                      for p in spec.get("ports") or []]
            resolved = tuple((pname, port, proto) for pname, port, proto in wanted if port is not None)
            if len(resolved) < len(wanted):
                continue  # a named targetPort this pod does not have
            groups.setdefault(resolved, []).append((pod, ready))
        for n, (ports, group) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
            slices.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": f"{name}-{n}", "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": name}},
                "ports": [{"name": pname, "port": port, "protocol": proto} for pname, port, proto in ports],
                "endpoints": [{
                    "addresses": [str(pod.ip)], "nodeName": pod.node, "zone": zone.get(pod.node),
                    "conditions": {"ready": ready, "serving": True, "terminating": not ready},
                    "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
                } for pod, ready in sorted(group, key=lambda pr: pr[0].index)],
            })
    return slices


def cluster_ip_endpoints(slices: Sequence[dict[str, Any]]) -> set[str]:
    """The "ip:port" endpoints every node's ClusterIP rules should hold for these slices:
    per Service port its ready endpoints, or, when none is ready, its serving-and-terminating
    ones (upstream's terminating fallback, which kproxy's planner applies)."""
    by_port: dict[tuple[str, str, str], list[tuple[dict[str, Any], int]]] = {}
    for s in slices:
        meta = s["metadata"]
        service = (meta.get("namespace", "default"), meta["labels"]["kubernetes.io/service-name"])
        for p in s["ports"]:
            by_port.setdefault((*service, p.get("name", "")), []).extend((e, p["port"]) for e in s["endpoints"])
    wanted = set()
    for members in by_port.values():
        ready = [(e, port) for e, port in members if e["conditions"].get("ready")]
        serving = ready or [(e, port) for e, port in members
                            if e["conditions"].get("serving") and e["conditions"].get("terminating")]
        wanted |= {f"{e['addresses'][0]}:{port}" for e, port in serving}
    return wanted


def node_objects(nodes: Sequence[LabNode]) -> list[dict[str, Any]]:
    return [{
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": n.name, "labels": {"topology.kubernetes.io/zone": n.zone,
                                                "kubernetes.io/hostname": n.name}},
        "spec": {"podCIDR": str(n.pod_cidr), "podCIDRs": [str(n.pod_cidr)]},
        "status": {"addresses": [{"type": "InternalIP", "address": str(n.ip)},
                                 {"type": "Hostname", "address": n.name}]},
    } for n in nodes]


def dns_records(services: Sequence[dict[str, Any]], pods: Sequence[LabPod]) -> list[tuple[str, str]]:
    """(name, address) pairs as cluster DNS answers them: a Service's ClusterIP, or for a
    headless Service the addresses of its pods."""
    records = []
    for svc in services:
        namespace, name = _key(svc)
        spec = svc.get("spec") or {}
        fqdn = f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"
        if spec.get("clusterIP") == "None":
            selector = spec.get("selector") or {}
            records += [(fqdn, str(p.ip)) for p in pods if p.namespace == namespace and _matches(selector, p)]
        elif spec.get("clusterIP"):
            records.append((fqdn, spec["clusterIP"]))
    return records


def resolv_conf(namespace: str) -> str:
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"nameserver {DNS_IP}\nsearch {search}\noptions ndots:5\n"


def service_port_number(svc: dict[str, Any], port: int | str) -> int | None:
    for p in (svc.get("spec") or {}).get("ports") or []:
        if port in (p.get("port"), p.get("name")):
            return int(p["port"])
    return None


def find_service(services: Sequence[dict[str, Any]], namespace: str, name: str) -> dict[str, Any] | None:
    return next((s for s in services if _key(s) == (namespace, name)), None)


def nginx_config(routes: Sequence[IngressRoute], services: Sequence[dict[str, Any]], pod: LabPod,
                 cert_dir: str, run_dir: str) -> str:
    """The ingress controller's configuration: TLS per host (its own self-signed
    certificate), routing by Host to <service>.<namespace>.svc.cluster.local, resolved
    through cluster DNS at request time, as a real ingress controller reaches a Service."""
    hosts: dict[str, list[IngressRoute]] = {}
    for route in routes:
        hosts.setdefault(route.host, []).append(route)
    servers = []
    for host, host_routes in sorted(hosts.items()):
        locations = []
        for route in sorted(host_routes, key=lambda r: -len(r.path)):
            svc = find_service(services, route.namespace, route.service)
            number = service_port_number(svc, route.port) if svc else None
            if number is None:
                locations.append(f"        location {route.path} {{ return 503 \"no such Service port\\n\"; }}")
                continue
            upstream = f"{route.service}.{route.namespace}.svc.{CLUSTER_DOMAIN}:{number}"
            locations.append(
                f"        location {route.path} {{\n"
                f"            set $upstream {upstream};\n"
                f"            proxy_pass http://$upstream;\n"
                f"        }}")
        tls = any(r.tls for r in host_routes)
        listen = "        listen 80;\n" + (
            f"        listen 443 ssl;\n        ssl_certificate {cert_dir}/{host}.crt;\n"
            f"        ssl_certificate_key {cert_dir}/{host}.key;\n" if tls else "")
        servers.append(f"    server {{\n{listen}        server_name {host};\n" + "\n".join(locations) + "\n    }")
    return f"""# written by kproxy lab for {pod.name} on {pod.node}
user root;  # the lab's files may be readable by root only
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {run_dir}/access.log;
    client_body_temp_path {run_dir}/body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    resolver {DNS_IP} valid=5s ipv6=off;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    add_header X-Lab-Ingress "{pod.name} on {pod.node}" always;
    server {{
        listen 80 default_server;
        return 404 "no Ingress for this host\\n";
    }}
{chr(10).join(servers)}
}}
"""


def lb_forwards(services: Sequence[dict[str, Any]], nodes: Sequence[LabNode],
                pods: Sequence[LabPod]) -> list[LbForward]:
    """Every port of every LoadBalancer Service, spread over the nodes' NodePorts. With
    externalTrafficPolicy Local only nodes with a local endpoint get traffic: what a cloud
    balancer's health checks (healthCheckNodePort) converge to."""
    forwards = []
    for svc in services:
        if _service_type(svc) != "LoadBalancer":
            continue
        namespace, name = _key(svc)
        spec = svc.get("spec") or {}
        targets = list(nodes)
        if spec.get("externalTrafficPolicy") == "Local":
            selector = spec.get("selector") or {}
            local = {p.node for p in pods if p.namespace == namespace and _matches(selector, p)}
            targets = [n for n in nodes if n.name in local]
        for ingress in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            for port in spec.get("ports") or []:
                forwards.append(LbForward(
                    service=f"{namespace}/{name}:{port.get('name') or port['port']}",
                    vip=IPv4Address(ingress["ip"]), port=int(port["port"]),
                    protocol=port.get("protocol", "TCP").lower(),
                    targets=tuple((n.ip, int(port["nodePort"])) for n in targets)))
    return forwards


def lb_ruleset(forwards: Sequence[LbForward]) -> str:
    """nftables for the load balancer's namespace: DNAT each public address and port round
    robin to a node's NodePort, keeping the client's address (as an L4 cloud balancer in
    pass-through mode does); replies come back because the nodes route through it."""
    rules = []
    for f in forwards:
        if f.targets:
            spread = ", ".join(f"{i} : {ip} . {port}" for i, (ip, port) in enumerate(f.targets))
            rules.append(f"        ip daddr {f.vip} {f.protocol} dport {f.port} dnat ip to numgen inc mod "
                         f"{len(f.targets)} map {{ {spread} }} comment \"{f.service}\"")
        else:
            rules.append(f"        ip daddr {f.vip} {f.protocol} dport {f.port} reject "
                         f"comment \"{f.service}: no healthy node\"")
    body = "\n".join(rules)
    return ("table ip kproxy-lab-lb\ndelete table ip kproxy-lab-lb\n"
            "table ip kproxy-lab-lb {\n    chain prerouting {\n"
            "        type nat hook prerouting priority dstnat; policy accept;\n"
            f"{body}\n    }}\n}}\n")


def public_hosts(routes: Sequence[IngressRoute], services: Sequence[dict[str, Any]],
                 pods: Sequence[LabPod]) -> list[tuple[str, str]]:
    """(host, public address) for the client's /etc/hosts: every Ingress host at the
    load-balancer address of the ingress controller's Service."""
    controllers = {p.namespace for p in pods if p.role == ROLE_INGRESS}
    vips = [i["ip"] for s in services if _service_type(s) == "LoadBalancer" and _key(s)[0] in controllers
            for i in ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
    return [(host, vips[0]) for host in sorted({r.host for r in routes})] if vips else []
