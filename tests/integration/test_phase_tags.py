"""Phase tags through a runbook at run time (README: Tags): `onboard.yml --tags configure` on an onboarded lab runs
the tasks the tags select, dynamic role includes included, and changes nothing.

tests/unit/test_runbook_tags.py checks every runbook and tag without the lab, from the listing of
tests/unit/runbook_tasks.py (`--list-tasks` with the dynamic includes expanded). This one run checks that listing
against what Ansible really runs: the JSON callback names every task started, and each one is in the listing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.labutil import ROOT, env, extra, lab_up, playbook

pytestmark = [pytest.mark.lab]
E = "fleetmesh.envoy.envoy : "
CONFIGURE = [E + "Validate the envoy variables before touching the host",
             E + "Activate the installed Envoy version and converge the instance (user, wrapper, unit, env, validated "
                 "bootstrap)",
             "fleetmesh.envoy.workload_certs : Sign the CSRs of all hosts of the play"]
NOT_CONFIGURE = [E + "Start or hot-restart Envoy", E + "Install Envoy (a version that is not on the host yet, or the "
                                                       "native package)",
                 E + "Read the instance's state (the run phase without the install and configure phases)"]


# Lean: no cluster (the registration's tags are the unit test's), no app; one onboard to start from an onboarded lab.
@pytest.fixture(scope="module")
def onboarded(tmp_path_factory) -> list[str]:
    args = extra(target="lab", workload_certs_lab_ca_dir=str(Path(tmp_path_factory.mktemp("lab-ca")) / "ca"),
                 workload_certs_owner_create=True)
    lab_up(3)
    first = playbook("onboard.yml", *args)
    assert first.rc == 0, first.out[-6000:]
    return args


def test_onboard_tags_configure_runs_the_configure_phase_and_changes_nothing(onboarded):
    helper = str(ROOT / "tests" / "unit" / "runbook_tasks.py")
    listing = subprocess.run([sys.executable, helper, "-i", "inventories/lab",
                              "playbooks/onboard.yml", "--list-tasks", "--tags", "configure", *onboarded],
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert listing.returncode == 0, listing.stdout[-3000:] + listing.stderr[-3000:]
    selected = {line.strip().split("\tTAGS: ")[0] for line in listing.stdout.splitlines() if "\tTAGS: " in line}

    proc = subprocess.run(["ansible-playbook", "-i", "inventories/lab", "playbooks/onboard.yml", "--tags", "configure",
                           *onboarded], cwd=ROOT, env=dict(env(), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    ran = [t["task"]["name"] for play in result["plays"] for t in play["tasks"]]
    assert set(ran) <= selected, f"tasks ran that --tags configure does not list: {sorted(set(ran) - selected)}"
    missing = [n for n in CONFIGURE if n not in ran]
    assert not missing, f"configure tasks that did not run: {missing}\n" + "\n".join(ran)
    wrong = [n for n in NOT_CONFIGURE if n in ran]
    assert not wrong, f"tasks of other phases ran: {wrong}"
    changed = {h: s["changed"] for h, s in result["stats"].items()}
    assert changed == {h: 0 for h in changed}, changed
