"""What commands print on stdout (logs go to stderr), and what happens when no one reads it."""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


class ClosedPipeGuard:
    """An output stream whose reader may go away (`kproxy lab status | head`): the first
    write that finds the pipe closed points the descriptor at /dev/null, and the command
    goes on quietly, its remaining output dropped (no BrokenPipeError, no traceback, and a
    `lab up` is not abandoned half-built because `head` stopped reading)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.pipe_closed = False

    def write(self, text: str) -> int:
        if not self.pipe_closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop_output()
        return len(text)

    def flush(self) -> None:
        if not self.pipe_closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop_output()

    def _drop_output(self) -> None:
        self.pipe_closed = True
        try:
            # what the stream still buffers goes to /dev/null too, at exit included
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass  # a stream without a descriptor (tests): dropping our writes is enough

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)
