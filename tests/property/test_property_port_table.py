"""The planner's PortTable hands out PortPlans that share the unchanged bulk: each must
read as a dict changed the same way would (same plans, same order: a replaced plan keeps
its place, a new or re-added one goes last), and never change after it was handed out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kproxy.model import Protocol, ServiceName, ServicePortName
from kproxy.plan import PortPlans, PortTable, ServicePortPlan

NAMES = [ServicePortName(ServiceName("default", f"svc{i}"), "http") for i in range(4)]


def plan(name: ServicePortName, version: int) -> ServicePortPlan:
    return ServicePortPlan(name=name, protocol=Protocol.TCP, frontends=(), internal_targets=(),
                           external_targets=(), local_ready_endpoints=version)


class SmallTable(PortTable):
    COMPACT_AT = 2  # compact often, so the draws cross it both ways


steps = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(NAMES), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("snapshot"), st.just(NAMES[0]), st.just(0)),
), max_size=40)


@settings(max_examples=300)
@given(steps, st.booleans())
def test_snapshots_read_as_a_dict_and_never_change(ops: list[tuple[str, ServicePortName, int]], small: bool) -> None:
    table = SmallTable() if small else PortTable()
    model: dict[ServicePortName, ServicePortPlan] = {}
    taken: list[tuple[PortPlans, list[ServicePortPlan]]] = []
    for op, name, version in ops:
        if op == "set":
            table.set(plan(name, version))
            model[name] = plan(name, version)
        elif op == "delete":
            table.delete(name)
            model.pop(name, None)
        else:
            taken.append((table.snapshot(), list(model.values())))
        assert table.get(name) == model.get(name)
    taken.append((table.snapshot(), list(model.values())))
    for snapshot, expected in taken:
        assert list(snapshot) == expected and len(snapshot) == len(expected)
        assert snapshot == PortPlans(expected) and tuple(snapshot[:]) == tuple(expected)
        for name in NAMES:
            want = next((sp for sp in expected if sp.name == name), None)
            assert snapshot.get(name) == want and (name in snapshot) == (want is not None)
