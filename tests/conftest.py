"""Suite-wide rules.

* No silent skips in CI: with CI=true a skipped test is reported as a failure.
* `need(tool)` fails with a message naming the missing tool and how to get it.
* One lab per machine: the lab network, its VM names and the molecule containers are machine-wide, so a session that
  collected an integration or molecule test takes an exclusive lock (LAB_LOCK) and holds it until the session ends;
  a second pytest (another checkout, another terminal) waits, saying for what, instead of replacing the lab under
  the first one. Processes started while the lock is held inherit FLEETMESH_LAB_LOCKED and do not take it again.
* The molecule scenarios start when a session that collected them begins (tests/molecule/runner.py), next to the
  quality and unit tests, which touch no container, and they go on next to the integration tests (their instances
  sit on the lab network at their own fixed addresses, .6 to .9, below the lab VMs'). Only a test marked
  `lab_network_down` (it takes the lab network down, and the molecule instances with it) waits until they have
  ended. FLEETMESH_MOLECULE_EARLY=0 starts them at their own tests instead.
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
_lab_lock_fd: list[int] = []
_MOLECULE_DIR = ROOT / "tests" / "molecule"
_molecule_early: list[bool] = []  # [waited?] once the runs were started at the session's beginning

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


def pytest_collection_finish(session):
    """Take the machine's lab lock before any fixture runs when an integration or molecule test was collected
    (module-scoped lab fixtures start VMs before any function-scoped fixture could take it)."""
    if any(Path(str(item.path)).is_relative_to(d) for item in session.items for d in _LAB_DIRS):
        _take_lab_lock()
    if os.environ.get("FLEETMESH_MOLECULE_EARLY", "1") != "0" and \
            any(Path(str(item.path)).is_relative_to(_MOLECULE_DIR) for item in session.items):
        from tests.molecule import runner  # pylint: disable=import-outside-toplevel  # imports this module

        if not runner.missing():  # otherwise their own tests say what is missing
            runner.start_in_background()
            _molecule_early.append(False)


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures (a module's lab fixture brings the lab up)
def pytest_runtest_setup(item):
    """A test that takes the lab network down waits until the molecule scenarios started with the session have ended."""
    if _molecule_early and not _molecule_early[0] and item.get_closest_marker("lab_network_down"):
        from tests.molecule import runner  # pylint: disable=import-outside-toplevel

        sys.stderr.write(f"\nwaiting for the molecule scenarios to end before {item.nodeid} (it takes the lab network "
                         "down) ...\n")
        runner.wait()
        _molecule_early[0] = True
