"""`kproxy lab` refuses clearly without root, rejects bad names before touching anything, and
says what it waits for."""

from __future__ import annotations

import pytest

from kproxy.cli import main
from kproxy.lab.build import DEFAULTS, Lab, LabState, load_objects
from kproxy.lab.spec import LabError, cluster_ip_endpoints, complete_services, endpoint_slices, place, read_manifests


def test_lab_needs_root(monkeypatch, capsys):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["lab", "up"]) == 1
    err = capsys.readouterr().err
    assert err == "kproxy lab: needs root (it creates network namespaces)\n"


@pytest.mark.parametrize("name", ["a/b", "x" * 21, "bad name", ""])
def test_lab_names_are_checked(name):
    with pytest.raises(LabError, match="lab name"):
        Lab(name)


def test_waiting_for_the_rules_says_which_nodes_it_waits_for(tmp_path, monkeypatch):
    lab = Lab("waitlab", root=tmp_path)
    lab.state = LabState(name="waitlab", nodes=3, proxy_mode="nftables")
    m = read_manifests(load_objects(DEFAULTS))
    services = complete_services(m.services)
    pods = place(m.workloads, (), lab.nodes())
    want = cluster_ip_endpoints(endpoint_slices(services, pods, lab.nodes()))
    reads = {"node1": 0, "node2": 0, "node3": 0}
    follows_after = {"node1": 1, "node2": 20, "node3": 40}  # reads until each node's rules match

    def programmed(node: str) -> set[str]:
        reads[node] += 1
        return want if reads[node] >= follows_after[node] else set()

    monkeypatch.setattr(lab, "programmed_endpoints", programmed)
    monkeypatch.setattr("kproxy.lab.build.PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr("time.sleep", lambda _s: None)
    said: list[str] = []
    lab.wait_rules(services, pods, said.append)
    assert said == ["waiting for node2, node3...", "waiting for node3..."]
    reads.update(node1=0, node2=0, node3=0)
    follows_after.update(node2=1, node3=10**9)  # node3's agent never follows
    clock = iter(range(0, 10**6, 5))
    monkeypatch.setattr("time.monotonic", lambda: float(next(clock)))
    with pytest.raises(LabError, match="the rules on node3 did not follow within 30s"):
        lab.wait_rules(services, pods, lambda _m: None)
