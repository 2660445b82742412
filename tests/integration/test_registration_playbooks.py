"""The registration module and role run by ansible-playbook (connection local) against the real kube-apiserver:
check mode and diff, the role's complete vs --limit runs, and the decommission play."""

from __future__ import annotations

import json
import os
import re
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
OWNED = "app.kubernetes.io/managed-by=fleetmesh.envoy"


def playbook(args: list[str], tmp_path: Path, check: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    proc = subprocess.run(["ansible-playbook", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from ansible-playbook (rc={proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}") from None
    if check:
        assert proc.returncode == 0, json.dumps(out, indent=1)[-6000:]
    return proc, out


def task_result(out: dict, name: str) -> dict[str, Any]:
    """The result of the (run_once) task called name in the last play that ran it."""
    found = None
    for play in out["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] in (name, f"fleetmesh.envoy.mesh_registration : {name}"):
                found = next(iter(task["hosts"].values()))
    assert found is not None, f"task {name!r} did not run"
    return found


def owned(api: kubeapi.KubeAPI, namespace: str, version: str, kind: str) -> dict[str, dict[str, Any]]:
    status, body = api.request("GET", api.resource_path(version, kind, None, namespace) + f"?labelSelector={OWNED}")
    assert status == 200, body
    return {i["metadata"]["name"]: i for i in body["items"]}


@pytest.fixture
def ns(kube_api: kubeapi.KubeAPI) -> str:
    name = f"pb-{uuid.uuid4().hex[:8]}"
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    return name


def test_module_check_mode_and_diff_through_ansible_playbook(kube_api, ns, tmp_path):
    play = [{
        "name": "register",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [{
            "name": "Register",
            "fleetmesh.envoy.mesh_registration": {
                "kubeconfig": str(kube_api.registrar_kubeconfig),
                "shapes": ["serviceentry"],
                "registration": "pb",
                "endpoints": [{"host": "vm-1", "address": "192.0.2.1", "service": "web", "namespace": ns,
                               "ports": {"http": 8080}}],
            },
        }],
    }]
    path = tmp_path / "register.yml"
    path.write_text(yaml.safe_dump(play))
    base = [str(path), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter={{ ansible_playbook_python }}"]

    _proc, out = playbook([*base, "--check", "--diff"], tmp_path)
    result = task_result(out, "Register")
    assert result["changed"] and result["counts"]["created"] == 1
    (diff,) = result["diff"]
    assert diff["before"] == {} and diff["after"]["spec"]["endpoints"][0]["address"] == "192.0.2.1"
    assert "managedFields" not in diff["after"]["metadata"]
    assert owned(kube_api, ns, "networking.istio.io/v1", "ServiceEntry") == {}  # dry run only

    _proc, out = playbook(base, tmp_path)
    assert task_result(out, "Register")["changed"]
    assert set(owned(kube_api, ns, "networking.istio.io/v1", "ServiceEntry")) == {"web"}

    _proc, out = playbook([*base, "--check", "--diff"], tmp_path)
    result = task_result(out, "Register")
    assert result["changed"] is False and result["counts"]["unchanged"] == 1 and result.get("diff", []) == []

    # A change in check mode shows before and after, and changes nothing.
    play[0]["tasks"][0]["fleetmesh.envoy.mesh_registration"]["endpoints"][0]["address"] = "192.0.2.2"
    path.write_text(yaml.safe_dump(play))
    _proc, out = playbook([*base, "--check", "--diff"], tmp_path)
    (diff,) = task_result(out, "Register")["diff"]
    assert diff["before"]["spec"]["endpoints"][0]["address"] == "192.0.2.1"
    assert diff["after"]["spec"]["endpoints"][0]["address"] == "192.0.2.2"
    live = owned(kube_api, ns, "networking.istio.io/v1", "ServiceEntry")["web"]
    assert live["spec"]["endpoints"][0]["address"] == "192.0.2.1"


def _inventory(tmp_path: Path, kube_api: kubeapi.KubeAPI, ns: str, hosts: dict[str, dict[str, Any]]) -> Path:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True, exist_ok=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"web": {"hosts": hosts}}}}))
    (inv / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "fleetmesh_kubeconfig": str(kube_api.registrar_kubeconfig),
        "fleetmesh_trust_domain": "cluster.local",
        # No Envoy in front of these stand-in hosts: the app port answers (docs/data-path.md).
        "fleetmesh_envoy": False,
    }))
    (inv / "group_vars" / "web.yml").write_text(yaml.safe_dump({
        "fleetmesh_service": "web", "fleetmesh_namespace": ns, "fleetmesh_service_account": "web",
        "fleetmesh_ports": {"http": 8080}, "fleetmesh_labels": {"app": "web", "version": "v1"},
        "fleetmesh_network": "lab-network",
    }))
    return inv


def test_role_complete_run_limit_run_decommission_and_inventory_removal(kube_api, ns, tmp_path):
    hosts = {f"vm-{i}": {"fleetmesh_address": f"192.0.2.{i}"} for i in range(1, 5)}
    inv = _inventory(tmp_path, kube_api, ns, hosts)
    extra = ["-e", json.dumps({"mesh_registration_shapes": ["workloadentry", "serviceentry"],
                               "mesh_registration_group": "web"})]
    register = ["playbooks/register.yml", "-i", str(inv), *extra]
    task = "Register the play's VMs in Kubernetes"

    _proc, out = playbook(register, tmp_path)
    result = task_result(out, task)
    assert result["mode"] == "full" and result["registration"] == "web"
    assert result["counts"] == {"created": 6, "updated": 0, "unchanged": 0, "deleted": 0}
    wes = owned(kube_api, ns, "networking.istio.io/v1", "WorkloadEntry")
    assert sorted(wes) == ["web-vm-1", "web-vm-2", "web-vm-3", "web-vm-4"]
    assert wes["web-vm-1"]["spec"]["network"] == "lab-network"

    _proc, out = playbook(register, tmp_path)
    assert task_result(out, task)["changed"] is False

    # --limit: vm-2 changes; the play sees one host, so nothing of the others may be pruned.
    hosts["vm-2"]["fleetmesh_weight"] = 5
    inv = _inventory(tmp_path, kube_api, ns, hosts)
    _proc, out = playbook([*register, "--limit", "vm-2"], tmp_path)
    result = task_result(out, task)
    assert result["mode"] == "merge"
    assert {(o["kind"], o["name"]) for o in result["objects"] if o["action"] != "unchanged"} == {
        ("WorkloadEntry", "web-vm-2"), ("ServiceEntry", "web")}
    assert len(owned(kube_api, ns, "networking.istio.io/v1", "WorkloadEntry")) == 4
    se = owned(kube_api, ns, "networking.istio.io/v1", "ServiceEntry")["web"]
    assert [e.get("weight") for e in se["spec"]["endpoints"]] == [None, 5, None, None]

    # Decommission refuses to run on the whole group by accident.
    proc, _out = playbook(["playbooks/deregister.yml", "-i", str(inv), *extra], tmp_path, check=False)
    assert proc.returncode != 0 and "--limit vm-7" in proc.stdout
    # Decommission vm-3: exactly its entries go.
    _proc, out = playbook(["playbooks/deregister.yml", "-i", str(inv), *extra, "--limit", "vm-3"], tmp_path)
    result = task_result(out, task)
    assert result["mode"] == "absent"
    assert {(o["kind"], o["name"], o["action"]) for o in result["objects"]} == {
        ("WorkloadEntry", "web-vm-3", "deleted"), ("ServiceEntry", "web", "updated")}
    se = owned(kube_api, ns, "networking.istio.io/v1", "ServiceEntry")["web"]
    assert [e["address"] for e in se["spec"]["endpoints"]] == ["192.0.2.1", "192.0.2.2", "192.0.2.4"]

    # vm-3 and vm-4 leave the inventory: the next complete run prunes vm-4 too, and only it.
    del hosts["vm-3"], hosts["vm-4"]
    inv = _inventory(tmp_path, kube_api, ns, hosts)
    _proc, out = playbook(register, tmp_path)
    result = task_result(out, task)
    assert result["mode"] == "full"
    assert {(o["kind"], o["name"], o["action"]) for o in result["objects"] if o["action"] != "unchanged"} == {
        ("WorkloadEntry", "web-vm-4", "deleted"), ("ServiceEntry", "web", "updated")}
    assert sorted(owned(kube_api, ns, "networking.istio.io/v1", "WorkloadEntry")) == ["web-vm-1", "web-vm-2"]


def test_role_names_the_host_and_variable_of_bad_input(kube_api, ns, tmp_path):
    hosts = {"vm-1": {"fleetmesh_address": "192.0.2.1", "ansible_port": 70000, "envoy_version": "1.40"},
             "vm-2": {"fleetmesh_address": "192.0.2.999"}, "vm-3": {}}
    inv = _inventory(tmp_path, kube_api, ns, hosts)
    play = [{"name": "register", "hosts": "web", "gather_facts": False,
             "roles": [{"role": "fleetmesh.envoy.mesh_registration", "mesh_registration_group": "web"}]}]
    path = tmp_path / "role.yml"
    path.write_text(yaml.safe_dump(play))
    proc, out = playbook([str(path), "-i", str(inv)], tmp_path, check=False)
    assert proc.returncode != 0
    result = task_result(out, "Register the play's VMs in Kubernetes")
    assert 'fleetmesh_address of host vm-2): "192.0.2.999" is not a valid IP address' in result["msg"]
    assert "endpoints[2].address (fleetmesh_address of host vm-3): is not set" in result["msg"]  # sorted hosts
    assert "gather facts" in result["msg"]
    assert ("endpoints[0].host_info.ansible_port (ansible_port of host vm-1): 70000 is not a valid port; "
            "allowed: integer 1-65535") in result["msg"]
    assert ('endpoints[0].host_info.envoy_version (envoy_version of host vm-1): "1.40" is not a valid version; '
            "allowed: version X.Y.Z") in result["msg"]
    assert owned(kube_api, ns, "networking.istio.io/v1", "WorkloadEntry") == {}


def test_role_records_host_info_and_a_version_given_to_the_role_wins_for_every_host(kube_api, ns, tmp_path):
    """As upgrade.yml marks a batch ready: include_role with envoy_version, which is not in hostvars."""
    hosts = {"vm-1": {"fleetmesh_address": "192.0.2.1", "ansible_host": "vm-1.example.com", "ansible_port": 2222,
                      "ansible_user": "ops", "ansible_password": "s3cret", "envoy_version": "1.39.3"},
             "vm-2": {"fleetmesh_address": "192.0.2.2", "envoy_version": "1.39.2"},
             # as read back by the workloads inventory, without envoy_version: the recorded version is kept
             "vm-3": {"fleetmesh_address": "192.0.2.3", "fleetmesh_envoy_version": "1.38.0"}}
    inv = _inventory(tmp_path, kube_api, ns, hosts)
    include = {"name": "Register", "ansible.builtin.include_role": {"name": "fleetmesh.envoy.mesh_registration"},
               "vars": {"mesh_registration_group": "web"}}
    upgrade = dict(include, vars={"mesh_registration_group": "web", "envoy_version": "{{ upgrade_to }}"})
    play = [{"name": "register", "hosts": "web", "gather_facts": False, "tasks": [include]},
            {"name": "upgraded", "hosts": "web", "gather_facts": False, "vars": {"upgrade_to": "1.40.0"},
             "tasks": [upgrade]}]
    path = tmp_path / "upgrade-like.yml"
    path.write_text(yaml.safe_dump(play))
    task = "Register the play's VMs in Kubernetes"

    def infos():
        wes = owned(kube_api, ns, "networking.istio.io/v1", "WorkloadEntry")
        return {name: json.loads(we["metadata"]["annotations"]["fleetmesh.envoy/host-info"])
                for name, we in wes.items()}

    path.write_text(yaml.safe_dump(play[:1]))
    _proc, out = playbook([str(path), "-i", str(inv)], tmp_path)
    assert task_result(out, task)["changed"]
    assert infos() == {
        "web-vm-1": {"ansible_host": "vm-1.example.com", "ansible_port": 2222, "ansible_user": "ops",
                     "envoy_version": "1.39.3"},
        "web-vm-2": {"ansible_host": "vm-2", "envoy_version": "1.39.2"},  # default: inventory_hostname
        "web-vm-3": {"ansible_host": "vm-3", "envoy_version": "1.38.0"}}
    assert "s3cret" not in json.dumps(owned(kube_api, ns, "networking.istio.io/v1", "WorkloadEntry"))
    _proc, out = playbook([str(path), "-i", str(inv)], tmp_path)
    assert task_result(out, task)["changed"] is False

    path.write_text(yaml.safe_dump(play))
    _proc, out = playbook([str(path), "-i", str(inv)], tmp_path)
    assert {i["envoy_version"] for i in infos().values()} == {"1.40.0"}
    assert task_result(out, task)["changed"]  # the second play's run, after the first put 1.39.x back


def test_the_worker_and_the_module_give_one_result(kube_api, ns, tmp_path):
    """On the controller the action plugin runs the registration in Ansible's worker process; with anything the
    worker does not have (here an ``environment``) the module runs. Same arguments, same result, no secret echoed."""
    ran = tmp_path / "module-processes"
    python = tmp_path / "python"  # counts the module processes
    python.write_text(f'#!/bin/sh\necho ran >> "{ran}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    token = kube_api.token(kubeapi.REGISTRAR_NAMESPACE, kubeapi.REGISTRAR_NAME, expiration_seconds=600)
    endpoints = [{"host": f"vm-{i}", "address": f"192.0.2.{i}", "service": f"svc-{i % 2}", "namespace": ns,
                  "ports": {"http": 8080}} for i in range(1, 5)]

    def task(name: str, auth: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": name, "fleetmesh.envoy.mesh_registration": dict(
            auth, registration=name, shapes=["serviceentry"],
            endpoints=[dict(e, service=f"{name}-{e['service']}") for e in endpoints]), **extra}

    kubeconfig = {"kubeconfig": str(kube_api.registrar_kubeconfig)}
    direct = {"host": kube_api.url, "api_key": token, "ca_cert": str(kube_api.ca_file)}
    play = [{"name": "both", "hosts": "localhost", "gather_facts": False, "tasks": [
        task("worker", kubeconfig), task("module", kubeconfig, environment={"FLEETMESH_TEST": "1"}),
        task("worker-token", direct), task("module-token", direct, environment={"FLEETMESH_TEST": "1"})]}]
    path = tmp_path / "both.yml"
    path.write_text(yaml.safe_dump(play))
    base = [str(path), "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={python}"]

    def same(worker: dict[str, Any], module: dict[str, Any], name: str) -> None:
        def norm(result: dict[str, Any], who: str) -> str:
            keep = {k: v for k, v in result.items() if k in ("changed", "counts", "objects", "mode", "notes",
                                                             "requests", "invocation", "diff", "failed")}
            return re.sub(rf'(?<![\w-]){re.escape(who)}(?=-svc-|")', "X", json.dumps(keep, sort_keys=True))
        assert norm(worker, name) == norm(module, name.replace("worker", "module"))

    for changed in (True, False):
        ran.unlink(missing_ok=True)
        proc, out = playbook([*base, "--diff"], tmp_path)
        results = {name: task_result(out, name) for name in ("worker", "module", "worker-token", "module-token")}
        assert ran.read_text().count("ran") == 2  # the two tasks with an environment, not the others
        for name in ("worker", "worker-token"):
            assert results[name]["changed"] is changed
            same(results[name], results[name.replace("worker", "module")], name)
        assert results["worker"]["requests"] == (7 if not changed else results["worker"]["requests"])
        assert token not in proc.stdout
        assert results["worker-token"]["invocation"]["module_args"]["api_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert set(owned(kube_api, ns, "networking.istio.io/v1", "ServiceEntry")) == {
        f"{who}-svc-{i}" for who in ("worker", "module", "worker-token", "module-token") for i in (0, 1)}
