"""Drift: rules changed behind kproxy's back are found and repaired by the next sync,
and finding nothing costs no read-back while the ruleset generation has not moved."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.agent import Agent
from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.tracker import Tracker
from tests.builders import endpoint_slice, service
from tests.unit.test_planner import NODE

WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)
SLICE = endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])


class CountingNft(FakeNft):
    """FakeNft that counts full listings (the costly read-back)."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    def list_table(self) -> dict[str, Any] | None:
        self.listings += 1
        return super().list_table()


def nft_agent() -> tuple[Agent, CountingNft]:
    tracker = Tracker()
    tracker.replace("Service", [WEB])
    tracker.replace("EndpointSlice", [SLICE])
    kernel = CountingNft()
    return Agent(NODE, {4: NftBackend(kernel)}, tracker, generation=kernel.generation), kernel


TAMPERING = [
    ("delete table ip kproxy", "table ip kproxy missing"),
    ("flush chain ip kproxy services", "chain services: 0 rules"),
    ("delete element ip kproxy endpoints-2 { 10.96.0.10 . tcp . 80 . 1 }", "endpoints-2: 1 element(s) missing"),
    ("add rule ip kproxy services accept", "chain services: 12 rules, want 11"),
    ("add element ip kproxy cluster-ips { 10.96.0.99 }", "cluster-ips: 1 element(s) not kproxy's"),
    ("add chain ip kproxy intruder", "chain intruder not kproxy's"),
]


@pytest.mark.parametrize(("tamper", "named"), TAMPERING, ids=[t[0].split(" kproxy")[0] for t in TAMPERING])
def test_the_next_sync_repairs_what_someone_else_changed(tamper, named):
    agent, kernel = nft_agent()
    agent.sync()
    programmed = kernel.list_table()
    kernel.apply(tamper + "\n")  # another agent's transaction
    report = agent.sync()
    (family,) = report.families
    assert family.full and any(named in d for d in family.drift), family.drift
    assert kernel.list_table() == programmed  # what kproxy had programmed, again
    assert agent.sync().families[0].drift == ()  # and it stays repaired


def test_no_change_anywhere_costs_no_read_back():
    agent, kernel = nft_agent()
    agent.sync()
    agent.sync()  # kproxy's own transaction is accounted for: nothing to read back
    before = kernel.listings
    for _ in range(3):
        assert agent.sync().families[0].drift == ()
    assert kernel.listings == before


def test_a_foreign_change_elsewhere_is_read_back_once_and_found_harmless():
    agent, kernel = nft_agent()
    agent.sync()
    kernel.apply("add table ip kproxy\n")  # a no-op transaction: the generation moves
    before = kernel.listings
    assert agent.sync().families[0].drift == ()
    assert kernel.listings == before + 1
    agent.sync()
    assert kernel.listings == before + 1


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
