"""onboard.yml and decommission.yml on the embedded lab with a real kube-apiserver (issue 8).

- Re-running onboard.yml (certificates, Envoy, registration) reports changed=0 on every host.
- decommission.yml removes the VM from Kubernetes first, then drains it, then removes it from the host: the
  test watches the API server and the VM's listener from the controller while the play runs, and the
  VM's endpoint is gone from its EndpointSlice before the VM stops answering. The other VMs stay registered and
  serving.
- The decommission's traffic is measured through a real Contour ingress (issue 13) that routes on what onboard.yml
  registered (EndpointSlice + HTTPProxy), and directly to the VMs that stay: 0 failed requests either way.

The API server is this module's own (tests/harness/kubeapi.py), and so is its Contour, so other tests'
registrations do not mix in.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
from contour_pytest import own_contour
from kubeapi_pytest import own_kube_api

from tests.integration import ingressutil
from tests.integration.labutil import LAB_HOSTS, Traffic, extra, get, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow]
NS = "fleet-lab"  # inventories/lab/group_vars/web.yml
VICTIM = "fm-deb-2"
FQDN = "web.fleet.example"
BY_ADDRESS = {ip: host for host, ip in LAB_HOSTS.items()}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with own_kube_api(tmp_path_factory, NS) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(api, tmp_path_factory):
    with own_contour(api, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def onboard_vars(api, tmp_path_factory) -> dict:
    return {"target": "lab", "fleetmesh_kubeconfig": str(api.registrar_kubeconfig),
            "mesh_registration_shapes": ["endpointslice", "httpproxy"],
            "mesh_registration_httpproxies": [{"name": "web", "namespace": NS, "fqdn": FQDN, "routes": [
                {"prefix": "/", "services": [{"name": "web"}], "retry_policy": ingressutil.RETRY}]}],
            "workload_certs_lab_ca_dir": str(Path(tmp_path_factory.mktemp("lab-ca")) / "ca"),
            "workload_certs_owner_create": True}


def registered(api: kubeapi.KubeAPI) -> set[str]:
    """The hosts in the service's EndpointSlices."""
    path = api.resource_path("discovery.k8s.io/v1", "EndpointSlice", None, NS)
    status, body = api.request("GET", path + "?labelSelector=app.kubernetes.io/managed-by=fleetmesh.envoy")
    assert status == 200, body
    return {BY_ADDRESS.get(a, a) for i in body["items"] for ep in i.get("endpoints") or [] for a in ep["addresses"]}


def test_onboard_rerun_reports_changed_0(api, onboard_vars):
    lab_up(3)
    assert playbook("lab_app.yml").rc == 0
    first = playbook("onboard.yml", *extra(**onboard_vars))
    assert first.rc == 0, first.out[-6000:]
    assert registered(api) == set(LAB_HOSTS)
    again = playbook("onboard.yml", *extra(**onboard_vars))
    assert again.rc == 0, again.out[-6000:]
    assert set(again.recap) >= set(LAB_HOSTS)
    assert {h: r["changed"] for h, r in again.recap.items()} == {h: 0 for h in again.recap}, again.out[-6000:]
    for ip in LAB_HOSTS.values():
        assert get(f"http://{ip}:10000/")[0] == 200, ip


def test_decommission_deregisters_then_drains_then_removes(api, onboard_vars, ingress):
    assert registered(api) == set(LAB_HOSTS), "needs the onboarded lab of the test before"
    ingress.wait_proxy_status(NS, "web", "valid")
    ingress.wait_route("/", FQDN)
    url = f"http://{LAB_HOSTS[VICTIM]}:10000/"
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch_api():
        while not done.is_set():
            if VICTIM not in registered(api):
                seen.setdefault("deregistered", time.monotonic())
                return
            time.sleep(0.05)

    def watch_listener():
        while not done.is_set():
            if get(url, timeout=1.0)[0] != 200:
                seen.setdefault("stopped_serving", time.monotonic())
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (watch_api, watch_listener)]
    for t in threads:
        t.start()
    stay = [f"http://{ip}:10000/" for host, ip in LAB_HOSTS.items() if host != VICTIM]
    with ingressutil.Load(ingress, FQDN) as through_ingress, Traffic(stay) as direct:
        run = playbook("decommission.yml", "--limit", VICTIM, *extra(**onboard_vars))
        done.set()
        for t in threads:
            t.join()
        after_run = through_ingress.mark()
        time.sleep(2)
        later = through_ingress.mark()
    assert run.rc == 0, run.out[-6000:]
    assert through_ingress.failed == 0, through_ingress.errors
    assert direct.failed == 0, direct.errors
    assert through_ingress.ok > 50 and direct.ok > 50, (through_ingress.by_vm, direct.ok)
    assert later[VICTIM] == after_run[VICTIM], f"the ingress still sent to {VICTIM}: {after_run} -> {later}"
    assert set(seen) == {"deregistered", "stopped_serving"}, seen
    assert seen["deregistered"] < seen["stopped_serving"], f"the VM stopped serving before it left Kubernetes: {seen}"

    assert registered(api) == set(LAB_HOSTS) - {VICTIM}
    leftovers = on_hosts("ls -d /opt/fleetmesh/envoy /etc/fleetmesh/envoy /etc/systemd/system/fleetmesh-envoy@.service "
                         "/etc/certs/key.pem /etc/certs/cert-chain.pem 2>/dev/null; "
                         "systemctl list-units --all --no-legend 'fleetmesh-envoy@*' | wc -l", VICTIM)[VICTIM]
    assert leftovers.split() == ["0"], leftovers
    for host, ip in LAB_HOSTS.items():
        if host != VICTIM:
            assert get(f"http://{ip}:10000/")[0] == 200, host

    # back into the mesh, for the tests after this one
    back = playbook("onboard.yml", "--limit", VICTIM, *extra(**onboard_vars))
    assert back.rc == 0, back.out[-6000:]
    assert registered(api) == set(LAB_HOSTS)
