"""The runbooks as AWX runs them (issue 9): ansible-runner with a private data directory laid out the way AWX
lays it out, on the lab VMs and the real kube-apiserver.

    <pdd>/project/          the project checkout (this repository)
    <pdd>/inventory/hosts   the inventory, as AWX writes it: an executable script printing the synced JSON
    <pdd>/env/extravars     survey answers merged with the survey defaults (as AWX merges them), plus the
                            extra var the kubeconfig credential type injects (fleetmesh_kubeconfig)
    <pdd>/env/ssh_key       the Machine credential's private key (ansible-runner adds it to an ssh-agent)
    <pdd>/env/cmdline       the Machine credential's user and become flags
    <pdd>/env/envvars       the credential type's env injectors (FLEETMESH_KUBECONFIG, ...) and the EE's
                            collection path
    <pdd>/env/kubeconfig    the credential type's file injector

The survey answers come from awx/surveys/*.json and are checked with AWX's launch rules first.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest

from tests.conftest import need
from tests.integration.labutil import LAB_HOSTS, env, lab_up

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SURVEYS = ROOT / "awx" / "surveys"
NAMESPACE = "fleet-lab"  # inventories/lab/group_vars/web.yml
MACHINE_USER = "fleetadmin"
# What the Machine credential replaces in the synced inventory.
CREDENTIAL_VARS = ("ansible_user", "ansible_ssh_private_key_file", "ansible_become")


# ---------------------------------------------------------------------------------------------
# AWX's survey handling at launch (awx/main/models/mixins.py: _survey_element_validation and
# _update_unified_job_kwargs): answers are validated against the survey; every default that passes the
# same check is added as an extra var, and the answers override them.
# ---------------------------------------------------------------------------------------------

def _choices(question: dict[str, Any]) -> list[str]:
    choices = question.get("choices") or []
    return [c for c in choices.splitlines() if c.strip()] if isinstance(choices, str) else list(choices)


def awx_answer_errors(question: dict[str, Any], data: dict[str, Any]) -> list[str]:
    var, kind = question["variable"], question["type"]
    if var not in data:
        return [f"'{var}' value missing"] if question["required"] else []
    value = data[var]
    if kind in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return [f"Value {value} for '{var}' expected to be a string."]
        if question.get("min") not in ("", None) and len(value) < int(question["min"]):
            return [f"'{var}' value {value} is too small"]
        if question.get("max") not in ("", None) and len(value) > int(question["max"]):
            return [f"'{var}' value {value} is too large"]
    elif kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return [f"Value {value} for '{var}' expected to be an integer."]
    elif kind == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return [f"Value {value} for '{var}' expected to be a numeric type."]
    elif kind == "multiselect":
        if not isinstance(value, list):
            return [f"'{var}' value is expected to be a list."]
        return [f"Value {v} for '{var}' expected to be one of {_choices(question)}." for v in value
                if v not in _choices(question)]
    elif kind == "multiplechoice" and value not in _choices(question):
        return [f"Value {value} for '{var}' expected to be one of {_choices(question)}."]
    return []


def survey(playbook: str) -> dict[str, Any]:
    return json.loads((SURVEYS / f"{playbook}.json").read_text())


def launch_extra_vars(playbook: str, answers: dict[str, Any]) -> dict[str, Any]:
    """The extra vars AWX gives a job launched with these survey answers (or the launch errors)."""
    spec = survey(playbook)["spec"]
    unknown = set(answers) - {q["variable"] for q in spec}
    assert not unknown, f"not questions of the {playbook} survey: {sorted(unknown)}"
    errors = [e for q in spec for e in awx_answer_errors(q, answers)]
    if errors:
        raise ValueError("; ".join(errors))
    extra = {}
    for q in spec:
        if q.get("default") is not None and not awx_answer_errors(q, {q["variable"]: q["default"]}):
            extra[q["variable"]] = q["default"]
    extra.update(answers)
    return extra


# ---------------------------------------------------------------------------------------------
# The private data directory
# ---------------------------------------------------------------------------------------------

def synced_inventory() -> dict[str, Any]:
    """inventories/lab as an AWX inventory sync stores it (vars unrendered), minus what the credential gives."""
    proc = subprocess.run(["ansible-inventory", "-i", "inventories/lab", "--list", "--export"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(proc.stdout)
    for name, group in data.items():
        if name != "_meta":
            for var in CREDENTIAL_VARS:
                (group.get("vars") or {}).pop(var, None)
    for hostvars in data.get("_meta", {}).get("hostvars", {}).values():
        for var in CREDENTIAL_VARS:
            hostvars.pop(var, None)
    return data


def write_private(path: Path, content: str) -> None:
    path.write_text(content)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)


class PrivateDataDir:
    def __init__(self, root: Path, kubeconfig: Path) -> None:
        self.root = root
        (root / "env").mkdir(parents=True)
        (root / "inventory").mkdir()
        (root / "project").symlink_to(ROOT)
        # Inventory: AWX writes the synced inventory as a script printing JSON.
        script = root / "inventory" / "hosts"
        payload = json.dumps(synced_inventory())
        script.write_text(f"#!/usr/bin/env python3\nimport sys\nsys.stdout.write({payload!r})\n")
        script.chmod(0o700)
        # The kubeconfig credential type: a file, env vars pointing at it, and the extra var.
        self.kubeconfig = root / "env" / "kubeconfig"
        write_private(self.kubeconfig, kubeconfig.read_text())
        envvars = {
            "FLEETMESH_KUBECONFIG": str(self.kubeconfig),
            "K8S_AUTH_KUBECONFIG": str(self.kubeconfig),
            # What the execution environment provides: the collection, and the artifact cache of the envoy role.
            "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
            "FLEETMESH_CACHE": os.environ.get("FLEETMESH_CACHE", "/var/cache/fleetmesh"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }
        write_private(root / "env" / "envvars", json.dumps(envvars))
        write_private(root / "env" / "cmdline", f"-u {MACHINE_USER} --become")

    def run(self, playbook: str, extra_vars: dict[str, Any], ident: str) -> dict[str, Any]:
        # The Machine credential's key; ansible-runner loads it into an ssh-agent and deletes the file.
        write_private(self.root / "env" / "ssh_key", (ROOT / ".lab" / "ssh" / "id_ed25519").read_text())
        extra = dict(extra_vars, fleetmesh_kubeconfig=str(self.kubeconfig))  # the credential's extra var injector
        write_private(self.root / "env" / "extravars", json.dumps(extra))
        run_env = env()
        for var in ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH", "FLEETMESH_KUBECONFIG", "KUBECONFIG"):
            run_env.pop(var, None)  # AWX runs in the project directory with the project's ansible.cfg
        proc = subprocess.run([need("ansible-runner", "run 'make setup' (ansible-runner is in requirements.lock)"),
                               "run", str(self.root), "-p", f"playbooks/{playbook}.yml", "--ident", ident],
                              env=run_env, capture_output=True, text=True, timeout=1800, check=False)
        artifacts = self.root / "artifacts" / ident
        stdout = (artifacts / "stdout").read_text() if (artifacts / "stdout").exists() else proc.stdout
        events = [json.loads(p.read_text()) for p in sorted((artifacts / "job_events").glob("*.json"))]
        return {"rc": int((artifacts / "rc").read_text()) if (artifacts / "rc").exists() else proc.returncode,
                "status": (artifacts / "status").read_text() if (artifacts / "status").exists() else "missing",
                "stdout": stdout + proc.stderr, "events": events, "extra_vars": extra}


def recap(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    stats = next((e["event_data"] for e in events if e.get("event") == "playbook_on_stats"), {})
    return {key: stats.get(key) or {} for key in ("ok", "changed", "failures", "dark", "skipped")}


def changed_tasks(events: list[dict[str, Any]]) -> list[str]:
    return [f"{e['event_data'].get('host')}: {e['event_data'].get('task')}" for e in events
            if e.get("event") == "runner_on_ok" and (e["event_data"].get("res") or {}).get("changed")]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab() -> dict[str, str]:
    need("podman", "run 'make setup' (apt-get install podman runc)")
    need("ssh-agent", "run 'make setup' (apt-get install openssh-client)")
    lab_up(3)
    return dict(LAB_HOSTS)


@pytest.fixture(scope="module")
def pdd(tmp_path_factory, kube_api: kubeapi.KubeAPI, lab) -> Iterator[PrivateDataDir]:
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    yield PrivateDataDir(tmp_path_factory.mktemp("awx") / "pdd", Path(kube_api.registrar_kubeconfig))


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lab-ca") / "ca"


def onboard_answers(ca_dir: Path) -> dict[str, Any]:
    """What an operator types into the onboard survey for the lab; everything else keeps its default."""
    return {
        "target": "lab",
        "envoy_limit_nofile": 16384,  # the lab's value (inventories/lab/group_vars/lab.yml); the default is 65536
        "workload_certs_lab_ca_dir": str(ca_dir),
        "mesh_registration_shapes": ["workloadentry"],
        # Booleans answered as a survey answers them: strings.
        "workload_certs_owner_create": "true",
        "mesh_registration_workload_group": "false",
    }


def owned_workload_entries(api: kubeapi.KubeAPI) -> dict[str, dict[str, Any]]:
    path = api.resource_path("networking.istio.io/v1", "WorkloadEntry", None, NAMESPACE)
    status, body = api.request("GET", path + "?labelSelector=app.kubernetes.io/managed-by=fleetmesh.envoy")
    assert status == 200, body
    return {i["metadata"]["annotations"]["fleetmesh.envoy/host"]: i for i in body["items"]}


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_onboard_then_status_through_ansible_runner(pdd, kube_api, ca_dir, tmp_path):
    extra = launch_extra_vars("onboard", onboard_answers(ca_dir))
    # Survey-shaped: booleans as "true"/"false", integers as numbers, multiselect as a list, and every other
    # question's default (unanswered booleans are not sent: the survey does not preselect them).
    assert extra["mesh_registration_workload_group"] == "false" and "envoy_admin_allow_non_loopback" not in extra
    assert extra["envoy_admin_port"] == 9901 and extra["mesh_registration_shapes"] == ["workloadentry"]
    assert extra["envoy_version"] == "1.40.0" and extra["workload_certs_key_type"] == "ec"

    run = pdd.run("onboard", extra, "onboard")
    assert run["rc"] == 0 and run["status"] == "successful", run["stdout"][-8000:]
    stats = recap(run["events"])
    assert set(stats["ok"]) >= set(LAB_HOSTS) and not stats["failures"] and not stats["dark"], stats
    registered = owned_workload_entries(kube_api)
    assert set(registered) == set(LAB_HOSTS)
    assert {h: we["spec"]["address"] for h, we in registered.items()} == LAB_HOSTS

    report = tmp_path / "status"
    run = pdd.run("status", launch_extra_vars("status", {"target": "lab", "status_report_dir": str(report)}),
                  "status")
    assert run["rc"] == 0 and run["status"] == "successful", run["stdout"][-8000:]
    rows = {r["host"]: r for r in json.loads((report / "status.json").read_text())}
    assert set(rows) == set(LAB_HOSTS)
    for host, row in rows.items():
        assert row["state"] == "LIVE" and row["health"] == "healthy", row
        assert row["envoy_version"] == "1.40.0", row
        assert isinstance(row["cert_days_left"], (int, float)) and row["cert_days_left"] > 0, row
        assert row["registration"].startswith("WorkloadEntry fleet-lab/"), (host, row)


def test_value_outside_an_argument_spec_fails_before_any_host_changes(pdd, ca_dir):
    answers = dict(onboard_answers(ca_dir), workload_certs_key_type="dsa")
    # AWX itself refuses this launch: the survey offers ec and rsa only.
    with pytest.raises(ValueError, match="Value dsa for 'workload_certs_key_type' expected to be one of"):
        launch_extra_vars("onboard", answers)
    # Values that reach a job another way (API launch with ask_variables_on_launch, job template or workflow
    # extra vars) have the same shape; the runbook's first task (fleetmesh.envoy.preflight, run once over every
    # host of the job) stops them before anything changes, and no host goes on.
    extra = launch_extra_vars("onboard", onboard_answers(ca_dir))
    extra["workload_certs_key_type"] = "dsa"
    run = pdd.run("onboard", extra, "onboard-bad-value")
    assert run["rc"] != 0 and run["status"] == "failed"
    said = " ".join(run["stdout"].split())
    for host in LAB_HOSTS:
        assert f'host {host}: workload_certs_key_type: "dsa"' in said and "ec, rsa" in said, run["stdout"][-6000:]
    assert "nothing was changed on any host or in the cluster" in said, run["stdout"][-6000:]
    stats = recap(run["events"])
    assert stats["failures"] and set(stats["failures"]) <= set(LAB_HOSTS), stats
    assert not stats["changed"] and changed_tasks(run["events"]) == [], changed_tasks(run["events"])
    failed = {e["event_data"].get("task") for e in run["events"] if e.get("event") == "runner_on_failed"}
    assert len(failed) == 1 and "model" in failed.pop().lower()
    went_on = {e["event_data"].get("host") for e in run["events"]
               if e.get("event") in ("runner_on_ok", "runner_on_changed", "runner_on_skipped")
               and e["event_data"].get("host") in LAB_HOSTS}
    assert not went_on, f"hosts ran tasks after the failed check: {went_on}"


def test_private_data_dir_is_awx_shaped(pdd):
    assert os.access(pdd.root / "inventory" / "hosts", os.X_OK)
    inventory = json.loads(subprocess.run([str(pdd.root / "inventory" / "hosts")], capture_output=True, text=True,
                                          check=True).stdout)
    assert set(inventory["_meta"]["hostvars"]) == set(LAB_HOSTS)
    assert all("ansible_user" not in (g.get("vars") or {}) for g in inventory.values() if isinstance(g, dict))
    assert oct((pdd.root / "env" / "kubeconfig").stat().st_mode & 0o777) == "0o600"
    assert shutil.which("ssh-agent")
