"""json.load for a big manifest file without the whole file in memory at once.

The top level (an object or an array) is read here; each value in it is decoded by the
json module itself (`raw_decode`), from a window of the file that moves on as values are
taken. The items of a 17 MiB `List` then pass one at a time: json.loads would hold the
file's bytes and its decoded text (34 MB) while every object is parsed. Any error is a
ValueError (JSONDecodeError, UnicodeDecodeError) whose position is the window's: callers
that show it read the file again with json.loads for the real one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

CHUNK = 1 << 20  # characters read at a time
WHITESPACE = " \t\n\r"
NUMBER_GOES_ON = ("", *"0123456789+-.eE")  # what may follow a number cut at the window's end


class _Window:
    def __init__(self, fp: TextIO, hook: Callable[[dict[str, Any]], Any] | None, chunk: int) -> None:
        self._fp = fp
        self._chunk = chunk
        self._decoder = json.JSONDecoder(object_hook=hook)
        self.text = ""
        self.at = 0
        self.eof = False

    def _more(self) -> bool:
        """Read on (dropping what was taken); False at the end of the file."""
        if self.eof:
            return False
        data = self._fp.read(self._chunk)
        self.eof = not data
        self.text = self.text[self.at:] + data
        self.at = 0
        return bool(data)

    def peek(self) -> str:
        """The next character after whitespace ('' at the end of the file)."""
        while True:
            while self.at < len(self.text) and self.text[self.at] in WHITESPACE:
                self.at += 1
            if self.at < len(self.text) or not self._more():
                return self.text[self.at:self.at + 1]

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise json.JSONDecodeError(f"Expecting {char!r}", self.text, self.at)
        self.at += 1

    def value(self) -> Any:
        """One value. A value that ends at the window's end, or before what could still be
        part of a number, may go on in the file ("0." of "0.5" decodes as 0): it is decoded
        again with more of the file."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self.text, self.at)
            except json.JSONDecodeError:
                if self._more():
                    continue
                raise
            if self.text[end:end + 1] in NUMBER_GOES_ON and self._more():
                continue
            self.at = end
            return value


def load(fp: TextIO, hook: Callable[[dict[str, Any]], Any] | None = None, chunk: int = CHUNK) -> Any:
    """What json.load(fp, object_hook=hook) returns, reading `chunk` characters at a time."""
    window = _Window(fp, hook, chunk)
    first = window.peek()
    if first == "[":
        found: Any = list(_array(window))
    elif first == "{":
        found = _object(window, hook)
    else:
        found = window.value()
    if window.peek():
        raise json.JSONDecodeError("Extra data", window.text, window.at)
    return found


def _array(window: _Window) -> Iterator[Any]:
    window.take("[")
    if window.peek() == "]":
        window.at += 1
        return
    while True:
        yield window.value()
        if window.peek() == "]":
            window.at += 1
            return
        window.take(",")


def _object(window: _Window, hook: Callable[[dict[str, Any]], Any] | None) -> Any:
    window.take("{")
    found: dict[str, Any] = {}
    if window.peek() == "}":
        window.at += 1
    else:
        while True:
            key = window.value()
            if not isinstance(key, str):
                raise json.JSONDecodeError("Expecting property name", window.text, window.at)
            window.take(":")
            found[key] = list(_array(window)) if window.peek() == "[" else window.value()
            if window.peek() == "}":
                window.at += 1
                break
            window.take(",")
    return hook(found) if hook is not None else found
