"""NetlinkIpvs's batched requests against a real kernel (the VM kernels' IPVS: this host's
kernel has no IP_VS), in a network namespace of the test's own, entered by this thread and
gone when the test leaves it: thousands of virtual and real servers in one apply(), read
back by kproxy's dumps and by ipvsadm, one weight changed, a refusal in the middle of a
batch, IPv6 and firewall-mark servers, and everything deleted again."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from kproxy_lab import kernel_has_ipvs

from kproxy.backends.ipvs.diff import (
    AddAddress,
    AddReal,
    AddVirtual,
    DelAddress,
    DelReal,
    DelVirtual,
    EditVirtual,
    Operation,
    SetWeight,
)
from kproxy.backends.ipvs.kernel import IpvsError, NetlinkIpvs
from kproxy.backends.ipvs.objects import DUMMY_LINK, ListedVirtual, RealKey, RealStats, VirtualKey
from kproxy.model import Protocol

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not kernel_has_ipvs(), reason="this kernel has no IP_VS (the VM matrix runs these)"),
]

CLONE_NEWNET = 0x40000000
SERVERS = 2000
REALS = 5


@pytest.fixture
def own_netns() -> Iterator[None]:
    """A fresh network namespace for this thread (and the processes it starts); the thread
    returns to its own afterwards and the new one goes with its last socket."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
    finally:
        os.close(home)


def vip(i: int) -> VirtualKey:
    return VirtualKey(ip=ip_address(f"10.96.{i // 250}.{i % 250 + 1}"), protocol=Protocol.TCP, port=80)


def real(i: int, j: int) -> RealKey:
    return RealKey(ip=ip_address(f"10.244.{i // 250}.{i % 250 + 1}"), port=8000 + j)


def ipvsadm_lines() -> list[str]:
    done = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True, timeout=300)
    return done.stdout.splitlines()


def test_thousands_of_servers_in_one_apply_read_back_changed_refused_and_deleted(own_netns: None) -> None:
    kernel = NetlinkIpvs(4)
    try:
        assert kernel.list_virtuals() == {} and kernel.addresses() == set()
        ops: list[Operation] = [AddAddress(ip=vip(i).ip) for i in range(SERVERS)]
        for i in range(SERVERS):
            ops.append(AddVirtual(key=vip(i), scheduler="rr", persistence=10800 if i % 7 == 0 else 0))
            ops += [AddReal(virtual=vip(i), real=real(i, j), weight=1) for j in range(REALS)]
        started = time.perf_counter()
        assert kernel.apply(ops) == len(ops)
        print(f"\napply of {len(ops)} operations: {time.perf_counter() - started:.2f} s")

        started = time.perf_counter()
        listed = kernel.list_virtuals()
        print(f"list_virtuals of {len(listed)}: {time.perf_counter() - started:.2f} s")
        assert listed == {vip(i): ListedVirtual(scheduler="rr", persistence=10800 if i % 7 == 0 else 0,
                                                reals={real(i, j): RealStats(weight=1) for j in range(REALS)})
                          for i in range(SERVERS)}
        assert kernel.addresses() == {vip(i).ip for i in range(SERVERS)}
        assert socket_index(DUMMY_LINK) > 0  # created in this namespace, by the apply
        # ipvsadm agrees: every real server masqueraded, weight 1
        lines = ipvsadm_lines()
        assert sum(line.split()[2:3] == ["Masq"] and line.split()[3] == "1" for line in lines) == SERVERS * REALS
        assert ["TCP", "10.96.0.1:80", "rr", "persistent", "10800"] in [line.split() for line in lines]

        # one changed weight is one request
        started = time.perf_counter()
        assert kernel.apply([SetWeight(virtual=vip(3), real=real(3, 2), weight=0)]) == 1
        print(f"one SetWeight: {(time.perf_counter() - started) * 1000:.1f} ms")
        assert kernel.list_reals(vip(3))[real(3, 2)] == RealStats(weight=0)

        # a refusal in the middle of a batch names that operation; the kernel went on with the
        # rest of the batch (IPVS has no transactions)
        extra = VirtualKey(ip=ip_address("10.96.200.1"), protocol=Protocol.UDP, port=53)
        middle: list[Operation] = [AddReal(virtual=vip(5), real=real(5, 9), weight=2),
                                   AddVirtual(key=vip(6), scheduler="rr", persistence=0),
                                   AddVirtual(key=extra, scheduler="rr", persistence=0)]
        with pytest.raises(IpvsError) as refused:
            kernel.apply(middle)
        assert str(refused.value) == "AddVirtual TCP 10.96.0.7:80 rr 0: File exists"
        assert kernel.list_reals(vip(5))[real(5, 9)] == RealStats(weight=2)
        assert extra in kernel.list_virtuals()
        with pytest.raises(IpvsError, match=r"^DelReal TCP 10.96.0.8:80 10.244.0.9:8009: No such file or directory$"):
            kernel.apply([DelReal(virtual=vip(7), real=real(8, 9))])

        # everything deleted again in one apply
        gone: list[Operation] = [DelVirtual(key=k) for k in sorted(kernel.list_virtuals())]
        gone += [DelAddress(ip=ip) for ip in sorted(kernel.addresses())]
        assert kernel.apply(gone) == SERVERS + 1 + SERVERS
        assert kernel.list_virtuals() == {} and kernel.addresses() == set()
        assert not kernel.cleanup()  # nothing left but the link, which it removes
        with pytest.raises(OSError):
            socket_index(DUMMY_LINK)
    finally:
        kernel.close()


def socket_index(name: str) -> int:
    import socket

    return socket.if_nametoindex(name)


def test_ipv6_and_firewall_mark_servers_and_their_settings(own_netns: None) -> None:
    kernel = NetlinkIpvs(6)
    try:
        key = VirtualKey(ip=ip_address("fd00:96::10"), protocol=Protocol.SCTP, port=9000)
        mark = VirtualKey(ip=ip_address("::"), protocol=Protocol.TCP, port=0, fwmark=0x10000042)
        backends = [RealKey(ip=ip_address(f"fd00:244::{n}"), port=9090) for n in (2, 3)]
        ops: list[Operation] = [AddAddress(ip=key.ip), AddVirtual(key=key, scheduler="rr", persistence=0),
                                AddVirtual(key=mark, scheduler="rr", persistence=60)]
        ops += [AddReal(virtual=k, real=r, weight=1) for k in (key, mark) for r in backends]
        assert kernel.apply(ops) == len(ops)
        listed = kernel.list_virtuals()
        reals = dict.fromkeys(backends, RealStats(weight=1))
        assert listed == {key: ListedVirtual(scheduler="rr", persistence=0, reals=reals),
                          mark: ListedVirtual(scheduler="rr", persistence=60, reals=reals)}
        assert kernel.addresses() == {key.ip}
        other = NetlinkIpvs(4)
        assert other.list_virtuals() == {}  # the other family's listing
        other.close()
        assert kernel.apply([EditVirtual(key=key, scheduler="rr", persistence=300),
                             EditVirtual(key=mark, scheduler="rr", persistence=0)]) == 2
        after = kernel.list_virtuals()
        assert (after[key].persistence, after[mark].persistence) == (300, 0)
        assert any(line.startswith("FWM") and "268435522" in line for line in ipvsadm_lines())
        assert kernel.cleanup()
        assert kernel.list_virtuals() == {} and kernel.addresses() == set()
    finally:
        kernel.close()
