"""Manifests: file formats, folders, errors, the fast YAML path and the watch loop."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from kproxy.model import ServiceName
from kproxy.sources.manifests import ManifestError, ManifestSource, fast_load_all, load_manifests
from kproxy.tracker import ParsedList, Tracker
from tests.builders import endpoint_slice, service


def dump_yaml(*docs: object) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def names(objects: list[dict]) -> list[tuple[str, str]]:
    return [(o["kind"], o["metadata"]["name"]) for o in objects]


def test_kubectl_list_is_flattened_and_other_kinds_ignored(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            service("a"),
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
            endpoint_slice("a", ["10.1.0.1"]),
        ],
        "metadata": {"resourceVersion": ""},
    }
    f = tmp_path / "all.yaml"
    f.write_text(dump_yaml(doc))
    assert names(load_manifests(f)) == [("Service", "a"), ("EndpointSlice", "a-abc12")]


def test_api_list_body_items_get_their_kind(tmp_path: Path) -> None:
    item = service("a")
    del item["kind"]
    f = tmp_path / "svc.json"
    f.write_text(json.dumps({"kind": "ServiceList", "apiVersion": "v1", "items": [item]}))
    assert names(load_manifests(f)) == [("Service", "a")]


def test_multi_document_yaml_with_empty_documents(tmp_path: Path) -> None:
    f = tmp_path / "m.yml"
    f.write_text("---\n" + dump_yaml(service("a"), None, endpoint_slice("a", ["10.1.0.1"]), service("b")))
    assert names(load_manifests(f)) == [("Service", "a"), ("EndpointSlice", "a-abc12"), ("Service", "b")]


def test_json_object_and_array(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps(service("a")))
    (tmp_path / "many.json").write_text(json.dumps([service("b"), endpoint_slice("b", ["10.1.0.2"])]))
    assert names(load_manifests(tmp_path / "one.json")) == [("Service", "a")]
    assert names(load_manifests(tmp_path / "many.json")) == [("Service", "b"), ("EndpointSlice", "b-abc12")]


def test_folder_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(dump_yaml(service("b")))
    (tmp_path / "a.json").write_text(json.dumps(service("a")))
    (tmp_path / "c.yml").write_text(dump_yaml(service("c")))
    (tmp_path / "notes.txt").write_text("not: [yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text(dump_yaml(service("d")))
    assert names(load_manifests(tmp_path)) == [("Service", "a"), ("Service", "b"), ("Service", "c")]


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("bad.yaml", "a: [1, 2\nb: c\n", "cannot parse"),
        ("bad.json", '{"kind": "Service",', "cannot parse"),
        ("scalar.yaml", "just a string\n", "not an object"),
        ("binary.yaml", b"\xff\xfe\x00kind", "cannot parse"),
    ],
)
def test_bad_file_error_names_file_in_one_line(tmp_path: Path, filename: str, content, reason: str) -> None:
    f = tmp_path / filename
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError) as info:
        load_manifests(f)
    message = str(info.value)
    assert message.startswith(f"{f}: {reason}")
    assert "\n" not in message


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifests(tmp_path / "nope.yaml")
    d = tmp_path / "dir.yaml"
    d.mkdir()
    (d / "x.yaml").mkdir()  # a folder named like a manifest is not a file: skipped
    assert load_manifests(d) == []


def test_fast_yaml_matches_pyyaml() -> None:
    text = (
        "a: 1\nb: yes\nc: ~\nd: '1'\ne: 1.5\nf: 0x10\ng: 2001-01-01\nh: \"x\"\n"
        "i:\n- 1\n- [2, {x: null}]\nj: |\n  two\n  lines\nk: ''\nl:\n---\n---\nz: !!str 5\n"
        "---\nanchor: &x {q: 1}\nalias: *x\n---\n<<: {m: 1}\n"
    )
    assert fast_load_all(text) == list(yaml.load_all(text, Loader=yaml.SafeLoader))


def test_large_manifest_loads_fast(tmp_path: Path) -> None:
    """2,000 Services + 2,000 slices of 10 endpoints: a fifth of the 10k target."""
    items = []
    for i in range(2000):
        items.append(service(f"s{i}", cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}"))
        items.append(endpoint_slice(f"s{i}", [f"10.{j + 1}.{i // 250}.{i % 250 + 1}" for j in range(10)]))
    f = tmp_path / "big.yaml"
    f.write_text(yaml.dump({"kind": "List", "apiVersion": "v1", "items": items}, Dumper=yaml.CSafeDumper))
    start = time.perf_counter()
    objects = load_manifests(f)
    elapsed = time.perf_counter() - start
    assert len(objects) == 4000
    assert objects[1]["endpoints"][9]["addresses"] == ["10.10.0.1"]
    assert elapsed < 2.0, f"{elapsed:.2f}s"


def write(path: Path, *docs: object) -> None:
    """Write and bump mtime so the change is seen even within one timestamp tick."""
    path.write_text(dump_yaml(*docs))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


class Changes:
    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self) -> None:
        self.event.set()


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_load_once_feeds_tracker(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    write(f, service("a"), endpoint_slice("a", ["10.1.0.1"]), service("b"))
    tracker = Tracker(lambda: None)
    ManifestSource(f, tracker).load_once()
    state = tracker.snapshot()
    assert sorted(state.services) == [ServiceName("default", "a"), ServiceName("default", "b")]
    assert list(state.slices) == [("default", "a-abc12")]


def test_load_once_raises_on_bad_file(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("a: [")
    with pytest.raises(ManifestError):
        ManifestSource(f, Tracker(lambda: None)).load_once()


def test_watch_reloads_on_change_and_keeps_state_on_bad_reload(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    write(f, service("a"), endpoint_slice("a", ["10.1.0.1"]))
    tracker = Tracker(lambda: None)
    source = ManifestSource(f, tracker)
    source.load_once()
    stop = threading.Event()
    with capture_logs() as logs:
        thread = threading.Thread(target=source.watch, args=(stop, 0.02), daemon=True)
        thread.start()
        try:
            write(f, service("b"))
            assert wait_until(lambda: list(tracker.snapshot().services) == [ServiceName("default", "b")])
            assert tracker.snapshot().slices == {}

            f.write_text("a: [\n")  # broken: previous state stays, one error line
            assert wait_until(lambda: any(e["event"] == "manifests reload failed" for e in logs))
            time.sleep(0.1)  # several more polls: still one error line
            assert list(tracker.snapshot().services) == [ServiceName("default", "b")]

            write(f, service("c"))
            assert wait_until(lambda: list(tracker.snapshot().services) == [ServiceName("default", "c")])
        finally:
            stop.set()
            thread.join(timeout=2)
    assert not thread.is_alive()
    errors = [e for e in logs if e["event"] == "manifests reload failed"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error" and str(f) in errors[0]["error"]


def test_watch_folder_sees_new_file(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", service("a"))
    tracker = Tracker(lambda: None)
    source = ManifestSource(tmp_path, tracker)
    source.load_once()
    stop = threading.Event()
    thread = threading.Thread(target=source.watch, args=(stop, 0.02), daemon=True)
    thread.start()
    try:
        write(tmp_path / "b.yaml", service("b"))
        assert wait_until(lambda: len(tracker.snapshot().services) == 2)
        (tmp_path / "a.yaml").unlink()
        assert wait_until(lambda: list(tracker.snapshot().services) == [ServiceName("default", "b")])
    finally:
        stop.set()
        thread.join(timeout=2)
    assert not thread.is_alive()


def test_a_reload_parses_only_the_files_that_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kproxy.sources.manifests as manifests

    (tmp_path / "a.yaml").write_text(dump_yaml(service("a"), endpoint_slice("a", ["10.1.0.1"])))
    (tmp_path / "b.yaml").write_text(dump_yaml(service("b"), endpoint_slice("b", ["10.1.0.2"])))
    tracker = Tracker()
    source = ManifestSource(tmp_path, tracker)
    source.load_once()
    before = tracker.snapshot()
    read: list[str] = []
    real = manifests.parse_file
    monkeypatch.setattr(manifests, "parse_file", lambda path, new: read.append(path.name) or real(path, new))
    (tmp_path / "b.yaml").write_text(dump_yaml(service("b"), endpoint_slice("b", ["10.1.0.3"])))
    source.load_once()
    after = tracker.snapshot()
    assert read == ["b.yaml"]
    a = ServiceName("default", "a")
    assert after.services[a] is before.services[a]  # reused, not parsed again
    (b_slice,) = after.slices_by_service[ServiceName("default", "b")]
    assert [str(e.ip) for e in b_slice.endpoints] == ["10.1.0.3"]
    (tmp_path / "a.yaml").unlink()  # a file removed takes its objects with it
    source.load_once()
    assert set(tracker.snapshot().services) == {ServiceName("default", "b")}


@pytest.mark.parametrize("form", ["json-list", "yaml-list", "yaml-docs", "yaml-anchors", "service-list"])
def test_objects_are_parsed_while_the_file_is_read_in_every_form(tmp_path: Path, form: str) -> None:
    from kproxy.sources.manifests import parse_file

    objs = [service("a"), endpoint_slice("a", ["10.1.0.1"]), service("b")]
    if form == "json-list":
        f = tmp_path / "m.json"
        f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    elif form == "yaml-list":
        f = tmp_path / "m.yaml"
        f.write_text(dump_yaml({"apiVersion": "v1", "kind": "List", "items": objs}))
    elif form == "yaml-docs":
        f = tmp_path / "m.yaml"
        f.write_text(dump_yaml(*objs))
    elif form == "yaml-anchors":  # PyYAML's loader: the fast path leaves anchors to it
        f = tmp_path / "m.yaml"
        f.write_text(dump_yaml(*objs) + "---\nx: &anchor {kind: Pod}\ny: *anchor\n")
    else:  # an API list body: items carry no kind
        f = tmp_path / "m.json"
        items = [{k: v for k, v in o.items() if k != "kind"} for o in objs if o["kind"] == "Service"]
        f.write_text(json.dumps({"apiVersion": "v1", "kind": "ServiceList", "items": items}))
    tracker = Tracker()
    parsed, skipped = parse_file(f, tracker.parsed_list)
    tracker.replace_parsed(parsed)
    state = tracker.snapshot()
    assert skipped == 0
    assert sorted(state.services) == [ServiceName("default", "a"), ServiceName("default", "b")]
    assert list(state.slices) == ([] if form == "service-list" else [("default", "a-abc12")])


def test_a_json_list_is_parsed_without_the_whole_file_in_memory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kproxy.sources import json_window
    from kproxy.sources.manifests import parse_file

    f = tmp_path / "m.json"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [service(f"s{i}") for i in range(12000)]}))
    windows: list[int] = []
    read_on = json_window._Window._more

    def more(self: Any) -> bool:
        found = read_on(self)
        windows.append(len(self.text))
        return found

    monkeypatch.setattr(json_window._Window, "_more", more)
    parsed, _ = parse_file(f, Tracker().parsed_list)
    assert len(parsed.stores["Service"]) == 12000
    assert max(windows) <= 2 * json_window.CHUNK < f.stat().st_size  # never the whole file at once


def test_json_the_window_reader_refuses_is_read_whole_from_the_start(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from kproxy.sources import json_window
    from kproxy.sources.manifests import parse_file

    unnamed = {"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": "not an object"}
    doc = {"apiVersion": "v1", "kind": "List", "items": [unnamed, service("a")]}
    utf16 = tmp_path / "utf16.json"  # json.loads reads UTF-16; the window reader reads UTF-8
    utf16.write_bytes(json.dumps(doc).encode("utf-16"))
    tracker = Tracker()
    parsed, _ = parse_file(utf16, tracker.parsed_list)
    assert list(parsed.stores["Service"]) == [ServiceName("default", "a")] and len(parsed.invalid) == 1

    def gives_up_midway(fp: Any, hook: Any = None, chunk: int = 0) -> Any:
        if hook is not None:
            hook(dict(unnamed))  # the hook has seen part of the file
        raise ValueError("given up")

    monkeypatch.setattr(json_window, "load", gives_up_midway)
    plain = tmp_path / "m.json"
    plain.write_text(json.dumps(doc))
    parsed, _ = parse_file(plain, tracker.parsed_list)
    assert list(parsed.stores["Service"]) == [ServiceName("default", "a")]
    assert len(parsed.invalid) == 1  # parsed again from the start: the broken object counted once


def test_unnamed_broken_objects_of_two_files_are_each_left_out(tmp_path: Path) -> None:
    unnamed = {"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": "not an object"}
    (tmp_path / "a.yaml").write_text(dump_yaml(unnamed, service("a")))
    (tmp_path / "b.yaml").write_text(dump_yaml(unnamed))
    tracker = Tracker()
    ManifestSource(tmp_path, tracker).load_once()
    assert list(tracker.snapshot().services) == [ServiceName("default", "a")]
    assert tracker.invalid_count() == 2  # one per file, not one overwriting the other


def test_files_are_parsed_with_the_cyclic_collector_paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "m.yaml"
    write(f, service("web"), endpoint_slice("web", ["10.1.0.1"]))
    collecting: list[bool] = []  # per object parsed (merging the files adds no objects)
    add = ParsedList.add

    def recording_add(self: ParsedList, kind: str, objects: Any) -> None:
        objects = list(objects)
        collecting.extend(gc.isenabled() for _ in objects)
        add(self, kind, objects)

    monkeypatch.setattr(ParsedList, "add", recording_add)
    tracker = Tracker(lambda: None)
    ManifestSource(f, tracker).load_once()
    assert len(tracker.snapshot().services) == 1
    assert collecting == [False, False] and gc.isenabled()
