"""istiod on the controller against the harness API server (issue 14, items 1 and 2; no VMs).

A real ``pilot-discovery`` (built from the same istio.io/istio module as pilot-agent by
tools/pkg/istio-sidecar/build-istiod.sh) runs against the harness kube-apiserver, which serves Istio's own CRDs
from the module instead of the harness's stand-ins. Its CA issues a workload certificate for a real CSR
authenticated by a Kubernetes TokenRequest token (audience ``istio-ca``, checked by istiod with a TokenReview),
over its secure gRPC port (TLS verified against the expected root with istiod's service name):

* plug-in CA: the collection's CA in Istio's ``cacerts`` Secret layout; the issued certificate chains to the
  collection's root, like the certificates the collection itself signs (workload_sign);
* self-signed CA: the root is the one istiod publishes in the ``istio-ca-root-cert`` ConfigMap;
* the real pilot-agent of the istio-sidecar package (with the controller's Envoy) gets its certificate and ACKs xDS;
* a WorkloadEntry behind a ServiceEntry is an endpoint in istiod's registry until it is deleted.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import istiod as istiod_harness  # tests/harness is put on sys.path by conftest.py
import kubeapi
import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubeapi_pytest import not_built, require_istiod, require_kube_binaries

NAMESPACE = "fleet-web"
SERVICE_ACCOUNT = "web-vm"
SPIFFE = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"
CACERTS_KEYS = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubeapi.KubeAPI]:
    require_kube_binaries()
    require_istiod()
    server = kubeapi.KubeAPI(tmp_path_factory.mktemp("kube"), istio_crds=istiod_harness.crds_file())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _workload(api: kubeapi.KubeAPI, namespace: str) -> None:
    api.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace}},
    ])


def _csr(spiffe: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetmesh test")]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=False)
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_leaf(chain: list[str], key: ec.EllipticCurvePrivateKey, root_pem: str, spiffe: str) -> x509.Certificate:
    assert ca_lib.verify_chain("".join(chain), root_pem) == [], chain
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert _spki(leaf.public_key()) == _spki(key.public_key())
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(minutes=30) < lifetime <= datetime.timedelta(hours=2), lifetime
    return leaf


def test_istio_crds_from_the_module(api: kubeapi.KubeAPI) -> None:
    """The API server serves Istio's own CRDs (all of crd-all.gen.yaml), not the stand-ins."""
    files = [f.name for f in api.crd_files()]
    assert not [f for f in files if f.startswith(kubeapi.ISTIO_STANDIN_PREFIXES)], files
    for name in ("workloadentries.networking.istio.io", "workloadgroups.networking.istio.io",
                 "serviceentries.networking.istio.io", "peerauthentications.security.istio.io",
                 "authorizationpolicies.security.istio.io", "telemetries.telemetry.istio.io"):
        status, crd = api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        assert status == 200, (name, crd)
        assert crd["metadata"]["labels"].get("app") == "istio-pilot", name  # Istio's generated CRDs carry it


def test_plugin_ca_is_the_collections_ca(api: kubeapi.KubeAPI, tmp_path: Path) -> None:
    files = ca_lib.new_lab_ca_files("fleetmesh istiod test")
    root_pem = files["root-cert.pem"].decode()
    with istiod_harness.Istiod(api, tmp_path / "istiod", cacerts={k: files[k] for k in CACERTS_KEYS}) as pilot:
        print(f"istiod ready in {pilot.timings['ready']:.1f} s (plug-in CA)")
        _workload(api, NAMESPACE)
        assert pilot.root_cert(NAMESPACE).strip() == root_pem.strip()  # published root: the collection's

        key, csr = _csr(SPIFFE)
        token = api.token(NAMESPACE, SERVICE_ACCOUNT, audiences=["istio-ca"], expiration_seconds=3600)
        # TLS to 15012 is verified against the collection's root with istiod's service name.
        chain = pilot.create_certificate(csr, token, root_pem)
        leaf = _check_leaf(chain, key, root_pem, SPIFFE)
        issuer = x509.load_pem_x509_certificate(files["ca-cert.pem"])
        assert leaf.issuer == issuer.subject  # signed by the collection's intermediate

        # One root: what the collection itself signs (workload_sign's CA) chains to the same root.
        own = ca_lib.ca_from_istio_cacerts(files, "test").sign(csr, SPIFFE, [], [], 3600)
        assert ca_lib.verify_chain(own["cert_chain"], root_pem) == []
        assert own["root_cert"].strip() == root_pem.strip()

        # A token for the API server's audience only is not an istio-ca token: refused.
        wrong = api.token(NAMESPACE, SERVICE_ACCOUNT, audiences=[kubeapi.SA_ISSUER], expiration_seconds=3600)
        with pytest.raises(istiod_harness.IstiodError, match="UNAUTHENTICATED|PERMISSION_DENIED"):
            pilot.create_certificate(csr, wrong, root_pem)
    api.request("DELETE", f"/api/v1/namespaces/{istiod_harness.NAMESPACE}/secrets/cacerts")


def test_self_signed_ca_root_from_configmap(api: kubeapi.KubeAPI, tmp_path: Path) -> None:
    api.request("DELETE", f"/api/v1/namespaces/{istiod_harness.NAMESPACE}/secrets/cacerts")
    namespace = f"{NAMESPACE}-self"
    with istiod_harness.Istiod(api, tmp_path / "istiod", cacerts=None) as pilot:
        print(f"istiod ready in {pilot.timings['ready']:.1f} s (self-signed CA)")
        _workload(api, namespace)  # created after istiod started: the ConfigMap in it is this istiod's
        root_pem = pilot.root_cert(namespace)
        root = x509.load_pem_x509_certificate(root_pem.encode())
        assert root.issuer == root.subject  # istiod's own self-signed root

        spiffe = f"spiffe://cluster.local/ns/{namespace}/sa/{SERVICE_ACCOUNT}"
        key, csr = _csr(spiffe)
        token = api.token(namespace, SERVICE_ACCOUNT, audiences=["istio-ca"], expiration_seconds=3600)
        chain = pilot.create_certificate(csr, token, root_pem)
        _check_leaf(chain, key, root_pem, spiffe)


def test_real_pilot_agent_gets_its_certificate_and_config(api: kubeapi.KubeAPI, tmp_path: Path) -> None:
    """The istio-sidecar package's real pilot-agent with the controller's Envoy: its workload certificate comes from
    istiod's plug-in CA (the collection's root), and istiod's xDS is ACKed (no traffic capture, loopback only)."""
    envoy = kubeapi.cache_dir() / "artifacts" / "envoy" / "1.40.0" / "envoy"
    missing = [p for p in (istiod_harness.pilot_agent_binary(), envoy) if not os.access(p, os.X_OK)]
    missing += [p for p in (istiod_harness.module_dir(),) if not p.is_dir()]
    if missing:
        message = (f"missing {', '.join(map(str, missing))}: run tools/pkg/istio-sidecar/build.sh (pilot-agent) "
                   "and tools/fetch-envoy.sh")
        not_built(message)
    files = ca_lib.new_lab_ca_files("fleetmesh agent test")
    root_pem = files["root-cert.pem"].decode()
    namespace = f"{NAMESPACE}-agent"
    with istiod_harness.Istiod(api, tmp_path / "istiod", cacerts={k: files[k] for k in CACERTS_KEYS}) as pilot:
        _workload(api, namespace)
        token = api.token(namespace, SERVICE_ACCOUNT, audiences=["istio-ca"], expiration_seconds=3600)
        work = tmp_path / "agent"
        proc, ports = istiod_harness.start_pilot_agent(pilot, work, namespace, SERVICE_ACCOUNT, token, root_pem,
                                                       envoy)
        try:
            def synced() -> list | None:
                if proc.poll() is not None:
                    raise AssertionError(f"pilot-agent exited {proc.returncode}:\n"
                                         f"{kubeapi._tail(work / 'pilot-agent.log', 40)}")
                status, body = pilot.debug("/debug/syncz")
                proxies = [p for p in json.loads(body or "[]") if p.get("proxy", "").endswith(f".{namespace}")]
                done = proxies and all(p.get(f"{t}_acked") == p.get(f"{t}_sent") and p.get(f"{t}_sent")
                                       for p in proxies for t in ("cluster", "listener"))
                return proxies if status == 200 and done else None

            proxies = kubeapi._wait("pilot-agent synced with istiod (/debug/syncz)", synced, 60)
            errors = [r.get("lastError") for p in proxies for r in (p.get("resources") or {}).values()
                      if r.get("lastError")]
            assert not errors, errors  # every resource ACKed: nothing NACKed by the upstream Envoy
            chain_file = work / "out" / "cert-chain.pem"
            kubeapi._wait("the agent's certificate in OUTPUT_CERTS", chain_file.is_file, 30)
            chain = chain_file.read_text()
            assert ca_lib.verify_chain(chain, root_pem) == []
            leaf = x509.load_pem_x509_certificate(chain.encode())
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
                f"spiffe://cluster.local/ns/{namespace}/sa/{SERVICE_ACCOUNT}"]
            conn = http.client.HTTPConnection("127.0.0.1", ports["status"], timeout=5)
            conn.request("GET", "/healthz/ready")
            assert conn.getresponse().status == 200  # the agent's readiness: Envoy up and configured
            conn.close()
        finally:
            kubeapi._kill_group(proc.pid, timeout=10.0)
            proc.wait(timeout=5)


def test_istiod_lists_a_workload_entry_and_forgets_it(api: kubeapi.KubeAPI, tmp_path: Path) -> None:
    """A VM registered as a WorkloadEntry (Istio's real CRD) behind a ServiceEntry is an endpoint of istiod's
    registry, and is no longer one once the entry is deleted (what offboarding must achieve)."""
    namespace, address = f"{NAMESPACE}-registry", "10.213.77.10"  # never contacted: a registry entry only
    host = f"web.{namespace}.svc.cluster.local"
    with istiod_harness.Istiod(api, tmp_path / "istiod") as pilot:
        api.apply([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "web", "namespace": namespace},
             "spec": {"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
                      "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
                      "workloadSelector": {"labels": {"app": "web"}}}},
            {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
             "metadata": {"name": "vm-1", "namespace": namespace},
             "spec": {"address": address, "labels": {"app": "web"}, "serviceAccount": SERVICE_ACCOUNT}},
        ])
        kubeapi._wait("the WorkloadEntry in istiod's /debug/endpointz", lambda: address in pilot.debug(
            "/debug/endpointz")[1], 30)
        assert host in pilot.debug("/debug/registryz")[1]
        path = f"/apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/vm-1"
        status, body = api.request("DELETE", path)
        assert status == 200, body
        kubeapi._wait("the WorkloadEntry gone from istiod's /debug/endpointz", lambda: address not in pilot.debug(
            "/debug/endpointz")[1], 30)
