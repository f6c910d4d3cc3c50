"""What differs between the table kproxy last applied and what the kernel holds. Pure.

Other agents change rules on real nodes (a firewall reload, a CNI, an admin): a deleted
table, a flushed chain, a deleted element, a rule added to a kproxy chain. The backend
compares what it applied (its Skeleton and ElementTable) with the kernel whenever another
program's commit may have changed its table, and rewrites the table when they differ.

The kernel is read through a TableReader: the structure (chains with their rule counts,
set names) costs milliseconds whatever the size; elements stream in set by set and are
compared as they come, so a check never holds a second copy of a 200,000-element table.
Only the sets another program touched are read when the commit watch can say which
(`touched`), and of those only the elements it changed when the watch knows their keys;
every set otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from kproxy.backends.base import Touched
from kproxy.backends.nft import wire
from kproxy.backends.nft.affinity6 import is_client_set
from kproxy.backends.nft.elements import ElementTable
from kproxy.backends.nft.names import is_affinity_map
from kproxy.backends.nft.objects import Element, SetSpec, Skeleton


@dataclass(frozen=True, slots=True)
class Structure:
    """One table without its elements: rules per chain, and the names of its sets and maps."""

    chains: dict[str, int]
    sets: frozenset[str]


def holds(structure: Structure, digest: str | None, skeleton: Skeleton) -> bool:
    """Whether the table read back is this skeleton: the digest it holds (names.SKELETON),
    its chains with their rule counts, its sets."""
    return (digest == skeleton.digest()
            and structure.chains == {c.name: len(c.rules) for c in skeleton.chains}
            and structure.sets == frozenset(s.name for s in skeleton.sets))


class TableReader(Protocol):
    def structure(self) -> Structure | None:
        """None when the table is missing."""

    def read_elements(self, name: str, spec: str) -> Iterable[tuple[str, str | None]]:
        """(key, data or None) of each element of one set or map, as render writes them."""

    def read_element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None:
        """One element by its raw key (as the kernel's events carry it); None: not there."""


@dataclass(slots=True)
class CheckStats:
    """What one check read, for its log line."""

    sets_read: int = 0
    elements_read: int = 0


def differences(skeleton: Skeleton, table: ElementTable, kernel: TableReader, touched: Touched | None = None,
                stats: CheckStats | None = None) -> list[str]:
    """What the kernel lacks or has beyond what kproxy applied; empty when they match.
    `touched`: what other programs changed (None: anything may have changed)."""
    structure = kernel.structure()
    if structure is None:
        return [f"table {skeleton.table} missing"]
    found: list[str] = []
    rules = structure.chains
    for chain in skeleton.chains:
        if chain.name not in rules:
            found.append(f"chain {chain.name} missing")
        elif rules[chain.name] != len(chain.rules):
            found.append(f"chain {chain.name}: {rules[chain.name]} rules, want {len(chain.rules)}")
    wanted_chains = {c.name for c in skeleton.chains}
    found += [f"chain {name} not kproxy's" for name in sorted(rules.keys() - wanted_chains)]
    for spec in skeleton.sets:
        if spec.name not in structure.sets:
            found.append(f"{'map' if spec.is_map else 'set'} {spec.name} missing")
        elif _to_read(spec, touched):
            keys = touched.keys.get(spec.name) if touched is not None and not touched.table else None
            by_key = _key_differences(spec, table, kernel, keys, stats) if keys is not None else None
            found += by_key if by_key is not None else _element_differences(spec, table, kernel, stats)
    wanted_sets = {s.name for s in skeleton.sets}
    found += [f"set {name} not kproxy's" for name in sorted(structure.sets - wanted_sets)]
    return found


def _to_read(spec: SetSpec, touched: Touched | None) -> bool:
    if is_affinity_map(spec.name) or is_client_set(spec.name):
        return False  # filled by the kernel, not by kproxy
    return touched is None or touched.table or spec.name in touched.sets


def _key_differences(spec: SetSpec, table: ElementTable, kernel: TableReader, keys: Iterable[bytes],
                     stats: CheckStats | None) -> list[str] | None:
    """Only the elements other programs' commits changed, each read by its key; None when
    they cannot be (an interval set, a key of another layout): then the whole set is read."""
    if "interval" in spec.spec:
        return None
    try:
        text_of = wire.joined(wire.layout(spec.spec).key)
        texts = [(raw, text_of(raw)) for raw in keys]
    except (ValueError, IndexError):
        return None
    missing = extra = changed = 0
    for raw, key in texts:
        want = table.effective(spec.name, key)
        have = kernel.read_element(spec.name, spec.spec, raw)
        if have is None:
            missing += want is not None
        elif want is None:
            extra += 1
        elif want.data != have[1]:
            changed += 1
    if stats is not None:
        stats.sets_read += 1
        stats.elements_read += len(texts)
    return _counted(spec, missing, extra, changed)


def _counted(spec: SetSpec, missing: int, extra: int, changed: int) -> list[str]:
    return [f"{spec.name}: {count} element(s) {what}"
            for what, count in (("missing", missing), ("not kproxy's", extra), ("changed", changed)) if count]


def _element_differences(spec: SetSpec, table: ElementTable, kernel: TableReader,
                         stats: CheckStats | None) -> list[str]:
    """Streams the kernel's elements of one set against what kproxy applied, holding no
    copy of either (keys are unique in a set, so matches are counted, not remembered)."""
    lookup: Callable[[str], Element | None]
    if "interval" in spec.spec:  # a few node settings, whose single addresses list without /32
        lookup = {_bare_key(key): element for key, element in table.elements(spec.name)}.get
    else:
        lookup = partial(table.effective, spec.name)
    extra = changed = matched = read = 0
    for key, data in kernel.read_elements(spec.name, spec.spec):
        read += 1
        element = lookup(_bare_key(key))
        if element is None:
            extra += 1
            continue
        matched += 1
        if element.data != data:
            changed += 1
    if stats is not None:
        stats.sets_read += 1
        stats.elements_read += read
    return _counted(spec, table.count(spec.name) - matched, extra, changed)


def _bare(part: str) -> str:
    """A single address in an interval set lists without its /32 or /128."""
    return part.removesuffix("/32").removesuffix("/128")


def _bare_key(key: str) -> str:
    if "/" not in key:
        return key
    return " . ".join(_bare(p) for p in key.split(" . "))
