"""Upstream's configuration file (KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1).

The file is checked against upstream's schema. As upstream's loader does (strict decoding
first, then lenient decoding with a warning), an unknown field is reported and skipped, so an
older kubeadm file (`udpIdleTimeout: 0s`) still loads; a value of the wrong type or a bad
value is an error naming the field. Fields kproxy implements set the same settings as its
flags; fields it does not implement are reported once, as ignored, when they hold a non-zero
value (a kubeadm-generated file lists every field with zero values: those mean "default"
upstream and here). Flags given on the command line override the file.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

import yaml

from kproxy.model import IPNetwork, LocalMode
from kproxy.values import format_duration, parse_cidr_list, parse_duration, parse_interface_name

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"

LOCAL_MODES = tuple(m.value for m in LocalMode)  # detectLocalMode; the first is the default

METRICS_PORT = 10249
HEALTHZ_PORT = 10256
DEFAULT_METRICS_BIND_ADDRESS = f"127.0.0.1:{METRICS_PORT}"
DEFAULT_HEALTHZ_BIND_ADDRESS = f"0.0.0.0:{HEALTHZ_PORT}"


class ConfigError(ValueError):
    """The file is unreadable, or a field is unknown or of the wrong type."""


# --- value types --------------------------------------------------------------------------

def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_duration(v: object) -> bool:
    if not isinstance(v, str):
        return False
    try:
        parse_duration(v)
    except ValueError:
        return False
    return True


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) for i in v)


def _is_bool_map(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(b, bool) for k, b in v.items())


def _is_any(_v: object) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Field:
    check: Callable[[object], bool]
    expected: str  # for the error message
    implemented: bool = False


STR = Field(_is_str, "a string")
BOOL = Field(_is_bool, "true or false")
INT = Field(_is_int, "an integer")
DURATION = Field(_is_duration, "a duration such as 30s")
STR_LIST = Field(_is_str_list, "a list of strings")
BOOL_MAP = Field(_is_bool_map, "a map of names to true/false")
ANY = Field(_is_any, "anything")


def _used(f: Field) -> Field:
    return Field(f.check, f.expected, implemented=True)


_PER_MODE = {  # iptables and nftables sections: kproxy reads the one of the active mode
    "masqueradeBit": INT,
    "masqueradeAll": _used(BOOL),
    "syncPeriod": _used(DURATION),
    "minSyncPeriod": _used(DURATION),
}

# Upstream's v1alpha1 schema. Nested dicts are sections.
SCHEMA: dict[str, Any] = {
    "apiVersion": _used(STR),
    "kind": _used(STR),
    "featureGates": BOOL_MAP,
    "clientConnection": {
        "kubeconfig": _used(STR),
        "acceptContentTypes": STR,
        "contentType": STR,
        "qps": Field(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
        "burst": INT,
    },
    "logging": {
        "format": _used(STR),
        "flushFrequency": ANY,  # a number or a duration upstream
        "verbosity": _used(INT),
        "vmodule": ANY,
        "options": ANY,
    },
    "hostnameOverride": _used(STR),
    "bindAddress": _used(STR),
    "healthzBindAddress": _used(STR),
    "metricsBindAddress": _used(STR),
    "bindAddressHardFail": _used(BOOL),
    "enableProfiling": BOOL,
    "showHiddenMetricsForVersion": STR,
    "mode": _used(STR),
    "iptables": {**_PER_MODE, "localhostNodePorts": _used(BOOL), "snatNodeInternalIP": BOOL},
    "ipvs": {
        "syncPeriod": _used(DURATION), "minSyncPeriod": _used(DURATION), "scheduler": _used(STR),
        "excludeCIDRs": _used(STR_LIST), "strictARP": _used(BOOL), "tcpTimeout": _used(DURATION),
        "tcpFinTimeout": _used(DURATION), "udpTimeout": _used(DURATION),
    },
    "nftables": dict(_PER_MODE),
    "winkernel": {
        "networkName": STR, "sourceVip": STR, "enableDSR": BOOL, "rootHnsEndpointName": STR,
        "forwardHealthCheckVip": BOOL,
    },
    "detectLocalMode": _used(STR),
    "detectLocal": {"bridgeInterface": _used(STR), "interfaceNamePrefix": _used(STR)},
    "clusterCIDR": _used(STR),
    "nodePortAddresses": _used(STR_LIST),
    "oomScoreAdj": INT,
    "conntrack": {
        "maxPerCore": _used(INT), "min": _used(INT), "tcpEstablishedTimeout": _used(DURATION),
        "tcpCloseWaitTimeout": _used(DURATION), "tcpBeLiberal": _used(BOOL), "udpTimeout": _used(DURATION),
        "udpStreamTimeout": _used(DURATION),
    },
    "configSyncPeriod": DURATION,
    "portRange": STR,
    "windowsRunAsService": BOOL,
    # kproxy's own (upstream has no such switch): --external-ip-cidrs
    "externalIPCIDRs": _used(STR_LIST),
}


# conntrack fields -> the --conntrack-* flags' destinations. As with those flags, a field left
# unset (or zero) leaves the kernel's value alone; upstream would apply its own defaults.
CONNTRACK_FIELDS = {
    "maxPerCore": "conntrack_max_per_core",
    "min": "conntrack_min",
    "tcpEstablishedTimeout": "conntrack_tcp_timeout_established",
    "tcpCloseWaitTimeout": "conntrack_tcp_timeout_close_wait",
    "tcpBeLiberal": "conntrack_tcp_be_liberal",
    "udpTimeout": "conntrack_udp_timeout",
    "udpStreamTimeout": "conntrack_udp_timeout_stream",
}


# --- reading the file -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ProxyConfigFile:
    path: str
    values: dict[str, Any]  # flattened: "nftables.syncPeriod" -> "5s"; unset and null left out
    unknown: tuple[str, ...] = ()  # fields not in the schema: skipped, as upstream's lenient decoding does

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def ignored_fields(self) -> list[str]:
        """Fields set to a non-zero value that kproxy does not implement."""
        return [key for key, value in self.values.items()
                if not _field(key).implemented and not _is_zero(value)]


def _field(key: str) -> Field:
    node: Any = SCHEMA
    for part in key.split("."):
        node = node[part]
    assert isinstance(node, Field)
    return node


def _is_zero(value: object) -> bool:
    if isinstance(value, str) and _is_duration(value):
        return parse_duration(value) == 0
    if isinstance(value, dict):
        return all(_is_zero(v) for v in value.values())
    return value is None or value is False or value == 0 or value in ("", [])


def _flatten(data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str,
             unknown: list[str]) -> Iterator[tuple[str, Any]]:
    for name, value in data.items():
        key = f"{prefix}{name}"
        spec = schema.get(name) if isinstance(name, str) else None
        if spec is None:
            unknown.append(key)
            continue
        if value is None:
            continue  # null: unset, as upstream reads it
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"field {key!r}: expected a section (a map), got {value!r}")
            yield from _flatten(value, spec, f"{key}.", unknown)
        elif not spec.check(value):
            raise ConfigError(f"field {key!r}: expected {spec.expected}, got {value!r}")
        else:
            yield key, value


def parse_config(text: str, path: str = "<config>") -> ProxyConfigFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a KubeProxyConfiguration document")
    unknown: list[str] = []
    try:
        values = dict(_flatten(data, SCHEMA, "", unknown))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if values.get("apiVersion") != API_VERSION or values.get("kind") != KIND:
        raise ConfigError(f"{path}: expected apiVersion {API_VERSION} and kind {KIND}, "
                          f"got {values.get('apiVersion')!r} and {values.get('kind')!r}")
    return ProxyConfigFile(path, values, tuple(unknown))


def load_config(path: str) -> ProxyConfigFile:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror}") from None
    return parse_config(text, path)


# --- merging with the command line ------------------------------------------------------------

ALL_ADDRESSES = (ip_network("0.0.0.0/0"), ip_network("::/0"))


def _cidrs(text: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_cidr_list(text)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def parse_node_port_addresses(items: list[str]) -> tuple[IPNetwork, ...]:
    """nodePortAddresses / --nodeport-addresses: `primary` (the default: the node IPs, as no
    CIDR at all), `all` (every local address of both families) or CIDRs. As upstream's
    validation, `primary` (and kproxy's `all`) stands alone."""
    items = [i.strip() for i in items if i.strip()]
    for word in ("primary", "all"):
        if word in items and len(items) > 1:
            raise ConfigError(f"{word!r} cannot be combined with other values ({', '.join(items)})")
    if items == ["primary"]:
        return ()
    if items == ["all"]:
        return ALL_ADDRESSES
    if "localhost" in items:
        raise ConfigError("'localhost' is not supported")
    return tuple(n for item in items for n in _cidrs(item))


def check_bind_address(key: str, text: str, default_port: int) -> str:
    """IP:PORT or [IPv6]:PORT; an IP alone gets the default port, as upstream."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, str(default_port)
    try:
        ip = ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not an IP:port address") from None
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: {text!r} has no valid port")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def file_settings(cfg: ProxyConfigFile, mode_choices: tuple[str, ...], flag_mode: str | None,
                  default_mode: str) -> dict[str, Any]:
    """The file's values as argparse destinations (only what the file sets). The iptables or
    nftables section is read for the active mode: --proxy-mode, else the file's, else default."""
    out: dict[str, Any] = {}
    v = cfg.values
    if mode := v.get("mode"):
        if mode not in mode_choices:
            raise ConfigError(f"{cfg.path}: field 'mode': {mode!r} is not implemented "
                              f"(choose from {', '.join(mode_choices)})")
        out["proxy_mode"] = mode
    section = flag_mode or out.get("proxy_mode") or default_mode
    try:
        if kubeconfig := v.get("clientConnection.kubeconfig"):
            out["kubeconfig"] = kubeconfig
        if hostname := v.get("hostnameOverride"):
            out["hostname_override"] = hostname
        if bind := v.get("bindAddress"):
            try:
                ip = ip_address(bind)
            except ValueError:
                raise ConfigError(f"field 'bindAddress': {bind!r} is not an IP address") from None
            if not ip.is_unspecified:
                out["node_ip"] = [ip]
        if address := v.get("healthzBindAddress"):
            out["healthz_bind_address"] = check_bind_address("field 'healthzBindAddress'", address, HEALTHZ_PORT)
        if address := v.get("metricsBindAddress"):
            out["metrics_bind_address"] = check_bind_address("field 'metricsBindAddress'", address, METRICS_PORT)
        if cidrs := v.get("clusterCIDR"):
            try:
                out["cluster_cidr"] = _cidrs(cidrs)
            except ConfigError as err:
                raise ConfigError(f"field 'clusterCIDR': {err}") from None
        out.update(_local_detection(v))
        if (allowed := v.get("externalIPCIDRs")) is not None:
            try:
                out["external_ip_cidrs"] = tuple(n for item in allowed for n in _cidrs(item))
            except ConfigError as err:
                raise ConfigError(f"field 'externalIPCIDRs': {err}") from None
        if addresses := v.get("nodePortAddresses"):
            try:
                out["nodeport_addresses"] = parse_node_port_addresses(addresses)
            except ConfigError as err:
                raise ConfigError(f"field 'nodePortAddresses': {err}") from None
        if v.get("bindAddressHardFail"):
            out["bind_address_hard_fail"] = True
        if (localhost := v.get("iptables.localhostNodePorts")) is not None:
            out["iptables_localhost_nodeports"] = localhost
        out.update(_ipvs_settings(v))
        # upstream's IPVS mode takes masqueradeAll from the iptables section
        if v.get(f"{'iptables' if section == 'ipvs' else section}.masqueradeAll"):
            out["masquerade_all"] = True
        for name, dest in (("syncPeriod", "sync_period"), ("minSyncPeriod", "min_sync_period")):
            seconds = parse_duration(v.get(f"{section}.{name}", "0"))
            if seconds:  # 0s: upstream's default
                out[dest] = seconds
        for name, dest in CONNTRACK_FIELDS.items():
            value = v.get(f"conntrack.{name}")
            if isinstance(value, str):
                value = parse_duration(value)
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"field 'conntrack.{name}': {value} is negative (must be 0 or more)")
            if value:
                out[dest] = value
        if fmt := v.get("logging.format"):
            if fmt not in ("text", "json"):
                raise ConfigError(f"field 'logging.format': {fmt!r} is not text or json")
            out["log_format"] = fmt
        if v.get("logging.verbosity", 0) >= 4:
            out["verbose"] = True
    except ConfigError as err:
        raise ConfigError(f"{cfg.path}: {err}") from None
    return out


IPVS_FIELDS = {"scheduler": "ipvs_scheduler", "strictARP": "ipvs_strict_arp", "excludeCIDRs": "ipvs_exclude_cidrs",
               "tcpTimeout": "ipvs_tcp_timeout", "tcpFinTimeout": "ipvs_tcpfin_timeout",
               "udpTimeout": "ipvs_udp_timeout"}


def _ipvs_settings(v: dict[str, Any]) -> dict[str, Any]:
    """The ipvs section's fields as the --ipvs-* flags' destinations (read in any mode, as upstream)."""
    out: dict[str, Any] = {}
    for name, dest in IPVS_FIELDS.items():
        value = v.get(f"ipvs.{name}")
        if value is None or value == "" or value == []:
            continue
        if name == "excludeCIDRs":
            try:
                value = _cidrs(",".join(value))
            except ConfigError as err:
                raise ConfigError(f"field 'ipvs.excludeCIDRs': {err}") from None
        elif name.endswith("Timeout"):
            value = parse_duration(value)
        out[dest] = value
    return out


def _local_detection(v: Mapping[str, Any]) -> dict[str, Any]:
    """detectLocalMode and detectLocal.* as the --detect-local-mode, --pod-bridge-interface
    and --pod-interface-name-prefix destinations ("" means unset, as upstream)."""
    out: dict[str, Any] = {}
    if mode := v.get("detectLocalMode"):
        if mode not in LOCAL_MODES:
            raise ConfigError(f"field 'detectLocalMode': {mode!r} is not one of {', '.join(LOCAL_MODES)}")
        out["detect_local_mode"] = mode
    for name, dest in (("bridgeInterface", "pod_bridge_interface"),
                       ("interfaceNamePrefix", "pod_interface_name_prefix")):
        if text := v.get(f"detectLocal.{name}"):
            try:
                out[dest] = parse_interface_name(text)
            except ValueError as err:
                raise ConfigError(f"field 'detectLocal.{name}': {err}") from None
    return out


def merge(args: argparse.Namespace, cfg: ProxyConfigFile, explicit: set[str],
          mode_choices: tuple[str, ...]) -> argparse.Namespace:
    """args with the file's settings, except where a flag was given explicitly."""
    flag_mode = args.proxy_mode if "proxy_mode" in explicit else None
    for dest, value in file_settings(cfg, mode_choices, flag_mode, args.proxy_mode).items():
        if dest not in explicit:
            setattr(args, dest, value)
    return args


# --- the effective configuration, as upstream would write it -----------------------------------

def effective_config(args: argparse.Namespace, hostname: str | None = None) -> dict[str, Any]:
    """The configuration as upstream would write it; `hostname`: the node name in effect
    (the override, else $NODE_NAME, else the hostname), shown as hostnameOverride."""
    mode = section = args.proxy_mode
    node_ips = getattr(args, "node_ip", None) or []
    per_mode: dict[str, Any] = {
        "masqueradeAll": bool(args.masquerade_all),
        "minSyncPeriod": format_duration(args.min_sync_period),
        "syncPeriod": format_duration(args.sync_period),
    }
    if mode == "iptables" and hasattr(args, "iptables_localhost_nodeports"):
        per_mode["localhostNodePorts"] = bool(args.iptables_localhost_nodeports)
    extra: dict[str, Any] = {}
    if mode == "ipvs":  # upstream keeps masqueradeAll in the iptables section
        extra["iptables"] = {"masqueradeAll": per_mode.pop("masqueradeAll")}
        per_mode.update({
            "scheduler": getattr(args, "ipvs_scheduler", "") or "rr",
            "strictARP": bool(getattr(args, "ipvs_strict_arp", False)),
            "excludeCIDRs": [str(n) for n in getattr(args, "ipvs_exclude_cidrs", ())],
            **{name: format_duration(getattr(args, dest, 0.0) or 0.0) for name, dest in IPVS_FIELDS.items()
               if name.endswith("Timeout")},
        })
    conntrack: dict[str, Any] = {}
    for name, dest in CONNTRACK_FIELDS.items():
        value = getattr(args, dest, None)
        if value and isinstance(value, float):
            conntrack[name] = format_duration(value)
        elif value:
            conntrack[name] = value
    nodeports: list[str] = [str(n) for n in args.nodeport_addresses] or ["primary"]
    if set(nodeports) <= {str(n) for n in ALL_ADDRESSES}:
        nodeports = ["all"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "bindAddress": str(node_ips[0]) if node_ips else "0.0.0.0",
        "clientConnection": {"kubeconfig": args.kubeconfig or ""},
        "clusterCIDR": ",".join(str(n) for n in args.cluster_cidr),
        "detectLocalMode": getattr(args, "detect_local_mode", LOCAL_MODES[0]),
        "detectLocal": {"bridgeInterface": getattr(args, "pod_bridge_interface", None) or "",
                        "interfaceNamePrefix": getattr(args, "pod_interface_name_prefix", None) or ""},
        "healthzBindAddress": args.healthz_bind_address,
        "hostnameOverride": hostname or args.hostname_override or "",
        "bindAddressHardFail": bool(getattr(args, "bind_address_hard_fail", False)),
        "logging": {"format": getattr(args, "log_format", "text"),
                    "verbosity": 4 if getattr(args, "verbose", False) else 0},
        "metricsBindAddress": args.metrics_bind_address,
        "mode": mode,
        section: per_mode,
        "nodePortAddresses": nodeports,
        **({"conntrack": conntrack} if conntrack else {}),
        **extra,
        **({"externalIPCIDRs": [str(n) for n in allowed]}
           if (allowed := getattr(args, "external_ip_cidrs", None)) is not None else {}),
    }


def dump_config(args: argparse.Namespace, hostname: str | None = None) -> str:
    return yaml.safe_dump(effective_config(args, hostname), sort_keys=True, default_flow_style=False)


def _all_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every option of the parser and its subcommands (argparse has no public walk)."""
    pending = [parser]
    while pending:
        p = pending.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            else:
                yield action


def explicit_dests(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> set[str]:
    """The destinations the command line sets explicitly (pflag's Changed): parse again with
    every default suppressed."""
    parser = build_parser()
    for action in _all_actions(parser):
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def apply_config_file(args: argparse.Namespace, argv: list[str], build_parser: Callable[[], argparse.ArgumentParser],
                      ) -> tuple[argparse.Namespace, ProxyConfigFile]:
    """Merge the --config file under the flags; return the args and the file (whose unknown
    and ignored fields the caller reports)."""
    cfg = load_config(args.config)
    modes = next(tuple(a.choices or ()) for a in _all_actions(build_parser()) if a.dest == "proxy_mode")
    return merge(args, cfg, explicit_dests(build_parser, argv), modes), cfg
