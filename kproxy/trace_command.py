"""`kproxy trace --from SRC --to DST:PORT[/proto]`: read the kernel, evaluate, print."""

from __future__ import annotations

import argparse
import sys
from ipaddress import ip_address

from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.backends.nft.objects import table_of
from kproxy.cli import UsageError, print_json
from kproxy.trace import Ruleset, format_trace, parse_target, trace


def trace_command(args: argparse.Namespace) -> int:
    try:
        src = ip_address(args.source)
        dst, port, proto = parse_target(args.to)
    except ValueError as err:
        raise UsageError(f"trace: {err}") from None
    if src.version != dst.version:
        raise UsageError("trace: --from and --to must be of the same IP family")
    kernel = LibNftKernel(table_of(dst.version))
    listing = kernel.list_table()
    rules = Ruleset(listing, kernel.list_ruleset_text() if listing else "")
    result = trace(rules, src, dst, port, proto)
    if args.json:
        print_json(result.to_json())
    else:
        sys.stdout.write(format_trace(str(src), args.to, result))
    return 0
