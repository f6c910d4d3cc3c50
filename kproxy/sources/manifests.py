"""Manifests source: Services and EndpointSlices from a YAML/JSON file or a folder.

Accepts what `kubectl get svc,endpointslices -A -o yaml` prints (a `kind: List`), raw API
list bodies (`ServiceList`, items without kind), multi-document YAML and JSON. Used for
one-shot syncs, offline previews and the lab; `watch` reloads on change.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import structlog
import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from kproxy.runner import gc_keep, gc_paused
from kproxy.sources import json_window
from kproxy.tracker import SOURCE_KINDS, ParsedList, Tracker

log = structlog.get_logger(__name__)

# libyaml's C parser when available. Even with it, PyYAML's node composer and constructor
# run in Python and take ~20 s for 10k Services + 10k slices; `fast_load_all` builds the
# objects straight from the parser's events instead (~2 s).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SUFFIXES = (".yaml", ".yml", ".json")

Fingerprint = tuple[tuple[str, int, int], ...]


class ManifestError(Exception):
    """A manifest file that cannot be read or parsed; str() is one line naming the file."""


def manifest_files(path: str | os.PathLike[str]) -> list[Path]:
    """The file itself, or the folder's *.yaml/*.yml/*.json files (sorted, not recursive)."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
    if not p.exists():
        raise ManifestError(f"{p}: no such file or directory")
    return [p]


def load_manifests(path: str | os.PathLike[str], kinds: Collection[str] | None = SOURCE_KINDS,
                   skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The objects of these kinds (None: every kind) in `path`, in file then document order.
    A list item that is not an object is left out with a warning (and described in
    `skipped` when given); a document that is not one is a ManifestError."""
    objects: list[dict[str, Any]] = []
    left_out = [] if skipped is None else skipped
    for file in manifest_files(path):
        for doc in _documents(file):
            objects.extend(obj for obj in _flatten(doc, file, left_out) if kinds is None or obj.get("kind") in kinds)
    return objects


def _documents(file: Path, hook: Callable[[dict[str, Any]], Any] | None = None) -> list[Any]:
    """The documents of a file; `hook` sees every mapping as soon as it is complete and
    returns what stands for it (raises _Unsupported where the streaming paths cannot run it)."""
    try:
        if file.suffix == ".json":
            return [_json_document(file, hook)]
        text = file.read_bytes()
        return fast_load_all(text, hook)
    except OSError as exc:
        raise ManifestError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise ManifestError(f"{file}: cannot parse: {_one_line(exc)}") from None


def _json_document(file: Path, hook: Callable[[dict[str, Any]], Any] | None) -> Any:
    """A JSON file's document, read a window at a time (json_window: a List's items are
    parsed while the rest of the file is still unread). What that refuses, json.loads of the
    whole file reads (another encoding than UTF-8) or reports at its real place; with a hook
    that has seen part of the file, the caller starts again without one (_Unsupported)."""
    try:
        with file.open(encoding="utf-8-sig") as fp:
            return json_window.load(fp, hook)
    except ValueError:
        if hook is not None:
            raise _Unsupported("json") from None
        return json.loads(file.read_bytes())


class _Unsupported(Exception):
    """What a streaming read leaves to a whole-file one: YAML tags, anchors, aliases and
    merge keys (PyYAML's loader); JSON the window reader refuses (json.loads)."""


_scalar_lock = threading.Lock()
_scalar_cache: dict[str, Any] = {}
_scalar_resolver = yaml.SafeLoader("")
_STR_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")


def _plain_scalar(value: str) -> Any:
    """A plain (unquoted) scalar resolved exactly as SafeLoader does, cached: manifests
    repeat the same keys and values (name, port, TCP, true) hundreds of thousands of times."""
    try:
        return _scalar_cache[value]
    except KeyError:
        pass
    with _scalar_lock:
        tag = _scalar_resolver.resolve(yaml.ScalarNode, value, (True, False))
        if tag in _STR_TAGS:
            raise _Unsupported(tag)
        # The tag's constructor directly: construct_object would remember every node.
        construct = _scalar_resolver.yaml_constructors[tag]
        out = construct(_scalar_resolver, yaml.ScalarNode(tag, value))
        if len(_scalar_cache) < 200_000:
            _scalar_cache[value] = out  # only immutable values (str, int, bool, dates)
        return out


def fast_load_all(text: bytes | str, hook: Callable[[dict[str, Any]], Any] | None = None) -> list[Any]:
    """Same result as `list(yaml.load_all(text, Loader=CSafeLoader))`, several times faster.

    Falls back to PyYAML for anything but plain mappings, sequences and scalars (with a
    `hook`, raises _Unsupported instead: the hook has seen part of the file).
    """
    parser = _Loader(text)
    try:
        return _build(parser, hook)
    except _Unsupported:
        if hook is not None:
            raise
        return list(yaml.load_all(text, Loader=_Loader))
    finally:
        parser.dispose()


def _build(parser: Any, hook: Callable[[dict[str, Any]], Any] | None = None) -> list[Any]:
    docs: list[Any] = []
    stack: list[list[Any]] = []  # [container, pending mapping key or _NO_KEY]
    root: Any = None
    while True:
        event = parser.get_event()
        kind = type(event)
        if kind is ScalarEvent:
            if event.tag is not None or event.anchor is not None:
                raise _Unsupported("tag or anchor")
            # implicit[0]: plain scalar, resolved by content; otherwise quoted: a string.
            value: Any = _plain_scalar(event.value) if event.implicit[0] else event.value
        elif kind is MappingStartEvent or kind is SequenceStartEvent:
            if event.tag is not None or event.anchor is not None:
                raise _Unsupported("tag or anchor")
            stack.append([{} if kind is MappingStartEvent else [], _NO_KEY])
            continue
        elif kind is MappingEndEvent:
            value = stack.pop()[0]
            if hook is not None:
                value = hook(value)
        elif kind is SequenceEndEvent:
            value = stack.pop()[0]
        elif kind is DocumentStartEvent:
            root = None
            continue
        elif kind is DocumentEndEvent:
            docs.append(root)
            continue
        elif kind is StreamEndEvent:
            return docs
        elif kind is StreamStartEvent:
            continue
        else:
            raise _Unsupported(kind.__name__)  # AliasEvent
        if not stack:
            root = value
            continue
        top = stack[-1]
        container = top[0]
        if type(container) is list:
            container.append(value)
        elif top[1] is _NO_KEY:
            if type(value) is dict or type(value) is list:
                raise _Unsupported("complex key")
            top[1] = value
        else:
            container[top[1]] = value
            top[1] = _NO_KEY


_NO_KEY = object()


def _flatten(doc: Any, file: Path, skipped: list[str], where: str = "") -> Iterator[dict[str, Any]]:
    """Objects of one document: a `List`/`*List` is unpacked; empty documents are skipped."""
    if doc is None or doc is TAKEN:
        return
    if isinstance(doc, list):  # a bare JSON array of objects
        for i, item in enumerate(doc):
            yield from _item(item, file, skipped, f"{where}[{i}]")
        return
    if not isinstance(doc, dict):
        raise ManifestError(f"{file}: not an object: a document is {str(doc)[:60]!r}")
    kind = doc.get("kind")
    kind = kind if isinstance(kind, str) else ""  # another shape: not a kind kproxy reads
    if kind.endswith("List") and isinstance(doc.get("items"), list):
        # API list bodies (ServiceList) carry no kind on their items: restore it.
        item_kind = kind[: -len("List")] or None
        for i, item in enumerate(doc["items"]):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {**item, "kind": item_kind}
            yield from _item(item, file, skipped, f"{where}.items[{i}]")
        return
    yield doc


def _item(item: Any, file: Path, skipped: list[str], where: str) -> Iterator[dict[str, Any]]:
    if isinstance(item, dict | list) or item is None or item is TAKEN:
        yield from _flatten(item, file, skipped, where)
        return
    log.warning("skipping a list item that is not an object", file=str(file), item=where.lstrip("."),
                value=str(item)[:60])
    skipped.append(f"{file}: {where.lstrip('.')}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


TAKEN = object()  # stands in a document for an object parsed while the file was read


def parse_file(file: Path, new_list: Callable[[], ParsedList]) -> tuple[ParsedList, int]:
    """One file's Services, EndpointSlices, Nodes and ServiceCIDRs, parsed as the file is
    decoded: each object is parsed the moment its last field is read and its raw form
    dropped, so a 10k-Service file never sits in memory as raw objects (about 150 MB).
    Returns the parsed objects and how many list items were not objects."""
    parsed = new_list()

    def take(obj: dict[str, Any]) -> Any:
        kind = obj.get("kind")
        if kind in SOURCE_KINDS and "metadata" in obj and "apiVersion" in obj:
            parsed.add(kind, (obj,))
            return TAKEN
        return obj  # a part of an object, another kind, or an API list item without kind

    try:
        docs = _documents(file, take)
    except _Unsupported:  # anchors or tags, or JSON to read whole: without the hook
        parsed = new_list()
        docs = _documents(file)
    skipped: list[str] = []
    for doc in docs:
        for obj in _flatten(doc, file, skipped):
            kind = obj.get("kind")
            if kind in SOURCE_KINDS:
                parsed.add(kind, (obj,))
    return parsed, len(skipped)


class ManifestSource:
    """Feeds a Tracker from manifests; `watch` polls for changes and reloads.

    Each file's objects are kept parsed (never raw) with the file's (mtime, size): a
    reload reads and parses only the files that changed, and hands the tracker the same
    value objects for the rest, which it recognises by identity. In a folder with one
    file per object, or a few per file, a one-object change costs one small parse."""

    def __init__(self, path: str | os.PathLike[str], tracker: Tracker) -> None:
        self.path = Path(path)
        self._tracker = tracker
        self._fingerprint: Fingerprint | None = None
        self._files: dict[str, tuple[tuple[int, int], ParsedList, int]] = {}
        self.skipped = 0  # list items of the last load that were not objects

    def load_once(self) -> None:
        """Load what changed and replace the tracker's state. Raises ManifestError."""
        # Fingerprint before reading: a write racing the read is seen by the next poll.
        fingerprint = self.fingerprint()
        files: dict[str, tuple[tuple[int, int], ParsedList, int]] = {}
        with gc_paused():
            # no fingerprint: nothing there (manifest_files says why) or every stat failed
            for name, mtime, size in fingerprint or [(str(f), -1, -1) for f in manifest_files(self.path)]:
                cached = self._files.get(name)
                if cached is not None and cached[0] == (mtime, size) and mtime >= 0:
                    files[name] = cached
                    continue
                parsed, skipped = parse_file(Path(name), self._tracker.parsed_list)
                files[name] = ((mtime, size), parsed, skipped)
            # One transaction: a sync never sees the new Services with the old slices.
            merged = self._tracker.parsed_list()
            for kind in SOURCE_KINDS:
                merged.add(kind, ())  # every kind is replaced, also by nothing
            for _stamp, parsed, _skipped in files.values():
                merged.absorb(parsed)
            self._tracker.replace_parsed(merged)
            gc_keep()
        self._files = files
        self._fingerprint = fingerprint
        self.skipped = sum(f[2] for f in files.values())
        log.debug("manifests loaded", path=str(self.path), files=len(files))

    def fingerprint(self) -> Fingerprint:
        """(name, mtime_ns, size) of every manifest file; a change means reload."""
        try:
            files = manifest_files(self.path)
        except ManifestError:
            return ()
        out = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue  # vanished between listing and stat: the next poll sees it
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def watch(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Poll until `stop` is set. A failed reload logs one error and keeps the state.

        A change is loaded once it has been stable for one poll: an editor or `cp` that
        truncates then writes would otherwise be read as an empty file, deleting every
        Service for a moment.
        """
        seen = self._fingerprint
        while not stop.wait(interval):
            current = self.fingerprint()
            if current == self._fingerprint or current != seen:
                seen = current
                continue
            try:
                self.load_once()
            except ManifestError as exc:
                log.error("manifests reload failed", path=str(self.path), error=str(exc))
                self._fingerprint = current  # log once per change, not once per poll
