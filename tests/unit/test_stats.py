"""Connection stats per frontend and endpoint (pure), their text and JSON, and top's frame."""

from __future__ import annotations

from kproxy.backends.stats import Connection, connection_stats, format_stats
from kproxy.backends.view import FrontendView, ProgrammedView, ServicePortView
from kproxy.cli.top import CLEAR_BELOW, CLEAR_LINE, HOME, frame

EPS = ("10.244.1.2:8080", "10.244.2.2:8080")
VIEW = ProgrammedView(present=True, service_ports=(
    ServicePortView(name="default/web:http", protocol="TCP", frontends=(
        FrontendView(kind="ClusterIP", address="10.96.0.10:80", endpoints=EPS, verdict="dnat"),
        FrontendView(kind="NodePort", address="*:30080", endpoints=EPS, verdict="dnat"),
    )),
    ServicePortView(name="default/v6:http", protocol="TCP", frontends=(
        FrontendView(kind="ClusterIP", address="[fd00:96::10]:80", endpoints=("[fd00:244::2]:8080",), verdict="dnat"),
    )),
))


def conn(dst: str, dport: int, reply: str, rport: int, established: bool = True, sport: int = 40000,
         protocol: str = "TCP") -> Connection:
    return Connection(protocol=protocol, orig_dst=dst, orig_dport=dport, reply_src=reply, reply_sport=rport,
                      established=established, key=(protocol, "10.244.1.9", sport, dst, dport))


def test_counts_per_frontend_and_endpoint_and_new_ones_in_a_window():
    before = [conn("10.96.0.10", 80, "10.244.1.2", 8080, sport=1)]
    now = before + [
        conn("10.96.0.10", 80, "10.244.2.2", 8080, sport=2),
        conn("10.96.0.10", 80, "10.244.2.2", 8080, established=False, sport=3),
        conn("192.168.50.10", 30080, "10.244.1.2", 8080, sport=4),  # NodePort on any local address
        conn("fd00:96::10", 80, "fd00:244::2", 8080, sport=5),
        conn("10.96.0.10", 80, "10.96.0.10", 80, established=False, sport=6),  # not DNATed (rejected)
        conn("10.96.0.10", 80, "10.244.1.2", 8080, protocol="UDP"),  # another protocol: not this frontend
        conn("8.8.8.8", 53, "8.8.8.8", 53),  # not a Service
    ]
    report = connection_stats(VIEW, now, before, window=2.0)
    out = report.to_json()
    cip, nodeport, v6 = out["frontends"]
    assert (cip["established"], cip["other"], cip["new_per_second"]) == (2, 2, 1.5)
    assert cip["endpoints"] == [
        {"endpoint": "10.244.1.2:8080", "established": 1, "other": 0, "new_per_second": 0.0},
        {"endpoint": "10.244.2.2:8080", "established": 1, "other": 1, "new_per_second": 1.0}]
    assert (nodeport["established"], nodeport["endpoints"][0]["established"]) == (1, 1)
    assert v6["endpoints"] == [{"endpoint": "[fd00:244::2]:8080", "established": 1, "other": 0,
                                "new_per_second": 0.5}]
    assert report.unmatched == 2
    text = format_stats(report)
    assert "  ClusterIP 10.96.0.10:80" in text and "    -> 10.244.2.2:8080" in text and "new/s" in text


def test_without_a_window_there_are_no_rates():
    report = connection_stats(VIEW, [conn("10.96.0.10", 80, "10.244.1.2", 8080)])
    assert report.window is None and "new_per_second" not in report.to_json()["frontends"][0]
    assert "new/s" not in format_stats(report)


def test_frame_overwrites_in_place_cut_to_the_screen():
    shown = frame("a very long line\nb\nc\n", columns=6, rows=2)
    assert shown == f"{HOME}a very{CLEAR_LINE}\nb{CLEAR_LINE}{CLEAR_BELOW}"
