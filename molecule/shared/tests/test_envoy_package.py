"""Envoy installed with envoy_install_method=package from the collection's repository (fm-repo).

Shared by the debian scenario (the .deb through apt) and the rhel scenario (the .rpm through dnf,
on the EL 9 emulation unless FLEETMESH_EL9_IMAGE names a real EL 9 image)."""

import os
import urllib.request
from pathlib import Path

VERSION = "1.40.0"
PINNED = "1.40.0-1"
OLDER = "1.39.3-1"
REPO_URL = os.environ.get("FLEETMESH_REPO_URL") or "http://10.213.77.5:8081"
UNIT = "fleetmesh-envoy@main"
CACHE = Path(os.environ.get("FLEETMESH_CACHE") or "/var/cache/fleetmesh") / "artifacts" / "envoy"


def is_el(host):
    return host.file("/etc/redhat-release").exists


def test_binary_reports_requested_version(host):
    out = host.check_output("/opt/fleetmesh/envoy/current/envoy --version")
    assert f"/{VERSION}/" in out, out
    assert host.file("/opt/fleetmesh/envoy/current").linked_to == f"/opt/fleetmesh/envoy/{VERSION}"


def test_binary_comes_from_the_package_unchanged(host):
    path = f"/opt/fleetmesh/envoy/{VERSION}/envoy"
    owner = host.check_output(f"rpm -qf {path}" if is_el(host) else f"dpkg -S {path}")
    assert owner.startswith("fleetmesh-envoy"), owner
    sums = (CACHE / VERSION / "SHA256SUMS").read_text().splitlines()
    want = next(line.split()[0] for line in sums if line.endswith("  envoy"))
    assert host.check_output(f"sha256sum {path}").split()[0] == want


def test_package_manager_reports_pinned_version(host):
    if is_el(host):
        assert host.check_output("rpm -q fleetmesh-envoy") == f"fleetmesh-envoy-{PINNED}.x86_64"
        info = host.check_output("dnf -C info --installed fleetmesh-envoy")
        assert "fleetmesh-envoy" in info.split("From repo", 1)[1].splitlines()[0], info
        available = host.check_output("dnf -C --showduplicates list --available fleetmesh-envoy")
        assert OLDER in available, available
    else:
        assert host.check_output("dpkg-query -W -f='${Version}' fleetmesh-envoy") == PINNED
        policy = host.check_output("apt-cache policy fleetmesh-envoy")
        assert f"Installed: {PINNED}" in policy, policy
        assert f"*** {PINNED} 500" in policy and f"{REPO_URL}/deb ./ Packages" in policy, policy
        assert f" {OLDER} 500" in policy, policy


def test_upgrade_left_no_older_version_behind(host):
    # prepare installed 1.39.3-1 (a downgrade); converge upgraded it in place to the pin.
    assert not host.file("/opt/fleetmesh/envoy/1.39.3").exists


def test_package_ships_user_wrapper_and_unit(host):
    user = host.user("envoy")
    assert user.exists and user.group == "envoy"
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    owner = "rpm -qf" if is_el(host) else "dpkg -S"
    for path in ("/usr/libexec/fleetmesh-envoy-run", "/usr/lib/systemd/system/fleetmesh-envoy@.service"):
        assert host.check_output(f"{owner} {path}").startswith("fleetmesh-envoy"), path
    assert host.file("/usr/lib/systemd/system/fleetmesh-envoy@.service").contains("fleetmesh-envoy-run %i")


def test_unit_active_and_runs_as_envoy(host):
    svc = host.service(UNIT)
    assert svc.is_running and svc.is_enabled
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    assert host.check_output(f"ps -o user= -p {pid}") == "envoy"
    envoys = host.process.filter(comm="envoy")
    assert envoys and {p.user for p in envoys} == {"envoy"}


def test_admin_listens_on_loopback_only(host):
    lines = host.check_output("ss -Hltn 'sport = :9901'").splitlines()
    assert {line.split()[3] for line in lines} == {"127.0.0.1:9901"}, lines
    assert host.check_output("curl -fsS http://127.0.0.1:9901/ready") == "LIVE"


def test_request_through_listener_reaches_the_app(host):
    name = host.backend.get_hostname()
    out = host.check_output("curl -sS -w '\\n%{http_code}' http://127.0.0.1:10000/")
    body, code = out.rsplit("\n", 1)
    assert code == "200" and body.strip() == f"hello from {name}", out
    # And from the controller, over the lab network, to the listener on 0.0.0.0.
    ip = host.variables["fleetmesh_lab_ip"]
    with urllib.request.urlopen(f"http://{ip}:10000/", timeout=5) as resp:
        assert resp.status == 200
        assert resp.read().decode().strip() == f"hello from {name}"
