"""playbooks/shift_traffic.yml against a real Contour + Envoy ingress and the harness kube-apiserver.

The harness has no kubelet, so both backends are stand-ins, each an HTTP server in a network namespace of its own
that this test creates (a veth pair; the API server refuses loopback endpoint addresses): one stands in for the VMs
(registered by the collection's mesh_registration module), one for the pods of a Kubernetes Service (its
EndpointSlice written as the endpoint controller would). Both answer /healthz, as the collection's Envoy does.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.kube, pytest.mark.slow]
contour_ingress = importlib.import_module("contour_pytest").contour_ingress  # the fixture (tests/harness)
REPO = Path(__file__).resolve().parents[2]
HOST_ADDR, VM_ADDR, K8S_ADDR = "10.213.79.1", "10.213.79.2", "10.213.79.3"
FQDN = "shift.fleet.example"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    if os.geteuid() != 0:
        message = "the stand-in backends need a network namespace (run as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    ns = f"fm-shift-{uuid.uuid4().hex[:6]}"
    host_if, ns_if = f"fms{uuid.uuid4().hex[:6]}", "eth0"
    root = tmp_path_factory.mktemp("standins")
    procs = {}
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{HOST_ADDR}/29", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", ns_if, "up"],
                    ["ip", "addr", "add", f"{VM_ADDR}/29", "dev", ns_if],
                    ["ip", "addr", "add", f"{K8S_ADDR}/29", "dev", ns_if]):
            sh("ip", "netns", "exec", ns, *cmd)
        for name, addr in (("vm-standin", VM_ADDR), ("k8s-standin", K8S_ADDR)):
            site = root / name
            site.mkdir()
            (site / "index.html").write_text(f"hello from {name}\n")
            (site / "healthz").write_text("ok\n")
            procs[name] = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-m", "http.server", "8080",
                                            "--bind", addr, "--directory", str(site)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield {"ns": ns, "procs": procs}
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=10)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def playbook(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    return subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter={{ ansible_playbook_python }}", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def register(kube_api, ns: str, tmp_path: Path, vm_weight: int = 100, k8s_weight: int = 0) -> None:
    play = [{"name": "register", "hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "Register the stand-in VM and the split",
        "fleetmesh.envoy.mesh_registration": {
            "kubeconfig": str(kube_api.registrar_kubeconfig), "registration": "shift",
            "shapes": ["endpointslice", "httpproxy"],
            "endpoints": [{"host": "vm-standin", "address": VM_ADDR, "service": "web", "namespace": ns,
                           "ports": {"http": 8080}}],
            "httpproxies": [{"name": "web", "namespace": ns, "fqdn": FQDN, "routes": [{
                "prefix": "/", "retry_policy": {"count": 2, "retry_on": ["reset", "connect-failure"]},
                "services": [{"name": "web", "weight": vm_weight},
                             {"name": "web-k8s", "port": 80, "weight": k8s_weight}]}]}]}}]}]
    path = tmp_path / "register.yml"
    path.write_text(yaml.safe_dump(play))
    proc = playbook([str(path)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]


def spread(ingress, n: int = 60) -> Counter[str]:
    out: Counter[str] = Counter()
    for _attempt in range(n):
        status, body, _h = ingress.get("/", host=FQDN)
        out[body.split()[-1] if status == 200 and body.startswith("hello from") else f"HTTP {status}"] += 1
    return out


def weights(kube_api, ns: str) -> dict[str, int]:
    status, body = kube_api.request("GET", kube_api.resource_path("projectcontour.io/v1", "HTTPProxy", "web", ns))
    assert status == 200, body
    return {s["name"]: s.get("weight") for s in body["spec"]["routes"][0]["services"]}


def test_shift_traffic_steps_and_a_failing_step_rolls_back(kube_api, contour_ingress, standins, tmp_path):
    ns = f"shift-{uuid.uuid4().hex[:6]}"
    kube_api.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        # The Kubernetes side: a stand-in for pods, its EndpointSlice written as the endpoint controller would.
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-k8s", "namespace": ns},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-k8s-standin", "namespace": ns,
                      "labels": {"kubernetes.io/service-name": "web-k8s",
                                 "endpointslice.kubernetes.io/managed-by": "fleetmesh-test-standin"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [K8S_ADDR], "conditions": {"ready": True}}]},
    ])
    register(kube_api, ns, tmp_path)
    contour_ingress.wait_proxy_status(ns, "web", "valid")
    contour_ingress.wait_route("/", FQDN)
    assert set(spread(contour_ingress, 30)) == {"vm-standin"}

    shift = ["playbooks/shift_traffic.yml", "-e", json.dumps({
        "shift_kubeconfig": str(kube_api.registrar_kubeconfig), "shift_httpproxy": "web", "shift_namespace": ns,
        "shift_service": "web-k8s", "shift_steps": [10, 50, 100], "shift_probe_url": contour_ingress.url + "/",
        "shift_probe_requests": 20, "shift_settle_seconds": 2})]
    t0 = time.monotonic()
    proc = playbook(shift, tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert weights(kube_api, ns) == {"web": 0, "web-k8s": 100}
    assert set(spread(contour_ingress, 30)) == {"k8s-standin"}
    said = " ".join(proc.stdout.split())
    assert "steps 10% (0 of 20 failed), 50% (0 of 20 failed), 100% (0 of 20 failed) passed" in said, said[-3000:]
    duration = time.monotonic() - t0

    # Back to the VMs; then the Kubernetes side breaks and the first step sees errors: stop, restore, say why.
    register(kube_api, ns, tmp_path)
    assert weights(kube_api, ns) == {"web": 100, "web-k8s": 0}
    standins["procs"]["k8s-standin"].terminate()
    standins["procs"]["k8s-standin"].wait(timeout=10)
    # The first step sends half of the requests to the broken side: it cannot pass by chance.
    failing = shift[:2] + [json.dumps(dict(json.loads(shift[2]), shift_steps=[50, 100]))]
    proc = playbook(failing, tmp_path)
    assert proc.returncode != 0
    said = " ".join(proc.stdout.split())
    assert "shift stopped at step 50% to web-k8s:" in said and "the weights before the step are restored" in said, \
        said[-3000:]
    assert weights(kube_api, ns) == {"web": 100, "web-k8s": 0}
    time.sleep(1)
    assert set(spread(contour_ingress, 30)) == {"vm-standin"}
    assert duration < 120
