"""The element table after any sequence of owners replacing what they contribute: each
element is the smallest owner's among those contributing it (plain sets' elements held as
a bare owner, maps' with their value, shared ones by owner), and the indexed sets
(endpoint maps, held as one row per frontend and owner) behave exactly as one entry per
element would: the same elements, counts and recorded changes."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given
from hypothesis import strategies as st

from kproxy.backends.nft.elements import ElementDelta, ElementTable
from kproxy.backends.nft.objects import Element
from kproxy.backends.nft.render import PRESENT, Contribution, endpoint_element
from kproxy.plan import Target

INDEXED = ("endpoints-2", "nodeport-endpoints-3")
OWNERS = ("", "default/a:http", "default/b:http", "other/a:dns")
elements = st.sampled_from([Element("10.0.0.1 . 80"), Element("10.0.0.2 . 80"), Element("10.0.0.3 . 81"),
                            PRESENT, Element(comment="default/a:http ClusterIP")])


# endpoints as the plan has them: the last two differ only where the element does not show
targets = st.sampled_from([Target(ip_address("10.0.0.1"), 80), Target(ip_address("fd00::2"), 80),
                           Target(ip_address("10.0.0.3"), 81, "node1", True), Target(ip_address("10.0.0.3"), 81)])


@st.composite
def contributions(draw: st.DrawFn) -> Contribution | None:
    """As render gives them: an endpoint map's elements as rows, by frontend key."""
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    out: Contribution = {}
    for name in INDEXED:
        prefixes = draw(st.lists(st.sampled_from(["10.96.0.1 . tcp . 80", "tcp . 30080"]), unique=True))
        if prefixes:
            out[name] = {prefix: tuple(draw(st.lists(targets, min_size=1, max_size=4))) for prefix in prefixes}
    plain = draw(st.dictionaries(st.sampled_from(["10.96.0.1", "10.96.0.2"]), elements, max_size=2))
    if plain:
        out["cluster-ips"] = plain
    return out


def per_element(contribution: Contribution | None) -> Contribution | None:
    """The same contribution with one entry per element: "<frontend> . <index>"."""
    if contribution is None:
        return None
    return {name: ({f"{prefix} . {i}": endpoint_element(t) for prefix, row in elements.items()
                    for i, t in enumerate(row)} if name in INDEXED else elements)
            for name, elements in contribution.items()}


def smallest_owners(held: dict[str, Contribution | None]) -> dict[str, dict[str, Element]]:
    """What the table must hold: per set and key, the element of the smallest owner."""
    out: dict[str, dict[str, Element]] = {}
    for owner in sorted(held, reverse=True):  # smaller owners overwrite larger ones
        for name, elements in (per_element(held[owner]) or {}).items():
            out.setdefault(name, {}).update(elements)  # type: ignore[arg-type]
    return {name: elements for name, elements in out.items() if elements}


def snapshot(table: ElementTable) -> dict[str, object]:
    names = sorted(table.set_names())
    return {"names": names, **{n: (table.count(n), sorted(table.elements(n), key=str)) for n in names}}


@given(st.lists(st.tuples(st.sampled_from(OWNERS), contributions(), st.booleans()), max_size=12))
def test_indexed_sets_equal_one_entry_per_element(steps: list[tuple[str, Contribution | None, bool]]) -> None:
    rows, entries = ElementTable(lambda name: name in INDEXED), ElementTable()
    held: dict[str, Contribution | None] = {}
    for owner, new, recorded in steps:
        old = held.get(owner)
        deltas = (ElementDelta(), ElementDelta()) if recorded else (None, None)
        rows.replace(owner, old, new, deltas[0])
        entries.replace(owner, per_element(old), per_element(new), deltas[1])
        held[owner] = new
        assert snapshot(rows) == snapshot(entries)
        assert {n: dict(entries.elements(n)) for n in entries.set_names()} == smallest_owners(held)
        if recorded:
            assert sorted(deltas[0].changes(), key=str) == sorted(deltas[1].changes(), key=str)
        for name in INDEXED:
            for key, _ in entries.elements(name):
                assert rows.effective(name, key) == entries.effective(name, key)
            assert rows.effective(name, "10.96.0.1 . tcp . 80 . 9") is None


def test_one_endpoint_changed_in_a_long_row_records_one_element() -> None:
    table = ElementTable(lambda name: name in INDEXED)
    row = tuple(Target(ip_address(f"10.1.{i // 250}.{i % 250}"), 80) for i in range(1000))
    table.replace("default/a:http", None, {"endpoints-2": {"10.96.0.1 . tcp . 80": row}})
    moved = (*row[:500], Target(ip_address("10.9.9.9"), 80), *row[501:])
    delta = ElementDelta()
    table.replace("default/a:http", {"endpoints-2": {"10.96.0.1 . tcp . 80": row}},
                  {"endpoints-2": {"10.96.0.1 . tcp . 80": moved}}, delta)
    assert delta.after == {("endpoints-2", "10.96.0.1 . tcp . 80 . 500"): Element("10.9.9.9 . 80")}
    assert delta.before == {("endpoints-2", "10.96.0.1 . tcp . 80 . 500"): Element("10.1.2.0 . 80")}
