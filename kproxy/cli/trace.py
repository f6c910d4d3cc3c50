"""`kproxy trace --from SRC --to DST:PORT[/proto] [--probe]`: read the kernel, evaluate,
print. The backend is whichever has programmed this node (nftables first)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from ipaddress import ip_address

from kproxy import node
from kproxy.backends.iptables.kernel import save_all
from kproxy.backends.iptables.save import programmed as iptables_programmed
from kproxy.backends.iptables.trace import trace_iptables
from kproxy.backends.ipvs.kernel import NetlinkIpvs
from kproxy.backends.ipvs.trace import trace_ipvs
from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.backends.nft.names import table_of
from kproxy.backends.nft.probe import Probe, ProbeError, format_probe, make_probe, probe
from kproxy.backends.nft.trace import Ruleset
from kproxy.backends.nft.trace import trace as trace_nft
from kproxy.backends.registry import node_variant, programmed_mode
from kproxy.backends.trace import NOTHING_PROGRAMMED, TraceResult, format_trace
from kproxy.cli.errors import EXIT_FAILED, UsageError
from kproxy.cli.output import print_json
from kproxy.model import IPAddress

PROTOCOLS = ("tcp", "udp", "sctp")


def trace(args: argparse.Namespace) -> int:
    if args.probe:
        return _probe(args)
    src, dst, port, proto = parse_arguments(args)
    result = evaluate(src, dst, port, proto)
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(format_trace(str(src), args.to, result))
    return 0


def parse_target(text: str) -> tuple[IPAddress, int, str]:
    """DST:PORT[/tcp|udp|sctp], IPv6 as [addr]:port."""
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        proto = proto.lower()
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r} (tcp, udp or sctp)")
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDRESS:PORT")
    return ip_address(host), int(port), proto


def parse_arguments(args: argparse.Namespace) -> tuple[IPAddress, IPAddress, int, str]:
    """--from and --to as (src, dst, port, proto); UsageError when they do not parse."""
    try:
        src = ip_address(args.source)
        dst, port, proto = parse_target(args.to)
    except ValueError as err:
        raise UsageError(f"trace: {err}") from None
    if src.version != dst.version:
        raise UsageError("trace: --from and --to must be of the same IP family")
    return src, dst, port, proto


def evaluate(src: IPAddress, dst: IPAddress, port: int, proto: str) -> TraceResult:
    # only the destination's family matters: kproxy's rules in the other family alone
    # leave this one with nothing programmed all the same
    mode = programmed_mode()
    if mode == "nftables":
        return trace_nft(Ruleset(LibNftKernel(table_of(dst.version)).list_table()), src, dst, port, proto)
    if mode == "ipvs":
        kernel = NetlinkIpvs(dst.version)
        return trace_ipvs(kernel.list_virtuals(), kernel.aux_table(), src, dst, port, proto, node.local_addresses())
    if mode == "iptables":
        saved = save_all(node_variant(), dst.version) or ""
        if iptables_programmed(saved):
            return trace_iptables(saved, src, dst, port, proto, node.local_addresses())
    return TraceResult(verdict="none", reason=NOTHING_PROGRAMMED)


def probe_target(args: argparse.Namespace,
                 local_ips: Callable[[], Iterable[IPAddress]] = node.local_addresses) -> Probe:
    """The probe --from/--to ask for; UsageError when they do not parse or cannot be sent."""
    src, dst, port, proto = parse_arguments(args)
    try:
        return make_probe(src, dst, port, proto, local_ips())
    except ProbeError as err:
        raise UsageError(f"trace --probe: {err}") from None


def _probe(args: argparse.Namespace) -> int:
    target = probe_target(args)
    if os.geteuid() != 0:
        sys.stderr.write("kproxy: error: trace --probe needs root (it adds a table and sends a raw packet)\n")
        return EXIT_FAILED
    if programmed_mode() != "nftables":
        sys.stderr.write("kproxy: error: trace --probe needs the nftables backend (no table ip kproxy "
                         "or ip6 kproxy on this node)\n")
        return EXIT_FAILED
    try:
        result = probe(target, args.timeout)
    except ProbeError as err:
        sys.stderr.write(f"kproxy: error: trace --probe: {err}\n")
        return EXIT_FAILED
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(format_probe(result))
    return 0
