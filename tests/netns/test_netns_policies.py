"""Traffic policies, affinity, source ranges and topology, checked with real packets.

node1 runs kproxy; pod1..pod3 live on node1, pod4 and pod5 on node2, the client is off
the cluster. Each test asserts which pod answered and the source address it saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import traffic
from topology import CLIENT_IP, CLIENT_OTHER_IP, NODE1_BRIDGE_IP, NODE1_IP, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns

LB_IP = "203.0.113.30"
CONNECTS = 30


def lb_service(cluster: Cluster, pods: list[str], **spec: object) -> list[dict]:
    svc = service("lb", "10.96.0.30", [port(80, 8080, node_port=30090)], type="LoadBalancer", lb_ips=[LB_IP])
    svc["spec"].update(spec)
    eps = [endpoint(cluster.pods[p]) for p in pods]
    return [svc, endpoint_slice("lb", eps, [slice_port(8080)])]


def test_external_policy_local_keeps_the_client_address_and_stays_on_the_node(cluster, kproxy):
    kproxy.sync(lb_service(cluster, ["pod2", "pod4"], externalTrafficPolicy="Local"))
    for target in (LB_IP, NODE1_IP):
        dport = 80 if target == LB_IP else 30090
        r = traffic.tcp(cluster.ns("client"), target, dport, count=CONNECTS)
        assert not r.failures, r
        assert r.pairs() == {("pod2", CLIENT_IP)}, r


def test_external_policy_local_short_circuits_pods_and_the_node(cluster, kproxy):
    kproxy.sync(lb_service(cluster, ["pod2", "pod4"], externalTrafficPolicy="Local"))
    pod1 = cluster.pods["pod1"].ip
    r = traffic.tcp(cluster.ns("pod1"), LB_IP, 80, count=CONNECTS)
    assert r.pairs() == {("pod2", pod1), ("pod4", pod1)} and not r.failures, r
    r = traffic.tcp(cluster.ns("node1"), LB_IP, 80, count=CONNECTS)
    assert r.pairs() == {("pod2", NODE1_BRIDGE_IP), ("pod4", NODE1_IP)} and not r.failures, r


def test_external_policy_local_without_local_endpoints_drops_outside_traffic_only(cluster, kproxy):
    kproxy.sync(lb_service(cluster, ["pod4"], externalTrafficPolicy="Local"))
    r = traffic.tcp(cluster.ns("client"), LB_IP, 80, count=2, timeout=1.5)
    assert set(r.failures) == {"TIMEOUT"} and not r.pods, r
    r = traffic.tcp(cluster.ns("pod1"), LB_IP, 80, count=5)
    assert set(r.pods) == {"pod4"} and not r.failures, r
    view = json.loads(kproxy.cli("dump", "--json").stdout)
    lb = next(sp for sp in view["service_ports"] if sp["name"] == "default/lb")
    assert {fe["kind"]: fe["verdict"] for fe in lb["frontends"]}["LoadBalancer"] == "drop"


def test_external_policy_cluster_masquerades_for_comparison(cluster, kproxy):
    kproxy.sync(lb_service(cluster, ["pod2", "pod4"]))
    r = traffic.tcp(cluster.ns("client"), LB_IP, 80, count=CONNECTS)
    assert r.pairs() == {("pod2", NODE1_BRIDGE_IP), ("pod4", NODE1_IP)} and not r.failures, r


def internal_local(cluster: Cluster, pods: list[str]) -> list[dict]:
    svc = service("itp", "10.96.0.31", [port(80, 8080)])
    svc["spec"]["internalTrafficPolicy"] = "Local"
    return [svc, endpoint_slice("itp", [endpoint(cluster.pods[p]) for p in pods], [slice_port(8080)])]


def test_internal_policy_local_uses_local_endpoints_and_drops_without(cluster, kproxy):
    kproxy.sync(internal_local(cluster, ["pod2", "pod4"]))
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.31", 80, count=CONNECTS)
    assert set(r.pods) == {"pod2"} and not r.failures, r
    kproxy.sync(internal_local(cluster, ["pod4"]))
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.31", 80, count=2, timeout=1.5)
    assert set(r.failures) == {"TIMEOUT"}, r  # dropped, not refused: endpoints exist elsewhere


def affinity_service(cluster: Cluster, pods: list[str], timeout: int = 600) -> list[dict]:
    svc = service("sticky", "10.96.0.32", [port(80, 8080)])
    svc["spec"]["sessionAffinity"] = "ClientIP"
    svc["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    return [svc, endpoint_slice("sticky", [endpoint(cluster.pods[p]) for p in pods], [slice_port(8080)])]


def test_client_ip_affinity_sticks_per_client_and_spreads_clients(cluster, kproxy):
    kproxy.sync(affinity_service(cluster, ["pod2", "pod4", "pod5"]))
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.32", 80, count=20)
    assert len(r.pods) == 1 and not r.failures, r
    extra = [f"192.168.50.{i}" for i in range(150, 162)]
    for ip in extra:
        cluster.ip("client", "addr", "add", f"{ip}/32", "dev", "eth0")
    try:
        chosen = set()
        for ip in extra:
            r = traffic.tcp(cluster.ns("client"), "10.96.0.32", 80, count=4, source=ip)
            assert len(r.pods) == 1 and not r.failures, (ip, r)
            chosen |= set(r.pods)
        assert len(chosen) >= 2, chosen  # 12 clients on one of 3 endpoints: p ~ 5e-6
    finally:
        for ip in extra:
            cluster.ip("client", "addr", "del", f"{ip}/32", "dev", "eth0")


def test_affinity_to_a_removed_endpoint_is_forgotten_by_a_running_agent(cluster, kproxy):
    agent = kproxy.start(affinity_service(cluster, ["pod2", "pod4", "pod5"]))
    kproxy.wait_synced(agent)
    first = traffic.tcp(cluster.ns("pod1"), "10.96.0.32", 80, count=3)
    (stuck,) = set(first.pods)
    remaining = [p for p in ("pod2", "pod4", "pod5") if p != stuck]
    kproxy.write(affinity_service(cluster, remaining))
    kproxy.wait_synced(agent, count=2)
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.32", 80, count=10)
    assert not r.failures and len(r.pods) == 1 and set(r.pods) <= set(remaining), r


def test_load_balancer_source_ranges(cluster, kproxy):
    kproxy.sync(lb_service(cluster, ["pod2"], loadBalancerSourceRanges=[f"{CLIENT_IP}/32"]))
    r = traffic.tcp(cluster.ns("client"), LB_IP, 80, count=3, source=CLIENT_IP)
    assert set(r.pods) == {"pod2"} and not r.failures, r
    r = traffic.tcp(cluster.ns("client"), LB_IP, 80, count=2, timeout=1.5, source=CLIENT_OTHER_IP)
    assert set(r.failures) == {"TIMEOUT"}, r
    # the NodePort is not subject to source ranges (upstream)
    r = traffic.tcp(cluster.ns("client"), NODE1_IP, 30090, count=2, source=CLIENT_OTHER_IP)
    assert set(r.pods) == {"pod2"}, r


def hinted(cluster: Cluster, hints: dict[str, dict]) -> list[dict]:
    eps = []
    for pod, hint in hints.items():
        ep = endpoint(cluster.pods[pod])
        ep["hints"] = hint
        eps.append(ep)
    return [service("near", "10.96.0.33", [port(80, 8080)]), endpoint_slice("near", eps, [slice_port(8080)])]


def test_node_hints_keep_traffic_on_this_node(cluster, kproxy):
    kproxy.sync(hinted(cluster, {"pod2": {"forNodes": [{"name": "node1"}]},
                                 "pod4": {"forNodes": [{"name": "node2"}]}}))
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.33", 80, count=CONNECTS)
    assert set(r.pods) == {"pod2"} and not r.failures, r


def test_zone_hints_use_the_zone_of_this_nodes_node_object(cluster, kproxy):
    objects = hinted(cluster, {"pod2": {"forZones": [{"name": "zone-b"}]},
                               "pod4": {"forZones": [{"name": "zone-a"}]},
                               "pod5": {"forZones": [{"name": "zone-a"}]}})
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}}
    kproxy.sync([*objects, node])
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.33", 80, count=CONNECTS)
    assert set(r.pods) == {"pod4", "pod5"} and not r.failures, r
    kproxy.sync(objects)  # no Node object: zone unknown, hints ignored
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.33", 80, count=CONNECTS)
    assert set(r.pods) == {"pod2", "pod4", "pod5"}, r


def health_check(cluster: Cluster, node_port: int = 32100) -> dict:
    """GET the healthCheckNodePort from the client: (status, weight header, body)."""
    script = (
        "import json, urllib.request, urllib.error\n"
        f"url = 'http://{NODE1_IP}:{node_port}/'\n"
        "try:\n"
        "    r = urllib.request.urlopen(url, timeout=3); status, headers, body = r.status, r.headers, r.read()\n"
        "except urllib.error.HTTPError as e:\n"
        "    status, headers, body = e.code, e.headers, e.read()\n"
        "print(json.dumps({'status': status, 'weight': headers.get('X-Load-Balancing-Endpoint-Weight'),"
        " 'body': json.loads(body)}))\n"
    )
    out = cluster.run("client", "python3", "-c", script).stdout
    return json.loads(out)


def test_health_check_node_port_reports_local_endpoints(cluster, kproxy):
    def objects(pods: list[str]) -> list[dict]:
        return lb_service(cluster, pods, externalTrafficPolicy="Local", healthCheckNodePort=32100)

    agent = kproxy.start(objects(["pod2", "pod3", "pod4"]))
    kproxy.wait_synced(agent)
    assert health_check(cluster) == {"status": 200, "weight": "2", "body": {
        "service": {"namespace": "default", "name": "lb"}, "localEndpoints": 2, "serviceProxyHealthy": True}}
    kproxy.write(objects(["pod4"]))
    kproxy.wait_synced(agent, count=2)
    answer = health_check(cluster)
    assert (answer["status"], answer["weight"], answer["body"]["localEndpoints"]) == (503, "0", 0)


def udp_service(cluster: Cluster, pods: list[str]) -> list[dict]:
    return [service("dns", "10.96.0.53", [port(53, 8080, protocol="UDP")]),
            endpoint_slice("dns", [endpoint(cluster.pods[p]) for p in pods], [slice_port(8080, protocol="UDP")])]


def test_udp_flow_recovers_at_once_when_its_endpoint_is_replaced(cluster, kproxy):
    """One client socket keeps sending from the same port (so the same conntrack entry);
    after its endpoint is replaced the very next datagram reaches the new one."""
    agent = kproxy.start(udp_service(cluster, ["pod2"]))
    kproxy.wait_synced(agent)
    sender = traffic.UdpSender(cluster.ns("pod1"), "10.96.0.53", 53)
    try:
        assert sender.send().startswith("pod2"), "first answer from pod2"
        kproxy.write(udp_service(cluster, ["pod4"]))
        kproxy.wait_synced(agent, count=2)
        assert sender.send().startswith("pod4")
    finally:
        sender.close()


def test_udp_flow_started_without_endpoints_works_once_they_appear(cluster, kproxy):
    agent = kproxy.start(udp_service(cluster, []))
    kproxy.wait_synced(agent)
    sender = traffic.UdpSender(cluster.ns("pod1"), "10.96.0.53", 53)
    try:
        assert sender.send() in ("REFUSED", "TIMEOUT")
        kproxy.write(udp_service(cluster, ["pod2"]))
        kproxy.wait_synced(agent, count=2)
        assert sender.send().startswith("pod2")
    finally:
        sender.close()


def test_conntrack_sysctls_are_set_in_the_nodes_namespace_only_when_asked(cluster, kproxy):
    key = "net.netfilter.nf_conntrack_tcp_timeout_established"
    host_value = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
    before_host = host_value.read_text().strip()
    read = lambda: cluster.run("node1", "sysctl", "-n", key).stdout.strip()  # noqa: E731
    cluster.run("node1", "sysctl", "-w", f"{key}=432000")
    kproxy.sync(udp_service(cluster, ["pod2"]))
    assert read() == "432000"  # not asked: untouched
    kproxy.sync(udp_service(cluster, ["pod2"]), "--conntrack-tcp-timeout-established", "7200s",
                "--conntrack-tcp-be-liberal")
    assert read() == "7200"
    assert cluster.run("node1", "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal").stdout.strip() == "1"
    assert host_value.read_text().strip() == before_host
    cluster.run("node1", "sysctl", "-w", f"{key}=432000", "net.netfilter.nf_conntrack_tcp_be_liberal=0")


def test_sctp_services_are_programmed(cluster, kproxy):
    """The rules for SCTP are real kernel objects; packets need the kernel's SCTP support."""
    svc = service("assoc", "10.96.0.70", [port(7000, 8080, protocol="SCTP", node_port=30700)], type="NodePort")
    sl = endpoint_slice("assoc", [endpoint(cluster.pods["pod2"])], [slice_port(8080, protocol="SCTP")])
    kproxy.sync([svc, sl])
    view = json.loads(kproxy.cli("dump", "--json").stdout)
    (sp,) = [p for p in view["service_ports"] if p["name"] == "default/assoc"]
    assert sp["protocol"] == "SCTP"
    assert {fe["kind"]: fe["endpoints"] for fe in sp["frontends"]} == {
        "ClusterIP": ["10.244.1.3:8080"], "NodePort": ["10.244.1.3:8080"]}
    probe = cluster.run("pod1", "python3", "-c",
                        "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)", check=False)
    if probe.returncode != 0:
        pytest.skip("this kernel has no SCTP support: SCTP rules checked, SCTP packets not sent")
    r = traffic.probe(cluster.ns("pod1"), "sctp", "10.96.0.70", 7000, count=5)
    assert not r.failures, r
    assert r.pairs() == {("pod2", cluster.pods["pod1"].ip)}, r  # a pod's ClusterIP traffic keeps its source
    r = traffic.probe(cluster.client, "sctp", NODE1_IP, 30700, count=5)
    assert not r.failures, r
    assert r.pairs() == {("pod2", NODE1_BRIDGE_IP)}, r  # a NodePort from outside is masqueraded
