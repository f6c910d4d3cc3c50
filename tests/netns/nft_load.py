"""Run inside a network namespace by test_netns_nft_load.py: programs tests/vm/data/every-
feature.yaml (both families) one way, prints what the kernel then holds as normalized JSON.

  nft_load.py netlink   kproxy's full sync: skeleton by nft, elements over netlink
  nft_load.py nft       the same skeleton and elements as one `nft -f` script
  nft_load.py refill    a full sync that finds its skeleton there: one flush-and-fill
  nft_load.py refused   a load that empties two sets and names a missing one: the kernel
                        keeps what it had, the error names that set
"""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP))

from kproxy.backends.nft.backend import NftBackend  # noqa: E402
from kproxy.backends.nft.kernel import LibNftKernel, NftError, RecordingKernel  # noqa: E402
from kproxy.backends.nft.names import table_of  # noqa: E402
from kproxy.backends.nft.objects import Element, SetSpec  # noqa: E402
from kproxy.model import NodeConfig  # noqa: E402
from kproxy.planner import compute_plan  # noqa: E402
from kproxy.sources.manifests import load_manifests  # noqa: E402
from kproxy.tracker import ENDPOINT_SLICE, SERVICE, Tracker  # noqa: E402

MANIFEST = TOP / "tests" / "vm" / "data" / "every-feature.yaml"
NODE = NodeConfig(hostname="node1", node_ips=(ip_address("192.168.50.10"), ip_address("fd00:50::10")),
                  cluster_cidrs=(ip_network("10.244.0.0/16"), ip_network("fd00:244::/56")),
                  service_cidrs=(ip_network("10.96.0.0/16"), ip_network("fd00:96::/112")))


def plans() -> list[Any]:
    objects = load_manifests(MANIFEST)
    tracker = Tracker()
    tracker.replace_all({kind: [o for o in objects if o["kind"] == kind] for kind in (SERVICE, ENDPOINT_SLICE)})
    state = tracker.snapshot()
    return [compute_plan(NODE, state, family=family) for family in NODE.families()]


def normalized() -> list[Any]:
    """`nft -j list ruleset` without handles, each set's elements sorted (a hash set lists
    in its own order)."""
    listing = json.loads(subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                                        check=True).stdout)
    out = []
    for item in listing["nftables"]:
        (kind, body), = item.items()
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if "elem" in body:
            body["elem"] = sorted(body["elem"], key=json.dumps)
        out.append({kind: body})
    return out


def main(mode: str) -> dict[str, Any]:
    result: dict[str, Any] = {"transactions": []}
    for plan in plans():
        if mode == "nft":
            recorded = RecordingKernel()
            NftBackend(recorded, plan.family).sync(plan)
            LibNftKernel(table_of(plan.family)).apply("".join(recorded.scripts))
            continue
        backend = NftBackend(LibNftKernel(table_of(plan.family)), plan.family)
        result["transactions"].append(backend.sync(plan).transactions)
        if mode == "refill":
            subprocess.run(["nft", "flush", "set", *table_of(plan.family).split(), "cluster-ips"], check=True)
            result["transactions"].append(backend.sync(plan, full=True).transactions)
    if mode == "refused":
        kernel = LibNftKernel(table_of(4))
        frontends = SetSpec(name="frontends", spec="typeof ip daddr . meta l4proto . th dport : verdict;", is_map=True)
        cluster_ips = SetSpec(name="cluster-ips", spec="type ipv4_addr;")
        missing = SetSpec(name="no-such-set", spec="type ipv4_addr;")
        try:  # empty two full sets, then fail: the kernel must still hold them full
            sets = [(frontends, []), (cluster_ips, []), (missing, [("10.0.0.1", Element())])]
            kernel.load_elements(table_of(4), sets, flush=True)
        except NftError as err:
            result["error"] = str(err)
    result["ruleset"] = normalized()
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
