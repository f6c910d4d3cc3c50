"""Which backend a --proxy-mode means, which one has programmed this node, and removing
each mode's rules: the one place that knows every backend."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import structlog

from kproxy.backends.base import Backend
from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.kernel import IptablesCommands, IptablesError, save_all
from kproxy.backends.iptables.localnet import restore_route_localnet
from kproxy.backends.iptables.save import programmed as iptables_programmed
from kproxy.backends.iptables.variant import VARIANTS, detect_variant
from kproxy.backends.ipvs.backend import IpvsBackend
from kproxy.backends.ipvs.kernel import NetlinkIpvs, ipvs_leftovers, remove_ipvs_leftovers
from kproxy.backends.ipvs.objects import DEFAULT_SCHEDULER
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.kernel import LibNftKernel, check_batch
from kproxy.backends.nft.names import table_of
from kproxy.backends.nft.netlink import CommitWatch
from kproxy.backends.nft.support import RENDERING, check_script, unavailable_reason
from kproxy.model import IPNetwork

log = structlog.get_logger(__name__)

MODES = ("nftables", "iptables", "ipvs")
FAMILIES = (4, 6)


def make_backend(mode: str, *, family: int = 4, localhost_nodeports: bool = True,
                 iptables_variant: str = "auto", ipvs_scheduler: str = DEFAULT_SCHEDULER,
                 ipvs_exclude: tuple[IPNetwork, ...] = ()) -> Backend:
    if mode == "nftables":
        return NftBackend(LibNftKernel(table_of(family)), family)
    if mode == "iptables":
        return IptablesBackend(IptablesCommands(node_variant(iptables_variant), family),
                               localhost_nodeports=localhost_nodeports, family=family)
    if mode == "ipvs":
        return IpvsBackend(NetlinkIpvs(family), family, scheduler=ipvs_scheduler, exclude=ipvs_exclude)
    raise ValueError(f"proxy mode {mode!r} is not implemented")


class ModeUnavailable(Exception):
    """The kernel cannot run this proxy mode; the message is one line saying why."""


def commit_watch(backends: Iterable[Backend]) -> CommitWatch | None:
    """nftables' commit events for the tables the backends can tell apart, if any: the
    agent then reads back only what other programs' commits touched."""
    tables = [b.watched_table for b in backends if b.watched_table is not None]
    return CommitWatch(tables) if tables else None


def check_mode(mode: str, families: Iterable[int], check: Callable[[str], str | None] | None = None,
               release: str | None = None) -> None:
    """Before anything is touched: does this kernel take the mode's rules? nftables mode
    has the kernel validate its whole skeleton (`nft -c`); ModeUnavailable when refused."""
    if mode != "nftables":
        return
    check = check or check_batch
    release = release or os.uname().release
    started = time.perf_counter()
    families = list(families)
    for family in families:
        refused = check(check_script(family))
        if refused is not None:
            raise ModeUnavailable(unavailable_reason(release, refused))
    log.info("the kernel accepts kproxy's nftables rules", kernel=release, families=families,
             rendering=RENDERING, check_ms=round((time.perf_counter() - started) * 1000))


def node_variant(choice: str = "auto") -> str:
    """The iptables variant: as chosen, or detected from the IPv4 tables (one variant for
    both families, as upstream's iptables-wrapper decides)."""
    return detect_variant(save_all) if choice == "auto" else choice


def nft_programmed(family: int) -> bool:
    return LibNftKernel(table_of(family)).exists()


def programmed_mode() -> str | None:
    """The mode whose rules are on this node (nftables first, either family), else None."""
    if any(nft_programmed(family) for family in FAMILIES):
        return "nftables"
    if ipvs_leftovers():
        return "ipvs"
    variant = node_variant()
    if any(iptables_programmed(save_all(variant, family) or "") for family in FAMILIES):
        return "iptables"
    return None


def cleanup_nftables() -> bool:
    """Remove kproxy's nftables tables of both families; True if there was one."""
    return any([LibNftKernel(table_of(family)).delete_table() for family in FAMILIES])


def cleanup_iptables() -> bool:
    """Remove kproxy's iptables and ip6tables rules from both variants, and set route_localnet
    back if kproxy changed it; True if there were any rules."""
    restore_route_localnet()
    removed = False
    for family in FAMILIES:
        for variant in VARIANTS:
            if save_all(variant, family) is None:
                continue
            try:
                backend = IptablesBackend(IptablesCommands(variant, family), route_localnet=lambda: None,
                                          family=family)
                removed = backend.cleanup() or removed
            except IptablesError as err:  # best effort: never a reason not to program the other mode
                log.warning("could not remove kproxy's iptables rules", variant=variant, family=family,
                            error=str(err))
    return removed


def cleanup_ipvs() -> bool:
    """Remove IPVS mode's virtual servers, kube-ipvs0 and auxiliary tables; True if there were any."""
    try:
        return remove_ipvs_leftovers()
    except Exception as err:  # noqa: BLE001 - best effort: never a reason not to program the other mode
        log.warning("could not remove kproxy's IPVS state", error=str(err))
        return False


CLEANUPS = {"nftables": cleanup_nftables, "iptables": cleanup_iptables, "ipvs": cleanup_ipvs}


def remove_other_modes(mode: str) -> list[str]:
    """Remove the rules of every mode but `mode` (switching modes must not leave two sets
    of rules fighting over the same packets); the modes that had rules."""
    return [other for other, cleanup in CLEANUPS.items() if other != mode and cleanup()]


def cleanup_all() -> dict[str, bool]:
    """`kproxy cleanup`: every mode's rules; which modes had some."""
    return {mode: cleanup() for mode, cleanup in CLEANUPS.items()}
