"""Unit tests of plugins/module_utils/_fleetmesh/pki.py (and the workload checks in validation.py).

Chains with intermediates verify to the root (ours and `openssl verify`), keys match certificates,
the URI SAN is exactly the SPIFFE ID, RSA works, and the re-issue decision covers every reason.
Both host key backends (cryptography and the openssl tool) are exercised.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import ca as ca_lib
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import pki, validation
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.duration import parse_duration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
SPIFFE = "spiffe://cluster.local/ns/fleet-lab/sa/web"
NOW = datetime.datetime.now(datetime.UTC)
HOUR = 3600
DAY = 86400


# ---------------------------------------------------------------------------------------------
# helpers: CAs of any shape, keys, CSRs
# ---------------------------------------------------------------------------------------------

def _name(cn: str, org: str = "test") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_cert(cn, key, issuer_name=None, issuer_key=None, days=365, start=None, ca=True, path_length=None):
    issuer_key = issuer_key or key
    start = start or NOW - datetime.timedelta(hours=1)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name or _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certs) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


class Hierarchy:
    """root -> int1 -> int2 (signing); every key EC P-256 unless said otherwise."""

    def __init__(self, depth: int = 2, signing_days: int = 365, signing_start=None):
        self.root_key = ec_key()
        self.root = make_ca_cert("root", self.root_key, days=3650)
        parent, parent_key = self.root, self.root_key
        self.intermediates = []  # from the root down
        self.keys = []
        for level in range(depth):
            key = ec_key()
            last = level == depth - 1
            cert = make_ca_cert(f"int{level + 1}", key, parent.subject, parent_key,
                                days=signing_days if last else 3000, start=signing_start if last else None)
            self.intermediates.append(cert)
            self.keys.append(key)
            parent, parent_key = cert, key
        self.signing = parent
        self.signing_key = parent_key

    def ca(self, **kw) -> ca_lib.CA:
        chain = pem(*reversed(self.intermediates[:-1]), self.root) if self.intermediates else None
        return ca_lib.CA(pem(self.signing), key_pem(self.signing_key), chain, None, "test", **kw)


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(params=["cryptography", "openssl"])
def backend(request):
    if request.param == "openssl":
        openssl = shutil.which("openssl")
        if not openssl:
            pytest.fail("openssl is needed for the openssl backend tests (apt-get install openssl)")
        return pki.OpenSSLKeys(openssl, run)
    return pki.CryptographyKeys()


def new_key_file(backend, tmp_path: Path, key_type: str = "ec", size: int = 2048) -> str:
    path = tmp_path / f"key-{backend.name}-{key_type}-{size}.pem"
    path.touch(mode=0o600)
    backend.generate(str(path), key_type, size)
    return str(path)


def issue(ca: ca_lib.CA, backend, key_path: str, dns=(), ips=(), lifetime=DAY, now=None):
    csr = backend.csr(key_path, SPIFFE, list(dns), list(ips), "cluster.local")
    errors, requested = ca_lib.check_csr(csr, SPIFFE, list(dns), list(ips))
    assert errors == []
    return ca.sign(csr, SPIFFE, requested["dns"], requested["ips"], lifetime, subject_cn="fm-deb-1",
                   organization="cluster.local", now=now)


def openssl_verify(tmp_path: Path, chain: str, root: str) -> tuple[int, str]:
    (tmp_path / "chain.pem").write_text(chain)
    (tmp_path / "root.pem").write_text(root)
    rc, out, err = run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / "root.pem"),
                        "-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "chain.pem")])
    return rc, out + err


# ---------------------------------------------------------------------------------------------
# durations, PEM, the DER reader
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * DAY), ("12h", 12 * HOUR), ("1h30m", 5400), ("90s", 90), ("3600", 3600), (120, 120),
    ("1d2h3m4s", DAY + 2 * HOUR + 184),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "1x", "h", "1m1h", "-5", True, "1.5h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_and_default_renew_before():
    assert pki.format_duration(30 * DAY) == "30d"
    assert pki.format_duration(5400) == "1h30m"
    assert pki.format_duration(0) == "0s"
    assert pki.renew_before_seconds(30 * DAY) == 10 * DAY
    assert pki.renew_before_seconds(30 * DAY, "") == 10 * DAY
    assert pki.renew_before_seconds(30 * DAY, "2d") == 2 * DAY


def test_der_reader_agrees_with_cryptography():
    import ipaddress

    key = ec_key()
    rdn = x509.RelativeDistinguishedName
    subject = x509.Name([
        rdn([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
        rdn([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'A, B + C "quoted" <x>;')]),
        rdn([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x"),
             x509.NameAttribute(NameOID.COMMON_NAME, " lead")]),
        rdn([x509.NameAttribute(NameOID.COMMON_NAME, "#hash and trailing ")]),
        rdn([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.com")]),
    ])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(_name("issuer ü"))
            .public_key(key.public_key()).serial_number(0x0123456789ABCDEF0123)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2051, 1, 1, tzinfo=datetime.UTC))  # GeneralizedTime
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(SPIFFE), x509.DNSName("fm-deb-1"),
                x509.IPAddress(ipaddress.ip_address("10.213.77.11")),
                x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                x509.RFC822Name("ops@example.com")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert = x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))  # as parsed back
    ours = pki.Cert(cert.public_bytes(serialization.Encoding.DER))
    assert ours.subject == cert.subject.rfc4514_string()
    assert ours.issuer == cert.issuer.rfc4514_string()
    assert ours.serial_number == cert.serial_number
    assert ours.not_before == cert.not_valid_before_utc
    assert ours.not_after == cert.not_valid_after_utc
    assert ours.uris == [SPIFFE]
    assert ours.dns_names == ["fm-deb-1"]
    assert ours.ip_addresses == ["10.213.77.11", "2001:db8::1"]
    assert ours.other_sans == ["email:ops@example.com"]
    assert ours.spki == key.public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    info = ours.info()
    assert info["spiffe_id"] == SPIFFE and info["public_key"] == "EC P-256" and info["is_ca"] is False


def test_pem_helpers_and_broken_input():
    assert pki.pem_blocks(None) == []
    assert pki.pem_blocks("no pem here") == []
    with pytest.raises(pki.PKIError, match="holds no PEM certificate"):
        pki.load_certs("garbage", "cert-chain.pem")
    with pytest.raises(pki.PKIError, match="not a valid X.509 certificate"):
        pki.load_certs(pki.der_to_pem(b"\x30\x03\x02\x01\x01"), "cert-chain.pem")
    assert pki.has_private_key_marker(key_pem(ec_key()))


# ---------------------------------------------------------------------------------------------
# chains with intermediates verify to the root; key matches cert; URI SAN exact; RSA
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 1, 2])
def test_chain_with_intermediates_verifies_to_root(tmp_path, backend, depth):
    hierarchy = Hierarchy(depth=depth)
    ca = hierarchy.ca()
    assert len(ca.chain_certs) == depth
    key_path = new_key_file(backend, tmp_path)
    issued = issue(ca, backend, key_path, dns=["fm-deb-1"], ips=["10.213.77.11"])
    chain = pki.load_certs(issued["cert_chain"])
    assert len(chain) == 1 + depth  # leaf + intermediates, never the root
    assert all(not c.self_signed for c in chain[1:])
    assert pki.load_certs(issued["root_cert"])[0].der == hierarchy.root.public_bytes(serialization.Encoding.DER)
    assert ca_lib.verify_chain(issued["cert_chain"], issued["root_cert"]) == []
    rc, out = openssl_verify(tmp_path, issued["cert_chain"], issued["root_cert"])
    assert rc == 0, out
    # the key matches the certificate, and the URI SAN is exactly the SPIFFE ID
    assert chain[0].spki == backend.public_spki(key_path)
    assert chain[0].uris == [SPIFFE]
    assert chain[0].sans == [f"URI:{SPIFFE}", "DNS:fm-deb-1", "IP:10.213.77.11"]
    leaf = x509.load_pem_x509_certificate(issued["cert_chain"].encode())
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}


def test_verify_chain_catches_a_foreign_root(tmp_path, backend):
    issued = issue(Hierarchy(1).ca(), backend, new_key_file(backend, tmp_path))
    other_root = pem(Hierarchy(0).root)
    errors = ca_lib.verify_chain(issued["cert_chain"], other_root)
    assert errors and "is not signed by" in errors[0]
    rc, _out = openssl_verify(tmp_path, issued["cert_chain"], other_root)
    assert rc != 0


@pytest.mark.parametrize("size", [2048, 3072])
def test_rsa_keys(tmp_path, backend, size):
    key_path = new_key_file(backend, tmp_path, "rsa", size)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    info = pki.spki_info(backend.public_spki(key_path))
    assert info["type"] == "rsa" and info["size"] == size
    assert pki.key_matches(info, "rsa", size) and not pki.key_matches(info, "rsa", 4096)
    assert not pki.key_matches(info, "ec", 2048)
    issued = issue(Hierarchy(1).ca(), backend, key_path)
    leaf = pki.load_certs(issued["cert_chain"])[0]
    assert leaf.spki == backend.public_spki(key_path)
    assert leaf.info()["public_key"] == f"RSA {size}"
    usage = x509.load_pem_x509_certificate(issued["cert_chain"].encode()).extensions.get_extension_for_class(
        x509.KeyUsage).value
    assert usage.key_encipherment is True


def test_ec_key_type(tmp_path, backend):
    key_path = new_key_file(backend, tmp_path)
    text = Path(key_path).read_text()
    assert "BEGIN PRIVATE KEY" in text  # PKCS#8
    info = pki.spki_info(backend.public_spki(key_path))
    assert (info["type"], info["curve"], info["size"]) == ("ec", "P-256", 256)
    assert pki.key_matches(info, "ec", 2048) and not pki.key_matches(info, "rsa", 2048)


def test_backend_rejects_unsafe_san_text(tmp_path, backend):
    key_path = new_key_file(backend, tmp_path)
    with pytest.raises(pki.PKIError, match="not allowed in a subjectAltName"):
        backend.csr(key_path, SPIFFE, ["a\nDNS.9 = evil.example"], [], "cluster.local")


def test_backend_rejects_encrypted_or_broken_key(tmp_path, backend):
    bad = tmp_path / "bad.pem"
    bad.write_text(ec_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pw")).decode())
    with pytest.raises(pki.PKIError, match="unencrypted PEM private key"):
        backend.public_spki(str(bad))
    bad.write_text("not a key")
    with pytest.raises(pki.PKIError):
        backend.public_spki(str(bad))


def test_key_backend_selection():
    assert pki.key_backend("auto", lambda: "/usr/bin/openssl", run).name == "cryptography"
    assert pki.key_backend("openssl", lambda: "/usr/bin/openssl", run).name == "openssl"
    with pytest.raises(pki.PKIError, match="neither"):
        pki.key_backend("openssl", lambda: None, run)


# ---------------------------------------------------------------------------------------------
# CA checks
# ---------------------------------------------------------------------------------------------

def test_ca_cert_and_key_mismatch():
    hierarchy = Hierarchy(1)
    with pytest.raises(pki.PKIError, match="do not match"):
        ca_lib.CA(pem(hierarchy.signing), key_pem(ec_key()), pem(hierarchy.root), None, "test")


def test_expired_ca():
    hierarchy = Hierarchy(1, signing_days=10, signing_start=NOW - datetime.timedelta(days=20))
    with pytest.raises(pki.PKIError, match="expired on"):
        hierarchy.ca()


def test_ca_not_yet_valid():
    hierarchy = Hierarchy(1, signing_days=10, signing_start=NOW + datetime.timedelta(days=2))
    with pytest.raises(pki.PKIError, match="not valid before"):
        hierarchy.ca()


def test_ca_that_is_not_a_ca():
    root_key = ec_key()
    root = make_ca_cert("root", root_key, days=3650)
    key = ec_key()
    leafish = make_ca_cert("not a ca", key, root.subject, root_key, ca=False)
    with pytest.raises(pki.PKIError, match="not a CA certificate"):
        ca_lib.CA(pem(leafish), key_pem(key), pem(root), None, "test")


def test_incomplete_chain_is_refused():
    hierarchy = Hierarchy(2)
    with pytest.raises(pki.PKIError, match="does not reach a self-signed root"):
        ca_lib.CA(pem(hierarchy.signing), key_pem(hierarchy.signing_key), pem(hierarchy.root), None, "test")


def test_chain_with_a_forged_link_is_refused():
    hierarchy = Hierarchy(1)
    impostor_key = ec_key()
    impostor_root = make_ca_cert("root", impostor_key, days=3650)  # same name, other key
    with pytest.raises(pki.PKIError, match="does not reach a self-signed root"):
        ca_lib.CA(pem(hierarchy.signing), key_pem(hierarchy.signing_key), pem(impostor_root), None, "test")


def test_explicit_root_must_be_the_chain_root():
    hierarchy = Hierarchy(1)
    with pytest.raises(pki.PKIError, match="not at the given root"):
        ca_lib.CA(pem(hierarchy.signing), key_pem(hierarchy.signing_key), pem(hierarchy.root),
                  pem(Hierarchy(0).root), "test")


def test_leaf_never_outlives_the_ca(tmp_path, backend):
    hierarchy = Hierarchy(1, signing_days=2)
    issued = issue(hierarchy.ca(), backend, new_key_file(backend, tmp_path), lifetime=30 * DAY)
    leaf = pki.load_certs(issued["cert_chain"])[0]
    assert leaf.not_after <= hierarchy.signing.not_valid_after_utc
    assert "before the requested lifetime ends" in issued["warnings"][0]


def test_istio_cacerts_layout(tmp_path, backend):
    hierarchy = Hierarchy(1)
    data = {"ca-cert.pem": pem(hierarchy.signing).encode(), "ca-key.pem": key_pem(hierarchy.signing_key).encode(),
            "root-cert.pem": pem(hierarchy.root).encode(), "cert-chain.pem": pem(hierarchy.signing, hierarchy.root)}
    ca = ca_lib.ca_from_istio_cacerts(data, "Secret istio-system/cacerts")
    issued = issue(ca, backend, new_key_file(backend, tmp_path))
    assert len(pki.load_certs(issued["cert_chain"])) == 2
    assert ca_lib.verify_chain(issued["cert_chain"], issued["root_cert"]) == []
    with pytest.raises(pki.PKIError, match="lacks ca-key.pem"):
        ca_lib.ca_from_istio_cacerts({"ca-cert.pem": data["ca-cert.pem"], "root-cert.pem": data["root-cert.pem"]}, "s")


def test_lab_ca_is_persisted_private_and_reused(tmp_path):
    directory = tmp_path / "lab-ca"
    ca, created = ca_lib.lab_ca(str(directory))
    assert created
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("ca-key.pem", "root-key.pem"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert len(ca.chain_certs) == 1 and ca.root != ca.cert  # an intermediate signs
    again, created_again = ca_lib.lab_ca(str(directory))
    assert not created_again and again.public() == ca.public()
    memory_only, created_memory = ca_lib.lab_ca(str(tmp_path / "check-mode"), persist=False)
    assert created_memory and not (tmp_path / "check-mode").exists()
    assert "PRIVATE KEY" not in json.dumps(ca.public())


# ---------------------------------------------------------------------------------------------
# the CSR policy
# ---------------------------------------------------------------------------------------------

def _csr(key, sans, org="cluster.local"):
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def test_csr_policy_accepts_exact_identity():
    import ipaddress
    csr = _csr(ec_key(), [x509.UniformResourceIdentifier(SPIFFE), x509.DNSName("FM-DEB-1"),
                          x509.IPAddress(ipaddress.ip_address("10.213.77.11"))])
    errors, requested = ca_lib.check_csr(csr, SPIFFE, ["fm-deb-1"], ["10.213.77.11"])
    assert errors == [] and requested["uris"] == [SPIFFE]


@pytest.mark.parametrize(("sans", "message"), [
    ([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/fleet-lab/sa/admin")], "URI SAN"),
    ([x509.UniformResourceIdentifier(SPIFFE), x509.UniformResourceIdentifier(SPIFFE + "2")], "URI SAN"),
    ([x509.UniformResourceIdentifier("spiffe://evil.example/ns/fleet-lab/sa/web")], "URI SAN"),
    ([x509.DNSName("fm-deb-1")], "URI SAN none"),
    ([x509.UniformResourceIdentifier(SPIFFE), x509.DNSName("fm-deb-2")], "DNS SAN fm-deb-2 outside"),
    ([x509.UniformResourceIdentifier(SPIFFE), x509.DNSName("*.example.com")], "outside the allowed pattern"),
    ([x509.UniformResourceIdentifier(SPIFFE), x509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1"))],
     "IP SAN 10.0.0.1 outside"),
    ([x509.UniformResourceIdentifier(SPIFFE), x509.RFC822Name("a@example.com")], "kinds other than"),
])
def test_csr_policy_refuses_san_outside_the_pattern(sans, message):
    errors, _requested = ca_lib.check_csr(_csr(ec_key(), sans), SPIFFE, ["fm-deb-1"], ["10.213.77.11"])
    assert any(message in error for error in errors), errors


def test_csr_policy_refuses_bad_signature_weak_key_and_garbage():
    csr = _csr(ec_key(), [x509.UniformResourceIdentifier(SPIFFE)])
    der = bytearray(pki.pem_blocks(csr)[0])
    der[-3] ^= 0x55  # flip bits in the signature
    errors = ca_lib.check_csr(pki.der_to_pem(bytes(der), "CERTIFICATE REQUEST"), SPIFFE, [], [])[0]
    assert any("signature does not verify" in e or "cannot be read" in e for e in errors), errors
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    errors = ca_lib.check_csr(_csr(weak, [x509.UniformResourceIdentifier(SPIFFE)]), SPIFFE, [], [])[0]
    assert any("1024 bits" in e for e in errors)
    assert ca_lib.check_csr("nonsense", SPIFFE, [], [])[0] == ["no PEM certificate request"]
    no_san = (x509.CertificateSigningRequestBuilder().subject_name(_name("x")).sign(ec_key(), hashes.SHA256())
              .public_bytes(serialization.Encoding.PEM).decode())
    assert "no subjectAltName" in ca_lib.check_csr(no_san, SPIFFE, [], [])[0][0]


# ---------------------------------------------------------------------------------------------
# the renew decision
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def installed(tmp_path, backend):
    """An issued certificate for a key: (ca, key SPKI, chain PEM, root PEM, backend, key path)."""
    ca = Hierarchy(1).ca()
    key_path = new_key_file(backend, tmp_path)
    issued = issue(ca, backend, key_path, ips=["10.213.77.11"], lifetime=30 * DAY)
    return ca, backend.public_spki(key_path), issued["cert_chain"], issued["root_cert"], backend, key_path


def reasons(installed, now=None, lifetime=30 * DAY, renew_before=10 * DAY, spiffe=SPIFFE, dns=(), ips=("10.213.77.11",),
            ca=None, key_spki=None, chain=None, root=None):
    ca_used, spki, chain_pem, root_pem, _b, _k = installed
    ca = ca or ca_used
    return [r.split(":")[0] for r in pki.reissue_reasons(
        chain if chain is not None else chain_pem, root if root is not None else root_pem,
        key_spki or spki, spiffe, list(dns), list(ips), lifetime, renew_before,
        ca.public()["root_cert"], ca.public()["intermediates"], now=now)]


def test_renew_nothing_to_do(installed):
    assert reasons(installed) == []


def test_renew_when_remaining_lifetime_is_below_renew_before(installed):
    assert reasons(installed, now=NOW + datetime.timedelta(days=19)) == []
    assert reasons(installed, now=NOW + datetime.timedelta(days=21)) == ["expiring"]
    assert reasons(installed, now=NOW + datetime.timedelta(days=31)) == ["expiring"]  # expired


def test_renew_default_is_one_third_of_the_lifetime(installed):
    renew = pki.renew_before_seconds(30 * DAY)
    assert reasons(installed, renew_before=renew, now=NOW + datetime.timedelta(days=19, hours=23)) == []
    assert reasons(installed, renew_before=renew, now=NOW + datetime.timedelta(days=20, hours=1)) == ["expiring"]


def test_renew_when_the_lifetime_was_shortened(installed):
    assert reasons(installed, lifetime=HOUR, renew_before=20 * 60) == ["lifetime_changed"]


def test_renew_when_sans_change(installed):
    assert reasons(installed, ips=()) == ["sans_changed"]
    assert reasons(installed, dns=["fm-deb-1"]) == ["sans_changed"]
    assert reasons(installed, spiffe="spiffe://cluster.local/ns/fleet-lab/sa/other") == ["sans_changed"]


def test_renew_when_the_ca_changes(installed):
    assert reasons(installed, ca=Hierarchy(1).ca()) == ["ca_changed"]  # another root
    assert reasons(installed, ca=Hierarchy(2).ca()) == ["ca_changed"]  # another root and depth


def test_renew_when_only_the_intermediate_rotates(tmp_path, backend):
    hierarchy = Hierarchy(1)
    key_path = new_key_file(backend, tmp_path)
    issued = issue(hierarchy.ca(), backend, key_path, lifetime=30 * DAY)
    new_key = ec_key()
    new_int = make_ca_cert("int1-rotated", new_key, hierarchy.root.subject, hierarchy.root_key, days=300)
    rotated = ca_lib.CA(pem(new_int), key_pem(new_key), pem(hierarchy.root), None, "rotated")
    got = pki.reissue_reasons(issued["cert_chain"], issued["root_cert"], backend.public_spki(key_path), SPIFFE, [], [],
                              30 * DAY, 10 * DAY, rotated.public()["root_cert"], rotated.public()["intermediates"])
    assert [r.split(":")[0] for r in got] == ["ca_changed"]


def test_renew_when_the_key_does_not_match(installed, tmp_path):
    _ca, _spki, _chain, _root, backend, _k = installed
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = backend.public_spki(new_key_file(backend, other_dir, "rsa", 2048))
    assert reasons(installed, key_spki=other) == ["key_mismatch"]


def test_renew_when_missing_or_unreadable(installed):
    _ca, spki, chain, root, _b, _k = installed
    assert pki.reissue_reasons(None, root, spki, SPIFFE, [], [], DAY, HOUR)[0].startswith("missing: cert-chain.pem")
    assert pki.reissue_reasons(chain, "", spki, SPIFFE, [], [], DAY, HOUR)[0].startswith("missing: root-cert.pem")
    assert pki.reissue_reasons("junk", root, spki, SPIFFE, [], [], DAY, HOUR)[0].startswith("unreadable")


def test_renew_when_not_yet_valid(installed):
    _ca, spki, chain, root, _b, _k = installed
    got = pki.reissue_reasons(chain, root, spki, SPIFFE, [], ["10.213.77.11"], 30 * DAY, 10 * DAY,
                              now=NOW - datetime.timedelta(days=1))
    assert [r.split(":")[0] for r in got][0] == "not_yet_valid"


# ---------------------------------------------------------------------------------------------
# validation: the workload_certs checks the role runs before touching a host
# ---------------------------------------------------------------------------------------------

MODEL = {"fleetmesh_trust_domain": "cluster.local", "fleetmesh_namespace": "fleet-lab",
         "fleetmesh_service_account": "web", "inventory_hostname": "fm-deb-1", "ansible_host": "10.213.77.11"}


def test_validation_accepts_the_lab_model():
    assert validation.validate_model(dict(MODEL, workload_certs_sans=["fm-deb-1", "IP:10.213.77.11"],
                                          workload_certs_lifetime="1h", workload_certs_renew_before="20m",
                                          workload_certs_source="lab_ca", workload_certs_dir="/etc/certs",
                                          workload_certs_owner="envoy", workload_certs_key_type="rsa",
                                          workload_certs_rsa_key_size=3072), ["workload_certs"]) == []


@pytest.mark.parametrize(("extra", "message"), [
    ({"fleetmesh_trust_domain": "Cluster Local"},
     'fleetmesh_trust_domain: "Cluster Local" is not a valid trust domain'),
    ({"fleetmesh_namespace": "Fleet_Lab"}, "fleetmesh_namespace: \"Fleet_Lab\" is not a valid DNS-1123 label"),
    ({"workload_certs_sans": ["evil.example.com"]}, "is outside the allowed SAN pattern"),
    ({"workload_certs_sans": ["10.0.0.9"]}, "is outside the allowed SAN pattern"),
    ({"workload_certs_sans": [SPIFFE]}, "is a URI SAN"),
    ({"workload_certs_sans": ["bad name!"]}, "is not a valid subjectAltName"),
    ({"workload_certs_lifetime": "forever"}, "is not a valid duration"),
    ({"workload_certs_lifetime": "1h", "workload_certs_renew_before": "2h"}, "is not shorter than"),
    ({"workload_certs_source": "vault"}, "is not a valid choice"),
    ({"workload_certs_source": "files"}, "workload_certs_ca_cert: is not set"),
    ({"workload_certs_key_type": "dsa"}, "is not a valid choice"),
    ({"workload_certs_rsa_key_size": 1024}, "is not an allowed RSA key size"),
    ({"workload_certs_dir": "etc/certs"}, "is not an absolute path"),
    ({"workload_certs_owner": "Root User"}, "is not a valid user or group name"),
])
def test_validation_refuses(extra, message):
    errors = validation.validate_model(dict(MODEL, **extra), ["workload_certs"])
    assert any(message in error for error in errors), errors


def test_allowed_sans_come_from_the_inventory_only():
    assert validation.workload_allowed_sans(dict(MODEL, fleetmesh_address="2001:db8::10")) == (
        ["fm-deb-1"], ["10.213.77.11", "2001:db8::10"])
    assert validation.workload_allowed_sans(dict(MODEL, fleetmesh_service="web"))[0] == [
        "fm-deb-1", "web.fleet-lab", "web.fleet-lab.svc", "web.fleet-lab.svc.cluster.local"]
    assert validation.validate_model(dict(MODEL, fleetmesh_service="web", workload_certs_sans=["web.fleet-lab.svc"]),
                                     ["workload_certs"]) == []
    assert validation.workload_allowed_sans({"inventory_hostname": "web-1.example.com",
                                             "ansible_host": "Web-1.Example.com."}) == (["web-1.example.com"], [])


# ---------------------------------------------------------------------------------------------
# the host module end to end, run as Ansible runs it (args file), as the current user
# ---------------------------------------------------------------------------------------------

def run_module(name: str, tmp_path: Path, args: dict) -> dict:
    import importlib.util

    spec = importlib.util.find_spec("ansible_collections.fleetmesh.envoy")
    root = Path(spec.submodule_search_locations[0]).parents[2]
    args_file = tmp_path / f"args-{name}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(REPO / "plugins" / "modules" / f"{name}.py"), str(args_file)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)), check=False)
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def me():
    import grp
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


@pytest.mark.parametrize("backend_name", ["cryptography", "openssl"])
def test_workload_csr_module_lifecycle(tmp_path, me, backend_name):
    owner, group = me
    certs = tmp_path / "certs"
    base = {"path": str(certs), "owner": owner, "spiffe_id": SPIFFE, "sans": ["10.213.77.11"], "lifetime": "1h",
            "backend": backend_name}
    # check mode: nothing is written, a CSR is still returned
    result = run_module("workload_csr", tmp_path, dict(base, _ansible_check_mode=True, _ansible_diff=True))
    assert result["changed"] and result["needs_issue"] and not certs.exists()
    assert "CERTIFICATE REQUEST" in result["csr"] and "new key" in json.dumps(result["diff"])
    # first run: key created 0600, CSR for the SPIFFE ID
    result = run_module("workload_csr", tmp_path, base)
    key = certs / "key.pem"
    assert result["changed"] and result["key"]["created"] and result["backend"] == backend_name
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == os.getuid()
    assert [r.split(":")[0] for r in result["reasons"]] == ["key_changed", "missing"]
    fingerprint = result["key"]["fingerprint"]
    # sign and install, then the module is content
    ca = Hierarchy(1).ca()
    errors, req = ca_lib.check_csr(result["csr"], SPIFFE, [], ["10.213.77.11"])
    assert errors == []
    issued = ca.sign(result["csr"], SPIFFE, req["dns"], req["ips"], HOUR)
    install = dict(base, state="installed", cert_chain=issued["cert_chain"], root_cert=issued["root_cert"])
    # state=installed: check mode writes nothing, then the files are written 0644, then nothing changes
    result = run_module("workload_csr", tmp_path, dict(install, _ansible_check_mode=True, _ansible_diff=True))
    assert result["changed"] and not (certs / "cert-chain.pem").exists()
    result = run_module("workload_csr", tmp_path, dict(install, _ansible_diff=True))
    assert result["changed"] and result["installed"]["serial"] == issued["serial"]
    assert (certs / "cert-chain.pem").read_text() == issued["cert_chain"]
    assert (certs / "root-cert.pem").read_text() == issued["root_cert"]
    assert {stat.S_IMODE((certs / f).stat().st_mode) for f in ("cert-chain.pem", "root-cert.pem")} == {0o644}
    assert "BEGIN CERTIFICATE" not in json.dumps(result["diff"])  # the diff shows serials and fingerprints
    assert not run_module("workload_csr", tmp_path, install)["changed"]
    # a certificate for another key, or another identity, or a chain to another root: nothing installed
    other = issue(ca, pki.CryptographyKeys(), new_key_file(pki.CryptographyKeys(), tmp_path))
    result = run_module("workload_csr", tmp_path, dict(install, cert_chain=other["cert_chain"]))
    assert result["failed"] and "not for the private key" in result["msg"]
    result = run_module("workload_csr", tmp_path, dict(install, spiffe_id=SPIFFE + "x"))
    assert result["failed"] and "not exactly" in result["msg"]
    result = run_module("workload_csr", tmp_path, dict(install, root_cert=pem(Hierarchy(0).root)))
    assert result["failed"] and "is not issued by" in result["msg"]
    result = run_module("workload_csr", tmp_path, dict(install, root_cert=issued["root_cert"] + key_pem(ec_key())))
    assert result["failed"] and "holds a private key" in result["msg"]
    assert (certs / "cert-chain.pem").read_text() == issued["cert_chain"]
    ca_args = {"root_cert": ca.public()["root_cert"], "intermediates": ca.public()["intermediates"]}
    result = run_module("workload_csr", tmp_path, dict(base, **ca_args, _ansible_diff=True))
    assert not result["changed"] and not result["needs_issue"] and result["reasons"] == []
    assert result["key"]["fingerprint"] == fingerprint and result["installed"]["serial"] == issued["serial"]
    # a wrong mode is corrected (changed), the key is kept
    key.chmod(0o644)
    result = run_module("workload_csr", tmp_path, dict(base, **ca_args))
    assert result["changed"] and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert result["key"]["fingerprint"] == fingerprint
    # another key type: new key, re-issue
    result = run_module("workload_csr", tmp_path, dict(base, **ca_args, key_type="rsa"))
    assert result["changed"] and result["key"]["type"] == "rsa" and result["key"]["fingerprint"] != fingerprint
    assert result["reasons"][0].startswith("key_changed: the key is EC P-256")
    # another CA: re-issue
    other = Hierarchy(1).ca().public()
    result = run_module("workload_csr", tmp_path, dict(base, key_type="rsa", root_cert=other["root_cert"],
                                                       intermediates=other["intermediates"]))
    assert any(r.startswith("ca_changed") for r in result["reasons"])


def test_workload_csr_module_refuses_bad_input(tmp_path, me):
    owner, _group = me
    result = run_module("workload_csr", tmp_path, {"path": str(tmp_path / "c"), "owner": owner,
                                                   "spiffe_id": "spiffe://Bad Domain/ns/x", "sans": [SPIFFE]})
    assert result["failed"] and "is not a valid SPIFFE ID" in result["msg"] and not (tmp_path / "c").exists()
    result = run_module("workload_csr", tmp_path, {"path": str(tmp_path / "c"), "owner": "no-such-user-xyz",
                                                   "spiffe_id": SPIFFE})
    assert result["failed"] and "does not exist on the host" in result["msg"]
    # a directory the service user cannot enter: Envoy could not read its key, so say so
    if os.getuid() == 0:
        closed = tmp_path / "closed"
        closed.mkdir(mode=0o700)
        result = run_module("workload_csr", tmp_path, {"path": str(closed), "owner": "nobody", "spiffe_id": SPIFFE})
        assert result["failed"] and "nobody cannot enter it" in result["msg"] and not (closed / "key.pem").exists()
    # in check mode on a fresh host the service user is not there yet either: warn, do not fail
    result = run_module("workload_csr", tmp_path, {"path": str(tmp_path / "c"), "owner": "no-such-user-xyz",
                                                   "spiffe_id": SPIFFE, "_ansible_check_mode": True})
    assert not result.get("failed") and result["needs_issue"] and "does not exist yet" in json.dumps(result["warnings"])
    assert not (tmp_path / "c").exists()


def test_cert_info_module(tmp_path, backend):
    result = run_module("cert_info", tmp_path, {"path": str(tmp_path / "none.pem")})
    assert result["exists"] is False
    issued = issue(Hierarchy(1).ca(), backend, new_key_file(backend, tmp_path), ips=["10.213.77.11"])
    (tmp_path / "chain.pem").write_text(issued["cert_chain"])
    (tmp_path / "root.pem").write_text(issued["root_cert"])
    result = run_module("cert_info", tmp_path, {"path": str(tmp_path / "chain.pem"),
                                                "root_path": str(tmp_path / "root.pem")})
    assert result["spiffe_id"] == SPIFFE and result["serial"] == issued["serial"]
    assert result["subject"] == "CN=fm-deb-1,O=cluster.local" and result["issuer"] == "CN=int1,O=test"
    assert 0.9 < result["days_left"] <= 1.0 and len(result["chain"]) == 1
    assert result["root"]["subject"] == "CN=root,O=test"


# ---------------------------------------------------------------------------------------------
# host-side code stays Python 3.8 compatible
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "plugins/module_utils/_fleetmesh/pki.py",
    "plugins/module_utils/_fleetmesh/validation.py",
    "plugins/modules/workload_csr.py",
    "plugins/modules/cert_info.py",
])
def test_host_side_code_parses_as_python_38(path):
    source = (REPO / path).read_text()
    tree = ast.parse(source, feature_version=(3, 8))  # rejects match statements, walrus-in-comprehension etc.
    banned = {"removeprefix", "removesuffix"}
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not names & banned  # str methods of Python 3.9+


def _module_utils_closure(path: Path, seen: set) -> set:
    """Names of the collection's module_utils a plugin file imports, directly or through other module_utils
    (dotted below _fleetmesh: "pki", "kube.client")."""
    base = "ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh"
    root = PLUGINS / "module_utils" / "_fleetmesh"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(base):
            package = node.module[len(base):].strip(".")
            names = []
            for alias in node.names:  # a module of the package, or a name defined in the module itself
                name = ".".join(filter(None, [package, alias.name]))
                names.append(name if (root / (name.replace(".", "/") + ".py")).exists() else package)
            for name in set(names) - seen:
                seen.add(name)
                _module_utils_closure(root / (name.replace(".", "/") + ".py"), seen)
    return seen


PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


@pytest.mark.parametrize("module", ["workload_csr", "cert_info"])
def test_host_modules_do_not_ship_the_controller_side(module):
    shipped = _module_utils_closure(PLUGINS / "modules" / f"{module}.py", set())
    assert "pki" in shipped and "ca" not in shipped, shipped
    assert "ca" in _module_utils_closure(PLUGINS / "action" / "workload_sign.py", set())
