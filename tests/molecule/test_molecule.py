"""The molecule scenarios, run whole (create, prepare, converge, idempotence, verify, destroy).

`rhel` runs the EL 9 emulation image unless FLEETMESH_EL9_IMAGE names a real EL 9 init image.

They run two at a time, longest first (tests/molecule/runner.py): in `make test` the lab worker starts them at its
first lab test, next to the lab tests, and only the tests that take the lab network down wait for them
(tests/conftest.py); run alone, the first test here starts them. Each test waits for its own scenario and judges its
log. Two, not more: the controller has two cores here, and the scenarios' own waits (Envoy ready, systemd) must not
be starved.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, need
from tests.molecule import runner

SCENARIOS = runner.SCENARIOS


def test_scenarios_exist():
    assert {"debian", "rhel"} <= set(SCENARIOS), SCENARIOS


@pytest.fixture(scope="module")
def molecule_runs():
    """scenario -> Future of (completed process, seconds); started when the session began, or now."""
    need("podman", "run 'make setup' (apt-get install podman runc)")
    need("molecule")
    for var in runner.REQUIRED_ENV:
        assert os.environ.get(var), f"{var} is not set; run the suite through 'make test'"
    return runner.start()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(molecule_runs, scenario):
    proc, seconds = molecule_runs[scenario].result(timeout=3600)
    log = Path(ROOT / ".build" / f"molecule-{scenario}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr + f"\n# molecule test -s {scenario}: {seconds:.0f} s\n")
    tail = (proc.stdout + proc.stderr)[-8000:]
    assert proc.returncode == 0, f"molecule test -s {scenario} failed; full log in {log}\n{tail}"
    assert "idempotence" in proc.stdout + proc.stderr
