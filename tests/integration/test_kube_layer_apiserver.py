"""The one Kubernetes layer against the real kube-apiserver, through ansible-playbook: module_defaults for the action
group fleetmesh.envoy.kube set the kubeconfig once for every module that talks to the cluster (mesh_registration,
kube_info, kube_apply, istio_token, workload_sign); kube_apply's no-op check, check mode, diff and conflicts;
exec credential plugins, impersonation and K8S_AUTH_* from the kubernetes package."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
import yaml
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]


def run_play(tmp_path: Path, play: dict[str, Any], env: dict[str, str] | None = None,
             args: tuple[str, ...] = ()) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run one play on localhost; (rc, result of each task by name)."""
    book = tmp_path / f"play-{uuid.uuid4().hex[:6]}.yml"
    book.write_text(yaml.safe_dump([dict({"hosts": "localhost", "gather_facts": False}, **play)], sort_keys=False))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("K8S_AUTH_")}
    collections = REPO / ".build" / "collections"
    full_env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(collections),
                    ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
                    ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
                    KUBECONFIG=str(tmp_path / "no-such-kubeconfig"),  # only what the play says is used
                    **(env or {}))
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", *args, str(book)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300, check=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from ansible-playbook (rc={proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}") from None
    results = {}
    for task in out["plays"][-1]["tasks"]:
        results[task["task"]["name"]] = task["hosts"].get("localhost", {})
    return proc.returncode, results


@pytest.fixture
def ns(kube_api: kubeapi.KubeAPI) -> str:
    name = f"kl-{uuid.uuid4().hex[:8]}"
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": name}}])
    return name


def _cacerts_secret(namespace: str) -> dict[str, Any]:
    data = ca_lib.new_lab_ca_files()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": namespace},
            "type": "Opaque", "data": {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
                                       for k, v in data.items() if k != "root-key.pem"}}


def test_module_defaults_for_the_group_set_the_kubeconfig_once(kube_api, ns, tmp_path):
    kube_api.apply([_cacerts_secret(ns)])
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extra", "namespace": ns},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
    play = {
        "module_defaults": {"group/fleetmesh.envoy.kube": {"kubeconfig": str(kube_api.registrar_kubeconfig)}},
        "tasks": [
            {"name": "register", "fleetmesh.envoy.mesh_registration": {
                "registration": "md", "endpoints": [{"host": "vm-1", "address": "192.0.2.10", "service": "web",
                                                     "namespace": ns, "ports": {"http": 8080}}]}},
            {"name": "read", "fleetmesh.envoy.kube_info": {
                "api_version": "networking.istio.io/v1", "kind": "WorkloadEntry", "namespace": ns,
                "label_selectors": ["fleetmesh.envoy/registration=md"]}},
            {"name": "read one", "fleetmesh.envoy.kube_info": {"kind": "Service", "namespace": ns, "name": "web"}},
            {"name": "not served", "fleetmesh.envoy.kube_info": {"api_version": "example.invalid/v1", "kind": "Nope"}},
            {"name": "apply", "fleetmesh.envoy.kube_apply": {"definition": service, "field_manager": "kl-test"}},
            {"name": "apply again", "fleetmesh.envoy.kube_apply": {"definition": service, "field_manager": "kl-test"}},
            {"name": "apply changed in check mode", "check_mode": True, "diff": True,
             "fleetmesh.envoy.kube_apply": {"field_manager": "kl-test", "definition": {
                 **service, "spec": {"ports": [{"name": "http", "port": 81, "targetPort": 8080, "protocol": "TCP"}]}}}},
            {"name": "note what the host inspected", "ansible.builtin.set_fact": {
                "kl_inspect": {"refresh": True, "request": {"namespace": ns, "service_account": "web"}}}},
            {"name": "token", "register": "kl_token", "fleetmesh.envoy.istio_token": {
                "state": "request", "hosts": ["localhost"], "inspect_var": "kl_inspect"}},
            {"name": "requested", "ansible.builtin.debug": {  # the result carries the token: no_log
                "msg": "{{ kl_token.requested | map(attribute='service_account') | list }}"}},
            {"name": "ca", "fleetmesh.envoy.workload_sign": {"operation": "inspect", "source": "kubernetes",
                                                             "secret_namespace": ns}},
            {"name": "a task's own kubeconfig wins", "ignore_errors": True, "fleetmesh.envoy.kube_info": {
                "kind": "Service", "namespace": ns, "kubeconfig": str(tmp_path / "absent")}},
        ],
    }
    rc, r = run_play(tmp_path, play)
    assert rc == 0, json.dumps(r, indent=1)[-4000:]
    assert r["register"]["changed"] and r["register"]["counts"]["created"] == 2
    assert [o["spec"]["address"] for o in r["read"]["resources"]] == ["192.0.2.10"] and r["read"]["api_found"]
    assert [o["metadata"]["name"] for o in r["read one"]["resources"]] == ["web"]
    assert r["not served"]["api_found"] is False and r["not served"]["resources"] == []
    assert r["apply"]["changed"] and r["apply"]["outcome"] == "created"
    assert not r["apply again"]["changed"] and r["apply again"]["outcome"] == "unchanged"
    check = r["apply changed in check mode"]
    assert check["changed"] and check["outcome"] == "updated"
    assert check["diff"]["before"]["spec"]["ports"][0]["port"] == 80
    assert check["diff"]["after"]["spec"]["ports"][0]["port"] == 81
    _status, live = kube_api.request("GET", kube_api.resource_path("v1", "Service", "extra", ns))
    assert live["spec"]["ports"][0]["port"] == 80  # check mode changed nothing
    assert r["requested"]["msg"] == ["web"]
    assert r["ca"]["ca"]["issuer"] and not r["ca"].get("failed")
    assert "cannot load the kubeconfig" in r["a task's own kubeconfig wins"]["msg"]


def test_kube_apply_conflicts_name_the_other_manager_and_force_takes_over(kube_api, ns, tmp_path):
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "owned", "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
    kube_api.apply([svc])  # as the harness's field manager
    mine = json.loads(json.dumps(svc).replace("8080", "9090"))
    task = {"fleetmesh.envoy.kube_apply": {"kubeconfig": str(kube_api.registrar_kubeconfig), "definition": mine,
                                           "field_manager": "kl-test"}}
    rc, r = run_play(tmp_path, {"tasks": [dict(task, name="conflict")]})
    assert rc != 0
    assert f'conflict: Service {ns}/owned: field manager "{kubeapi.FIELD_MANAGER}" owns' in r["conflict"]["msg"]
    assert "Set force: true" in r["conflict"]["msg"]
    task["fleetmesh.envoy.kube_apply"]["force"] = True
    rc, r = run_play(tmp_path, {"tasks": [dict(task, name="force")]})
    assert rc == 0 and r["force"]["changed"] and r["force"]["result"]["spec"]["ports"][0]["targetPort"] == 9090


def test_exec_plugin_impersonation_and_k8s_auth_environment(kube_api, ns, tmp_path):
    token = kube_api.token(kubeapi.REGISTRAR_NAMESPACE, kubeapi.REGISTRAR_NAME, expiration_seconds=600)
    plugin = tmp_path / "get-token.py"
    plugin.write_text("import json, sys\njson.dump({'apiVersion': 'client.authentication.k8s.io/v1', "
                      f"'kind': 'ExecCredential', 'status': {{'token': {token!r}}}}}, sys.stdout)\n")
    config = yaml.safe_load(kube_api.registrar_kubeconfig.read_text())
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                                           "args": [str(plugin)], "interactiveMode": "Never"}}
    exec_kubeconfig = tmp_path / "exec.kubeconfig"
    exec_kubeconfig.write_text(yaml.safe_dump(config))
    registrar = f"system:serviceaccount:{kubeapi.REGISTRAR_NAMESPACE}:{kubeapi.REGISTRAR_NAME}"
    play = {"tasks": [
        {"name": "exec", "fleetmesh.envoy.kube_info": {"kubeconfig": str(exec_kubeconfig), "kind": "Service",
                                                       "namespace": ns}},
        {"name": "environment", "fleetmesh.envoy.kube_info": {"kind": "ServiceAccount", "namespace": ns}},
        {"name": "impersonated", "ignore_errors": True, "fleetmesh.envoy.kube_info": {
            "kubeconfig": str(kube_api.admin_kubeconfig), "impersonate_user": registrar,
            "impersonate_groups": ["system:serviceaccounts", "system:authenticated"], "kind": "ConfigMap"}},
    ]}
    rc, r = run_play(tmp_path, play, env={"K8S_AUTH_KUBECONFIG": str(kube_api.admin_kubeconfig)})
    assert rc == 0 and not r["exec"].get("failed") and r["exec"]["api_found"], r["exec"]
    assert "web" in [o["metadata"]["name"] for o in r["environment"]["resources"]]
    assert r["impersonated"]["failed"]
    assert (f"forbidden: the kubeconfig's identity cannot 'list' 'configmaps' in all namespaces (it is User "
            f'"{registrar}"') in r["impersonated"]["msg"]
    assert token not in json.dumps(r)
