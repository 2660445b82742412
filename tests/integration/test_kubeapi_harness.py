"""The kube-apiserver test harness is a real, RBAC-enforcing API server with the mesh CRDs installed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
import yaml
from kubeapi_pytest import require_kube_binaries
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.kube

NS = "fm-harness"
CRDS = {
    "serviceentries.networking.istio.io": ("v1", {"v1", "v1alpha3", "v1beta1"}),
    "workloadentries.networking.istio.io": ("v1", {"v1", "v1alpha3", "v1beta1"}),
    "workloadgroups.networking.istio.io": ("v1", {"v1", "v1alpha3", "v1beta1"}),
    "httpproxies.projectcontour.io": ("v1", {"v1"}),
}


def _client(kubeconfig: Path) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture(scope="module")
def admin(kube_api: kubeapi.KubeAPI) -> k8s.ApiClient:
    api = _client(kube_api.admin_kubeconfig)
    core = k8s.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NS}})
    except ApiException as exc:
        assert exc.status == 409
    return api


@pytest.fixture(scope="module")
def registrar(kube_api: kubeapi.KubeAPI, admin: k8s.ApiClient) -> k8s.ApiClient:
    return _client(kube_api.registrar_kubeconfig)


def _status(call, *args, **kwargs) -> int:
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        return int(exc.status)
    return 200


def _jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_server_is_pinned_version_with_tls_and_no_anonymous_access(kube_api: kubeapi.KubeAPI, admin) -> None:
    info = k8s.VersionApi(admin).get_code()
    assert info.git_version == kube_api.version == kubeapi.pinned_versions()["kubernetes"]
    assert kube_api.url.startswith("https://127.0.0.1:")
    assert kube_api.request("GET", "/api/v1/namespaces", token="not-a-token")[0] == 401


def test_crds_established_with_upstream_versions(admin) -> None:
    ext = k8s.ApiextensionsV1Api(admin)
    for name, (storage, served) in CRDS.items():
        crd = ext.read_custom_resource_definition(name)
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions.get("Established") == "True", name
        assert conditions.get("NamesAccepted") == "True", name
        assert {v.name for v in crd.spec.versions if v.served} == served, name
        assert [v.name for v in crd.spec.versions if v.storage] == [storage], name


def test_rbac_is_enforced_for_the_registrar(kube_api: kubeapi.KubeAPI, registrar, admin) -> None:
    core = k8s.CoreV1Api(registrar)
    # Granted: get on secrets (a single named secret), not list.
    k8s.CoreV1Api(admin).create_namespaced_secret(NS, {"metadata": {"name": "ca-bundle"}, "data": {}})
    assert _status(core.read_namespaced_secret, "ca-bundle", NS) == 200
    assert _status(core.list_namespaced_secret, "kube-system") == 403
    # Not granted at all.
    assert _status(core.list_namespaced_pod, "kube-system") == 403
    assert _status(core.create_namespace, {"metadata": {"name": "registrar-may-not"}}) == 403
    review = {"spec": {"token": "x"}}
    assert _status(k8s.AuthenticationV1Api(registrar).create_token_review, review) == 403
    # Its identity is the ServiceAccount, via a bounded TokenRequest token.
    token = yaml.safe_load(kube_api.registrar_kubeconfig.read_text())["users"][0]["user"]["token"]
    claims = _jwt_claims(token)
    assert claims["sub"] == "system:serviceaccount:fleetmesh-system:fleetmesh-registrar"
    assert 0 < claims["exp"] - claims["iat"] <= kubeapi.TOKEN_SECONDS
    assert claims["aud"] == [kubeapi.SA_ISSUER]  # not usable as an istio-ca token


def test_registrar_creates_endpointslice(registrar) -> None:
    discovery = k8s.DiscoveryV1Api(registrar)
    name = f"vm-web-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "vm-web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }
    discovery.create_namespaced_endpoint_slice(NS, body)
    got = discovery.read_namespaced_endpoint_slice(name, NS)
    assert got.endpoints[0].addresses == ["192.0.2.10"]
    discovery.delete_namespaced_endpoint_slice(name, NS)


def test_registrar_creates_workloadentry_v1_and_reads_v1beta1(registrar) -> None:
    custom = k8s.CustomObjectsApi(registrar)
    spec = {
        "address": "192.0.2.20",
        "ports": {"http": 8080},
        "labels": {"app": "vm-web", "fleetmesh.io/host": "vm1"},
        "network": "vm-net",
        "locality": "eu-west/zone-a",
        "weight": 10,
        "serviceAccount": "vm-web",
    }
    body = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "vm1"}, "spec": spec}
    custom.create_namespaced_custom_object("networking.istio.io", "v1", NS, "workloadentries", body)
    got = custom.get_namespaced_custom_object("networking.istio.io", "v1beta1", NS, "workloadentries", "vm1")
    assert got["apiVersion"] == "networking.istio.io/v1beta1"
    assert got["spec"] == spec
    # The structural schema and its CEL rules are enforced like upstream's.
    bad = dict(body, metadata={"name": "vm-bad-port"}, spec=dict(spec, ports={"http": 70000}))
    status = _status(custom.create_namespaced_custom_object, "networking.istio.io", "v1", NS, "workloadentries", bad)
    assert status == 422
    no_addr = dict(body, metadata={"name": "vm-no-address"}, spec={"ports": {"http": 80}})
    status = _status(
        custom.create_namespaced_custom_object, "networking.istio.io", "v1", NS, "workloadentries", no_addr
    )
    assert status == 422


def test_serviceentry_and_httpproxy_round_trip(registrar) -> None:
    custom = k8s.CustomObjectsApi(registrar)
    se = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "ServiceEntry",
        "metadata": {"name": "vm-web"},
        "spec": {
            "hosts": ["vm-web.mesh.internal"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"name": "http", "number": 80, "protocol": "HTTP", "targetPort": 8080}],
            "workloadSelector": {"labels": {"app": "vm-web"}},
        },
    }
    custom.create_namespaced_custom_object("networking.istio.io", "v1beta1", NS, "serviceentries", se)
    got = custom.get_namespaced_custom_object("networking.istio.io", "v1", NS, "serviceentries", "vm-web")
    assert got["spec"] == se["spec"]
    both = dict(se, apiVersion="networking.istio.io/v1", metadata={"name": "vm-both"})
    both["spec"] = dict(se["spec"], endpoints=[{"address": "192.0.2.30"}])
    status = _status(custom.create_namespaced_custom_object, "networking.istio.io", "v1", NS, "serviceentries", both)
    assert status == 422  # only one of workloadSelector or endpoints

    proxy = {
        "apiVersion": "projectcontour.io/v1",
        "kind": "HTTPProxy",
        "metadata": {"name": "vm-web"},
        "spec": {
            "virtualhost": {"fqdn": "vm-web.example.test"},
            "routes": [
                {
                    "conditions": [{"prefix": "/"}],
                    "services": [
                        {"name": "vm-web", "port": 80, "weight": 90},
                        {"name": "vm-web-b", "port": 80, "weight": 10},
                    ],
                }
            ],
        },
    }
    custom.create_namespaced_custom_object("projectcontour.io", "v1", NS, "httpproxies", proxy)
    got = custom.get_namespaced_custom_object("projectcontour.io", "v1", NS, "httpproxies", "vm-web")
    assert got["spec"] == proxy["spec"]


def test_tokenreview_of_istio_ca_token(kube_api: kubeapi.KubeAPI, admin) -> None:
    core = k8s.CoreV1Api(admin)
    core.create_namespaced_service_account(NS, {"metadata": {"name": "vm-web"}})
    token = kube_api.token(NS, "vm-web", audiences=["istio-ca"], expiration_seconds=600)
    authn = k8s.AuthenticationV1Api(admin)
    review = authn.create_token_review({"spec": {"token": token, "audiences": ["istio-ca"]}})
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{NS}:vm-web"
    assert review.status.audiences == ["istio-ca"]
    # A token for the API server's own audience is not accepted as an istio-ca token.
    other = kube_api.token(NS, "vm-web", audiences=[kubeapi.SA_ISSUER], expiration_seconds=600)
    review = authn.create_token_review({"spec": {"token": other, "audiences": ["istio-ca"]}})
    assert not review.status.authenticated


def test_kubeconfig_for_service_account_with_a_role_missing_a_verb(kube_api: kubeapi.KubeAPI) -> None:
    kube_api.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "no-create", "namespace": NS},
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "no-create", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "no-create"},
                "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": NS}],
            },
        ]
    )
    path = kube_api.kubeconfig_for_service_account(NS, "limited", create=True)
    core = k8s.CoreV1Api(_client(path))
    assert _status(core.list_namespaced_service, NS) == 200
    svc = {"metadata": {"name": "nope"}, "spec": {"ports": [{"port": 80}]}}
    assert _status(core.create_namespaced_service, NS, svc) == 403


def test_cli_start_is_idempotent_and_stop_leaves_no_process(tmp_path: Path) -> None:
    require_kube_binaries()
    script = Path(kubeapi.__file__)
    state = tmp_path / "cli"
    env = dict(os.environ)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(script), *args, "--state-dir", str(state)]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)

    try:
        first = run("start")
        assert first.returncode == 0, first.stderr
        values = dict(line.split("=", 1) for line in first.stdout.splitlines() if "=" in line)
        assert Path(values["ADMIN_KUBECONFIG"]).is_file() and Path(values["REGISTRAR_KUBECONFIG"]).is_file()
        second = run("start")
        assert second.returncode == 0 and "already running" in second.stderr
        assert dict(line.split("=", 1) for line in second.stdout.splitlines())["KUBE_API_URL"] == values["KUBE_API_URL"]
        status = run("status")
        assert status.returncode == 0, status.stdout
        pgids = [p["pgid"] for p in json.loads(status.stdout)["processes"].values()]
    finally:
        stop = run("stop")
    assert stop.returncode == 0
    assert run("stop").returncode == 0
    assert run("status").returncode == 3
    for pgid in pgids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
