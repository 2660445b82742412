"""The molecule scenarios, run whole (create, prepare, converge, idempotence, verify, destroy).

`rhel` runs the EL 9 emulation image unless FLEETMESH_EL9_IMAGE names a real EL 9 init image."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT, need

SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


def test_scenarios_exist():
    assert {"debian", "rhel"} <= set(SCENARIOS), SCENARIOS


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    need("podman", "run 'make setup' (apt-get install podman runc)")
    molecule = need("molecule")
    for var in ("FLEETMESH_DEBIAN_IMAGE", "FLEETMESH_RHEL_IMAGE", "CONTAINERS_CONF"):
        assert os.environ.get(var), f"{var} is not set; run the suite through 'make test'"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    proc = subprocess.run([molecule, "test", "-s", scenario], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=1800)
    log = ROOT / ".build" / f"molecule-{scenario}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr)[-8000:]
    assert proc.returncode == 0, f"molecule test -s {scenario} failed; full log in {log}\n{tail}"
    assert "idempotence" in proc.stdout + proc.stderr
