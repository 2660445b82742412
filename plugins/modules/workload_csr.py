# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: workload_csr
short_description: Keep a workload private key on the host and ask for its certificate with a CSR
version_added: 0.1.0
description:
  - The host half of workload identity, in one call per host. The signing half runs once on the controller
    (M(fleetmesh.envoy.workload_sign)).
  - Generates the private key C(key.pem) in O(path) on the host when it is missing or of another type or size than
    O(key_type) and O(key_size) ask for (EC P-256 by default). The key is written to a new file with mode V(0600),
    owned by O(owner) and O(group), and renamed into place; it never leaves the host and is never part of the result.
  - Builds a certificate signing request whose only URI SAN is O(spiffe_id), plus the DNS and IP SANs of O(sans).
  - In the same call reads the installed C(cert-chain.pem) and C(root-cert.pem) and reports in RV(needs_issue) and
    RV(reasons) whether a new certificate is needed, because it is missing, its remaining lifetime is below
    O(renew_before) or it outlives O(lifetime), its SANs differ, its CA differs from O(root_cert) and O(intermediates),
    or it is not for the key.
  - Uses the Python package C(cryptography) when the host has it (3.1 or later), else the C(openssl) tool; reading
    certificates needs neither.
  - With O(state=csr) reports V(changed) only when the key or the directory is created or their owner or mode is
    corrected. Signing is a separate controller task; O(state=installed) then installs the result in a second call.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  path:
    description:
      - Directory of C(key.pem), C(cert-chain.pem) and C(root-cert.pem) (the names the Istio sidecar expects).
      - Created with mode V(0755) when missing.
    type: path
    default: /etc/certs
  owner:
    description:
      - User that owns C(key.pem) (the service user that runs Envoy). The key file has mode V(0600).
    type: str
    default: envoy
  group:
    description:
      - Group of C(key.pem). Default is the primary group of O(owner).
    type: str
  create_owner:
    description:
      - Create O(owner) (a system user without home or login shell) and its group (O(group), or one named like
        O(owner)) when they do not exist, in the same call, so a no-op run is one round trip to the host.
      - With O(state=csr) before the key is made; with O(state=installed) before O(private_key) is written.
      - This is the collection's one way to create a service user (see C(docs/model.md)); the C(envoy_instance)
        module and the Envoy packages create theirs the same way.
    type: bool
    default: false
  key_type:
    description:
      - Type of the private key. V(ec) is ECDSA on curve P-256; V(rsa) is RSA of O(key_size) bits.
      - An existing key of another type (or RSA size) is replaced by a new one.
    type: str
    choices: [ec, rsa]
    default: ec
  key_size:
    description:
      - RSA key size in bits, with O(key_type=rsa).
    type: int
    choices: [2048, 3072, 4096]
    default: 2048
  spiffe_id:
    description:
      - The SPIFFE ID of the workload, C(spiffe://<trust domain>/ns/<namespace>/sa/<service account>); the only URI SAN.
      - The role computes it from the inventory with the P(fleetmesh.envoy.spiffe_id#filter) filter.
    type: str
    required: true
  sans:
    description:
      - Extra DNS names and IP addresses, bare or prefixed with C(DNS:) or C(IP:). URIs are not allowed here.
      - The signer accepts only names and addresses of the host from the inventory.
    type: list
    elements: str
    default: []
  lifetime:
    description:
      - Lifetime of the certificates the signer issues, such as V(30d), V(12h) or V(1h30m). An installed certificate
        that has more time left than this (the lifetime was shortened) is re-issued.
    type: str
    default: 30d
  renew_before:
    description:
      - Re-issue when less than this is left of the installed certificate. Default one third of O(lifetime).
    type: str
  root_cert:
    description:
      - PEM of the CA's root certificate. With O(state=csr), an installed C(root-cert.pem) that differs means the
        CA changed. With O(state=installed), the root to install as C(root-cert.pem).
    type: str
  intermediates:
    description:
      - PEM certificates that follow the leaf in C(cert-chain.pem) for the current CA, in order. When set, an installed
        chain with other intermediates means the CA changed. An empty list means the root signs leaves directly.
    type: list
    elements: str
  backend:
    description:
      - How keys and CSRs are made on the host. V(auto) uses C(cryptography) when available, else C(openssl).
    type: str
    choices: [auto, cryptography, openssl]
    default: auto
  state:
    description:
      - V(csr) keeps the key, builds the CSR and decides whether a new certificate is needed (the first step).
      - V(installed) installs the issued O(cert_chain) and O(root_cert) as C(cert-chain.pem) and C(root-cert.pem)
        (mode V(0644), owned by O(owner) and O(group), written atomically, the root first), the second step. It first
        checks that the certificate is for the key in C(key.pem), that its only URI SAN is O(spiffe_id) and that the
        chain leads to O(root_cert), and installs nothing otherwise.
    type: str
    choices: [csr, installed]
    default: csr
  cert_chain:
    description:
      - With O(state=installed), the issued leaf followed by its intermediates, PEM (no root, no key).
    type: str
  private_key:
    description:
      - With O(state=installed) only, and only for the role's C(legacy_secret) source, where the key comes from a
        Kubernetes Secret instead of being made on the host; written as C(key.pem) (mode V(0600), owned by O(owner)
        and O(group), atomically) before the checks, which then run against it.
    type: str
notes:
  - Needs either the Python package C(cryptography) 3.1 or later or the C(openssl) tool (1.1.1 or later) on the host.
  - In check mode nothing is written; when a key would be created, the CSR is made with a throw-away key so that the
    rest of the play can show what it would do.
  - The diff shows key fingerprints, key types, serials, SANs and dates, never key material.
extends_documentation_fragment:
  - fleetmesh.envoy.attributes
seealso:
  - module: fleetmesh.envoy.workload_sign
  - module: fleetmesh.envoy.cert_info
"""

EXAMPLES = r"""
- name: Keep the workload key on the host and build its CSR
  fleetmesh.envoy.workload_csr:
    path: /etc/certs
    owner: envoy
    spiffe_id: "{{ fleetmesh_trust_domain | fleetmesh.envoy.spiffe_id(fleetmesh_namespace, fleetmesh_service_account) }}"
    sans:
      - "{{ ansible_host }}"
    lifetime: 30d
  register: workload_csr

- name: RSA keys instead of EC P-256
  fleetmesh.envoy.workload_csr:
    spiffe_id: spiffe://cluster.local/ns/bookinfo/sa/reviews
    key_type: rsa
    key_size: 3072
  register: workload_csr

- name: Install what the controller issued (after fleetmesh.envoy.workload_sign)
  fleetmesh.envoy.workload_csr:
    state: installed
    spiffe_id: "{{ fleetmesh_trust_domain | fleetmesh.envoy.spiffe_id(fleetmesh_namespace, fleetmesh_service_account) }}"
    cert_chain: "{{ workload_signed.certs[inventory_hostname].cert_chain }}"
    root_cert: "{{ workload_signed.certs[inventory_hostname].root_cert }}"
  when: inventory_hostname in workload_signed.certs
"""

RETURN = r"""
owner_created:
  description: Whether O(create_owner) created the user or its group (or would, in check mode).
  returned: success and O(state=csr)
  type: bool
csr:
  description: The certificate signing request, PEM (public).
  returned: success and O(state=csr)
  type: str
  sample: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n"
needs_issue:
  description: Whether a new certificate must be issued and installed.
  returned: success
  type: bool
  sample: true
reasons:
  description:
    - Why a new certificate is needed, one a line, each starting with a code (V(missing), V(unreadable),
      V(key_changed), V(key_mismatch), V(sans_changed), V(ca_changed), V(not_yet_valid), V(expiring),
      V(lifetime_changed)). Empty when the installed certificate is fine.
  returned: success
  type: list
  elements: str
  sample: ["expiring: 9d23h left (not after 2025-06-01T10:00:00Z), renew_before is 10d"]
spiffe_id:
  description: The SPIFFE ID asked for.
  returned: success
  type: str
  sample: spiffe://cluster.local/ns/bookinfo/sa/reviews
sans:
  description: Every SAN asked for, prefixed with URI, DNS or IP.
  returned: success and O(state=csr)
  type: list
  elements: str
  sample: ["URI:spiffe://cluster.local/ns/bookinfo/sa/reviews", "IP:192.0.2.10"]
key:
  description: The public facts of the private key (never the key).
  returned: success and O(state=csr)
  type: dict
  contains:
    path:
      description: Path of the key file.
      type: str
      sample: /etc/certs/key.pem
    type:
      description: V(ec) or V(rsa).
      type: str
      sample: ec
    size:
      description: Key size in bits.
      type: int
      sample: 256
    fingerprint:
      description: SHA-256 of the public key (SubjectPublicKeyInfo).
      type: str
      sample: sha256:1b4786224576365770f61eadffe3bd0b8a5fa9e6cdde2fb23d0b6117e710abb4
    created:
      description: Whether the key was created (or replaced) by this call.
      type: bool
      sample: false
installed:
  description:
    - The installed certificate (as M(fleetmesh.envoy.cert_info) returns it), or V(null) when there is none.
    - With O(state=installed), the certificate just installed (or that was in place already).
  returned: success
  type: dict
  sample: {"serial": "5c0f...", "not_after": "2025-06-01T10:00:00Z", "days_left": 9.98}
backend:
  description: The key backend used, V(cryptography) or V(openssl).
  returned: success
  type: str
  sample: openssl
"""

import grp
import os
import pwd
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.sysuser import ensure_system_user
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import pki
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.duration import parse_duration
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.files import atomic_write
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.validation import (
    ALLOWED_DURATION,
    check_san_list,
    check_spiffe_id,
)

DIR_MODE = 0o755
KEY_MODE = 0o600
CERT_MODE = 0o644


def _fail(module, msg, **kwargs):
    module.fail_json(msg='workload_csr: ' + msg, **kwargs)


def _ids(module):
    """(uid, gid, owner name, group name); None ids in check mode when the user does not exist yet."""
    owner, group = module.params['owner'], module.params['group']
    try:
        entry = pwd.getpwnam(owner)
        uid, primary_gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not module.check_mode:
            _fail(module, 'owner %r does not exist on the host; create the service user first '
                          '(the role does with workload_certs_owner_create: true)' % owner)
        module.warn('owner %r does not exist yet; in a real run it must exist' % owner)
        return None, None, owner, group or owner
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            if not module.check_mode:
                _fail(module, 'group %r does not exist on the host' % group)
            return uid, None, owner, group
    else:
        gid = primary_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    return uid, gid, owner, group


def _file_facts(path):
    st = os.stat(path)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {'owner': owner, 'group': group, 'mode': '%04o' % stat.S_IMODE(st.st_mode), 'uid': st.st_uid,
            'gid': st.st_gid}


def _owner_can_enter(directory, uid, owner):
    """Whether the service user may enter the directory (else Envoy cannot read its key and certificates)."""
    st = os.stat(directory)
    if uid is None or uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    try:
        groups = os.getgrouplist(owner, pwd.getpwuid(uid).pw_gid)
    except (KeyError, OSError):
        groups = []
    if st.st_gid in groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _new_key(module, backend, key_path, uid, gid):
    """Generate the key into a new 0600 file owned by the service user, then move it into place."""
    def generate(tmp):
        backend.generate(tmp, module.params['key_type'], module.params['key_size'])

    atomic_write(key_path, None, -1 if uid is None else uid, -1 if gid is None else gid, KEY_MODE, module=module,
                 writer=generate)


def _write_pem(module, path, text, uid, gid, mode=CERT_MODE):
    """Write a PEM file atomically with owner and mode (a certificate; key.pem from a legacy Secret with KEY_MODE);
    True when content or attributes changed."""
    data = text.encode('ascii')
    current = None
    if os.path.exists(path):
        with open(path, 'rb') as handle:
            current = handle.read()
        facts = _file_facts(path)
        if current == data and (uid is None or facts['uid'] == uid) and (gid is None or facts['gid'] == gid) \
                and facts['mode'] == '%04o' % mode:
            return False
    if module.check_mode:
        return True
    if current == data:
        os.chown(path, uid if uid is not None else -1, gid if gid is not None else -1)
        os.chmod(path, mode)
        return True
    atomic_write(path, data, -1 if uid is None else uid, -1 if gid is None else gid, mode, module=module)
    return True


def _cert_brief(info):
    if not info:
        return None
    return dict((key, info[key]) for key in ('serial', 'sans', 'issuer', 'not_after', 'fingerprint'))


def _installed_info(directory):
    text = pki.read_file(os.path.join(directory, pki.CERT_CHAIN_FILE))
    if not text:
        return None
    try:
        return pki.load_certs(text, pki.CERT_CHAIN_FILE)[0].info()
    except pki.PKIError:
        return None


def install(module, backend, uid, gid, owner, group, changed=False):
    """state=installed: put the issued chain and the root in place, after checking they belong to this host's key
    (the one in private_key, written first, with the legacy Secret source)."""
    params = module.params
    directory = params['path']
    key_path = os.path.join(directory, pki.KEY_FILE)
    if params['private_key']:
        if not pki.has_private_key_marker(params['private_key']):
            _fail(module, 'private_key is not a PEM private key')
        changed |= _write_pem(module, key_path, params['private_key'], uid, gid, mode=KEY_MODE)
    if not params['cert_chain'] or not params['root_cert']:
        _fail(module, 'state=installed needs cert_chain and root_cert')
    for name in ('cert_chain', 'root_cert'):
        if pki.has_private_key_marker(params[name]):
            _fail(module, '%s holds a private key; only certificates are installed this way' % name)
    try:
        chain = pki.load_certs(params['cert_chain'], 'cert_chain')
        root = pki.load_certs(params['root_cert'], 'root_cert')[0]
        key_spki = backend.public_spki(key_path) if os.path.exists(key_path) else None
    except pki.PKIError as err:
        _fail(module, str(err))
    leaf = chain[0]
    problems = []
    if key_spki is None or leaf.spki != key_spki:
        if module.check_mode:
            # the key this certificate is for would have been made by state=csr in a real run
            module.exit_json(changed=True, installed=leaf.info(), spiffe_id=params['spiffe_id'], backend=backend.name,
                             needs_issue=False, reasons=[])
    if key_spki is None:
        _fail(module, 'there is no %s to install a certificate for; run with state=csr first' % key_path)
    if leaf.spki != key_spki:
        problems.append('the certificate is not for the private key in %s (public key %s, key %s)' % (
            key_path, pki.fingerprint(leaf.spki), pki.fingerprint(key_spki)))
    if leaf.uris != [params['spiffe_id']]:
        problems.append('the certificate is for %s, not exactly %s' % (', '.join(leaf.uris) or 'no URI',
                                                                       params['spiffe_id']))
    for child, parent in zip(chain, chain[1:] + [root]):  # noqa: B905 - Python 3.8 has no strict=
        if not child.issued_by(parent):
            problems.append('%s is not issued by %s' % (child.subject or child.serial, parent.subject))
    if chain[-1].self_signed or not root.self_signed:
        problems.append('cert_chain must hold the leaf and intermediates, root_cert the self-signed root')
    if problems:
        _fail(module, 'nothing installed: ' + '; '.join(problems))
    before = _installed_info(directory)
    # the root first: a chain is never in place without the root it needs
    changed |= _write_pem(module, os.path.join(directory, pki.ROOT_CERT_FILE), params['root_cert'], uid, gid)
    changed |= _write_pem(module, os.path.join(directory, pki.CERT_CHAIN_FILE), params['cert_chain'], uid, gid)
    info = leaf.info()
    result = dict(changed=changed, installed=info, spiffe_id=params['spiffe_id'], backend=backend.name,
                  needs_issue=False, reasons=[])
    if module._diff:
        root_info = root.info()
        result['diff'] = dict(
            before={'certificate': _cert_brief(before)},
            after={'certificate': _cert_brief(info), 'root': root_info['subject'] + ' ' + root_info['fingerprint'],
                   'owner': owner, 'group': group, 'mode': '%04o' % CERT_MODE},
            before_header=directory, after_header=directory)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', default='/etc/certs'),
            owner=dict(type='str', default='envoy'),
            group=dict(type='str'),
            create_owner=dict(type='bool', default=False),
            key_type=dict(type='str', choices=list(pki.KEY_TYPES), default='ec', no_log=False),
            key_size=dict(type='int', choices=list(pki.RSA_KEY_SIZES), default=2048, no_log=False),
            spiffe_id=dict(type='str', required=True),
            sans=dict(type='list', elements='str', default=[]),
            lifetime=dict(type='str', default='30d'),
            renew_before=dict(type='str'),
            root_cert=dict(type='str'),
            intermediates=dict(type='list', elements='str'),
            backend=dict(type='str', choices=['auto', 'cryptography', 'openssl'], default='auto'),
            state=dict(type='str', choices=['csr', 'installed'], default='csr'),
            cert_chain=dict(type='str'),
            private_key=dict(type='str', no_log=True),
        ),
        required_if=[('state', 'installed', ('cert_chain', 'root_cert'))],
        supports_check_mode=True,
    )
    params = module.params
    # Only certificates belong in these options; should a key be pasted into one, keep it out of every output.
    for name in ('cert_chain', 'root_cert'):
        if pki.has_private_key_marker(params[name]):
            module.no_log_values.add(params[name])
    for item in params['intermediates'] or []:
        if pki.has_private_key_marker(item):
            module.no_log_values.add(item)
    errors = check_spiffe_id('spiffe_id', params['spiffe_id']) + check_san_list('sans', params['sans'])
    try:
        lifetime = parse_duration(params['lifetime'])
    except ValueError:
        errors.append('lifetime: %r is not a valid duration; allowed: %s' % (params['lifetime'], ALLOWED_DURATION))
        lifetime = 0
    try:
        renew_before = pki.renew_before_seconds(lifetime or 1, params['renew_before'])
    except ValueError:
        errors.append('renew_before: %r is not a valid duration; allowed: %s' % (
            params['renew_before'], ALLOWED_DURATION))
        renew_before = 0
    uris, dns, ips = pki.split_sans(params['sans'])
    if uris:
        errors.append('sans: %s is a URI; allowed: DNS names and IP addresses (the URI SAN is spiffe_id)' % uris[0])
    if errors:
        _fail(module, '; '.join(errors))

    directory = params['path']
    key_path = os.path.join(directory, pki.KEY_FILE)
    changed = False
    if params['private_key'] and params['state'] != 'installed':
        _fail(module, 'private_key is only used with state=installed')
    owner_created = params['create_owner'] and ensure_system_user(
        module, params['owner'], params['group'] or params['owner'])
    changed = bool(owner_created)
    uid, gid, owner, group = _ids(module)
    try:
        backend = pki.key_backend(params['backend'], lambda: module.get_bin_path('openssl'), module.run_command)
    except pki.PKIError as err:
        _fail(module, str(err))

    if params['state'] == 'installed':
        install(module, backend, uid, gid, owner, group, changed)

    before = {'path': directory, 'key': None, 'certificate': None}
    after = {'path': directory, 'key': None, 'certificate': None}
    if not os.path.isdir(directory):
        changed = True
        before['path'] = None
        if not module.check_mode:
            os.makedirs(directory, DIR_MODE)
            os.chmod(directory, DIR_MODE)

    if os.path.isdir(directory) and not _owner_can_enter(directory, uid, owner):
        facts = _file_facts(directory)
        msg = ('%s is %s:%s mode %s, so %s cannot enter it and read its key and certificates; make the directory '
               'traversable for %s (for example root:root 0755), or set owner to the user that runs the proxy' % (
                   directory, facts['owner'], facts['group'], facts['mode'], owner, owner))
        if not module.check_mode:
            _fail(module, msg)
        module.warn(msg)

    # The key: keep it when it is of the wanted type, else make a new one.
    key_reason = None
    key_spki = None
    if os.path.exists(key_path):
        try:
            key_spki = backend.public_spki(key_path)
        except pki.PKIError as err:
            _fail(module, '%s; remove it to let the module create a new key' % err)
        info = pki.spki_info(key_spki)
        facts = _file_facts(key_path)
        before['key'] = {'type': pki.describe_key(info), 'fingerprint': info['fingerprint'],
                         'owner': facts['owner'], 'group': facts['group'], 'mode': facts['mode']}
        if not pki.key_matches(info, params['key_type'], params['key_size']):
            key_reason = 'key_changed: the key is %s, %s is wanted' % (
                pki.describe_key(info), 'EC P-256' if params['key_type'] == 'ec' else 'RSA %d' % params['key_size'])
        elif (uid is not None and facts['uid'] != uid) or (gid is not None and facts['gid'] != gid) or \
                facts['mode'] != '%04o' % KEY_MODE:
            changed = True
            if not module.check_mode:
                os.chown(key_path, uid if uid is not None else -1, gid if gid is not None else -1)
                os.chmod(key_path, KEY_MODE)
    else:
        key_reason = 'key_changed: no key yet'

    scratch = None
    csr_key_path = key_path
    try:
        if key_reason:
            changed = True
            if module.check_mode:
                scratch = tempfile.mkdtemp(prefix='fleetmesh-check-')
                csr_key_path = os.path.join(scratch, pki.KEY_FILE)
                open(csr_key_path, 'w').close()
                os.chmod(csr_key_path, KEY_MODE)
                backend.generate(csr_key_path, params['key_type'], params['key_size'])
            else:
                _new_key(module, backend, key_path, uid, gid)
            key_spki = backend.public_spki(csr_key_path)
        organization = params['spiffe_id'][len('spiffe://'):].split('/', 1)[0]
        csr = backend.csr(csr_key_path, params['spiffe_id'], dns, ips, organization)
    except (pki.PKIError, OSError) as err:
        _fail(module, 'cannot make the key or CSR in %s: %s' % (directory, err))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    key_info = pki.spki_info(key_spki)
    after['key'] = {'type': pki.describe_key(key_info), 'owner': owner, 'group': group, 'mode': '%04o' % KEY_MODE,
                    'fingerprint': ('(a new key, made in a real run)' if key_reason and module.check_mode
                                    else key_info['fingerprint'])}

    # The installed certificate: is it still right?
    chain_pem = pki.read_file(os.path.join(directory, pki.CERT_CHAIN_FILE))
    root_pem = pki.read_file(os.path.join(directory, pki.ROOT_CERT_FILE))
    try:
        reasons = pki.reissue_reasons(chain_pem, root_pem, key_spki, params['spiffe_id'], dns, ips, lifetime,
                                      renew_before, params['root_cert'], params['intermediates'])
    except pki.PKIError as err:
        _fail(module, 'root_cert or intermediates: %s' % err)
    if key_reason:
        reasons = [key_reason] + [reason for reason in reasons if not reason.startswith('key_mismatch')]
    installed = None
    if chain_pem:
        try:
            installed = pki.load_certs(chain_pem, pki.CERT_CHAIN_FILE)[0].info()
        except pki.PKIError:
            installed = None
    if installed:
        before['certificate'] = {key: installed[key] for key in ('serial', 'sans', 'issuer', 'not_after')}
    wanted = pki.san_strings([params['spiffe_id']], dns, ips)
    after['certificate'] = ({'to be issued': reasons, 'sans': wanted} if reasons else before['certificate'])

    result = dict(
        changed=changed,
        csr=csr,
        needs_issue=bool(reasons),
        reasons=reasons,
        spiffe_id=params['spiffe_id'],
        sans=wanted,
        key=dict(path=key_path, type=key_info['type'], size=key_info['size'], fingerprint=key_info['fingerprint'],
                 created=bool(key_reason)),
        installed=installed,
        backend=backend.name,
        owner_created=bool(owner_created),
    )
    if module._diff:
        result['diff'] = dict(before=before, after=after, before_header=directory, after_header=directory)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
