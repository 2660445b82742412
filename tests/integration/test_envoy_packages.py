"""The native Envoy packages: playbooks/envoy_repo.yml (role fleetmesh.envoy.envoy_repo) builds
fleetmesh-envoy .deb and .rpm packages from the controller's artifact cache and publishes an apt
and a yum repository, signed with a key kept on the controller. Built once per module into a fresh
directory; molecule installs them (and shows apt and dnf on the hosts refusing tampered copies).

The signature checks here use the controller's real apt (with its own state directories, over
HTTP on loopback), rpmkeys (with its own database) and gpgv."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
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


def playbook_run(*args: str) -> subprocess.CompletedProcess:
    playbook = Path(sys.executable).parent / "ansible-playbook"
    if not playbook.exists():
        playbook = Path(need("ansible-playbook"))
    collections = ROOT / ".build" / "collections"
    linked = (collections / "ansible_collections" / "fleetmesh" / "envoy").exists()
    assert linked, f"{collections} does not hold fleetmesh.envoy; run 'make setup'"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run([str(playbook), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
                          check=False)


def build(repo: Path, *extra: str) -> tuple[int, int, str]:
    """Run playbooks/envoy_repo.yml into `repo`; return (rc, changed, output)."""
    proc = playbook_run("playbooks/envoy_repo.yml", "-e", f"envoy_repo_dir={repo}", *extra)
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
    for signed in ("deb/Release", "deb/InRelease", "deb/Release.gpg", "rpm/repodata/repomd.xml.asc"):
        assert (repo / signed).is_file(), signed
    # The work area (stamps, staged metadata, the private key) stays out of the served directory.
    assert sorted(p.name for p in repo.iterdir()) == ["deb", "fleetmesh-envoy.asc", "rpm"]


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


# --- signing -----------------------------------------------------------------------------------


def gpg(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback",
                           "--passphrase", "", *args], capture_output=True, text=True, timeout=120, check=check)


def fingerprint(home: Path) -> str:
    out = gpg(home, "--with-colons", "--list-secret-keys").stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


@pytest.fixture
def keyring(tmp_path) -> Path:
    """A public keyring (binary) holding only the repository's published key, for gpgv."""
    home = tmp_path / "verify-gnupg"
    home.mkdir(mode=0o700)
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def dearmor(armored: Path, out: Path) -> Path:
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(out), str(armored)], check=True, timeout=60)
    return out


def test_the_private_key_stays_on_the_controller_out_of_the_served_tree(repo):
    home = Path(f"{repo}.work") / "gnupg"
    assert (home / "private-keys-v1.d").is_dir()
    assert home.stat().st_mode & 0o777 == 0o700
    for path in home.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    published = (repo / "fleetmesh-envoy.asc").read_text()
    assert published.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    for path in repo.rglob("*"):
        if path.is_file() and path.stat().st_size < 1_000_000:
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    # One generated key: RSA 3072, signing only; the published key is its public half.
    listing = gpg(home, "--with-colons", "--list-secret-keys").stdout
    sec = [line.split(":") for line in listing.splitlines() if line.startswith("sec:")]
    assert len(sec) == 1 and sec[0][2] == "3072" and sec[0][3] == "1", listing
    assert fingerprint(home) in gpg(home, "--with-colons", "--show-keys", str(repo / "fleetmesh-envoy.asc")).stdout


def test_rpm_packages_and_repomd_are_signed_by_the_published_key(repo, tmp_path, keyring):
    db = tmp_path / "rpmdb"
    db.mkdir()
    unknown = subprocess.run(["rpmkeys", "--dbpath", str(db), "--checksig", str(rpm_file(repo))],
                             capture_output=True, text=True, check=False)
    assert unknown.returncode != 0, unknown.stdout  # signed, and the key is not known yet
    run("rpmkeys", "--dbpath", str(db), "--import", str(repo / "fleetmesh-envoy.asc"))
    for version in (OLDER, VERSION):
        out = run("rpmkeys", "--dbpath", str(db), "--checksig", "-v", str(rpm_file(repo, version)))
        assert re.search(r"Header V4 (RSA|EdDSA)/SHA256 Signature, key ID [0-9a-f]{8}: OK", out), out
    # A package with one byte changed fails the check.
    bad = tmp_path / rpm_file(repo).name
    data = bytearray(rpm_file(repo).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    res = subprocess.run(["rpmkeys", "--dbpath", str(db), "--checksig", str(bad)], capture_output=True, text=True,
                         check=False)
    assert res.returncode != 0 and "NOT OK" in res.stdout + res.stderr, res.stdout
    # repomd.xml: the detached signature verifies, and fails on a changed file.
    ring = dearmor(repo / "fleetmesh-envoy.asc", keyring / "repo.gpg")
    repomd = repo / "rpm" / "repodata" / "repomd.xml"
    good = subprocess.run(["gpgv", "--keyring", str(ring), f"{repomd}.asc", str(repomd)], capture_output=True,
                          text=True, check=False)
    assert good.returncode == 0, good.stderr
    changed = tmp_path / "repomd.xml"
    changed.write_text(repomd.read_text().replace("<revision>", "<revision>1"))
    bad_sig = subprocess.run(["gpgv", "--keyring", str(ring), f"{repomd}.asc", str(changed)], capture_output=True,
                             text=True, check=False)
    assert bad_sig.returncode != 0 and "BAD signature" in bad_sig.stderr, bad_sig.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http(tmp_path):
    """Serve a directory over HTTP on loopback (apt's real http method, as hosts use it)."""
    root = tmp_path / "served"
    root.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _attempt in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def apt_get(state: Path, url: str, keyring: Path, *args: str) -> subprocess.CompletedProcess:
    """apt-get on a private state (lists, archives, an empty dpkg status): the controller's apt is untouched."""
    for d in ("lists/partial", "archives/partial", "parts", "dl"):
        (state / d).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    (state / "sources.list").write_text(f"deb [signed-by={keyring}] {url} ./\n")
    opts = [f"-oDir::Etc::SourceList={state}/sources.list", f"-oDir::Etc::SourceParts={state}/parts",
            f"-oDir::State::Lists={state}/lists", f"-oDir::State::status={state}/status",
            f"-oDir::Cache::Archives={state}/archives", "-oDir::Cache::pkgcache=", "-oDir::Cache::srcpkgcache=",
            "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1"]
    return subprocess.run(["apt-get", *opts, *args], cwd=state / "dl", capture_output=True, text=True, timeout=300,
                          check=False)


def test_apt_accepts_the_signed_repository_and_refuses_tampered_copies(repo, tmp_path, http):
    need("apt-get", "apt is part of Debian")
    root, url = http
    ring = repo / "fleetmesh-envoy.asc"  # apt reads an armored key named .asc, as the hosts' /etc/apt/keyrings
    copies = {}
    for name in ("good", "swapped", "reindexed", "resigned"):
        copies[name] = root / name
        shutil.copytree(repo / "deb", copies[name], copy_function=os.link)
    # swapped: the signed indexes stay, the 1.39.3 package is another file (one byte changed)
    target = copies["swapped"] / deb(repo, OLDER).name
    data = bytearray(target.read_bytes())
    target.unlink()
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    # reindexed: Packages edited (as for a swapped package) without re-signing the Release
    packages = copies["reindexed"] / "Packages"
    text = packages.read_text()
    packages.unlink()
    packages.write_text(text.replace("Priority: optional", "Priority: required", 1))
    (copies["reindexed"] / "Packages.gz").unlink()
    # resigned: Release signed by another key
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o700)
    gpg(attacker, "--quick-generate-key", "attacker <attacker@fleetmesh.invalid>", "ed25519", "sign", "never")
    for f in ("InRelease", "Release.gpg"):
        (copies["resigned"] / f).unlink()
    gpg(attacker, "--clearsign", "-o", str(copies["resigned"] / "InRelease"), str(copies["resigned"] / "Release"))
    subprocess.run(["gpgconf", "--homedir", str(attacker), "--kill", "gpg-agent"], check=False)

    good = apt_get(tmp_path / "apt-good", f"{url}/good", ring, "update")
    assert good.returncode == 0 and "W:" not in good.stdout + good.stderr, good.stdout + good.stderr
    got = apt_get(tmp_path / "apt-good", f"{url}/good", ring, "download", f"{NAME}={OLDER}-1")
    assert got.returncode == 0, got.stdout + got.stderr
    assert (tmp_path / "apt-good" / "dl" / deb(repo, OLDER).name).read_bytes() == deb(repo, OLDER).read_bytes()

    ok = apt_get(tmp_path / "apt-swapped", f"{url}/swapped", ring, "update")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    swapped = apt_get(tmp_path / "apt-swapped", f"{url}/swapped", ring, "download", f"{NAME}={OLDER}-1")
    assert swapped.returncode != 0 and "Hash Sum mismatch" in swapped.stdout + swapped.stderr, swapped.stderr
    assert not list((tmp_path / "apt-swapped" / "dl").glob("*.deb"))

    reindexed = apt_get(tmp_path / "apt-reindexed", f"{url}/reindexed", ring, "update")
    out = reindexed.stdout + reindexed.stderr
    assert reindexed.returncode != 0 and re.search(r"Hash Sum mismatch|unexpected size", out), out

    resigned = apt_get(tmp_path / "apt-resigned", f"{url}/resigned", ring, "update")
    out = resigned.stdout + resigned.stderr
    assert resigned.returncode != 0 and "NO_PUBKEY" in out, out
    refused = apt_get(tmp_path / "apt-resigned", f"{url}/resigned", ring, "download", f"{NAME}={OLDER}-1")
    assert refused.returncode != 0, refused.stdout


def test_a_user_supplied_key_signs_and_is_published(tmp_path):
    own = tmp_path / "own-gnupg"
    own.mkdir(mode=0o700)
    try:
        gpg(own, "--quick-generate-key", "fleet signing <pki@example.invalid>", "rsa3072", "sign", "never")
        fpr = fingerprint(own)
        secret = tmp_path / "signing-key.asc"
        gpg(own, "--armor", "--export-secret-keys", "-o", str(secret), fpr)
        public = gpg(own, "--armor", "--export", fpr).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(own), "--kill", "gpg-agent"], check=False)
    repo = tmp_path / "repo"
    args = ["-e", '{"envoy_repo_versions": ["1.40.0"], "envoy_repo_formats": ["rpm"]}',
            "-e", f"envoy_repo_signing_key_file={secret}", "-e", f"envoy_repo_signing_key_id={fpr}"]
    rc, changed, out = build(repo, *args)
    assert rc == 0, out[-4000:]
    assert (repo / "fleetmesh-envoy.asc").read_text() == public
    db = tmp_path / "rpmdb"
    db.mkdir()
    run("rpmkeys", "--dbpath", str(db), "--import", str(repo / "fleetmesh-envoy.asc"))
    out = run("rpmkeys", "--dbpath", str(db), "--checksig", "-v", str(rpm_file(repo)))
    assert f"key ID {fpr[-8:].lower()}: OK" in out, out
    rc, changed, out = build(repo, *args)
    assert rc == 0 and changed == 0, out[-4000:]


@pytest.mark.parametrize(("extra", "named"), [
    ("envoy_repo_signing_key_file=/nonexistent/signing-key.asc", "envoy_repo_signing_key_file=/nonexistent"),
    ("envoy_repo_signing_key_id=not-a-fingerprint", "envoy_repo_signing_key_id=\"not-a-fingerprint\""),
    ("envoy_repo_signing_key_id=0123456789ABCDEF", "envoy_repo_signing_key_id=0123456789ABCDEF"),
])
def test_bad_signing_input_fails_naming_the_variable_before_any_change(tmp_path, extra, named):
    rc, _changed, out = build(tmp_path / "repo", "-e", extra)
    assert rc != 0 and named in out, out[-4000:]
    assert not (tmp_path / "repo").exists() and not (tmp_path / "repo.work").exists()


def test_the_envoy_role_refuses_an_unsigned_install_unless_opted_out(tmp_path):
    """envoy_install_method=package without envoy_package_signing_key stops before the host changes (the
    play targets the controller itself, over a local connection: it must fail at the first check)."""
    play = tmp_path / "play.yml"
    play.write_text("""- name: Envoy from the package repository, no key
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: fleetmesh.envoy.envoy
      vars:
        envoy_install_method: package
        envoy_package_repo_url: http://127.0.0.1:9/
        envoy_root: ROOT/envoy
""".replace("ROOT", str(tmp_path)))
    for extra, named in (([], "envoy_package_signing_key=\"\" is empty"),
                         (["-e", "envoy_package_signing_key=/nonexistent.asc"],
                          "envoy_package_signing_key=\"/nonexistent.asc\" is not a file on the controller")):
        proc = playbook_run(str(play), "-i", "localhost,", *extra)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and named in out and "envoy_package_allow_unsigned=true" in out, out[-4000:]
        assert re.search(r"ok=\d+\s+changed=0 ", out), out[-2000:]
        assert not (tmp_path / "envoy").exists()
