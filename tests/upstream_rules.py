"""Rules shaped as upstream kube-proxy programs them, for the takeover tests.

The layout (chains, maps, jumps from the built-in chains and their comments) follows what
upstream's own tests expect its iptables and nftables modes to write
(pkg/proxy/iptables/proxier_test.go TestOverallIPTablesRules, pkg/proxy/nftables/
proxier_test.go TestOverallNFTablesRules): per-endpoint KUBE-SEP-* chains, KUBE-MARK-MASQ,
the canary chains, KUBE-FORWARD and KUBE-PROXY-FIREWALL; in nftables, table `ip kube-proxy`
with the service-ips / service-nodeports verdict maps and service-/endpoint-/external-
chains. Kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY) are added too, since a
real node has them and a takeover must keep them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kproxy.backends.iptables.render import chain_hash

MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class UpstreamPort:
    name: str  # namespace/service:port
    protocol: str  # tcp / udp
    cluster_ip: str
    port: int
    node_port: int
    endpoints: tuple[str, ...]  # ip:port

    @property
    def svc(self) -> str:
        return "KUBE-SVC-" + chain_hash(self.name, self.protocol)

    @property
    def ext(self) -> str:
        return "KUBE-EXT-" + chain_hash(self.name, self.protocol)

    def sep(self, endpoint: str) -> str:
        return "KUBE-SEP-" + chain_hash(self.name, self.protocol, endpoint)


def iptables_restore(ports: list[UpstreamPort], cluster_cidr: str) -> str:
    """iptables-restore input (no --noflush needed: for a fresh namespace)."""
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                  "KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY"]
    nat = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE',
    ]
    for p in ports:
        nat_chains += [p.svc, p.ext] + [p.sep(e) for e in p.endpoints]
        nat += [
            f'-A KUBE-SERVICES -m comment --comment "{p.name} cluster IP" -m {p.protocol} -p {p.protocol} '
            f"-d {p.cluster_ip} --dport {p.port} -j {p.svc}",
            f"-A KUBE-NODEPORTS -m comment --comment {p.name} -m {p.protocol} -p {p.protocol} "
            f"--dport {p.node_port} -j {p.ext}",
            f'-A {p.ext} -m comment --comment "masquerade traffic for {p.name} external destinations" '
            "-j KUBE-MARK-MASQ",
            f"-A {p.ext} -j {p.svc}",
            f'-A {p.svc} -m comment --comment "{p.name} cluster IP" -m {p.protocol} -p {p.protocol} '
            f"-d {p.cluster_ip} --dport {p.port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ",
        ]
        for i, endpoint in enumerate(p.endpoints):
            left = len(p.endpoints) - i
            chance = f"-m statistic --mode random --probability {1 / left:.10f} " if left > 1 else ""
            ip = endpoint.rsplit(":", 1)[0]
            nat += [
                f'-A {p.svc} -m comment --comment "{p.name} -> {endpoint}" {chance}-j {p.sep(endpoint)}',
                f"-A {p.sep(endpoint)} -m comment --comment {p.name} -s {ip} -j KUBE-MARK-MASQ",
                f"-A {p.sep(endpoint)} -m comment --comment {p.name} -m {p.protocol} -p {p.protocol} "
                f"-j DNAT --to-destination {endpoint}",
            ]
    nat.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
               'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    new = "-m conntrack --ctstate NEW"
    filter_chains = ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL",
                     "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY"]
    filt = [
        f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        "-A INPUT -j KUBE-FIREWALL",
        f'-A FORWARD {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        f'-A OUTPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        f'-A OUTPUT {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
        "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]

    def table(name: str, chains: list[str], rules: list[str]) -> list[str]:
        return [f"*{name}", *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT"]

    lines = (table("mangle", ["KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY"], [])
             + table("filter", filter_chains, filt) + table("nat", nat_chains, nat))
    return "\n".join(lines) + "\n"


def nft_script(ports: list[UpstreamPort], cluster_cidr: str) -> str:
    """`nft -f` input for table ip kube-proxy."""
    t = "ip kube-proxy"
    out = [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"add chain {t} mark-for-masquerade",
        f"add chain {t} masquerading",
        f"add chain {t} services",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}",
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f'add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}',
        f"add rule {t} filter-forward ct state invalid drop",
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
        "vmap @service-nodeports",
    ]
    for p in ports:
        ns, rest = p.name.split("/", 1)
        svc_name, port_name = rest.rsplit(":", 1)
        base = f"{ns}/{svc_name}/{p.protocol}/{port_name}"
        tag = chain_hash(base)[:8]
        service, external = f"service-{tag}-{base}", f"external-{tag}-{base}"
        endpoint_chains = [f"endpoint-{chain_hash(base, e)[:8]}-{base}__{e.replace(':', '/')}" for e in p.endpoints]
        out += [f"add chain {t} {c}" for c in (service, external, *endpoint_chains)]
        vmap = " , ".join(f"{i} : goto {c}" for i, c in enumerate(endpoint_chains))
        out += [
            f"add rule {t} {service} ip daddr {p.cluster_ip} {p.protocol} dport {p.port} "
            f"ip saddr != {cluster_cidr} jump mark-for-masquerade",
            f"add rule {t} {service} numgen random mod {len(endpoint_chains)} vmap {{ {vmap} }}",
            f"add rule {t} {external} jump mark-for-masquerade",
            f"add rule {t} {external} goto {service}",
            f"add element {t} service-ips {{ {p.cluster_ip} . {p.protocol} . {p.port} : goto {service} }}",
            f"add element {t} service-nodeports {{ {p.protocol} . {p.node_port} : goto {external} }}",
        ]
        for chain, endpoint in zip(endpoint_chains, p.endpoints, strict=True):
            ip = endpoint.rsplit(":", 1)[0]
            out += [f"add rule {t} {chain} ip saddr {ip} jump mark-for-masquerade",
                    f"add rule {t} {chain} meta l4proto {p.protocol} dnat to {endpoint}"]
    return "\n".join(out) + "\n"
