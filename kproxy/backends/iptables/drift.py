"""What differs between the chains kproxy last restored and iptables-save's view. Pure.

Chains are compared by presence and rule count (iptables-save prints rules in its own
normal form, so rule text would not compare), and the jumps from the built-in chains by
presence: a flushed or deleted chain, a rule added to one of ours, a jump someone removed.
"""

from __future__ import annotations

from collections.abc import Iterable

from kproxy.backends.iptables.render import Chains, Jump
from kproxy.backends.iptables.restore import missing_jumps
from kproxy.backends.iptables.save import Table


def differences(applied: Chains, existing: dict[str, Table], wanted_jumps: Iterable[Jump]) -> list[str]:
    found = []
    for table, chains in applied.items():
        have = existing.get(table, {})
        for chain, rules in chains.items():
            if chain not in have:
                found.append(f"{table} chain {chain} missing")
            elif len(have[chain]) != len(rules):
                found.append(f"{table} chain {chain}: {len(have[chain])} rules, want {len(rules)}")
    found += [f"{j.table} {j.chain}: jump to {j.target} missing" for j in missing_jumps(existing, wanted_jumps)]
    return found
