"""Local-traffic detectors (--detect-local-mode) and the externalIPs allow-list
(--external-ip-cidrs): the planner's decision, each backend's rendering, the agent
following the Node's podCIDRs, and bad values as one line with exit 2. No root."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest
from structlog.testing import capture_logs

from kproxy.agent import Agent
from kproxy.backends.iptables.render import MASQ_OFF_CLUSTER, render
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.backends.nft.render import render_skeleton
from kproxy.cli import main
from kproxy.model import ClusterState, LocalMode, NodeConfig
from kproxy.plan import FrontendKind, LocalDetector
from kproxy.planner import compute_plan, local_detector
from kproxy.tracker import Tracker
from tests.builders import endpoint_slice, service
from tests.unit.test_agent import RecordingBackend
from tests.unit.test_planner import NODE, plan, state

V4, V6 = IPv4Network("10.244.0.0/16"), IPv6Network("fd00:244::/48")
POD_V4, POD_V6 = IPv4Network("10.244.1.0/24"), IPv6Network("fd00:244:1::/64")
DUAL = replace(NODE, cluster_cidrs=(V4, V6), pod_cidrs=(POD_V4, POD_V6))


@pytest.mark.parametrize(("mode", "extra", "v4", "v6"), [
    (LocalMode.CLUSTER_CIDR, {}, LocalDetector(cidrs=(V4,)), LocalDetector(cidrs=(V6,))),
    (LocalMode.NODE_CIDR, {}, LocalDetector(cidrs=(POD_V4,)), LocalDetector(cidrs=(POD_V6,))),
    (LocalMode.BRIDGE_INTERFACE, {"pod_bridge_interface": "cbr0"},
     LocalDetector(interface="cbr0"), LocalDetector(interface="cbr0")),
    (LocalMode.INTERFACE_NAME_PREFIX, {"pod_interface_prefix": "cali"},
     LocalDetector(interface="cali", interface_prefix=True), LocalDetector(interface="cali", interface_prefix=True)),
])
def test_each_mode_gives_each_family_its_detector(mode, extra, v4, v6):
    node = replace(DUAL, local_mode=mode, **extra)
    assert local_detector(node.for_family(4)) == v4
    assert local_detector(node.for_family(6)) == v6
    assert compute_plan(node, ClusterState(), family=6).local == v6


def test_a_family_without_cidrs_has_no_detector_as_upstreams_no_op():
    node = replace(NODE, local_mode=LocalMode.NODE_CIDR, pod_cidrs=(POD_V4,))
    assert not local_detector(node.for_family(6)).implemented
    assert not local_detector(replace(NODE, local_mode=LocalMode.NODE_CIDR)).implemented  # podCIDRs not known yet


def test_the_agent_follows_the_nodes_pod_cidrs():
    backend = RecordingBackend()
    tracker = Tracker(on_change=lambda: None)
    tracker.replace("Service", [service("web", cluster_ip="10.96.0.10")])
    tracker.replace("EndpointSlice", [endpoint_slice("web", ["10.244.1.2"])])
    node = replace(NODE, local_mode=LocalMode.NODE_CIDR)
    agent = Agent(node, {4: backend}, tracker)

    def node_object(*cidrs: str) -> dict:
        return {"kind": "Node", "metadata": {"name": "node1"}, "spec": {"podCIDRs": list(cidrs)}}

    agent.sync()
    tracker.replace("Node", [node_object("10.244.1.0/24", "fd00:244:1::/64")])
    agent.sync()
    tracker.replace("Node", [node_object("10.244.7.0/24")])
    agent.sync()
    assert [p.local for p, _full in backend.calls] == [
        LocalDetector(), LocalDetector(cidrs=(POD_V4,)), LocalDetector(cidrs=(IPv4Network("10.244.7.0/24"),))]


def test_a_bad_pod_cidr_leaves_the_node_out_with_a_warning():
    tracker = Tracker(on_change=lambda: None)
    with capture_logs() as logs:
        tracker.replace("Node", [{"kind": "Node", "metadata": {"name": "node1"}, "spec": {"podCIDRs": ["banana"]}}])
    assert tracker.snapshot().nodes == {}
    assert any("spec.podCIDRs[0]" in str(entry) for entry in logs)


def state_with_web() -> ClusterState:
    return state(service("web", cluster_ip="10.96.0.10", type="LoadBalancer", node_port=30080, lb_ips=["203.0.113.9"],
                         externalTrafficPolicy="Local"),
                 endpoint_slice("web", ["10.244.1.2"]))


@pytest.mark.parametrize(("extra", "pods", "not_local"), [
    ({}, "ip saddr @cluster-cidrs", "ip saddr != @no-masq-sources"),
    ({"local_mode": LocalMode.BRIDGE_INTERFACE, "pod_bridge_interface": "cbr0"}, 'iifname "cbr0"',
     'iifname != "cbr0"'),
    ({"local_mode": LocalMode.INTERFACE_NAME_PREFIX, "pod_interface_prefix": "cali"}, 'iifname "cali*"',
     'iifname != "cali*"'),
])
def test_nft_renders_the_detector_in_the_masquerade_and_short_circuit_rules(extra, pods, not_local):
    p = compute_plan(replace(NODE, **extra), state_with_web())
    services = next(c for c in render_skeleton(p, {}, ()).chains if c.name == "services").rules
    assert any(r.startswith("ip daddr . meta l4proto . th dport @cluster-frontends " + not_local) for r in services)
    assert any(r.startswith(pods + " ip daddr . meta l4proto . th dport vmap @sc-frontends") for r in services)
    kernel = FakeNft()
    NftBackend(kernel).sync(p)  # the fake takes it as one transaction


def test_nft_masquerade_all_with_an_interface_detector_masquerades_everyone():
    p = compute_plan(replace(NODE, masquerade_all=True, local_mode=LocalMode.BRIDGE_INTERFACE,
                             pod_bridge_interface="cbr0"), state_with_web())
    services = next(c for c in render_skeleton(p, {}, ()).chains if c.name == "services").rules
    assert services[0].endswith("ip saddr != @no-masq-sources jump mark-for-masquerade")


@pytest.mark.parametrize(("extra", "match"), [
    ({}, "-s 10.244.0.0/16"),
    ({"local_mode": LocalMode.BRIDGE_INTERFACE, "pod_bridge_interface": "cbr0"}, "-i cbr0"),
    ({"local_mode": LocalMode.INTERFACE_NAME_PREFIX, "pod_interface_prefix": "cali"}, "-i cali+"),
])
def test_iptables_renders_the_detector(extra, match):
    chains = render(compute_plan(replace(NODE, **extra), state_with_web()))
    assert chains["nat"][MASQ_OFF_CLUSTER] == (f"-A {MASQ_OFF_CLUSTER} {match} -j RETURN",
                                               f"-A {MASQ_OFF_CLUSTER} -j KUBE-MARK-MASQ")
    ext = next(rules for name, rules in chains["nat"].items() if name.startswith("KUBE-EXT-"))
    assert any(r.startswith(f"-A {name_of(ext)} {match} ") and "pod traffic" in r for r in ext)


def name_of(rules: tuple[str, ...]) -> str:
    return rules[0].split()[1]


def test_iptables_without_a_detector_masquerades_no_clusterip_traffic():
    chains = render(compute_plan(replace(NODE, local_mode=LocalMode.NODE_CIDR), state_with_web()))
    svc = next(rules for name, rules in chains["nat"].items() if name.startswith("KUBE-SVC-"))
    assert not any(MASQ_OFF_CLUSTER in r or "KUBE-MARK-MASQ" in r for r in svc)


# --- externalIPs allow-list ------------------------------------------------------------------

def external(node: NodeConfig) -> list[str]:
    sp = plan(service("web", external_ips=["203.0.113.5", "198.51.100.7"]), endpoint_slice("web", ["10.244.1.2"]),
              node=node).service_ports[0]
    return sorted(str(fe.ip) for fe in sp.frontends if fe.kind is FrontendKind.EXTERNAL_IP)


def test_without_the_allow_list_every_external_ip_is_programmed():
    assert external(NODE) == ["198.51.100.7", "203.0.113.5"]


def test_the_allow_list_keeps_only_external_ips_inside_it():
    node = replace(NODE, external_ip_cidrs=(IPv4Network("203.0.113.0/24"),))
    assert external(node) == ["203.0.113.5"]
    sp = plan(service("web", external_ips=["203.0.113.5", "198.51.100.7"]), node=node).service_ports[0]
    assert sp.refused_external_ips == (IPv4Address("198.51.100.7"),)
    assert external(replace(NODE, external_ip_cidrs=())) == []  # given but empty: none allowed


def test_refused_external_ips_are_logged_once_per_service():
    tracker = Tracker(on_change=lambda: None)
    tracker.replace("Service", [service("web", cluster_ip="10.96.0.10", external_ips=["198.51.100.7"]),
                                service("ok", cluster_ip="10.96.0.11", external_ips=["203.0.113.5"])])
    node = replace(NODE, external_ip_cidrs=(IPv4Network("203.0.113.0/24"),))
    agent = Agent(node, {4: RecordingBackend()}, tracker)
    with capture_logs() as logs:
        agent.sync()
        agent.sync()
        tracker.replace("Service", [service("web", cluster_ip="10.96.0.10",
                                            external_ips=["198.51.100.7", "198.51.100.8"])])
        agent.sync()
    warned = [e for e in logs if e["event"].startswith("externalIPs outside")]
    assert [(e["service"], e["external_ips"]) for e in warned] == [
        ("default/web", "198.51.100.7"), ("default/web", "198.51.100.7,198.51.100.8")]


# --- bad values: one line, exit 2 ------------------------------------------------------------

@pytest.mark.parametrize(("argv", "needle"), [
    (["sync", "--detect-local-mode", "PodCIDR"], "argument --detect-local-mode: invalid choice: 'PodCIDR'"),
    (["sync", "--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", ""],
     "argument --pod-interface-name-prefix: is empty"),
    (["sync", "--pod-bridge-interface", "a/b"], "argument --pod-bridge-interface: 'a/b' is not an interface name"),
    (["sync", "--external-ip-cidrs", "203.0.113.0/33"], "argument --external-ip-cidrs: '203.0.113.0/33' is not a CIDR"),
])
def test_bad_flag_values_exit_2_naming_the_flag(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize(("argv", "needle"), [
    (["--detect-local-mode", "InterfaceNamePrefix"],
     "--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix (detectLocal.interfaceNamePrefix)"),
    (["--detect-local-mode", "BridgeInterface"],
     "--detect-local-mode BridgeInterface needs --pod-bridge-interface (detectLocal.bridgeInterface)"),
    (["--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "kpnosuchbr0"],
     "--pod-bridge-interface (detectLocal.bridgeInterface) kpnosuchbr0: no such interface on this node"),
])
def test_incomplete_detection_settings_exit_2_before_anything_starts(capsys, tmp_path, argv, needle):
    manifests = tmp_path / "m.yaml"
    manifests.write_text("")
    code = main(["sync", "--manifests", str(manifests), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err == f"kproxy: error: {needle}\n"


def test_config_file_fields_set_the_detector(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                    "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: cali}\n"
                    "externalIPCIDRs: [203.0.113.0/24]\n")
    assert main(["config", "--print", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "detectLocalMode: InterfaceNamePrefix" in out and "interfaceNamePrefix: cali" in out
    assert "externalIPCIDRs:\n- 203.0.113.0/24" in out
    assert main(["config", "--print", "--config", str(path), "--detect-local-mode", "ClusterCIDR"]) == 0
    assert "detectLocalMode: ClusterCIDR" in capsys.readouterr().out  # the flag wins



# --- kproxy trace with an interface detector ---------------------------------------------------

def test_the_iptables_trace_counts_a_traced_address_as_not_local_with_an_interface_detector():
    """A traced address arrives on no interface, so with BridgeInterface it is not local:
    its ClusterIP connection is masqueraded for that reason. (The nftables trace reads the
    rules' expressions, which FakeNft does not list: tests/netns checks both backends.)"""
    from kproxy.backends.iptables.backend import IptablesBackend
    from kproxy.backends.iptables.fake import FakeIptables
    from kproxy.backends.iptables.trace import trace_iptables
    from kproxy.backends.trace import MASQ_OFF_CLUSTER_REASON

    node = replace(NODE, local_mode=LocalMode.BRIDGE_INTERFACE, pod_bridge_interface="cbr0")
    ipt = FakeIptables()
    IptablesBackend(ipt, route_localnet=lambda: None).sync(compute_plan(node, state_with_web()))
    result = trace_iptables(ipt.save_all(), IPv4Address("10.244.1.9"), IPv4Address("10.96.0.10"), 80, "tcp")
    assert (result.verdict, result.masquerade, result.masquerade_reasons) == (
        "dnat", True, (MASQ_OFF_CLUSTER_REASON,)), result
