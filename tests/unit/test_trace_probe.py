"""`kproxy trace --probe`, the pure parts: the packet it builds, the table it adds, and what
it makes of `nft monitor trace` output captured from real probes in the namespace lab
(tests/unit/data/trace_probe/: node1 with a two-endpoint ClusterIP+NodePort Service
10.96.0.50:80 / :30500 on pod2 10.244.1.3 and pod4 10.244.2.2, an endpoint-less
10.96.0.52:80, a dual-stack NodePort :30400)."""

from __future__ import annotations

import re
import struct
from ipaddress import ip_address
from itertools import zip_longest
from pathlib import Path

import pytest

from kproxy.backends.nft.probe import (
    Probe,
    TraceStep,
    build_packet,
    checksum,
    format_probe,
    parse_trace_line,
    probe_ruleset,
    resolve_rules,
    select_trace,
    summarize,
    trace_finished,
)
from kproxy.cli.errors import UsageError
from kproxy.cli.parser import build_parser
from kproxy.cli.trace import probe_target

DATA = Path(__file__).parent / "data" / "trace_probe"
ENDPOINTS = {"10.244.1.3:8080", "10.244.2.2:8080"}
ENDPOINTS6 = {"[fd00:244:1::3]:8080", "[fd00:244:2::2]:8080"}
NODE_IPS = {ip_address("192.168.50.10"), ip_address("fd00:50::10")}


def capture(name: str) -> tuple[Probe, list[str]]:
    """A captured trace and the probe that made it (from its header line and first packet)."""
    lines = (DATA / f"{name}.txt").read_text().splitlines()
    args = build_parser().parse_args(lines[0].removeprefix("# kproxy ").split("  ")[0].split())
    first = lines[1]
    table = re.search(r"inet (kproxy-probe-\d+)", first).group(1)
    sport = int(re.search(r"(?:tcp|udp) sport (\d+)", first).group(1))
    probe = probe_target(args, lambda: NODE_IPS)
    return Probe(src=probe.src, dst=probe.dst, dport=probe.dport, proto=probe.proto, sport=sport,
                 local=probe.local, table=table), lines


def probed(name: str):
    probe, lines = capture(name)
    trace_id, steps = select_trace(lines, probe)
    assert trace_id is not None and steps
    return summarize(probe, trace_id, steps)


# -- parsing ---------------------------------------------------------------------------


def test_every_line_kind_of_a_captured_trace_parses():
    _probe, lines = capture("nodeport_from_client")
    parsed = [parse_trace_line(line) for line in lines]
    assert parsed[0] is None  # the header comment
    steps = [p[1] for p in parsed[1:]]
    assert all(p is not None for p in parsed[1:]) and len({p[0] for p in parsed[1:]}) == 1
    assert {s.kind for s in steps} == {"packet", "rule", "policy"}
    jump = next(s for s in steps if s.rule == "jump services")
    assert (jump.table, jump.chain, jump.verdict) == ("ip kproxy", "nat-prerouting", "jump services")
    masq = next(s for s in steps if s.rule.startswith("masquerade"))
    assert (masq.chain, masq.rule, masq.verdict) == ("masquerading", "masquerade fully-random", "accept")
    marked = next(s for s in steps if s.mark)
    assert (marked.kind, marked.verdict, marked.mark) == ("policy", "accept", "0x00004000")
    unknown = [s for s in steps if s.handle is not None]
    assert [(s.chain, s.handle, s.verdict) for s in unknown] == [("trace-prerouting", 5, "continue"),
                                                                  ("stop-postrouting", 8, "drop")]
    packet = steps[0].packet
    assert packet is not None and (packet.src, packet.dst, packet.dport, packet.iif, packet.oif) == (
        "192.168.50.100", "192.168.50.10", 30500, "lo", None)
    last = [s.packet for s in steps if s.packet][-1]
    assert last.oif is not None and f"{last.dst}:{last.dport}" in ENDPOINTS


def test_garbage_and_ruleset_events_are_not_steps():
    for line in ("", "add table inet kproxy-probe-1", "# new generation 5 by process 1 (nft)",
                 "trace id 1a2b ip kproxy chain something-else"):
        assert parse_trace_line(line) is None


def test_select_trace_keeps_only_the_probes_own_packet():
    probe_a, lines_a = capture("clusterip_from_pod")
    probe_b, lines_b = capture("nodeport_from_client")
    mixed = [line for pair in zip_longest(lines_a, lines_b, fillvalue="") for line in pair]
    id_a, steps_a = select_trace(mixed, probe_a)
    id_b, steps_b = select_trace(mixed, probe_b)
    assert id_a != id_b
    assert [parse_trace_line(line)[1] for line in lines_a[1:]] == steps_a
    assert len(steps_b) == len(lines_b) - 1
    other = Probe(src=probe_a.src, dst=probe_a.dst, dport=probe_a.dport, proto="tcp", sport=probe_a.sport + 1,
                  local=False, table=probe_a.table)
    assert select_trace(mixed, other) == (None, [])


def test_resolve_rules_fills_in_rules_the_monitor_did_not_know():
    probe, lines = capture("nodeport_from_client")
    _id, steps = select_trace(lines, probe)
    listing = (DATA / "nodeport_from_client.chains.txt").read_text()
    asked = []

    def list_chain(table: str, chain: str) -> str:
        asked.append((table, chain))
        return "\n".join(part for part in listing.split("table ") if f"chain {chain} " in part)

    resolved = resolve_rules(steps, list_chain)
    assert asked == [(f"inet {probe.table}", "trace-prerouting"), (f"inet {probe.table}", "stop-postrouting")]
    assert [s.handle for s in resolved] == [None] * len(resolved)
    texts = [s.rule for s in resolved if s.table == f"inet {probe.table}" and s.kind == "rule"]
    assert texts[0].endswith(f"tcp sport {probe.sport} tcp dport 30500 meta nftrace set 1")
    assert texts[1].startswith("ct original ip saddr 192.168.50.100") and texts[1].endswith(" drop")
    untouched = [(a, b) for a, b in zip(steps, resolved, strict=False) if a.handle is None]
    assert all(a == b for a, b in untouched) and len(untouched) == len(steps) - 2


# -- what a trace means -----------------------------------------------------------------


def test_clusterip_from_a_pod_dnats_without_masquerade():
    r = probed("clusterip_from_pod")
    assert (r.verdict, r.path, r.masquerade) == ("dnat", "receive", False)
    assert r.dnat in ENDPOINTS and r.source_after.startswith("10.244.1.2:")
    assert r.reason.startswith(f"leaves via {r.out_interface} to {r.dnat}")


def test_nodeport_from_outside_dnats_and_masquerades():
    r = probed("nodeport_from_client")
    assert (r.verdict, r.masquerade) == ("dnat", True) and r.dnat in ENDPOINTS
    # masqueraded to the address of the interface it leaves by
    assert r.source_after.split(":")[0] == {"br0": "10.244.1.1", "up0": "192.168.50.10"}[r.out_interface]


def test_ipv6_nodeport_from_outside():
    r = probed("ipv6_nodeport_from_client")
    assert (r.verdict, r.masquerade) == ("dnat", True) and r.dnat in ENDPOINTS6
    assert r.source_after.startswith(("[fd00:244:1::1]:", "[fd00:50::10]:"))


def test_the_node_itself_goes_through_the_output_path():
    r = probed("node_clusterip")
    assert (r.verdict, r.path, r.masquerade) == ("dnat", "output", True) and r.dnat in ENDPOINTS
    assert any(s.chain == "nat-output" and s.packet for s in r.steps)


@pytest.mark.parametrize(("name", "verdict", "rule"), [
    ("no_endpoints_reject", "reject", "reject-chain: rule 'reject with tcp reset'"),
    ("node_udp_reject", "reject", "reject-chain: rule 'reject'"),
    ("unallocated_drop", "drop", "cluster-ips-check: rule 'ip daddr 10.96.0.0/16 drop'"),
])
def test_rejects_and_drops_name_the_rule(name, verdict, rule):
    r = probed(name)
    assert (r.verdict, r.dnat, r.masquerade) == (verdict, None, False)
    assert r.reason == f"ip kproxy {rule}"


def test_a_trace_that_stops_without_a_verdict_is_lost():
    probe, lines = capture("clusterip_from_pod")
    _id, steps = select_trace(lines, probe)
    forward = next(i for i, s in enumerate(steps) if s.chain == "filter-forward")
    cut = steps[:forward]  # as if routing had dropped it after nat-prerouting
    r = summarize(probe, "x", cut)
    assert r.verdict == "lost" and "ip kproxy dnat-2" in r.reason
    assert not trace_finished(cut) and trace_finished(steps)


def test_format_shows_kproxys_chains_and_the_outcome_not_the_probes_own():
    r = probed("nodeport_from_client")
    text = format_probe(r)
    assert "kproxy-probe" not in text
    assert "  ip kproxy nat-prerouting: 192.168.50.100:" in text
    assert "      masquerading: masquerade fully-random  => accept" in text
    assert "policy accept  (mark 0x00004000)" in text
    assert f"DNAT to {r.dnat}\n" in text and f"masquerade: yes (the source became {r.source_after})" in text
    assert text.splitlines()[0].endswith(f"kernel trace id {r.trace_id}")
    rejected = format_probe(probed("no_endpoints_reject"))
    assert "verdict: REJECT (ip kproxy reject-chain: rule 'reject with tcp reset')" in rejected
    assert "masquerade" not in rejected and "DNAT to" not in rejected


def test_json_form_carries_every_step():
    r = probed("clusterip_from_pod")
    data = r.to_json()
    assert len(data["steps"]) == len(r.steps) and data["dnat"] == r.dnat
    assert data["steps"][0]["packet"]["sport"] == int(r.probe.split(":")[1].split()[0])


# -- the packet and the table --------------------------------------------------------------


def probe(src: str, dst: str, proto: str = "tcp", local: bool = False) -> Probe:
    return Probe(src=ip_address(src), dst=ip_address(dst), dport=80, proto=proto, sport=45678, local=local,
                 table="kproxy-probe-42")


def test_checksum_is_rfc1071s():
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length: padded with a zero byte


def test_ipv4_tcp_syn():
    packet = build_packet(probe("10.244.1.2", "10.96.0.50"), ident=7, seq=99)
    ver_ihl, _tos, total, ident, frag, ttl, proto, _sum, src, dst = struct.unpack("!BBHHHBBH4s4s", packet[:20])
    assert (ver_ihl, total, ident, frag, ttl, proto) == (0x45, 40, 7, 0x4000, 64, 6) and len(packet) == 40
    assert (src, dst) == (ip_address("10.244.1.2").packed, ip_address("10.96.0.50").packed)
    assert checksum(packet[:20]) == 0  # a valid header sums to zero
    sport, dport, seq, _ack, offset, flags = struct.unpack("!HHIIBB", packet[20:34])
    assert (sport, dport, seq, offset >> 4, flags) == (45678, 80, 99, 5, 0x02)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, 20)
    assert checksum(pseudo + packet[20:]) == 0


def test_ipv6_udp_datagram():
    packet = build_packet(probe("fd00:50::100", "fd00:96::40", proto="udp"))
    first, length, next_header, hops = struct.unpack("!IHBB", packet[:8])
    assert (first >> 28, next_header, hops, length, len(packet)) == (6, 17, 64, len(packet) - 40, len(packet))
    src, dst, udp = packet[8:24], packet[24:40], packet[40:]
    assert (src, dst) == (ip_address("fd00:50::100").packed, ip_address("fd00:96::40").packed)
    sport, dport, udp_len, udp_sum = struct.unpack("!HHHH", udp[:8])
    assert (sport, dport, udp_len) == (45678, 80, len(udp)) and udp_sum != 0
    assert checksum(src + dst + struct.pack("!IxxxB", len(udp), 17) + udp) == 0


def test_the_table_traces_before_conntrack_and_stops_after_srcnat():
    text = probe_ruleset(probe("10.244.1.2", "10.96.0.50"))
    chains = dict(re.findall(r"chain (\S+) \{ type filter hook \S+ priority (-?\d+);", text))
    assert set(chains) == {"trace-prerouting", "trace-output", "stop-postrouting", "stop-input"}
    assert all(int(chains[c]) < -200 for c in ("trace-prerouting", "trace-output"))  # conntrack is -200
    assert all(int(chains[c]) > 100 for c in ("stop-postrouting", "stop-input"))  # srcnat is 100
    assert text.startswith("table inet kproxy-probe-42 {")
    assert text.count("ip saddr 10.244.1.2 ip daddr 10.96.0.50 tcp sport 45678 tcp dport 80 meta nftrace set 1") == 2
    assert text.count("ct original proto-src 45678 ct original proto-dst 80 drop") == 2
    six = probe_ruleset(probe("fd00:50::100", "fd00:96::40", proto="udp"))
    assert "ip6 saddr fd00:50::100 ip6 daddr fd00:96::40 udp sport 45678 udp dport 80 meta nftrace set 1" in six
    assert " ip " not in six.replace("ip6", "")


def args(*argv: str):
    return build_parser().parse_args(["trace", "--probe", *argv])


def test_make_probe_picks_the_path_and_a_fresh_port():
    def node():
        return NODE_IPS

    p = probe_target(args("--from", "192.168.50.10", "--to", "10.96.0.50:80/udp"), node)
    assert (p.local, p.proto, p.dport, p.table.startswith("kproxy-probe-")) == (True, "udp", 80, True)
    assert 40000 <= p.sport < 60000
    assert not probe_target(args("--from", "10.244.1.2", "--to", "10.96.0.50:80"), node).local
    assert probe_target(args("--from", "127.0.0.1", "--to", "10.96.0.50:80"), node).local


@pytest.mark.parametrize(("argv", "message"), [
    (("--from", "10.244.1.2", "--to", "10.96.0.50:80/sctp"), "no SCTP"),
    (("--from", "fd00::1", "--to", "10.96.0.50:80"), "same IP family"),
    (("--from", "10.244.1.2", "--to", "10.96.0.50"), "ADDRESS:PORT"),
])
def test_make_probe_refuses_what_it_cannot_send(argv, message):
    with pytest.raises(UsageError, match=message):
        probe_target(args(*argv), lambda: ())


def test_cli_defaults():
    a = args("--from", "10.244.1.2", "--to", "10.96.0.50:80")
    assert (a.probe, a.timeout) == (True, 5.0)
    assert args("--from", "1.2.3.4", "--to", "1.2.3.5:1", "--timeout", "500ms").timeout == 0.5
    assert build_parser().parse_args(["trace", "--from", "1.2.3.4", "--to", "1.2.3.5:1"]).probe is False


def test_steps_are_values():
    step = TraceStep(table="ip kproxy", chain="c", kind="rule", rule="unknown rule handle 12", verdict="drop")
    assert step.handle == 12 and TraceStep(table="t", chain="c", kind="policy").handle is None
