"""`kproxy trace --from SRC --to DST:PORT[/proto]`: read the kernel, evaluate, print.

The backend is whichever has programmed this node: kproxy's nftables table (either family)
first, else kproxy's chains in the iptables variant the node uses.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import ip_address

from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.backends.nft.objects import table_of
from kproxy.cli import UsageError, print_json
from kproxy.model import IPAddress
from kproxy.trace import Ruleset, TraceResult, format_trace, parse_target, trace
from kproxy.trace_iptables import NOTHING_PROGRAMMED, programmed, trace_iptables


def trace_command(args: argparse.Namespace) -> int:
    if getattr(args, "probe", False):
        from kproxy.trace_probe import probe_command

        return probe_command(args)
    src, dst, port, proto = parse_arguments(args)
    result = evaluate(src, dst, port, proto)
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(format_trace(str(src), args.to, result))
    return 0


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
    kernels = {family: LibNftKernel(table_of(family)) for family in (4, 6)}
    listings = {family: kernel.list_table() for family, kernel in kernels.items()}
    if any(listing is not None for listing in listings.values()):
        listing = listings[dst.version]
        text = kernels[dst.version].list_ruleset_text() if listing else ""
        return trace(Ruleset(listing, text), src, dst, port, proto)
    from kproxy.backends.iptables.kernel import save_all
    from kproxy.backends.iptables.variant import detect_variant
    from kproxy.node import local_addresses

    # only the destination's family matters: kproxy's chains in the other family alone
    # leave this one with nothing programmed all the same
    saved = save_all(detect_variant(save_all), dst.version) or ""
    if programmed(saved):
        return trace_iptables(saved, src, dst, port, proto, local_addresses())
    return TraceResult(verdict="none", reason=NOTHING_PROGRAMMED)
