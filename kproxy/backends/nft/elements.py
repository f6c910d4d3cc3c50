"""The elements kproxy has programmed, with who contributed each. Pure.

Several Service ports may contribute the same element (a pod backing two Services gives
one hairpin pair; two Services may claim one externalIP:port). An element stays while any
owner holds it; when owners disagree on its value the smallest owner wins, so the result
does not depend on the order changes arrive in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from kproxy.backends.nft.objects import Element
from kproxy.backends.nft.render import Contribution

Owner = str
Key = tuple[str, str]  # (set name, element key)


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
    # key -> (owner, element) while it has one owner, as nearly all do (a tuple is a
    # quarter of a dict's size at 200,000 elements); {owner: element} once shared
    def __init__(self) -> None:
        self._owners: dict[str, dict[str, tuple[Owner, Element] | dict[Owner, Element]]] = {}

    @staticmethod
    def _winner(held: tuple[Owner, Element] | dict[Owner, Element]) -> Element:
        if isinstance(held, tuple):
            return held[1]
        return held[min(held)]

    def effective(self, set_name: str, key: str) -> Element | None:
        held = self._owners.get(set_name, {}).get(key)
        return None if held is None else self._winner(held)

    def count(self, set_name: str) -> int:
        return len(self._owners.get(set_name, ()))

    def set_names(self) -> list[str]:
        return [name for name, keys in self._owners.items() if keys]

    def elements(self, set_name: str) -> Iterator[tuple[str, Element]]:
        for key, held in self._owners.get(set_name, {}).items():
            yield key, self._winner(held)

    def replace(self, owner: Owner, old: Contribution | None, new: Contribution | None,
                delta: ElementDelta | None = None) -> None:
        """Swap what `owner` contributes from `old` to `new`, recording changes in `delta`."""
        old = old or {}
        new = new or {}
        for set_name, elements in old.items():
            kept = new.get(set_name, {})
            for key, element in elements.items():
                if kept.get(key) != element:
                    self._drop(owner, set_name, key, delta)
        for set_name, elements in new.items():
            had = old.get(set_name, {})
            for key, element in elements.items():
                if had.get(key) != element:
                    self._put(owner, set_name, key, element, delta)

    def _note(self, delta: ElementDelta | None, set_name: str, key: str) -> None:
        if delta is not None and (set_name, key) not in delta.before:
            delta.before[(set_name, key)] = self.effective(set_name, key)

    def _drop(self, owner: Owner, set_name: str, key: str, delta: ElementDelta | None) -> None:
        self._note(delta, set_name, key)
        keys = self._owners[set_name]
        held = keys[key]
        if isinstance(held, tuple):
            del keys[key]
        else:
            del held[owner]
            if len(held) == 1:
                keys[key] = next(iter(held.items()))
        if delta is not None:
            delta.after[(set_name, key)] = self.effective(set_name, key)

    def _put(self, owner: Owner, set_name: str, key: str, element: Element, delta: ElementDelta | None) -> None:
        self._note(delta, set_name, key)
        keys = self._owners.setdefault(set_name, {})
        held = keys.get(key)
        if held is None or (isinstance(held, tuple) and held[0] == owner):
            keys[key] = (owner, element)
        elif isinstance(held, tuple):
            keys[key] = {held[0]: held[1], owner: element}
        else:
            held[owner] = element
        if delta is not None:
            delta.after[(set_name, key)] = self.effective(set_name, key)
