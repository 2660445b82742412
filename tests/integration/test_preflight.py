"""fleetmesh.envoy.preflight and the target check, run by ansible-playbook without contacting any host.

The lab inventory and the production-shaped example pass (no false alarm); values from facts that are not gathered
yet are left to the roles; an undefined variable that is not a fact, and a host pattern matching nothing, fail.
"""

from __future__ import annotations

import json

from tests.conftest import ROOT
from tests.integration.labutil import extra, playbook

ONLY = "tests/integration/playbooks/preflight_only.yml"


def only(tmp_path, inventory="inventories/lab", **kw):
    out = tmp_path / "workloads.json"
    run = playbook(ONLY, *extra(preflight_out=str(out), **kw), inventory=inventory)
    return run, (json.loads(out.read_text()) if run.rc == 0 else None)


def test_lab_inventory_passes_and_the_model_is_resolved(tmp_path):
    run, found = only(tmp_path, target="lab")
    assert run.rc == 0, run.out[-3000:]
    assert set(found) == {"fm-deb-1", "fm-deb-2", "fm-el-1"}
    assert found["fm-deb-1"]["spiffe_id"] == "spiffe://cluster.local/ns/fleet-lab/sa/web"
    assert found["fm-el-1"]["address"] == "10.213.77.51"
    assert found["fm-deb-2"]["dns_names"][-1] == "web.fleet-lab.svc.cluster.local"


def test_example_inventory_passes(tmp_path):
    run, found = only(tmp_path, inventory="inventories/example", target="all")
    assert run.rc == 0, run.out[-3000:]
    assert len(found) >= 3


def test_facts_not_gathered_yet_are_left_to_the_roles_but_other_undefined_names_fail(tmp_path):
    later, found = only(tmp_path, target="lab", fleetmesh_address="{{ ansible_default_ipv4.address }}")
    assert later.rc == 0, later.out[-3000:]
    assert found["fm-deb-1"]["address"] is None
    typo = only(tmp_path, target="lab", envoy_log_level="{{ envoy_log_levle }}")[0]
    assert typo.rc != 0
    assert "host fm-deb-1: envoy_log_level: cannot be resolved ('envoy_log_levle' is undefined)" in typo.out


def test_a_pattern_that_matches_no_host_fails_naming_it():
    run = playbook("onboard.yml", *extra(target="web-typo"))
    assert run.rc != 0
    assert 'The host pattern "web-typo" (target) matches no host of the inventory' in " ".join(run.out.split())
    assert "fm-deb-1" not in run.recap


def test_a_model_variable_set_for_the_play_fails_naming_it(tmp_path):
    """Play vars are not in hostvars, where every runbook reads the model: ignoring them silently would register
    the inventory's ports instead of the ones the user wrote."""
    play = tmp_path / "play_vars.yml"
    play.write_text((ROOT / ONLY).read_text().replace(
        "  gather_facts: false\n",
        "  gather_facts: false\n  vars:\n    fleetmesh_ports: {http: 8081}\n"
        "    mesh_registration_endpoint_ports: {http: 1}\n",
        1))
    out = tmp_path / "workloads.json"
    run = playbook(str(play), *extra(preflight_out=str(out), target="lab"))
    assert run.rc != 0 and not out.exists(), run.out[-3000:]
    flat = " ".join(run.out.split())
    for var in ("fleetmesh_ports", "mesh_registration_endpoint_ports"):
        assert f"{var}: set for the play (its vars:, vars_files or include_vars), which the model does not read" in flat
    assert "as an extra var (-e) or with ansible.builtin.set_fact" in flat
    # The same values as extra vars are read per host: no error.
    same, found = only(tmp_path, target="lab", fleetmesh_ports={"http": 8081})
    assert same.rc == 0, same.out[-3000:]
    assert found["fm-deb-1"]["ports"] == {"http": 8081}
    # A play that lists a role carries the role's defaults (envoy_listeners, mesh_registration_endpoint_ports):
    # they are not the user's play vars. The roles are tagged never here, so no host is contacted.
    with_roles = tmp_path / "with_roles.yml"
    with_roles.write_text((ROOT / ONLY).read_text().replace(
        "  gather_facts: false\n",
        "  gather_facts: false\n  roles:\n    - role: fleetmesh.envoy.envoy\n      tags: [never]\n"
        "    - role: fleetmesh.envoy.mesh_registration\n      tags: [never]\n", 1))
    run = playbook(str(with_roles), *extra(preflight_out=str(out), target="lab"))
    assert run.rc == 0, run.out[-3000:]
