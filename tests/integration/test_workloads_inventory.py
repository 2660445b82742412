"""fleetmesh.envoy.workloads against the real kube-apiserver: the lab VMs registered by playbooks/register.yml
(from inventories/lab, as the registrar) are exactly what `ansible-inventory --graph` lists, grouped as
configured, by Envoy version too, with the connection details the registration recorded
(fleetmesh.envoy/host-info); a VM removed with playbooks/deregister.yml disappears. The VMs themselves are not
contacted (inventories/lab sets fleetmesh_address), so the lab need not be running."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
import yaml

from tests.integration.labutil import LAB_HOSTS, RECAP, env, extra

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]


def ansible(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    return proc


def graph(config: Path) -> dict[str, set[str]]:
    """group -> hosts directly in it, from `ansible-inventory --graph`."""
    out = ansible(["ansible-inventory", "-i", str(config), "--graph"]).stdout
    groups: dict[str, set[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in out.splitlines():
        stripped = line.lstrip(" |")
        if not stripped:
            continue
        depth = len(line) - len(stripped)
        name = stripped.lstrip("-")
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if name.startswith("@"):
            name = name[1:].rstrip(":")
            groups.setdefault(name, set())
            stack.append((depth, name))
        elif stack:
            groups[stack[-1][1]].add(name)
    return groups


def hosts_of(groups: dict[str, set[str]]) -> set[str]:
    return set().union(*groups.values()) if groups else set()


@pytest.fixture
def registration(kube_api: kubeapi.KubeAPI, tmp_path: Path) -> dict[str, Any]:
    ns = f"inv-{uuid.uuid4().hex[:8]}"
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    return {"ns": ns, "set": f"inv-{uuid.uuid4().hex[:8]}", "kubeconfig": str(kube_api.registrar_kubeconfig)}


def register(reg: dict[str, Any], shapes: list[str], *args: str, playbook: str = "register.yml"):
    """Returns host -> changed count of the play recap."""
    # hosts.yml, not the directory: the three LAB_HOSTS even while `lab.sh up N` has added generated_hosts.yml.
    proc = ansible(["ansible-playbook", "-i", "inventories/lab/hosts.yml", f"playbooks/{playbook}", *args,
                    *extra(fleetmesh_kubeconfig=reg["kubeconfig"], fleetmesh_namespace=reg["ns"],
                           mesh_registration_set=reg["set"], mesh_registration_shapes=shapes)])
    # localhost runs the runbook's host-pattern check only
    return {m[0]: int(m[2]) for m in RECAP.findall(proc.stdout) if m[0] != "localhost"}


def plugin_config(tmp_path: Path, reg: dict[str, Any], **options: Any) -> Path:
    path = tmp_path / "lab.workloads.yml"
    path.write_text(yaml.safe_dump({"plugin": "fleetmesh.envoy.workloads", "kubeconfig": reg["kubeconfig"],
                                    "registration_sets": [reg["set"]], **options}))
    return path


def test_graph_lists_exactly_the_registered_lab_vms_and_forgets_a_deregistered_one(registration, kube_api, tmp_path):
    reg = registration
    shapes = ["workloadentry", "serviceentry"]
    # The lab inventory sets no envoy_version: as an extra var here, as upgrade.yml gives it to the role.
    assert any(register(reg, shapes, *extra(envoy_version="1.39.3")).values())
    assert register(reg, shapes, *extra(envoy_version="1.39.3")) == dict.fromkeys(LAB_HOSTS, 0)  # idempotent
    config = plugin_config(tmp_path, reg,
                           keyed_groups=[{"key": "fleetmesh_service", "prefix": "", "separator": ""},
                                         {"key": "fleetmesh_labels.version", "prefix": "version"}],
                           groups={"lab_el": "inventory_hostname.startswith('fm-el-')"})
    groups = graph(config)
    ns_group = "namespace_" + reg["ns"].replace("-", "_")
    assert hosts_of(groups) == set(LAB_HOSTS)
    for group in ("service_web", ns_group, "network_lab_network", "web", "version_v1", "envoy_1_39_3"):
        assert groups.get(group) == set(LAB_HOSTS), (group, groups)
    assert groups["lab_el"] == {"fm-el-1"}

    # Connection details come from the registration (fleetmesh.envoy/host-info), not from compose.
    data = json.loads(ansible(["ansible-inventory", "-i", str(config), "--list"]).stdout)
    hostvars = data["_meta"]["hostvars"]
    for host, address in LAB_HOSTS.items():
        hv = hostvars[host]
        assert (hv["ansible_host"], hv["fleetmesh_address"], hv["ansible_user"]) == (address, address, "fleetadmin")
        assert hv["fleetmesh_envoy_version"] == "1.39.3" and "ansible_port" not in hv
        assert not {k for k in hv if "pass" in k or "key" in k or "token" in k}
        assert (hv["fleetmesh_service"], hv["fleetmesh_namespace"], hv["fleetmesh_registration"]) == \
            ("web", reg["ns"], reg["set"])
        assert hv["fleetmesh_ports"] == {"http": 8080} and hv["fleetmesh_labels"]["version"] == "v1"
        assert sorted(o.split()[0] for o in hv["fleetmesh_registered_objects"]) == ["ServiceEntry", "WorkloadEntry"]

    path = kube_api.resource_path("networking.istio.io/v1", "WorkloadEntry", "web-fm-deb-1", reg["ns"])
    status, body = kube_api.request("GET", path)
    assert status == 200, body
    assert json.loads(body["metadata"]["annotations"]["fleetmesh.envoy/host-info"]) == {
        "ansible_host": LAB_HOSTS["fm-deb-1"], "ansible_user": "fleetadmin", "envoy_version": "1.39.3"}

    # One VM upgraded (a --limit run, as upgrade.yml marks its batch ready): it moves to the new version's group,
    # the others keep theirs, in the ServiceEntry too.
    register(reg, shapes, "--limit", "fm-deb-1", *extra(envoy_version="1.40.0"))
    groups = graph(config)
    assert groups["envoy_1_40_0"] == {"fm-deb-1"}
    assert groups["envoy_1_39_3"] == {"fm-deb-2", "fm-el-1"}
    se_path = kube_api.resource_path("networking.istio.io/v1", "ServiceEntry", "web", reg["ns"])
    status, body = kube_api.request("GET", se_path)
    infos = json.loads(body["metadata"]["annotations"]["fleetmesh.envoy/host-info"])
    assert {h: i["envoy_version"] for h, i in infos.items()} == {
        "fm-deb-1": "1.40.0", "fm-deb-2": "1.39.3", "fm-el-1": "1.39.3"}

    # Deregister one VM: it disappears, from the WorkloadEntries and from the ServiceEntry alike.
    register(reg, ["workloadentry", "serviceentry"], "--limit", "fm-deb-2", playbook="deregister.yml")
    groups = graph(config)
    assert hosts_of(groups) == set(LAB_HOSTS) - {"fm-deb-2"}
    assert groups["web"] == {"fm-deb-1", "fm-el-1"}


def test_endpointslice_shape_keeps_not_ready_vms_and_other_sets_stay_out(registration, kube_api, tmp_path):
    reg = registration
    register(reg, ["endpointslice"], *extra(envoy_version="1.40.0"))
    register(reg, ["endpointslice"], "--limit", "fm-el-1", *extra(mesh_registration_healthy=False))
    config = plugin_config(tmp_path, reg, groups={"not_ready": "not fleetmesh_ready"},
                           group_by=["registration", "envoy_version"])
    groups = graph(config)
    assert hosts_of(groups) == set(LAB_HOSTS)
    assert groups["not_ready"] == {"fm-el-1"}
    assert groups["registration_" + reg["set"].replace("-", "_")] == set(LAB_HOSTS)
    # fm-el-1 was re-registered without envoy_version: its version is no longer recorded.
    assert groups["envoy_1_40_0"] == {"fm-deb-1", "fm-deb-2"}
    hostvars = json.loads(ansible(["ansible-inventory", "-i", str(config), "--list"]).stdout)["_meta"]["hostvars"]
    assert {h: (hv["ansible_host"], hv["ansible_user"]) for h, hv in hostvars.items()} == {
        h: (address, "fleetadmin") for h, address in LAB_HOSTS.items()}

    # Another registration set in the same namespace is not listed with this set's configuration,
    # and objects without the ownership labels never are.
    other = dict(reg, set=f"other-{uuid.uuid4().hex[:6]}")
    kube_api.apply([{"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                     "metadata": {"name": "stranger", "namespace": reg["ns"],
                                  "annotations": {"fleetmesh.envoy/host": "stranger"}},
                     "spec": {"address": "192.0.2.200", "labels": {"app": "web"}}}])
    assert hosts_of(graph(plugin_config(tmp_path, other))) == set()
    everything = plugin_config(tmp_path, reg, registration_sets=[], namespaces=[reg["ns"]])
    assert hosts_of(graph(everything)) == set(LAB_HOSTS)
