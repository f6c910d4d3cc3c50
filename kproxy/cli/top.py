"""`kproxy top`: `dump --stats --rate`, refreshed until Ctrl-C.

On a terminal it is one full-screen view in the alternate screen: each frame moves the
cursor home and overwrites the previous one line by line, clearing only what is left of
each line and below the last, so nothing flickers; the terminal is given back as it was
on exit. Not on a terminal, each refresh is printed as plain lines after a time stamp.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

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


def snapshot(args: argparse.Namespace) -> str:
    view = programmed_view(args.proxy_mode)
    if not view.present:
        time.sleep(args.interval)
        return NOTHING_PROGRAMMED
    return format_stats(read_stats(view, args.interval))


def top(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    count = 0
    if tty:
        sys.stdout.write(ENTER)
    try:
        while not args.iterations or count < args.iterations:
            body = snapshot(args)  # takes --interval: the window of the rates
            count += 1
            title = f"kproxy top  {time.strftime('%H:%M:%S')}  every {args.interval:g}s  (Ctrl-C to quit)"
            if tty:
                size = shutil.get_terminal_size()
                sys.stdout.write(frame(f"{title}\n\n{body}", size.columns, size.lines))
            else:
                sys.stdout.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')}\n{body}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            sys.stdout.write(LEAVE)
            sys.stdout.flush()
    return 0
