"""The execution environment of issue 9: ansible-builder introspects the collection's dependencies
(meta/execution-environment.yml -> meta/ee-requirements.txt and meta/ee-bindep.txt) cleanly, bindep reads
the system packages for dpkg and rpm platforms, and the ansible-builder v3 example renders a build context.
Galaxy is not reachable here, so the collection is introspected from a local collections tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]
META = REPO / "meta"


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1"))


def lines(path: Path) -> list[str]:
    """Requirement lines of a pip or bindep file, without comments."""
    out = []
    for line in path.read_text().splitlines():
        line = re.sub(r"(?:^|\s+)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


@pytest.fixture
def collections_tree(tmp_path: Path) -> Path:
    """A collections directory holding ansible_collections/fleetmesh/envoy -> this work tree."""
    root = tmp_path / "collections"
    (root / "ansible_collections" / "fleetmesh").mkdir(parents=True)
    (root / "ansible_collections" / "fleetmesh" / "envoy").symlink_to(REPO)
    return root


def test_collection_points_builder_at_its_requirement_files():
    ee = yaml.safe_load((META / "execution-environment.yml").read_text())
    assert ee["version"] == 1
    assert ee["dependencies"] == {"python": "meta/ee-requirements.txt", "system": "meta/ee-bindep.txt"}
    python = lines(META / "ee-requirements.txt")
    assert {re.split(r"[<>=!~ ]", r)[0] for r in python} >= {"kubernetes", "cryptography"}
    system = (META / "ee-bindep.txt").read_text()
    assert "[platform:dpkg]" in system and "[platform:rpm]" in system


def test_ansible_builder_introspect_lists_our_dependencies(collections_tree, tmp_path):
    builder = need("ansible-builder", "run 'make setup' (ansible-builder is in requirements.lock)")
    pip_out, bindep_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    proc = run([builder, "introspect", str(collections_tree), "--write-pip", str(pip_out),
                "--write-bindep", str(bindep_out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passing through non-PEP508" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    data = yaml.safe_load(proc.stdout)
    origin = "  # from collection fleetmesh.envoy"
    assert data["python"] == [line + origin for line in lines(META / "ee-requirements.txt")]
    assert data["system"] == [line + origin for line in lines(META / "ee-bindep.txt")]
    # The files an image build installs from: our lines, sanitized the same way.
    assert pip_out.read_text().splitlines() == data["python"]
    assert bindep_out.read_text().splitlines() == data["system"]


def test_introspect_with_user_files_as_an_ee_definition_adds_them(tmp_path):
    """The same files given as the user's own requirements (how an EE definition without the collection
    installed would pass them) also come through unchanged."""
    builder = need("ansible-builder", "run 'make setup' (ansible-builder is in requirements.lock)")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run([builder, "introspect", str(empty), "--user-pip", str(META / "ee-requirements.txt"),
                "--user-bindep", str(META / "ee-bindep.txt")])
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert data["python"] == [line + "  # from collection user" for line in lines(META / "ee-requirements.txt")]
    assert data["system"] == [line + "  # from collection user" for line in lines(META / "ee-bindep.txt")]


@pytest.mark.parametrize(("platform", "must", "must_not"), [
    ("dpkg", ["openssh-client", "gzip"], ["openssh-clients", "rpm-build", "dpkg-dev"]),
    ("rpm", ["openssh-clients", "gzip"], ["openssh-client", "rpm-build", "createrepo-c"]),
])
def test_bindep_resolves_per_platform(tmp_path, platform, must, must_not):
    """bindep parses the file (exit code 2 would be a syntax error) and picks the platform's packages;
    the envoy_repo build tools only with the opt-in profile."""
    bindep = need("bindep", "run 'make setup' (bindep comes with ansible-builder)")
    # Pretend to be the other platform family by rewriting the selectors for this host's family.
    host_is_dpkg = shutil.which("dpkg") is not None
    text = (META / "ee-bindep.txt").read_text()
    if (platform == "dpkg") != host_is_dpkg:
        text = (text.replace("platform:dpkg", "platform:__tmp").replace("platform:rpm", "platform:dpkg")
                .replace("platform:__tmp", "platform:rpm"))
    path = tmp_path / "bindep.txt"
    path.write_text(text)
    proc = run([bindep, "-f", str(path), "-l", "newline"])
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: some are missing on this machine
    listed = proc.stdout.split()
    assert set(must) <= set(listed) and not set(must_not) & set(listed), listed
    proc = run([bindep, "-f", str(path), "-l", "newline", "envoy-repo"])
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert ("dpkg-dev" if platform == "dpkg" else "rpm-build") in proc.stdout.split()


def test_builder_v3_example_renders_a_build_context(tmp_path):
    builder = need("ansible-builder", "run 'make setup' (ansible-builder is in requirements.lock)")
    work = tmp_path / "ee"
    work.mkdir()
    shutil.copy(REPO / "examples" / "execution-environment.yml", work)
    (work / "fleetmesh-envoy-0.1.0.tar.gz").write_bytes(b"")  # stands in for ansible-galaxy collection build
    proc = run([builder, "create", "-f", str(work / "execution-environment.yml"), "--context", str(tmp_path / "ctx")],
               cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (tmp_path / "ctx" / "Containerfile").read_text()
    assert "introspect" in containerfile and "install-from-bindep" in containerfile
    requirements = yaml.safe_load((tmp_path / "ctx" / "_build" / "requirements.yml").read_text())
    names = [c["name"] for c in requirements["collections"]]
    assert "fleetmesh-envoy-0.1.0.tar.gz" in names and "kubernetes.core" not in names  # the collection's own layer
    assert (tmp_path / "ctx" / "_build" / "fleetmesh-envoy-0.1.0.tar.gz").exists()
