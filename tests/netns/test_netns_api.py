"""kproxy run against the API: an in-process list/watch server, rules read from the kernel.

The fake API server listens inside node1's namespace (its socket is opened by a thread
that joined that namespace), so the agent reaches it on node1's loopback and nothing
crosses into the host's network namespace.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import traffic
from kproxy_lab import NODE_FLAGS, Kproxy
from topology import Cluster

from tests.api.fake_apiserver import FakeApiServer, Store, in_netns, write_kubeconfig
from tests.builders import endpoint, endpoint_slice, service

pytestmark = pytest.mark.netns


def web_slice(*ips: str) -> dict:
    return endpoint_slice("web", [endpoint(ip, node="node1") for ip in ips], port=8080)


@pytest.fixture
def api(cluster: Cluster, kproxy: Kproxy, tmp_path: Path) -> Iterator[tuple[Store, list[FakeApiServer], Path]]:
    store = Store()
    servers = [in_netns(cluster.node1, lambda: FakeApiServer(store))]
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, servers[0].url)
    try:
        yield store, servers, kubeconfig
    finally:
        for server in servers:
            if not server.stopping.is_set():
                server.stop()


def dump(kproxy: Kproxy) -> dict[str, list[str]]:
    """Service port -> sorted ClusterIP endpoints, as the kernel has them."""
    view = json.loads(kproxy.cli("dump", "--json").stdout)
    return {
        sp["name"]: sorted(e for fe in sp["frontends"] if fe["kind"] == "ClusterIP" for e in fe["endpoints"])
        for sp in view["service_ports"]
    }


def wait_for(kproxy: Kproxy, agent: subprocess.Popen, want: dict[str, list[str]], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    seen: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        assert agent.poll() is None, "agent exited"
        seen = dump(kproxy)
        if seen == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"kernel state never became {want}; last seen {seen}")


def start_agent(cluster: Cluster, kproxy: Kproxy, kubeconfig: Path) -> subprocess.Popen:
    log = kproxy.workdir / f"agent-{len(kproxy.agents)}.log"
    proc = cluster.spawn("node1", kproxy.binary, "run", "--kubeconfig", str(kubeconfig), *NODE_FLAGS,
                         "--min-sync-period", "0.1s", log=log)
    kproxy.agents.append((proc, log))
    return proc


def start_with_web(cluster: Cluster, kproxy: Kproxy, store: Store, kubeconfig: Path) -> subprocess.Popen:
    """The agent, once it has programmed Service web with one endpoint from the API."""
    store.apply(service("web", cluster_ip="10.96.0.10"))
    store.apply(web_slice("10.244.1.2"))
    agent = start_agent(cluster, kproxy, kubeconfig)
    wait_for(kproxy, agent, {"default/web": ["10.244.1.2:8080"]})
    return agent


def test_create_update_delete_reach_the_kernel(cluster, kproxy, api):
    store, _servers, kubeconfig = api
    agent = start_with_web(cluster, kproxy, store, kubeconfig)

    store.apply(web_slice("10.244.1.2", "10.244.1.3"))  # update
    store.apply(service("api", cluster_ip="10.96.0.11"))  # create
    wait_for(kproxy, agent, {"default/web": ["10.244.1.2:8080", "10.244.1.3:8080"], "default/api": []})

    store.delete("Service", "web")
    wait_for(kproxy, agent, {"default/api": []})


def test_410_gone_triggers_a_relist_that_catches_up(cluster, kproxy, api):
    store, _servers, kubeconfig = api
    agent = start_with_web(cluster, kproxy, store, kubeconfig)
    lists_before = store.calls[("endpointslices", "list")]

    store.freeze()  # the watch misses what follows ...
    store.apply(web_slice("10.244.1.4"))
    store.apply(service("api", cluster_ip="10.96.0.11"))
    store.expire()  # ... and then hears 410 Gone
    wait_for(kproxy, agent, {"default/web": ["10.244.1.4:8080"], "default/api": []})
    assert store.calls[("endpointslices", "list")] > lists_before


def test_rules_stay_while_the_api_is_away_and_follow_when_it_returns(cluster, kproxy, api):
    store, servers, kubeconfig = api
    store.apply(service("web", cluster_ip="10.96.0.10"))
    store.apply(web_slice("10.244.1.2"))
    agent = start_agent(cluster, kproxy, kubeconfig)
    wait_for(kproxy, agent, {"default/web": ["10.244.1.2:8080"]})

    servers[0].stop()
    time.sleep(2.0)  # several reconnect attempts fail meanwhile
    assert agent.poll() is None
    assert dump(kproxy) == {"default/web": ["10.244.1.2:8080"]}

    store.apply(web_slice("10.244.1.3"))
    port = servers[0].port
    servers.append(in_netns(cluster.node1, lambda: FakeApiServer(store, port=port)))
    wait_for(kproxy, agent, {"default/web": ["10.244.1.3:8080"]}, seconds=40)


def test_this_nodes_zone_comes_from_its_node_object(cluster, kproxy, api):
    store, _servers, kubeconfig = api
    store.apply(service("web", cluster_ip="10.96.0.10"))
    eps = []
    for ip, zone in (("10.244.1.2", "zone-a"), ("10.244.1.3", "zone-b")):
        e = endpoint(ip, node="node1")
        e["hints"] = {"forZones": [{"name": zone}]}
        eps.append(e)
    store.apply(endpoint_slice("web", eps, port=8080))
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node1", "labels": {"topology.kubernetes.io/zone": "zone-b"}}}
    store.apply(node)
    agent = start_agent(cluster, kproxy, kubeconfig)
    wait_for(kproxy, agent, {"default/web": ["10.244.1.3:8080"]})
    node["metadata"]["labels"]["topology.kubernetes.io/zone"] = "zone-a"
    store.apply(node)
    wait_for(kproxy, agent, {"default/web": ["10.244.1.2:8080"]})


def test_service_cidr_objects_drop_unallocated_ips_and_the_node_gets_a_starting_event(cluster, kproxy, api):
    """Without --service-cluster-ip-range the ServiceCIDR objects are the service CIDRs (as
    upstream's nftables mode): traffic to an unallocated address in them is dropped, and is
    routed on as before once the object is gone. At start-up the agent records upstream's
    Starting event on its Node."""
    store, _servers, kubeconfig = api
    store.apply(service("web", cluster_ip="10.96.0.10"))
    store.apply(web_slice("10.244.1.2"))
    store.apply({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
                 "spec": {"cidrs": ["10.96.0.0/16"]}})
    flags = list(NODE_FLAGS)
    at = flags.index("--service-cluster-ip-range")
    del flags[at:at + 2]
    log = kproxy.workdir / "agent-cidrs.log"
    agent = cluster.spawn("node1", kproxy.binary, "run", "--kubeconfig", str(kubeconfig), *flags,
                          "--min-sync-period", "0.1s", log=log)
    kproxy.agents.append((agent, log))
    wait_for(kproxy, agent, {"default/web": ["10.244.1.2:8080"]})
    client = cluster.ns("client")

    def holds_range() -> bool:
        return "10.96.0.0/16" in kproxy.ruleset() + kproxy.iptables_save()

    deadline = time.monotonic() + 15
    while not holds_range() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holds_range()
    r = traffic.tcp(client, "10.96.0.99", 80, count=3, timeout=1.0)
    assert set(r.failures) == {"TIMEOUT"} and not r.pods, r  # dropped on node1
    store.delete("ServiceCIDR", "kubernetes", namespace="default")
    traffic.wait_until(lambda: traffic.tcp(client, "10.96.0.99", 80, timeout=1.0),
                       lambda r: "UNREACHABLE" in r.failures, what="without a ServiceCIDR it is routed on")
    assert not holds_range()
    events = [body for _namespace, body in store.events]
    assert [(e["reason"], e["action"], e["regarding"]["name"]) for e in events] == [
        ("Starting", "StartKubeProxy", "node1")]
