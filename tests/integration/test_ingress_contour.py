"""Kubernetes routes to the VMs (issue 13): a real Contour ingress consumes what the collection registers.

Contour v1.33.8 (`contour serve`, built from its Go module by tests/harness/build-contour.sh) and Envoy from the
wheel run on the controller against the harness kube-apiserver (tests/harness/contour.py). The lab VMs run the
stand-in legacy app on 127.0.0.1:8080 with the collection's Envoy in front of it on :10000, onboarded by the
runbooks (lab_app.yml, envoy.yml, register.yml, deregister.yml) as an operator would. Every request of these tests
goes through Contour's Envoy (Host header), the way Kubernetes routes it (docs/data-path.md).

Run under the lab lock: flock /var/tmp/fleetmesh-lab.lock pytest tests/integration/test_ingress_contour.py
"""

from __future__ import annotations

import importlib
import json
import socket
import threading
import time
from collections import Counter

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest

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


class Load:
    """Requests through the ingress in a loop (Host header); counts answers per VM and failures."""

    def __init__(self, ingress, host: str = FQDN, pause: float = 0.01, max_seconds: float = 300):
        self.ingress, self.host, self.pause, self.max_seconds = ingress, host, pause, max_seconds
        self.by_vm: Counter[str] = Counter()
        self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def _run(self):
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            status, body, _h = self.ingress.get("/", host=self.host)
            with self._lock:
                if status == 200 and body.startswith("hello from "):
                    self.by_vm[body.split()[-1]] += 1
                else:
                    self.failed += 1
                    if len(self.errors) < 20:
                        self.errors.append(f"{status} {body[:160]}")
            time.sleep(self.pause)

    def mark(self) -> Counter[str]:
        with self._lock:
            return Counter(self.by_vm)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


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
    targets: dict[str, set[tuple[str, int]]] = {}
    for item in owned_items(lab, "discovery.k8s.io/v1", "EndpointSlice"):
        ports = [p["port"] for p in item["ports"]]
        for ep in item["endpoints"]:
            targets.setdefault("EndpointSlice", set()).update((a, p) for a in ep["addresses"] for p in ports)
    for item in owned_items(lab, "networking.istio.io/v1", "ServiceEntry"):
        for ep in item["spec"].get("endpoints") or []:
            targets.setdefault("ServiceEntry", set()).update((ep["address"], p) for p in ep["ports"].values())
    for item in owned_items(lab, "networking.istio.io/v1", "WorkloadEntry"):
        targets.setdefault("WorkloadEntry", set()).update(
            (item["spec"]["address"], p) for p in item["spec"]["ports"].values())
    for item in owned_items(lab, "v1", "Service"):
        for port in item["spec"]["ports"]:
            assert port["port"] == 8080 and port["targetPort"] == 10000, item["metadata"]["name"]
    for kind in ("EndpointSlice", "ServiceEntry", "WorkloadEntry"):
        assert {a for a, _p in targets.get(kind, set())} >= set(LAB_HOSTS.values()), (kind, targets)
    refused = []
    checked = 0
    for kind, pairs in sorted(targets.items()):
        for address, port in sorted(pairs):
            checked += 1
            with socket.socket() as sock:
                sock.settimeout(3)
                if sock.connect_ex((address, port)) != 0:
                    refused.append(f"{kind} {address}:{port}")
    assert not refused, f"registered endpoints that refuse connections from the controller: {refused}"
    assert checked >= 9


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
