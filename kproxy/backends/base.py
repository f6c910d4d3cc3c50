"""What every backend is to the agent: render a Plan into kernel objects, one atomic
transaction per sync, and read back what is programmed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


# Element keys a set's changes are remembered by, at most; beyond, the whole set is read.
MAX_TOUCHED_KEYS = 1000


@dataclass(frozen=True, slots=True)
class Touched:
    """What other programs' commits changed in one of kproxy's nftables tables: the table
    itself (created, deleted, or objects kproxy does not make), chains and sets by name,
    and, for sets whose element changes are known one by one, the raw keys changed (as the
    kernel's events carry them); a set in `sets` without `keys` changed as a whole."""

    table: bool = False
    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()
    keys: Mapping[str, frozenset[bytes]] = field(default_factory=dict)

    def __or__(self, other: Touched) -> Touched:
        keys = {}
        for name in self.sets | other.sets:
            mine = self.keys.get(name) if name in self.sets else frozenset()
            theirs = other.keys.get(name) if name in other.sets else frozenset()
            if mine is not None and theirs is not None and len(mine | theirs) <= MAX_TOUCHED_KEYS:
                keys[name] = mine | theirs
        return Touched(self.table or other.table, self.chains | other.chains, self.sets | other.sets, keys)

    def __bool__(self) -> bool:
        return self.table or bool(self.chains) or bool(self.sets)

    def describe(self) -> str:
        parts = ["table"] if self.table else []
        parts += [f"chain {name}" for name in sorted(self.chains)]
        for name in sorted(self.sets):
            count = len(self.keys[name]) if name in self.keys else None
            parts.append(f"set {name}" + ("" if count is None else f" ({count} element{'s' * (count != 1)})"))
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
