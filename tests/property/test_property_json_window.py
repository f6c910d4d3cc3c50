"""kproxy.sources.json_window reads any JSON document as json.loads does, however the file
is cut into windows, and refuses what json.loads refuses."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kproxy.sources import json_window
from tests.property.strategies import examples

scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)
documents = values | st.fixed_dictionaries({"kind": st.just("List"), "items": st.lists(values, max_size=6)},
                                           optional={"metadata": values})


def tagged(obj: dict[str, Any]) -> Any:
    return ("hooked", sorted(obj.items(), key=repr))  # the hook's result stands for the object


@examples(300)
@given(documents, st.integers(1, 40), st.sampled_from(["", " ", "\n  "]), st.booleans())
def test_a_document_reads_as_json_loads_reads_it(doc, chunk, space, hook):
    text = json.dumps(doc, indent=1 if space else None).replace("\n", "\n" + space) + space
    object_hook = tagged if hook else None
    assert json_window.load(io.StringIO(space + text), object_hook, chunk) == json.loads(text, object_hook=object_hook)


@pytest.mark.parametrize("text", ['{"items": [1, 2', '{"items": [1 2]}', '[1, 2] 3', '{"a" 1}', '{1: 2}', "",
                                  '{"items": [1,]}', '[{"a": 1}}', '{"n": 12', "tru"])
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_what_json_loads_refuses_is_refused(text, chunk):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        json_window.load(io.StringIO(text), None, chunk)


def test_a_lists_items_are_handed_over_while_the_file_is_still_being_read():
    items = [{"kind": "Service", "metadata": {"name": f"s{i}"}, "spec": {"pad": "x" * 100}} for i in range(200)]
    fp = io.StringIO(json.dumps({"kind": "List", "items": items}))
    read_at = []

    def hook(obj: dict[str, Any]) -> Any:
        if obj.get("kind") == "Service":
            read_at.append(fp.tell())
        return obj

    json_window.load(fp, hook, chunk=1024)
    assert len(read_at) == 200
    # the first item was parsed after about one window of a 30 KB file, not after all of it
    assert read_at[0] <= 3 * 1024 < read_at[-1]
