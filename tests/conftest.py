"""Suite-wide rules.

* No silent skips in CI: with CI=true a skipped test is reported as a failure.
* `need(tool)` fails with a message naming the missing tool and how to get it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / ".build" / "collections"
IN_CI = os.environ.get("CI", "").lower() == "true"

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
