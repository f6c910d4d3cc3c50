"""The cyclic collector is off while a build runs (also when builds overlap in two
threads), back on after the last one, and left off if it was off before; after a full
sync, and only then, the survivors are frozen. What a list froze unexamined (gc_keep) is
collected at the next settle, reference cycles included."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from kproxy import runner
from kproxy.runner import gc_keep, gc_paused, gc_settle, gc_settling


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_paused_while_a_build_runs_and_back_on_after_the_last_of_overlapping_ones() -> None:
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def other_build() -> None:
        with gc_paused():
            inside.set()
            release.wait(5)

    with gc_paused():
        assert not gc.isenabled()
        thread = threading.Thread(target=other_build)
        thread.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other build still runs
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


@pytest.mark.parametrize(("full", "frozen"), [(True, True), (False, False)])
def test_settling_freezes_after_a_full_sync_only(full: bool, frozen: bool) -> None:
    gc.unfreeze()
    report = SimpleNamespace(full=full)
    assert gc_settling(lambda: report)() is report
    assert (gc.get_freeze_count() > 0) == frozen


class Node:
    other: Node | None = None


def test_what_a_list_froze_stays_out_of_collections_until_the_next_settle_collects_it() -> None:
    gc.unfreeze()
    runner._thaw = False
    a, b = Node(), Node()
    a.other, b.other = b, a  # garbage only a collection can find
    gone = weakref.ref(a)
    del a, b
    gc_keep()
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert gone() is not None  # frozen: the collector does not walk it
    gc_settle()
    assert gone() is None
    assert gc.get_freeze_count() > 0  # the survivors are frozen again
