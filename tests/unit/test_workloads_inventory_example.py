"""inventories/example (docs/inventories.md): a group per service under the registration group, every VM
in exactly one service group, and every host's inventory model valid by the collection's own checks
(fleetmesh.envoy.validate runs on the controller; no host is contacted)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example"
SERVICES = ("reviews", "ratings")


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"))
    env.pop("FLEETMESH_KUBECONFIG", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_a_group_per_service_under_the_registration_group():
    proc = run(["ansible-inventory", "-i", str(EXAMPLE), "--list"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["mesh"]["children"]) == sorted(SERVICES)
    members = {s: set(data[s]["hosts"]) for s in SERVICES}
    assert not members["reviews"] & members["ratings"], "a VM in two service groups"
    hostvars = data["_meta"]["hostvars"]
    for service, hosts in members.items():
        for host in hosts:
            assert hostvars[host]["fleetmesh_service"] == service
            assert hostvars[host]["mesh_registration_group"] == "mesh"
    sites = set(data["dc1"]["hosts"]) | set(data["dc2"]["hosts"])
    assert sites == members["reviews"] | members["ratings"]
    # host_vars only where a host differs: here, the one with a separate mesh NIC.
    assert sorted(p.name for p in (EXAMPLE / "host_vars").iterdir()) == ["reviews-03.dc2.example.com.yml"]
    assert hostvars["reviews-03.dc2.example.com"]["fleetmesh_address"] == "198.51.100.23"
    assert hostvars["reviews-03.dc2.example.com"]["fleetmesh_locality"] == "us-east/zone-b"


def test_every_hosts_model_passes_the_collections_checks(tmp_path):
    play = [{
        "name": "Check the example inventory's model",
        "hosts": "mesh",
        "gather_facts": False,
        "tasks": [{
            "name": "Validate",
            "fleetmesh.envoy.validate": {
                "checks": ["fleetmesh_model", "envoy", "workload_certs"],
                "vars": {v: "{{ " + v + " | default(omit) }}" for v in (
                    "fleetmesh_service", "fleetmesh_namespace", "fleetmesh_service_account", "fleetmesh_ports",
                    "fleetmesh_labels", "fleetmesh_network", "fleetmesh_locality", "fleetmesh_weight",
                    "fleetmesh_address", "fleetmesh_trust_domain", "fleetmesh_cluster_id", "fleetmesh_mesh_id",
                    "envoy_version", "envoy_install_method", "envoy_listeners", "workload_certs_source",
                    "workload_certs_lifetime", "inventory_hostname", "ansible_host")},
            },
        }],
    }]
    path = tmp_path / "check.yml"
    path.write_text(yaml.safe_dump(play))
    proc = run(["ansible-playbook", "-i", str(EXAMPLE), str(path)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout and proc.stdout.count("ok=1") == 5
