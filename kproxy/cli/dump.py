"""`kproxy dump`: what is programmed on this node, read back from the kernel."""

from __future__ import annotations

import argparse
import sys

from kproxy.backends.iptables.kernel import save_all
from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.backends.nft.names import table_of
from kproxy.backends.registry import FAMILIES, make_backend, node_variant, programmed_mode
from kproxy.backends.view import format_view, merge_views
from kproxy.cli.output import print_json


def dump(args: argparse.Namespace) -> int:
    # whichever mode has programmed this node; nftables if neither
    mode = (programmed_mode() or "nftables") if args.proxy_mode == "auto" else args.proxy_mode
    if args.raw:
        if mode == "iptables":
            variant = node_variant()
            for family in FAMILIES:
                sys.stdout.write(save_all(variant, family) or "")
            return 0
        for family in FAMILIES:
            kernel = LibNftKernel(table_of(family))
            sys.stdout.write(kernel.list_ruleset_text() if kernel.exists() else "")
        return 0
    view = merge_views([make_backend(mode, family=family).read_view() for family in FAMILIES])
    if args.json:
        print_json(view.to_json())
    else:
        sys.stdout.write(format_view(view))
    return 0
