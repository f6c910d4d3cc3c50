"""`kproxy trace` reads the kernel's rules and says what traffic would do; checked against
where real requests land and the source address the endpoint saw."""

from __future__ import annotations

import json

import pytest
import traffic
from manifests import endpoint, endpoint_slice, port, service, slice_port
from topology import CLIENT_IP, NODE1_IP

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("kproxy", ["nftables"], indirect=True)]


def trace(kproxy, src: str, to: str) -> dict:
    return json.loads(kproxy.cli("trace", "--from", src, "--to", to, "--json").stdout)


def objects(cluster) -> list[dict]:
    p = cluster.pods
    web = service("web", "10.96.0.50", [port(80, 8080, node_port=30500)], type="NodePort")
    local = service("loc", "10.96.0.51", [port(80, 8080, node_port=30501)], type="LoadBalancer",
                    lb_ips=["203.0.113.51"])
    local["spec"]["externalTrafficPolicy"] = "Local"
    return [
        web, endpoint_slice("web", [endpoint(p["pod2"]), endpoint(p["pod4"])], [slice_port(8080)]),
        local, endpoint_slice("loc", [endpoint(p["pod3"])], [slice_port(8080)]),
        service("empty", "10.96.0.52", [port(80, 8080)]),
    ]


def test_trace_matches_real_traffic(cluster, kproxy):
    kproxy.sync(objects(cluster))
    pod1 = cluster.pods["pod1"].ip
    t = trace(kproxy, pod1, "10.96.0.50:80")
    assert (t["verdict"], t["frontend"], t["service_port"], t["masquerade"]) == ("dnat", "ClusterIP", "default/web", False)
    real = traffic.tcp(cluster.ns("pod1"), "10.96.0.50", 80, count=30)
    assert {f"{cluster.pods[p].ip}:8080" for p in real.pods} == set(t["endpoints"])
    assert set(real.sources) == {pod1}  # not masqueraded, as trace said

    t = trace(kproxy, CLIENT_IP, f"{NODE1_IP}:30500")
    assert (t["verdict"], t["frontend"], t["masquerade"]) == ("dnat", "NodePort", True)
    real = traffic.tcp(cluster.ns("client"), NODE1_IP, 30500, count=20)
    assert CLIENT_IP not in real.sources and real.pods

    t = trace(kproxy, CLIENT_IP, "203.0.113.51:80")  # externalTrafficPolicy Local
    assert (t["frontend"], t["masquerade"], t["endpoints"]) == (
        "LoadBalancer", False, [f"{cluster.pods['pod3'].ip}:8080"])
    real = traffic.tcp(cluster.ns("client"), "203.0.113.51", 80, count=5)
    assert real.pairs() == {("pod3", CLIENT_IP)}


@pytest.mark.parametrize(("to", "verdict"), [("10.96.0.52:80", "reject"), ("10.96.0.50:81", "reject"),
                                              ("10.96.0.99:80", "drop"), ("192.0.2.1:80", "none")])
def test_trace_verdicts_without_dnat(cluster, kproxy, to, verdict):
    kproxy.sync(objects(cluster))
    assert trace(kproxy, cluster.pods["pod1"].ip, to)["verdict"] == verdict
    text = kproxy.cli("trace", "--from", cluster.pods["pod1"].ip, "--to", to).stdout
    assert f"verdict: {verdict.upper()}" in text
