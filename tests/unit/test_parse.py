"""parse_service / parse_endpoint_slice: skip rules, malformed fields, defaults."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from kproxy import parse
from kproxy.model import Protocol, ServiceName, ServicePortName, ServiceType, SliceEndpoint
from kproxy.parse import InvalidObject, parse_endpoint_slice, parse_service
from tests.builders import endpoint, endpoint_slice, port, service

IP = IPv4Address


# --- Services: happy paths -------------------------------------------------------------


def test_cluster_ip_service_single_unnamed_port() -> None:
    svc = parse_service(service("web", "shop", cluster_ip="10.96.0.10", ports=[port(80)]))
    assert svc is not None
    assert svc.name == ServiceName("shop", "web")
    assert svc.type is ServiceType.CLUSTER_IP
    assert svc.cluster_ip == IP("10.96.0.10")
    (p,) = svc.ports
    assert p.name == ServicePortName(ServiceName("shop", "web"), "")
    assert (p.protocol, p.port, p.cluster_ip, p.node_port) == (Protocol.TCP, 80, IP("10.96.0.10"), None)


def test_named_ports_and_protocol_default() -> None:
    obj = service("dns", ports=[port(53, name="dns", protocol="UDP"), port(53, name="dns-tcp", protocol=None)])
    svc = parse_service(obj)
    assert svc is not None
    assert [(p.name.port, p.protocol) for p in svc.ports] == [("dns", Protocol.UDP), ("dns-tcp", Protocol.TCP)]


def test_missing_type_means_cluster_ip() -> None:
    obj = service("a")
    del obj["spec"]["type"]
    svc = parse_service(obj)
    assert svc is not None and svc.type is ServiceType.CLUSTER_IP


def test_node_port_only_for_nodeport_and_loadbalancer() -> None:
    np = parse_service(service("a", type="NodePort", node_port=30080))
    lb = parse_service(service("a", type="LoadBalancer", node_port=30081))
    cip = parse_service(service("a", type="ClusterIP", node_port=30082))
    assert np is not None and np.ports[0].node_port == 30080
    assert lb is not None and lb.ports[0].node_port == 30081
    assert cip is not None and cip.ports[0].node_port is None


def test_cluster_ips_used_when_cluster_ip_missing() -> None:
    obj = service("a", cluster_ip=None)
    obj["spec"]["clusterIPs"] = ["10.96.5.5"]
    svc = parse_service(obj)
    assert svc is not None and svc.cluster_ip == IP("10.96.5.5")


def test_dual_stack_service_has_a_port_per_family() -> None:
    obj = service("a", cluster_ip="fd00::10", external_ips=["192.0.2.1", "2001:db8::1"])
    obj["spec"]["clusterIPs"] = ["fd00::10", "10.96.0.7"]
    svc = parse_service(obj)
    assert svc is not None and str(svc.cluster_ip) == "fd00::10"  # the primary
    assert [(str(p.cluster_ip), [str(i) for i in p.external_ips]) for p in svc.ports] == [
        ("fd00::10", ["2001:db8::1"]), ("10.96.0.7", ["192.0.2.1"])]


def test_ipv6_only_service() -> None:
    svc = parse_service(service("a", cluster_ip="fd00::1"))
    assert svc is not None and [p.family for p in svc.ports] == [6]


def test_ipv6_slice() -> None:
    sl = parse_endpoint_slice(endpoint_slice("web", ["fd00::1"], address_type="IPv6"))
    assert sl is not None and str(sl.endpoints[0].ip) == "fd00::1"


def test_lb_ips_from_status_only_for_loadbalancer() -> None:
    lb = parse_service(service("a", type="LoadBalancer", lb_ips=["203.0.113.1", "2001:db8::2"]))
    cip = parse_service(service("a", type="ClusterIP", lb_ips=["203.0.113.1"]))
    assert lb is not None and lb.ports[0].load_balancer_ips == (IP("203.0.113.1"),)
    assert cip is not None and cip.ports[0].load_balancer_ips == ()


def test_lb_ip_mode_proxy_is_skipped_vip_kept() -> None:
    obj = service("a", type="LoadBalancer", lb_ips=["203.0.113.1"], lb_ip_mode="Proxy")
    obj["status"]["loadBalancer"]["ingress"] += [
        {"ip": "203.0.113.2", "ipMode": "VIP"},
        {"hostname": "lb.example.com"},
    ]
    svc = parse_service(obj)
    assert svc is not None and svc.ports[0].load_balancer_ips == (IP("203.0.113.2"),)


def test_missing_namespace_defaults_to_default() -> None:
    obj = service("a")
    del obj["metadata"]["namespace"]
    svc = parse_service(obj)
    assert svc is not None and svc.name == ServiceName("default", "a")


# --- Services: skipped silently ----------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(service("a", type="ExternalName", cluster_ip=None), id="externalname"),
        pytest.param(service("a", cluster_ip="None"), id="headless-None"),
        pytest.param(service("a", cluster_ip=""), id="headless-empty"),
        pytest.param(service("a", cluster_ip=None), id="no-cluster-ip"),
        pytest.param(
            service("a", labels={"service.kubernetes.io/service-proxy-name": "other"}),
            id="service-proxy-name",
        ),
    ],
)
def test_service_skipped(obj: dict) -> None:
    assert parse_service(obj) is None


# --- Services: malformed -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda o: o["spec"].update(clusterIP="10.96.0.300"), "spec.clusterIP", "not an IP"),
        (lambda o: o["spec"].update(ports=[port(80, name="a"), port(0, name="b")]), "spec.ports[1].port", "1-65535"),
        (lambda o: o["spec"]["ports"][0].update(port=70000), "spec.ports[0].port", "1-65535"),
        (lambda o: o["spec"]["ports"][0].update(port="80"), "spec.ports[0].port", "1-65535"),
        (lambda o: o["spec"]["ports"][0].update(protocol="ICMP"), "spec.ports[0].protocol", "TCP, UDP or SCTP"),
        (lambda o: o["spec"].update(externalIPs=["1.2.3"]), "spec.externalIPs[0]", "not an IP"),
        (lambda o: o["spec"].update(type="Weird"), "spec.type", "unknown Service type"),
        (lambda o: o["metadata"].pop("name"), "metadata.name", "missing name"),
        (lambda o: o["spec"].update(ports="80"), "spec.ports", "must be a list"),
    ],
)
def test_service_invalid(mutate, field: str, fragment: str) -> None:
    obj = service("web", "shop")
    mutate(obj)
    with pytest.raises(InvalidObject) as info:
        parse_service(obj)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.kind == "Service"
    assert err.field == field
    assert fragment in err.message
    assert "\n" not in str(err)
    if field != "metadata.name":
        assert err.key == "shop/web"
        assert str(err).startswith(f"Service shop/web: {field}: ")


def test_service_invalid_node_port() -> None:
    obj = service("a", type="NodePort", ports=[port(80, name="a"), port(81, name="b", node_port=99999)])
    with pytest.raises(InvalidObject) as info:
        parse_service(obj)
    assert info.value.field == "spec.ports[1].nodePort"


def test_service_invalid_lb_ip() -> None:
    obj = service("a", type="LoadBalancer", lb_ips=["203.0.113.999"])
    with pytest.raises(InvalidObject) as info:
        parse_service(obj)
    assert info.value.field == "status.loadBalancer.ingress[0].ip"


def test_service_several_ports_need_unique_names() -> None:
    with pytest.raises(InvalidObject) as info:
        parse_service(service("a", ports=[port(80), port(81)]))
    assert info.value.field == "spec.ports[0].name"
    with pytest.raises(InvalidObject) as info:
        parse_service(service("a", ports=[port(80, name="x"), port(81, name="x")]))
    assert info.value.field == "spec.ports[1].name"


# --- EndpointSlices ----------------------------------------------------------------------


def test_slice_basic() -> None:
    obj = endpoint_slice("web", ["10.1.0.1", "10.1.0.2"], ns="shop", port=8080, port_name="http", node="n1")
    sl = parse_endpoint_slice(obj)
    assert sl is not None
    assert (sl.namespace, sl.name, sl.service) == ("shop", "web-abc12", ServiceName("shop", "web"))
    assert [(p.name, p.port, p.protocol) for p in sl.ports] == [("http", 8080, Protocol.TCP)]
    assert sl.endpoints == (
        SliceEndpoint(ip=IP("10.1.0.1"), node_name="n1"),
        SliceEndpoint(ip=IP("10.1.0.2"), node_name="n1"),
    )


def test_slice_port_defaults_and_null_port_skipped() -> None:
    obj = endpoint_slice(
        "web",
        ["10.1.0.1"],
        ports=[{"port": 80}, {"name": None, "port": 81, "protocol": "UDP"}, {"name": "x", "port": None}],
    )
    sl = parse_endpoint_slice(obj)
    assert sl is not None
    assert [(p.name, p.port, p.protocol) for p in sl.ports] == [("", 80, Protocol.TCP), ("", 81, Protocol.UDP)]


def test_slice_condition_defaults() -> None:
    nil = {"addresses": ["10.1.0.1"]}  # no conditions at all
    not_ready = {"addresses": ["10.1.0.2"], "conditions": {"ready": False}}
    term = endpoint("10.1.0.3", ready=False, serving=True, terminating=True, node="n2", zone="z1")
    sl = parse_endpoint_slice(endpoint_slice("web", [nil, not_ready, term]))
    assert sl is not None
    e_nil, e_not_ready, e_term = sl.endpoints
    assert (e_nil.ready, e_nil.serving, e_nil.terminating) == (True, True, False)
    # serving nil: the v1 API and upstream's endpointslicecache read it as true.
    assert (e_not_ready.ready, e_not_ready.serving, e_not_ready.terminating) == (False, True, False)
    assert (e_term.ready, e_term.serving, e_term.terminating) == (False, True, True)
    assert (e_term.node_name, e_term.zone) == ("n2", "z1")
    assert e_nil.node_name is None and e_nil.zone is None


def test_slice_each_address_becomes_an_endpoint() -> None:
    ep = endpoint("10.1.0.1", node="n1")
    ep["addresses"].append("10.1.0.9")
    sl = parse_endpoint_slice(endpoint_slice("web", [ep, {"addresses": []}]))
    assert sl is not None
    assert [e.ip for e in sl.endpoints] == [IP("10.1.0.1"), IP("10.1.0.9")]
    assert all(e.node_name == "n1" for e in sl.endpoints)


def test_slice_null_endpoints_and_ports() -> None:
    obj = endpoint_slice("web")
    obj["endpoints"] = None
    obj["ports"] = None
    sl = parse_endpoint_slice(obj)
    assert sl is not None and sl.endpoints == () and sl.ports == ()


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(endpoint_slice("web", ["a.example"], address_type="FQDN"), id="fqdn"),
        pytest.param(
            endpoint_slice("web", ["10.1.0.1"], labels={"service.kubernetes.io/service-proxy-name": "x"}),
            id="service-proxy-name",
        ),
        pytest.param(
            endpoint_slice("web", ["10.1.0.1"], labels={"service.kubernetes.io/headless": ""}),
            id="headless",
        ),
    ],
)
def test_slice_skipped(obj: dict) -> None:
    assert parse_endpoint_slice(obj) is None


def test_slice_without_service_label_skipped() -> None:
    obj = endpoint_slice("web", ["10.1.0.1"])
    del obj["metadata"]["labels"]["kubernetes.io/service-name"]
    assert parse_endpoint_slice(obj) is None


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda o: o["endpoints"][1]["addresses"].__setitem__(0, "10.1.0"), "endpoints[1].addresses[0]", "not an IP"),
        (lambda o: o["endpoints"][0]["addresses"].__setitem__(0, "fd00::1"), "endpoints[0].addresses[0]", "IPv4"),
        (lambda o: o["ports"][0].update(port=65536), "ports[0].port", "1-65535"),
        (lambda o: o["ports"][0].update(protocol="tcp"), "ports[0].protocol", "TCP, UDP or SCTP"),
        (lambda o: o["metadata"].update(name=""), "metadata.name", "missing name"),
        (lambda o: o["endpoints"].append("10.1.0.3"), "endpoints[2]", "must be an object"),
    ],
)
def test_slice_invalid(mutate, field: str, fragment: str) -> None:
    obj = endpoint_slice("web", ["10.1.0.1", "10.1.0.2"], ns="shop", name="web-x")
    mutate(obj)
    with pytest.raises(InvalidObject) as info:
        parse_endpoint_slice(obj)
    err = info.value
    assert (err.kind, err.field) == ("EndpointSlice", field)
    assert fragment in err.message
    if field != "metadata.name":
        assert err.key == "shop/web-x"
        assert str(err) == f"EndpointSlice shop/web-x: {field}: {err.message}"


@pytest.mark.parametrize("entry", [
    {"addresses": ["10.244.1.2"]},
    {"addresses": ["10.244.1.2", "10.244.1.3"], "conditions": {"ready": False, "serving": True,
                                                               "terminating": True}},
    {"addresses": ["10.244.1.2"], "conditions": {}, "nodeName": "node1", "zone": "a"},
    {"addresses": ["10.244.1.2"], "conditions": None, "nodeName": "", "zone": None},
    {"addresses": []},
])
def test_the_fast_path_for_plain_endpoints_reads_them_as_the_checked_path(entry: dict) -> None:
    fast = parse._plain_endpoints([entry, entry], 4)
    ctx = parse._Ctx("EndpointSlice", {"metadata": {"name": "web-1"}})
    assert fast is not None and fast == parse._endpoints(ctx, "endpoints[0]", entry, 4, "IPv4") * 2


@pytest.mark.parametrize("entry", [
    {"addresses": ["10.244.1.2"], "conditions": {"ready": 0}},  # 0 == False, but no boolean
    {"addresses": ["10.244.1.2"], "hints": []},
    {"addresses": ["fd00::1"]},
    {"addresses": "10.244.1.2"},
    {"addresses": ["10.244.1.2"], "nodeName": 7},
    {"addresses": ["10.1"]},
])
def test_anything_unusual_takes_the_checked_path(entry: dict) -> None:
    assert parse._plain_endpoints([{"addresses": ["10.244.1.1"]}, entry], 4) is None
