"""Traffic client run inside a namespace: `ip netns exec NS python3 probe.py MODE ...`.

Modes (every socket operation has a timeout; every loop is bounded):
  tcp HOST PORT --count N --timeout T   N fresh connections; JSON list of results
  udp HOST PORT --count N --timeout T   N datagrams from fresh sockets; JSON list
  udp-hold HOST PORT --timeout T        one UDP socket: a datagram per stdin line, answers
                                        printed (after a first line READY)
  hold HOST PORT --timeout T            one connection: print the greeting, then send
                                        each stdin line and print the answer
  loop HOST PORT --timeout T --max-seconds S --stop-file F
                                        connect repeatedly until F exists (or S passes);
                                        JSON summary {"ok": n, "failures": [...]}
  udp-loop HOST PORT ...                the same with a datagram from a fresh socket each
                                        time (a new UDP flow)

A result is the server's answer ("pod1 10.244.1.2") or REFUSED, TIMEOUT, UNREACHABLE,
RESET, EMPTY, or ERROR:<text>; with the seconds it took.

HOST and --source may be IPv4 or IPv6 addresses; the socket family follows HOST.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time


def classify(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "TIMEOUT"
    if isinstance(exc, ConnectionRefusedError):
        return "REFUSED"
    if isinstance(exc, ConnectionResetError):
        return "RESET"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "UNREACHABLE"
    return f"ERROR:{exc!r}"


def family_of(host: str) -> int:
    """AF_INET6 for an IPv6 address (literal, possibly with a %zone), else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def read_line(sock: socket.socket) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        data = sock.recv(4096)
        if not data:
            break
        buf += data
    return buf.decode(errors="replace").strip()


def tcp_once(host: str, port: int, timeout: float, source: str | None = None,
             proto: int = socket.IPPROTO_TCP) -> dict:
    start = time.monotonic()
    try:
        with socket.socket(family_of(host), socket.SOCK_STREAM, proto) as s:
            s.settimeout(timeout)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            s.settimeout(timeout)
            answer = read_line(s) or "EMPTY"
    except Exception as exc:  # noqa: BLE001 - every failure is a result
        answer = classify(exc)
    return {"result": answer, "seconds": round(time.monotonic() - start, 3)}


def udp_once(host: str, port: int, timeout: float, source: str | None = None) -> dict:
    start = time.monotonic()
    try:
        with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            s.send(b"hello")
            answer = s.recv(4096).decode(errors="replace").strip() or "EMPTY"
    except Exception as exc:  # noqa: BLE001
        answer = classify(exc)
    return {"result": answer, "seconds": round(time.monotonic() - start, 3)}


def hold(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout) as s:  # either family
        s.settimeout(timeout)
        print(read_line(s), flush=True)
        for line in sys.stdin:
            try:
                s.sendall(line.encode())
                print(read_line(s) or "EMPTY", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(classify(exc), flush=True)


def udp_hold(host: str, port: int, timeout: float) -> None:
    """One UDP socket (one source port, so one conntrack entry) for every stdin line."""
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        print("READY", flush=True)
        for _line in sys.stdin:
            try:
                s.send(b"hello")
                print(s.recv(4096).decode(errors="replace").strip() or "EMPTY", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(classify(exc), flush=True)


def loop(host: str, port: int, timeout: float, max_seconds: float, stop_file: str, once=tcp_once) -> None:
    ok, failures = 0, []
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        r = once(host, port, timeout)
        if r["result"].split(" ")[0] in ("REFUSED", "TIMEOUT", "RESET", "EMPTY", "UNREACHABLE") or \
                r["result"].startswith("ERROR"):
            failures.append(r)
        else:
            ok += 1
        time.sleep(0.02)
    print(json.dumps({"ok": ok, "failures": failures}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["tcp", "udp", "sctp", "hold", "udp-hold", "loop", "udp-loop"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=60)
    ap.add_argument("--stop-file", default="/nonexistent")
    ap.add_argument("--source", help="local address to send from")
    args = ap.parse_args()
    if args.mode in ("tcp", "udp", "sctp"):
        once = {"tcp": tcp_once, "udp": udp_once,
                "sctp": lambda *a: tcp_once(*a, proto=socket.IPPROTO_SCTP)}[args.mode]
        print(json.dumps([once(args.host, args.port, args.timeout, args.source) for _ in range(min(args.count, 500))]))
    elif args.mode == "hold":
        hold(args.host, args.port, args.timeout)
    elif args.mode == "udp-hold":
        udp_hold(args.host, args.port, args.timeout)
    else:
        loop(args.host, args.port, args.timeout, min(args.max_seconds, 120), args.stop_file,
             udp_once if args.mode == "udp-loop" else tcp_once)


if __name__ == "__main__":
    main()
