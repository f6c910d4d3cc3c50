"""Bring a lab up, change it, take it down.

    client 198.51.100.100 ── lb (L4 load balancer: 203.0.113.x -> NodePorts; the nodes' router)
                                 10.1.1.1
                                    │ lan (a bridge)
               ┌────────────────────┼────────────────────┐
    node1 10.1.1.10            node2 10.1.1.11       node3 10.1.1.12      one kproxy agent each
    cbr0 10.244.1.1/24         cbr0 10.244.2.1/24    cbr0 10.244.3.1/24   pods on the bridge
    routes to the other nodes' pod subnets via their node addresses

Everything lives under RUN_ROOT/<lab name> (state, the manifests the agents watch, pod
files, certificates, logs) and in namespaces named <lab name>-*. The state file records
each namespace before it is created, so `down` (and `up` after a crash) finds everything;
it removes only what the state file records. Another namespace that happens to carry the
lab's prefix is someone else's: it is named, never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import yaml

from kproxy.lab import namespaces as netns
from kproxy.lab.spec import (
    CLIENT_IP,
    CLIENT_NET,
    CLUSTER_CIDR,
    LAN,
    LAN_GATEWAY,
    LB_CLIENT_SIDE,
    ROLE_DNS,
    ROLE_INGRESS,
    SERVICE_CIDR,
    ContainerPort,
    LabError,
    LabNode,
    LabPod,
    Manifests,
    Workload,
    cluster_ip_endpoints,
    complete_services,
    dns_records,
    endpoint_slices,
    lab_nodes,
    lb_forwards,
    lb_ruleset,
    nginx_config,
    node_objects,
    place,
    pod_mac,
    public_hosts,
    read_manifests,
    resolv_conf,
)
from kproxy.sources.manifests import ManifestError, load_manifests, manifest_files

RUN_ROOT = Path(os.environ.get("KPROXY_LAB_DIR", "/run/kproxy-lab"))
DEFAULT_NAME = "kplab"
DEFAULTS = Path(__file__).resolve().parent / "default"
ROUTER_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                  "net.ipv4.conf.default.rp_filter": "0", "net.ipv4.conf.all.send_redirects": "0",
                  "net.ipv4.conf.default.send_redirects": "0"}

PROGRESS_AFTER_S = 2.0  # a wait for the rules longer than this says which nodes it waits for
Say = Callable[[str], None]


@dataclass
class LabState:
    name: str
    nodes: int
    proxy_mode: str
    namespaces: list[str] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)  # `lab scale` overrides
    pods: list[dict[str, Any]] = field(default_factory=list)


def pod_to_json(pod: LabPod) -> dict[str, Any]:
    data = asdict(pod)
    data["ip"] = str(pod.ip)
    return data


def pod_from_json(data: dict[str, Any]) -> LabPod:
    return LabPod(**{**data, "ip": IPv4Address(data["ip"]),
                     "ports": tuple(ContainerPort(**p) for p in data["ports"]),
                     "labels": tuple((k, v) for k, v in data["labels"])})


def load_objects(path: Path) -> list[dict[str, Any]]:
    """Every object in a manifest file or folder (kproxy's own loader), errors as LabError."""
    try:
        return load_manifests(path, kinds=None)
    except ManifestError as err:
        raise LabError(str(err)) from None


def write_atomic(path: Path, text: str) -> None:
    """Readers (the agents' manifest watch, dnsmasq's hostsdir) never see half a file."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


class Lab:
    def __init__(self, name: str = DEFAULT_NAME, root: Path = RUN_ROOT) -> None:
        if not name.replace("-", "").isalnum() or len(name) > 20:
            raise LabError(f"lab name {name!r}: letters, digits and '-', at most 20")
        self.name = name
        self.dir = root / name
        self.state_file = self.dir / "state.json"
        self.input_dir = self.dir / "input"  # the Deployments/Services/Ingresses of this lab
        self.agent_dir = self.dir / "manifests"  # what the agents watch
        self.dns_dir = self.dir / "dns"
        self.certs = self.dir / "certs"
        self.logs = self.dir / "logs"
        self.state: LabState | None = None
        self._manifests: Manifests | None = None

    # -- names and the model -------------------------------------------------------------------
    def ns(self, short: str) -> str:
        return f"{self.name}-{short}"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState:
        try:
            self.state = LabState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab {self.name!r} is up (kproxy lab up)") from None
        return self.state

    def save(self) -> None:
        assert self.state is not None
        write_atomic(self.state_file, json.dumps(asdict(self.state), indent=1))

    def manifests(self) -> Manifests:
        if self._manifests is None:  # the lab's input never changes once it is up
            self._manifests = read_manifests(load_objects(self.input_dir))
        return self._manifests

    def nodes(self) -> tuple[LabNode, ...]:
        assert self.state is not None
        return lab_nodes(self.state.nodes)

    def pods(self) -> tuple[LabPod, ...]:
        assert self.state is not None
        return tuple(pod_from_json(p) for p in self.state.pods)

    def services(self, m: Manifests | None = None) -> list[dict[str, Any]]:
        return complete_services((m or self.manifests()).services)

    def workloads(self, m: Manifests) -> list[Workload]:
        assert self.state is not None
        return [replace(w, replicas=self.state.replicas.get(w.key, w.replicas)) for w in m.workloads]

    def pod_dir(self, pod: LabPod) -> Path:
        return self.dir / "pods" / pod.name

    def find(self, name: str) -> str:
        """The namespace of a node, a pod, or lb/client/lan, by its short name."""
        state = self.load()
        shorts = {"lb", "client", "lan", *(n.name for n in self.nodes()), *(p["name"] for p in state.pods)}
        if name not in shorts:
            raise LabError(f"no node or pod {name!r} in lab {self.name} (kproxy lab status lists them)")
        return self.ns(name)

    # -- up ----------------------------------------------------------------------------------------
    def up(self, nodes: int, manifests: Path | None, proxy_mode: str, say: Say) -> None:
        check_tools()
        if self.exists():
            say(f"removing the leftovers of lab {self.name}")
            self.down(say=lambda _m: None)
        lab_nodes(nodes)  # validates the count before anything is made
        files = [DEFAULTS / "cluster-dns.yaml"]
        if manifests is None:
            files.append(DEFAULTS / "websites.yaml")
        user = self._user_files(manifests) if manifests is not None else []
        own = read_manifests(load_objects(manifests)) if manifests is not None else None
        if own and any(s["metadata"].get("name") == "kube-dns" for s in own.services):
            files = []  # the user brings their own cluster DNS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.input_dir.mkdir()
        for n, path in enumerate([*files, *user]):
            shutil.copy(path, self.input_dir / f"{n:02d}-{path.name}")
        self.state = LabState(name=self.name, nodes=nodes, proxy_mode=proxy_mode)
        self.save()
        m = self.manifests()
        for warning in m.warnings:
            say(f"warning: {warning}")
        pods = place(self.workloads(m), (), self.nodes())
        self._refuse_taken_names(["lan", "lb", "client", *(n.name for n in self.nodes()), *(p.name for p in pods)])
        if others := self.others():
            say(f"note: {', '.join(others)} carry this lab's prefix but are not this lab's; left alone")
        say(f"building {nodes} node(s), a load balancer and a client (namespaces {self.name}-*)")
        self._network()
        say(f"starting {len(pods)} pod(s)")
        self._certificates(m)
        for pod in pods:
            self._add_pod(pod)
        services = self.services(m)
        self._write_cluster(m, services, pods)
        for pod in pods:
            self._start_pod(pod, m, services)
        self._wait_listening(pods)
        say(f"starting one kproxy agent per node ({proxy_mode} mode)")
        for node in self.nodes():
            self._start_agent(node)
        self.wait_rules(services, pods, say)

    @staticmethod
    def _user_files(path: Path) -> list[Path]:
        try:
            return manifest_files(path)
        except ManifestError as err:
            raise LabError(str(err)) from None

    def recorded(self) -> list[str]:
        """The namespaces the state file says this lab made (or was about to make)."""
        try:
            return list(json.loads(self.state_file.read_text()).get("namespaces", []))
        except (OSError, ValueError, AttributeError):
            return []  # no lab, or an unreadable record: nothing is known to be ours

    def others(self) -> list[str]:
        """Namespaces that carry this lab's prefix but that it did not make: not ours to touch."""
        recorded = set(self.recorded())
        return sorted(ns for ns in netns.existing() if ns.startswith(f"{self.name}-") and ns not in recorded)

    def _refuse_taken_names(self, shorts: Iterable[str]) -> None:
        taken = sorted(set(netns.existing()) & {self.ns(s) for s in shorts})
        if taken:
            raise LabError(f"namespace(s) {', '.join(taken)} exist but are not lab {self.name}'s; "
                           f"not touching them (choose another --name, or remove them if they are yours)")

    def _add_ns(self, short: str) -> str:
        """Record, then create: a crash in between still leaves a record for `down`. A name
        someone else holds is refused before it is recorded, so `down` never removes it."""
        assert self.state is not None
        self._refuse_taken_names([short])
        name = self.ns(short)
        self.state.namespaces.append(name)
        self.save()
        try:
            netns.add(name)
        except netns.CommandFailed:
            self.state.namespaces.remove(name)  # not made by us (it may have appeared meanwhile)
            self.save()
            raise
        return name

    def _network(self) -> None:
        lan = self._add_ns("lan")
        netns.bridge(lan, "br0")
        lb = self._add_ns("lb")
        netns.sysctls(lb, ROUTER_SYSCTLS)
        netns.veth(lan, "p-lb", lb, "eth0")
        netns.ip(lan, "link", "set", "p-lb", "master", "br0")
        netns.ip(lb, "addr", "add", f"{LAN_GATEWAY}/{LAN.prefixlen}", "dev", "eth0")
        client = self._add_ns("client")
        netns.veth(lb, "pub0", client, "eth0")
        netns.ip(lb, "addr", "add", f"{LB_CLIENT_SIDE}/{CLIENT_NET.prefixlen}", "dev", "pub0")
        netns.ip(client, "addr", "add", f"{CLIENT_IP}/{CLIENT_NET.prefixlen}", "dev", "eth0")
        netns.ip(client, "route", "add", "default", "via", str(LB_CLIENT_SIDE))
        nodes = self.nodes()
        for node in nodes:
            ns = self._add_ns(node.name)
            netns.sysctls(ns, ROUTER_SYSCTLS)
            netns.veth(lan, f"p-{node.name}", ns, "eth0")
            netns.ip(lan, "link", "set", f"p-{node.name}", "master", "br0")
            netns.ip(ns, "addr", "add", f"{node.ip}/{LAN.prefixlen}", "dev", "eth0")
            netns.bridge(ns, "cbr0", f"{node.gateway}/{node.pod_cidr.prefixlen}")
            netns.ip(ns, "route", "add", "default", "via", str(LAN_GATEWAY))
        for node in nodes:
            for other in nodes:
                if other is not node:
                    netns.ip(self.ns(node.name), "route", "add", str(other.pod_cidr), "via", str(other.ip))

    def _certificates(self, m: Manifests) -> None:
        """One self-signed certificate per TLS host; clients trust their bundle."""
        self.certs.mkdir(exist_ok=True)
        bundle = []
        for host in sorted({r.host for r in m.ingresses if r.tls}):
            key, crt = self.certs / f"{host}.key", self.certs / f"{host}.crt"
            netns.sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-days", "30", "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}",
                     "-keyout", str(key), "-out", str(crt))
            bundle.append(crt.read_text())
        (self.certs / "bundle.pem").write_text("".join(bundle))

    def _add_pod(self, pod: LabPod) -> None:
        ns = self._add_ns(pod.name)
        node_ns = self.ns(pod.node)
        node = next(n for n in self.nodes() if n.name == pod.node)
        veth = f"veth{pod.index}"
        netns.veth(node_ns, veth, ns, "eth0")
        netns.ip(ns, "link", "set", "eth0", "address", pod_mac(pod.ip))
        netns.ip(node_ns, "link", "set", veth, "master", "cbr0")
        netns.sh("ip", "netns", "exec", node_ns, "bridge", "link", "set", "dev", veth, "hairpin", "on")
        netns.ip(ns, "addr", "add", f"{pod.ip}/{node.pod_cidr.prefixlen}", "dev", "eth0")
        netns.ip(ns, "route", "add", "default", "via", str(node.gateway))
        netns.write_etc(ns, "resolv.conf", resolv_conf(pod.namespace))
        netns.write_etc(ns, "hostname", f"{pod.name}\n")
        assert self.state is not None
        self.state.pods = [p for p in self.state.pods if p["name"] != pod.name] + [pod_to_json(pod)]
        self.save()

    def _start_pod(self, pod: LabPod, m: Manifests, services: list[dict[str, Any]]) -> None:
        ns, folder = self.ns(pod.name), self.pod_dir(pod)
        folder.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{pod.name}.log"
        if pod.role == ROLE_INGRESS:
            conf = folder / "nginx.conf"
            conf.write_text(nginx_config(m.ingresses, services, pod, str(self.certs), str(folder)))
            argv = ["nginx", "-c", str(conf), "-p", str(folder), "-e", str(folder / "error.log"),
                    "-g", "daemon off;"]
        elif pod.role == ROLE_DNS:
            # as root: the lab's folder may be readable by root only (it is a lab, not a node)
            argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--log-queries",
                    "--log-facility=-", "--user=root", f"--hostsdir={self.dns_dir}", "--local=/cluster.local/",
                    f"--pid-file={folder / 'dnsmasq.pid'}", f"--port={next((p.port for p in pod.ports), 53)}"]
        else:
            argv = [sys.executable, "-m", "kproxy.lab.pod_server", "--pod", pod.name, "--node", pod.node,
                    "--ready", str(folder / "ready")]
            for port in pod.ports:
                argv += [f"--{port.protocol.lower()}", str(port.port)]
        netns.spawn(ns, argv, log)

    def _wait_listening(self, pods: Iterable[LabPod], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(pods)
        while waiting:
            waiting = [p for p in waiting
                       if not {(c.protocol, c.port) for c in p.ports} <= netns.listening(self.ns(p.name))]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                raise LabError(f"pods not listening after {timeout:.0f}s: {names} (logs in {self.logs})")
            if waiting:
                time.sleep(0.1)

    def _write_cluster(self, m: Manifests, services: list[dict[str, Any]], pods: tuple[LabPod, ...],
                       terminating: tuple[LabPod, ...] = ()) -> None:
        """What the control plane would publish: the objects the agents read, the DNS
        records, the ingress hosts the client resolves, the load balancer's rules."""
        self.agent_dir.mkdir(exist_ok=True)
        self.dns_dir.mkdir(exist_ok=True)
        nodes = self.nodes()
        write_atomic(self.agent_dir / "nodes.yaml", yaml.safe_dump_all(node_objects(nodes)))
        write_atomic(self.agent_dir / "services.yaml", yaml.safe_dump_all(services))
        write_atomic(self.agent_dir / "endpointslices.yaml",
                     yaml.safe_dump_all(endpoint_slices(services, pods, nodes, terminating)))
        records = "".join(f"{addr} {name}\n" for name, addr in dns_records(services, pods))
        write_atomic(self.dns_dir / "cluster.hosts", records)
        hosts = "".join(f"{addr} {host}\n" for host, addr in public_hosts(m.ingresses, services, pods))
        netns.write_etc(self.ns("client"), "hosts", f"127.0.0.1 localhost\n{hosts}")
        forwards = lb_forwards(services, nodes, pods)
        lb = self.ns("lb")
        have = netns.in_ns(lb, "ip", "-4", "-o", "addr", "show", "dev", "lo").stdout
        for vip in sorted({f.vip for f in forwards}):
            if f" {vip}/32 " not in have:
                netns.ip(lb, "addr", "add", f"{vip}/32", "dev", "lo")
        netns.in_ns(lb, "nft", "-f", "-", input=lb_ruleset(forwards))

    def _start_agent(self, node: LabNode) -> None:
        assert self.state is not None
        netns.spawn(self.ns(node.name), [
            sys.executable, "-m", "kproxy", "run", "--manifests", str(self.agent_dir),
            "--hostname-override", node.name, "--node-ip", str(node.ip),
            "--cluster-cidr", str(CLUSTER_CIDR), "--service-cluster-ip-range", str(SERVICE_CIDR),
            "--proxy-mode", self.state.proxy_mode, "--min-sync-period", "0.2s",
        ], self.logs / f"kproxy-{node.name}.log", env={"KPROXY_STATE_DIR": str(self.dir / "state")})

    def wait_rules(self, services: list[dict[str, Any]], pods: tuple[LabPod, ...], say: Say,
                   terminating: tuple[LabPod, ...] = (), timeout: float = 30) -> None:
        """Until every node's programmed rules (read back with `kproxy dump`) hold exactly
        the endpoints the slices call for (ready ones, else terminating ones): the rules have
        followed the slices. Says which nodes it still waits for when that takes a while."""
        want = cluster_ip_endpoints(endpoint_slices(services, pods, self.nodes(), terminating))
        started = time.monotonic()
        pending = [n.name for n in self.nodes()]
        told: list[str] = []
        while pending:
            pending = [n for n in pending if self.programmed_endpoints(n) != want]
            waited = time.monotonic() - started
            if pending and waited > timeout:
                raise LabError(f"the rules on {', '.join(pending)} did not follow within {timeout:.0f}s "
                               f"(agent logs in {self.logs})")
            if pending and waited > PROGRESS_AFTER_S and pending != told:
                say(f"waiting for {', '.join(pending)}...")
                told = pending
            if pending:
                time.sleep(0.2)

    def programmed_endpoints(self, node: str) -> set[str]:
        out = netns.in_ns(self.ns(node), sys.executable, "-m", "kproxy", "dump", "--json", check=False).stdout
        try:
            view = json.loads(out)
        except ValueError:
            return set()
        return {e for sp in view.get("service_ports", []) for fe in sp["frontends"]
                if fe["kind"] == "ClusterIP" for e in fe["endpoints"]}

    # -- changes ------------------------------------------------------------------------------------
    def scale(self, workload: str, replicas: int, say: Say) -> None:
        state = self.load()
        m = self.manifests()
        matches = [w for w in m.workloads if workload in (w.key, w.name)]
        if len(matches) != 1:
            known = ", ".join(w.key for w in m.workloads)
            raise LabError(f"no single Deployment {workload!r} in the lab (there are: {known})")
        if not 0 <= replicas <= 50:
            raise LabError(f"replicas must be between 0 and 50, not {replicas}")
        wl = matches[0]
        state.replicas[wl.key] = replicas
        before = self.pods()
        after = place(self.workloads(m), before, self.nodes())
        added = tuple(p for p in after if p.name not in {q.name for q in before})
        removed = tuple(p for p in before if p.name not in {q.name for q in after})
        services = self.services(m)
        for pod in added:
            self._add_pod(pod)
            self._start_pod(pod, m, services)
        self._wait_listening(added)
        if removed:
            # As the endpoint-slice controller does: a terminating pod first leaves the ready set.
            self._write_cluster(m, services, after, terminating=removed)
            self.wait_rules(services, after, say, terminating=removed)
            netns.kill_all([self.ns(p.name) for p in removed])
            for pod in removed:
                netns.delete(self.ns(pod.name))
                shutil.rmtree(self.pod_dir(pod), ignore_errors=True)
                state.namespaces.remove(self.ns(pod.name))
        state.pods = [pod_to_json(p) for p in after]
        self.save()
        self._write_cluster(m, services, after)
        self.wait_rules(services, after, say)
        count = sum(p.workload == wl.key for p in after)
        say(f"{wl.key}: {count} replica(s) (+{len(added)} -{len(removed)}); every node's rules follow")

    def keep_logs(self) -> Path:
        """After a failed `up`: the logs, beside the lab; the next up or down removes them."""
        kept = self.dir.parent / f"{self.name}.failed-logs"
        shutil.rmtree(kept, ignore_errors=True)
        if self.logs.is_dir():
            shutil.copytree(self.logs, kept)
        return kept

    # -- down ---------------------------------------------------------------------------------------
    def down(self, say: Say, keep_failed_logs: bool = False) -> None:
        """Remove what the state file records: its namespaces, their processes, the lab's
        folder. Namespaces that merely share the prefix are named and left alone."""
        known = self.exists()
        recorded = self.recorded()
        existing = set(netns.existing())
        ours = [ns for ns in recorded if ns in existing]
        netns.kill_all(ours)
        for ns in recorded:
            netns.delete(ns)  # a recorded name never made: only its /etc/netns folder, if any
        others = sorted(ns for ns in existing if ns.startswith(f"{self.name}-") and ns not in recorded)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not keep_failed_logs:
            shutil.rmtree(self.dir.parent / f"{self.name}.failed-logs", ignore_errors=True)
        if known:
            say(f"lab {self.name}: removed {len(ours)} namespace(s), their processes and {self.dir}")
        else:
            say(f"lab {self.name}: no such lab ({self.state_file} does not exist); nothing removed")
        if others:
            say(f"left alone: {', '.join(others)} (not made by lab {self.name}; "
                "remove them yourself if they are yours)")


def check_tools() -> None:
    missing = [t for t in ("ip", "nft", "ss", "openssl", "nginx", "dnsmasq") if not shutil.which(t)]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (Debian: apt-get install iproute2 nftables "
                       "openssl nginx-light dnsmasq-base; scripts/setup-env installs them)")
