"""KubeProxyConfiguration files: upstream's schema, flags over the file, `config --print`."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
import yaml

from kproxy.cli import main
from kproxy.cli.config_file import apply_config_file, parse_config
from kproxy.cli.parser import build_parser
from kproxy.values import format_duration
from kproxy.values import parse_duration as parse_go_duration

# What `kubeadm init` writes into the kube-proxy ConfigMap: every field, zero values mean default.
KUBEADM = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"""

HEADER = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


def effective(tmp_path, text: str, *flags: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    argv = ["run", "--config", str(path), *flags]
    args = build_parser().parse_args(argv)
    args, cfg = apply_config_file(args, argv, build_parser)
    assert cfg.unknown == (), cfg.unknown
    return args, cfg.ignored_fields()


def test_kubeadm_file_is_accepted_and_only_real_settings_apply(tmp_path):
    args, ignored = effective(tmp_path, KUBEADM)
    assert ignored == []  # zero values everywhere else: nothing to report
    assert args.kubeconfig == "/var/lib/kube-proxy/kubeconfig.conf"
    assert args.cluster_cidr == (IPv4Network("10.244.0.0/16"),)
    assert args.proxy_mode == "nftables"
    assert (args.sync_period, args.min_sync_period) == (30.0, 1.0)  # 0s: upstream's defaults
    assert args.metrics_bind_address == "127.0.0.1:10249"
    assert args.healthz_bind_address == "0.0.0.0:10256"
    assert args.node_ip == []  # bindAddress 0.0.0.0: unset


def test_implemented_fields_map_to_settings(tmp_path):
    args, ignored = effective(tmp_path, HEADER + """\
bindAddress: 192.168.1.10
hostnameOverride: node-a
metricsBindAddress: 0.0.0.0:9999
healthzBindAddress: 127.0.0.1
mode: nftables
nftables: {masqueradeAll: true, syncPeriod: 1m0s, minSyncPeriod: 250ms}
iptables: {syncPeriod: 5s}
nodePortAddresses: [192.168.1.0/24]
detectLocalMode: ClusterCIDR
logging: {format: json}
conntrack: {maxPerCore: 32768}
featureGates: {SomeGate: true}
""")
    assert args.node_ip == [IPv4Address("192.168.1.10")]
    assert args.hostname_override == "node-a"
    assert args.metrics_bind_address == "0.0.0.0:9999"
    assert args.healthz_bind_address == "127.0.0.1:10256"
    assert args.masquerade_all is True
    assert (args.sync_period, args.min_sync_period) == (60.0, 0.25)  # the nftables section
    assert args.nodeport_addresses == (IPv4Network("192.168.1.0/24"),)
    assert args.log_format == "json"
    assert sorted(ignored) == ["featureGates"]
    assert args.conntrack_max_per_core == 32768


def test_flags_override_the_file(tmp_path):
    args, _ = effective(tmp_path, HEADER + """\
hostnameOverride: from-file
clusterCIDR: 10.0.0.0/8
nftables: {syncPeriod: 10s, minSyncPeriod: 2s, masqueradeAll: true}
metricsBindAddress: 0.0.0.0:10249
""", "--hostname-override", "from-flag", "--min-sync-period", "1s", "--metrics-bind-address", "127.0.0.1:0")
    assert args.hostname_override == "from-flag"
    assert args.min_sync_period == 1.0  # given on the command line, even though it is the default
    assert args.metrics_bind_address == "127.0.0.1:0"
    assert args.sync_period == 10.0  # not given: the file's
    assert args.cluster_cidr == (IPv4Network("10.0.0.0/8"),)


@pytest.mark.parametrize(("text", "needle"), [
    (HEADER + "nftables: {syncPeriod: 5}\n", "field 'nftables.syncPeriod': expected a duration"),
    (HEADER + "udpIdleTimeout: 5\nnftables: {syncPeriod: 5}\n", "field 'nftables.syncPeriod': expected a duration"),
    (HEADER + "conntrack: {maxPerCore: -3}\n", "field 'conntrack.maxPerCore': -3 is negative"),
    (HEADER + "conntrack: {min: -1}\n", "field 'conntrack.min': -1 is negative"),
    (HEADER + "nodePortAddresses: [primary, 10.0.0.0/8]\n", "field 'nodePortAddresses': 'primary' cannot be combined"),
    (HEADER + "nftables: {masqueradeAll: 'yes'}\n", "field 'nftables.masqueradeAll': expected true or false"),
    (HEADER + "nodePortAddresses: 10.0.0.0/8\n", "field 'nodePortAddresses': expected a list of strings"),
    (HEADER + "conntrack: 5\n", "field 'conntrack': expected a section"),
    (HEADER + "mode: winkernel\n", "field 'mode': 'winkernel' is not implemented"),
    (HEADER + "ipvs: {excludeCIDRs: [banana]}\n", "field 'ipvs.excludeCIDRs': 'banana' is not a CIDR"),
    (HEADER + "ipvs: {tcpTimeout: 5}\n", "field 'ipvs.tcpTimeout': expected a duration"),
    (HEADER + "detectLocalMode: PodCIDR\n", "field 'detectLocalMode': 'PodCIDR' is not one of ClusterCIDR, NodeCIDR"),
    (HEADER + "detectLocal: {interfaceNamePrefix: 'a b'}\n", "field 'detectLocal.interfaceNamePrefix': 'a b'"),
    (HEADER + "externalIPCIDRs: [banana]\n", "field 'externalIPCIDRs': 'banana' is not a CIDR"),
    (HEADER + "clusterCIDR: banana\n", "field 'clusterCIDR': 'banana' is not a CIDR"),
    (HEADER + "metricsBindAddress: localhost:10249\n", "field 'metricsBindAddress'"),
    ("apiVersion: v1\nkind: ConfigMap\n", "expected apiVersion kubeproxy.config.k8s.io/v1alpha1"),
    ("mode: [\n", "not valid YAML"),
])
def test_bad_files_are_one_line_naming_the_field_and_exit_2(tmp_path, capsys, text, needle):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code = main(["config", "--print", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"kproxy: error: {path}: ") and err.count("\n") == 1
    assert needle in err


def test_unknown_fields_are_skipped_with_a_warning_naming_them(tmp_path, capsys):
    """As upstream's loader: strict decoding fails on an unknown field, lenient decoding then
    loads the file and warns. An older kubeadm ConfigMap (udpIdleTimeout) keeps working."""
    path = tmp_path / "config.yaml"
    path.write_text(HEADER + "udpIdleTimeout: 250ms\nclusterCIRD: 10.0.0.0/8\n"
                    "nftables: {syncPeriods: 5s, syncPeriod: 7s}\nhostnameOverride: node-x\n")
    assert main(["config", "--print", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "unknown config field" in line]
    assert [line.split("field=")[1] for line in warnings] == ["udpIdleTimeout", "clusterCIRD", "nftables.syncPeriods"]
    doc = yaml.safe_load(captured.out)  # the known fields still apply
    assert doc["nftables"]["syncPeriod"] == "7s" and doc["hostnameOverride"] == "node-x"
    cfg = parse_config(path.read_text(), str(path))
    assert cfg.unknown == ("udpIdleTimeout", "clusterCIRD", "nftables.syncPeriods")


def test_conntrack_sizes_must_not_be_negative_on_the_command_line(capsys):
    for flag in ("--conntrack-max-per-core", "--conntrack-min"):
        with pytest.raises(SystemExit) as exit_info:
            main(["config", "--print", flag, "-3"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1
        assert f"argument {flag}: -3 is negative (must be 0 or more)" in err


@pytest.mark.parametrize(("value", "printed"), [("primary", ["primary"]), ("all", ["all"]),
                                                ("10.1.0.0/16,fd00::/64", ["10.1.0.0/16", "fd00::/64"])])
def test_nodeport_addresses_flag_takes_what_the_field_takes(capsys, value, printed):
    assert main(["config", "--print", "--nodeport-addresses", value]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["nodePortAddresses"] == printed


@pytest.mark.parametrize(("value", "needle"), [("primary,10.0.0.0/8", "'primary' cannot be combined"),
                                               ("banana", "'banana' is not a CIDR"),
                                               ("localhost", "'localhost' is not supported")])
def test_bad_nodeport_addresses_flag_is_one_line(capsys, value, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "--print", "--nodeport-addresses", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "argument --nodeport-addresses: " in err and needle in err


def test_print_shows_the_node_name_in_effect(monkeypatch, capsys):
    monkeypatch.setenv("NODE_NAME", "Node-From-Env")
    assert main(["config", "--print"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hostnameOverride"] == "node-from-env"
    assert main(["config", "--print", "--hostname-override", "flag-node"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hostnameOverride"] == "flag-node"
    monkeypatch.delenv("NODE_NAME")
    monkeypatch.setattr("socket.gethostname", lambda: "Host-Name")
    assert main(["config", "--print"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hostnameOverride"] == "host-name"


def test_bind_address_hard_fail_from_the_file_and_the_flag(tmp_path):
    args, ignored = effective(tmp_path, HEADER + "bindAddressHardFail: true\n")
    assert args.bind_address_hard_fail is True and ignored == []
    args, _ = effective(tmp_path, HEADER, "--bind-address-hard-fail")
    assert args.bind_address_hard_fail is True
    args, _ = effective(tmp_path, HEADER)
    assert args.bind_address_hard_fail is False


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["sync", "--once", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_ignored_fields_are_reported_once_at_start(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(HEADER + "oomScoreAdj: -999\nwinkernel: {enableDSR: true}\n")
    assert main(["config", "--print", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("config field not implemented") == 2
    assert "oomScoreAdj" in err and "winkernel.enableDSR" in err


def test_print_round_trips(tmp_path, capsys):
    flags = ["--node-ip", "10.1.0.5", "--cluster-cidr", "10.244.0.0/16", "--masquerade-all",
             "--sync-period", "45s", "--min-sync-period", "500ms", "--hostname-override", "n1",
             "--nodeport-addresses", "10.1.0.0/16", "--metrics-bind-address", "0.0.0.0:10249",
             "--conntrack-max-per-core", "65536", "--conntrack-tcp-timeout-close-wait", "1h"]
    assert main(["config", "--print", *flags]) == 0
    first = capsys.readouterr().out
    doc = yaml.safe_load(first)
    assert doc["kind"] == "KubeProxyConfiguration" and doc["mode"] == "nftables"
    assert doc["nftables"] == {"masqueradeAll": True, "minSyncPeriod": "500ms", "syncPeriod": "45s"}
    assert doc["conntrack"] == {"maxPerCore": 65536, "tcpCloseWaitTimeout": "1h0m0s"}
    parse_config(first)  # our own output passes our own schema
    path = tmp_path / "effective.yaml"
    path.write_text(first)
    assert main(["config", "--print", "--config", str(path)]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(("text", "seconds"), [("0s", 0), ("0", 0), ("1m0s", 60), ("2h22m", 8520),
                                                ("500ms", 0.5), ("1.5s", 1.5)])
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [0.0, 0.25, 1.0, 30.0, 90.0, 3600.0, 3725.0])
def test_durations_print_and_parse_back(seconds):
    assert parse_go_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_iptables_mode_reads_the_iptables_section(tmp_path, capsys):
    text = HEADER + """\
mode: iptables
iptables: {syncPeriod: 20s, masqueradeAll: true, localhostNodePorts: false}
nftables: {syncPeriod: 5s}
"""
    args, ignored = effective(tmp_path, text)
    assert args.proxy_mode == "iptables" and args.sync_period == 20.0 and args.masquerade_all is True
    assert args.iptables_localhost_nodeports is False and ignored == []
    # --proxy-mode on the command line picks the section too
    args, _ = effective(tmp_path, text, "--proxy-mode", "nftables")
    assert args.sync_period == 5.0 and args.masquerade_all is False
    # and the printed configuration round-trips in iptables mode as well
    path = tmp_path / "config.yaml"
    assert main(["config", "--print", "--config", str(path)]) == 0
    first = capsys.readouterr().out
    assert "localhostNodePorts: false" in first
    path.write_text(first)
    assert main(["config", "--print", "--config", str(path)]) == 0
    assert capsys.readouterr().out == first


def test_ipvs_section_sets_the_ipvs_flags_and_prints_back(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(HEADER + "mode: ipvs\nipvs: {scheduler: wrr, strictARP: true, excludeCIDRs: [10.0.0.0/8],"
                    " tcpTimeout: 15m, tcpFinTimeout: 30s, udpTimeout: 5s, syncPeriod: 10s}\n"
                    "iptables: {masqueradeAll: true}\n")
    assert main(["config", "--print", "--config", str(path)]) == 0
    out = capsys.readouterr()
    printed = yaml.safe_load(out.out)
    assert printed["mode"] == "ipvs"
    assert printed["ipvs"] == {"scheduler": "wrr", "strictARP": True, "excludeCIDRs": ["10.0.0.0/8"],
                               "tcpTimeout": "15m0s", "tcpFinTimeout": "30s", "udpTimeout": "5s",
                               "syncPeriod": "10s", "minSyncPeriod": "1s"}
    assert printed["iptables"] == {"masqueradeAll": True}
    assert "not implemented" not in out.err


def test_unknown_ipvs_scheduler_is_a_usage_error(capsys):
    assert main(["sync", "--proxy-mode", "ipvs", "--ipvs-scheduler", "fastest", "--manifests", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ipvs-scheduler 'fastest': unknown IPVS scheduler" in err
