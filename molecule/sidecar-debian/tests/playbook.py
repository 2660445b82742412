"""Helpers of the sidecar scenarios' testinfra tests (not a test file): run a playbook against the molecule
instance the way molecule does (its inventory, ansible.cfg and collections path come from the environment the
testinfra verifier runs in), and read the changed count from the recap."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent
SCENARIO = TESTS.parent
VARS = yaml.safe_load((SCENARIO / "group_vars" / "all.yml").read_text())
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", TESTS.parents[2]))
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass
class Run:
    rc: int
    out: str

    @property
    def changed(self) -> int:
        return sum(int(m.group(2)) for m in RECAP.finditer(self.out))

    @property
    def recap(self) -> list[str]:
        return [m.group(0) for m in RECAP.finditer(self.out)]


def ansible_playbook(playbook: Path, extra_vars: dict, *args: str, timeout: int = 900) -> Run:
    """ansible-playbook PLAYBOOK against the molecule inventory, extra vars from a file (never on the command line)."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    binary = Path(sys.executable).with_name("ansible-playbook")
    command = str(binary) if binary.exists() else shutil.which("ansible-playbook")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0")
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="sidecar-vars-", dir=EPHEMERAL) as handle:
        json.dump(extra_vars, handle)
        handle.flush()
        proc = subprocess.run([command, "--inventory", str(inventory), str(playbook), "-e", f"@{handle.name}", *args],
                              env=env, capture_output=True, text=True, check=False, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr)


def sidecar_vars(**overrides) -> dict:
    """The scenario's variables for playbooks/sidecar.yml, as converge.yml sets them; a None override removes one."""
    values = dict(VARS, target="all",
                  fleetmesh_kubeconfig=str(EPHEMERAL / "kube" / "registrar.kubeconfig"),
                  istio_sidecar_package_source="{{ sidecar_package_source }}",
                  istio_sidecar_package_repo_url="file:///srv/istio-sidecar-repo")
    for name, value in overrides.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values
