"""Quality gates as tests, so `make test` ends with one pytest summary: ruff, yamllint,
ansible-lint (production profile), ansible-test sanity (empty ignore files), the galaxy
build, ansible-doc for every plugin, and setup's missing-prerequisite messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, need

ENV = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"), ANSIBLE_NOCOLOR="1")


def run(cmd: list[str], cwd: Path = ROOT, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout, check=False)


def assert_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"


def tracked_files() -> list[str]:
    out = run(["git", "ls-files", "-co", "--exclude-standard"]).stdout.split()
    return [f for f in out if (ROOT / f).is_file()]


def test_ruff():
    assert_ok(run([need("ruff"), "check", "."]), "ruff check")


def test_yamllint():
    assert_ok(run([need("yamllint"), "-s", "."]), "yamllint")


def test_ansible_lint_production(tmp_path):
    # A HOME of its own: ansible-lint puts ~/.ansible/collections first, where a stale copy could shadow ours.
    proc = run([need("ansible-lint"), "--profile", "production", "--offline"],
               env=dict(ENV, HOME=str(tmp_path), NO_COLOR="1"))
    assert_ok(proc, "ansible-lint --profile production")
    # ansible-lint exits 0 when only a lower profile passes ("'production' was required, but 'min' profile
    # passed"): the gate reads what it says.
    said = proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed." in said, (
        f"ansible-lint did not pass the production profile:\n{said[-4000:]}")


def test_sanity_ignore_files_are_empty():
    files = sorted((ROOT / "tests" / "sanity").glob("ignore-*.txt"))
    assert files, "tests/sanity/ignore-*.txt missing"
    for f in files:
        assert f.read_text().strip() == "", f"{f} must stay empty"


def test_ansible_test_sanity(tmp_path):
    need("ansible-test")
    dest = tmp_path / "ansible_collections" / "fleetmesh" / "envoy"
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    # ansible-test keeps per-test virtualenvs under HOME; setup gives it a HOME of its own with a
    # local stand-in for its unreachable pip bootstrap download (tools/ansible-test-get-pip.py).
    home = Path(os.environ.get("FLEETMESH_CACHE", "/var/cache/fleetmesh")) / "ansible-test-home"
    assert (home / ".ansible" / "test" / "cache").is_dir(), f"{home} is not prepared; run 'make setup'"
    proc = run(["ansible-test", "sanity", "--python", "3.11", "--color", "no"], cwd=dest, timeout=1800,
               env=dict(ENV, ANSIBLE_COLLECTIONS_PATH=str(tmp_path), HOME=str(home)))
    assert_ok(proc, "ansible-test sanity")


def test_galaxy_build_is_clean(tmp_path):
    assert_ok(run([need("ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path)]), "collection build")
    (tarball,) = tmp_path.glob("fleetmesh-envoy-*.tar.gz")
    with tarfile.open(tarball) as tf:
        names = tf.getnames()
    assert "galaxy.yml" not in names and "MANIFEST.json" in names
    # What users need, and nothing else: no lab, no lock files, no contributor tooling or lint ignores.
    allowed = ("MANIFEST.json", "FILES.json", "README.md", "LICENSE", "LICENSES", "CHANGELOG.md", "changelogs",
               "meta", "plugins", "roles", "playbooks", "inventories", "inventories/example", "docs", "awx",
               "examples")
    outside = [n for n in names if not any(n == a or n.startswith(a + "/") for a in allowed)
               or n.startswith(("inventories/lab", "playbooks/lab_", "changelogs/fragments"))]
    assert not outside, f"{tarball.name} carries files outside the allow-list: {outside}"
    for needed in ("plugins/modules/mesh_registration.py", "roles/envoy/tasks/main.yml", "playbooks/onboard.yml",
                   "meta/runtime.yml", "docs/model.md", "inventories/example/hosts.yml"):
        assert needed in names, f"{needed} is missing from {tarball.name}"


def plugin_names() -> list[tuple[str, str]]:
    found = []
    kinds = {"modules": "module", "inventory": "inventory", "lookup": "lookup", "callback": "callback"}
    for d, kind in kinds.items():
        for f in sorted((ROOT / "plugins" / d).glob("*.py")):
            if f.name != "__init__.py":
                found.append((kind, f.stem))
    for f in sorted((ROOT / "plugins" / "filter").glob("*.yml")):
        found.append(("filter", f.stem))
    for f in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        if not f.parts[-3].startswith("_"):
            found.append(("role", f.parts[-3]))
    return found


def test_there_are_plugins_to_document():
    assert plugin_names(), "no plugins or roles found"


@pytest.mark.parametrize(("kind", "name"), plugin_names())
def test_ansible_doc(kind, name):
    proc = run([need("ansible-doc"), "-t", kind, f"fleetmesh.envoy.{name}"])
    assert_ok(proc, f"ansible-doc -t {kind} fleetmesh.envoy.{name}")
    assert name in proc.stdout and "ERROR" not in proc.stderr


@pytest.mark.parametrize(
    ("script", "args", "missing"),
    [
        ("tools/lab/lab.sh", ["up"], "podman"),
        ("tools/lab/build-images.sh", [], "podman"),
    ],
)
def test_missing_prerequisite_is_named(tmp_path, script, args, missing):
    # A PATH with only the basics: the script must stop and say what is missing and how to get it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "sha256sum", "cut", "cat", "mkdir", "id", "grep", "awk"):
        src = shutil.which(tool)
        assert src, tool
        (bindir / tool).symlink_to(src)
    proc = run([str(bindir / "bash"), str(ROOT / script), *args], env={"PATH": str(bindir), "HOME": str(tmp_path)})
    assert proc.returncode != 0
    assert f"'{missing}' is missing" in proc.stderr or f"{missing} is missing" in proc.stderr, proc.stderr
    assert "make setup" in proc.stderr


def test_setup_refuses_wrong_python(tmp_path):
    proc = run(["bash", str(ROOT / "tools/setup.sh"), "venv"], env=dict(ENV, FLEETMESH_PYTHON="/bin/false"))
    assert proc.returncode != 0
    assert "Python 3.11" in proc.stderr or "3.11" in proc.stderr, proc.stderr


def test_changelog_fragments_lint_and_changelog_is_generated(tmp_path):
    """Changes are described by fragments (changelogs/fragments/*.yml); CHANGELOG.md is generated from them."""
    tool = need("antsibull-changelog")
    lint = run([tool, "lint"])
    assert_ok(lint, "antsibull-changelog lint")
    assert not (lint.stdout + lint.stderr).strip(), f"antsibull-changelog lint reports:\n{lint.stdout}{lint.stderr}"
    assert_ok(run([tool, "lint-changelog-yaml", "changelogs/changelog.yaml"]), "lint-changelog-yaml")
    for name in ("galaxy.yml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "changelogs", tmp_path / "changelogs")
    assert_ok(run([tool, "generate"], cwd=tmp_path), "antsibull-changelog generate")
    assert (tmp_path / "CHANGELOG.md").read_text() == (ROOT / "CHANGELOG.md").read_text(), (
        "CHANGELOG.md is not what antsibull-changelog generates from changelogs/; run 'antsibull-changelog generate'")
