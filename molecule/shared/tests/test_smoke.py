"""Testinfra checks shared by the debian and rhel scenarios."""


def test_systemd_is_pid1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), state


def test_python3(host):
    assert host.run("python3 -c 'import sys; print(sys.version_info[0])'").stdout.strip() == "3"


def test_os_family_matches_scenario(host):
    scenario = host.backend.get_hostname()
    family = host.system_info.distribution
    if "el9" in scenario:
        assert host.file("/etc/redhat-release").exists
        assert not host.file("/etc/debian_version").exists
    else:
        assert family == "debian"


def test_smoke_package_installed_from_repo(host):
    pkg = host.package("fleetmesh-smoke")
    assert pkg.is_installed
    assert pkg.version.startswith("1.0.0")
    assert host.file("/usr/share/fleetmesh-smoke/README").contains("fleetmesh smoke")
