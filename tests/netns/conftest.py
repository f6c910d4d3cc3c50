"""Fixtures for the namespace lab: the cluster (once per session) and kproxy in node1.

Every namespace and process made here is removed at teardown, failures included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from kproxy_lab import PROXY_MODES, Kproxy  # noqa: E402
from topology import Cluster  # noqa: E402

NOT_ROOT = os.geteuid() != 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not NOT_ROOT:
        return
    skip = pytest.mark.skip(reason="namespace lab needs root (ip netns, nftables)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if NOT_ROOT:
        pytest.skip("namespace lab needs root (ip netns, nftables)")
    workdir = tmp_path_factory.mktemp("netns-lab")
    c = Cluster(workdir=workdir)
    try:
        c.build()
        c.start_servers(workdir)
        yield c
    finally:
        c.destroy()


@pytest.fixture(params=PROXY_MODES)
def kproxy(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kproxy]:
    """kproxy in node1, once per backend: every data-plane test runs for each."""
    with Kproxy.in_node1(cluster, tmp_path, request.param) as k:
        yield k
