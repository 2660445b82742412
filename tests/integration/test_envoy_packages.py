"""The native Envoy packages: playbooks/envoy_repo.yml (role fleetmesh.envoy.envoy_repo) builds
fleetmesh-envoy .deb and .rpm packages from the controller's artifact cache and publishes an apt
and a yum repository. Built once per module into a fresh directory; molecule installs them."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, need

VERSION = "1.40.0"
OLDER = "1.39.3"
NAME = "fleetmesh-envoy"
BINARY = f"/opt/fleetmesh/envoy/{VERSION}/envoy"
UNIT = "/usr/lib/systemd/system/fleetmesh-envoy@.service"
WRAPPER = "/usr/libexec/fleetmesh-envoy-run"
CACHE = Path(os.environ.get("FLEETMESH_CACHE") or "/var/cache/fleetmesh") / "artifacts" / "envoy"
RECAP = re.compile(r"^localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def cached_sha256(version: str) -> str:
    sums = (CACHE / version / "SHA256SUMS").read_text().splitlines()
    return next(line.split()[0] for line in sums if line.endswith("  envoy"))


def build(repo: Path, *extra: str) -> tuple[int, int, str]:
    """Run playbooks/envoy_repo.yml into `repo`; return (rc, changed, output)."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    if not playbook.exists():
        playbook = Path(need("ansible-playbook"))
    collections = ROOT / ".build" / "collections"
    linked = (collections / "ansible_collections" / "fleetmesh" / "envoy").exists()
    assert linked, f"{collections} does not hold fleetmesh.envoy; run 'make setup'"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run([str(playbook), "playbooks/envoy_repo.yml", "-e", f"envoy_repo_dir={repo}", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    out = proc.stdout + proc.stderr
    m = RECAP.search(proc.stdout)
    return proc.returncode, int(m[2]) if m else -1, out


def run(*cmd: str) -> str:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True, timeout=300).stdout


def run_bytes(cmd: str) -> bytes:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, check=True, timeout=300).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    for tool in ("dpkg-deb", "dpkg-scanpackages", "rpmbuild", "rpm", "createrepo_c"):
        need(tool, "run 'make setup' (apt-get install dpkg-dev rpm createrepo-c)")
    for version in (OLDER, VERSION):
        assert (CACHE / version / "SHA256SUMS").is_file(), f"{CACHE / version} is not cached; run 'make setup'"
    path = tmp_path_factory.mktemp("envoy-repo") / "repo"
    rc, changed, out = build(path)
    assert rc == 0, f"playbooks/envoy_repo.yml failed:\n{out[-6000:]}"
    assert changed > 0
    return path


def deb(repo: Path, version: str = VERSION) -> Path:
    return repo / "deb" / f"{NAME}_{version}-1_amd64.deb"


def rpm_file(repo: Path, version: str = VERSION) -> Path:
    return repo / "rpm" / f"{NAME}-{version}-1.x86_64.rpm"


def test_check_mode_reports_the_build_and_writes_nothing(tmp_path):
    rc, changed, out = build(tmp_path / "repo", "--check")
    assert rc == 0, out[-4000:]
    assert changed > 0, out[-4000:]
    assert not (tmp_path / "repo").exists()
    assert not (tmp_path / "repo.work").exists()


def test_every_version_and_format_is_published(repo):
    for version in (OLDER, VERSION):
        assert deb(repo, version).is_file()
        assert rpm_file(repo, version).is_file()
    assert (repo / "deb" / "Packages").is_file() and (repo / "deb" / "Packages.gz").is_file()
    assert (repo / "rpm" / "repodata" / "repomd.xml").is_file()
    # The work area (stamps, staged metadata) stays out of the served directory.
    assert sorted(p.name for p in repo.iterdir()) == ["deb", "rpm"]


def test_deb_metadata(repo):
    pkg = deb(repo)
    fields = run("dpkg-deb", "-f", str(pkg), "Package", "Version", "Architecture", "Depends")
    assert f"Package: {NAME}\n" in fields
    assert f"Version: {VERSION}-1\n" in fields
    assert "Architecture: amd64\n" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.M)[1]
    assert re.search(r"libc6 \(>= 2\.\d+\)", depends) and "python3" in depends and "passwd" in depends
    contents = {line.split()[-1].lstrip(".") for line in run("dpkg-deb", "-c", str(pkg)).splitlines()}
    assert {BINARY, UNIT, WRAPPER} <= contents
    postinst = run_bytes(f"dpkg-deb --ctrl-tarfile {pkg} | tar -xO ./postinst").decode()
    assert "useradd --system" in postinst and "nologin" in postinst and "groupadd --system envoy" in postinst


def test_deb_carries_the_cached_binary_and_the_envoy_role_files(repo):
    pkg = deb(repo)
    binary = run_bytes(f"dpkg-deb --fsys-tarfile {pkg} | tar -xO .{BINARY}")
    assert hashlib.sha256(binary).hexdigest() == cached_sha256(VERSION)
    wrapper = run_bytes(f"dpkg-deb --fsys-tarfile {pkg} | tar -xO .{WRAPPER}")
    assert wrapper == (ROOT / "roles" / "envoy" / "files" / "fleetmesh-envoy-run").read_bytes()
    unit = run_bytes(f"dpkg-deb --fsys-tarfile {pkg} | tar -xO .{UNIT}").decode()
    lines = unit.splitlines()
    for line in ("User=envoy", "Group=envoy", "LimitNOFILE=65536", "NoNewPrivileges=true"):
        assert line in lines, line
    assert any(line.startswith("ExecStart=") and f"{WRAPPER} %i" in line for line in lines), unit
    assert unit.startswith("# Ansible managed")


def test_rpm_metadata(repo):
    pkg = str(rpm_file(repo))
    assert run("rpm", "-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}", pkg) == f"{NAME} {VERSION}-1 x86_64"
    files = run("rpm", "-qpl", pkg).splitlines()
    assert {BINARY, UNIT, WRAPPER} <= set(files)
    listing = run("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEDIGESTS}\n]", pkg).splitlines()
    digests = dict(line.split() for line in listing if len(line.split()) == 2)
    assert digests[BINARY] == cached_sha256(VERSION)
    scripts = run("rpm", "-qp", "--scripts", pkg)
    assert "useradd --system" in scripts and "nologin" in scripts
    # rpmbuild's automatic requirements stay on: the shared libraries the binary links.
    requires = run("rpm", "-qpR", pkg).splitlines()
    assert "libc.so.6()(64bit)" in requires


def test_versions_share_one_name_so_they_upgrade_and_downgrade(repo):
    packages = (repo / "deb" / "Packages").read_text()
    stanzas = [dict(re.findall(r"^(\w[\w-]*): (.*)$", s, re.M)) for s in packages.strip().split("\n\n")]
    assert sorted((s["Package"], s["Version"]) for s in stanzas) == [(NAME, f"{OLDER}-1"), (NAME, f"{VERSION}-1")]
    primary = next((repo / "rpm" / "repodata").glob("*primary.xml.gz"))
    xml = gzip.decompress(primary.read_bytes()).decode()
    assert xml.count(f"<name>{NAME}</name>") == 2
    for version in (OLDER, VERSION):
        assert f'ver="{version}" rel="1"' in xml
        assert run("rpm", "-qp", "--qf", "%{NAME}", str(rpm_file(repo, version))) == NAME


def test_second_build_changes_nothing(repo):
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}
    rc, changed, out = build(repo)
    assert rc == 0, out[-4000:]
    assert changed == 0, out[-6000:]
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()} == before
