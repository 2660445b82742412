"""fleetmesh.envoy.mesh_registration against a real kube-apiserver (tests/harness): every shape read back
field by field, no-op re-runs, deregistration, ownership, conflicts, RBAC and bad input.

The module runs as Ansible runs it on the controller (its file executed by Python with the arguments
file), most tests with the least-privilege registrar kubeconfig; the role, check mode and diff are run
through ansible-playbook in tests/integration/test_registration_playbooks.py.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
import yaml

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins" / "modules" / "mesh_registration.py"
COLLECTIONS = REPO / ".build" / "collections"
OWNED = "app.kubernetes.io/managed-by=fleetmesh.envoy"
KINDS = {
    "Service": "v1",
    "Endpoints": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "WorkloadEntry": "networking.istio.io/v1",
    "WorkloadGroup": "networking.istio.io/v1",
    "ServiceEntry": "networking.istio.io/v1",
    "HTTPProxy": "projectcontour.io/v1",
}


# -- helpers -----------------------------------------------------------------------------------


def run_module(args: dict[str, Any], tmp_path: Path, check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Run the module file like Ansible does on the controller; return its JSON result."""
    args_file = tmp_path / f"args-{uuid.uuid4().hex[:8]}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check,
                                                                 _ansible_diff=diff)}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"module printed no JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None
    result["_stdout"] = proc.stdout
    return result


def ep(host: str, address: str, service: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return dict({"host": host, "address": address, "service": service, "namespace": namespace,
                 "ports": {"http": 9080}}, **extra)


def get(api: kubeapi.KubeAPI, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    status, body = api.request("GET", api.resource_path(KINDS[kind], kind, name, namespace))
    assert status in (200, 404), body
    return body if status == 200 else None


def owned(api: kubeapi.KubeAPI, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object carrying the ownership label in the namespace, by (kind, name)."""
    out = {}
    for kind, version in KINDS.items():
        status, body = api.request("GET", api.resource_path(version, kind, None, namespace) + f"?labelSelector={OWNED}")
        assert status == 200, body
        for item in body["items"]:
            out[(kind, item["metadata"]["name"])] = item
    return out


def versions(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {k: o["metadata"]["resourceVersion"] for k, o in objs.items()}


def ownership(registration: str, service: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/managed-by": "fleetmesh.envoy", "fleetmesh.envoy/registration": registration}
    if service:
        labels["fleetmesh.envoy/service"] = service
    return labels


@pytest.fixture
def ns(kube_api: kubeapi.KubeAPI) -> str:
    name = f"reg-{uuid.uuid4().hex[:8]}"
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    return name


@pytest.fixture
def registrar(kube_api: kubeapi.KubeAPI) -> dict[str, Any]:
    return {"kubeconfig": str(kube_api.registrar_kubeconfig)}


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    return result


def assert_noop(result: dict[str, Any]) -> None:
    """Nothing changed, and no write was even tried: discovery and one list per kind (7) only."""
    ok(result)
    assert result["changed"] is False and result["objects"] == []
    assert result["counts"]["created"] == result["counts"]["updated"] == result["counts"]["deleted"] == 0
    assert result["requests"] <= 12, result["requests"]


# -- shapes, read back -------------------------------------------------------------------------


def test_workloadentry_shape_created_read_back_and_unchanged_on_rerun(kube_api, ns, registrar, tmp_path):
    endpoints = [
        ep("vm-1", "192.0.2.10", "reviews", ns, labels={"app": "reviews", "version": "v1"}, network="vm-network",
           locality="us-east/zone-a", weight=2, service_account="reviews"),
        ep("vm-2", "192.0.2.11", "reviews", ns, labels={"app": "reviews", "version": "v1"}, service_account="reviews"),
        ep("vm-3", "192.0.2.12", "ratings", ns, ports={"http": 9080, "grpc-admin": 9090}),
    ]
    args = dict(registrar, endpoints=endpoints, shapes=["workloadentry"], workload_group=True, registration="we")
    result = ok(run_module(args, tmp_path))
    assert result["changed"] and result["mode"] == "full"
    assert result["counts"] == {"created": 7, "updated": 0, "unchanged": 0, "deleted": 0}

    we = get(kube_api, "WorkloadEntry", ns, "reviews-vm-1")
    assert we["metadata"]["labels"] == ownership("we", "reviews")
    assert we["metadata"]["annotations"] == {"fleetmesh.envoy/host": "vm-1"}
    assert we["spec"] == {"address": "192.0.2.10", "ports": {"http": 9080},
                          "labels": {"app": "reviews", "version": "v1"}, "network": "vm-network",
                          "locality": "us-east/zone-a", "weight": 2, "serviceAccount": "reviews"}
    assert get(kube_api, "WorkloadEntry", ns, "ratings-vm-3")["spec"] == {
        "address": "192.0.2.12", "ports": {"http": 9080, "grpc-admin": 9090}, "labels": {"app": "ratings"}}
    svc = get(kube_api, "Service", ns, "reviews")
    assert svc["metadata"]["labels"] == ownership("we", "reviews")
    assert svc["spec"]["selector"] == {"app": "reviews"}
    assert svc["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 9080,
                                     "targetPort": 9080}]
    assert [p["port"] for p in get(kube_api, "Service", ns, "ratings")["spec"]["ports"]] == [9080, 9090]
    wg = get(kube_api, "WorkloadGroup", ns, "reviews")
    assert wg["spec"] == {"metadata": {"labels": {"app": "reviews"}},
                          "template": {"ports": {"http": 9080}, "labels": {"app": "reviews"},
                                       "network": "vm-network", "serviceAccount": "reviews"}}
    # The same objects read through the v1beta1 API Istio also serves.
    status, beta = kube_api.request("GET", kube_api.resource_path("networking.istio.io/v1beta1", "WorkloadEntry",
                                                                  "reviews-vm-2", ns))
    assert status == 200 and beta["spec"]["address"] == "192.0.2.11"

    before = versions(owned(kube_api, ns))
    again = ok(run_module(args, tmp_path))
    assert again["changed"] is False
    assert again["counts"] == {"created": 0, "updated": 0, "unchanged": 7, "deleted": 0}
    assert again["objects"] == []
    assert versions(owned(kube_api, ns)) == before
    # No apply was sent: discovery + one list per kind only.
    assert again["requests"] <= 12, again["requests"]


def test_serviceentry_shape_as_in_the_seed(kube_api, ns, registrar, tmp_path):
    endpoints = [ep("vmhttp-1", "192.168.99.129", "vmhttp", ns, ports={"http": 8080},
                    labels={"app": "vmhttp", "version": "v1"}),
                 ep("vmhttp-2", "2001:db8::5", "vmhttp", ns, ports={"http": 8080},
                    labels={"app": "vmhttp", "version": "v1"}, network="n2", weight=5),
                 ep("vmhttp-3", "192.168.99.130", "vmhttp", ns, ports={"http": 8080}, healthy=False)]
    args = dict(registrar, endpoints=endpoints, shapes=["serviceentry"], registration="se")
    assert ok(run_module(args, tmp_path))["counts"]["created"] == 1
    se = get(kube_api, "ServiceEntry", ns, "vmhttp")
    assert se["metadata"]["labels"] == ownership("se", "vmhttp")
    assert json.loads(se["metadata"]["annotations"]["fleetmesh.envoy/hosts"]) == {
        "vmhttp-1": "192.168.99.129", "vmhttp-2": "2001:db8::5"}
    assert se["spec"] == {
        "hosts": [f"vmhttp.{ns}.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": 8080, "protocol": "HTTP", "name": "http"}],
        "endpoints": [
            {"address": "192.168.99.129", "ports": {"http": 8080}, "labels": {"app": "vmhttp", "version": "v1"}},
            {"address": "2001:db8::5", "ports": {"http": 8080}, "labels": {"app": "vmhttp", "version": "v1"},
             "network": "n2", "weight": 5},
        ],
    }
    assert_noop(run_module(args, tmp_path))


def test_endpointslice_shape_split_unhealthy_not_ready_and_legacy_endpoints(kube_api, ns, registrar, tmp_path):
    endpoints = [ep(f"web-{i}", f"198.51.100.{i}", "web", ns, locality=f"eu/zone-{i % 2}", healthy=i != 4)
                 for i in range(1, 8)]
    endpoints.append(ep("web-v6", "2001:db8::7", "web", ns))
    args = dict(registrar, endpoints=endpoints, shapes=["endpointslice"], max_endpoints_per_slice=3,
                legacy_endpoints=True, registration="es")
    result = ok(run_module(args, tmp_path))
    assert result["counts"]["created"] == 6  # Service, 3 IPv4 slices, 1 IPv6 slice, Endpoints
    objs = owned(kube_api, ns)
    assert sorted(name for kind, name in objs if kind == "EndpointSlice") == [
        "web-ipv4-0", "web-ipv4-1", "web-ipv4-2", "web-ipv6-0"]
    first = objs[("EndpointSlice", "web-ipv4-0")]
    assert first["metadata"]["labels"] == dict(ownership("es", "web"), **{
        "kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "fleetmesh.envoy"})
    assert first["addressType"] == "IPv4"
    assert first["ports"] == [{"name": "http", "port": 9080, "protocol": "TCP", "appProtocol": "http"}]
    assert first["endpoints"] == [
        {"addresses": [f"198.51.100.{i}"],
         "conditions": {"ready": True, "serving": True, "terminating": False},
         "hostname": f"web-{i}", "zone": f"zone-{i % 2}"} for i in (1, 2, 3)]
    second = objs[("EndpointSlice", "web-ipv4-1")]
    assert second["endpoints"][0]["addresses"] == ["198.51.100.4"]
    assert second["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert [e["addresses"] for e in objs[("EndpointSlice", "web-ipv4-2")]["endpoints"]] == [["198.51.100.7"]]
    v6 = objs[("EndpointSlice", "web-ipv6-0")]
    assert v6["addressType"] == "IPv6" and v6["endpoints"][0]["addresses"] == ["2001:db8::7"]
    svc = objs[("Service", "web")]
    assert "selector" not in svc["spec"] and svc["spec"]["ports"][0]["port"] == 9080
    legacy = objs[("Endpoints", "web")]
    assert legacy["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"] == "true"
    (subset,) = legacy["subsets"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["198.51.100.4"]
    assert len(subset["addresses"]) == 7
    assert_noop(run_module(args, tmp_path))


def test_httpproxy_mixes_vm_and_kubernetes_backends(kube_api, ns, registrar, tmp_path):
    proxies = [{"name": "shop", "namespace": ns, "fqdn": "shop.example.com", "routes": [
        {"prefix": "/cart", "services": [{"name": "cart", "weight": 90},
                                         {"name": "cart-k8s", "port": 8080, "weight": 10}]},
        {"prefix": "/", "services": [{"name": "frontend-k8s", "port": 80}]},
    ]}]
    proxies[0]["routes"][1]["health_check"] = False  # the Kubernetes frontend does not answer /healthz
    args = dict(registrar, endpoints=[ep("cart-1", "192.0.2.40", "cart", ns, ports={"http": 8080})],
                shapes=["endpointslice", "httpproxy"], httpproxies=proxies, registration="hp")
    assert ok(run_module(args, tmp_path))["counts"]["created"] == 3
    proxy = get(kube_api, "HTTPProxy", ns, "shop")
    assert proxy["metadata"]["labels"] == ownership("hp")
    assert proxy["metadata"]["annotations"] == {"fleetmesh.envoy/vm-services": '["cart"]'}
    assert proxy["spec"]["virtualhost"] == {"fqdn": "shop.example.com"}
    assert proxy["spec"]["routes"] == [
        {"conditions": [{"prefix": "/cart"}],
         "healthCheckPolicy": {"healthyThresholdCount": 1, "intervalSeconds": 2, "path": "/healthz",
                               "timeoutSeconds": 1, "unhealthyThresholdCount": 2},
         "services": [{"name": "cart", "port": 8080, "weight": 90}, {"name": "cart-k8s", "port": 8080, "weight": 10}]},
        {"conditions": [{"prefix": "/"}], "services": [{"name": "frontend-k8s", "port": 80}]},
    ]
    assert_noop(run_module(args, tmp_path))


# -- reconciliation ----------------------------------------------------------------------------


def test_removing_a_host_deletes_exactly_its_entries(kube_api, ns, registrar, tmp_path):
    for shapes in (["workloadentry", "serviceentry"], ["endpointslice"]):
        if shapes == ["endpointslice"]:  # the same Service names: another namespace
            ns = ns + "-es"
            kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
        hosts = [ep(f"vm-{i}", f"192.0.2.{i}", "reviews", ns) for i in range(1, 5)]
        hosts.append(ep("db-1", "192.0.2.50", "db", ns))
        registration = "rm-" + shapes[0][:8]
        args = dict(registrar, shapes=shapes, registration=registration, max_endpoints_per_slice=2)
        ok(run_module(dict(args, endpoints=hosts), tmp_path))
        before = {k: o for k, o in owned(kube_api, ns).items()
                  if o["metadata"]["labels"]["fleetmesh.envoy/registration"] == registration}
        result = ok(run_module(dict(args, endpoints=[h for h in hosts if h["host"] != "vm-4"]), tmp_path))
        after = {k: o for k, o in owned(kube_api, ns).items()
                 if o["metadata"]["labels"]["fleetmesh.envoy/registration"] == registration}
        changed = {(o["kind"], o["name"]): o["action"] for o in result["objects"] if o["action"] != "unchanged"}
        if shapes[0] == "workloadentry":
            assert changed == {("WorkloadEntry", "reviews-vm-4"): "deleted", ("ServiceEntry", "reviews"): "updated"}
            se = after[("ServiceEntry", "reviews")]["spec"]["endpoints"]
            assert [e["address"] for e in se] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        else:
            # vm-3 and vm-4 shared the second slice: it shrinks, nothing else moves.
            assert changed == {("EndpointSlice", "reviews-ipv4-1"): "updated"}
            assert [e["addresses"][0] for e in after[("EndpointSlice", "reviews-ipv4-1")]["endpoints"]] == [
                "192.0.2.3"]
        untouched = set(before) - {("WorkloadEntry", "reviews-vm-4"), ("ServiceEntry", "reviews"),
                                   ("EndpointSlice", "reviews-ipv4-1")}
        for key in untouched:
            assert after[key]["metadata"]["resourceVersion"] == before[key]["metadata"]["resourceVersion"], key


def test_objects_not_owned_survive_and_are_never_taken_over_without_adopt(kube_api, ns, registrar, tmp_path):
    kube_api.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hand-made", "namespace": ns},
         "spec": {"ports": [{"port": 80}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
         "metadata": {"name": "reviews-legacy", "namespace": ns, "labels": {"app": "reviews"}},
         "spec": {"address": "192.0.2.99"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "other-set", "namespace": ns, "labels": ownership("someone-else", "other-set")},
         "spec": {"ports": [{"port": 80}]}},
        # A name this run needs, held by an object without the ownership labels.
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken", "namespace": ns},
         "spec": {"ports": [{"name": "http", "port": 9080, "targetPort": 8080}]}},
    ])
    args = dict(registrar, shapes=["workloadentry"], registration="own",
                endpoints=[ep("vm-1", "192.0.2.1", "reviews", ns)])
    ok(run_module(args, tmp_path))
    ok(run_module(dict(args, endpoints=[]), tmp_path))  # prune everything of set "own"
    for kind, name in (("Service", "hand-made"), ("WorkloadEntry", "reviews-legacy"), ("Service", "other-set")):
        assert get(kube_api, kind, ns, name) is not None, name
    assert get(kube_api, "Service", ns, "reviews") is None

    clash = dict(args, endpoints=[ep("vm-1", "192.0.2.1", "taken", ns)])
    result = run_module(clash, tmp_path)
    assert result["failed"]
    assert f"Service {ns}/taken already exists and is not managed by fleetmesh.envoy" in result["msg"]
    assert "adopt: true" in result["msg"]
    assert get(kube_api, "WorkloadEntry", ns, "taken-vm-1") is None  # nothing applied
    assert get(kube_api, "Service", ns, "taken")["spec"]["ports"][0]["targetPort"] == 8080
    adopted = ok(run_module(dict(clash, adopt=True, force=True), tmp_path))
    assert {(o["kind"], o["action"]) for o in adopted["objects"]} == {("Service", "updated"),
                                                                      ("WorkloadEntry", "created")}
    taken = get(kube_api, "Service", ns, "taken")
    assert taken["metadata"]["labels"] == ownership("own", "taken")
    assert taken["spec"]["ports"][0]["targetPort"] == 9080


def test_registration_sets_do_not_prune_each_other(kube_api, ns, registrar, tmp_path):
    ok(run_module(dict(registrar, registration="team-a", endpoints=[ep("a-1", "192.0.2.1", "alpha", ns)]), tmp_path))
    ok(run_module(dict(registrar, registration="team-b", endpoints=[ep("b-1", "192.0.2.2", "beta", ns)]), tmp_path))
    result = ok(run_module(dict(registrar, registration="team-b", endpoints=[]), tmp_path))
    assert result["counts"]["deleted"] == 2
    assert get(kube_api, "WorkloadEntry", ns, "alpha-a-1") is not None
    result = run_module(dict(registrar, registration="team-b", endpoints=[ep("a-1", "192.0.2.1", "alpha", ns)]),
                        tmp_path)
    assert result["failed"] and 'belongs to registration set "team-a", not "team-b"' in result["msg"]


def test_field_manager_conflict_is_reported_and_forced_with_force(kube_api, ns, registrar, tmp_path):
    args = dict(registrar, registration="cf", endpoints=[ep("vm-1", "192.0.2.1", "reviews", ns)])
    ok(run_module(args, tmp_path))
    # Another team's tool takes over the target port (server-side apply, its own field manager, forced).
    path = kube_api.resource_path("v1", "Service", "reviews", ns)
    status, _body = kube_api.request(
        "PATCH", path + "?fieldManager=other-team&force=true",
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": ns},
         "spec": {"ports": [{"port": 9080, "protocol": "TCP", "targetPort": 9999}]}},
        content_type="application/apply-patch+yaml")
    assert status == 200
    before = versions(owned(kube_api, ns))
    result = run_module(args, tmp_path)
    assert result["failed"]
    msg = result["msg"]
    assert f"conflict: Service {ns}/reviews" in msg
    assert 'field manager "other-team" owns .spec.ports[port=9080,protocol="TCP"].targetPort' in msg
    assert "force: true" in msg and "Nothing was changed" in msg
    assert result["conflicts"] == [{"manager": "other-team",
                                    "fields": ['.spec.ports[port=9080,protocol="TCP"].targetPort']}]
    assert versions(owned(kube_api, ns)) == before
    forced = ok(run_module(dict(args, force=True), tmp_path))
    assert forced["counts"]["updated"] == 1
    assert get(kube_api, "Service", ns, "reviews")["spec"]["ports"][0]["targetPort"] == 9080
    assert_noop(run_module(args, tmp_path))


# -- RBAC --------------------------------------------------------------------------------------


def _registrar_rules() -> list[dict[str, Any]]:
    manifest = yaml.safe_load((REPO / "roles" / "mesh_registration" / "files" / "rbac.yml").read_text())
    (role,) = [i for i in manifest["items"] if i["kind"] == "ClusterRole"]
    return copy.deepcopy(role["rules"])


def test_the_shipped_clusterrole_is_enough_for_every_shape(kube_api, ns, registrar, tmp_path):
    token = yaml.safe_load(Path(registrar["kubeconfig"]).read_text())["users"][0]["user"]["token"]
    proxies = [{"name": "p", "namespace": ns, "fqdn": "p.example.com", "routes": [{"services": [{"name": "s1"}]}]}]
    for registration, shapes, extra in (
            ("rbac-1", ["workloadentry", "serviceentry"], {"workload_group": True}),
            ("rbac-2", ["endpointslice", "httpproxy"], {"legacy_endpoints": True, "httpproxies": proxies})):
        args = dict(registrar, registration=registration, shapes=shapes,
                    endpoints=[ep("h1", "192.0.2.1", "s1" if registration == "rbac-2" else "s0", ns)], **extra)
        created = ok(run_module(args, tmp_path))
        assert created["changed"]
        emptied = ok(run_module(dict(args, endpoints=[], httpproxies=[], shapes=["serviceentry"]), tmp_path))
        assert emptied["counts"]["deleted"] == created["counts"]["created"]
        assert token not in created["_stdout"]


def test_a_role_missing_one_verb_fails_naming_verb_and_resource_and_changes_nothing(kube_api, ns, tmp_path):
    rules = _registrar_rules()
    for rule in rules:
        if rule.get("resources") == ["endpointslices"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    name = f"fleetmesh-registrar-no-delete-{ns}"
    kube_api.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]},
    ])
    kubeconfig = kube_api.kubeconfig_for_service_account(ns, "limited", create=True)
    hosts = [ep(f"vm-{i}", f"192.0.2.{i}", "web", ns) for i in range(1, 4)]
    args = {"kubeconfig": str(kubeconfig), "registration": "nd", "shapes": ["endpointslice"],
            "max_endpoints_per_slice": 2}
    ok(run_module(dict(args, endpoints=hosts), tmp_path))
    before = versions(owned(kube_api, ns))
    result = run_module(dict(args, endpoints=hosts[:2]), tmp_path)  # vm-3's slice must go
    assert result["failed"]
    assert (f"forbidden: the kubeconfig's identity cannot 'delete' 'endpointslices.discovery.k8s.io' in namespace {ns}"
            in result["msg"]), result["msg"]
    assert "Nothing was changed" in result["msg"]
    assert versions(owned(kube_api, ns)) == before


# -- bad input and failures: clear errors, nothing applied -------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_api_unreachable_names_the_url(kube_api, ns, tmp_path):
    config = yaml.safe_load(kube_api.registrar_kubeconfig.read_text())
    url = f"https://127.0.0.1:{_free_port()}"
    config["clusters"][0]["cluster"]["server"] = url
    kubeconfig = tmp_path / "unreachable.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = run_module({"kubeconfig": str(kubeconfig), "endpoints": [ep("vm-1", "192.0.2.1", "web", ns)]}, tmp_path)
    assert result["failed"]
    assert result["msg"] == f"cannot reach the Kubernetes API at {url}: connection refused"
    assert config["users"][0]["user"]["token"] not in result["_stdout"]
    assert owned(kube_api, ns) == {}


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("vm-1", "192.0.2.1", "Web_Service", "{ns}")],
         ['endpoints[0].service (fleetmesh_service of host vm-1): "Web_Service" is not a valid DNS-1035 label']),
        ([ep("vm-1", "192.0.2.1", "web", "Bad.Namespace")],
         ['endpoints[0].namespace (fleetmesh_namespace of host vm-1): "Bad.Namespace" is not a valid DNS-1123 label']),
        ([ep("vm-1", "192.0.2.1", "web", "{ns}"), ep("vm-2", "10.0.0.256", "web", "{ns}")],
         ['endpoints[1].address (fleetmesh_address of host vm-2): "10.0.0.256" is not a valid IP address; allowed: '
          'an IPv4 or IPv6 address']),
        ([ep("vm-1", "192.0.2.1", "web", "{ns}", ports={"http": 0}),
          ep("vm-2", "192.0.2.2", "web", "{ns}", ports={"http": "80x"})],
         ["endpoints[0].ports (fleetmesh_ports of host vm-1).http: 0 is not a valid port; allowed: integer 1-65535",
          'endpoints[1].ports (fleetmesh_ports of host vm-2).http: "80x" is not a valid port']),
        ([ep("vm-1", "192.0.2.1", "web", "{ns}"), ep("vm-2", "192.0.2.1", "web", "{ns}")],
         ['fleetmesh_address (hosts of service {ns}/web): "192.0.2.1" is used by more than one host of the service '
          "(vm-1, vm-2)"]),
    ],
    ids=["service-name", "namespace", "ip", "ports", "duplicate-address"],
)
def test_bad_input_fails_clearly_and_applies_nothing(kube_api, ns, registrar, tmp_path, endpoints, expected):
    endpoints = json.loads(json.dumps(endpoints).replace("{ns}", ns))
    good = ep("fine-1", "192.0.2.200", "fine", ns)  # a valid host next to the bad ones is not applied either
    result = run_module(dict(registrar, shapes=["endpointslice"], endpoints=[*endpoints, good]), tmp_path)
    assert result["failed"]
    assert result["msg"].startswith("invalid input, nothing was applied: ")
    for text in expected:
        assert any(text.replace("{ns}", ns) in e for e in result["errors"]), (text, result["errors"])
    assert "requests" not in result  # no request was made at all
    assert owned(kube_api, ns) == {}


def test_api_key_is_never_echoed(kube_api, ns, tmp_path):
    token = kube_api.token(kubeapi.REGISTRAR_NAMESPACE, kubeapi.REGISTRAR_NAME, expiration_seconds=600)
    args = {"host": kube_api.url, "api_key": token, "ca_cert": str(kube_api.ca_file), "registration": "tok",
            "endpoints": [ep("vm-1", "192.0.2.1", "web", ns)]}
    result = ok(run_module(args, tmp_path, diff=True))
    assert result["counts"]["created"] == 2
    assert token not in result["_stdout"]
    assert result["invocation"]["module_args"]["api_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


def test_client_certificate_kubeconfig_works_and_its_key_is_never_echoed(kube_api, ns, tmp_path):
    key_data = yaml.safe_load(kube_api.admin_kubeconfig.read_text())["users"][0]["user"]["client-key-data"]
    args = {"kubeconfig": str(kube_api.admin_kubeconfig), "registration": "cert",
            "endpoints": [ep("vm-1", "192.0.2.1", "web", ns)]}
    result = ok(run_module(args, tmp_path, diff=True))
    assert result["counts"]["created"] == 2
    assert key_data not in result["_stdout"]
    assert_noop(run_module(args, tmp_path))
