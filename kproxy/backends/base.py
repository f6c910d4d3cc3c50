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


@dataclass(frozen=True, slots=True)
class Touched:
    """What other programs' commits changed in one of kproxy's nftables tables: the table
    itself (created, deleted, or objects kproxy does not make), and chains and sets by name."""

    table: bool = False
    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()

    def __or__(self, other: Touched) -> Touched:
        return Touched(self.table or other.table, self.chains | other.chains, self.sets | other.sets)

    def __bool__(self) -> bool:
        return self.table or bool(self.chains) or bool(self.sets)

    def describe(self) -> str:
        parts = ["table"] if self.table else []
        parts += [f"chain {name}" for name in sorted(self.chains)]
        parts += [f"set {name}" for name in sorted(self.sets)]
        return ", ".join(parts) or "nothing"


class Backend(Protocol):
    mode: str  # the --proxy-mode it implements
    # the nftables table whose foreign changes the agent can tell apart ("ip kproxy"), or
    # None: any change of the ruleset generation means a whole check
    watched_table: str | None

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        """Make the kernel match `plan` in one atomic transaction; raise if refused
        (the previous state then stays in place and the next sync is a full one)."""

    def differences(self, touched: Touched | None = None) -> list[str]:
        """What the kernel holds that differs from what this backend last applied, read
        from the kernel (costly at scale: the agent asks only when something may have
        changed); empty when they match or nothing was applied yet. `touched`: only what
        other programs changed in `watched_table` needs reading (None: everything)."""

    def read_view(self) -> ProgrammedView:
        """What is programmed now, read back from the kernel."""

    def cleanup(self) -> bool:
        """Remove everything this backend programmed; True if there was something."""
