"""`kproxy top` and Ctrl-C: the press sets a flag, so whatever the refresh is doing (a
conntrack read inside pyroute2's event loop, which swallowed a KeyboardInterrupt) runs to
its end, the wait for the rates' window is cut short, and top returns 0 without drawing
again. The real terminal and a real Ctrl-C are in tests/netns/test_netns_stats.py."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import time
from typing import Any

import pytest

top_module = importlib.import_module("kproxy.cli.top")  # kproxy.cli's `top` is the function


def test_ctrl_c_during_a_refresh_ends_top_after_it(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    finished: list[str] = []
    waited: list[float] = []

    def snapshot(args: argparse.Namespace, wait: Any = time.sleep) -> str:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of reading
        time.sleep(0.05)  # the read goes on: the handler runs here and raises nothing
        finished.append("read")
        started = time.monotonic()
        wait(args.interval)  # the rates' window: cut short
        waited.append(time.monotonic() - started)
        return "stats\n"

    monkeypatch.setattr(top_module, "snapshot", snapshot)
    before = signal.getsignal(signal.SIGINT)
    args = argparse.Namespace(interval=30.0, iterations=0, proxy_mode="auto")
    assert top_module.top(args) == 0
    assert finished == ["read"] and waited[0] < 5
    assert capsys.readouterr().out == ""  # nothing drawn after the press
    assert signal.getsignal(signal.SIGINT) is before
