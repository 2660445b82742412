"""Fleet rollout on the embedded lab (issue 8): zero dropped requests during an upgrade, a target
version that fails its health gate is rolled back by itself and halts the rollout, and a VM
stopped mid-rollout stops the rollout per max_fail_percentage while the others keep serving.

The upgrade's traffic is measured directly (each VM's listener) and through a real Contour ingress (issue 13): the
VMs registered as an EndpointSlice + HTTPProxy in the session's API server, the upgrade marking each host not ready
before it drains it and ready again after its health gate."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import shutil

import pytest

from tests.conftest import need
from tests.integration import ingressutil
from tests.integration.labutil import LAB_HOSTS, ROOT, Traffic, extra, lab_up, on_hosts, playbook

pytestmark = [pytest.mark.lab, pytest.mark.slow]
CACHE = os.environ.get("FLEETMESH_CACHE", "/var/cache/fleetmesh")
URLS = [f"http://{ip}:10000/" for ip in LAB_HOSTS.values()]
contour_ingress = importlib.import_module("contour_pytest").contour_ingress  # the fixture (tests/harness)
INGRESS_NS, INGRESS_FQDN = "fleet-rollout", "rollout.fleet.example"


def versions() -> dict[str, str]:
    out = on_hosts("curl -s http://127.0.0.1:9901/server_info")
    return {h: json.loads(t)["version"].split("/")[1] for h, t in out.items()}


def upgrade(to: str, *args: str, report=None):
    report = report or ROOT / ".build" / "upgrade-report.json"
    return playbook("upgrade.yml", *extra(upgrade_to=to, target="lab", upgrade_register=False,
                                          upgrade_report=str(report)), *args)


@pytest.fixture(scope="module")
def fleet():
    need("podman", "run 'make setup' (apt-get install podman runc)")
    lab_up(3)
    assert playbook("lab_app.yml").rc == 0
    run = playbook("envoy.yml", *extra(envoy_version="1.39.3"))
    assert run.rc == 0, run.out[-4000:]
    assert set(versions().values()) == {"1.39.3"}
    yield
    playbook("envoy.yml")


@pytest.fixture(scope="module")
def ingress(fleet, kube_api, contour_ingress) -> dict:
    """The lab VMs registered for the session's Contour ingress (a namespace and registration set of their own)."""
    kube_api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": INGRESS_NS}}])
    registration = ingressutil.ingress_registration(kube_api, INGRESS_NS, INGRESS_FQDN, "rollout")
    run = playbook("register.yml", *extra(**registration))
    assert run.rc == 0, run.out[-4000:]
    contour_ingress.wait_proxy_status(INGRESS_NS, "web", "valid")
    contour_ingress.wait_route("/", INGRESS_FQDN)
    return registration


@pytest.mark.kube
def test_upgrade_drops_zero_requests(fleet, ingress, contour_ingress):
    with Traffic(URLS, max_seconds=400) as traffic, \
            ingressutil.Load(contour_ingress, INGRESS_FQDN, max_seconds=400) as through_ingress:
        run = upgrade("1.40.0", *extra(upgrade_register=True, **ingress))
    assert run.rc == 0, run.out[-5000:]
    assert set(versions().values()) == {"1.40.0"}
    assert traffic.ok > 100
    assert traffic.failed == 0, traffic.errors
    assert through_ingress.ok > 100 and set(through_ingress.by_vm) == set(LAB_HOSTS), through_ingress.by_vm
    assert through_ingress.failed == 0, through_ingress.errors
    # Re-running is a no-op for the Envoy state: every host is already at the target.
    again = upgrade("1.40.0")
    assert again.rc == 0 and set(versions().values()) == {"1.40.0"}


@pytest.fixture
def broken_cache(tmp_path):
    """An artifact cache whose 1.99.0 'Envoy' passes --version and validation but exits at once when
    started, as a broken build would; 1.40.0 is the real one (a symlink)."""
    cache = tmp_path / "envoy"
    cache.mkdir()
    (cache / "1.40.0").symlink_to(f"{CACHE}/artifacts/envoy/1.40.0")
    (cache / "1.39.3").symlink_to(f"{CACHE}/artifacts/envoy/1.39.3")
    d = cache / "1.99.0"
    d.mkdir()
    script = (
        b"#!/bin/sh\n"
        b"case \"$*\" in\n"
        b"  *--version*) echo 'envoy  version: 0000/1.99.0/Clean/RELEASE/BoringSSL';;\n"
        b"  *--hot-restart-version*) /opt/fleetmesh/envoy/1.40.0/envoy --hot-restart-version;;\n"
        b"  *--mode\\ validate*) exit 0;;\n"
        b"  *) echo 'broken build: exiting at once' >&2; exit 1;;\n"
        b"esac\n"
    )
    (d / "envoy").write_bytes(script)
    (d / "envoy").chmod(0o755)
    (d / "envoy.gz").write_bytes(gzip.compress(script, mtime=0))
    sha = hashlib.sha256(script).hexdigest()
    sha_gz = hashlib.sha256((d / "envoy.gz").read_bytes()).hexdigest()
    (d / "SHA256SUMS").write_text(f"{sha}  envoy\n{sha_gz}  envoy.gz\n")
    return cache


def test_failed_health_gate_rolls_back_and_halts(fleet, broken_cache, tmp_path):
    assert set(versions().values()) == {"1.40.0"}
    report = tmp_path / "report.json"
    with Traffic(URLS, max_seconds=300) as traffic:
        run = upgrade("1.99.0", "-e", f"envoy_artifact_cache={broken_cache}", report=report)
    assert run.rc != 0
    (ROOT / ".build" / "test-rollout-halt.log").write_text(run.out)
    assert "rolled back to" in run.out and "switch-validate-restart" in run.out, "see .build/test-rollout-halt.log"
    data = json.loads(report.read_text())
    assert data["failure"]["rolled_back_to"] == "1.40.0"
    assert "exited at once" in data["failure"]["reason"], data["failure"]
    assert data["result"] == "halted" and data["failure"]["step"] == "switch-validate-restart"
    assert data["failure"]["host"] in LAB_HOSTS
    # Canary only: the other hosts were never touched, and everyone serves 1.40.0.
    assert set(versions().values()) == {"1.40.0"}
    assert traffic.failed == 0, traffic.errors
    assert on_hosts("readlink /opt/fleetmesh/envoy/current") == dict.fromkeys(LAB_HOSTS, "1.40.0")


# A VM stopped in the middle of a rollout: tests/integration/test_fault_matrix.py (row vm_stopped) stops one during
# its batch's drain and checks the run, the report, the other hosts' traffic and the re-run.


def test_upgrade_rejects_bad_target_before_touching_hosts(fleet):
    probe = "readlink /opt/fleetmesh/envoy/current; curl -s http://127.0.0.1:9901/server_info | grep -c LIVE"
    before = on_hosts(probe)
    run = upgrade("1.40")
    assert run.rc != 0 and "envoy_version" in run.out and "1.40" in run.out
    assert on_hosts(probe) == before
    assert shutil.which("podman")
