"""Envoy mTLS between two lab VMs with the workload certificates, and rotation by hot restart.

fm-deb-2 (B) serves https://:15443 and requires a client certificate whose URI SAN is the web SPIFFE ID;
fm-deb-1 (A) listens on plain :10000 and calls B through a cluster that presents A's certificate and
verifies B's SPIFFE ID. These use the envoy role's listener/cluster ``tls`` options (see
plugins/filter/envoy.py): listener ``tls: {cert_dir, require_client_cert, spiffe_ids}``, cluster
``tls: {cert_dir, spiffe_ids, sni}``, both reading cert-chain.pem, key.pem and root-cert.pem from cert_dir.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import test_workload_certs as wc
import yaml
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTS, REPO, SPIFFE = wc.HOSTS, wc.REPO, wc.SPIFFE
# A certificate directory of its own too (the role's default /etc/certs is covered by test_workload_certs.py and may
# be in use by other roles' tests on the shared lab).
CERTS = "/etc/fleetmesh-wcmtls/certs"
assert_files_ok, ok, playbook, rotate, serial, sh = wc.assert_files_ok, wc.ok, wc.playbook, wc.rotate, wc.serial, wc.sh
lab, lab_ca_dir = wc.lab, wc.lab_ca_dir  # the same fixtures (the lab up, a lab CA directory)

A, B = "fm-deb-1", "fm-deb-2"
# An Envoy instance of its own (name, base id, ports), so other work on the shared lab keeps its "main" instance.
INSTANCE, BASE_ID, ADMIN_PORT = "wcmtls", 7, 9917
FRONT_PORT, MTLS_PORT = 10107, 15447
UNIT = f"fleetmesh-envoy@{INSTANCE}.service"

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def _need_envoy_role() -> None:
    if not (REPO / "roles" / "envoy" / "tasks" / "main.yml").exists():
        pytest.skip("the envoy role (roles/envoy/tasks/main.yml) is not there yet")


def mesh_vars(lab_ca_dir: Path, peer_spiffe: str = SPIFFE) -> dict:
    listeners = {
        A: [{"name": "front", "address": "0.0.0.0", "port": FRONT_PORT,
             "routes": [{"prefix": "/", "cluster": "peer"}]}],
        B: [{"name": "mtls_in", "address": "0.0.0.0", "port": MTLS_PORT,
             "tls": {"cert_dir": CERTS, "require_client_cert": True, "spiffe_ids": [SPIFFE]},
             "routes": [{"prefix": "/", "direct_response": {"status": 200, "body": "hello from fm-deb-2"}}]}],
    }
    clusters = {
        A: [{"name": "peer", "endpoints": [{"address": HOSTS[B], "port": MTLS_PORT}],
             "tls": {"cert_dir": CERTS, "spiffe_ids": [peer_spiffe]}}],
        B: [{"name": "unused", "endpoints": [{"address": "127.0.0.1", "port": 8080}]}],
    }
    return {"mtls_listeners": listeners, "mtls_clusters": clusters, "workload_certs_lab_ca_dir": str(lab_ca_dir),
            "workload_certs_sans": ["{{ inventory_hostname }}", "{{ ansible_host }}"],
            "envoy_instance": INSTANCE, "envoy_base_id": BASE_ID, "envoy_admin_port": ADMIN_PORT,
            "workload_certs_reload_detect": False, "workload_certs_reload_services": [UNIT],
            "workload_certs_dir": CERTS}


def deploy(tmp_path: Path, lab_ca_dir: Path, **kw):
    play = tmp_path / "mesh.yml"
    play.write_text(yaml.safe_dump([{
        "name": "Two Envoys with workload certificates", "hosts": f"{A}:{B}", "gather_facts": True,
        "vars": {"envoy_listeners": "{{ mtls_listeners[inventory_hostname] }}",
                 "envoy_clusters": "{{ mtls_clusters[inventory_hostname] }}"},
        "roles": [{"role": "fleetmesh.envoy.workload_certs"}, {"role": "fleetmesh.envoy.envoy"}],
    }]))
    return ok(playbook(play, tmp_path, mesh_vars(lab_ca_dir, **kw)))


def epoch(host: str) -> int:
    out = sh(host, f"curl -sf http://127.0.0.1:{ADMIN_PORT}/server_info")
    return int(json.loads(out)["command_line_options"]["restart_epoch"])


def get_front(timeout: float = 3.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOSTS[A], FRONT_PORT, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def client_cert(tmp_path: Path, ca: ca_lib.CA, spiffe_id: str, name: str) -> tuple[str, str, str]:
    """(chain file, key file, root file) of a throw-away client certificate signed by `ca` on the controller."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    issued = ca.sign(csr, spiffe_id, [], [], 3600)
    paths = [tmp_path / f"{name}-chain.pem", tmp_path / f"{name}-key.pem", tmp_path / f"{name}-root.pem"]
    paths[0].write_text(issued["cert_chain"])
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[1].chmod(0o600)
    paths[2].write_text(issued["root_cert"])
    return tuple(str(p) for p in paths)


def call_b(root: str, cert: tuple[str, str] | None, tls12: bool = True) -> str:
    """GET / on B's mTLS listener straight from the controller; returns the status line or raises ssl.SSLError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the server is identified by its SPIFFE ID, checked below
    context.load_verify_locations(root)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # a refused client certificate then fails the handshake
    if cert:
        context.load_cert_chain(*cert)
    with socket.create_connection((HOSTS[B], MTLS_PORT), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            server = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            uris = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
            assert uris == [SPIFFE]
            tls.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            return tls.recv(4096).decode().splitlines()[0]


@pytest.fixture(scope="module")
def mesh(lab, lab_ca_dir, tmp_path_factory):
    _need_envoy_role()
    tmp_path = tmp_path_factory.mktemp("mesh")
    wc.wipe(A, B, certs=CERTS)
    deploy(tmp_path, lab_ca_dir)
    for host in (A, B):
        assert_files_ok(host, certs=CERTS)
    deadline = time.monotonic() + 30
    while True:
        try:
            if get_front()[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "A -> B over mTLS did not answer 200 within 30 s"
        time.sleep(0.5)
    return tmp_path


@pytest.fixture(scope="module", autouse=True)
def remove_instance(lab, tmp_path_factory):
    """Remove this module's Envoy instance at the end (envoy_state=absent)."""
    yield
    if not (REPO / "roles" / "envoy" / "tasks" / "main.yml").exists():
        return
    tmp_path = tmp_path_factory.mktemp("mesh-cleanup")
    play = tmp_path / "absent.yml"
    play.write_text(yaml.safe_dump([{"name": "Remove the test instance", "hosts": f"{A}:{B}", "gather_facts": True,
                                     "roles": [{"role": "fleetmesh.envoy.envoy"}]}]))
    playbook(play, tmp_path, {"envoy_state": "absent", "envoy_instance": INSTANCE, "envoy_base_id": BASE_ID,
                              "envoy_admin_port": ADMIN_PORT})
    wc.wipe(A, B, certs=str(Path(CERTS).parent))


def test_envoy_a_calls_envoy_b_over_mtls(mesh):
    status, body = get_front()
    assert (status, body) == (200, "hello from fm-deb-2")


def test_b_accepts_a_cert_of_the_mesh_and_rejects_others_in_the_handshake(mesh, lab_ca_dir, tmp_path):
    ca, _created = ca_lib.lab_ca(str(lab_ca_dir))
    good = client_cert(tmp_path, ca, SPIFFE, "good")
    assert call_b(good[2], good[:2]).startswith("HTTP/1.1 200")
    # a certificate from another CA
    other_ca = ca_lib.lab_ca(str(tmp_path / "other-ca"))[0]
    foreign = client_cert(tmp_path, other_ca, SPIFFE, "foreign")
    with pytest.raises(ssl.SSLError, match="(?i)unknown.ca|certificate|alert"):
        call_b(good[2], foreign[:2])
    # the right CA, the wrong SPIFFE ID
    wrong = client_cert(tmp_path, ca, "spiffe://cluster.local/ns/fleet-lab/sa/intruder", "wrong")
    with pytest.raises(ssl.SSLError, match="(?i)certificate|alert"):
        call_b(good[2], wrong[:2])
    # no client certificate
    with pytest.raises(ssl.SSLError, match="(?i)certificate|alert|handshake"):
        call_b(good[2], None)


def test_a_verifies_the_spiffe_id_of_b(mesh, lab_ca_dir):
    try:
        deploy(mesh, lab_ca_dir, peer_spiffe="spiffe://cluster.local/ns/fleet-lab/sa/someone-else")
        deadline = time.monotonic() + 20
        while get_front()[0] == 200:
            assert time.monotonic() < deadline, "A still reaches B although B's SPIFFE ID is not the expected one"
            time.sleep(0.5)
        assert get_front()[0] == 503
    finally:
        deploy(mesh, lab_ca_dir)


def test_rotation_hot_restarts_envoy_without_failures(mesh, lab_ca_dir, tmp_path):
    # wait for the previous test's restore to serve again
    deadline = time.monotonic() + 30
    while get_front()[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    epochs = {host: epoch(host) for host in (A, B)}
    serials = {host: serial(host, CERTS) for host in (A, B)}
    pids = {host: sh(host, f"systemctl show -p MainPID --value {UNIT}").strip() for host in (A, B)}
    failures, successes, stop = [], [0], threading.Event()

    def client():
        while not stop.is_set():
            try:
                status, _body = get_front(timeout=5)
                if status == 200:
                    successes[0] += 1
                else:
                    failures.append(status)
            except OSError as err:
                failures.append(repr(err))
            time.sleep(0.02)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        # auto-detection finds the running fleetmesh-envoy@* units (it would hot-restart any other instance too)
        run = ok(rotate(tmp_path, lab_ca_dir, {"rotate_certs_hosts": f"{A}:{B}", "workload_certs_lifetime": "2h",
                                               "workload_certs_dir": CERTS, "workload_certs_reload_detect": True,
                                               "workload_certs_reload_services": []}))
        deadline = time.monotonic() + 30
        while any(epoch(host) != epochs[host] + 1 for host in (A, B)):
            assert time.monotonic() < deadline, f"epochs did not move: {epochs} -> {[epoch(h) for h in (A, B)]}"
            time.sleep(0.5)
        time.sleep(3)  # traffic across the drain of the old epoch
    finally:
        stop.set()
        thread.join(10)
    assert failures == [], f"{len(failures)} failed requests during rotation (of {successes[0] + len(failures)})"
    assert successes[0] > 20
    for host in (A, B):
        assert serial(host, CERTS) != serials[host]
        assert epoch(host) == epochs[host] + 1  # hot restart: one new epoch
        assert sh(host, f"systemctl show -p MainPID --value {UNIT}").strip() == pids[host]  # not a restart
        assert f"changed: [{host}] => (item={UNIT})" in run.out
    # the new certificates are the ones served
    ca, _created = ca_lib.lab_ca(str(lab_ca_dir))
    good = client_cert(tmp_path, ca, SPIFFE, "after")
    assert call_b(good[2], good[:2]).startswith("HTTP/1.1 200")
    again = ok(rotate(tmp_path, lab_ca_dir, {"rotate_certs_hosts": f"{A}:{B}", "workload_certs_lifetime": "2h",
                                             "workload_certs_dir": CERTS, "workload_certs_reload_detect": True}))
    assert again.changed(A) == 0 and again.changed(B) == 0
    assert {host: epoch(host) for host in (A, B)} == {host: epochs[host] + 1 for host in (A, B)}
