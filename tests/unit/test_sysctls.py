"""Conntrack sysctls: computed from flags only, written only when they differ."""

from __future__ import annotations

from kproxy.sysctls import ConntrackSettings, apply_sysctls, desired_sysctls


def test_nothing_is_asked_by_default():
    assert desired_sysctls(ConntrackSettings(), cpus=8) == {}


def test_values_follow_upstreams_formulas():
    wanted = desired_sysctls(ConntrackSettings(max_per_core=32768, min=131072, tcp_timeout_established=86400,
                                               tcp_timeout_close_wait=3600, tcp_be_liberal=True), cpus=2)
    assert wanted == {"nf_conntrack_max": 131072, "nf_conntrack_tcp_timeout_established": 86400,
                      "nf_conntrack_tcp_timeout_close_wait": 3600, "nf_conntrack_tcp_be_liberal": 1}
    assert desired_sysctls(ConntrackSettings(max_per_core=32768, min=131072), cpus=8) == {"nf_conntrack_max": 262144}


def test_min_is_only_a_floor_for_max_per_core_as_upstream():
    # upstream's getConntrackMax: nothing unless maxPerCore > 0
    assert desired_sysctls(ConntrackSettings(min=131072), cpus=2) == {}
    assert desired_sysctls(ConntrackSettings(max_per_core=0, min=131072), cpus=2) == {}
    assert desired_sysctls(ConntrackSettings(max_per_core=1000, min=131072), cpus=2) == {"nf_conntrack_max": 131072}
    assert desired_sysctls(ConntrackSettings(max_per_core=100000, min=131072), cpus=2) == {"nf_conntrack_max": 200000}


def test_apply_writes_only_differences_and_reports_failures(tmp_path):
    (tmp_path / "nf_conntrack_tcp_timeout_established").write_text("432000\n")
    (tmp_path / "nf_conntrack_udp_timeout").write_text("30\n")
    failed = apply_sysctls({"nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_udp_timeout": 30,
                            "nf_conntrack_max": 1}, root=tmp_path)
    assert (tmp_path / "nf_conntrack_tcp_timeout_established").read_text() == "86400\n"
    assert (tmp_path / "nf_conntrack_udp_timeout").read_text() == "30\n"
    assert list(failed) == ["nf_conntrack_max"]  # missing here, read-only outside the host namespace
