"""`kproxy dump`: what is programmed on this node, read back from the kernel; with
--stats, the connections conntrack holds per frontend and endpoint."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from kproxy.backends.connections import read_connections
from kproxy.backends.iptables.kernel import save_all
from kproxy.backends.iptables.save import programmed as iptables_programmed
from kproxy.backends.ipvs.kernel import aux_listing, aux_tables, read_ipvs
from kproxy.backends.ipvs.readback import ipvs_json, ipvsadm_text, read_view
from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.backends.nft.names import table_of
from kproxy.backends.registry import FAMILIES, make_backend, node_variant, programmed_mode
from kproxy.backends.stats import StatsReport, connection_stats, format_stats
from kproxy.backends.view import NOTHING_PROGRAMMED, ProgrammedView, format_view, merge_views
from kproxy.cli.output import print_json


def programmed_view(choice: str) -> ProgrammedView:
    """What is programmed, in whichever mode has programmed this node (nftables if neither)."""
    mode = (programmed_mode() or "nftables") if choice == "auto" else choice
    return merge_views([make_backend(mode, family=family).read_view() for family in FAMILIES])


def read_stats(view: ProgrammedView, window: float | None,
               wait: Callable[[float], object] = time.sleep) -> StatsReport:
    """Connections per frontend now; with a window, two reads that far apart."""
    if window is None:
        return connection_stats(view, read_connections())
    before = read_connections()
    wait(window)
    return connection_stats(view, read_connections(), before, window)


def dump(args: argparse.Namespace) -> int:
    # whichever mode has programmed this node; nftables if neither
    mode = (programmed_mode() or "nftables") if args.proxy_mode == "auto" else args.proxy_mode
    if mode == "ipvs" and not args.stats:
        return dump_ipvs(args)
    if args.raw:
        mode = (programmed_mode() or "nftables") if args.proxy_mode == "auto" else args.proxy_mode
        if mode == "iptables":
            variant = node_variant()
            saved = [save_all(variant, family) or "" for family in FAMILIES]
            # iptables-save lists the whole node; say so when none of it is kproxy's
            listing = "".join(saved) if any(iptables_programmed(text) for text in saved) else ""
        else:
            kernels = [LibNftKernel(table_of(family)) for family in FAMILIES]
            listing = "".join(kernel.list_ruleset_text() for kernel in kernels if kernel.exists())
        sys.stdout.write(listing or NOTHING_PROGRAMMED)
        return 0
    view = programmed_view(args.proxy_mode)
    if args.stats and view.present:
        report = read_stats(view, args.rate)
        if args.json:
            print_json(report.to_json())
        else:
            sys.stdout.write(format_stats(report))
    elif args.json:
        print_json(view.to_json())
    else:
        sys.stdout.write(format_view(view))
    return 0


def dump_ipvs(args: argparse.Namespace) -> int:
    """IPVS mode: the virtual servers as `ipvsadm -Ln` shows them (--raw: and the auxiliary
    nftables table), or as JSON: the view every mode gives, and the virtual servers."""
    virtuals = read_ipvs()
    if args.json:
        view = read_view(virtuals, aux_tables())
        print_json({**view.to_json(), "mode": "ipvs", "virtual_servers": ipvs_json(virtuals)})
    elif not virtuals and not args.raw:
        sys.stdout.write("kproxy has programmed no IPVS virtual server on this node\n")
    else:
        sys.stdout.write(ipvsadm_text(virtuals) + (aux_listing() if args.raw else ""))
    return 0
