"""IPVS mode's start-up: its flags checked, the kernel asked whether it has IPVS and the
scheduler, and upstream's IPVS sysctls and timeouts set. Errors are one line, exit 2."""

from __future__ import annotations

import argparse

import structlog

from kproxy.backends.ipvs.kernel import (
    IPVS_SYSCTLS,
    STRICT_ARP_SYSCTLS,
    ipvs_available,
    scheduler_available,
    set_timeouts,
    write_sysctls,
)
from kproxy.backends.ipvs.objects import DEFAULT_SCHEDULER
from kproxy.cli.errors import UsageError

log = structlog.get_logger(__name__)

# The schedulers Linux has (net/netfilter/ipvs/ip_vs_*.c); which are built depends on the kernel.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")


def scheduler_of(args: argparse.Namespace) -> str:
    """--ipvs-scheduler, checked without the kernel (upstream's default for "": rr)."""
    name = getattr(args, "ipvs_scheduler", "") or DEFAULT_SCHEDULER
    if name not in SCHEDULERS:
        raise UsageError(f"--ipvs-scheduler {name!r}: unknown IPVS scheduler (one of {', '.join(SCHEDULERS)})")
    return name


def prepare_ipvs(args: argparse.Namespace) -> str:
    """Check the kernel and set it up for IPVS mode; the scheduler to use."""
    scheduler = scheduler_of(args)
    why = ipvs_available()
    if why is not None:
        raise UsageError(f"--proxy-mode ipvs: {why}; load ip_vs or choose --proxy-mode nftables or iptables")
    if not scheduler_available(scheduler):
        raise UsageError(f"--ipvs-scheduler {scheduler}: this kernel has no ip_vs_{scheduler} module")
    wanted = dict(IPVS_SYSCTLS)
    if getattr(args, "ipvs_strict_arp", False):
        wanted.update(STRICT_ARP_SYSCTLS)
    write_sysctls(wanted)
    timeouts = (args.ipvs_tcp_timeout, args.ipvs_tcpfin_timeout, args.ipvs_udp_timeout)
    if any(timeouts):
        set_timeouts(*(int(t) for t in timeouts))
    return scheduler


def check_ipvs_flags(args: argparse.Namespace) -> None:
    """Before anything starts: the scheduler name is known, and --ipvs-sync-period and
    --ipvs-min-sync-period stand for the general ones in IPVS mode."""
    if args.proxy_mode != "ipvs":
        return
    scheduler_of(args)
    if getattr(args, "ipvs_sync_period", None):
        args.sync_period = args.ipvs_sync_period
    if getattr(args, "ipvs_min_sync_period", None) is not None:
        args.min_sync_period = args.ipvs_min_sync_period
