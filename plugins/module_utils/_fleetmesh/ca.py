# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Workload certificates on the controller (needs ``cryptography``): ``CA`` (load and check a CA with its
chain to the root), ``lab_ca`` (a root + intermediate the collection generates), ``check_csr`` (the SAN
policy), ``CA.sign`` (issue a leaf certificate) and ``verify_chain``. Host modules never import this file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress
import os
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: Optional[str] = None
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.files import atomic_write
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.pki import (
    BACKDATE_SECONDS,
    CERT_CHAIN_FILE,
    ISTIO_CACERTS_KEYS,
    ROOT_CERT_FILE,
    Cert,
    PKIError,
    fingerprint,
    iso,
    load_certs,
    read_file,
    utcnow,
)


def require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise PKIError('signing needs the Python package cryptography on the controller: %s' % CRYPTOGRAPHY_IMPORT_ERROR)


def _not_after(cert: Any) -> datetime.datetime:
    value = getattr(cert, 'not_valid_after_utc', None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _not_before(cert: Any) -> datetime.datetime:
    value = getattr(cert, 'not_valid_before_utc', None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def _spki_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem(cert: Any) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')


def _subject(cert: Any) -> str:
    return cert.subject.rfc4514_string() or '(empty subject)'


def _load_x509_list(text: Any, what: str) -> List[Any]:
    return load_certs(text, what, x509.load_der_x509_certificate)


def _directly_issued_by(child: Any, parent: Any) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except Exception:  # InvalidSignature, ValueError, TypeError: not issued by this parent
        return False
    return True


def _hash_for(key: Any) -> Any:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


class CA:
    """A signing CA: its certificate and key, the intermediates above it, and the root.

    ``intermediates`` are the certificates between the signing certificate and the root (both
    excluded). A leaf's cert-chain.pem is leaf + signing certificate (unless it is the root) +
    intermediates; root-cert.pem is the root.
    """

    def __init__(self, cert_pem: Any, key_pem: Any, chain_pem: Any = None, root_pem: Any = None,
                 source: str = 'files', now: Optional[datetime.datetime] = None) -> None:
        require_cryptography()
        self.source = source
        self.warnings: List[str] = []
        certs = _load_x509_list(cert_pem, '%s: CA certificate' % source)
        self.cert = certs[0]
        if not key_pem:
            raise PKIError('%s: no CA private key' % source)
        try:
            if isinstance(key_pem, str):
                key_pem = key_pem.encode('ascii')
            self.key = serialization.load_pem_private_key(key_pem, password=None)
        except (TypeError, ValueError) as err:
            raise PKIError('%s: the CA private key is not an unencrypted PEM private key (%s)' % (
                source, type(err).__name__)) from err
        extra = certs[1:]
        if chain_pem:
            extra += _load_x509_list(chain_pem, '%s: CA chain' % source)
        explicit_root = _load_x509_list(root_pem, '%s: root certificate' % source)[0] if root_pem else None
        if explicit_root is not None:
            extra.append(explicit_root)
        self.intermediates, self.root = self._path(extra)
        if explicit_root is not None and explicit_root != self.root:
            raise PKIError('%s: the chain of %s ends at %s, not at the given root certificate %s' % (
                source, _subject(self.cert), _subject(self.root), _subject(explicit_root)))
        self.errors = self.check(now)
        if self.errors:
            raise PKIError('%s: the CA is not usable:\n%s' % (source, '\n'.join(self.errors)))

    def _path(self, extra: List[Any]) -> Tuple[List[Any], Any]:
        """(intermediates above the signing certificate, root); every link's signature verified."""
        current = self.cert
        path: List[Any] = []
        for _step in range(10):
            if _directly_issued_by(current, current):
                return (path[:-1] if path else []), current
            parents = [cert for cert in extra if cert != current and _directly_issued_by(current, cert)]
            if not parents:
                raise PKIError('%s: the chain from %s does not reach a self-signed root: no certificate of the '
                               'issuer %s (or its signature does not verify); add the intermediates and the '
                               'root to the chain' % (self.source, _subject(self.cert), current.issuer.rfc4514_string()))
            current = parents[0]
            path.append(current)
        raise PKIError('%s: the CA chain is longer than 10 certificates' % self.source)

    def check(self, now: Optional[datetime.datetime] = None) -> List[str]:
        """Everything that makes this CA unusable for signing now."""
        now = now or utcnow()
        errors = []
        if _spki_der(self.cert.public_key()) != _spki_der(self.key.public_key()):
            errors.append('the CA certificate %s and the CA private key do not match (public key %s vs %s)' % (
                _subject(self.cert), fingerprint(_spki_der(self.cert.public_key())),
                fingerprint(_spki_der(self.key.public_key()))))
        for role, cert in [('CA certificate', self.cert)] + [('intermediate', c) for c in self.intermediates] + [
                ('root certificate', self.root)]:
            if _not_after(cert) <= now:
                errors.append('the %s %s expired on %s' % (role, _subject(cert), iso(_not_after(cert))))
            elif _not_before(cert) > now:
                errors.append('the %s %s is not valid before %s' % (role, _subject(cert), iso(_not_before(cert))))
            try:
                constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
                is_ca = constraints.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                errors.append('the %s %s is not a CA certificate (basicConstraints CA:TRUE missing)' % (
                    role, _subject(cert)))
            try:
                usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
                if not usage.key_cert_sign:
                    errors.append('the %s %s may not sign certificates (keyUsage keyCertSign missing)' % (
                        role, _subject(cert)))
            except x509.ExtensionNotFound:
                pass
        if not isinstance(self.key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            errors.append('the CA private key type %s is not supported; allowed: EC, RSA, Ed25519' % type(self.key).__name__)
        return errors

    @property
    def root_pem(self) -> str:
        return _pem(self.root)

    @property
    def chain_certs(self) -> List[Any]:
        """What follows a leaf in its cert-chain.pem: the signing certificate (unless it is the root) and the intermediates."""
        return ([] if self.cert == self.root else [self.cert]) + self.intermediates

    def not_after(self) -> datetime.datetime:
        return min(_not_after(cert) for cert in [self.cert, self.root] + self.intermediates)

    def public(self) -> Dict[str, Any]:
        """What hosts and reports may see of the CA: certificates only."""
        return {
            'source': self.source,
            'issuer': _subject(self.cert),
            'root_cert': self.root_pem,
            'root_subject': _subject(self.root),
            'root_fingerprint': fingerprint(self.root.public_bytes(serialization.Encoding.DER)),
            'intermediates': [_pem(cert) for cert in self.chain_certs],
            'not_after': iso(self.not_after()),
        }

    def sign(self, csr_pem: str, spiffe_id: str, dns: Sequence[str], ips: Sequence[str], lifetime: int,
             subject_cn: Optional[str] = None, organization: Optional[str] = None,
             now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
        """Issue a leaf for the CSR's public key with exactly these SANs. The CSR must have passed check_csr."""
        now = now or utcnow()
        csr = x509.load_pem_x509_csr(csr_pem.encode('ascii') if isinstance(csr_pem, str) else csr_pem)
        not_after = now + datetime.timedelta(seconds=lifetime)
        warnings = []
        if not_after > self.not_after():
            warnings.append('the CA expires on %s, before the requested lifetime ends; the certificate ends then too'
                            % iso(self.not_after()))
            not_after = self.not_after()
        attributes = []
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        if subject_cn and len(subject_cn) <= 64:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject_cn))
        names = [x509.UniformResourceIdentifier(spiffe_id)] + [x509.DNSName(name) for name in dns] + [
            x509.IPAddress(ipaddress.ip_address(address)) for address in ips]
        public_key = csr.public_key()
        signer_ski = self._signer_ski()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name(attributes))
                   .issuer_name(self.cert.subject)
                   .public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_SECONDS))
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False,
                       key_encipherment=isinstance(public_key, rsa.RSAPublicKey), data_encipherment=False,
                       key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName(names), critical=not attributes)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier(signer_ski, None, None), critical=False))
        cert = builder.sign(self.key, _hash_for(self.key))
        chain = [cert] + self.chain_certs
        info = Cert(cert.public_bytes(serialization.Encoding.DER)).info(now)
        return {
            'cert_chain': ''.join(_pem(item) for item in chain),
            'root_cert': self.root_pem,
            'serial': info['serial'],
            'not_before': info['not_before'],
            'not_after': info['not_after'],
            'sans': info['sans'],
            'spiffe_id': spiffe_id,
            'warnings': warnings,
        }

    def _signer_ski(self) -> bytes:
        try:
            return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(self.cert.public_key()).digest


def ca_from_istio_cacerts(data: Dict[str, Any], source: str) -> CA:
    """A CA from Istio's plug-in ``cacerts`` layout (values as text or bytes)."""
    missing = [name for name in ('ca-cert.pem', 'ca-key.pem', 'root-cert.pem') if not data.get(name)]
    if missing:
        raise PKIError('%s lacks %s; Istio\'s cacerts layout has ca-cert.pem, ca-key.pem, root-cert.pem and '
                       'cert-chain.pem' % (source, ', '.join(missing)))
    return CA(data['ca-cert.pem'], data['ca-key.pem'], data.get('cert-chain.pem'), data['root-cert.pem'], source)


def _write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    atomic_write(path, data, mode=mode)  # on the controller: no AnsibleModule, so os.replace


def _self_ca_cert(subject: Any, issuer: Any, public_key: Any, signing_key: Any, issuer_public_key: Any, years: int,
                  path_length: int, now: datetime.datetime) -> Any:
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE_SECONDS))
            .not_valid_after(now + datetime.timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
            .sign(signing_key, hashes.SHA256()))


def new_lab_ca_files(organization: str = 'fleetmesh lab', now: Optional[datetime.datetime] = None) -> Dict[str, bytes]:
    """A root (10 years) and an intermediate (5 years), both EC P-256, in Istio's cacerts layout + root-key.pem."""
    require_cryptography()
    now = now or utcnow()
    root_key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                           x509.NameAttribute(NameOID.COMMON_NAME, '%s root CA' % organization)])
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                         x509.NameAttribute(NameOID.COMMON_NAME, '%s intermediate CA' % organization)])
    root = _self_ca_cert(root_name, root_name, root_key.public_key(), root_key, root_key.public_key(), 10, 1, now)
    ca = _self_ca_cert(ca_name, root_name, ca_key.public_key(), root_key, root_key.public_key(), 5, 0, now)

    def key_pem(key: Any) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    root_pem = root.public_bytes(serialization.Encoding.PEM)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    return {'ca-cert.pem': ca_pem, 'ca-key.pem': key_pem(ca_key), 'root-cert.pem': root_pem,
            'cert-chain.pem': ca_pem + root_pem, 'root-key.pem': key_pem(root_key)}


def lab_ca(directory: str, persist: bool = True, now: Optional[datetime.datetime] = None) -> Tuple[CA, bool]:
    """(the lab CA kept in ``directory``, whether it was created now). Created when ca-cert.pem is absent.

    The directory (0700) holds Istio's cacerts layout plus root-key.pem; keys are 0600. With
    persist=False a missing CA is created in memory only (check mode).
    """
    require_cryptography()
    directory = os.path.abspath(os.path.expanduser(directory))
    marker = os.path.join(directory, 'ca-cert.pem')
    created = False
    if os.path.exists(marker):
        data: Dict[str, Any] = {}
        for name in ISTIO_CACERTS_KEYS:
            data[name] = read_file(os.path.join(directory, name))
    else:
        data = new_lab_ca_files(now=now)
        created = True
        if persist:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
            os.chmod(directory, 0o700)
            for name in ('root-key.pem', 'ca-key.pem', 'root-cert.pem', 'cert-chain.pem', 'ca-cert.pem'):
                _write_private(os.path.join(directory, name), data[name],
                               0o600 if name.endswith('key.pem') else 0o644)
    return ca_from_istio_cacerts(data, 'lab CA %s' % directory), created


def check_csr(csr_pem: Any, spiffe_id: str, allowed_dns: Sequence[str],
              allowed_ips: Sequence[str]) -> Tuple[List[str], Dict[str, Any]]:
    """(errors, requested SANs) of a CSR against the policy: a valid self-signature (proof of key
    possession), a supported key, exactly one URI SAN equal to ``spiffe_id``, DNS and IP SANs only
    from the allowed ones, no other SAN kinds."""
    require_cryptography()
    errors: List[str] = []
    requested: Dict[str, Any] = {'uris': [], 'dns': [], 'ips': []}
    if not isinstance(csr_pem, (str, bytes)) or 'CERTIFICATE REQUEST' not in (
            csr_pem if isinstance(csr_pem, str) else csr_pem.decode('ascii', 'replace')):
        return ['no PEM certificate request'], requested
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode('ascii') if isinstance(csr_pem, str) else csr_pem)
    except ValueError as err:
        return ['the CSR cannot be read: %s' % err], requested
    if not csr.is_signature_valid:
        errors.append('the CSR signature does not verify (no proof that the host holds the key)')
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ('secp256r1', 'secp384r1'):
            errors.append('the CSR key curve %s is not allowed; allowed: P-256, P-384' % key.curve.name)
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            errors.append('the CSR RSA key has %d bits; allowed: 2048 or more' % key.key_size)
    else:
        errors.append('the CSR key type %s is not allowed; allowed: EC P-256/P-384, RSA' % type(key).__name__)
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        errors.append('the CSR has no subjectAltName; allowed: exactly URI:%s' % spiffe_id)
        return errors, requested
    requested['uris'] = sans.get_values_for_type(x509.UniformResourceIdentifier)
    requested['dns'] = sans.get_values_for_type(x509.DNSName)
    requested['ips'] = [str(address) for address in sans.get_values_for_type(x509.IPAddress)]
    known = len(requested['uris']) + len(requested['dns']) + len(requested['ips'])
    if known != len(list(sans)):
        errors.append('the CSR asks for subjectAltName kinds other than URI, DNS and IP')
    if requested['uris'] != [spiffe_id]:
        errors.append('the CSR asks for URI SAN %s; allowed: exactly %s (computed from the inventory)' % (
            ', '.join(requested['uris']) or 'none', spiffe_id))
    allowed_dns_lower = [name.lower().rstrip('.') for name in allowed_dns]
    bad_dns = [name for name in requested['dns'] if name.lower().rstrip('.') not in allowed_dns_lower]
    if bad_dns:
        errors.append('the CSR asks for DNS SAN %s outside the allowed pattern; allowed: %s' % (
            ', '.join(bad_dns), ', '.join(allowed_dns) or 'none (no DNS name in the host\'s inventory)'))
    allowed_ip_set = set(str(ipaddress.ip_address(address)) for address in allowed_ips)
    bad_ips = [address for address in requested['ips'] if address not in allowed_ip_set]
    if bad_ips:
        errors.append('the CSR asks for IP SAN %s outside the allowed pattern; allowed: %s' % (
            ', '.join(bad_ips), ', '.join(sorted(allowed_ip_set)) or 'none (no address in the host\'s inventory)'))
    return errors, requested


def verify_chain(chain_pem: Any, root_pem: Any, now: Optional[datetime.datetime] = None) -> List[str]:
    """Errors of a cert-chain.pem against a root-cert.pem: each certificate signed by the next, the last by the
    root, all valid now, every issuer a CA."""
    require_cryptography()
    now = now or utcnow()
    chain = _load_x509_list(chain_pem, CERT_CHAIN_FILE)
    root = _load_x509_list(root_pem, ROOT_CERT_FILE)[0]
    errors = []
    if not _directly_issued_by(root, root):
        errors.append('the root %s is not self-signed' % _subject(root))
    for child, parent in zip(chain, chain[1:] + [root]):  # noqa: B905 - Python 3.8 has no strict=
        if not _directly_issued_by(child, parent):
            errors.append('%s is not signed by %s' % (_subject(child), _subject(parent)))
    for cert in chain + [root]:
        if not _not_before(cert) <= now <= _not_after(cert):
            errors.append('%s is not valid now (%s to %s)' % (_subject(cert), iso(_not_before(cert)),
                                                              iso(_not_after(cert))))
    for cert in chain[1:] + [root]:
        try:
            if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                errors.append('%s is not a CA' % _subject(cert))
        except x509.ExtensionNotFound:
            errors.append('%s is not a CA' % _subject(cert))
    return errors


def private_key_spki(key_pem: Any) -> bytes:
    """SPKI DER of the public half of a PEM private key (the legacy path's check that key and cert match)."""
    require_cryptography()
    try:
        key = serialization.load_pem_private_key(key_pem.encode('ascii') if isinstance(key_pem, str) else key_pem,
                                                 password=None)
    except (TypeError, ValueError) as err:
        raise PKIError('not an unencrypted PEM private key (%s)' % type(err).__name__) from err
    return _spki_der(key.public_key())
