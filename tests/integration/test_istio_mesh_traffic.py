"""Mesh traffic between the lab VMs through their Istio sidecars (issue 14, second acceptance point).

The control plane is the one of test_istio_mesh.py: a real istiod (tests/harness/istiod.py) against the harness API
server, the collection's CA as its plug-in CA, its secure gRPC port on the lab network's host-side address
10.213.77.1:15012. The VMs are onboarded with ``onboard.yml -e fleetmesh_istio_sidecar=true`` and traffic capture
on (``istio_sidecar_intercept: true``, the role's default: istio-start.sh runs ``pilot-agent istio-iptables``; the lab
VMs have NET_ADMIN, NET_RAW and iptables, tools/lab/lab.sh and build-images.sh). The registration writes the Service
``web`` and a WorkloadEntry per VM. The lab app listens on 127.0.0.1:8080, so the test applies a ``Sidecar`` whose
ingress sends inbound 8080 there (the registration does not write Sidecar resources; docs/istio-mesh.md).

VM A (the first lab VM) calls ``http://web.fleet-lab.svc.cluster.local:8080/`` by name (the agent's DNS proxy) and
reaches the other VMs of ``web``; with PeerAuthentication STRICT plain-text clients that bypass the mesh (on the
controller, and on A as istio-proxy, whose traffic capture leaves alone) are refused while A still gets through
(mTLS); an AuthorizationPolicy that denies A's service account gets A a 403, and removing it lets A through again.
istiod's /debug/syncz shows no NACK from the VMs' upstream Envoy.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib

from tests.conftest import ROOT, need
from tests.integration.labutil import LAB_HOSTS, extra, get, lab_up, on_hosts, playbook

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
import istiod as istiod_harness  # noqa: E402
import kubeapi  # noqa: E402
from kubeapi_pytest import require_kube_binaries  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.kube]

HOSTS = sorted(LAB_HOSTS)
CALLER = HOSTS[0]
OTHERS = set(HOSTS) - {CALLER}
NS, SA, PORT = "fleet-lab", "web", 8080  # inventories/lab/group_vars/web.yml
NAME = f"web.{NS}.svc.cluster.local"
URL = f"http://{NAME}:{PORT}/"
GATEWAY = "10.213.77.1"      # the host's address on the lab network (tools/lab/lab.sh)
CERTS_SRC = "/etc/fleetmesh/workload-certs"
SAVED_CERTS = "/etc/certs.saved-by-mesh-traffic-test"
CACERTS_KEYS = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
IPTABLES_SAVE = "(iptables-legacy-save -t nat; iptables-nft-save -t nat) 2>/dev/null"

SIDECAR = {  # inbound 8080 to the app on loopback (istiod's default is the VM's address, where nothing listens)
    "apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "web", "namespace": NS},
    "spec": {"workloadSelector": {"labels": {"app": "web"}},
             "ingress": [{"port": {"number": PORT, "protocol": "HTTP", "name": "http"},
                          "defaultEndpoint": f"127.0.0.1:{PORT}"}]},
}
STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": NS}, "spec": {"mtls": {"mode": "STRICT"}}}
DENY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-web-sa", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/{SA}"]}}]}]}}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    need("podman", "run 'make setup' (apt-get install podman runc)")
    require_kube_binaries()
    missing = istiod_harness.missing_binaries()
    if missing:  # the same rule as test_istio_mesh.py: a skip outside CI, a failure in CI
        message = istiod_harness.missing_message(missing)
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    lab_up(len(HOSTS))
    tmp = tmp_path_factory.mktemp("mesh-traffic")
    ca_dir = tmp / "lab-ca"
    ca_dir.mkdir(mode=0o700)
    files = ca_lib.new_lab_ca_files("fleetmesh mesh traffic test")
    for name, data in files.items():
        kubeapi._write_private(ca_dir / name, data)
    api = kubeapi.KubeAPI(tmp / "kube", istio_crds=istiod_harness.crds_file())
    api.start()
    pilot = istiod_harness.Istiod(api, tmp / "istiod", cacerts={k: files[k] for k in CACERTS_KEYS},
                                  secure_grpc_address=(GATEWAY, 15012))
    server = None
    try:
        pilot.start()
        api.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
                   {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}}])
        build = subprocess.run([str(ROOT / "tools/pkg/istio-sidecar/build.sh"), "--print-dir"], capture_output=True,
                               text=True, check=False, timeout=1200)
        assert build.returncode == 0, build.stderr
        pkg_dir = Path(build.stdout.strip())
        sums = dict(reversed(line.split()) for line in (pkg_dir / "SHA256SUMS").read_text().splitlines())
        server = http.server.ThreadingHTTPServer((GATEWAY, 0), functools.partial(_Quiet, directory=str(pkg_dir)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for book in (str(ROOT / "molecule/sidecar-debian/el9_emulation_programs.yml"), "lab_app.yml"):
            run = playbook(book)
            assert run.rc == 0, run.out[-3000:]
        on_hosts(f"if [ -e /etc/certs ] && [ ! -e {SAVED_CERTS} ]; then mv /etc/certs {SAVED_CERTS}; fi; true")
        onboard = playbook("onboard.yml", *extra(
            fleetmesh_istio_sidecar=True,
            fleetmesh_kubeconfig=str(api.registrar_kubeconfig),
            workload_certs_source="lab_ca",
            workload_certs_lab_ca_dir=str(ca_dir),
            envoy_stats_port=15091,  # the sidecar's Envoy serves 15090
            istio_sidecar_package_source="url",
            istio_sidecar_package_base_url=f"http://{GATEWAY}:{server.server_address[1]}",
            istio_sidecar_package_sha256={"deb": sums["deb/istio-sidecar.deb"], "rpm": sums["rpm/istio-sidecar.rpm"]},
            istio_sidecar_intercept=True,
            istio_sidecar_eastwest_address=GATEWAY,
            istio_sidecar_certs_force=False,
            istio_sidecar_require_ready=True,
            istio_sidecar_ready_timeout=60,
        ))
        assert onboard.rc == 0, onboard.out[-5000:]
        api.apply([SIDECAR])
        yield {"api": api, "pilot": pilot}
    finally:
        playbook("sidecar_offboard.yml", "-e", "target=web")  # istio.service's ExecStopPost removes the capture rules
        playbook("envoy.yml")
        on_hosts(f"rm -rf {CERTS_SRC}; rmdir /etc/fleetmesh 2>/dev/null; "
                 f"if [ -e {SAVED_CERTS} ]; then rm -rf /etc/certs && mv {SAVED_CERTS} /etc/certs; fi; true")
        if server is not None:
            server.shutdown()
        pilot.stop()
        api.stop()


def _calls(n: int) -> list[tuple[str, str]]:
    """n calls of URL from CALLER as root (captured): [(status, first line of the body)]; status 000 = no answer."""
    host = CALLER
    out = on_hosts(f"for i in $(seq {n}); do code=$(curl -s -m 5 -o /tmp/mesh-call -w '%{{http_code}}' {URL}); "
                   f"echo \"$code $(head -n1 /tmp/mesh-call 2>/dev/null)\"; rm -f /tmp/mesh-call; done", host)
    return [tuple((line.split(" ", 1) + [""])[:2]) for line in out.get(host, "").splitlines() if line.strip()]


def _wait_calls(expected: str, timeout: float = 60.0, in_a_row: int = 6) -> list[tuple[str, str]]:
    """Call until ``in_a_row`` calls in a row answer ``expected``: pooled connections keep the listener configuration
    they were accepted with until it drains (docs/istio-mesh.md, timing)."""
    deadline, seen = time.monotonic() + timeout, []
    while True:
        seen = _calls(in_a_row)
        if len(seen) == in_a_row and all(code == expected for code, _body in seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{CALLER} -> {URL}: not {in_a_row} x {expected} within {timeout} s; last: {seen}")
        time.sleep(1)


def _no_nack(pilot) -> None:
    status, body = pilot.debug("/debug/syncz")
    assert status == 200, body[:2000]
    proxies = {p["proxy"]: p for p in json.loads(body or "[]")}
    assert {f"{h}.{NS}" for h in HOSTS} <= set(proxies), list(proxies)
    errors = {name: {t: r.get("lastError") for t, r in (p.get("resources") or {}).items() if r.get("lastError")}
              for name, p in proxies.items()}
    assert not any(errors.values()), errors


def test_capture_rules_on_every_vm(mesh):
    found = on_hosts(IPTABLES_SAVE)
    assert set(found) == set(HOSTS), found
    for host, rules in found.items():
        assert f"-A ISTIO_INBOUND -p tcp -m tcp --dport {PORT} -j ISTIO_IN_REDIRECT" in rules, (host, rules)
        assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in rules, (host, rules)
        assert "-j ISTIO_REDIRECT" in rules and "REDIRECT --to-ports 15001" in rules, (host, rules)


def test_the_service_name_resolves_on_the_vms(mesh):
    status, svc = mesh["api"].request("GET", f"/api/v1/namespaces/{NS}/services/web")
    assert status == 200, svc
    found = on_hosts(f"getent hosts {NAME} | cut -d' ' -f1; getent hosts istiod.istio-system.svc | cut -d' ' -f1")
    assert set(found) == set(HOSTS), found
    for host, out in found.items():
        # The mesh name from the agent's DNS proxy; istiod's name from the role's /etc/hosts block still resolves.
        assert out.split() == [svc["spec"]["clusterIP"], GATEWAY], (host, out)


def test_a_vm_reaches_the_other_vms_by_name(mesh):
    _wait_calls("200")
    pages = _calls(30)
    assert all(code == "200" for code, _body in pages), pages
    reached = {body.removeprefix("hello from ").strip() for _code, body in pages}
    assert OTHERS <= reached, pages  # round robin over every VM of web, through their sidecars
    _no_nack(mesh["pilot"])


def _plain_from_caller(targets: list[str]) -> list[int]:
    """Plain-text calls from CALLER as istio-proxy, whose traffic the capture rules leave alone (bypassing the mesh)."""
    out = on_hosts("; ".join(f"runuser -u istio-proxy -- curl -s -m 5 -o /dev/null -w '%{{http_code}}\\n' {u}"
                             for u in targets), CALLER)
    return [int(code) for code in out.get(CALLER, "").split()]


def test_strict_mtls_refuses_plain_text_and_lets_the_mesh_through(mesh):
    targets = [f"http://{LAB_HOSTS[h]}:{PORT}/" for h in sorted(OTHERS)]
    # Before STRICT (PERMISSIVE), plain text reaches the app through the inbound capture: from the controller, and
    # from A's istio-proxy user.
    assert [get(u, timeout=5)[0] for u in targets] == [200] * len(targets)
    assert _plain_from_caller(targets) == [200] * len(targets)
    mesh["api"].apply([STRICT])
    deadline = time.monotonic() + 60
    while any(get(u, timeout=5)[0] == 200 for u in targets):
        assert time.monotonic() < deadline, "plain text still answered 60 s after PeerAuthentication STRICT"
        time.sleep(1)
    assert [get(u, timeout=5)[0] for u in targets] == [0] * len(targets)  # reset: no TLS, no answer
    assert _plain_from_caller(targets) == [0] * len(targets)  # curl's 000
    _wait_calls("200")  # the sidecars' mTLS
    _no_nack(mesh["pilot"])


def test_authorization_policy_denies_and_then_allows_the_caller(mesh):
    api = mesh["api"]
    api.apply([DENY])
    try:
        denied = _wait_calls("403")
        assert all(body.startswith("RBAC: access denied") for _code, body in denied), denied
        _no_nack(mesh["pilot"])
    finally:
        status, body = api.request("DELETE", f"/apis/security.istio.io/v1/namespaces/{NS}/authorizationpolicies/"
                                   f"{DENY['metadata']['name']}")
        assert status in (200, 202, 404), body
    _wait_calls("200")
