"""The lab VMs join a real istiod (issue 14, first acceptance point).

A real istiod (tests/harness/istiod.py, built from the pilot-agent pin) runs on the controller against the harness
API server (Istio's own CRDs), with the collection's CA as its plug-in CA: the lab CA the workload_certs role signs
with is written as the ``cacerts`` Secret, so certificates from the collection and from istiod chain to one root.
istiod's secure gRPC port (xDS and CA) is bound on the lab network's host-side address, 10.213.77.1:15012; every
other istiod listener stays on loopback. The east-west gateway (issue 14, item 3) is not built yet: the VMs'
``/etc/hosts`` block (istio_sidecar_eastwest_address) points ``istiod.istio-system.svc`` at that address directly.

``onboard.yml -e fleetmesh_istio_sidecar=true`` onboards every lab VM with the sidecar (workload certificates,
Envoy with its stats on 15091, the istio-sidecar package with the real pilot-agent, the istio-token from a
TokenRequest, WorkloadEntries) and must find the sidecar ready (istio_sidecar_require_ready). Then:

* istiod's ``/debug/syncz`` lists every VM's proxy with CDS and LDS sent and ACKed and no NACK, and
  ``/debug/connections`` lists its xDS connection;
* on every VM, the proxy's Envoy (admin ``/certs``) holds the certificate the agent wrote to /etc/certs
  (OUTPUT_CERTS of istio-start.sh): ``spiffe://cluster.local/ns/fleet-lab/sa/web``, issued by istiod (not the
  collection's certificate: another serial, istiod's 24 h lifetime) and chaining to the root istiod publishes.

Traffic capture stays off (istio_sidecar_intercept=false, ISTIO_CUSTOM_IP_TABLES=true): the agent runs without it.
"""

from __future__ import annotations

import base64
import datetime
import functools
import http.client
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib
from cryptography import x509

from tests.conftest import ROOT, need
from tests.integration.labutil import LAB_HOSTS, extra, lab_up, on_hosts, playbook

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
import istiod as istiod_harness  # noqa: E402
import kubeapi  # noqa: E402
from kubeapi_pytest import require_kube_binaries  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.kube]

HOSTS = sorted(LAB_HOSTS)
NS, SA = "fleet-lab", "web"  # inventories/lab/group_vars/web.yml
SPIFFE = f"spiffe://cluster.local/ns/{NS}/sa/{SA}"
GATEWAY = "10.213.77.1"      # the host's address on the lab network (tools/lab/lab.sh)
CERTS_SRC = "/etc/fleetmesh/workload-certs"  # onboard.yml's istio_sidecar_certs_src_dir default
SAVED_CERTS = "/etc/certs.saved-by-mesh-test"
CACERTS_KEYS = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _require_istiod() -> None:
    missing = istiod_harness.missing_binaries()
    if missing:
        message = istiod_harness.missing_message(missing)
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    need("podman", "run 'make setup' (apt-get install podman runc)")
    require_kube_binaries()
    _require_istiod()
    t0 = time.monotonic()
    lab_up(len(HOSTS))
    tmp = tmp_path_factory.mktemp("mesh")
    # The collection's CA (the lab CA layout workload_certs_source=lab_ca reads) is istiod's plug-in CA.
    ca_dir = tmp / "lab-ca"
    ca_dir.mkdir(mode=0o700)
    files = ca_lib.new_lab_ca_files("fleetmesh mesh test")
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
        run = playbook(str(ROOT / "molecule/sidecar-debian/el9_emulation_programs.yml"))
        assert run.rc == 0, run.out[-3000:]
        # /etc/certs is istio-proxy's on a sidecar VM; other tests' Envoy certificates there are set aside.
        on_hosts(f"if [ -e /etc/certs ] && [ ! -e {SAVED_CERTS} ]; then mv /etc/certs {SAVED_CERTS}; fi; true")
        variables = {
            "fleetmesh_istio_sidecar": True,
            "fleetmesh_kubeconfig": str(api.registrar_kubeconfig),
            "workload_certs_source": "lab_ca",
            "workload_certs_lab_ca_dir": str(ca_dir),
            "envoy_stats_port": 15091,  # the sidecar's Envoy serves 15090
            "istio_sidecar_package_source": "url",
            "istio_sidecar_package_base_url": f"http://{GATEWAY}:{server.server_address[1]}",
            "istio_sidecar_package_sha256": {"deb": sums["deb/istio-sidecar.deb"],
                                             "rpm": sums["rpm/istio-sidecar.rpm"]},
            "istio_sidecar_intercept": False,
            "istio_sidecar_eastwest_address": GATEWAY,
            "istio_sidecar_certs_force": False,  # the agent rewrites /etc/certs with istiod's certificate
            "istio_sidecar_require_ready": True,
            "istio_sidecar_ready_timeout": 60,
        }
        onboard = playbook("onboard.yml", *extra(**variables))
        print(f"lab, istiod and onboarding in {time.monotonic() - t0:.0f} s (onboard.yml {onboard.seconds:.0f} s)")
        yield {"api": api, "pilot": pilot, "onboard": onboard, "root": files["root-cert.pem"].decode()}
    finally:
        playbook("sidecar_offboard.yml", "-e", "target=web")
        playbook("envoy.yml")  # the stats listener back on its default port, Envoy's certificates in /etc/certs
        on_hosts(f"rm -rf {CERTS_SRC}; rmdir /etc/fleetmesh 2>/dev/null; "
                 f"if [ -e {SAVED_CERTS} ]; then rm -rf /etc/certs && mv {SAVED_CERTS} /etc/certs; fi; true")
        if server is not None:
            server.shutdown()
        pilot.stop()
        api.stop()


def test_onboard_waits_for_a_ready_sidecar(mesh):
    run = mesh["onboard"]
    assert run.rc == 0, run.out[-5000:]
    for host in HOSTS:
        assert run.recap[host]["failed"] == 0, run.recap
    assert run.out.count("istio.service is ready (:15021/healthz/ready returned 200)") == len(HOSTS), run.out[-5000:]
    assert "does not answer from this host" not in run.out


def test_istiod_lists_every_vm_connected_and_synced(mesh):
    pilot = mesh["pilot"]
    ids = {f"{host}.{NS}" for host in HOSTS}  # POD_NAME (hostname -s) . ISTIO_NAMESPACE, as istio-start.sh sets

    def synced():
        status, body = pilot.debug("/debug/syncz")
        proxies = {p.get("proxy"): p for p in json.loads(body or "[]")} if status == 200 else {}
        done = ids <= set(proxies) and all(
            proxies[i].get(f"{t}_sent") and proxies[i].get(f"{t}_acked") == proxies[i].get(f"{t}_sent")
            for i in ids for t in ("cluster", "listener"))
        return proxies if done else None

    try:
        proxies = kubeapi._wait("every VM's proxy synced with istiod (/debug/syncz)", synced, 30)
    except Exception as exc:  # say what istiod sees
        raise AssertionError(f"{exc}; /debug/syncz: {pilot.debug('/debug/syncz')[1][:3000]}") from exc
    errors = {i: r.get("lastError") for i in ids for r in (proxies[i].get("resources") or {}).values()
              if r.get("lastError")}
    assert not errors, errors  # nothing NACKed by the VMs' upstream Envoy
    status, body = pilot.debug("/debug/connections")  # {"totalClients": n, "clients": [{"connectionId": ...}]}
    assert status == 200, body[:2000]
    clients = {c["connectionId"].rsplit("-", 1)[0]: c["address"].rsplit(":", 1)[0]
               for c in json.loads(body).get("clients") or []}
    # Each VM's own xDS connection, from its address on the lab network.
    assert {i: clients.get(i) for i in ids} == {f"{h}.{NS}": LAB_HOSTS[h] for h in HOSTS}, body[:2000]


_ADMIN_CERTS = ("python3 -c \"import json, urllib.request; "
                "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:15000/certs', timeout=5))))\"")


def _leaf(b64: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def test_every_proxy_holds_an_istiod_certificate_for_its_spiffe_id(mesh):
    root = mesh["pilot"].root_cert(NS)
    assert root.strip() == mesh["root"].strip()  # istiod serves the collection's root (plug-in CA)
    found = on_hosts(f"base64 -w0 /etc/certs/cert-chain.pem; echo; base64 -w0 {CERTS_SRC}/cert-chain.pem; echo; "
                     f"{_ADMIN_CERTS}")
    assert set(found) == set(HOSTS), found
    for host in HOSTS:
        agent_b64, collection_b64, admin = found[host].split("\n", 2)
        chain = base64.b64decode(agent_b64).decode()
        assert ca_lib.verify_chain(chain, root) == [], (host, chain)
        leaf, collections = _leaf(agent_b64), _leaf(collection_b64)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE], host
        # istiod issued it: not the collection's certificate (workload_certs, 30 d), istiod's 24 h lifetime.
        assert leaf.serial_number != collections.serial_number, host
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(hours=25), host
        # The proxy's Envoy holds that certificate (SDS from the agent), with the SPIFFE ID.
        held = [c for entry in json.loads(admin)["certificates"] for c in entry.get("cert_chain") or []]
        serials = {int(c["serial_number"], 16) for c in held}
        assert leaf.serial_number in serials, (host, held)
        uris = {s.get("uri") for c in held for s in c.get("subject_alt_names") or []}
        assert SPIFFE in uris, (host, held)
    metrics = re.findall(r"^citadel_server_success_cert_issuance_count\S* (\d+)", _metrics(mesh["pilot"]), re.M)
    assert metrics and sum(map(int, metrics)) >= len(HOSTS), metrics


def _metrics(pilot) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", pilot.ports["monitoring"], timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()
