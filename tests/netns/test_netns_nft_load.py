"""A full sync sends the skeleton through nft and the elements over netlink (batch.py): the
kernel must then hold exactly what `nft -f` of the same skeleton and elements gives, for a
Service set using every construct kproxy renders, in both families."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.netns

HELPER = Path(__file__).resolve().parent / "nft_load.py"


def in_fresh_netns(mode: str) -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables)")
    name = f"kproxy-load-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, str(HELPER), mode],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def sets_of(ruleset: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {f"{item[k]['family']} {item[k]['name']}": item[k].get("elem", [])
            for item in ruleset for k in ("set", "map") if k in item}


@pytest.fixture(scope="module")
def by_nft() -> list[dict[str, Any]]:
    """What `nft -f` of the skeleton and the elements leaves: the reference."""
    ruleset: list[dict[str, Any]] = in_fresh_netns("nft")["ruleset"]
    return ruleset


def test_elements_loaded_over_netlink_equal_nft_loading_them(by_nft: list[dict[str, Any]]) -> None:
    loaded = in_fresh_netns("netlink")
    assert loaded["transactions"] == [2, 2]  # per family: the skeleton, then its elements
    sets = sets_of(by_nft)
    # every kind of element is there: concatenations, verdicts with comments, endpoints
    # maps with numgen indexes, intervals (plain and concatenated), IPv6
    assert sets["ip frontends"] and sets["ip endpoints-2"] and sets["ip cluster-cidrs"]
    assert sets["ip firewall-allow-tcp"] and sets["ip6 frontends"] and sets["ip6 endpoints-1"]
    assert loaded["ruleset"] == by_nft


def test_a_full_sync_over_its_own_skeleton_refills_every_set_in_one_transaction(
        by_nft: list[dict[str, Any]]) -> None:
    refilled = in_fresh_netns("refill")
    # per family: skeleton + elements, then one flush-and-fill (an element deleted
    # meanwhile is back)
    assert refilled["transactions"] == [2, 1, 2, 1]
    assert refilled["ruleset"] == by_nft


def test_a_refused_load_changes_nothing_and_names_the_set(by_nft: list[dict[str, Any]]) -> None:
    refused = in_fresh_netns("refused")
    assert "no-such-set" in refused["error"]
    # the flushes in the same transaction did not happen
    assert refused["ruleset"] == by_nft
