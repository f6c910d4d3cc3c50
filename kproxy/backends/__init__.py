"""Backends render a Plan into kernel objects. They share this small contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kproxy.plan import Plan
from kproxy.view import ProgrammedView


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    full: bool  # the whole ruleset was rewritten (first sync, after a failure, periodic)
    operations: int  # rules and set elements written or deleted
    render_ms: float
    apply_ms: float


class Backend(Protocol):
    mode: str  # the --proxy-mode it implements

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        """Make the kernel match `plan` in one atomic transaction; raise if refused
        (the previous state then stays in place and the next sync is a full one)."""

    def read_view(self) -> ProgrammedView:
        """What is programmed now, read back from the kernel."""

    def cleanup(self) -> bool:
        """Remove everything this backend programmed; True if there was something."""


def make_backend(mode: str, *, localhost_nodeports: bool = True, iptables_variant: str = "auto",
                 family: int = 4) -> Backend:
    if mode == "nftables":
        from kproxy.backends.nft.backend import NftBackend
        from kproxy.backends.nft.kernel import LibNftKernel
        from kproxy.backends.nft.objects import table_of

        return NftBackend(LibNftKernel(table_of(family)), family)
    if mode == "iptables":
        from kproxy.backends.iptables.backend import IptablesBackend
        from kproxy.backends.iptables.kernel import IptablesCommands, save_all
        from kproxy.backends.iptables.variant import detect_variant

        # one variant for both families, decided from the IPv4 tables (as upstream's wrapper)
        variant = detect_variant(save_all) if iptables_variant == "auto" else iptables_variant
        return IptablesBackend(IptablesCommands(variant, family), localhost_nodeports=localhost_nodeports,
                               family=family)
    raise ValueError(f"proxy mode {mode!r} is not implemented")


def cleanup_nftables() -> bool:
    """Remove kproxy's nftables tables of both families; True if there was one."""
    removed = [make_backend("nftables", family=family).cleanup() for family in (4, 6)]
    return any(removed)
