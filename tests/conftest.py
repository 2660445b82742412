"""Suite-wide rules.

* No silent skips in CI: with CI=true a skipped test is reported as a failure.
* `need(tool)` fails with a message naming the missing tool and how to get it.
* One lab per machine: the lab network, its VM names and the molecule containers are machine-wide, so a session that
  collected a lab test (needs_lab: an integration module not in LAB_FREE, or a molecule test) takes an exclusive
  lock (LAB_LOCK) and holds it until the session ends; a second pytest (another checkout, another terminal) waits,
  saying for what, instead of replacing the lab under the first one. Processes started while the lock is held
  inherit FLEETMESH_LAB_LOCKED and do not take it again.
* The molecule scenarios start when a session that collected them begins (tests/molecule/runner.py), next to the
  quality and unit tests, which touch no container, and they go on next to the integration tests (their instances
  sit on the lab network at their own fixed addresses, .6 to .9, below the lab VMs'). Only a test marked
  `lab_network_down` (it takes the lab network down, and the molecule instances with it) waits until they have
  ended; those tests run last. FLEETMESH_MOLECULE_EARLY=0 starts them at their own tests instead.
* Two workers (`make test` runs `pytest -n 2 --dist loadscope`, pytest-xdist, with the scheduler below): every
  test that needs the lab (the lab VMs, its network, podman, the molecule scenarios) is in one scope, `lab`, so one
  worker runs them all, in order, as a single session would. Everything else (quality gates, unit tests and the
  integration modules in LAB_FREE, which start their own servers on free loopback ports or network namespaces of
  their own) runs on the other worker meanwhile. The controller takes the lab lock before the workers start; the
  lab worker starts the molecule scenarios at its first lab test.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / ".build" / "collections"
IN_CI = os.environ.get("CI", "").lower() == "true"
LAB_LOCK = Path(os.environ.get("FLEETMESH_LAB_LOCK", "/var/tmp/fleetmesh-lab.lock"))
_LAB_DIRS = (ROOT / "tests" / "integration", ROOT / "tests" / "molecule")
# Integration modules that touch nothing machine-wide of the lab: no lab VM, no lab network, no podman, no fixed port
# (their kube-apiserver, Contour, istiod and Envoy pick free loopback ports; test_shift_traffic's stand-ins sit in
# network namespaces of its own on 10.213.79.0/24). They run on the lab-free worker, next to the lab tests.
LAB_FREE = frozenset({
    "test_awx_runner_ee.py", "test_contour_harness.py", "test_envoy_modules.py", "test_envoy_packages.py",
    "test_istiod.py", "test_kube_layer_apiserver.py", "test_kubeapi_harness.py", "test_registration_kube.py",
    "test_registration_playbooks.py", "test_shift_traffic.py", "test_workloads_inventory.py",
})
LAB_SCOPE = "lab"
_lab_lock_fd: list[int] = []
_MOLECULE_DIR = ROOT / "tests" / "molecule"
_molecule_early: list[bool] = []  # [waited?] once the runs were started at the session's beginning
_molecule_deferred: list[bool] = []  # an xdist worker: start them at its first lab test (only the lab worker has one)
# The lab tests are the critical path of `make test`; the lab-free worker has time to spare (its share is a third of
# the lab worker's), so it yields the CPU to them: it lowers its priority at its first test (children inherit it).
FREE_WORKER_NICE = int(os.environ.get("FLEETMESH_FREE_WORKER_NICE", "10"))
_niced: list[bool] = []

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


def need(tool: str, how: str = "run 'make setup'") -> str:
    """Return the path of `tool`; fail (CI) or skip (elsewhere) naming it and how to get it."""
    path = shutil.which(tool)
    if path:
        return path
    msg = f"required tool '{tool}' is missing; {how}"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which is not allowed: {report.longrepr}"


def needs_lab(path: Path | str) -> bool:
    """Whether a test file needs the machine's lab (an integration module not in LAB_FREE, or a molecule test)."""
    path = Path(str(path))
    return any(path.is_relative_to(d) for d in _LAB_DIRS) and path.name not in LAB_FREE


def _args_may_need_lab(config) -> bool:
    """Before collection (the xdist controller collects nothing): whether the command line may select a lab test."""
    for arg in config.args or [str(config.rootpath)]:
        path = Path(config.invocation_params.dir, arg.split("::", 1)[0]).resolve()
        if any(d.is_relative_to(path) for d in _LAB_DIRS) or (path.is_dir() and needs_lab(path / "x")) or \
                (path.is_file() and needs_lab(path)):
            return True
    return False


def _take_lab_lock() -> None:
    if _lab_lock_fd or os.environ.get("FLEETMESH_LAB_LOCKED"):
        return
    fd = os.open(LAB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write(f"\nwaiting for the lab lock {LAB_LOCK} (another test run uses the lab) ...\n")
        fcntl.flock(fd, fcntl.LOCK_EX)
    _lab_lock_fd.append(fd)
    os.environ["FLEETMESH_LAB_LOCKED"] = "1"


def pytest_sessionstart(session):
    """The xdist controller takes the lab lock before its workers start (they inherit FLEETMESH_LAB_LOCKED)."""
    config = session.config
    if config.pluginmanager.has_plugin("dsession") and not config.option.collectonly and _args_may_need_lab(config):
        _take_lab_lock()


# In `make test`, the lab modules most sensitive to a loaded machine (many VMs, fault timing, the sidecar's capture
# and restarts) run after the other lab modules, once the molecule scenarios and the lab-free worker are done.
LAB_LATE = ("test_istio_mesh.py", "test_fault_matrix.py")


def pytest_collection_modifyitems(config, items):
    """An xdist worker collects the lab tests first, so the first worker to ask for work gets them (`make test`
    keeps that order with --no-loadscope-reorder), LAB_LATE after the other lab modules. Tests that take the lab
    network down run last."""
    worker = hasattr(config, "workerinput")

    def late(item) -> int:
        name = Path(str(item.path)).name
        return 1 + LAB_LATE.index(name) if worker and name in LAB_LATE else 0

    items.sort(key=lambda item: (worker and not needs_lab(item.path),
                                 item.get_closest_marker("lab_network_down") is not None,
                                 Path(str(item.path)).is_relative_to(_MOLECULE_DIR), late(item)))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with the scopes of LAB_SCOPE: every lab test in one scope (one worker runs them in order),
    any other module a scope of its own (its module fixtures set up once)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

    class LabScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return LAB_SCOPE if needs_lab(ROOT / module) else module

    return LabScopeScheduling(config, log)


def pytest_collection_finish(session):
    """Take the machine's lab lock before any fixture runs when a lab test was collected (module-scoped lab
    fixtures start VMs before any function-scoped fixture could take it)."""
    if not session.config.option.collectonly and any(needs_lab(item.path) for item in session.items):
        _take_lab_lock()
    if os.environ.get("FLEETMESH_MOLECULE_EARLY", "1") != "0" and \
            any(Path(str(item.path)).is_relative_to(_MOLECULE_DIR) for item in session.items):
        from tests.molecule import runner  # pylint: disable=import-outside-toplevel  # imports this module

        if runner.missing():  # their own tests say what is missing
            return
        if hasattr(session.config, "workerinput"):  # an xdist worker: every worker collects every test
            _molecule_deferred.append(True)
        else:
            runner.start_in_background()
            _molecule_early.append(False)


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures (a module's lab fixture brings the lab up)
def pytest_runtest_setup(item):
    """The lab worker starts the molecule scenarios at its first lab test; a test that takes the lab network down
    waits until the molecule scenarios started with the session have ended."""
    if not _niced and hasattr(item.config, "workerinput") and not needs_lab(item.path):
        os.nice(FREE_WORKER_NICE)
        _niced.append(True)
    if _molecule_deferred and not _molecule_early and needs_lab(item.path):
        from tests.molecule import runner  # pylint: disable=import-outside-toplevel

        # Not in the background: fm-repo (repo.sh up, a few seconds) must be up before this test's fixtures bring the
        # lab up, or both set up the lab network at once (IPAM: "10.213.77.5 is already allocated").
        runner.start()
        _molecule_early.append(False)
    if _molecule_early and not _molecule_early[0] and item.get_closest_marker("lab_network_down"):
        from tests.molecule import runner  # pylint: disable=import-outside-toplevel

        sys.stderr.write(f"\nwaiting for the molecule scenarios to end before {item.nodeid} (it takes the lab network "
                         "down) ...\n")
        runner.wait()
        _molecule_early[0] = True
