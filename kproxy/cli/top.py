"""`kproxy top`: `dump --stats --rate`, refreshed until Ctrl-C.

On a terminal it is one full-screen view in the alternate screen: each frame moves the
cursor home and overwrites the previous one line by line, clearing only what is left of
each line and below the last, so nothing flickers; the terminal is given back as it was
on exit. Not on a terminal, each refresh is printed as plain lines after a time stamp.

Ctrl-C sets a flag instead of raising KeyboardInterrupt: raised inside pyroute2's event
loop, during a conntrack read, the exception was swallowed and top went on (about one
press in ten). The current refresh ends, its wait cut short, and top leaves.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable

from kproxy.backends.stats import format_stats
from kproxy.backends.view import NOTHING_PROGRAMMED
from kproxy.cli.dump import programmed_view, read_stats

ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, cursor hidden
LEAVE = "\x1b[?25h\x1b[?1049l"
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def frame(text: str, columns: int, rows: int) -> str:
    """One screen: every line cut to the width and cleared to its end, the rest below cleared."""
    lines = text.rstrip("\n").split("\n")[:rows]
    return HOME + "\n".join(line[:columns] + CLEAR_LINE for line in lines) + CLEAR_BELOW


def snapshot(args: argparse.Namespace, wait: Callable[[float], object]) -> str:
    view = programmed_view(args.proxy_mode)
    if not view.present:
        wait(args.interval)
        return NOTHING_PROGRAMMED
    return format_stats(read_stats(view, args.interval, wait))


def top(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    count = 0
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    if tty:
        sys.stdout.write(ENTER)
    try:
        while not stop.is_set() and (not args.iterations or count < args.iterations):
            body = snapshot(args, stop.wait)  # takes --interval: the window of the rates
            if stop.is_set():
                break
            count += 1
            title = f"kproxy top  {time.strftime('%H:%M:%S')}  every {args.interval:g}s  (Ctrl-C to quit)"
            if tty:
                size = shutil.get_terminal_size()
                sys.stdout.write(frame(f"{title}\n\n{body}", size.columns, size.lines))
            else:
                sys.stdout.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')}\n{body}")
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
        if tty:
            sys.stdout.write(LEAVE)
            sys.stdout.flush()
    return 0
