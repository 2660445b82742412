"""The molecule scenarios, run whole (create, prepare, converge, idempotence, verify, destroy).

`rhel` runs the EL 9 emulation image unless FLEETMESH_EL9_IMAGE names a real EL 9 init image.

The scenarios share nothing (own containers, own ephemeral directories, the sidecar ones their own kube-apiserver
on free loopback ports), so they run two at a time (WORKERS): the first test starts the runs, longest first, and
each test waits for its own scenario and judges its log. Two, not more: the controller has two cores here, and the
scenarios' own waits (Envoy ready, systemd) must not be starved.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, need

SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
WORKERS = int(os.environ.get("FLEETMESH_MOLECULE_WORKERS", "2"))
# Longest first (measured: the sidecar scenarios take about twice as long), so the two workers end together.
ORDER = sorted(SCENARIOS, key=lambda s: (not s.startswith("sidecar"), s))


def test_scenarios_exist():
    assert {"debian", "rhel"} <= set(SCENARIOS), SCENARIOS


def _run(molecule: str, scenario: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([molecule, "test", "-s", scenario], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=1800)
    return proc, time.monotonic() - t0


@pytest.fixture(scope="module")
def molecule_runs():
    """scenario -> Future of (completed process, seconds); started at the first use, WORKERS at a time."""
    need("podman", "run 'make setup' (apt-get install podman runc)")
    molecule = need("molecule")
    for var in ("FLEETMESH_DEBIAN_IMAGE", "FLEETMESH_RHEL_IMAGE", "CONTAINERS_CONF"):
        assert os.environ.get(var), f"{var} is not set; run the suite through 'make test'"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    # The debian and rhel scenarios both start fm-repo in prepare when it is not running: start it once here, so
    # that two prepares do not race to create it.
    repo = subprocess.run([str(ROOT / "tools" / "lab" / "repo.sh"), "up"], env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    assert repo.returncode == 0, f"tools/lab/repo.sh up failed:\n{repo.stdout}{repo.stderr}"
    pool = ThreadPoolExecutor(max_workers=max(1, WORKERS), thread_name_prefix="molecule")
    runs: dict[str, Future] = {s: pool.submit(_run, molecule, s, env) for s in ORDER}
    yield runs
    pool.shutdown(wait=True)


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
