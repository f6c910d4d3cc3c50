"""Send real packets from inside a namespace (via probe.py) and summarize what came back."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROBE = Path(__file__).resolve().parent / "probe.py"
FAILURES = ("REFUSED", "TIMEOUT", "UNREACHABLE", "RESET", "EMPTY")


@dataclass(frozen=True)
class Answer:
    """One attempt: who answered (pod name) and the source IP it saw, or a failure."""

    result: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.result not in FAILURES and not self.result.startswith("ERROR")

    @property
    def pod(self) -> str | None:
        return self.result.split()[0] if self.ok else None

    @property
    def source(self) -> str | None:
        parts = self.result.split()
        return parts[1] if self.ok and len(parts) > 1 else None


@dataclass(frozen=True)
class Results:
    answers: tuple[Answer, ...]

    @property
    def pods(self) -> Counter[str]:
        return Counter(a.pod for a in self.answers if a.ok)

    @property
    def sources(self) -> Counter[str]:
        return Counter(a.source for a in self.answers if a.ok)

    @property
    def failures(self) -> Counter[str]:
        return Counter(a.result for a in self.answers if not a.ok)

    def pairs(self) -> set[tuple[str, str]]:
        return {(a.pod, a.source) for a in self.answers if a.ok}

    def __str__(self) -> str:
        return f"pods={dict(self.pods)} sources={dict(self.sources)} failures={dict(self.failures)}"


def probe(ns: str, proto: str, host: str, port: int, *, count: int = 1, timeout: float = 1.0,
          source: str | None = None) -> Results:
    """`host` and `source` may be IPv4 or IPv6 (the same family); answers then carry the
    peer address in that family ("pod4 fd00:244:1::2")."""
    if source and (":" in source) != (":" in host):
        raise ValueError(f"source {source} and host {host} are of different IP families")
    cmd = ["ip", "netns", "exec", ns, sys.executable, str(PROBE), proto, host, str(port),
           "--count", str(count), "--timeout", str(timeout)]
    if source:
        cmd += ["--source", source]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=count * (timeout + 0.5) + 15)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed: {' '.join(cmd)}: {proc.stderr.strip()}")
    return Results(tuple(Answer(r["result"], r["seconds"]) for r in json.loads(proc.stdout)))


def tcp(ns: str, host: str, port: int, *, count: int = 1, timeout: float = 1.0,
        source: str | None = None) -> Results:
    return probe(ns, "tcp", host, port, count=count, timeout=timeout, source=source)


def udp(ns: str, host: str, port: int, *, count: int = 1, timeout: float = 1.0,
        source: str | None = None) -> Results:
    return probe(ns, "udp", host, port, count=count, timeout=timeout, source=source)


def wait_until(
    check: Callable[[], Results], accept: Callable[[Results], bool], *, seconds: float = 10, what: str = ""
) -> Results:
    """Poll `check` (bounded) until `accept` holds; raise with the last results otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        last = check()
        if accept(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {seconds}s: {what}; last: {last}")
        time.sleep(0.1)


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a client started in its own session, and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
    proc.wait(timeout=5)


class Holder:
    """A long-lived TCP connection from a namespace (probe.py hold)."""

    mode = "hold"

    def __init__(self, ns: str, host: str, port: int, timeout: float = 2.0) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(PROBE), self.mode, host, str(port),
             "--timeout", str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        self.timeout = timeout
        self.greeting = self._readline()

    def _readline(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout + 5)
        if not ready:
            raise AssertionError("no answer from the held connection")
        line = self.proc.stdout.readline().strip()
        if not line:
            why = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise AssertionError(f"held connection ended: {why}")
        return line

    def send(self, text: str) -> str:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._readline()

    def close(self) -> None:
        kill_group(self.proc)


class UdpSender(Holder):
    """One UDP socket in a namespace, kept open: `send()` sends a datagram and returns the
    answer ("pod2 10.244.1.2") or TIMEOUT / REFUSED."""

    mode = "udp-hold"

    def __init__(self, ns: str, host: str, port: int, timeout: float = 1.0) -> None:
        super().__init__(ns, host, port, timeout)
        assert self.greeting == "READY", self.greeting

    def send(self, text: str = "x") -> str:  # type: ignore[override]
        return super().send(text)


class Loop:
    """A client that keeps connecting to a Service until stopped (probe.py loop)."""

    def __init__(self, ns: str, host: str, port: int, stop_file: Path, max_seconds: float = 60,
                 mode: str = "loop") -> None:  # "udp-loop": a new UDP flow each time
        self.stop_file = stop_file
        stop_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(PROBE), mode, host, str(port),
             "--timeout", "1", "--max-seconds", str(max_seconds), "--stop-file", str(stop_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )

    def stop(self) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=10)
        if self.proc.returncode != 0:
            raise RuntimeError(f"loop client failed: {err}")
        return json.loads(out)

    def kill(self) -> None:
        kill_group(self.proc)
