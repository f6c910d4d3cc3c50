"""Desired chains (+ what was applied, or what the kernel has) -> iptables-restore input. Pure.

Like upstream's MinimizeIPTablesRestore: a `:CHAIN - [0:0]` line creates or flushes a
chain, so only chains that are rewritten are declared; everything else stays as it is
(iptables-restore runs with --noflush). A chain no longer wanted is declared (emptied)
and deleted with -X in the same transaction: whatever jumped to it was rewritten in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kproxy.backends.iptables.chains import TableChanges
from kproxy.backends.iptables.render import (
    BUILTIN,
    FIREWALL,
    HAIRPIN_CHAINS,
    SERVICE_CHAIN_PREFIXES,
    STATIC_CHAINS,
    TABLES,
    Chains,
    Jump,
)
from kproxy.backends.iptables.save import Table, options


def is_ours(table: str, chain: str) -> bool:
    """Chains kproxy creates and may delete (KUBE-FIREWALL is shared with kubelet)."""
    return (chain in STATIC_CHAINS.get(table, ()) or chain.startswith(SERVICE_CHAIN_PREFIXES)
            or chain in HAIRPIN_CHAINS)


@dataclass(frozen=True, slots=True)
class RestoreInput:
    text: str
    operations: int  # rules written plus chains deleted

    @property
    def tables(self) -> int:
        """Tables it commits: iptables-nft commits each as its own nftables transaction."""
        return self.text.count("\nCOMMIT\n")

    def __bool__(self) -> bool:
        return bool(self.text)


def _table_block(table: str, write: Iterable[str], rules: dict[str, tuple[str, ...]],
                 delete: Iterable[str], extra: Iterable[str] = ()) -> tuple[list[str], int]:
    write, delete, extra = list(write), sorted(delete), list(extra)
    if not (write or delete or extra):
        return [], 0
    lines = [f"*{table}"]
    lines += [f":{c} - [0:0]" for c in (*write, *delete)]
    count = 0
    for c in write:
        lines.extend(rules[c])
        count += len(rules[c])
    lines += extra
    lines += [f"-X {c}" for c in delete]
    lines.append("COMMIT")
    return lines, count + len(extra) + len(delete)


def _restore_input(blocks: Iterable[tuple[list[str], int]]) -> RestoreInput:
    """The tables' blocks (from _table_block) as one iptables-restore input."""
    out: list[str] = []
    total = 0
    for lines, n in blocks:
        out += lines
        total += n
    return RestoreInput(text="\n".join(out) + "\n" if out else "", operations=total)


def missing_jumps(existing: dict[str, Table], wanted_jumps: Iterable[Jump]) -> list[Jump]:
    """Jumps from the built-in chains into ours that the kernel lacks."""
    return [j for j in wanted_jumps
            if not any(options(rule).get("-j") == j.target for rule in existing.get(j.table, {}).get(j.chain, ()))]


def full_restore(desired: Chains, existing: dict[str, Table], wanted_jumps: Iterable[Jump]) -> RestoreInput:
    """Rewrite every chain of ours; delete ours the kernel has but the plan does not
    (left by an earlier run, or by upstream kube-proxy); add missing jumps."""
    blocks = []
    missing = missing_jumps(existing, wanted_jumps)
    for table in TABLES:
        have = existing.get(table, {})
        stale = [c for c in have if is_ours(table, c) and c not in desired[table]]
        inserts = [f"-I {j.chain} {j.rule()}" for j in missing if j.table == table]
        # -I puts each at the top: insert in reverse to keep the listed order
        blocks.append(_table_block(table, desired[table], desired[table], stale, reversed(inserts)))
    return _restore_input(blocks)


def incremental_restore(changes: dict[str, TableChanges]) -> RestoreInput:
    """A partial sync's changes: chains rewritten or deleted whole, and single lines deleted
    from or inserted into shared chains (at their place in the chain's sorted order)."""
    blocks = []
    for table in TABLES:
        change = changes.get(table)
        if not change:
            continue
        lines = [f"*{table}"]
        lines += [f":{c} - [0:0]" for c in (*change.write, *sorted(change.delete))]
        for rules in change.write.values():
            lines.extend(rules)
        for removed in change.remove.values():
            lines += ["-D" + line[2:] for line in removed]
        for chain, added in change.insert.items():
            lines += [f"-I {chain} {at}" + line[len(f"-A {chain}"):] for at, line in added]
        lines += [f"-X {c}" for c in sorted(change.delete)]
        lines.append("COMMIT")
        count = (sum(len(r) for r in change.write.values()) + len(change.delete)
                 + sum(len(r) for r in change.remove.values()) + sum(len(a) for a in change.insert.values()))
        blocks.append((lines, count))
    return _restore_input(blocks)


def partial_restore(applied: Chains, desired: Chains) -> RestoreInput:
    """Only what changed since `applied` (what the last successful restore left)."""
    blocks = []
    for table in TABLES:
        before, after = applied.get(table, {}), desired[table]
        write = [c for c, rules in after.items() if (old := before.get(c)) is not rules and old != rules]
        delete = [c for c in before if c not in after and c != FIREWALL]
        blocks.append(_table_block(table, write, after, delete))
    return _restore_input(blocks)


def cleanup_restore(existing: dict[str, Table]) -> RestoreInput:
    """Remove every jump from the built-in chains into kproxy's chains, then the chains
    (KUBE-FIREWALL stays: route_localnet stays set, and kubelet keeps the same rule).
    Rules in other parties' chains are theirs: if one still jumps to ours, the table's
    transaction fails and nothing in it is removed."""
    blocks = []
    for table in TABLES:
        have = existing.get(table, {})
        ours = [c for c in have if is_ours(table, c)]
        if not ours:
            continue
        removals = [
            "-D" + rule[2:]
            for chain, rules in have.items() if chain in BUILTIN.get(table, ())
            for rule in rules if is_ours(table, options(rule).get("-j", ""))
        ]
        blocks.append(_table_block(table, (), {}, ours, removals))
    return _restore_input(blocks)
