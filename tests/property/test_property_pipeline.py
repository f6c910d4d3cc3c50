"""Properties of the pure path, without root: whatever JSON arrives, parse raises nothing
but InvalidObject, the tracker takes it, and plan -> both backends' render -> their fake
kernels never raises; and a full sync equals any sequence of partial syncs that reaches
the same cluster state."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kproxy.agent import Agent
from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.iptables.save import parse_save_all
from kproxy.backends.ipvs.backend import IpvsBackend
from kproxy.backends.ipvs.fake import FakeIpvs
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.backends.nft.names import table_of
from kproxy.model import NodeConfig
from kproxy.parse import InvalidObject, parse_endpoint_slice, parse_service
from kproxy.planner import compute_plan
from kproxy.tracker import ENDPOINT_SLICE, SERVICE, Tracker
from tests.property.strategies import arbitrary, clusters, examples, json_values, mutated, nodes

PARSE = {SERVICE: parse_service, ENDPOINT_SLICE: parse_endpoint_slice}


def no_route_localnet() -> None:
    pass


def render_both(node: NodeConfig, tracker: Tracker) -> None:
    state = tracker.snapshot()
    for family in node.families():
        plan = compute_plan(node, state, family=family)
        NftBackend(FakeNft(table_of(family)), family).sync(plan)  # the fake refuses what nft would
        IptablesBackend(FakeIptables(), route_localnet=no_route_localnet, family=family).sync(plan)


@examples(400)
@given(value=json_values)
def test_parse_raises_nothing_but_invalid_object(value: Any) -> None:
    for parse in PARSE.values():
        try:
            parse(value)
        except InvalidObject as err:
            assert "\n" not in str(err)


@examples(200)
@given(objects=st.one_of(mutated(clusters()), arbitrary), node=nodes())
def test_any_objects_go_through_tracker_plan_and_render(objects: list[tuple[str, Any]], node: NodeConfig) -> None:
    for kind, obj in objects:
        try:
            PARSE[kind](obj)
        except InvalidObject:
            pass
    tracker = Tracker()
    tracker.replace_all({kind: [o for k, o in objects if k == kind] for kind in PARSE})
    render_both(node, tracker)
    for kind, obj in objects:  # the watch's path too: one object at a time
        tracker.upsert(kind, obj)
        tracker.delete(kind, obj)
    render_both(node, tracker)


# --- full sync == any sequence of partial syncs ----------------------------------------------


class Fakes:
    """An agent over both backends' fakes for both families."""

    def __init__(self, node: NodeConfig, mode: str) -> None:
        self.tracker = Tracker()
        self.kernels: dict[int, Any] = {}
        backends: dict[int, Any] = {}
        for family in node.families():
            if mode == "nftables":
                self.kernels[family] = FakeNft(table_of(family))
                backends[family] = NftBackend(self.kernels[family], family)
            elif mode == "ipvs":
                self.kernels[family] = FakeIpvs(family=family)
                backends[family] = IpvsBackend(self.kernels[family], family)
            else:
                self.kernels[family] = FakeIptables()
                backends[family] = IptablesBackend(self.kernels[family], route_localnet=no_route_localnet,
                                                   family=family)
        self.agent = Agent(node, backends, self.tracker)

    def sync_to(self, objects: list[dict[str, Any]]) -> None:
        self.tracker.replace_all({kind: [o for o in objects if o["kind"] == kind] for kind in PARSE})
        self.agent.sync()

    def listing(self) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for family, kernel in self.kernels.items():
            if isinstance(kernel, FakeNft):
                out[family] = kernel.listing()
            elif isinstance(kernel, FakeIpvs):
                out[family] = (kernel.list_virtuals(), kernel.addresses(), kernel.aux.listing())
            else:  # chains and their rules; the order chains were made in does not matter
                out[family] = {table: dict(sorted(chains.items()))
                               for table, chains in parse_save_all(kernel.save_all()).items()}
        return out


@examples(80)
@given(states=st.lists(clusters(), min_size=2, max_size=5), node=nodes(),
       mode=st.sampled_from(["nftables", "iptables", "ipvs"]))
def test_a_full_sync_equals_any_sequence_of_partial_syncs(
        states: list[list[dict[str, Any]]], node: NodeConfig, mode: str) -> None:
    partial = Fakes(node, mode)
    for state in states:
        partial.sync_to(state)
    if mode == "ipvs":
        partial.agent.sync()  # removed TCP real servers drain at weight 0 for one sync first
    fresh = Fakes(node, mode)
    fresh.sync_to(states[-1])
    assert partial.listing() == fresh.listing()
