"""kproxy's rules for a Service set using every feature load into the running kernel.

Runs on the host and, as group "ruleset" of tests/vm/test_kernels.py, in each VM kernel.
Everything happens in throwaway network namespaces (`unshare -n`). When the kernel refuses
kproxy's nftables batch, the failure names each refused line with nft's error (found by
adding the batch's lines one at a time).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import nft_capabilities as caps  # noqa: E402

pytestmark = pytest.mark.netns

NOT_ROOT = os.geteuid() != 0


@pytest.fixture(autouse=True)
def _root() -> None:
    if NOT_ROOT:
        pytest.skip("needs root (network namespaces, nftables)")


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_every_feature_ruleset_loads(mode: str) -> None:
    synced = caps.kproxy_sync(mode)
    if synced["status"] == 0:
        assert "table ip kproxy" in synced["ruleset"] or "KUBE-SERVICES" in synced["ruleset"]
        return
    message = [f"kproxy sync --once ({mode}) exited {synced['status']} on {os.uname().release}:",
               synced["output"][-1500:]]
    for batch in synced["batches"]:
        if batch["rc"] == 0:
            continue
        _kept, refused = caps.bisect(batch["script"])
        message.append(f"{len(refused)} of {len(batch['script'].splitlines())} lines refused:")
        message += [f"  {r['line']}\n      {r['error']}" for r in refused]
    pytest.fail("\n".join(message), pytrace=False)


def test_nft_check_mode_sees_what_the_kernel_refuses() -> None:
    """`nft -c` sends the batch to the kernel, which validates it and aborts: a start-up
    probe with it tells exactly what a real load would."""
    disagree = [f"{r['key']}: nft -c {'accepts' if r['check_ok'] else 'refuses'}, a load "
                f"{'succeeds' if r['load_ok'] else 'fails: ' + caps.first_error(r['load_error'])}"
                for r in caps.probe_constructs() if r["check_ok"] != r["load_ok"]]
    assert not disagree, "\n".join(disagree)
