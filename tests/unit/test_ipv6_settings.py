"""IPv6 is not dropped on the way from settings to plans (issue 16, item 5): a dual-stack
clusterCIDR in the config file, `nodePortAddresses: all`, and the Node's IPv6 InternalIP
all reach the IPv6 plan."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from kproxy.cli.config_file import apply_config_file
from kproxy.cli.parser import build_parser
from kproxy.cli.wiring import node_config
from kproxy.model import ClusterState, NodeConfig
from kproxy.node import node_ips_of
from kproxy.parse import parse_endpoint_slice, parse_service
from kproxy.planner import compute_plan
from tests.builders import endpoint_slice, service

HEADER = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


def settings(tmp_path, text: str, *flags: str):
    path = tmp_path / "config.yaml"
    path.write_text(HEADER + text)
    argv = ["run", "--config", str(path), *flags]
    args, _ignored = apply_config_file(build_parser().parse_args(argv), argv, build_parser)
    return args


def node_object(*addresses: tuple[str, str]) -> dict:
    return {"kind": "Node", "metadata": {"name": "node1"},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_config_file_cluster_cidr_keeps_both_families(tmp_path) -> None:
    args = settings(tmp_path, "clusterCIDR: 10.244.0.0/16,fd00::/48\n")
    assert args.cluster_cidr == (IPv4Network("10.244.0.0/16"), IPv6Network("fd00::/48"))
    node = node_config(args)
    assert node.families() == (4, 6)  # the IPv6 CIDR alone turns on the IPv6 rules
    assert node.for_family(6).cluster_cidrs == (IPv6Network("fd00::/48"),)


def test_node_port_addresses_all_covers_ipv6(tmp_path) -> None:
    args = settings(tmp_path, "nodePortAddresses: [all]\n", "--node-ip", "192.168.50.10", "--node-ip", "fd00:50::10")
    assert args.nodeport_addresses == (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))
    node = NodeConfig(hostname="node1", node_ips=tuple(args.node_ip), nodeport_cidrs=args.nodeport_addresses,
                      local_ips=(IPv4Address("192.168.50.10"), IPv6Address("fd00:50::10")))
    for family in (4, 6):
        plan = compute_plan(node.for_family(family), ClusterState(), family=family)
        assert plan.nodeport_all_local, family  # every local address of this family answers


def test_node_ips_of_uses_the_ipv6_internal_ip() -> None:
    dual = node_object(("InternalIP", "192.168.50.10"), ("InternalIP", "fd00:50::10"))
    assert node_ips_of(dual) == (IPv4Address("192.168.50.10"), IPv6Address("fd00:50::10"))
    v6_first = node_object(("InternalIP", "fd00:50::10"), ("InternalIP", "192.168.50.10"))
    assert node_ips_of(v6_first) == (IPv6Address("fd00:50::10"), IPv4Address("192.168.50.10"))
    v6_only = node_object(("Hostname", "node1"), ("InternalIP", "fd00:50::10"))
    assert node_ips_of(v6_only) == (IPv6Address("fd00:50::10"),)
    # the other family may come from an ExternalIP, as upstream's GetNodeHostIPs
    mixed = node_object(("InternalIP", "fd00:50::10"), ("ExternalIP", "203.0.113.5"))
    assert node_ips_of(mixed) == (IPv6Address("fd00:50::10"), IPv4Address("203.0.113.5"))


def test_the_nodes_ipv6_address_reaches_the_ipv6_plan() -> None:
    args = build_parser().parse_args(["run", "--hostname-override", "node1"])
    node_obj = node_object(("InternalIP", "192.168.50.10"), ("InternalIP", "fd00:50::10"))
    node = node_config(args, lambda _name: node_ips_of(node_obj))
    assert node.families() == (4, 6)
    svc = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080,
                  ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
    svc["spec"]["clusterIPs"] = ["10.96.0.10", "fd00:96::10"]
    slices = [endpoint_slice("web", ["10.244.1.2"], name="web-v4"),
              endpoint_slice("web", ["fd00:244:1::2"], name="web-v6", address_type="IPv6")]
    parsed = parse_service(svc)
    assert parsed is not None
    state = ClusterState(services={parsed.name: parsed},
                         slices={(s["metadata"]["namespace"], s["metadata"]["name"]): parse_endpoint_slice(s)
                                 for s in slices})
    plans = {family: compute_plan(node.for_family(family), state, family=family) for family in node.families()}
    assert plans[6].nodeport_ips == (ip_address("fd00:50::10"),)
    assert plans[4].nodeport_ips == (ip_address("192.168.50.10"),)
    assert [(str(t.ip), t.port) for t in plans[6].service_ports[0].internal_targets] == [("fd00:244:1::2", 80)]
    assert [(str(t.ip), t.port) for t in plans[4].service_ports[0].internal_targets] == [("10.244.1.2", 80)]
