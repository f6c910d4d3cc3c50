"""The nftables backend's render/diff/apply logic against FakeNft (no root): the scripts it
sends, what the fake then holds, and read-back of that."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from kproxy.backends.nft import affinity6
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.backends.nft.kernel import NftError
from kproxy.backends.nft.readback import read_view
from kproxy.planner import compute_plan
from tests.builders import endpoint, endpoint_slice, port, service
from tests.unit.test_planner import NODE, state


def lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line]


def make(*objects: dict):
    return compute_plan(NODE, state(*objects))


WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)


def test_first_sync_sends_the_skeleton_then_every_element():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    skeleton, elements = (lines(script) for script in kernel.scripts)
    assert result.full and result.transactions == 2
    assert skeleton[:3] == ["add table ip kproxy", "delete table ip kproxy",
                            'add table ip kproxy { comment "programmed by kproxy; do not edit"; }']
    assert "add rule ip kproxy dnat-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2"\
           " map @endpoints-2" in skeleton
    assert not any("element" in line for line in skeleton)
    assert ('add element ip kproxy frontends { 10.96.0.10 . tcp . 80 comment "default/web ClusterIP"'
            " : goto dnat-2 }") in elements
    assert "add element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 80, "\
           "10.96.0.10 . tcp . 80 . 1 : 10.244.1.3 . 80 }" in elements
    assert "add element ip kproxy nodeport-ips { 192.168.50.10 }" in elements
    # a later full sync finds that very skeleton in the kernel: one transaction empties
    # every set and fills it again
    again = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.4"])), full=True)
    assert again.transactions == 1
    assert lines(kernel.scripts[2])[0] == "flush set ip kproxy skeleton"
    assert kernel.elements("endpoints-2") == {"10.96.0.10 . tcp . 80 . 0": "10.244.1.2 . 80",
                                              "10.96.0.10 . tcp . 80 . 1": "10.244.1.4 . 80"}
    # another skeleton in the kernel (an older kproxy, someone's edit): replaced whole, at once
    kernel.apply("flush set ip kproxy skeleton\n")
    third = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])), full=True)
    replaced = lines(kernel.scripts[-1])
    assert third.transactions == 1 and replaced[1] == "delete table ip kproxy"
    assert "add element ip kproxy endpoints-1 { 10.96.0.10 . tcp . 80 . 0 : 10.244.1.3 . 80 }" in replaced


def test_sync_of_an_unchanged_plan_sends_nothing():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    objs = (WEB, endpoint_slice("web", ["10.244.1.2"]))
    backend.sync(make(*objs))
    result = backend.sync(make(*objs))
    assert (result.full, result.operations, len(kernel.scripts)) == (False, 0, 2)


def test_one_endpoint_change_is_a_small_incremental_transaction():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.4"])))
    script = lines(kernel.scripts[2])
    assert not result.full
    assert script == [
        "delete element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 1 }",
        "delete element ip kproxy nodeport-endpoints-2 { tcp . 30080 . 1 }",
        "add element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 1 : 10.244.1.4 . 80 }",
        "add element ip kproxy nodeport-endpoints-2 { tcp . 30080 . 1 : 10.244.1.4 . 80 }",
    ]


def test_endpoint_count_change_moves_the_frontend_and_retires_unused_chains():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    script = lines(kernel.scripts[2])
    assert "add chain ip kproxy dnat-2" in script
    assert "add map ip kproxy endpoints-2 { typeof ip daddr . meta l4proto . th dport . "\
           "numgen random mod 2 : ip daddr . th dport; }" in script
    assert "delete element ip kproxy frontends { 10.96.0.10 . tcp . 80 }" in script
    # the old group is gone whole, chain before its map, after the elements pointing at it
    assert script[-4:] == ["delete chain ip kproxy dnat-1", "delete chain ip kproxy dnat-nodeport-1",
                           "delete map ip kproxy endpoints-1", "delete map ip kproxy nodeport-endpoints-1"]
    assert not any(line.startswith("delete element ip kproxy endpoints-1") for line in script)


def test_no_endpoints_goes_to_reject_and_back():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    backend.sync(make(WEB))
    script = lines(kernel.scripts[2])
    assert ('add element ip kproxy no-endpoint-frontends { 10.96.0.10 . tcp . 80 comment '
            '"default/web ClusterIP" : goto reject-chain }') in script
    assert "delete element ip kproxy frontends { 10.96.0.10 . tcp . 80 }" in script


def test_element_shared_by_two_services_stays_until_both_are_gone():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    api = service("api", cluster_ip="10.96.0.11")
    pod = endpoint("10.244.1.2", node="node1")
    both = (WEB, api, endpoint_slice("web", [pod]), endpoint_slice("api", [pod]))
    backend.sync(make(*both))
    backend.sync(make(WEB, endpoint_slice("web", [pod])))
    assert "hairpin" not in kernel.scripts[2]
    backend.sync(make(WEB))
    assert "delete element ip kproxy hairpin { 10.244.1.2 . 10.244.1.2 }" in lines(kernel.scripts[3])


def test_a_failed_transaction_is_retried_as_a_full_replace():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.fail_next = "Error: boom"
    with pytest.raises(NftError):
        backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])))
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])))
    assert result.full
    assert "10.244.1.3 . 80" in kernel.scripts[-1] and "10.244.1.2 . 80" not in kernel.scripts[-1]


def test_masquerade_rules_follow_node_settings():
    # the rule is fixed; which sources keep their address is data: the pod CIDRs, nobody
    # with --masquerade-all, everybody when no pod CIDR is known (upstream masquerades nothing)
    kernel = FakeNft()
    NftBackend(kernel).sync(make(WEB))
    assert ("add rule ip kproxy services ip daddr . meta l4proto . th dport @cluster-frontends "
            "ip saddr != @no-masq-sources jump mark-for-masquerade") in lines(kernel.scripts[0])
    assert list(kernel.elements("no-masq-sources")) == ["10.244.0.0/16"]
    everyone = FakeNft()
    NftBackend(everyone).sync(compute_plan(replace(NODE, masquerade_all=True), state(WEB)))
    assert everyone.elements("no-masq-sources") == {}
    nobody = FakeNft()
    NftBackend(nobody).sync(compute_plan(replace(NODE, cluster_cidrs=()), state(WEB)))
    assert list(nobody.elements("no-masq-sources")) == ["0.0.0.0/0"]


def test_cleanup_deletes_the_table():
    kernel = FakeNft()
    backend = NftBackend(kernel)
    backend.sync(make(WEB))
    assert backend.cleanup() is True
    assert backend.cleanup() is False


def test_read_view_reconstructs_service_ports_from_what_was_applied():
    kernel = FakeNft()
    web = service("web", cluster_ip="10.96.0.10", ports=[port(80, name="http", target_port=8080)],
                  type="NodePort", node_port=30080)
    dns = service("dns", "kube-system", cluster_ip="10.96.0.11", ports=[port(53, name="dns", protocol="UDP")])
    NftBackend(kernel).sync(make(web, dns, endpoint_slice("web", ["10.244.1.3", "10.244.1.2"], port=8080,
                                                          port_name="http")))
    view = NftBackend(kernel).read_view()
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
    kernel = FakeNft()
    backend = NftBackend(kernel)
    backend.sync(make(sticky, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))

    # what the kernel's update rule would have added for two clients
    kernel.fill("affinity-600", "10.0.0.1 . 10.96.0.10 . tcp . 80", "10.244.1.2 . 80")
    kernel.fill("affinity-600", "10.0.0.2 . 10.96.0.10 . tcp . 80", "10.244.1.3 . 80")
    backend.sync(make(sticky, endpoint_slice("web", ["10.244.1.2"])))
    assert lines(kernel.scripts[-1]) == [
        "delete element ip kproxy affinity-600 { 10.0.0.2 . 10.96.0.10 . tcp . 80 }"]


def test_ipv6_affinity_is_a_set_of_clients_per_endpoint():
    """nft 1.0.6 aborts on the IPv4 layout's map update for IPv6 (tests/property), so IPv6
    keeps one client set per endpoint (affinity6.py); an endpoint that leaves takes its set,
    its chains' rules follow the endpoints, and drift checks skip the kernel-filled sets."""
    sticky = service("web", cluster_ip="fd00:96::a", type="NodePort", node_port=30080, sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    sticky["spec"].update(clusterIPs=["fd00:96::a"], ipFamilies=["IPv6"])
    node = replace(NODE, node_ips=(ip_address("fd00:50::10"),), local_ips=(ip_address("fd00:50::10"),)).for_family(6)

    def sync(*ips: str) -> None:
        objects = (sticky, endpoint_slice("web", list(ips), address_type="IPv6"))
        backend.sync(compute_plan(node, state(*objects), family=6))

    kernel = FakeNft("ip6 kproxy")
    backend = NftBackend(kernel, 6)
    sync("fd00:244::2", "fd00:244::3")
    listing = kernel.listing()
    clients = sorted(name for name in listing["sets"] if affinity6.is_client_set(name))
    assert len(clients) == 2 and not [n for n in listing["sets"] if n.startswith("affinity-")]
    lookup = [n for n in listing["chains"] if affinity6.timeout_of_chain(n) == 600]
    assert len(lookup) == 2  # ClusterIP (internal) and NodePort (external) endpoint lists
    rules = listing["chains"][lookup[0]][1]
    # one rule per endpoint: a client in that endpoint's set goes back to it
    parsed = sorted(rule.removeprefix("ip6 saddr @").split(" meta l4proto tcp dnat ip6 to ") for rule in rules)
    assert sorted(name for name, _ in parsed) == clients
    assert sorted(target for _, target in parsed) == ["[fd00:244::2]:80", "[fd00:244::3]:80"]
    frontends = listing["sets"][affinity6.FRONTENDS][1]
    assert list(frontends) == ["fd00:96::a . tcp . 80"]
    assert "fd00:96::a . tcp . 80" in listing["sets"]["frontends"][1]  # the random choice stays behind it

    kernel.fill(clients[0], "fd00::1")  # what the kernel's update rule adds
    assert backend.differences() == []
    sync("fd00:244::3")
    listing = kernel.listing()
    assert len([n for n in listing["sets"] if affinity6.is_client_set(n)]) == 1
    assert all(len(listing["chains"][n][1]) == 1 for n in lookup)
    sync()  # no endpoints: rejected, no lookup chain is left to jump to
    listing = kernel.listing()
    assert not [n for n in listing["chains"] if affinity6.timeout_of_chain(n)]
    assert not listing["sets"][affinity6.FRONTENDS][1]


def test_a_failed_load_into_a_new_table_leaves_no_table() -> None:
    class Refusing(FakeNft):
        refuse = True

        def load_elements(self, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
            if self.refuse:
                raise NftError("loading elements: set endpoints-1: No space left on device")
            return super().load_elements(*args, **kwargs)

    kernel = Refusing()
    backend = NftBackend(kernel)
    with pytest.raises(NftError, match="endpoints-1"):
        backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    # the skeleton it had created is gone again: nothing half-built serves packets
    assert kernel.structure() is None
    # and the next sync starts over from nothing
    kernel.refuse = False
    assert backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"]))).full
    assert kernel.elements("endpoints-1") == {"10.96.0.10 . tcp . 80 . 0": "10.244.1.2 . 80"}


def test_a_table_naming_this_skeleton_but_with_a_rule_added_is_replaced_whole() -> None:
    kernel = FakeNft()
    backend = NftBackend(kernel)
    plan = make(WEB, endpoint_slice("web", ["10.244.1.2"]))
    backend.sync(plan)
    kernel.apply("add rule ip kproxy services counter\n")  # the digest element is still there
    assert backend.sync(plan, full=True).transactions == 1
    assert lines(kernel.scripts[-1])[1] == "delete table ip kproxy"
    assert "counter" not in kernel.chain_rules("services")
