"""Runs ON the instance (python3 -c): everything of the Istio sidecar that could be left on a host, as JSON.

prepare.yml records it before onboarding (traces-before.json in the ephemeral directory); tests/offboarded/ compares
it after offboarding and after each rejected bad-input run. It lists files, not their content, except /etc/hosts,
which is compared whole. Never reads the token.
"""

import json
import os
import subprocess

# Every path the package (dpkg -c / rpm -qlp of istio-sidecar) and the role create, and where they would be enabled.
PATHS = [
    "/usr/local/bin/envoy", "/usr/local/bin/pilot-agent", "/usr/local/bin/istio-start.sh",
    "/lib/systemd/system/istio.service", "/usr/lib/systemd/system/istio.service",
    "/etc/systemd/system/multi-user.target.wants/istio.service",
    "/var/lib/istio", "/etc/istio", "/var/log/istio", "/etc/certs", "/run/secrets", "/var/run/secrets",
    "/var/cache/fleetmesh-istio-sidecar", "/etc/tmpfiles.d/fleetmesh-istio-token.conf",
    "/etc/apt/sources.list.d/fleetmesh-istio-sidecar.list", "/etc/yum.repos.d/fleetmesh-istio-sidecar.repo",
]
FIND = ["find", "/", "-xdev", "(", "-nouser", "-o", "-nogroup", "-o", "-iname", "*istio*", ")",
        "-not", "-path", "/proc/*", "-not", "-path", "/srv/istio-sidecar-repo/*"]


def out(*argv):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return ""
    return proc.stdout.strip()


with open("/etc/hosts", encoding="utf-8") as handle:
    HOSTS = handle.read()

print(json.dumps({
    "paths": [path for path in PATHS if os.path.lexists(path)],
    "found": sorted(out(*FIND).splitlines()),
    "hosts": HOSTS,
    "hosts_marker_lines": [line for line in HOSTS.splitlines() if "istio_sidecar" in line],
    "user": out("getent", "passwd", "istio-proxy"),
    "group": out("getent", "group", "istio-proxy"),
    # Both databases: the EL 9 emulation is a Debian-built rootfs with rpm. A purged .deb leaves no line.
    "dpkg": out("dpkg-query", "-W", "-f", "${Status} ${Version}", "istio-sidecar"),
    "rpm": [line for line in out("rpm", "-q", "istio-sidecar").splitlines() if "not installed" not in line],
    "unit": out("systemctl", "list-unit-files", "--no-legend", "istio.service"),
}, indent=1, sort_keys=True))
