"""Build one nft transaction (a script applied atomically) from desired vs applied. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from kproxy.backends.nft.elements import ElementDelta, ElementTable
from kproxy.backends.nft.objects import Element, SetSpec, Skeleton, element_text

CHUNK = 5000  # elements per add/delete command; keeps single commands a sane size


@dataclass(slots=True)
class NftTransaction:
    """Ordered nft commands; applied as one batch, so all or nothing."""

    commands: list[str] = field(default_factory=list)
    operations: int = 0  # elements and rules touched, for logs and metrics

    def add(self, command: str, operations: int = 1) -> None:
        self.commands.append(command)
        self.operations += operations

    def text(self) -> str:
        return "\n".join(self.commands) + "\n"

    def __bool__(self) -> bool:
        return bool(self.commands)


def _element_commands(tx: NftTransaction, verb: str, table: str, set_name: str, items: list[str]) -> None:
    for i in range(0, len(items), CHUNK):
        chunk = items[i:i + CHUNK]
        tx.add(f"{verb} element {table} {set_name} {{ {', '.join(chunk)} }}", len(chunk))


def _add_chain_rules(tx: NftTransaction, skeleton: Skeleton, names: Iterable[str]) -> None:
    chains = skeleton.chain_map()
    for name in names:
        for rule in chains[name].rules:
            tx.add(f"add rule {skeleton.table} {name} {rule}")


def skeleton_transaction(skeleton: Skeleton) -> NftTransaction:
    """Replace the whole table by its skeleton, every set empty: `add` makes `delete` safe
    when it is absent, and the kernel swaps old for new atomically."""
    tx = NftTransaction()
    name = skeleton.table
    tx.add(f"add table {name}", 0)
    tx.add(f"delete table {name}", 0)
    tx.add(f'add table {name} {{ comment "programmed by kproxy; do not edit"; }}', 0)
    for chain in skeleton.chains:
        tx.add(chain.definition(name), 0)
    for spec in skeleton.sets:
        tx.add(spec.definition(name), 0)
    _add_chain_rules(tx, skeleton, [c.name for c in skeleton.chains])
    return tx


def full_transaction(skeleton: Skeleton, table: ElementTable) -> NftTransaction:
    """Replace the whole table, elements included, in one batch: packets never see an
    empty table."""
    sets = [(spec, table.elements(spec.name)) for spec in skeleton.sets]
    return elements_transaction(skeleton.table, sets, into=skeleton_transaction(skeleton))


def elements_transaction(table: str, sets: Iterable[tuple[SetSpec, Iterable[tuple[str, Element]]]],
                         flush: bool = False, into: NftTransaction | None = None) -> NftTransaction:
    """Add these sets' elements (after emptying the sets, if `flush`), as nft commands: a
    whole-table replace's elements, and NftKernel.load_elements() for the fakes."""
    tx = into if into is not None else NftTransaction()
    sets = list(sets)
    if flush:
        for spec, _items in sets:
            tx.add(f"flush {'map' if spec.is_map else 'set'} {table} {spec.name}", 0)
    for spec, items in sets:
        _element_commands(tx, "add", table, spec.name, [element_text(key, element) for key, element in items])
    return tx


class NeedsFullSync(Exception):
    """The change cannot be expressed incrementally (a set changed type)."""


def incremental_transaction(old: Skeleton, new: Skeleton, delta: ElementDelta) -> NftTransaction:
    tx = NftTransaction()
    table = new.table
    old_chains, new_chains = old.chain_map(), new.chain_map()
    old_sets, new_sets = old.set_map(), new.set_map()
    for name, spec in new_sets.items():
        if name in old_sets and old_sets[name] != spec:
            raise NeedsFullSync(f"set {name} changed definition")
    for name, chain in new_chains.items():
        if name in old_chains and old_chains[name].hook != chain.hook:
            raise NeedsFullSync(f"chain {name} changed hook")
    # 1. new containers, so later elements and rules can refer to them
    for name in new_chains.keys() - old_chains.keys():
        tx.add(new_chains[name].definition(table), 0)
    for name in new_sets.keys() - old_sets.keys():
        tx.add(new_sets[name].definition(table), 0)
    # 2. elements: deletions first, so a changed map value is delete + add
    deletes: dict[str, list[str]] = defaultdict(list)
    adds: dict[str, list[str]] = defaultdict(list)
    for (set_name, key), before, after in delta.changes():
        # elements of a set deleted whole below need no deleting one by one
        if before is not None and set_name in new_sets:
            deletes[set_name].append(key)
        if after is not None:
            adds[set_name].append(element_text(key, after))
    for set_name in sorted(deletes):
        _element_commands(tx, "delete", table, set_name, deletes[set_name])
    for set_name in sorted(adds):
        _element_commands(tx, "add", table, set_name, adds[set_name])
    # 3. chains whose rules changed are rewritten whole
    changed = [n for n, c in new_chains.items() if n not in old_chains or old_chains[n].rules != c.rules]
    for name in changed:
        if name in old_chains:
            tx.add(f"flush chain {table} {name}", 0)
    _add_chain_rules(tx, new, changed)
    # 4. containers no longer used: verdict maps first (their elements jump to chains; the
    # rules that looked them up were rewritten above), then chains, then the sets and
    # maps the chains' rules refer to
    gone = sorted(old_sets.keys() - new_sets.keys())
    verdict_maps = [name for name in gone if old_sets[name].is_verdict_map]
    for name in verdict_maps:
        tx.add(f"delete map {table} {name}", 0)
    for name in sorted(old_chains.keys() - new_chains.keys()):
        tx.add(f"delete chain {table} {name}", 0)
    for name in gone:
        if name not in verdict_maps:
            tx.add(f"delete {'map' if old_sets[name].is_map else 'set'} {table} {name}", 0)
    return tx
