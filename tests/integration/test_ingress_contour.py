"""Kubernetes routes to the VMs (issue 13): a real Contour ingress consumes what the collection registers.

Contour v1.33.8 (`contour serve`, built from its Go module by tests/harness/build-contour.sh) and Envoy from the
wheel run on the controller against the harness kube-apiserver (tests/harness/contour.py). The lab VMs run the
stand-in legacy app on 127.0.0.1:8080 with the collection's Envoy in front of it on :10000, onboarded by the
runbooks (lab_app.yml, envoy.yml, register.yml, deregister.yml) as an operator would. Every request of these tests
goes through Contour's Envoy (Host header), the way Kubernetes routes it (docs/data-path.md).

Run under the lab lock: flock /var/tmp/fleetmesh-lab.lock pytest tests/integration/test_ingress_contour.py
"""

from __future__ import annotations

import functools
import importlib
import json
import socket
import ssl
import time
from collections import Counter

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest

from tests.integration import ingressutil
from tests.integration.labutil import LAB_HOSTS, extra, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow]
contour_ingress = importlib.import_module("contour_pytest").contour_ingress  # the fixture (tests/harness)
NS = "fleet-lab"  # inventories/lab/group_vars/web.yml
FQDN = "web.fleet.example"
ONLY_VMS = "web-vms.fleet.example"
OWNED = "app.kubernetes.io/managed-by=fleetmesh.envoy"
RETRY = {"count": 3, "retry_on": ["5xx", "reset", "connect-failure", "refused-stream"]}
HTTPPROXIES = [{"name": "web", "namespace": NS, "fqdn": FQDN,
                "routes": [{"prefix": "/", "services": [{"name": "web"}], "retry_policy": RETRY}]}]
BY_ADDRESS = {ip: host for host, ip in LAB_HOSTS.items()}
Load = functools.partial(ingressutil.Load, host=FQDN)  # requests through the ingress (tests/integration/ingressutil.py)


def sample(ingress, n: int = 60, host: str = FQDN) -> tuple[Counter[str], list[str]]:
    seen: Counter[str] = Counter()
    bad = []
    for _attempt in range(n):
        status, body, _h = ingress.get("/", host=host)
        if status == 200 and body.startswith("hello from "):
            seen[body.split()[-1]] += 1
        else:
            bad.append(f"{status} {body[:160]}")
    return seen, bad


def wait_for(what: str, probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.3)


def owned_items(api: kubeapi.KubeAPI, api_version: str, kind: str) -> list[dict]:
    """Every object of a kind the collection registered in the lab's namespaces (other tests use fake addresses)."""
    plural = api._resources(api_version)[kind][0]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    status, body = api.request("GET", f"{prefix}/{plural}?labelSelector={OWNED}")
    assert status == 200, body
    return [i for i in body["items"] if i["metadata"]["namespace"] in (NS, NS + "-we")]  # the lab's namespaces


def registration(api: kubeapi.KubeAPI, **more) -> list[str]:
    return list(extra(fleetmesh_kubeconfig=str(api.registrar_kubeconfig),
                      mesh_registration_shapes=["endpointslice", "httpproxy"],
                      mesh_registration_httpproxies=HTTPPROXIES, **more))


def ok(run, what: str):
    assert run.rc == 0, f"{what} failed:\n{run.out[-5000:]}"
    return run


@pytest.fixture(scope="module")
def lab(kube_api):
    lab_up(3)
    for ns in (NS, NS + "-we"):
        kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    ok(playbook("lab_app.yml"), "lab_app.yml")
    ok(playbook("envoy.yml"), "envoy.yml")
    ok(playbook("register.yml", *registration(kube_api)), "register.yml")
    return kube_api


def test_every_registered_endpoint_accepts_a_connection_from_the_controller(lab):
    # Two more registration sets of the same VMs, in the other shapes: ServiceEntry, and WorkloadEntry + Service.
    ok(playbook("register.yml", *extra(fleetmesh_kubeconfig=str(lab.registrar_kubeconfig),
                                       mesh_registration_set="lab-se", mesh_registration_shapes=["serviceentry"])),
       "register.yml (serviceentry)")
    ok(playbook("register.yml", *extra(fleetmesh_kubeconfig=str(lab.registrar_kubeconfig),
                                       mesh_registration_set="lab-we", fleetmesh_namespace=NS + "-we",
                                       mesh_registration_shapes=["workloadentry"])), "register.yml (workloadentry)")
    for item in owned_items(lab, "v1", "Service"):
        for port in item["spec"]["ports"]:
            assert port["port"] == 8080 and port["targetPort"] == 10000, item["metadata"]["name"]
    targets = registered_endpoints(lab)
    for kind in ("EndpointSlice", "ServiceEntry", "WorkloadEntry"):
        assert {a for a, _p in targets.get(kind, set())} >= set(LAB_HOSTS.values()), (kind, targets)
    assert_every_registered_endpoint_accepts_a_connection(lab, at_least=9)


def registered_endpoints(api: kubeapi.KubeAPI) -> dict[str, set[tuple[str, int]]]:
    """kind -> every (address, port) that the collection's objects in the lab's namespaces register."""
    targets: dict[str, set[tuple[str, int]]] = {}
    for item in owned_items(api, "discovery.k8s.io/v1", "EndpointSlice"):
        ports = [p["port"] for p in item["ports"]]
        for ep in item["endpoints"]:
            targets.setdefault("EndpointSlice", set()).update((a, p) for a in ep["addresses"] for p in ports)
    for item in owned_items(api, "networking.istio.io/v1", "ServiceEntry"):
        for ep in item["spec"].get("endpoints") or []:
            targets.setdefault("ServiceEntry", set()).update((ep["address"], p) for p in ep["ports"].values())
    for item in owned_items(api, "networking.istio.io/v1", "WorkloadEntry"):
        targets.setdefault("WorkloadEntry", set()).update(
            (item["spec"]["address"], p) for p in item["spec"]["ports"].values())
    return targets


def assert_every_registered_endpoint_accepts_a_connection(api: kubeapi.KubeAPI, at_least: int) -> int:
    """Walk every registered object of the lab's namespaces: each address:port accepts a TCP connection."""
    refused = []
    checked = 0
    for kind, pairs in sorted(registered_endpoints(api).items()):
        for address, port in sorted(pairs):
            checked += 1
            with socket.socket() as sock:
                sock.settimeout(3)
                if sock.connect_ex((address, port)) != 0:
                    refused.append(f"{kind} {address}:{port}")
    assert not refused, f"registered endpoints that refuse connections from the controller: {refused}"
    assert checked >= at_least, checked
    return checked


def test_httpproxy_is_valid_and_requests_reach_every_vm(lab, contour_ingress):
    contour_ingress.wait_proxy_status(NS, "web", "valid")
    contour_ingress.wait_route("/", FQDN)
    wait_for("Envoy sends to all three VMs", lambda: len(contour_ingress.upstream_health(NS, "web", 8080)) == 3)
    assert {addr.split(":")[1] for addr in contour_ingress.upstream_health(NS, "web", 8080)} == {"10000"}
    seen, bad = sample(contour_ingress, 90)
    assert bad == [] and set(seen) == set(LAB_HOSTS), (seen, bad)


def _receives(ingress, vm: str, n: int = 45) -> bool:
    seen, bad = sample(ingress, n)
    assert bad == [], bad
    return seen[vm] > 0


def test_a_vm_marked_not_healthy_stops_receiving_traffic_without_a_failed_request(lab, contour_ingress):
    contour_ingress.wait_route("/", FQDN)
    vm = "fm-deb-1"
    with Load(contour_ingress) as load:
        ok(playbook("register.yml", "--limit", vm, *registration(lab, mesh_registration_healthy=False)),
           "register.yml not healthy")
        wait_for(f"{vm} out of Envoy's endpoints", lambda: f"{LAB_HOSTS[vm]}:10000" not in
                 contour_ingress.upstream_health(NS, "web", 8080))
        before = load.mark()
        time.sleep(2)
        after = load.mark()
        ok(playbook("register.yml", *registration(lab)), "register.yml healthy again")
        wait_for(f"{vm} back", lambda: _receives(contour_ingress, vm))
    assert after[vm] == before[vm], f"{vm} still got requests after it was marked not ready: {before} -> {after}"
    assert load.failed == 0, load.errors
    assert sum(load.by_vm.values()) > 100


def test_a_deregistered_vm_stops_receiving_traffic_without_a_failed_request(lab, contour_ingress):
    vm = "fm-deb-2"
    with Load(contour_ingress) as load:
        run = ok(playbook("deregister.yml", "--limit", vm, *registration(lab)), "deregister.yml")
        wait_for(f"{vm} out of Envoy's endpoints", lambda: f"{LAB_HOSTS[vm]}:10000" not in
                 contour_ingress.upstream_health(NS, "web", 8080))
        before = load.mark()
        time.sleep(2)
        after = load.mark()
        ok(playbook("register.yml", *registration(lab)), "register.yml again")
        wait_for(f"{vm} back", lambda: _receives(contour_ingress, vm))
    assert after[vm] == before[vm], f"{vm} still got requests after deregistration: {before} -> {after}"
    assert load.failed == 0, load.errors
    assert "absent run" in run.out
    again = ok(playbook("register.yml", *registration(lab)), "register.yml a second time")
    assert again.changed() == 0, again.out[-3000:]


def test_a_killed_vm_stops_receiving_traffic_by_active_health_check_without_a_failed_request(lab, contour_ingress):
    vm = "fm-el-1"
    unit = "fleetmesh-envoy@main.service"
    with Load(contour_ingress) as load:
        time.sleep(1)
        killed = on_hosts(f"systemctl kill --signal=SIGKILL {unit}; systemctl stop {unit}; echo killed", vm)
        assert "killed" in killed.get(vm, ""), killed
        # Envoy checks a new cluster's hosts at its no-traffic interval (60 s) until the next check after traffic.
        wait_for(f"{vm} failing Envoy's active health check", lambda: "failed_active_health_check" in
                 contour_ingress.upstream_health(NS, "web", 8080).get(f"{LAB_HOSTS[vm]}:10000", []), timeout=90)
        before = load.mark()
        time.sleep(2)
        after = load.mark()
        on_hosts(f"systemctl start {unit}", vm)
        wait_for(f"{vm} back", lambda: _receives(contour_ingress, vm), timeout=60)
    assert after[vm] == before[vm], f"{vm} still got requests after it died: {before} -> {after}"
    assert load.failed == 0, load.errors
    # Registration was not touched: the VM stayed registered and ready all along.
    items = owned_items(lab, "discovery.k8s.io/v1", "EndpointSlice")
    assert any(LAB_HOSTS[vm] in ep["addresses"] and ep["conditions"]["ready"]
               for item in items for ep in item["endpoints"])


def test_the_last_host_leaving_leaves_no_httpproxy_pointing_at_a_deleted_service(lab, contour_ingress):
    # The Kubernetes side of the split: a stand-in for pods (the harness has no kubelet), a selector-less Service
    # and an EndpointSlice written as the endpoint controller would, backed by fm-el-1's Envoy.
    lab.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-k8s", "namespace": NS},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 10000, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-k8s-standin", "namespace": NS,
                      "labels": {"kubernetes.io/service-name": "web-k8s",
                                 "endpointslice.kubernetes.io/managed-by": "fleetmesh-test-standin"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 10000, "protocol": "TCP"}],
         "endpoints": [{"addresses": [LAB_HOSTS["fm-el-1"]], "conditions": {"ready": True}}]},
    ])
    split = {"prefix": "/", "retry_policy": RETRY,
             "services": [{"name": "web", "weight": 50}, {"name": "web-k8s", "port": 80, "weight": 50}]}
    proxies = [{"name": "web", "namespace": NS, "fqdn": FQDN, "routes": [split]},
               {"name": "web-vms", "namespace": NS, "fqdn": ONLY_VMS,
                "routes": [{"prefix": "/", "services": [{"name": "web"}]}]}]
    args = registration(lab)[:1] + [json.dumps(dict(json.loads(registration(lab)[1]),
                                                    mesh_registration_httpproxies=proxies))]
    ok(playbook("register.yml", *args), "register.yml with the split")
    for name in ("web", "web-vms"):
        contour_ingress.wait_proxy_status(NS, name, "valid")
    contour_ingress.wait_route("/", ONLY_VMS)
    wait_for("the split reaches VMs and the stand-in", lambda: len(sample(contour_ingress, 30)[0]) == 3)

    with Load(contour_ingress) as load:
        run = ok(playbook("deregister.yml", *args, *extra(deregister_all=True)), "deregister.yml (all)")
        wait_for("only the stand-in answers", lambda: set(sample(contour_ingress, 20)[0]) == {"fm-el-1"})
    assert load.failed == 0, load.errors
    said = " ".join(run.out.split())  # the play says what it did (the callback wraps long lines)
    assert "HTTPProxy fleet-lab/web: route / no longer sends to web (no host left); it keeps web-k8s" in said
    assert "HTTPProxy fleet-lab/web-vms: no route left, so the HTTPProxy is deleted" in said
    again = ok(playbook("deregister.yml", *args, *extra(deregister_all=True)), "deregister.yml (all) again")
    assert again.changed() == 0, again.out[-3000:]
    assert contour_ingress.proxy_status(NS, "web")["currentStatus"] == "valid"
    status, _body = lab.request("GET", lab.resource_path("projectcontour.io/v1", "HTTPProxy", "web-vms", NS))
    assert status == 404
    status, _body = lab.request("GET", lab.resource_path("v1", "Service", "web", NS))
    assert status == 404
    live = lab.request("GET", lab.resource_path("projectcontour.io/v1", "HTTPProxy", "web", NS))[1]
    assert [s["name"] for s in live["spec"]["routes"][0]["services"]] == ["web-k8s"]

    # A complete run whose inventory still names the service keeps it out while it has no host ...
    # (here: the hosts come back, so the route to them does too, and the VM-only HTTPProxy is created again)
    ok(playbook("register.yml", *args), "register.yml again")
    for name in ("web", "web-vms"):
        contour_ingress.wait_proxy_status(NS, name, "valid")
    wait_for("the split is back", lambda: len(sample(contour_ingress, 30)[0]) == 3)
    # Leave the lab as the other tests expect it: only the plain route, no stand-in.
    ok(playbook("register.yml", *registration(lab)), "register.yml plain")
    for kind, name in (("Service", "web-k8s"), ("EndpointSlice", "web-k8s-standin")):
        version = "v1" if kind == "Service" else "discovery.k8s.io/v1"
        lab.request("DELETE", lab.resource_path(version, kind, name, NS))


# --------------------------------------------------------------------------------------------------
# Protocols: gRPC over h2c, and TLS from the ingress to the VMs' Envoy (workload certificates, upstream validation).
# The VMs' Envoy gets two more listeners next to :10000: h2c on :10001 in front of the lab's gRPC app
# (tools/lab/grpc_hello.py on 127.0.0.1:9090), and TLS on :10443 with the collection's workload certificate (issued
# by rotate_certs.yml with the DNS SAN Contour checks) in front of the HTTP app. A registration set of its own
# (service greeter, ports grpc 9090 -> 10001 and https 8443 -> 10443) and one HTTPProxy route on the gRPC path prefix
# (protocol h2c) and one on / (protocol tls, validation caSecret + subjectName).
# --------------------------------------------------------------------------------------------------

GREETER = "greeter.fleet.example"
WRONG_NAME = "greeter-wrong-name.fleet.example"
SAN = "web.fleet-lab.svc"  # a DNS name of the VMs' own service (workload_certs_sans): what subjectName matches
CA_SECRET = "fleet-lab-workload-ca"
ENVOY_PROTOCOLS = {
    "envoy_listeners": [
        {"name": "ingress", "address": "0.0.0.0", "port": 10000, "routes": [{"prefix": "/", "cluster": "local_app"}]},
        {"name": "grpc", "address": "0.0.0.0", "port": 10001, "routes": [{"prefix": "/", "cluster": "local_grpc"}]},
        {"name": "https", "address": "0.0.0.0", "port": 10443,
         "tls": {"cert_dir": "/etc/certs", "require_client_cert": False},
         "routes": [{"prefix": "/", "cluster": "local_app"}]}],
    "envoy_clusters": [
        {"name": "local_app", "endpoints": [{"address": "127.0.0.1", "port": 8080}]},
        {"name": "local_grpc", "http2": True, "endpoints": [{"address": "127.0.0.1", "port": 9090}]}],
}


def protocol_registration(api: kubeapi.KubeAPI) -> dict:
    return {"fleetmesh_kubeconfig": str(api.registrar_kubeconfig), "mesh_registration_set": "lab-protocols",
            "fleetmesh_service": "greeter", "fleetmesh_ports": {"grpc": 9090, "https": 8443},
            "mesh_registration_endpoint_ports": {"grpc": 10001, "https": 10443},
            "mesh_registration_shapes": ["endpointslice", "httpproxy"],
            "mesh_registration_httpproxies": [{"name": "greeter", "namespace": NS, "fqdn": GREETER, "routes": [
                {"prefix": "/fleetmesh.lab.Greeter/", "retry_policy": ingressutil.GRPC_RETRY,
                 "services": [{"name": "greeter", "port": 9090, "protocol": "h2c"}]},
                {"prefix": "/", "retry_policy": RETRY,
                 "services": [{"name": "greeter", "port": 8443, "protocol": "tls",
                               "validation": {"caSecret": CA_SECRET, "subjectName": SAN}}]}]}]}


def issue_certs(ca_dir, lifetime: str, renew_before: str = ""):
    return ok(playbook("rotate_certs.yml", *extra(rotate_certs_hosts="lab", workload_certs_lab_ca_dir=str(ca_dir),
                                                  workload_certs_sans=[SAN], workload_certs_lifetime=lifetime,
                                                  workload_certs_renew_before=renew_before)),
              f"rotate_certs.yml (lifetime {lifetime}, renew_before {renew_before or 'a third of it'})")


@pytest.fixture(scope="module")
def protocols(lab, contour_ingress, tmp_path_factory):
    ca_dir = tmp_path_factory.mktemp("protocols-ca") / "ca"
    issue_certs(ca_dir, "1d")
    ok(playbook("envoy.yml", *extra(**ENVOY_PROTOCOLS)), "envoy.yml (h2c and TLS listeners)")
    lab.apply([{"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": CA_SECRET, "namespace": NS},
                "stringData": {"ca.crt": (ca_dir / "root-cert.pem").read_text()}}])
    ok(playbook("register.yml", *extra(**protocol_registration(lab))), "register.yml (greeter)")
    contour_ingress.wait_proxy_status(NS, "greeter", "valid")
    yield ca_dir
    ok(playbook("deregister.yml", *extra(**protocol_registration(lab), deregister_all=True)),
       "deregister.yml (greeter)")
    ok(playbook("envoy.yml"), "envoy.yml (the lab's default listener again)")


def cluster_stat(ingress, service_port: str, stat: str) -> int:
    """A stat of Contour's Envoy clusters of a Service port ("greeter/9090"; Envoy names their stats
    cluster.<namespace>_<service>_<port>)."""
    prefix = f"cluster.{NS}_{service_port.replace('/', '_')}."
    text = ingress.admin(f"/stats?filter={stat}")
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and line.split(":", 1)[0] == prefix + stat)


def test_grpc_over_h2c_through_the_ingress_reaches_every_vm(protocols, lab, contour_ingress):
    # The walk again, now with the h2c and TLS endpoints (:10001, :10443) of every VM registered too.
    targets = registered_endpoints(lab)["EndpointSlice"]
    assert {(ip, port) for ip in LAB_HOSTS.values() for port in (10001, 10443)} <= targets, targets
    assert_every_registered_endpoint_accepts_a_connection(lab, at_least=len(targets))
    by_vm, failed = ingressutil.grpc_calls(contour_ingress, GREETER, count=30)
    assert failed == [] and set(by_vm) == set(LAB_HOSTS), (by_vm, failed)
    # Contour's Envoy spoke HTTP/2 cleartext to each VM's h2c listener (not HTTP/1.1, which gRPC cannot use).
    assert cluster_stat(contour_ingress, "greeter/9090", "upstream_cx_http2_total") > 0
    assert {a.split(":")[1] for a in contour_ingress.upstream_health(NS, "greeter", 9090)} == {"10001"}


def test_tls_to_the_vm_envoy_with_workload_certificates_and_upstream_validation(protocols, contour_ingress):
    contour_ingress.wait_route("/", GREETER)
    seen, bad = sample(contour_ingress, 45, host=GREETER)
    assert bad == [] and set(seen) == set(LAB_HOSTS), (seen, bad)
    assert cluster_stat(contour_ingress, "greeter/8443", "ssl.handshake") > 0
    assert {a.split(":")[1] for a in contour_ingress.upstream_health(NS, "greeter", 8443)} == {"10443"}
    # Validation is real: the same upstream with a subjectName the VMs' certificates do not carry is refused.
    contour_ingress.api.apply([{
        "apiVersion": "projectcontour.io/v1", "kind": "HTTPProxy",
        "metadata": {"name": "greeter-wrong-name", "namespace": NS},
        "spec": {"virtualhost": {"fqdn": WRONG_NAME}, "routes": [{"services": [{
            "name": "greeter", "port": 8443, "protocol": "tls",
            "validation": {"caSecret": CA_SECRET, "subjectName": "someone-else.fleet-lab.svc"}}]}]}}])
    try:
        contour_ingress.wait_proxy_status(NS, "greeter-wrong-name", "valid")
        status, body, _h = contour_ingress.wait_route("/", WRONG_NAME, want=lambda r: r[0] != 404)
        assert status == 503, (status, body)
        # The first 503s can come before the new cluster's first handshake (no healthy upstream yet, under load):
        # every answer stays 503 until a handshake has failed on the SAN.
        deadline = time.monotonic() + 60
        while cluster_stat(contour_ingress, "greeter/8443", "ssl.fail_verify_san") == 0:
            assert time.monotonic() < deadline, "no TLS handshake failed on the SAN within 60 s of the first 503"
            status, body, _h = contour_ingress.wait_route("/", WRONG_NAME, want=lambda r: r[0] != 404)
            assert status == 503, (status, body)
            time.sleep(1)
    finally:
        contour_ingress.api.request("DELETE", contour_ingress.api.resource_path(
            "projectcontour.io/v1", "HTTPProxy", "greeter-wrong-name", NS))


class DirectTLS(ingressutil.Loop):
    """HTTPS requests straight to each VM's TLS listener, verifying its workload certificate as Contour does."""

    def __init__(self, ca_file, max_seconds: float = 300):
        context = ssl.create_default_context(cafile=str(ca_file))

        def probe(i: int) -> tuple[bool, str]:
            address = list(LAB_HOSTS.values())[i % len(LAB_HOSTS)]
            try:
                with socket.create_connection((address, 10443), timeout=5) as raw, \
                        context.wrap_socket(raw, server_hostname=SAN) as tls:
                    tls.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := tls.recv(4096):
                        data += chunk
                answer = data.decode(errors="replace")
                return answer.startswith("HTTP/1.1 200") and "hello from " in answer, f"{address}: {answer[:120]}"
            except OSError as err:
                return False, f"{address}: {err!r}"

        super().__init__(probe, max_seconds=max_seconds)


def test_rotate_certs_under_load_drops_nothing_through_the_ingress_or_directly(protocols, contour_ingress):
    ca_dir = protocols
    serial = "openssl x509 -noout -serial -in /etc/certs/cert-chain.pem"
    before = on_hosts(serial)
    with Load(contour_ingress) as plain, ingressutil.Load(contour_ingress, GREETER) as tls, \
            DirectTLS(ca_dir / "root-cert.pem") as direct:
        time.sleep(1)
        # Less than renew_before (2 days) is left of every 1-day certificate: each is re-issued, Envoy hot-restarted.
        run = issue_certs(ca_dir, "4d", renew_before="2d")
        time.sleep(7)  # across the drain of the old epochs (envoy_drain_seconds 5)
    after = on_hosts(serial)
    assert set(before) == set(after) == set(LAB_HOSTS), (before, after)
    assert all(before[h] != after[h] for h in LAB_HOSTS), (before, after)
    assert "fleetmesh-envoy@main.service" in run.out
    for name, load in (("through the ingress (HTTP)", plain), ("through the ingress (TLS upstream)", tls),
                       ("directly (TLS)", direct)):
        assert load.failed == 0, (name, load.errors)
        assert load.ok > 50, (name, load.ok)
    # The ingress validates the new certificates too.
    seen, bad = sample(contour_ingress, 30, host=GREETER)
    assert bad == [] and set(seen) == set(LAB_HOSTS), (seen, bad)
