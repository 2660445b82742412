"""Fleet rollout with the real kube-apiserver (issue 8): the API server goes away in the middle of an
upgrade that marks hosts not ready / ready in Kubernetes.

The rollout must stop with an error that names the unreachable API; no host may be left half-way (draining,
health check failed, or between two versions), traffic to the VMs keeps flowing; once the API server is back, a
re-run of the same command converges: every host on the target version and ready in its EndpointSlice.

The API server of this test is its own (tests/harness/kubeapi.py), so stopping it does not disturb the session's.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import kubeapi  # tests/harness is put on sys.path by conftest.py
import pytest
from kubeapi_pytest import require_kube_binaries

from tests.integration.labutil import LAB_HOSTS, Traffic, extra, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab, pytest.mark.kube, pytest.mark.slow]
NS = "fleet-lab"  # inventories/lab/group_vars/web.yml
OWNED = "app.kubernetes.io/managed-by=fleetmesh.envoy"


def envoy_state() -> dict[str, tuple[str, str]]:
    """host -> (version, server state) from each VM's admin interface."""
    out = on_hosts("curl -s http://127.0.0.1:9901/server_info")
    return {h: (json.loads(t)["version"].split("/")[1], json.loads(t)["state"]) for h, t in out.items()}


def slice_ready(api: kubeapi.KubeAPI) -> dict[str, bool]:
    """address -> conditions.ready over the owned EndpointSlices of the namespace."""
    path = api.resource_path("discovery.k8s.io/v1", "EndpointSlice", None, NS) + f"?labelSelector={OWNED}"
    status, body = api.request("GET", path)
    assert status == 200, body
    return {ep["addresses"][0]: ep.get("conditions", {}).get("ready", True)
            for item in body["items"] for ep in item.get("endpoints") or []}


@pytest.fixture
def own_api(tmp_path: Path):
    require_kube_binaries()
    api = kubeapi.KubeAPI(tmp_path / "kube")
    api.start()
    try:
        api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
        yield api
    finally:
        api.stop()


def test_apiserver_down_mid_rollout_leaves_no_host_half_way_and_rerun_converges(own_api, tmp_path):
    lab_up(3)
    assert playbook("lab_app.yml").rc == 0
    registration = {"fleetmesh_kubeconfig": str(own_api.registrar_kubeconfig),
                    "mesh_registration_shapes": ["endpointslice"]}
    run = playbook("envoy.yml", *extra(envoy_version="1.39.3"))
    assert run.rc == 0, run.out[-4000:]
    run = playbook("register.yml", *extra(**registration))
    assert run.rc == 0, run.out[-4000:]
    assert slice_ready(own_api) == {ip: True for ip in LAB_HOSTS.values()}

    report = tmp_path / "report.json"
    upgrade = ["upgrade.yml", *extra(upgrade_to="1.40.0", target="lab", upgrade_register=True,
                                     upgrade_report=str(report), **registration)]

    # The outage starts as soon as the canary runs the new version (the rollout is then half done).
    outage = threading.Event()

    def take_the_api_away():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not outage.is_set():
            if any(v == "1.40.0" for v, _s in envoy_state().values()):
                own_api.stop_apiserver()
                outage.set()
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=take_the_api_away, daemon=True)
    urls = [f"http://{ip}:10000/" for ip in LAB_HOSTS.values()]
    with Traffic(urls, max_seconds=400) as traffic:
        watcher.start()
        run = playbook(*upgrade)
        outage.set()
        watcher.join()
    assert run.rc != 0, "the rollout went through an API server outage without noticing:\n" + run.out[-4000:]
    assert "cannot reach the Kubernetes API" in run.out, run.out[-6000:]

    # Nothing half-way: every VM serves, on one version, with its health check on (LIVE, not DRAINING).
    state = envoy_state()
    assert {s for _v, s in state.values()} == {"LIVE"}, state
    assert {v for v, _s in state.values()} <= {"1.39.3", "1.40.0"}, state
    assert "1.39.3" in {v for v, _s in state.values()}, f"the outage came too late to test anything: {state}"
    assert traffic.failed == 0, traffic.errors

    own_api.start_apiserver()
    again = playbook(*upgrade)
    assert again.rc == 0, again.out[-6000:]
    assert envoy_state() == {h: ("1.40.0", "LIVE") for h in LAB_HOSTS}
    assert slice_ready(own_api) == {ip: True for ip in LAB_HOSTS.values()}
    assert json.loads(report.read_text())["result"] == "complete"

    # leave the lab as the other tests expect it
    assert playbook("envoy.yml").rc == 0
