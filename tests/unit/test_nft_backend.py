"""The nftables backend's render/diff/apply logic against a recording kernel (no root)."""

from __future__ import annotations

import pytest

from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.kernel import NftError, RecordingKernel
from kproxy.backends.nft.readback import read_view
from kproxy.planner import compute_plan
from tests.builders import endpoint, endpoint_slice, service
from tests.unit.test_planner import NODE, state


def lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line]


def make(*objects: dict):
    return compute_plan(NODE, state(*objects))


WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)


def test_first_sync_replaces_the_table_atomically():
    kernel = RecordingKernel()
    result = NftBackend(kernel).sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    script = lines(kernel.scripts[0])
    assert result.full
    assert script[:3] == ["add table ip kproxy", "delete table ip kproxy",
                          'add table ip kproxy { comment "programmed by kproxy; do not edit"; }']
    assert ('add element ip kproxy frontends { 10.96.0.10 . tcp . 80 comment "default/web ClusterIP"'
            " : goto dnat-2 }") in script
    assert "add element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80, "\
           "10.96.0.10 . tcp . 80 . 1 : 10.244.1.3 . 80 }" in script
    assert "add rule ip kproxy dnat-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2"\
           " map @endpoints-2" in script
    assert "add element ip kproxy nodeport-ips { 192.168.50.10 }" in script


def test_sync_of_an_unchanged_plan_sends_nothing():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    objs = (WEB, endpoint_slice("web", ["10.244.1.2"]))
    backend.sync(make(*objs))
    result = backend.sync(make(*objs))
    assert (result.full, result.operations, len(kernel.scripts)) == (False, 0, 1)


def test_one_endpoint_change_is_a_small_incremental_transaction():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.4"])))
    script = lines(kernel.scripts[1])
    assert not result.full
    assert script == [
        "delete element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 1 }",
        "delete element ip kproxy nodeport-endpoints-2 { tcp . 30080 . 1 }",
        "add element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 1 : 10.244.1.4 . 80 }",
        "add element ip kproxy nodeport-endpoints-2 { tcp . 30080 . 1 : 10.244.1.4 . 80 }",
    ]


def test_endpoint_count_change_moves_the_frontend_and_retires_unused_chains():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    script = lines(kernel.scripts[1])
    assert "add chain ip kproxy dnat-2" in script
    assert "add map ip kproxy endpoints-2 { typeof ip daddr . meta l4proto . th dport . "\
           "numgen random mod 2 : ip daddr . th dport; }" in script
    assert "delete element ip kproxy frontends { 10.96.0.10 . tcp . 80 }" in script
    # the old group is gone whole, chain before its map, after the elements pointing at it
    assert script[-4:] == ["delete chain ip kproxy dnat-1", "delete chain ip kproxy dnat-nodeport-1",
                           "delete map ip kproxy endpoints-1", "delete map ip kproxy nodeport-endpoints-1"]
    assert not any(line.startswith("delete element ip kproxy endpoints-1") for line in script)


def test_no_endpoints_goes_to_reject_and_back():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    backend.sync(make(WEB))
    script = lines(kernel.scripts[1])
    assert ('add element ip kproxy no-endpoint-frontends { 10.96.0.10 . tcp . 80 comment '
            '"default/web ClusterIP" : goto reject-chain }') in script
    assert "delete element ip kproxy frontends { 10.96.0.10 . tcp . 80 }" in script


def test_element_shared_by_two_services_stays_until_both_are_gone():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    api = service("api", cluster_ip="10.96.0.11")
    pod = endpoint("10.244.1.2", node="node1")
    both = (WEB, api, endpoint_slice("web", [pod]), endpoint_slice("api", [pod]))
    backend.sync(make(*both))
    backend.sync(make(WEB, endpoint_slice("web", [pod])))
    assert "hairpin" not in kernel.scripts[1]
    backend.sync(make(WEB))
    assert "delete element ip kproxy hairpin { 10.244.1.2 . 10.244.1.2 }" in lines(kernel.scripts[2])


def test_a_failed_transaction_is_retried_as_a_full_replace():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.fail_next = "Error: boom"
    with pytest.raises(NftError):
        backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])))
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])))
    assert result.full
    assert "10.244.1.3 . 80" in kernel.scripts[-1] and "10.244.1.2 . 80" not in kernel.scripts[-1]


def test_masquerade_rules_follow_node_settings():
    kernel = RecordingKernel()
    NftBackend(kernel).sync(make(WEB))
    assert ("add rule ip kproxy services ip daddr . meta l4proto . th dport @cluster-frontends "
            "ip saddr != { 10.244.0.0/16 } jump mark-for-masquerade") in lines(kernel.scripts[0])


def test_cleanup_deletes_the_table():
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    backend.sync(make(WEB))
    assert backend.cleanup() is True
    assert backend.cleanup() is False


LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"set": {"name": "nodeport-ips", "elem": ["192.168.50.10"]}},
    {"map": {"name": "frontends", "elem": [
        [{"elem": {"val": {"concat": ["10.96.0.10", "tcp", 80]}, "comment": "default/web:http ClusterIP"}},
         {"goto": {"target": "dnat-2"}}]]}},
    {"map": {"name": "nodeport-frontends", "elem": [
        [{"elem": {"val": {"concat": ["tcp", 30080]}, "comment": "default/web:http NodePort"}},
         {"goto": {"target": "dnat-nodeport-2"}}]]}},
    {"map": {"name": "no-endpoint-frontends", "elem": [
        [{"elem": {"val": {"concat": ["10.96.0.11", "udp", 53]}, "comment": "kube-system/dns:dns ClusterIP"}},
         {"goto": {"target": "reject-chain"}}]]}},
    {"map": {"name": "endpoints-2", "elem": [
        [{"concat": ["10.96.0.10", "tcp", 80, 1]}, {"concat": ["10.244.1.3", 8080]}],
        [{"concat": ["10.96.0.10", "tcp", 80, 0]}, {"concat": ["10.244.1.2", 8080]}]]}},
    {"map": {"name": "nodeport-endpoints-2", "elem": [
        [{"concat": ["tcp", 30080, 0]}, {"concat": ["10.244.1.2", 8080]}],
        [{"concat": ["tcp", 30080, 1]}, {"concat": ["10.244.1.3", 8080]}]]}},
]}


def test_read_view_reconstructs_service_ports_from_kernel_json():
    view = read_view(LISTING)
    assert view.present and view.nodeport_ips == ("192.168.50.10",)
    got = {sp.name: [(f.kind, f.address, f.verdict, f.endpoints) for f in sp.frontends]
           for sp in view.service_ports}
    assert got == {
        "default/web:http": [
            ("ClusterIP", "10.96.0.10:80", "dnat", ("10.244.1.2:8080", "10.244.1.3:8080")),
            ("NodePort", "192.168.50.10:30080", "dnat", ("10.244.1.2:8080", "10.244.1.3:8080")),
        ],
        "kube-system/dns:dns": [("ClusterIP", "10.96.0.11:53", "reject", ())],
    }
    assert [sp.protocol for sp in view.service_ports] == ["TCP", "UDP"]
    assert read_view(None).present is False


def test_affinity_to_an_endpoint_that_left_is_forgotten():
    sticky = service("web", cluster_ip="10.96.0.10", sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    kernel = RecordingKernel()
    backend = NftBackend(kernel)
    backend.sync(make(sticky, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))

    def entry(client: str, endpoint: str) -> list:
        key = {"concat": [client, "10.96.0.10", "tcp", 80]}
        return [{"elem": {"val": key, "timeout": 600, "expires": 500}}, {"concat": [endpoint, 80]}]

    kernel.maps["affinity-600"] = {"nftables": [{"map": {"name": "affinity-600", "elem": [
        entry("10.0.0.1", "10.244.1.2"), entry("10.0.0.2", "10.244.1.3")]}}]}
    backend.sync(make(sticky, endpoint_slice("web", ["10.244.1.2"])))
    assert lines(kernel.scripts[-1]) == [
        "delete element ip kproxy affinity-600 { 10.0.0.2 . 10.96.0.10 . tcp . 80 }"]
