# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Workload certificates on the host: reading certificates, keys and CSRs (signing is in ca.py).

Host side (shipped with modules, Python 3.8+, no third-party package required):

* ``Cert``: a small DER reader for X.509 certificates (subject, issuer, serial, validity,
  SANs, public key, CA flag, key identifiers), so reading installed certificates needs nothing
  beyond the standard library;
* key backends: ``cryptography`` when the host has it, else the ``openssl`` command line tool;
  either generates the private key into a 0600 file on the host, reads its *public* key and
  builds the CSR. Private key bytes are never returned by any function here;
* ``reissue_reasons``: whether the installed certificate must be re-issued.

The controller side (the CA, the lab CA, the CSR policy, signing) is in ``ca.py``, which host
modules do not ship.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
import re
import shutil
import tempfile
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    import cryptography as _cryptography
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: Optional[str] = None
    CRYPTOGRAPHY_VERSION = _cryptography.__version__
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
    CRYPTOGRAPHY_VERSION = None

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.duration import parse_duration


KEY_FILE = 'key.pem'
CERT_CHAIN_FILE = 'cert-chain.pem'
ROOT_CERT_FILE = 'root-cert.pem'
ISTIO_CACERTS_KEYS = ('ca-cert.pem', 'ca-key.pem', 'root-cert.pem', 'cert-chain.pem')
KEY_TYPES = ('ec', 'rsa')
RSA_KEY_SIZES = (2048, 3072, 4096)
EC_CURVE = 'P-256'
# Certificates are valid from a little before they are issued, for hosts whose clocks lag.
BACKDATE_SECONDS = 300
# A certificate that outlives the configured lifetime by more than this is re-issued.
LIFETIME_SLACK_SECONDS = 60


class PKIError(Exception):
    """A problem with a key, certificate, CSR or CA, with a message meant for the operator."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


# --------------------------------------------------------------------------------------------
# Durations: 30d, 12h, 1h30m, 90s or a number of seconds
# --------------------------------------------------------------------------------------------

def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    sign = '-' if seconds < 0 else ''
    seconds = abs(seconds)
    parts = []
    for unit, size in (('d', 86400), ('h', 3600), ('m', 60), ('s', 1)):
        if seconds >= size or (unit == 's' and not parts):
            parts.append('%d%s' % (seconds // size, unit))
            seconds %= size
    return sign + ''.join(parts)


def renew_before_seconds(lifetime: int, renew_before: Any = None) -> int:
    """renew_before in seconds; default one third of the lifetime."""
    if renew_before in (None, ''):
        return max(1, lifetime // 3)
    return parse_duration(renew_before)


# --------------------------------------------------------------------------------------------
# PEM
# --------------------------------------------------------------------------------------------

_PEM_RE = re.compile(r'-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]*?)-----END \1-----')


def pem_blocks(text: Any, label: Optional[str] = None) -> List[bytes]:
    """DER of every PEM block in ``text`` (with ``label``, e.g. CERTIFICATE, when given)."""
    if text is None:
        return []
    if isinstance(text, bytes):
        text = text.decode('ascii', 'replace')
    blocks = []
    for match in _PEM_RE.finditer(text):
        if label is not None and match.group(1) != label:
            continue
        try:
            blocks.append(base64.b64decode(''.join(match.group(2).split()), validate=True))
        except (binascii.Error, ValueError):
            raise PKIError('a PEM %s block is not valid base64' % match.group(1)) from None
    return blocks


def der_to_pem(der: bytes, label: str = 'CERTIFICATE') -> str:
    body = base64.b64encode(der).decode('ascii')
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return '-----BEGIN %s-----\n%s\n-----END %s-----\n' % (label, '\n'.join(lines), label)


def has_private_key_marker(text: Any) -> bool:
    return 'PRIVATE KEY-----' in (text or '')


def fingerprint(der: bytes) -> str:
    """SHA-256 of DER bytes, as ``sha256:<hex>``."""
    return 'sha256:' + hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------------------------
# A small DER reader: enough X.509 to read certificates on hosts without third-party packages
# --------------------------------------------------------------------------------------------

def _tlv(data: bytes, pos: int, end: Optional[int] = None) -> Tuple[int, int, int]:
    """(tag, content start, content end) of the element at ``pos``."""
    end = len(data) if end is None else end
    if pos + 2 > end:
        raise PKIError('truncated DER element')
    tag = data[pos]
    if tag & 0x1f == 0x1f:
        raise PKIError('unsupported DER tag')
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7f
        if count == 0 or count > 4 or pos + count > end:
            raise PKIError('unsupported DER length')
        length = int.from_bytes(data[pos:pos + count], 'big')
        pos += count
    if pos + length > end:
        raise PKIError('truncated DER element')
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> List[Tuple[int, int, int, int]]:
    """(tag, content start, content end, element start) of each element in data[start:end]."""
    items = []
    pos = start
    while pos < end:
        tag, cstart, cend = _tlv(data, pos, end)
        items.append((tag, cstart, cend, pos))
        pos = cend
    return items


def _oid(content: bytes) -> str:
    arcs = []
    value = 0
    for byte in bytearray(content):
        value = (value << 7) | (byte & 0x7f)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise PKIError('empty OID')
    first = min(arcs[0] // 40, 2)
    return '.'.join(str(arc) for arc in [first, arcs[0] - 40 * first] + arcs[1:])


def _time(tag: int, content: bytes) -> datetime.datetime:
    text = content.decode('ascii')
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(text[0:2])
        text = ('19' if year >= 50 else '20') + text
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise PKIError('unsupported time type')
    if not text.endswith('Z') or len(text) != 15:
        raise PKIError('unsupported time format %r' % text)
    return datetime.datetime.strptime(text, '%Y%m%d%H%M%SZ').replace(tzinfo=datetime.timezone.utc)


_NAME_ATTRIBUTES = {
    '2.5.4.3': 'CN', '2.5.4.7': 'L', '2.5.4.8': 'ST', '2.5.4.10': 'O', '2.5.4.11': 'OU', '2.5.4.6': 'C',
    '2.5.4.9': 'STREET', '0.9.2342.19200300.100.1.25': 'DC', '0.9.2342.19200300.100.1.1': 'UID',
}
_STRING_CODECS = {0x0c: 'utf-8', 0x13: 'ascii', 0x16: 'ascii', 0x14: 'latin-1', 0x1e: 'utf-16-be',
                  0x1c: 'utf-32-be', 0x12: 'ascii', 0x1a: 'ascii'}


def _escape_dn_value(value: str) -> str:
    """RFC 4514 escaping, as cryptography's Name.rfc4514_string() does it."""
    if not value:
        return ''
    for char, escaped in (('\\', '\\\\'), ('"', '\\"'), ('+', '\\+'), (',', '\\,'), (';', '\\;'),
                          ('<', '\\<'), ('>', '\\>'), ('\0', '\\00')):
        value = value.replace(char, escaped)
    if value[0] in ('#', ' '):
        value = '\\' + value
    if value[-1] == ' ':
        value = value[:-1] + '\\ '
    return value


def _name(data: bytes, start: int, end: int) -> str:
    """RFC 4514 string of a Name (last RDN first, as cryptography and OpenSSL's RFC 2253 mode)."""
    rdns = []
    for _tag, rstart, rend, _pos in _children(data, start, end):
        parts = []
        for _atag, astart, aend, _apos in _children(data, rstart, rend):
            (otag, ostart, oend, _p), (vtag, vstart, vend, _q) = _children(data, astart, aend)[:2]
            oid = _oid(data[ostart:oend])
            codec = _STRING_CODECS.get(vtag)
            if codec is None:
                value = '#' + binascii.hexlify(data[_q:vend]).decode('ascii')
            else:
                value = _escape_dn_value(data[vstart:vend].decode(codec, 'replace'))
            parts.append('%s=%s' % (_NAME_ATTRIBUTES.get(oid, oid), value))
        rdns.append('+'.join(parts))
    return ','.join(reversed(rdns))


_OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1'
_OID_RSA = '1.2.840.113549.1.1.1'
_EC_CURVES = {'1.2.840.10045.3.1.7': ('P-256', 256), '1.3.132.0.34': ('P-384', 384), '1.3.132.0.35': ('P-521', 521)}
_OTHER_KEY_TYPES = {'1.3.101.112': ('ed25519', 256), '1.3.101.113': ('ed448', 456)}


def spki_info(spki: bytes) -> Dict[str, Any]:
    """{type: ec|rsa|ed25519|..., size: bits, curve: P-256 (EC only), fingerprint} of a SubjectPublicKeyInfo."""
    _tag, start, end = _tlv(spki, 0)
    (_a, astart, aend, _p), (_b, bstart, bend, _q) = _children(spki, start, end)[:2]
    alg = _children(spki, astart, aend)
    oid = _oid(spki[alg[0][1]:alg[0][2]])
    info: Dict[str, Any] = {'fingerprint': fingerprint(spki)}
    if oid == _OID_EC_PUBLIC_KEY:
        curve_oid = _oid(spki[alg[1][1]:alg[1][2]]) if len(alg) > 1 and alg[1][0] == 0x06 else ''
        curve, size = _EC_CURVES.get(curve_oid, (curve_oid or 'unknown', 0))
        info.update(type='ec', curve=curve, size=size)
    elif oid == _OID_RSA:
        bits = spki[bstart + 1:bend]  # skip the unused-bits byte
        _t, rstart, rend = _tlv(bits, 0)
        _n, nstart, nend, _r = _children(bits, rstart, rend)[0]
        info.update(type='rsa', size=int.from_bytes(bits[nstart:nend], 'big').bit_length())
    elif oid in _OTHER_KEY_TYPES:
        info.update(type=_OTHER_KEY_TYPES[oid][0], size=_OTHER_KEY_TYPES[oid][1])
    else:
        info.update(type=oid, size=0)
    return info


def describe_key(info: Dict[str, Any]) -> str:
    if info.get('type') == 'ec':
        return 'EC %s' % info.get('curve')
    return '%s %s' % (str(info.get('type')).upper(), info.get('size'))


class Cert:
    """The fields of one X.509 certificate that workload identity needs, read from DER."""

    def __init__(self, der: bytes) -> None:
        self.der = der
        try:
            self._parse(der)
        except (PKIError, IndexError, ValueError, UnicodeDecodeError) as err:
            raise PKIError('not a valid X.509 certificate: %s' % err) from err

    def _parse(self, der: bytes) -> None:
        _tag, start, end = _tlv(der, 0)
        tbs_tag, tstart, tend, _p = _children(der, start, end)[0]
        fields = _children(der, tstart, tend)
        if fields and fields[0][0] == 0xa0:  # [0] EXPLICIT version
            fields = fields[1:]
        serial, _sigalg, issuer, validity, subject, spki = fields[:6]
        self.serial_number = int.from_bytes(der[serial[1]:serial[2]], 'big', signed=True)
        self.issuer_der = der[issuer[3]:issuer[2]]
        self.subject_der = der[subject[3]:subject[2]]
        self.issuer = _name(der, issuer[1], issuer[2])
        self.subject = _name(der, subject[1], subject[2])
        not_before, not_after = _children(der, validity[1], validity[2])[:2]
        self.not_before = _time(not_before[0], der[not_before[1]:not_before[2]])
        self.not_after = _time(not_after[0], der[not_after[1]:not_after[2]])
        self.spki = der[spki[3]:spki[2]]
        self.uris: List[str] = []
        self.dns_names: List[str] = []
        self.ip_addresses: List[str] = []
        self.other_sans: List[str] = []
        self.is_ca = False
        self.ski: Optional[bytes] = None
        self.aki: Optional[bytes] = None
        for field in fields[6:]:
            if field[0] != 0xa3:  # [3] EXPLICIT extensions
                continue
            _s, estart, eend = _tlv(der, field[1], field[2])
            for _e, xstart, xend, _xp in _children(der, estart, eend):
                parts = _children(der, xstart, xend)
                oid = _oid(der[parts[0][1]:parts[0][2]])
                value = der[parts[-1][1]:parts[-1][2]]
                self._extension(oid, value)

    def _extension(self, oid: str, value: bytes) -> None:
        if oid == '2.5.29.17':  # subjectAltName
            _t, start, end = _tlv(value, 0)
            for tag, cstart, cend, _p in _children(value, start, end):
                content = value[cstart:cend]
                if tag == 0x82:
                    self.dns_names.append(content.decode('ascii'))
                elif tag == 0x86:
                    self.uris.append(content.decode('ascii'))
                elif tag == 0x87:
                    self.ip_addresses.append(str(ipaddress.ip_address(bytes(content))))
                elif tag == 0x81:
                    self.other_sans.append('email:' + content.decode('ascii'))
                else:
                    self.other_sans.append('tag%d' % (tag & 0x1f))
        elif oid == '2.5.29.19':  # basicConstraints
            _t, start, end = _tlv(value, 0)
            items = _children(value, start, end)
            self.is_ca = bool(items and items[0][0] == 0x01 and value[items[0][1]] != 0)
        elif oid == '2.5.29.14':  # subjectKeyIdentifier
            _t, start, end = _tlv(value, 0)
            self.ski = value[start:end]
        elif oid == '2.5.29.35':  # authorityKeyIdentifier
            _t, start, end = _tlv(value, 0)
            for tag, cstart, cend, _p in _children(value, start, end):
                if tag == 0x80:
                    self.aki = value[cstart:cend]

    @property
    def sans(self) -> List[str]:
        return (['URI:' + uri for uri in self.uris] + ['DNS:' + name for name in self.dns_names]
                + ['IP:' + address for address in self.ip_addresses] + self.other_sans)

    @property
    def serial(self) -> str:
        return format(self.serial_number, 'x')

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.der)

    @property
    def self_signed(self) -> bool:
        return self.subject_der == self.issuer_der and (self.aki is None or self.ski is None or self.aki == self.ski)

    def issued_by(self, issuer: 'Cert') -> bool:
        """Name (and key identifier, when both carry one) chaining; signatures are checked on the controller."""
        if self.issuer_der != issuer.subject_der:
            return False
        return self.aki is None or issuer.ski is None or self.aki == issuer.ski

    def key_info(self) -> Dict[str, Any]:
        return spki_info(self.spki)

    def info(self, now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
        """The public facts of the certificate, as module results and reports show them."""
        now = now or utcnow()
        seconds_left = int((self.not_after - now).total_seconds())
        spiffe = [uri for uri in self.uris if uri.startswith('spiffe://')]
        return {
            'subject': self.subject,
            'issuer': self.issuer,
            'serial': self.serial,
            'sans': self.sans,
            'spiffe_id': spiffe[0] if len(spiffe) == 1 else None,
            'not_before': iso(self.not_before),
            'not_after': iso(self.not_after),
            'seconds_left': seconds_left,
            'days_left': round(seconds_left / 86400.0, 2),
            'fingerprint': self.fingerprint,
            'public_key': describe_key(self.key_info()),
            'public_key_fingerprint': fingerprint(self.spki),
            'is_ca': self.is_ca,
        }


def load_certs(text: Any, what: str = 'certificate file', parse: Any = None) -> List[Any]:
    """Every certificate in PEM ``text``, each parsed by ``parse`` (default: Cert, this module's reader; the
    controller passes cryptography's loader); PKIError when there is none or one is broken."""
    ders = pem_blocks(text, 'CERTIFICATE')
    if not ders:
        raise PKIError('%s holds no PEM certificate' % what)
    certs = []
    for index, der in enumerate(ders):
        try:
            certs.append((parse or Cert)(der))
        except (PKIError, ValueError) as err:
            raise PKIError('%s, certificate %d is not valid: %s' % (what, index + 1, err)) from err
    return certs


def read_file(path: str) -> Optional[str]:
    """Text of ``path``, or None when it does not exist."""
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')
    except (IOError, OSError) as err:
        if getattr(err, 'errno', None) == 2:
            return None
        raise


# --------------------------------------------------------------------------------------------
# SANs
# --------------------------------------------------------------------------------------------

def split_sans(sans: Sequence[str]) -> Tuple[List[str], List[str], List[str]]:
    """(URIs, DNS names, IP addresses) of SAN strings ('URI:..', 'DNS:..', 'IP:..' or bare), normalized."""
    uris: List[str] = []
    dns: List[str] = []
    ips: List[str] = []
    for san in sans:
        san = str(san).strip()
        kind, sep, rest = san.partition(':')
        if sep and kind in ('URI', 'DNS', 'IP'):
            value = rest
        elif san.startswith('spiffe://'):
            kind, value = 'URI', san
        else:
            try:
                ipaddress.ip_address(san)
                kind, value = 'IP', san
            except ValueError:
                kind, value = 'DNS', san
        if kind == 'URI':
            uris.append(value)
        elif kind == 'IP':
            ips.append(str(ipaddress.ip_address(value)))
        else:
            dns.append(value.lower().rstrip('.'))
    return _unique(uris), _unique(dns), _unique(ips)


def _unique(items: Sequence[str]) -> List[str]:
    seen: List[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def san_strings(uris: Sequence[str], dns: Sequence[str], ips: Sequence[str]) -> List[str]:
    return ['URI:' + u for u in uris] + ['DNS:' + d for d in dns] + ['IP:' + i for i in ips]


_SAFE_SAN_RE = re.compile(r'^[A-Za-z0-9.:/_*%-]+$')


# --------------------------------------------------------------------------------------------
# Host side: should the installed certificate be re-issued?
# --------------------------------------------------------------------------------------------

def reissue_reasons(chain_pem: Optional[str], root_pem: Optional[str], key_spki: Optional[bytes], spiffe_id: str,
                    dns: Sequence[str], ips: Sequence[str], lifetime: int, renew_before: int,
                    expected_root_pem: Optional[str] = None, expected_intermediates: Optional[Sequence[str]] = None,
                    now: Optional[datetime.datetime] = None) -> List[str]:
    """Why the installed cert-chain.pem / root-cert.pem must be re-issued; empty when they are fine.

    Each reason starts with a code: missing, unreadable, key_mismatch, sans_changed, ca_changed,
    not_yet_valid, expiring, lifetime_changed.
    """
    now = now or utcnow()
    if not chain_pem or not root_pem:
        missing = [name for name, text in ((CERT_CHAIN_FILE, chain_pem), (ROOT_CERT_FILE, root_pem)) if not text]
        return ['missing: %s not installed' % ' and '.join(missing)]
    try:
        chain = load_certs(chain_pem, CERT_CHAIN_FILE)
        roots = load_certs(root_pem, ROOT_CERT_FILE)
    except PKIError as err:
        return ['unreadable: %s' % err]
    leaf = chain[0]
    reasons = []
    if key_spki is not None and leaf.spki != key_spki:
        reasons.append('key_mismatch: the certificate is not for the private key %s' % KEY_FILE)
    want = (sorted([spiffe_id]), sorted(dns), sorted(ips))
    have = (sorted(leaf.uris), sorted(name.lower() for name in leaf.dns_names), sorted(leaf.ip_addresses))
    if want != have or leaf.other_sans:
        reasons.append('sans_changed: installed %s, wanted %s' % (
            ', '.join(leaf.sans) or 'none', ', '.join(san_strings([spiffe_id], dns, ips))))
    reasons.extend(_ca_reasons(chain, roots, expected_root_pem, expected_intermediates))
    left = (leaf.not_after - now).total_seconds()
    if leaf.not_before > now + datetime.timedelta(seconds=BACKDATE_SECONDS):
        reasons.append('not_yet_valid: valid only from %s' % iso(leaf.not_before))
    if left < renew_before:
        reasons.append('expiring: %s left (not after %s), renew_before is %s' % (
            format_duration(max(left, 0)) if left > 0 else 'expired, none', iso(leaf.not_after),
            format_duration(renew_before)))
    elif left > lifetime + LIFETIME_SLACK_SECONDS:
        reasons.append('lifetime_changed: %s left, longer than the lifetime %s' % (
            format_duration(left), format_duration(lifetime)))
    return reasons


def _ca_reasons(chain: List[Cert], roots: List[Cert], expected_root_pem: Optional[str],
                expected_intermediates: Optional[Sequence[str]]) -> List[str]:
    root = roots[0]
    if expected_root_pem:
        expected_root = load_certs(expected_root_pem, 'root_cert')[0]
        if expected_root.der != root.der:
            return ['ca_changed: installed root %s (%s), CA root %s (%s)' % (
                root.subject, root.fingerprint, expected_root.subject, expected_root.fingerprint)]
    if expected_intermediates is not None:
        expected = []
        for index, pem in enumerate(expected_intermediates):
            expected.extend(cert.der for cert in load_certs(pem, 'intermediates[%d]' % index))
        if [cert.der for cert in chain[1:]] != expected:
            return ['ca_changed: the installed chain has other intermediates than the CA (%d installed, %d now)' % (
                len(chain) - 1, len(expected))]
    for child, parent in zip(chain, chain[1:] + [root]):  # noqa: B905 - Python 3.8 has no strict=
        if not child.issued_by(parent):
            return ['ca_changed: %s is not issued by %s' % (child.subject or child.serial, parent.subject)]
    return []


# --------------------------------------------------------------------------------------------
# Host side: key backends (cryptography, else the openssl tool)
# --------------------------------------------------------------------------------------------

Runner = Callable[[List[str]], Tuple[int, str, str]]


def _cryptography_usable() -> bool:
    if not HAS_CRYPTOGRAPHY:
        return False
    try:
        major, minor = (int(part) for part in CRYPTOGRAPHY_VERSION.split('.')[:2])
    except (ValueError, AttributeError):
        return False
    return (major, minor) >= (3, 1)  # no backend argument needed from 3.1 on


def _check_san_text(values: Sequence[str]) -> None:
    for value in values:
        if not _SAFE_SAN_RE.match(value):
            raise PKIError('%r is not allowed in a subjectAltName' % value)


class CryptographyKeys:
    """Keys and CSRs with the cryptography package."""

    name = 'cryptography'

    @staticmethod
    def _load(path: str) -> Any:
        with open(path, 'rb') as handle:
            data = handle.read()
        try:
            return serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError) as err:
            raise PKIError('%s is not an unencrypted PEM private key (%s)' % (path, type(err).__name__)) from err

    def public_spki(self, path: str) -> bytes:
        return self._load(path).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def generate(self, path: str, key_type: str, key_size: int) -> None:
        """Write a new PKCS#8 PEM key into ``path``, an existing file created 0600 by the caller."""
        if key_type == 'rsa':
            key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        with open(path, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def csr(self, path: str, spiffe_id: str, dns: Sequence[str], ips: Sequence[str], organization: str) -> str:
        _check_san_text([spiffe_id] + list(dns) + list(ips) + [organization])
        key = self._load(path)
        names = [x509.UniformResourceIdentifier(spiffe_id)] + [x509.DNSName(name) for name in dns] + [
            x509.IPAddress(ipaddress.ip_address(address)) for address in ips]
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
        ).add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode('ascii')


class OpenSSLKeys:
    """Keys and CSRs with the openssl command line tool (OpenSSL 1.1.1 or later)."""

    name = 'openssl'

    def __init__(self, openssl: str, run: Runner) -> None:
        self.openssl = openssl
        self.run = run

    def _call(self, args: List[str], what: str) -> str:
        rc, out, err = self.run([self.openssl] + args)
        if rc != 0:
            # openssl's messages name files and reasons, never key material
            raise PKIError('%s failed (openssl rc=%d): %s' % (what, rc, (err or out).strip()[-800:]))
        return out

    def public_spki(self, path: str) -> bytes:
        try:
            out = self._call(['pkey', '-in', path, '-pubout', '-passin', 'pass:'], 'reading the public key')
        except PKIError as err:
            raise PKIError('%s is not an unencrypted PEM private key: %s' % (path, err)) from err
        blocks = pem_blocks(out, 'PUBLIC KEY')
        if not blocks:
            raise PKIError('%s: openssl printed no public key' % path)
        return blocks[0]

    def generate(self, path: str, key_type: str, key_size: int) -> None:
        if key_type == 'rsa':
            args = ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:%d' % key_size]
        else:
            args = ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-pkeyopt', 'ec_param_enc:named_curve']
        self._call(['genpkey'] + args + ['-out', path], 'generating the key')

    def csr(self, path: str, spiffe_id: str, dns: Sequence[str], ips: Sequence[str], organization: str) -> str:
        _check_san_text([spiffe_id] + list(dns) + list(ips) + [organization])
        alt = ['URI.1 = %s' % spiffe_id]
        alt += ['DNS.%d = %s' % (index + 1, name) for index, name in enumerate(dns)]
        alt += ['IP.%d = %s' % (index + 1, address) for index, address in enumerate(ips)]
        config = '\n'.join([
            '[req]', 'distinguished_name = dn', 'prompt = no', 'req_extensions = ext', 'utf8 = yes',
            '[dn]', 'O = %s' % organization,
            '[ext]', 'subjectAltName = @alt',
            '[alt]'] + alt) + '\n'
        workdir = tempfile.mkdtemp(prefix='fleetmesh-csr-')
        try:
            config_path = os.path.join(workdir, 'req.cnf')
            with open(config_path, 'w') as handle:
                handle.write(config)
            out = self._call(['req', '-new', '-key', path, '-config', config_path, '-sha256', '-outform', 'PEM'],
                             'building the CSR')
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        blocks = pem_blocks(out, 'CERTIFICATE REQUEST')
        if not blocks:
            raise PKIError('openssl printed no CSR')
        return der_to_pem(blocks[0], 'CERTIFICATE REQUEST')


def key_backend(name: str, find_openssl: Callable[[], Optional[str]], run: Runner) -> Any:
    """The key backend for ``name`` (auto, cryptography or openssl)."""
    if name in ('auto', 'cryptography') and _cryptography_usable():
        return CryptographyKeys()
    if name == 'cryptography':
        raise PKIError('backend=cryptography needs the Python package cryptography 3.1 or later on the host '
                       '(found %s)' % (CRYPTOGRAPHY_VERSION or 'none'))
    openssl = find_openssl()
    if not openssl:
        raise PKIError('neither the Python package cryptography (3.1 or later) nor the openssl tool is on the host; '
                       'install one of them (Debian: python3-cryptography or openssl; EL: python3-cryptography '
                       'or openssl)')
    return OpenSSLKeys(openssl, run)


def key_matches(info: Dict[str, Any], key_type: str, key_size: int) -> bool:
    if key_type == 'rsa':
        return info.get('type') == 'rsa' and info.get('size') == key_size
    return info.get('type') == 'ec' and info.get('curve') == EC_CURVE
