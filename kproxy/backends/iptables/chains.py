"""The chains kproxy has applied, kept by owner, and what one sync changes in them. Pure.

A Service port owns its chains (KUBE-SVC-*, KUBE-EXT-*, ...) and some lines in shared
chains (its frontends in KUBE-SERVICES and KUBE-NODEPORTS, its local pods in
KUBE-HAIRPIN-NN and the jumps there from KUBE-HAIRPIN); the node owns the other chains and
the head and tail of some shared ones. A shared chain that is not one of STATIC_CHAINS
(KUBE-HAIRPIN-NN) exists while it holds lines: created with its first, deleted with its last.
A sync that changes a few Service ports rewrites only their chains and deletes or adds
only their lines in the shared chains: at 10,000 Services a one-endpoint change stays a
few lines of iptables-restore input, where rewriting KUBE-HAIRPIN whole took 0.6 s.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kproxy.backends.iptables.render import STATIC_CHAINS, TABLES, Chains, ServicePortRules
from kproxy.model import ServicePortName
from kproxy.plan import PortPlans, ServicePortPlan

Key = tuple[str, str]  # (table, chain)
HEAD, TAIL = "head:", "tail:"  # render_node's prefixes for its lines in shared chains
EMPTY = ServicePortRules()


@dataclass(slots=True)
class TableChanges:
    """One table's part of a partial sync."""

    write: dict[str, tuple[str, ...]] = field(default_factory=dict)  # chains rewritten whole
    delete: set[str] = field(default_factory=set)
    remove: dict[str, list[str]] = field(default_factory=dict)  # chain -> its "-A ..." lines to delete
    # chain -> (1-based position, line) to add, in ascending position: inserted in that
    # order after the deletions, each lands where a full restore would have put it
    insert: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.write or self.delete or self.remove or self.insert)


class ChainState:
    """What kproxy applied, by owner. `key` is what every Service port's rules depend on
    besides its own plan (masquerade-all, cluster CIDRs, family): when it changes, all of
    them must be rendered again."""

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self.ports: dict[ServicePortName, tuple[ServicePortPlan, ServicePortRules]] = {}
        self.node: dict[Key, tuple[str, ...]] = {}
        # lines of shared chains by how many Service ports hold them (a pod backing two
        # Services has one hairpin line), and the held ones sorted: a full and a partial
        # sync then put the Service ports' lines in the same order
        self.lines: dict[Key, Counter[str]] = {}
        self.ordered: dict[Key, list[str]] = {}

    def names(self) -> set[ServicePortName]:
        return set(self.ports)

    def update(self, names: Iterable[ServicePortName], plans: PortPlans,
               render: Callable[[ServicePortPlan], ServicePortRules]) -> dict[str, TableChanges]:
        """Take the new plans of `names` (gone from `plans`: removed); what changes."""
        changes = {table: TableChanges() for table in TABLES}
        touched: dict[Key, dict[str, bool]] = {}  # line -> held before this update
        for name in names:
            old = self.ports.get(name)
            new = plans.get(name)
            if old is not None and (old[0] is new or old[0] == new):
                continue
            before = old[1] if old is not None else EMPTY
            after = render(new) if new is not None else EMPTY
            for table, chain in before.chains.keys() - after.chains.keys():
                changes[table].delete.add(chain)
                changes[table].write.pop(chain, None)
            for (table, chain), rules in after.chains.items():
                if before.chains.get((table, chain)) != rules:
                    changes[table].write[chain] = rules
                    changes[table].delete.discard(chain)
            for key, lines in before.shared.items():
                for line in lines:
                    self._count(key, line, -1, touched)
            for key, lines in after.shared.items():
                for line in lines:
                    self._count(key, line, +1, touched)
            if new is None:
                del self.ports[name]
            else:
                self.ports[name] = (new, after)
        for (table, chain), held_before in touched.items():
            held = self.lines[(table, chain)]
            ordered = self.ordered.setdefault((table, chain), [])
            standing = chain in STATIC_CHAINS.get(table, ())  # else: there while it holds lines
            existed = standing or bool(ordered)
            added = []
            for line, was in held_before.items():
                now = held[line] > 0
                if was and not now:
                    changes[table].remove.setdefault(chain, []).append(line)
                    del held[line]
                    del ordered[bisect_left(ordered, line)]
                elif now and not was:
                    insort(ordered, line)
                    added.append(line)
            if not existed and ordered:  # its first lines: created whole
                changes[table].write[chain] = tuple(ordered)
                changes[table].delete.discard(chain)
            elif not standing and not ordered:  # its last line went: deleted
                del self.lines[(table, chain)], self.ordered[(table, chain)]
                changes[table].remove.pop(chain, None)
                if existed:
                    changes[table].delete.add(chain)
            elif added:
                head = len(self.node.get((table, HEAD + chain), ()))
                changes[table].insert[chain] = sorted(
                    (head + bisect_left(ordered, line) + 1, line) for line in added)
        return changes

    def _count(self, key: Key, line: str, step: int, touched: dict[Key, dict[str, bool]]) -> None:
        held = self.lines.setdefault(key, Counter())
        touched.setdefault(key, {}).setdefault(line, held[line] > 0)
        held[line] += step

    def set_node(self, node: dict[Key, tuple[str, ...]], changes: dict[str, TableChanges]) -> None:
        """Take render_node's output; a node-owned chain that changed is rewritten, and so
        is a shared chain whose head or tail changed (its lines are rewritten with it)."""
        for key in sorted(node.keys() | self.node.keys()):
            if node.get(key) == self.node.get(key):
                continue
            table, chain = key
            chain = chain.removeprefix(HEAD).removeprefix(TAIL)
            changes[table].write[chain] = ()  # filled in below, from the state after the update
        self.node = dict(node)
        for table, change in changes.items():
            for chain in [c for c in change.write if self._is_shared((table, c))]:
                change.write[chain] = self.chain(table, chain)
                change.remove.pop(chain, None)
                change.insert.pop(chain, None)
            for chain in list(change.write):
                if not change.write[chain] and (table, chain) in self.node:
                    change.write[chain] = self.node[(table, chain)]

    def _is_shared(self, key: Key) -> bool:
        table, chain = key
        return (key in self.lines or (table, HEAD + chain) in self.node or (table, TAIL + chain) in self.node
                or (chain in STATIC_CHAINS.get(table, ()) and key not in self.node))

    def chain(self, table: str, chain: str) -> tuple[str, ...]:
        """A shared chain's lines: the node's head, the Service ports' lines, the node's tail."""
        return (*self.node.get((table, HEAD + chain), ()),
                *self.ordered.get((table, chain), ()),
                *self.node.get((table, TAIL + chain), ()))

    def chains(self) -> Chains:
        """Every chain of the ruleset as it should be (for a full restore and drift checks)."""
        out: Chains = {table: {c: () for c in STATIC_CHAINS[table]} for table in TABLES}
        for _plan, rules in self.ports.values():
            for (table, chain), lines in rules.chains.items():
                out[table][chain] = lines
        for table, chain in [*self.lines, *self.node]:
            if chain.startswith((HEAD, TAIL)):
                chain = chain.removeprefix(HEAD).removeprefix(TAIL)
            if self._is_shared((table, chain)):
                out[table][chain] = self.chain(table, chain)
            else:
                out[table][chain] = self.node[(table, chain)]
        return out
