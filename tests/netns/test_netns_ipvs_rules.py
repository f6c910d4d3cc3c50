"""IPVS mode's auxiliary nftables table, rendered for a Service set with every feature, loads
into the running kernel (a throwaway `unshare -n` namespace): on this host and, in the VM
matrix's ipvs group, on each Debian kernel (it avoids the constructs docs/kernels.md lists
as refused)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kproxy.backends.ipvs.aux import render_aux
from kproxy.backends.ipvs.render import nodeport_ips
from kproxy.planner import compute_plan
from kproxy.sources.manifests import load_manifests
from tests.unit.test_planner import NODE, state

pytestmark = pytest.mark.netns

EVERY_FEATURE = Path(__file__).resolve().parent.parent / "vm" / "data" / "every-feature.yaml"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")
def test_auxiliary_table_for_every_feature_loads() -> None:
    plan = compute_plan(NODE, state(*load_manifests(EVERY_FEATURE)))
    assert plan.service_ports, "every-feature.yaml gave no Service ports"
    script = render_aux(plan, nodeport_ips(plan, ()))
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", "nft -f - && nft list table ip kproxy-ipvs"],
                          input=script, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{done.stderr}\n{script}"
    listed = done.stdout
    for name in ("frontends", "reject-frontends", "firewall-allow", "hairpin", "cluster-ips"):
        assert f"set {name} " in listed, listed
    assert 'comment "' in listed  # Service names ride on the frontends' elements
    marks = listed[listed.index("map short-circuit-marks"):]
    assert "elements = {" in marks.split("}")[0] + "}", listed  # every-feature has a Local-policy LB
