"""The iptables backend without root: render, restore input, partial sync, read-back and
variant detection, against FakeIptables (an in-memory iptables-restore/-save)."""

from __future__ import annotations

import pytest

from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.iptables.kernel import IptablesError
from kproxy.backends.iptables.render import chain_hash, render
from kproxy.backends.iptables.restore import is_ours
from kproxy.backends.iptables.save import parse_save_all, read_view
from kproxy.backends.iptables.variant import choose_variant
from kproxy.planner import compute_plan
from tests.builders import endpoint, endpoint_slice, service
from tests.unit.test_planner import NODE, state

WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)
SVC = "KUBE-SVC-" + chain_hash("default/web", "tcp")
EXT = "KUBE-EXT-" + chain_hash("default/web", "tcp")


def make(*objects: dict):
    return compute_plan(NODE, state(*objects))


def backend(kernel: FakeIptables | None = None, **kw) -> tuple[IptablesBackend, FakeIptables]:
    kernel = kernel or FakeIptables()
    return IptablesBackend(kernel, route_localnet=lambda: None, **kw), kernel


def kernel_chains(kernel: FakeIptables) -> dict[str, dict[str, list[str]]]:
    """Our chains as the fake kernel holds them, comparable with render()."""
    return {t: {c: rules for c, rules in chains.items() if is_ours(t, c) or c == "KUBE-FIREWALL"}
            for t, chains in parse_save_all(kernel.save_all()).items() if t in ("nat", "filter")}


def rendered(plan) -> dict[str, dict[str, list[str]]]:
    return {t: {c: list(r) for c, r in chains.items()} for t, chains in render(plan).items()}


def test_chain_names_are_upstreams_hash():
    # upstream: "KUBE-SVC-" + base32(sha256("default/web" + "tcp"))[:16]
    assert SVC == "KUBE-SVC-LOLE4ISW44XBNF3G"


def test_first_sync_writes_every_chain_and_the_jumps_in_one_restore_per_table():
    backend_, kernel = backend()
    result = backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    assert result.full and len(kernel.inputs) == 1
    text = kernel.inputs[0]
    assert text.count("COMMIT") == 2 and text.index("*filter") < text.index("*nat")
    nat = parse_save_all(kernel.save_all())["nat"]
    assert nat[SVC] == [
        f"-A {SVC} -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MASQ-OFF-CLUSTER",
        f"-A {SVC} -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.244.1.2:80",
        f"-A {SVC} -p tcp -j DNAT --to-destination 10.244.1.3:80",
    ]
    assert f"-A KUBE-NODEPORTS -m comment --comment \"default/web NodePort\" -p tcp -m tcp --dport 30080 -j {EXT}" \
        in nat["KUBE-NODEPORTS"]
    assert [r.split(" -j ")[-1] for r in nat["PREROUTING"]] == ["KUBE-SERVICES"]
    assert [r.split(" -j ")[-1] for r in nat["POSTROUTING"]] == ["KUBE-POSTROUTING"]
    filt = parse_save_all(kernel.save_all())["filter"]
    # listed order kept although each jump is inserted at the top
    assert [r.split(" -j ")[-1] for r in filt["FORWARD"]] == ["KUBE-SERVICES", "KUBE-CLUSTER-IPS"]
    assert kernel_chains(kernel) == rendered(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))


def test_probabilities_give_each_of_n_endpoints_an_equal_share():
    backend_, kernel = backend()
    backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"])))
    rules = parse_save_all(kernel.save_all())["nat"][SVC][1:]
    probabilities = [float(r.split("--probability ")[1].split()[0]) for r in rules[:-1]]
    assert probabilities == pytest.approx([1 / 4, 1 / 3, 1 / 2])
    assert "statistic" not in rules[-1]


def test_unchanged_plan_writes_nothing_and_one_endpoint_rewrites_one_chain():
    backend_, kernel = backend()
    other = service("other", cluster_ip="10.96.0.11")
    objs = [WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"]), other, endpoint_slice("other", ["10.244.2.2"])]
    backend_.sync(make(*objs))
    result = backend_.sync(make(*objs))
    assert (result.full, result.operations, len(kernel.inputs)) == (False, 0, 1)
    objs[1] = endpoint_slice("web", ["10.244.1.2", "10.244.1.4"])
    result = backend_.sync(make(*objs))
    assert not result.full
    assert kernel.inputs[1] == "\n".join([
        "*nat",
        f":{SVC} - [0:0]",
        f"-A {SVC} -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MASQ-OFF-CLUSTER",
        f"-A {SVC} -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.244.1.2:80",
        f"-A {SVC} -p tcp -j DNAT --to-destination 10.244.1.4:80",
        "COMMIT", ""])
    assert result.operations == 3
    assert kernel_chains(kernel) == rendered(make(*objs))


def test_removed_service_chains_are_deleted_in_the_same_transaction():
    backend_, kernel = backend()
    other = [service("other", cluster_ip="10.96.0.11"), endpoint_slice("other", ["10.244.2.2"])]
    backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"]), *other))
    backend_.sync(make(*other))
    text = kernel.inputs[-1]
    assert f"-X {SVC}" in text and f"-X {EXT}" in text
    assert SVC not in kernel.save_all() and EXT not in kernel.save_all()
    assert kernel_chains(kernel) == rendered(make(*other))


def test_partial_syncs_end_where_a_full_sync_would():
    backend_, kernel = backend()
    steps = [
        [WEB, endpoint_slice("web", ["10.244.1.2"])],
        [WEB, endpoint_slice("web", ["10.244.1.2", endpoint("10.244.1.3", node="node1")])],
        [WEB, endpoint_slice("web", [])],
        [service("a", cluster_ip="10.96.0.20", external_ips=["203.0.113.1"]), endpoint_slice("a", ["10.244.2.9"])],
        [],
    ]
    for objs in steps:
        backend_.sync(make(*objs))
        assert kernel_chains(kernel) == rendered(make(*objs)), objs
    assert len(kernel.inputs) == len(steps)


def test_a_refused_restore_makes_the_next_sync_full():
    backend_, kernel = backend()
    backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.fail_next = "iptables-restore: line 3 failed"
    with pytest.raises(IptablesError):
        backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])))
    result = backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.3"])))
    assert result.full
    assert kernel_chains(kernel) == rendered(make(WEB, endpoint_slice("web", ["10.244.1.3"])))


def test_full_sync_adopts_leftovers_and_does_not_duplicate_jumps():
    kernel = FakeIptables()
    kernel.restore("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-OLD - [0:0]\n:KUBE-SVC-OLD - [0:0]\n"
                   "-A KUBE-SVC-OLD -j KUBE-SEP-OLD\n-A KUBE-SERVICES -j KUBE-SVC-OLD\n"
                   "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
                   ":OTHER - [0:0]\n-A OTHER -j ACCEPT\nCOMMIT\n")
    backend_, _ = backend(kernel)
    backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    nat = parse_save_all(kernel.save_all())["nat"]
    assert "KUBE-SEP-OLD" not in nat and "KUBE-SVC-OLD" not in nat
    assert nat["OTHER"] == ["-A OTHER -j ACCEPT"]  # not ours: untouched
    assert len(nat["PREROUTING"]) == 1
    backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])), full=True)
    assert len(parse_save_all(kernel.save_all())["nat"]["PREROUTING"]) == 1


def test_cleanup_removes_chains_and_jumps_but_keeps_kube_firewall():
    backend_, kernel = backend()
    backend_.sync(make(WEB, endpoint_slice("web", [endpoint("10.244.1.2", node="node1")])))
    assert "KUBE-HAIRPIN-02" in parse_save_all(kernel.save_all())["nat"]
    assert backend_.cleanup()
    tables = parse_save_all(kernel.save_all())
    assert not [c for t, chains in tables.items() for c in chains if is_ours(t, c)]
    nat = tables.get("nat", {})  # (an empty table is not listed)
    assert not [c for c in nat if c.startswith("KUBE-HAIRPIN")]
    assert nat.get("PREROUTING", []) == [] and nat.get("POSTROUTING", []) == []
    assert "KUBE-FIREWALL" in tables["filter"]
    assert not backend_.cleanup()
    assert not backend_.read_view().present


def test_no_endpoints_rejects_in_filter_and_localhost_nodeports_are_optional():
    backend_, kernel = backend(localhost_nodeports=False)
    backend_.sync(make(WEB))
    tables = parse_save_all(kernel.save_all())
    assert "KUBE-FIREWALL" not in tables["filter"]
    assert next(r for r in tables["filter"]["KUBE-SERVICES"] if "default/web ClusterIP" in r).endswith("-j REJECT")
    assert next(r for r in tables["filter"]["KUBE-NODEPORTS"] if "30080" in r).endswith("-j REJECT")
    assert not any("127.0.0.1" in r for r in tables["nat"]["KUBE-SERVICES"])
    backend2, kernel2 = backend()
    backend2.sync(make(WEB))
    filt = parse_save_all(kernel2.save_all())["filter"]
    assert filt["KUBE-FIREWALL"] == [
        '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
        "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"]


def test_route_localnet_is_set_on_full_syncs_only_with_localhost_nodeports():
    calls = []
    backend_ = IptablesBackend(FakeIptables(), route_localnet=lambda: calls.append(1))
    backend_.sync(make(WEB))
    backend_.sync(make(WEB))
    assert calls == [1]
    IptablesBackend(FakeIptables(), localhost_nodeports=False, route_localnet=lambda: calls.append(2)).sync(make(WEB))
    assert calls == [1]


def test_read_view_reconstructs_frontends_and_endpoints():
    backend_, _ = backend()
    backend_.sync(make(
        service("web", cluster_ip="10.96.0.10", type="LoadBalancer", node_port=30080,
                external_ips=["203.0.113.1"], lb_ips=["203.0.113.2"]),
        endpoint_slice("web", ["10.244.1.2", "10.244.2.2"], port=8080),
        service("empty", cluster_ip="10.96.0.11"),
    ))
    view = backend_.read_view()
    assert view.present and view.nodeport_ips == ("192.168.50.10", "127.0.0.1")
    by_name = {sp.name: sp for sp in view.service_ports}
    web = {fe.kind: fe for fe in by_name["default/web"].frontends}
    eps = ("10.244.1.2:8080", "10.244.2.2:8080")
    assert web["ClusterIP"].address == "10.96.0.10:80" and web["ClusterIP"].endpoints == eps
    assert web["NodePort"].address == "192.168.50.10:30080,127.0.0.1:30080" and web["NodePort"].endpoints == eps
    assert web["ExternalIP"].endpoints == eps and web["LoadBalancer"].address == "203.0.113.2:80"
    assert by_name["default/web"].protocol == "TCP"
    (empty,) = by_name["default/empty"].frontends
    assert (empty.verdict, empty.endpoints) == ("reject", ())


def test_affinity_uses_recent_lists_per_endpoint():
    svc = service("web", cluster_ip="10.96.0.10")
    svc["spec"]["sessionAffinity"] = "ClientIP"
    svc["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 600}}
    backend_, kernel = backend()
    backend_.sync(make(svc, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    rules = parse_save_all(kernel.save_all())["nat"][SVC]
    assert any("--rcheck --seconds 600 --reap" in r and r.endswith("10.244.1.2:80") for r in rules)
    assert any("--set" in r and "statistic" in r and r.endswith("10.244.1.2:80") for r in rules)
    assert backend_.read_view().service_ports[0].frontends[0].endpoints == ("10.244.1.2:80", "10.244.1.3:80")


def test_external_policy_local_short_circuits_pods_and_local_sources():
    svc = service("web", cluster_ip="10.96.0.10", type="LoadBalancer", node_port=30080, lb_ips=["203.0.113.2"])
    svc["spec"]["externalTrafficPolicy"] = "Local"
    backend_, kernel = backend()
    backend_.sync(make(svc, endpoint_slice("web", [endpoint("10.244.2.2", node="node2")])))
    tables = parse_save_all(kernel.save_all())
    ext = tables["nat"][EXT]
    assert not any(r.endswith("-j KUBE-MARK-MASQ") and "LOCAL" not in r for r in ext)  # source kept
    assert any("-s 10.244.0.0/16" in r and r.endswith(f"-j {SVC}") for r in ext)
    assert any("--src-type LOCAL" in r and r.endswith(f"-j {SVC}") for r in ext)
    # no local endpoint: what is not short-circuited is dropped (endpoints exist elsewhere)
    assert any("default/web LoadBalancer" in r and r.endswith("-j DROP") for r in tables["filter"]["KUBE-SERVICES"])
    lb = [fe for fe in backend_.read_view().service_ports[0].frontends if fe.kind == "LoadBalancer"]
    assert [fe.verdict for fe in lb] == ["drop"]


def test_source_ranges_only_let_allowed_sources_reach_the_lb_frontend():
    svc = service("web", cluster_ip="10.96.0.10", type="LoadBalancer", node_port=30080, lb_ips=["203.0.113.2"])
    svc["spec"]["loadBalancerSourceRanges"] = ["198.51.100.0/24"]
    backend_, kernel = backend()
    backend_.sync(make(svc, endpoint_slice("web", ["10.244.2.2"])))
    tables = parse_save_all(kernel.save_all())
    fw = "KUBE-FW-" + SVC[9:]
    assert tables["nat"][fw] == [f"-A {fw} -s 198.51.100.0/24 -j {EXT}"]
    assert any("-d 203.0.113.2/32" in r and r.endswith(f"-j {fw}") for r in tables["nat"]["KUBE-SERVICES"])
    assert any("-d 203.0.113.2/32" in r and r.endswith("-j DROP") for r in tables["filter"]["KUBE-SERVICES"])
    lb = [fe for fe in backend_.read_view().service_ports[0].frontends if fe.kind == "LoadBalancer"]
    assert [fe.endpoints for fe in lb] == [("10.244.2.2:80",)]


def test_fake_rejects_dangling_jumps_and_deleting_referenced_chains():
    kernel = FakeIptables()
    with pytest.raises(IptablesError):
        kernel.restore("*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n")
    kernel.restore("*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n")
    with pytest.raises(IptablesError):
        kernel.restore("*nat\n:KUBE-B - [0:0]\n-X KUBE-B\nCOMMIT\n")
    assert "-A KUBE-A -j KUBE-B" in kernel.save("nat")  # all or nothing


@pytest.mark.parametrize(("legacy", "nft", "expected"), [
    (None, None, "legacy"),
    ("", None, "legacy"),
    (None, "", "nft"),
    ("", "", "nft"),  # nothing anywhere: nft, the kernel interface answers
    ("*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n", "*nat\n" + "-A X -j Y\n" * 50, "legacy"),
    ("*filter\n-A INPUT -j ACCEPT\n", "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\n", "nft"),
    ("*filter\n" + "-A INPUT -j ACCEPT\n" * 3, "", "legacy"),
    ("*filter\n-A INPUT -j ACCEPT\n", "*filter\n" + "-A INPUT -j ACCEPT\n" * 3, "nft"),
    ("*filter\n" + "-A INPUT -j ACCEPT\n" * 12, "*filter\n" + "-A INPUT -j ACCEPT\n" * 5, "legacy"),
])
def test_variant_detection_follows_upstream(legacy, nft, expected):
    assert choose_variant(legacy, nft) == expected


def test_read_view_of_nothing_is_not_present():
    assert not read_view({}).present


def test_hairpin_is_one_rule_per_local_pod_and_no_endpoint_gets_a_chain():
    backend_, kernel = backend()
    local = endpoint("10.244.1.2", node="node1")
    objs = [WEB, endpoint_slice("web", [local, endpoint("10.244.2.2", node="node2")]),
            service("api", cluster_ip="10.96.0.11"), endpoint_slice("api", [local])]
    backend_.sync(make(*objs))
    nat = parse_save_all(kernel.save_all())["nat"]
    # the rule sits in one of 64 chains, by the address's last 6 bits (2), there while it
    # holds rules; KUBE-HAIRPIN jumps to it
    assert nat["KUBE-HAIRPIN"] == ["-A KUBE-HAIRPIN -d 0.0.0.2/0.0.0.63 -j KUBE-HAIRPIN-02"]
    assert nat["KUBE-HAIRPIN-02"] == ["-A KUBE-HAIRPIN-02 -s 10.244.1.2/32 -d 10.244.1.2/32 -j KUBE-MARK-MASQ"]
    assert nat["KUBE-POSTROUTING"][0] == "-A KUBE-POSTROUTING -m conntrack --ctstate DNAT -j KUBE-HAIRPIN"
    assert not [c for c in nat if c.startswith("KUBE-SEP-")]
    backend_.sync(make(WEB, endpoint_slice("web", [endpoint("10.244.2.2", node="node2")])))
    nat = parse_save_all(kernel.save_all())["nat"]
    assert nat["KUBE-HAIRPIN"] == []
    assert "KUBE-HAIRPIN-02" not in nat


def test_hairpin_chains_split_local_pods_by_their_last_bits():
    backend_, kernel = backend()
    pods = ["10.244.1.2", "10.244.1.66", "10.244.1.3"]  # .66 = 64 + 2: the same chain as .2
    backend_.sync(make(WEB, endpoint_slice("web", [endpoint(ip, node="node1") for ip in pods])))
    nat = parse_save_all(kernel.save_all())["nat"]
    assert nat["KUBE-HAIRPIN"] == ["-A KUBE-HAIRPIN -d 0.0.0.2/0.0.0.63 -j KUBE-HAIRPIN-02",
                                   "-A KUBE-HAIRPIN -d 0.0.0.3/0.0.0.63 -j KUBE-HAIRPIN-03"]
    assert nat["KUBE-HAIRPIN-02"] == [f"-A KUBE-HAIRPIN-02 -s {ip}/32 -d {ip}/32 -j KUBE-MARK-MASQ"
                                      for ip in ("10.244.1.2", "10.244.1.66")]
    assert len(nat["KUBE-HAIRPIN-03"]) == 1
    assert sorted(c for c in nat if c.startswith("KUBE-HAIRPIN-")) == ["KUBE-HAIRPIN-02", "KUBE-HAIRPIN-03"]
    backend_.sync(make(WEB, endpoint_slice("web", [endpoint("10.244.1.66", node="node1")])))
    nat = parse_save_all(kernel.save_all())["nat"]
    assert nat["KUBE-HAIRPIN"] == ["-A KUBE-HAIRPIN -d 0.0.0.2/0.0.0.63 -j KUBE-HAIRPIN-02"]
    assert nat["KUBE-HAIRPIN-02"] == ["-A KUBE-HAIRPIN-02 -s 10.244.1.66/32 -d 10.244.1.66/32 -j KUBE-MARK-MASQ"]
    assert "KUBE-HAIRPIN-03" not in nat  # its last rule went, and the chain with it
    # and a partial sync brings it back
    pods = ["10.244.1.66", "10.244.1.3"]
    backend_.sync(make(WEB, endpoint_slice("web", [endpoint(ip, node="node1") for ip in pods])))
    assert parse_save_all(kernel.save_all())["nat"]["KUBE-HAIRPIN-03"] == [
        "-A KUBE-HAIRPIN-03 -s 10.244.1.3/32 -d 10.244.1.3/32 -j KUBE-MARK-MASQ"]


def test_cleanup_touches_only_builtin_chains_and_ours():
    backend_, kernel = backend()
    backend_.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.restore("*nat\n:CNI-HOSTPORT - [0:0]\n-A CNI-HOSTPORT -j KUBE-MARK-MASQ\nCOMMIT\n")
    with pytest.raises(IptablesError):  # someone else's rule still needs KUBE-MARK-MASQ
        backend_.cleanup()
    nat = parse_save_all(kernel.save_all())["nat"]
    assert nat["CNI-HOSTPORT"] == ["-A CNI-HOSTPORT -j KUBE-MARK-MASQ"] and SVC in nat  # nat untouched
    assert "KUBE-SERVICES" not in parse_save_all(kernel.save_all())["filter"]  # filter done


def test_ipv6_renders_ipv6_addresses_rejects_and_no_localhost_nodeports():
    from dataclasses import replace
    from ipaddress import IPv6Address, IPv6Network

    from kproxy.backends.iptables.render import jumps

    node6 = replace(NODE, node_ips=(*NODE.node_ips, IPv6Address("fd00:50::10")),
                    local_ips=(*NODE.local_ips, IPv6Address("fd00:50::10")),
                    cluster_cidrs=(*NODE.cluster_cidrs, IPv6Network("fd00:244::/56")),
                    service_cidrs=(*NODE.service_cidrs, IPv6Network("fd00:96::/112")))
    web6 = service("web", cluster_ip="fd00:96::10", type="NodePort", node_port=30080)
    web6["spec"].update(clusterIPs=["fd00:96::10"], ipFamilies=["IPv6"])
    empty6 = service("empty", cluster_ip="fd00:96::11")
    empty6["spec"].update(clusterIPs=["fd00:96::11"], ipFamilies=["IPv6"])
    slice6 = endpoint_slice("web", ["fd00:244::2", "fd00:244::3"], address_type="IPv6")
    plan = compute_plan(node6, state(web6, empty6, slice6), family=6)
    assert plan.family == 6
    backend_, kernel = backend(family=6)
    backend_.sync(plan)
    tables = parse_save_all(kernel.save_all())
    nat, filt = tables["nat"], tables["filter"]
    assert nat[SVC] == [
        f"-A {SVC} -d fd00:96::10/128 -p tcp -m tcp --dport 80 -j KUBE-MASQ-OFF-CLUSTER",
        f"-A {SVC} -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT "
        "--to-destination [fd00:244::2]:80",
        f"-A {SVC} -p tcp -j DNAT --to-destination [fd00:244::3]:80",
    ]
    assert "-A KUBE-MASQ-OFF-CLUSTER -s fd00:244::/56 -j RETURN" in nat["KUBE-MASQ-OFF-CLUSTER"]
    text = kernel.save_all()
    assert "127.0.0" not in text and "KUBE-FIREWALL" not in text
    assert any("fd00:96::11/128" in r and r.endswith("-j REJECT --reject-with tcp-reset")
               for r in filt["KUBE-SERVICES"])
    assert any(r.endswith("-j REJECT --reject-with icmp6-port-unreachable") for r in filt["KUBE-CLUSTER-IPS"])
    assert all(j.target != "KUBE-FIREWALL" for j in jumps(False))
    view = read_view(tables)
    (sp,) = [p for p in view.service_ports if p.name.startswith("default/web")]
    cluster = [fe for fe in sp.frontends if fe.kind == "ClusterIP"]
    assert [(fe.address, fe.endpoints) for fe in cluster] == [
        ("[fd00:96::10]:80", ("[fd00:244::2]:80", "[fd00:244::3]:80"))]  # IPv6 bracketed, as trace prints it
    with pytest.raises(ValueError):
        backend_.sync(make(WEB))  # an IPv4 plan to the IPv6 backend


def test_route_localnet_that_cannot_be_set_turns_localhost_nodeports_off():
    kernel = FakeIptables()
    IptablesBackend(kernel, route_localnet=lambda: False).sync(make(WEB))
    saved = kernel.save_all()
    assert "127.0.0.0/8" not in saved and "-j KUBE-FIREWALL" not in saved
    assert "--dport 30080" in saved  # NodePorts on the node's addresses still answer
