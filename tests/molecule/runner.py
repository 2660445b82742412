"""The molecule scenarios, started once per pytest session (tests/molecule/test_molecule.py judges them).

They share nothing with each other (own containers, own ephemeral directories, the sidecar ones their own
kube-apiserver on free loopback ports), so they run WORKERS at a time, longest first, at a lower priority (NICE).
In `make test` the lab worker starts them at its first lab test (tests/conftest.py) and they run next to the lab
tests, at their own addresses on the lab network; only the tests that take the lab network down (`lab.sh down`
removes it with every container on it, the molecule instances included) wait for them, and those run last.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tests.conftest import ROOT

SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
WORKERS = int(os.environ.get("FLEETMESH_MOLECULE_WORKERS", "2"))
# They run next to the lab tests, the critical path of `make test`, and have time to spare (about 15 of its 30
# minutes), so they yield the CPU to them. Their own waits have room for that (measured in the whole suite).
NICE = os.environ.get("FLEETMESH_MOLECULE_NICE", "5")
# Longest first (measured: the sidecar scenarios take about twice as long), so the two workers end together.
ORDER = sorted(SCENARIOS, key=lambda s: (not s.startswith("sidecar"), s))
REQUIRED_ENV = ("FLEETMESH_DEBIAN_IMAGE", "FLEETMESH_RHEL_IMAGE", "CONTAINERS_CONF")

_lock = threading.Lock()
_runs: dict[str, Future] | None = None
_pool: ThreadPoolExecutor | None = None


def _run(molecule: str, scenario: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(["nice", "-n", NICE, molecule, "test", "-s", scenario], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=1800)
    return proc, time.monotonic() - t0


def missing() -> list[str]:
    """What the runs need and this machine lacks (empty when they can start)."""
    gaps = [tool for tool in ("podman", "molecule") if not shutil.which(tool)]
    return gaps + [f"{var} (run the suite through 'make test')" for var in REQUIRED_ENV if not os.environ.get(var)]


def start() -> dict[str, Future]:
    """scenario -> Future of (completed process, seconds); the first call starts the runs, later calls return them."""
    global _runs, _pool
    with _lock:
        if _runs is not None:
            return _runs
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", NO_COLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
        # The debian and rhel scenarios both build the Envoy repositories (the envoy_repo role) and start fm-repo in
        # prepare: on a cold cache there is no repository yet, and fm-repo cannot serve one, so build it once here
        # (as playbooks/envoy_repo.yml) and start fm-repo once, so that two prepares do not race to create either.
        cache = Path(env.get("FLEETMESH_CACHE") or "/var/cache/fleetmesh")
        repo_dir = Path(env.get("FLEETMESH_REPO_DIR") or cache / "repo")
        repo = None
        if not (repo_dir / "deb" / "Packages").is_file():
            repo = subprocess.run([shutil.which("ansible-playbook") or "ansible-playbook", "playbooks/envoy_repo.yml"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=900)
        if repo is None or repo.returncode == 0:
            repo = subprocess.run([str(ROOT / "tools" / "lab" / "repo.sh"), "up"], env=env, capture_output=True,
                                  text=True, check=False, timeout=600)
        if repo.returncode != 0:
            failed: Future = Future()
            failed.set_exception(AssertionError(f"{' '.join(repo.args)} failed:\n{repo.stdout[-3000:]}{repo.stderr}"))
            _runs = {s: failed for s in ORDER}
            return _runs
        _pool = ThreadPoolExecutor(max_workers=max(1, WORKERS), thread_name_prefix="molecule")
        molecule = shutil.which("molecule") or "molecule"
        _runs = {s: _pool.submit(_run, molecule, s, env) for s in ORDER}
        return _runs


def start_in_background() -> None:
    """start() on a thread of its own (repo.sh up takes a few seconds), for the session's first moments."""
    threading.Thread(target=start, name="molecule-start", daemon=True).start()


def wait() -> None:
    """Block until every started run has ended (nothing to wait for when none was started)."""
    with _lock:
        runs = _runs
    if runs is None:
        starter = [t for t in threading.enumerate() if t.name == "molecule-start"]
        for thread in starter:
            thread.join()
        with _lock:
            runs = _runs
    for future in (runs or {}).values():
        try:
            future.result(timeout=3600)
        except Exception:  # pylint: disable=broad-except  # judged by the scenario's own test
            pass
