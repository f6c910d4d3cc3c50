"""Taking over from upstream kube-proxy, without root: upstream's iptables chains removed on
FakeIptables (kubelet's and kproxy's kept), and the IPVS step against a fake IPVS kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.iptables.restore import is_ours
from kproxy.backends.iptables.save import parse_save_all
from kproxy.backends.iptables.upstream import upstream_removal
from kproxy.backends.takeover import VirtualServer, remove_upstream_ipvs
from tests.upstream_rules import UpstreamPort, iptables_restore

PORTS = [UpstreamPort("default/web:http", "tcp", "10.96.0.90", 80, 30090, ("10.244.1.3:8080", "10.244.2.2:8080"))]


def upstream_node() -> FakeIptables:
    kernel = FakeIptables()
    kernel.restore(iptables_restore(PORTS, "10.244.0.0/16"))
    return kernel


def chains(kernel: FakeIptables) -> dict[str, set[str]]:
    return {table: set(c) for table, c in kernel.tables.items()}


def test_removes_upstreams_chains_and_jumps_and_keeps_kubelets():
    kernel = upstream_node()
    restore, removed = upstream_removal(parse_save_all(kernel.save_all()))
    kernel.restore(restore.text)  # the fake refuses deleting a chain still jumped to
    left = chains(kernel)
    assert not any(c.startswith("KUBE-") and c not in ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY")
                   for table in left.values() for c in table), left
    assert "KUBE-FIREWALL" in left["filter"] and "KUBE-KUBELET-CANARY" in left["mangle"]
    # kubelet's jumps into KUBE-FIREWALL stay; nothing else of upstream's in the built-in chains
    builtin_rules = [r for table in ("nat", "filter") for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT",
                                                               "POSTROUTING") for r in kernel.tables[table].get(c, ())]
    assert builtin_rules == ["-A INPUT -j KUBE-FIREWALL", "-A OUTPUT -j KUBE-FIREWALL"]
    assert "mangle/KUBE-PROXY-CANARY" in removed and "nat/KUBE-SEP-" not in removed
    assert sum(r.startswith("nat/KUBE-SEP-") for r in removed) == 2
    # a second pass finds nothing
    again, nothing = upstream_removal(parse_save_all(kernel.save_all()))
    assert not again and nothing == []


def test_chains_kproxy_programs_under_upstreams_names_stay():
    kernel = upstream_node()
    restore, removed = upstream_removal(parse_save_all(kernel.save_all()), keep=is_ours)
    kernel.restore(restore.text)
    left = chains(kernel)
    # KUBE-SEP-* are in kproxy's is_ours (its full sync deletes them): kept here
    assert {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"} <= left["nat"]
    assert "KUBE-PROXY-CANARY" not in left["nat"] | left["filter"] | left["mangle"]
    assert "KUBE-FORWARD" not in left["filter"] and "KUBE-PROXY-FIREWALL" not in left["filter"]
    assert {"filter/KUBE-FORWARD", "filter/KUBE-PROXY-FIREWALL", "nat/KUBE-PROXY-CANARY"} <= set(removed)
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in \
        kernel.tables["nat"]["PREROUTING"]


@dataclass
class FakeIpvs:
    """IpvsState in memory; `loaded` False is a kernel without ip_vs."""

    loaded: bool = True
    servers: list[VirtualServer] = field(default_factory=list)
    links: set[str] = field(default_factory=set)
    sets: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # ipsets the kernel will not destroy
    calls: list[str] = field(default_factory=list)

    def available(self) -> bool:
        self.calls.append("available")
        return self.loaded

    def virtual_servers(self) -> list[VirtualServer]:
        self.calls.append("virtual_servers")
        return list(self.servers)

    def delete_virtual_server(self, vs: VirtualServer) -> None:
        self.servers.remove(vs)

    def has_link(self, name: str) -> bool:
        return name in self.links

    def delete_link(self, name: str) -> None:
        self.links.remove(name)

    def ipsets(self) -> list[str]:
        return list(self.sets)

    def destroy_ipset(self, name: str) -> None:
        if name in self.refuse:
            raise OSError(16, "Device or resource busy")
        self.sets.remove(name)


def test_ipvs_step_is_a_no_op_without_ip_vs():
    state = FakeIpvs(loaded=False, servers=[VirtualServer("tcp", "10.96.0.1", 443)], links={"kube-ipvs0"},
                     sets=["KUBE-CLUSTER-IP"])
    assert remove_upstream_ipvs(state) == []
    assert state.calls == ["available"] and state.servers and state.links and state.sets


def test_ipvs_leftovers_go_and_others_stay():
    state = FakeIpvs(servers=[VirtualServer("tcp", "10.96.0.1", 443), VirtualServer("udp", "10.96.0.10", 53)],
                     links={"kube-ipvs0", "eth0"},
                     sets=["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP", "my-firewall"],
                     refuse={"KUBE-LOOP-BACK"})
    removed = remove_upstream_ipvs(state)
    assert state.servers == [] and state.links == {"eth0"}
    assert state.sets == ["KUBE-LOOP-BACK", "my-firewall"]  # one refused (logged), someone else's kept
    assert removed == ["2 IPVS virtual servers", "link kube-ipvs0", "ipsets KUBE-CLUSTER-IP,KUBE-NODE-PORT-TCP"]


def test_virtual_servers_without_kube_ipvs0_are_someone_elses():
    state = FakeIpvs(servers=[VirtualServer("tcp", "192.0.2.10", 80)], links={"eth0"})
    assert remove_upstream_ipvs(state) == []
    assert state.servers == [VirtualServer("tcp", "192.0.2.10", 80)]
    assert "virtual_servers" not in state.calls
