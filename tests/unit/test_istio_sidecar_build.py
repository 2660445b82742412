"""tools/pkg/istio-sidecar/build.sh packages the real pilot-agent only (issue 14, item 8: no stand-in).

The package build itself runs in the lab tests and the molecule sidecar scenarios (cached by its stamp); here only
what needs no build: the stand-in is gone from the tree and from the script, and asking for it fails before
anything is built, naming the variable, the value and what is allowed.
"""

from __future__ import annotations

import os
import subprocess

from tests.conftest import ROOT

BUILD_DIR = ROOT / "tools/pkg/istio-sidecar"


def test_no_stand_in_is_left_to_package():
    assert not (BUILD_DIR / "pilot-agent-standin.py").exists()
    script = (BUILD_DIR / "build.sh").read_text()
    assert "standin.py" not in script and "agent_kind" not in script
    assert "exit 5" in script  # the real agent missing after its build: a failed build, no package


def test_asking_for_the_stand_in_fails_before_any_build(tmp_path):
    env = {**os.environ, "ISTIO_SIDECAR_PILOT_AGENT": "standin", "FLEETMESH_CACHE": str(tmp_path)}
    run = subprocess.run([str(BUILD_DIR / "build.sh"), "--print-dir"], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("build.sh: ISTIO_SIDECAR_PILOT_AGENT=standin; allowed: real"), run.stderr
    assert run.stdout == "" and list(tmp_path.iterdir()) == []
