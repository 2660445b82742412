"""`make demo` end to end, then `make lab-down` (issue 3), as a new user runs them. Named to run after the other
lab tests: lab-down removes the lab, and the test brings the default lab back for whatever runs next.

The demo reaches every VM over SSH and says what it is, onboards the VMs (certificates, Envoy, registration in
the real kube-apiserver it starts on loopback) and sends a request through each VM's Envoy. Then Kubernetes routes to
the VMs through a real Contour ingress (issue 13): requests with the Host header and path prefix reach every VM (the
counts per VM are shown), one traffic-shift step moves 10% to a Kubernetes Service, and gRPC calls (h2c) through the
ingress reach the VMs' gRPC app. lab-down must leave no lab container, no lab network, no API server and no ingress
process behind.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import ROOT, need, needs_lab
from tests.integration.labutil import LAB_HOSTS, env, lab_up

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow, pytest.mark.lab_network_down]


def make(target: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", target], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1800,
                          check=False)


def test_make_demo_then_lab_down_leaves_nothing_behind(request):
    need("make", "apt-get install make")
    need("podman", "run 'make setup' (apt-get install podman runc)")
    demo = make("demo")
    assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-3000:]
    out = " ".join(demo.stdout.split())  # the YAML callback folds long messages
    for host, ip in LAB_HOSTS.items():
        family = "RedHat" if "-el-" in host else "Debian"
        assert re.search(rf"{host} {re.escape(ip)}: {family} / .+ - reachable over SSH", out), (host, out[-6000:])
        assert re.search(rf"{host} -> 200 -> hello from {host}", out), (host, out[-4000:])
    assert "(EL 9 emulation, not RHEL)" in out
    # the status table (at most 100 columns: the registration column shortens WorkloadEntry to WE)
    assert re.search(r"fm-deb-1 web\.fleet-lab \S+ LIVE healthy \S+ WE fleet-lab/web-fm-deb-1 ok", out), out[-4000:]
    # Through the ingress: every VM answered, counted per VM; one shift step; gRPC over h2c.
    for host in LAB_HOSTS:
        assert re.search(rf"ingress -> {host}: [1-9][0-9]*", out), (host, out[-6000:])
    assert re.search(r"route /: steps 10% \(0 of [1-9][0-9]* failed\) passed", out), out[-6000:]
    assert re.search(r"shifted -> fm-[a-z]+-[0-9]: [1-9]", out), out[-6000:]
    assert len(re.findall(r"grpc -> hello demo from fm-", out)) == 9, out[-6000:]

    down = make("lab-down")
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    podman_env = dict(os.environ, CONTAINERS_CONF=env()["CONTAINERS_CONF"])
    containers = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}} {{.Labels}}"], env=podman_env,
                                capture_output=True, text=True, check=True).stdout
    assert not [c for c in containers.splitlines() if "fleetmesh-lab" in c], containers
    networks = subprocess.run(["podman", "network", "ls", "--format", "{{.Name}}"], env=podman_env,
                              capture_output=True, text=True, check=True).stdout.split()
    assert "fleetmesh-lab" not in networks, networks
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    lab_kube = str(ROOT / ".lab" / "kube")
    assert not [p for p in procs.splitlines() if lab_kube in p and ("kube-apiserver" in p or "etcd" in p)], procs
    lab_contour = str(ROOT / ".lab" / "contour")
    assert not [p for p in procs.splitlines() if lab_contour in p and ("contour" in p or "envoy" in p)], procs
    assert not (ROOT / "inventories" / "lab" / "generated_hosts.yml").exists()

    # The default lab again, when a lab test of this session comes after this one (in `make test` this is the last
    # one, and the Makefile takes the lab down at the end anyway).
    later = request.session.items[request.session.items.index(request.node) + 1:]
    if any(needs_lab(item.path) for item in later):
        lab_up(3)
