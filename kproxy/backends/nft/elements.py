"""The elements kproxy has programmed, with who contributed each. Pure.

Several Service ports may contribute the same element (a pod backing two Services gives
one hairpin pair; two Services may claim one externalIP:port). An element stays while any
owner holds it; when owners disagree on its value the smallest owner wins, so the result
does not depend on the order changes arrive in.

The endpoint maps (`frontend . index -> endpoint`, 120,000 elements at 10k Services) are
held as one row of the plan's endpoints per frontend and owner instead of one entry per
element; their keys and elements are made again when read. With plain elements held as
their bare owner (ElementTable), the table takes 13 MB at 10k Services instead of 47 MB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

from kproxy.backends.nft.objects import Element
from kproxy.backends.nft.render import PRESENT, Contribution, Row, endpoint_element
from kproxy.plan import Target

Owner = str
Key = tuple[str, str]  # (set name, element key)
Held = Owner | tuple[Owner, Element] | dict[Owner, Element]  # see ElementTable
# an indexed set's endpoints under one key prefix: (owner, endpoints by index) while one
# owner holds it, {owner: endpoints by index} once shared
HeldRow = tuple[Owner, Row] | dict[Owner, Row]


@dataclass(slots=True)
class ElementDelta:
    """Effective element before and after, for every key touched since it was made."""

    before: dict[Key, Element | None] = field(default_factory=dict)
    after: dict[Key, Element | None] = field(default_factory=dict)

    def changes(self) -> Iterator[tuple[Key, Element | None, Element | None]]:
        for key, new in self.after.items():
            old = self.before[key]
            if old != new:
                yield key, old, new


class ElementTable:
    # key -> owner for a plain set's element (PRESENT), (owner, element) for a map's, while
    # it has one owner, as nearly all do (no tuple for the 84,000 plain elements at 10k, and
    # a tuple is a quarter of a dict's size); {owner: element} once shared
    def __init__(self, indexed: Callable[[str], bool] = lambda _name: False) -> None:
        """`indexed`: the sets whose elements come as rows (render.Row), by key prefix."""
        self._owners: dict[str, dict[str, Held]] = {}
        # sets whose keys are "<prefix> . <index>", indexes 0..n-1 for each owner's prefix
        # (a few dozen names, asked about for each contribution: remembered)
        self._indexed = cache(indexed)
        self._rows: dict[str, dict[str, HeldRow]] = {}

    @staticmethod
    def _winner(held: Held) -> Element:
        if isinstance(held, str):
            return PRESENT
        if isinstance(held, tuple):
            return held[1]
        return held[min(held)]

    @staticmethod
    def _width(held: HeldRow) -> int:
        if isinstance(held, tuple):
            return len(held[1])
        return max(len(row) for row in held.values())

    @staticmethod
    def _target_at(held: HeldRow | None, index: int) -> Target | None:
        """The endpoint at `index`: the smallest owner's among those whose row reaches it."""
        if held is None:
            return None
        if isinstance(held, tuple):
            row = held[1]
            return row[index] if index < len(row) else None
        for owner in sorted(held):
            if index < len(held[owner]):
                return held[owner][index]
        return None

    def _at(self, held: HeldRow | None, index: int) -> Element | None:
        target = self._target_at(held, index)
        return None if target is None else endpoint_element(target)

    def effective(self, set_name: str, key: str) -> Element | None:
        if self._indexed(set_name):
            prefix, _, index = key.rpartition(" . ")
            if not index.isdigit():
                return None
            return self._at(self._rows.get(set_name, {}).get(prefix), int(index))
        held = self._owners.get(set_name, {}).get(key)
        return None if held is None else self._winner(held)

    def count(self, set_name: str) -> int:
        if self._indexed(set_name):
            return sum(map(self._width, self._rows.get(set_name, {}).values()))
        return len(self._owners.get(set_name, ()))

    def set_names(self) -> list[str]:
        return [name for store in (self._owners, self._rows) for name, keys in store.items() if keys]

    def elements(self, set_name: str) -> Iterable[tuple[str, Element]]:
        """A set's (key, element) pairs; an indexed set's as EndpointRows, which a load can
        also read row by row."""
        if self._indexed(set_name):
            return EndpointRows(self, set_name)
        return ((key, self._winner(held)) for key, held in self._owners.get(set_name, {}).items())

    def rows(self, set_name: str) -> Iterator[tuple[str, Sequence[Target]]]:
        """An indexed set's key prefixes, each with its effective endpoints by index."""
        for prefix, held in self._rows.get(set_name, {}).items():
            if isinstance(held, tuple):
                yield prefix, held[1]
            else:
                yield prefix, [t for t in self._targets(held) if t is not None]  # none is: see _target_at

    def replace(self, owner: Owner, old: Contribution | None, new: Contribution | None,
                delta: ElementDelta | None = None) -> None:
        """Swap what `owner` contributes from `old` to `new`, recording changes in `delta`."""
        if not old and delta is None and new:
            return self._add(owner, new)
        old = old or {}
        new = new or {}
        names = old | new  # a dict: the same order in every run
        for set_name in (n for n in names if self._indexed(n)):
            rows_before, rows_after = _rows(old, set_name), _rows(new, set_name)
            for prefix in rows_before | rows_after:
                if rows_before.get(prefix) != rows_after.get(prefix):
                    self._put_row(owner, set_name, prefix, rows_after.get(prefix), delta)
        plain = [n for n in names if not self._indexed(n)]
        for set_name in plain:
            kept = _elements(new, set_name)
            for key, element in _elements(old, set_name).items():
                if kept.get(key) != element:
                    self._drop(owner, set_name, key, delta)
        for set_name in plain:
            had = _elements(old, set_name)
            for key, element in _elements(new, set_name).items():
                if had.get(key) != element:
                    self._put(owner, set_name, key, element, delta)

    def _add(self, owner: Owner, new: Contribution) -> None:
        """A new owner's elements, nothing to record: a full sync's 200,000 elements take
        this path, so it is _put without the bookkeeping, inline."""
        for set_name in new:
            if self._indexed(set_name):
                rows = self._rows.setdefault(set_name, {})
                for prefix, row in _rows(new, set_name).items():
                    if prefix in rows:
                        self._put_row(owner, set_name, prefix, row, None)
                    else:
                        rows[prefix] = (owner, row)
                continue
            keys = self._owners.setdefault(set_name, {})
            for key, element in _elements(new, set_name).items():
                if key in keys:
                    self._put(owner, set_name, key, element, None)
                else:  # _single(), inline for the shared PRESENT
                    keys[key] = owner if element is PRESENT else _single(owner, element)

    def _note(self, delta: ElementDelta | None, set_name: str, key: str) -> None:
        if delta is not None and (set_name, key) not in delta.before:
            delta.before[(set_name, key)] = self.effective(set_name, key)

    def _drop(self, owner: Owner, set_name: str, key: str, delta: ElementDelta | None) -> None:
        self._note(delta, set_name, key)
        keys = self._owners[set_name]
        held = keys[key]
        if not isinstance(held, dict):
            del keys[key]
        else:
            del held[owner]
            if len(held) == 1:
                keys[key] = _single(*next(iter(held.items())))
        if delta is not None:
            delta.after[(set_name, key)] = self.effective(set_name, key)

    def _put(self, owner: Owner, set_name: str, key: str, element: Element, delta: ElementDelta | None) -> None:
        self._note(delta, set_name, key)
        keys = self._owners.setdefault(set_name, {})
        held = keys.get(key)
        if isinstance(held, dict):
            held[owner] = element
        elif held is None or _owner(held) == owner:
            keys[key] = _single(owner, element)
        else:
            keys[key] = {_owner(held): self._winner(held), owner: element}
        if delta is not None:
            delta.after[(set_name, key)] = self.effective(set_name, key)

    def _put_row(self, owner: Owner, set_name: str, prefix: str, row: Row | None,
                 delta: ElementDelta | None) -> None:
        """Make `row` what `owner` holds under `prefix` (None: nothing), recording in `delta`
        the effective element at every index whose endpoint changed."""
        rows = self._rows.setdefault(set_name, {})
        held = rows.get(prefix)
        before = [] if held is None or delta is None else self._targets(held)
        if isinstance(held, dict):
            if row is None:
                held.pop(owner, None)
                if len(held) == 1:
                    rows[prefix] = next(iter(held.items()))
            else:
                held[owner] = row
        elif held is None or held[0] == owner:
            if row is None:
                rows.pop(prefix, None)
            else:
                rows[prefix] = (owner, row)
        elif row is not None:
            rows[prefix] = {held[0]: held[1], owner: row}
        if delta is None:
            return
        now = rows.get(prefix)
        after = [] if now is None else self._targets(now)
        for index in range(max(len(before), len(after))):
            old = before[index] if index < len(before) else None
            new = after[index] if index < len(after) else None
            if old == new:  # one endpoint changed in a row of 1,000: one element recorded, not 1,000
                continue
            key = (set_name, f"{prefix} . {index}")
            if key not in delta.before:
                delta.before[key] = None if old is None else endpoint_element(old)
            delta.after[key] = None if new is None else endpoint_element(new)

    def _targets(self, held: HeldRow) -> list[Target | None]:
        return [self._target_at(held, i) for i in range(self._width(held))]


class EndpointRows:
    """An indexed set's elements: iterated, its (key, element) pairs, made one by one;
    rows(), each key prefix with its endpoints, which the netlink load encodes without
    making those (batch.endpoint_rows_encoder: 5x faster at 100,000 endpoints)."""

    __slots__ = ("_set_name", "_table")

    def __init__(self, table: ElementTable, set_name: str) -> None:
        self._table = table
        self._set_name = set_name

    def __iter__(self) -> Iterator[tuple[str, Element]]:
        for prefix, targets in self.rows():
            for index, target in enumerate(targets):
                yield f"{prefix} . {index}", endpoint_element(target)

    def rows(self) -> Iterator[tuple[str, Sequence[Target]]]:
        return self._table.rows(self._set_name)


def _rows(contribution: Contribution, set_name: str) -> dict[str, Row]:
    return contribution.get(set_name, {})  # type: ignore[return-value]  # an indexed set's: rows


def _elements(contribution: Contribution, set_name: str) -> dict[str, Element]:
    return contribution.get(set_name, {})  # type: ignore[return-value]  # a plain set's: elements


def _single(owner: Owner, element: Element) -> Owner | tuple[Owner, Element]:
    # `is` first: nearly every plain element is the shared PRESENT (a dataclass's == is Python)
    return owner if element is PRESENT or element == PRESENT else (owner, element)


def _owner(held: Owner | tuple[Owner, Element]) -> Owner:
    return held if isinstance(held, str) else held[0]
