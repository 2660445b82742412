"""A tampered repository is refused (signed repositories, issue 15 section 3).

Converge installed fleetmesh-envoy 1.40.0-1 from the signed repository, trusting its key for that
repository only. Prepare built tampered copies of it on the controller (files/tampered-repos.sh)
and put them in /srv/fleetmesh-tampered; here the host serves them over HTTP on loopback and its
own apt or dnf (on the EL 9 emulation unless FLEETMESH_EL9_IMAGE names a real EL 9 image) is asked
to downgrade to the evil fleetmesh-envoy 1.39.3-1 with the key converge installed. Each attempt
must fail with a signature or hash error, install nothing, and leave Envoy 1.40.0 serving."""

import re
import time

import pytest

PINNED = "1.40.0-1"
PORT = 18081
APT_KEYRING = "/etc/apt/keyrings/fleetmesh-envoy.asc"
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-fleetmesh-envoy"
EVIL_FILE = "/opt/fleetmesh-tampered"


def is_el(host):
    return host.file("/etc/redhat-release").exists


@pytest.fixture
def served(host):
    """The tampered copies over HTTP on the host's loopback, for the length of one test."""
    host.run("systemctl stop fm-tampered-http.service; systemctl reset-failed fm-tampered-http.service")
    host.check_output(f"systemd-run --unit fm-tampered-http python3 -m http.server {PORT} --bind 127.0.0.1 "
                      "--directory /srv/fleetmesh-tampered")
    for _attempt in range(50):
        if host.run(f"curl -fsS -o /dev/null http://127.0.0.1:{PORT}/").rc == 0:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the tampered repositories are not served on 127.0.0.1")
    yield f"http://127.0.0.1:{PORT}"
    host.run("systemctl stop fm-tampered-http.service")


def apt(host, base, name, command):
    """apt-get with only the tampered source and its own lists and archives (the host's are untouched)."""
    state = f"/var/tmp/fm-tampered/{name}"
    if command == "update":  # a fresh state for each source, kept for the install that follows
        host.check_output(f"rm -rf {state} && mkdir -p {state}/lists/partial {state}/archives/partial {state}/parts")
        host.check_output(f"echo 'deb [signed-by={APT_KEYRING}] {base}/{name} ./' > {state}/sources.list")
    opts = (f"-o Dir::Etc::SourceList={state}/sources.list -o Dir::Etc::SourceParts={state}/parts "
            f"-o Dir::State::Lists={state}/lists -o Dir::Cache::Archives={state}/archives "
            "-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=")
    return host.run(f"apt-get {opts} -y {command}")


def dnf(host, base, name, command):
    """dnf with only the tampered repository, gpgcheck and repo_gpgcheck on, the key converge installed."""
    repo = f"fm-{name}"
    return host.run(f"dnf -y --repofrompath={repo},{base}/{name} --repo={repo} "
                    f"--setopt={repo}.gpgcheck=1 --setopt={repo}.repo_gpgcheck=1 "
                    f"--setopt={repo}.gpgkey=file://{RPM_KEY} --setopt={repo}.metadata_expire=0 {command}")


def assert_nothing_installed(host):
    if is_el(host):
        assert host.check_output("rpm -q fleetmesh-envoy") == f"fleetmesh-envoy-{PINNED}.x86_64"
    else:
        assert host.check_output("dpkg-query -W -f='${Version}' fleetmesh-envoy") == PINNED
    assert not host.file(EVIL_FILE).exists
    assert host.file("/opt/fleetmesh/envoy/current").linked_to == "/opt/fleetmesh/envoy/1.40.0"
    assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:10000/") == "200"


def test_the_repository_key_is_trusted_for_this_repository_only(host):
    if is_el(host):
        repo = host.file("/etc/yum.repos.d/fleetmesh-envoy.repo").content_string
        for line in ("gpgcheck = 1", "repo_gpgcheck = 1", f"gpgkey = file://{RPM_KEY}"):
            assert line in repo.splitlines(), repo
        assert host.file(RPM_KEY).contains("BEGIN PGP PUBLIC KEY BLOCK")
        assert "fleetmesh.envoy repository signing key" in host.check_output(
            "rpm -q gpg-pubkey --qf '%{SUMMARY}\\n'")
    else:
        source = host.file("/etc/apt/sources.list.d/fleetmesh-envoy.sources").content_string
        assert f"Signed-By: {APT_KEYRING}" in source.splitlines() and "Trusted" not in source, source
        assert not host.file("/etc/apt/sources.list.d/fleetmesh-envoy.list").exists
        assert host.file(APT_KEYRING).contains("BEGIN PGP PUBLIC KEY BLOCK")
        # Not trusted for every repository: no apt-key keyring, nothing in trusted.gpg.d.
        assert not host.file("/etc/apt/trusted.gpg").exists
        same = host.check_output(f"for f in /etc/apt/trusted.gpg.d/*; do cmp -s \"$f\" {APT_KEYRING} && echo \"$f\"; "
                                 "done; ls -A /etc/apt/trusted.gpg.d | grep -i fleetmesh || :")
        assert same == "", same


def test_a_swapped_package_is_refused(host, served):
    """The signed indexes stay; the package file is not the one they name (apt) or it carries no
    signature of the repository key although the metadata is genuinely signed (dnf gpgcheck)."""
    if is_el(host):
        res = dnf(host, served, "rpm-unsigned", "downgrade fleetmesh-envoy-1.39.3-1")
        out = res.stdout + res.stderr
        assert res.rc != 0, out
        assert re.search(r"is not signed|GPG check FAILED|signature", out, re.I), out
    else:
        update = apt(host, served, "deb-swapped", "update")
        assert update.rc == 0, update.stdout + update.stderr  # the indexes are genuine
        res = apt(host, served, "deb-swapped", "install --allow-downgrades fleetmesh-envoy=1.39.3-1")
        out = res.stdout + res.stderr
        assert res.rc != 0, out
        assert re.search(r"Hash Sum mismatch|unexpected size", out), out
    assert_nothing_installed(host)


def test_indexes_re_signed_by_another_key_are_refused(host, served):
    """The attacker rebuilt the indexes for the evil package and signed them with a key of his own."""
    if is_el(host):
        res = dnf(host, served, "rpm-resigned", "downgrade fleetmesh-envoy-1.39.3-1")
        out = res.stdout + res.stderr
        assert res.rc != 0, out
        assert re.search(r"GPG signature verification error|signature", out, re.I), out
    else:
        update = apt(host, served, "deb-resigned", "update")
        out = update.stdout + update.stderr
        assert re.search(r"NO_PUBKEY|is not signed|signatures couldn't be verified", out), out
        res = apt(host, served, "deb-resigned", "install --allow-downgrades fleetmesh-envoy=1.39.3-1")
        assert res.rc != 0, res.stdout + res.stderr
    assert_nothing_installed(host)
