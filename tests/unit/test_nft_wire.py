"""nf_tables netlink bytes read without libnftables: the commit watch's events and the
drift check's set elements. The byte strings are what kernel 6.18 sent for commits and
dumps made with nft 1.0.6."""

from __future__ import annotations

import pytest

from kproxy.backends.base import Touched
from kproxy.backends.nft import wire
from kproxy.backends.nft.batch import joined_encoder
from kproxy.backends.nft.events import CommitLog
from kproxy.backends.nft.names import DISPATCHES, affinity_names
from kproxy.backends.nft.render import render_skeleton
from tests.builders import endpoint_slice, service
from tests.unit.test_planner import plan

# One commit (`add element ip kproxy cluster-ips { 10.96.0.1 }; add rule ip kproxy services
# accept; add table ip filter`) as two datagrams: the object events, then NEWGEN (generation 3).
COMMIT = (bytes.fromhex(
    "440000000c0a00040000000062630000020000030b0001006b70726f7879000010000200636c75737465722d697073"
    "0014000300100001000c000100080001000a60000170000000060a000c0200000062630000020000030b0001006b70"
    "726f787900000d0002007365727669636573000000000c000300000000000000000334000400300001000e00010069"
    "6d6d6564696174650000001c0002000800010000000000100002000c00020008000100000000013c000000000a0000"
    "0300000062630000020000030b00010066696c746572000008000300000000000c00040000000000000000020800"
    "020000000000"),
    bytes.fromhex("2c0000000f0a000001000000626300000000000308000100000000030800020000006362080003006e667400"))


def test_a_commit_names_the_sets_and_chains_it_touched_in_watched_tables_only():
    log = CommitLog(["ip kproxy"])
    log.feed(COMMIT[0])
    assert log.take() == {}  # nothing until the commit's NEWGEN
    log.feed(COMMIT[0])
    log.feed(COMMIT[1])
    assert log.through == 3
    assert log.take() == {"ip kproxy": Touched(chains=frozenset({"services"}), sets=frozenset({"cluster-ips"}),
                                               keys={"cluster-ips": frozenset({bytes([10, 96, 0, 1])})})}
    assert log.take() == {}


def test_other_families_and_tables_are_not_watched():
    log = CommitLog(["ip6 kproxy", "ip filter-not"])
    for datagram in COMMIT:
        log.feed(datagram)
    assert log.take() == {} and log.commits == 1


def commit(log: CommitLog, generation: int, *events: bytes) -> None:
    log.feed(b"".join(events) + wire.generation_event(generation))


def element_event(kind: int, table: str, set_name: str, family: str = "ip") -> bytes:
    return wire.event(kind, wire.NFPROTO[family], wire.name_attr(wire.TABLE, table),
                      wire.name_attr(wire.ELEM_LIST_SET, set_name))


def test_a_deleted_table_touches_the_whole_table():
    log = CommitLog(["ip kproxy"])
    commit(log, 7, wire.event(wire.DELTABLE, 2, wire.name_attr(wire.TABLE, "kproxy")))
    assert log.take() == {"ip kproxy": Touched(table=True)}


def test_kproxys_own_commits_are_dropped_by_generation():
    log = CommitLog(["ip kproxy"])
    commit(log, 10, element_event(wire.NEWSETELEM, "kproxy", "endpoints-2"))  # someone else's
    commit(log, 11, element_event(wire.DELSETELEM, "kproxy", "frontends"))  # kproxy's
    commit(log, 12, element_event(wire.NEWSETELEM, "kproxy", "frontends"))  # kproxy's
    log.own(10, 12)
    assert log.take() == {"ip kproxy": Touched(sets=frozenset({"endpoints-2"}))}


def test_generations_wrap():
    log = CommitLog(["ip kproxy"])
    commit(log, 0xFFFFFFFF, element_event(wire.NEWSETELEM, "kproxy", "a"))
    commit(log, 0, element_event(wire.NEWSETELEM, "kproxy", "b"))
    commit(log, 1, element_event(wire.NEWSETELEM, "kproxy", "c"))
    log.own(0xFFFFFFFE, 0)
    assert log.take() == {"ip kproxy": Touched(sets=frozenset({"c"}))}


def test_lost_events_make_the_log_unknown_until_taken_or_forgotten():
    log = CommitLog(["ip kproxy"])
    log.overflowed()
    log.own(1, 2)  # an overflow is not undone by kproxy's own commits
    assert log.take() is None
    assert log.take() == {}
    log.overflowed()
    log.forget()
    assert log.take() == {}


def test_not_listening_is_undone_by_kproxys_own_commits_alone():
    log = CommitLog(["ip kproxy"])
    log.stopped_listening()
    assert log.take() is None
    log.stopped_listening()
    log.own(4, 5)
    assert log.take() == {}


def test_a_commit_in_progress_survives_forget():
    log = CommitLog(["ip kproxy"])
    log.feed(element_event(wire.NEWSETELEM, "kproxy", "hairpin"))
    log.forget()
    log.feed(wire.generation_event(4))
    assert log.take() == {"ip kproxy": Touched(sets=frozenset({"hairpin"}))}


# --- set elements, from GETSETELEM dumps ----------------------------------------------------


def element(key: str, *, data: bytes | None = None, key_end: str | None = None, flags: int = 0,
            comment: bytes | None = None) -> bytes:
    parts = wire.attr(wire.ELEM_KEY, wire.attr(wire.DATA_VALUE, bytes.fromhex(key)))
    if key_end is not None:
        parts += wire.attr(wire.ELEM_KEY_END, wire.attr(wire.DATA_VALUE, bytes.fromhex(key_end)))
    if flags:
        parts += wire.attr(wire.ELEM_FLAGS, flags.to_bytes(4, "big"))
    if data is not None:
        parts += wire.attr(wire.ELEM_DATA, data)
    if comment is not None:
        parts += wire.attr(6, comment)  # NFTA_SET_ELEM_USERDATA
    return wire.attr(1, parts)  # NFTA_LIST_ELEM


def dump(spec: str, *elements: bytes, family: str = "ip") -> list[tuple[str, str | None]]:
    """What ElementDecoder makes of one dump reply holding `elements` (in dump order)."""
    reply = wire.event(wire.NEWSETELEM, wire.NFPROTO[family], wire.name_attr(wire.TABLE, "t"),
                       wire.name_attr(wire.ELEM_LIST_SET, "s"), wire.attr(wire.ELEM_LIST_ELEMENTS, b"".join(elements)))
    decoder = wire.ElementDecoder(wire.layout(spec))
    found = []
    for message in wire.messages(reply):
        found += decoder.feed(message)
    return found + list(decoder.finish())


def value(hex_data: str) -> bytes:
    return wire.attr(wire.DATA_VALUE, bytes.fromhex(hex_data))


def verdict(code: int, chain: str | None = None) -> bytes:
    inner = wire.attr(wire.VERDICT_CODE, code.to_bytes(4, "big", signed=True))
    if chain is not None:
        inner += wire.name_attr(wire.VERDICT_CHAIN, chain)
    return wire.attr(wire.DATA_VERDICT, inner)


def test_an_endpoints_map_element():
    # endpoints-10: 10.96.18.194 . tcp . 80 . 0 : 10.128.187.49 . 8080 (the index in host order)
    spec = "typeof ip daddr . meta l4proto . th dport . numgen random mod 10 : ip daddr . th dport;"
    assert dump(spec, element("0a6012c2060000000050000000000000", data=value("0a80bb311f900000"))) == [
        ("10.96.18.194 . tcp . 80 . 0", "10.128.187.49 . 8080")]


def test_an_ipv6_map_element():
    spec = "typeof ip6 daddr . meta l4proto . th dport . numgen random mod 3 : ip6 daddr . th dport;"
    key = "fd000000000000000000000000000001840000000050000002000000"
    assert dump(spec, element(key, data=value("fd0000000000000000000000000a00011f900000")), family="ip6") == [
        ("fd00::1 . sctp . 80 . 2", "fd00::a:1 . 8080")]


def test_verdict_map_elements_with_comments():
    spec = "typeof ip daddr . meta l4proto . th dport : verdict;"
    assert dump(spec,
                element("0a0000021100000000350000", data=verdict(-3, "c")),
                element("0a0000010600000000500000", data=verdict(0), comment=b"\x00\x03hi\x00"),
                element("0a0000030600000000500000", data=verdict(-4, "dnat-2"))) == [
        ("10.0.0.2 . udp . 53", "jump c"), ("10.0.0.1 . tcp . 80", "drop"), ("10.0.0.3 . tcp . 80", "goto dnat-2")]


def test_intervals_come_as_flagged_ends_in_descending_order():
    # { 10.0.0.1, 10.1.0.0/16, 192.168.1.5-192.168.1.9 }, and the end at 0 nft adds
    spec = "type ipv4_addr; flags interval;"
    elements = [element("c0a8010a", flags=1), element("c0a80105"), element("0a020000", flags=1),
                element("0a010000"), element("0a000002", flags=1), element("0a000001"), element("00000000", flags=1)]
    assert dump(spec, *elements) == [("10.0.0.1", None), ("10.1.0.0/16", None),
                                     ("192.168.1.5-192.168.1.9", None)]


def test_an_interval_open_to_the_top_has_no_end():
    assert dump("type ipv4_addr; flags interval;", element("00000000", comment=b"\x01\x04\x01\x00\x00\x00")) == [
        ("0.0.0.0/0", None)]
    assert dump("type ipv6_addr; flags interval;", element("00" * 16), family="ip6") == [("::/0", None)]
    assert dump("type ipv4_addr; flags interval;", element("0a700000", flags=1), element("0a600000"),
                element("00000000", flags=1)) == [("10.96.0.0/12", None)]


def test_concatenated_intervals_carry_their_end_key():
    spec = "typeof ip daddr . th dport . ip saddr; flags interval;"
    assert dump(spec, element("0a600001005000000a000000", key_end="0a600001005000000affffff"),
                element("0a6000010050000001020304", key_end="0a6000010050000001020304")) == [
        ("10.96.0.1 . 80 . 10.0.0.0/8", None), ("10.96.0.1 . 80 . 1.2.3.4", None)]


def every_set_spec() -> list[str]:
    """Every set and map definition render makes (IPv6's: IPv4's with ip6 fields), affinity
    and IPv6 affinity's client sets included."""
    web = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)
    skeleton = render_skeleton(plan(web, endpoint_slice("web", ["10.244.1.2"])), {d: [1, 3] for d in DISPATCHES},
                               [600])
    assert {affinity_names(600)[0], "endpoints-3"} <= {s.name for s in skeleton.sets}
    specs = [s.spec for s in skeleton.sets]
    specs += [spec.replace("ip daddr", "ip6 daddr").replace("ip saddr", "ip6 saddr").replace("ipv4", "ipv6")
              for spec in specs]
    return [*specs, "type ipv6_addr; flags dynamic,timeout; timeout 600s;"]


@pytest.mark.parametrize("spec", sorted(set(every_set_spec())))
def test_every_set_render_makes_has_a_layout(spec):
    assert wire.layout(spec).key


def test_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="ct mark"):
        wire.layout("typeof ct mark;")


def test_element_events_carry_their_keys():
    spec = "typeof ip daddr . meta l4proto . th dport . numgen random mod 10 : ip daddr . th dport;"
    key = joined_encoder(wire.layout(spec).key)("10.96.18.194 . tcp . 80 . 3")
    assert key == bytes.fromhex("0a6012c2060000000050000003000000")
    assert wire.joined(wire.layout(spec).key)(key) == "10.96.18.194 . tcp . 80 . 3"
    log = CommitLog(["ip kproxy"])
    commit(log, 5, wire.event(wire.DELSETELEM, 2, wire.name_attr(wire.TABLE, "kproxy"),
                              wire.name_attr(wire.ELEM_LIST_SET, "endpoints-10"), wire.element_list([key])))
    touched = Touched(sets=frozenset({"endpoints-10"}), keys={"endpoints-10": frozenset({key})})
    assert log.take() == {"ip kproxy": touched}


def test_interval_events_and_events_without_elements_mean_the_whole_set():
    log = CommitLog(["ip kproxy"])
    interval = wire.attr(wire.ELEM_LIST_ELEMENTS, element("0a000001") + element("0a000002", flags=1))
    commit(log, 5, wire.event(wire.NEWSETELEM, 2, wire.name_attr(wire.TABLE, "kproxy"),
                              wire.name_attr(wire.ELEM_LIST_SET, "service-cidrs"), interval),
           element_event(wire.NEWSETELEM, "kproxy", "cluster-ips"))
    assert log.take() == {"ip kproxy": Touched(sets=frozenset({"service-cidrs", "cluster-ips"}))}


def test_keys_of_one_set_add_up_and_a_whole_set_wins():
    one = Touched(sets=frozenset({"s"}), keys={"s": frozenset({b"1"})})
    two = Touched(sets=frozenset({"s", "t"}), keys={"s": frozenset({b"2"}), "t": frozenset({b"3"})})
    assert one | two == Touched(sets=frozenset({"s", "t"}), keys={"s": frozenset({b"1", b"2"}), "t": frozenset({b"3"})})
    assert (one | Touched(sets=frozenset({"s"}))).keys == {}
