"""Drift: rules changed behind kproxy's back are found and repaired by the next sync;
finding nothing costs no read-back while the ruleset generation has not moved, and, with
the commit watch, while no other program's commit touched kproxy's table; a commit that
did touch it costs a read of what it touched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kproxy.agent import Agent
from kproxy.backends.base import MAX_TOUCHED_KEYS
from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.drift import Structure
from kproxy.backends.nft.fake import FakeNft, FakeWatch
from kproxy.tracker import Tracker
from tests.builders import endpoint_slice, service
from tests.unit.test_planner import NODE

WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)
SLICE = endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])


class CountingNft(FakeNft):
    """FakeNft that counts the drift check's reads: the structure (chains, rule counts, set
    names) and each set's elements."""

    def __init__(self) -> None:
        super().__init__()
        self.structures = 0
        self.sets_read: list[str] = []
        self.elements_read: list[str] = []  # one entry per element read by its key

    def structure(self) -> Structure | None:
        self.structures += 1
        return super().structure()

    def read_elements(self, name: str, spec: str) -> Iterator[tuple[str, str | None]]:
        self.sets_read.append(name)
        return super().read_elements(name, spec)

    def read_element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None:
        self.elements_read.append(name)
        return super().read_element(name, spec, key)

    def reads(self) -> int:
        return self.structures + len(self.sets_read) + len(self.elements_read)


def nft_agent(watch: bool = False) -> tuple[Agent, CountingNft, FakeWatch | None]:
    tracker = Tracker()
    tracker.replace("Service", [WEB])
    tracker.replace("EndpointSlice", [SLICE])
    kernel = CountingNft()
    events = FakeWatch([kernel]) if watch else None
    agent = Agent(NODE, {4: NftBackend(kernel)}, tracker, generation=kernel.generation, watch=events)
    return agent, kernel, events


TAMPERING = [
    ("delete table ip kproxy", "table ip kproxy missing"),
    ("flush chain ip kproxy services", "chain services: 0 rules"),
    ("delete element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 1 }", "endpoints-2: 1 element(s) missing"),
    ("add rule ip kproxy services accept", "chain services: 12 rules, want 11"),
    ("add element ip kproxy cluster-ips { 10.96.0.99 }", "cluster-ips: 1 element(s) not kproxy's"),
    ("add chain ip kproxy intruder", "chain intruder not kproxy's"),
    ("delete element ip kproxy frontends { 10.96.0.10 . tcp . 80 }\n"
     "add element ip kproxy frontends { 10.96.0.10 . tcp . 80 : goto reject-chain }",
     "frontends: 1 element(s) changed"),
]


@pytest.mark.parametrize("watch", [False, True], ids=["generation only", "commit watch"])
@pytest.mark.parametrize(("tamper", "named"), TAMPERING, ids=[t[0].split(" kproxy")[0] for t in TAMPERING])
def test_the_next_sync_repairs_what_someone_else_changed(tamper, named, watch):
    agent, kernel, _events = nft_agent(watch)
    agent.sync()
    programmed = kernel.list_table()
    kernel.apply(tamper + "\n")  # another agent's transaction
    report = agent.sync()
    (family,) = report.families
    assert family.full and any(named in d for d in family.drift), family.drift
    assert kernel.list_table() == programmed  # what kproxy had programmed, again
    assert agent.sync().families[0].drift == ()  # and it stays repaired


@pytest.mark.parametrize("watch", [False, True], ids=["generation only", "commit watch"])
def test_no_change_anywhere_costs_no_read_back(watch):
    agent, kernel, _events = nft_agent(watch)
    agent.sync()
    agent.sync()  # kproxy's own transaction is accounted for: nothing to read back
    before = kernel.reads()
    for _ in range(3):
        assert agent.sync().families[0].drift == ()
    assert kernel.reads() == before


def test_without_a_watch_a_foreign_change_elsewhere_is_read_back_once_whole():
    agent, kernel, _events = nft_agent()
    agent.sync()
    kernel.foreign_commit("ip filter")  # kubelet's iptables-nft, say: the generation moves
    assert agent.sync().families[0].drift == ()
    assert kernel.structures == 1 and "endpoints-2" in kernel.sets_read
    reads = kernel.reads()
    agent.sync()
    assert kernel.reads() == reads


def test_with_a_watch_foreign_changes_elsewhere_cost_no_read():
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    for table in ("ip filter", "ip6 nat", "inet kproxy", "ip6 kproxy"):  # not ip kproxy
        kernel.foreign_commit(table)
        assert agent.sync().families[0].drift == ()
    assert kernel.reads() == 0


def test_with_a_watch_only_the_elements_touched_are_read():
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    kernel.apply("delete element ip kproxy cluster-ips { 10.96.0.10 }\n"
                 "add element ip kproxy endpoints-2 { 10.96.0.99 . tcp . 80 . 0 : 10.244.9.9 . 80 }\n"
                 "delete element ip kproxy frontends { 10.96.0.10 . tcp . 80 }\n"
                 "add element ip kproxy frontends { 10.96.0.10 . tcp . 80 : goto reject-chain }\n")
    (family,) = agent.sync().families
    assert family.drift == ("cluster-ips: 1 element(s) missing", "frontends: 1 element(s) changed",
                            "endpoints-2: 1 element(s) not kproxy's")
    assert kernel.structures == 1 and kernel.sets_read == []
    assert sorted(kernel.elements_read) == ["cluster-ips", "endpoints-2", "frontends"]


def test_an_interval_set_touched_is_read_whole():
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    kernel.apply("add element ip kproxy service-cidrs { 10.200.0.0/16 }\n")
    assert agent.sync().families[0].drift == ("service-cidrs: 1 element(s) not kproxy's",)
    assert kernel.sets_read == ["service-cidrs"] and kernel.elements_read == []


def test_a_set_changed_in_more_elements_than_are_remembered_is_read_whole():
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    rogue = ", ".join(f"10.97.{n // 250}.{n % 250 + 1}" for n in range(MAX_TOUCHED_KEYS + 1))
    kernel.apply(f"add element ip kproxy cluster-ips {{ {rogue} }}\n")
    assert agent.sync().families[0].drift == (f"cluster-ips: {MAX_TOUCHED_KEYS + 1} element(s) not kproxy's",)
    assert kernel.sets_read == ["cluster-ips"] and kernel.elements_read == []


def test_with_a_watch_a_rule_change_reads_no_elements():
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    kernel.apply("add rule ip kproxy services accept\n")
    assert agent.sync().families[0].drift == ("chain services: 12 rules, want 11",)
    assert kernel.structures == 1 and kernel.sets_read == []


def test_with_a_watch_kproxys_own_changes_are_not_read_back():
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    for n in range(3):  # endpoints change: kproxy's own commits touch its sets
        agent.tracker.replace("EndpointSlice", [endpoint_slice("web", [f"10.244.1.{n + 2}", "10.244.1.9"])])
        assert agent.sync().operations > 0
    assert kernel.reads() == 0


def test_when_the_watch_lost_events_the_whole_table_is_read():
    agent, kernel, events = nft_agent(watch=True)
    agent.sync()
    kernel.apply("delete element ip kproxy cluster-ips { 10.96.0.10 }\n")
    assert events is not None
    events.lose()  # ENOBUFS: that commit's events never arrive
    (family,) = agent.sync().families
    assert family.drift == ("cluster-ips: 1 element(s) missing",)
    assert kernel.structures == 1 and "endpoints-2" in kernel.sets_read


def test_a_foreign_commit_during_kproxys_own_reads_only_what_was_touched():
    """Another program commits while kproxy applies: the generation is off by one, so the
    next sync asks the watch, which names kproxy's own sets too (it cannot tell whose
    commit was whose): those are read and found right; nothing else is."""
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    apply = kernel.apply

    def racing(script: str) -> None:
        kernel.foreign_commit("ip filter")
        apply(script)

    kernel.apply = racing  # type: ignore[method-assign]
    agent.tracker.replace("EndpointSlice", [endpoint_slice("web", ["10.244.1.7", "10.244.1.3"])])
    agent.sync()
    kernel.apply = apply  # type: ignore[method-assign]
    assert kernel.reads() == 0
    assert agent.sync().families[0].drift == ()
    assert kernel.structures == 1 and kernel.sets_read == []
    assert set(kernel.elements_read) <= {"endpoints-2", "nodeport-endpoints-2", "hairpin"}


def test_a_commit_whose_events_come_late_is_checked_when_they_come():
    """The generation can count a commit before its events are queued: the sync that read
    that generation must not take the table as verified at it."""
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    kernel.foreign_commit("ip filter")
    kernel.apply("delete element ip kproxy cluster-ips { 10.96.0.10 }\n")
    late = kernel.events.pop()  # not queued yet when the next sync reads the watch
    assert agent.sync().families[0].drift == ()
    kernel.events.append(late)
    assert agent.sync().families[0].drift == ("cluster-ips: 1 element(s) missing",)


def test_affinity_entries_the_kernel_adds_are_not_drift():
    sticky = service("web", cluster_ip="10.96.0.10", sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    tracker = Tracker()
    tracker.replace("Service", [sticky])
    tracker.replace("EndpointSlice", [SLICE])
    kernel = FakeNft()
    backend = NftBackend(kernel)
    Agent(NODE, {4: backend}, tracker).sync()
    kernel.fill("affinity-600", "10.0.0.1 . 10.96.0.10 . tcp . 80", "10.244.1.2 . 80")
    assert backend.differences() == []


def iptables_agent() -> tuple[Agent, FakeIptables]:
    tracker = Tracker()
    tracker.replace("Service", [WEB])
    tracker.replace("EndpointSlice", [SLICE])
    kernel = FakeIptables()
    backend = IptablesBackend(kernel, route_localnet=lambda: None)
    # iptables-legacy: no generation to watch, so the kernel is read every sync
    return Agent(NODE, {4: backend}, tracker, verify_interval=0.0), kernel


@pytest.mark.parametrize(("tamper", "named"), [
    ("*nat\n-F KUBE-SERVICES\nCOMMIT\n", "nat chain KUBE-SERVICES: 0 rules"),
    ("*nat\n-D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n",
     "nat OUTPUT: jump to KUBE-SERVICES missing"),
    ("*filter\n-A KUBE-SERVICES -j ACCEPT\nCOMMIT\n", "filter chain KUBE-SERVICES: 1 rules, want 0"),
])
def test_iptables_drift_is_repaired(tamper, named):
    agent, kernel = iptables_agent()
    agent.sync()
    saved = kernel.save_all()
    kernel.restore(tamper)
    report = agent.sync()
    assert any(named in d for d in report.families[0].drift), report.families[0].drift
    assert kernel.save_all() == saved


def test_a_foreign_commit_during_a_check_does_not_make_kproxy_read_its_own_repair_back():
    """A check at scale takes a while; others commit meanwhile. The repair's own commit
    (whose generation the transactions alone moved) is not read back by the next sync."""
    agent, kernel, _events = nft_agent(watch=True)
    agent.sync()
    structure = kernel.structure

    def slow_structure() -> Structure | None:
        kernel.foreign_commit("ip filter")  # kubelet, while kproxy reads
        return structure()

    kernel.structure = slow_structure  # type: ignore[method-assign]
    kernel.apply("flush chain ip kproxy services\n")
    assert agent.sync().families[0].drift == ("chain services: 0 rules, want 11",)
    kernel.structure = structure  # type: ignore[method-assign]
    reads = kernel.reads()
    for _ in range(2):
        assert agent.sync().families[0].drift == ()
    assert kernel.reads() == reads
