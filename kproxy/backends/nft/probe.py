"""`kproxy trace --probe` (nftables mode): one real packet, traced by the kernel itself.

A temporary table `inet kproxy-probe-<pid>` (kproxy's own tables are never touched) sets
nftrace on the probe packet before conntrack sees it, and drops it after srcnat
(postrouting) or before delivery (input), so it reaches no endpoint and leaves no
conntrack entry. One packet is sent: from a local address through the output path (raw
socket), from any other address into the receive path (an Ethernet frame on `lo`, which
the kernel receives as if it had arrived). `nft monitor trace` reports every chain and
rule it passes; the pure part below turns that into steps and a verdict.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from ipaddress import ip_address
from typing import Any

from kproxy.model import IPAddress
from kproxy.values import endpoint_text

PROBE_TABLE_PREFIX = "kproxy-probe-"
PROTOCOLS = {"tcp": 6, "udp": 17}
NFNLGRP_NFTRACE = 9
NETLINK_NETFILTER = 12
UDP_PAYLOAD = b"kproxy trace --probe\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    src: IPAddress
    dst: IPAddress
    dport: int
    proto: str  # tcp | udp
    sport: int
    local: bool  # src is an address of this node: sent through the output path
    table: str = ""  # the temporary table's name

    def endpoint_text(self) -> str:
        return f"{endpoint_text(self.src, self.sport)} -> {endpoint_text(self.dst, self.dport)}/{self.proto}"


# -- the packet ------------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_packet(probe: Probe, ident: int = 1, seq: int = 1) -> bytes:
    """The IP packet: a TCP SYN or a UDP datagram from probe.src:sport to probe.dst:dport."""
    proto = PROTOCOLS[probe.proto]
    src, dst = probe.src.packed, probe.dst.packed
    if probe.proto == "tcp":
        l4 = struct.pack("!HHIIBBHHH", probe.sport, probe.dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    else:
        l4 = struct.pack("!HHHH", probe.sport, probe.dport, 8 + len(UDP_PAYLOAD), 0) + UDP_PAYLOAD
    if probe.src.version == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(l4))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
    sum_at = 16 if probe.proto == "tcp" else 6
    value = checksum(pseudo + l4) or 0xFFFF  # UDP sends a computed 0 as all ones
    l4 = l4[:sum_at] + struct.pack("!H", value) + l4[sum_at + 2:]
    if probe.src.version == 6:
        return struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst + l4
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + l4


def probe_ruleset(probe: Probe) -> str:
    """The temporary table: nftrace on for the probe, before conntrack (raw is -300); the
    probe stopped after srcnat in postrouting and before delivery in input. The stop
    rules match the conntrack original tuple, which NAT does not change, and also the
    packet's own tuple, in case something exempted it from conntrack. The output chain
    also stops a TCP reset that a reject sends back to the probe's source (an ICMP
    error, a UDP reject's answer, is not matched: it may reach the source)."""
    ip = "ip" if probe.src.version == 4 else "ip6"
    l4 = f"meta l4proto {probe.proto}"
    mine = (f"{ip} saddr {probe.src} {ip} daddr {probe.dst} "
            f"{probe.proto} sport {probe.sport} {probe.proto} dport {probe.dport}")
    tracked = (f"ct original {ip} saddr {probe.src} ct original {ip} daddr {probe.dst} {l4} "
               f"ct original proto-src {probe.sport} ct original proto-dst {probe.dport}")
    reply = f"{ip} daddr {probe.src} {probe.proto} dport {probe.sport} {probe.proto} sport {probe.dport}"
    stop = f"{tracked} drop; {mine} drop;"
    return (
        f"table inet {probe.table} {{\n"
        f"  chain trace-prerouting {{ type filter hook prerouting priority -350; {mine} meta nftrace set 1; }}\n"
        f"  chain trace-output {{ type filter hook output priority -350; {mine} meta nftrace set 1; "
        f"{reply} drop; }}\n"
        f"  chain stop-postrouting {{ type filter hook postrouting priority 300; {stop} }}\n"
        f"  chain stop-input {{ type filter hook input priority 300; {stop} }}\n"
        f"}}\n"
    )


# -- the kernel's trace, parsed ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """The headers nft printed as the packet entered a base chain."""

    text: str  # as nft printed it
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    oif: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceStep:
    table: str  # "ip kproxy"
    chain: str
    kind: str  # packet (entering a base chain), rule, verdict, policy
    rule: str = ""  # the rule as nft printed it, or "unknown rule handle N" (kind rule)
    verdict: str = ""  # accept, drop, continue, return, jump X, goto X
    mark: str | None = None  # meta mark, when nft printed it
    packet: Packet | None = None

    @property
    def handle(self) -> int | None:
        match = re.fullmatch(r"unknown rule handle (\d+)", self.rule)
        return int(match.group(1)) if match else None


_LINE = re.compile(r"trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)")
_MARK = re.compile(r"\s*meta mark (0x[0-9a-f]+)\s*$")


def parse_trace_line(line: str) -> tuple[str, TraceStep] | None:
    """One line of `nft monitor trace`: (trace id, step), or None for anything else."""
    match = _LINE.fullmatch(line.strip())
    if not match:
        return None
    table, chain, rest = f"{match['family']} {match['table']}", match["chain"], match["rest"]
    if rest.startswith("packet: "):
        return match["id"], TraceStep(table=table, chain=chain, kind="packet", packet=parse_packet(rest[8:]))
    mark = _MARK.search(rest)
    value = mark.group(1) if mark else None
    rest = rest[:mark.start()] if mark else rest
    if rest.startswith(("rule ", "unknown rule handle")):
        rule, _, verdict = rest.rpartition(" (verdict ")
        rule = rule.removeprefix("rule ")
        return match["id"], TraceStep(table=table, chain=chain, kind="rule", rule=rule,
                                      verdict=verdict.rstrip(") "), mark=value)
    kind, _, verdict = rest.partition(" ")
    if kind not in ("verdict", "policy"):
        return None
    return match["id"], TraceStep(table=table, chain=chain, kind=kind, verdict=verdict.strip(), mark=value)


def parse_packet(text: str) -> Packet:
    def field(pattern: str) -> str | None:
        found = re.search(pattern, text)
        return found.group(1) if found else None

    sport, dport = field(r"\b(?:tcp|udp|sctp|th) sport (\d+)"), field(r"\b(?:tcp|udp|sctp|th) dport (\d+)")
    return Packet(text=text.strip(), src=field(r"\bip6? saddr (\S+)") or "?", dst=field(r"\bip6? daddr (\S+)") or "?",
                  sport=int(sport) if sport else None, dport=int(dport) if dport else None,
                  iif=field(r'\biif "([^"]*)"'), oif=field(r'\boif "([^"]*)"'))


def select_trace(lines: Iterable[str], probe: Probe) -> tuple[str | None, list[TraceStep]]:
    """The steps of the probe's own trace: the id whose first packet is the probe's."""
    by_id: dict[str, list[TraceStep]] = {}
    for line in lines:
        parsed = parse_trace_line(line)
        if parsed:
            by_id.setdefault(parsed[0], []).append(parsed[1])
    for trace_id, steps in by_id.items():
        first = next((s.packet for s in steps if s.packet), None)
        if first and (ip_address(first.src), first.sport, ip_address(first.dst), first.dport) == (
                probe.src, probe.sport, probe.dst, probe.dport):
            return trace_id, steps
    return None, []


def trace_finished(steps: list[TraceStep]) -> bool:
    """The packet's journey ended: dropped (the probe's stop, a drop or a reject) or stolen."""
    return any(s.verdict in ("drop", "stolen", "queue") for s in steps)


def resolve_rules(steps: list[TraceStep], list_chain: Callable[[str, str], str]) -> list[TraceStep]:
    """Fill in "unknown rule handle N" (rules nft's cache did not know, e.g. added after
    the monitor started) from `nft -a list chain TABLE CHAIN` output."""
    texts: dict[tuple[str, str], dict[int, str]] = {}
    resolved = []
    for step in steps:
        handle = step.handle
        if handle is not None:
            key = (step.table, step.chain)
            if key not in texts:
                texts[key] = {int(h): r.strip() for r, h in re.findall(r"^\s*(.*[^{\s])\s+# handle (\d+)$",
                                                                       list_chain(*key), re.MULTILINE)}
            if handle in texts[key]:
                step = TraceStep(table=step.table, chain=step.chain, kind=step.kind, rule=texts[key][handle],
                                 verdict=step.verdict, mark=step.mark, packet=step.packet)
        resolved.append(step)
    return resolved


# -- what it means ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    probe: str  # "SRC:SPORT -> DST:PORT/proto"
    probe_table: str  # the temporary table (already deleted): its steps are the probe's own
    path: str  # output (sent from this node) | receive (injected on lo)
    trace_id: str
    verdict: str  # dnat, accept (no DNAT), reject, drop, lost (the trace ended outside nftables)
    reason: str
    dnat: str | None = None  # where the packet went after DNAT
    masquerade: bool = False
    source_after: str | None = None  # the source as the packet left (after masquerade)
    out_interface: str | None = None
    steps: tuple[TraceStep, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(probe: Probe, trace_id: str, steps: list[TraceStep]) -> ProbeResult:
    own = f"inet {probe.table}"
    packets = [s.packet for s in steps if s.packet]
    first, last = packets[0], packets[-1]
    moved = (last.dst, last.dport) != (first.dst, first.dport)
    masquerade = last.src != first.src or any(
        s.kind == "rule" and s.table != own and re.match(r"(masquerade|snat)\b", s.rule) and s.verdict == "accept"
        for s in steps)
    verdict, reason = _verdict(own, steps, last, moved)
    return ProbeResult(probe=probe.endpoint_text(), probe_table=own, path="output" if probe.local else "receive",
                       trace_id=trace_id, verdict=verdict, reason=reason,
                       dnat=endpoint_text(last.dst, last.dport) if moved else None, masquerade=masquerade,
                       source_after=endpoint_text(last.src, last.sport), out_interface=last.oif, steps=tuple(steps))


def _verdict(own: str, steps: list[TraceStep], last: Packet, moved: bool) -> tuple[str, str]:
    for step in steps:
        if step.table != own and step.verdict == "drop":
            how = f"rule {step.rule!r}" if step.kind == "rule" else "policy drop"
            return ("reject" if step.rule.startswith("reject") else "drop"), f"{step.table} {step.chain}: {how}"
    stop = next((s for s in steps if s.table == own and s.verdict == "drop"), None)
    if stop is None:
        where = next((f"{s.table} {s.chain}" for s in reversed(steps) if s.table != own), "the probe's own chain")
        return "lost", (f"the trace ends after {where}: the kernel dropped the packet outside nftables "
                        "(no route, rp_filter, a martian address?)")
    if stop.chain == "stop-input":
        reason = f"delivered to this node ({endpoint_text(last.dst, last.dport)})"
    else:
        reason = f"leaves via {last.oif or '?'} to {endpoint_text(last.dst, last.dport)}"
    return ("dnat" if moved else "accept"), reason + "; stopped there by the probe"


def format_probe(result: ProbeResult) -> str:
    how = "sent from this node (output path)" if result.path == "output" else "received on lo (receive path)"
    lines = [f"probe {result.probe}: one packet {how}, kernel trace id {result.trace_id}"]
    for step in result.steps:
        if step.table == result.probe_table:
            continue
        if step.packet:
            p = step.packet
            where = " ".join(x for x in (f"in {p.iif}" if p.iif else "", f"out {p.oif}" if p.oif else "") if x)
            lines.append(f"  {step.table} {step.chain}: {endpoint_text(p.src, p.sport)} -> "
                         f"{endpoint_text(p.dst, p.dport)} {where}".rstrip())
        elif step.kind == "rule":
            lines.append(f"      {step.chain}: {step.rule}  => {step.verdict}")
        else:
            lines.append(f"      {step.chain}: {step.kind} {step.verdict}")
        if step.mark:
            lines[-1] += f"  (mark {step.mark})"
    head = f"verdict: {result.verdict.upper()} ({result.reason})"
    lines.append(head)
    if result.dnat:
        lines.append(f"DNAT to {result.dnat}")
    if result.verdict in ("dnat", "accept"):
        lines.append(f"masquerade: yes (the source became {result.source_after})" if result.masquerade
                     else f"masquerade: no (the source stays {result.source_after})")
    return "\n".join(lines) + "\n"


# -- the kernel side ------------------------------------------------------------------


class ProbeError(RuntimeError):
    """The probe could not run or saw no trace: one line, exit 1."""


def send_packet(probe: Probe, packet: bytes) -> None:
    if probe.local:  # IPPROTO_RAW implies the header is ours (IP_HDRINCL), on both families
        family = socket.AF_INET if probe.src.version == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            try:
                raw.sendto(packet, (str(probe.dst), 0))
            except PermissionError:  # a drop (or reject) in an output hook: the trace says which
                pass
        return
    ethertype = b"\x08\x00" if probe.src.version == 4 else b"\x86\xdd"
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as frame:
        frame.bind(("lo", 0))
        frame.send(bytes(12) + ethertype + packet)  # lo's address is all zeros: "to this host"


class TraceMonitor:
    """`nft monitor trace` as a child on a pseudo-terminal (so nft flushes every line)."""

    def __init__(self) -> None:
        import pty

        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(["nft", "monitor", "trace"], stdin=subprocess.DEVNULL, stdout=slave,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            os.close(master)
            raise ProbeError(f"cannot run nft: {err}") from None
        finally:
            os.close(slave)
        self.fd = master
        self.lines: list[str] = []
        self._partial = ""

    def wait_subscribed(self, deadline: float) -> None:
        """Until nft listens to the trace group (read from /proc/net/netlink)."""
        while not _listens_to_trace(self.proc.pid):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.read(0.1)
                raise ProbeError("nft monitor trace did not start: " + (" ".join(self.lines)[:200] or "timed out"))
            time.sleep(0.02)

    def read(self, wait: float) -> bool:
        """Read what is there (waiting up to `wait` seconds); False once nft is gone."""
        ready, _, _ = select.select([self.fd], [], [], max(wait, 0))
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536).decode(errors="replace")
        except OSError:  # EIO: nft exited and the terminal closed
            return False
        text = self._partial + chunk.replace("\r", "")
        *done, self._partial = text.split("\n")
        self.lines += done
        return bool(chunk)

    def await_trace(self, probe: Probe, deadline: float, settle: float) -> tuple[str | None, list[TraceStep]]:
        """The probe's trace once it ended (a drop), or once it has been quiet for `settle`
        seconds (it left nftables some other way), or whatever came by the deadline."""
        trace_id: str | None = None
        steps: list[TraceStep] = []
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            before = len(self.lines)
            alive = self.read(0.05)
            if len(self.lines) != before:
                trace_id, steps = select_trace(self.lines, probe)
                quiet_since = time.monotonic()
            if not alive or (steps and (trace_finished(steps) or time.monotonic() - quiet_since > settle)):
                break
        return trace_id, steps

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self.fd)


def _listens_to_trace(pid: int) -> bool:
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
        with open("/proc/net/netlink") as table:
            rows = [line.split() for line in table.read().splitlines()[1:]]
    except OSError:
        return False
    bit = 1 << (NFNLGRP_NFTRACE - 1)
    return any(r[1] == str(NETLINK_NETFILTER) and int(r[3], 16) & bit and r[9] in inodes for r in rows)


def run_probe(probe: Probe, nft: Any, timeout: float, settle: float = 0.5) -> ProbeResult:
    """Table, monitor, one packet, the trace; the table and the monitor go in every case."""
    deadline = time.monotonic() + timeout
    nft_cmd(nft, probe_ruleset(probe))
    monitor = None
    try:
        monitor = TraceMonitor()
        monitor.wait_subscribed(deadline)
        send_packet(probe, build_packet(probe, ident=secrets.randbelow(65536), seq=secrets.randbits(32)))
        trace_id, steps = monitor.await_trace(probe, deadline, settle)
        if not steps or trace_id is None:
            raise ProbeError(f"no kernel trace of the probe within {timeout:g}s: something dropped it before "
                             "the probe's chain (priority -350), or this kernel does not trace nftables")
        steps = resolve_rules(steps, lambda table, chain: nft_cmd(nft, f"list chain {table} {chain}", handles=True))
        result = summarize(probe, trace_id, steps)
        if result.verdict == "lost" and not probe.local and probe.src.version == 4 and _strict_rp_filter():
            result = replace(result, reason=result.reason.split(":")[0] + ": strict rp_filter (1) on this node "
                             "drops a packet injected on lo from another host's address at routing")
        return result
    finally:
        if monitor is not None:
            monitor.close()
        nft_cmd(nft, f"add table inet {probe.table}\ndelete table inet {probe.table}\n")


def _strict_rp_filter() -> bool:
    """The kernel checks the larger of all's and the device's value (1: strict)."""
    try:
        return max(int(open(f"/proc/sys/net/ipv4/conf/{c}/rp_filter").read()) for c in ("all", "lo")) == 1
    except (OSError, ValueError):
        return False


def nft_cmd(nft: Any, command: str, handles: bool = False) -> str:
    nft.set_handle_output(handles)
    rc, out, err = nft.cmd(command)
    if rc != 0:
        raise ProbeError(f"nft: {(err.strip().splitlines() or ['failed'])[0]}")
    return str(out)


@contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the probe table is removed either way."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_probe(src: IPAddress, dst: IPAddress, port: int, proto: str,
               local_ips: Iterable[IPAddress]) -> Probe:
    """The probe for one parsed --from/--to; ProbeError for what cannot be probed."""
    if proto not in PROTOCOLS:
        raise ProbeError("no SCTP probes (kproxy crafts TCP and UDP packets only); "
                         "`kproxy trace` without --probe evaluates SCTP rules")
    return Probe(src=src, dst=dst, dport=port, proto=proto, sport=40000 + secrets.randbelow(20000),
                 local=src.is_loopback or src in set(local_ips), table=f"{PROBE_TABLE_PREFIX}{os.getpid()}")


def probe(target: Probe, timeout: float) -> ProbeResult:
    """Run one probe (the caller checked that kproxy's nftables tables are there)."""
    import nftables  # the pure parts above must not need it

    with _term_as_interrupt():
        return run_probe(target, nftables.Nftables(), timeout)
