"""What every backend is to the agent: render a Plan into kernel objects, one atomic
transaction per sync, and read back what is programmed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kproxy.backends.view import ProgrammedView
from kproxy.plan import Plan

# The connection mark that asks for masquerade in postrouting: upstream's default
# --iptables-masquerade-bit 14, used by its nftables and iptables modes alike.
MASQUERADE_MARK = "0x4000"


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    full: bool  # the whole ruleset was rewritten (first sync, after a failure, periodic)
    operations: int  # rules and set elements written or deleted
    render_ms: float
    apply_ms: float
    # kernel transactions committed: each moves the nftables ruleset generation by one,
    # which tells the agent whether anyone else changed the rules meanwhile
    transactions: int = 0
    # IPVS mode: the part of apply_ms spent in IPVS and address netlink requests (the rest is
    # its auxiliary nftables table)
    netlink_ms: float | None = None


class Backend(Protocol):
    mode: str  # the --proxy-mode it implements

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        """Make the kernel match `plan` in one atomic transaction; raise if refused
        (the previous state then stays in place and the next sync is a full one)."""

    def differences(self) -> list[str]:
        """What the kernel holds that differs from what this backend last applied, read
        from the kernel (costly at scale: the agent asks only when something may have
        changed); empty when they match or nothing was applied yet."""

    def read_view(self) -> ProgrammedView:
        """What is programmed now, read back from the kernel."""

    def cleanup(self) -> bool:
        """Remove everything this backend programmed; True if there was something."""
