# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: cert_info
short_description: Read the workload certificate installed on a host
version_added: 0.1.0
description:
  - Reads the first certificate of O(path) (by default the workload's C(cert-chain.pem)) and returns its subject,
    SANs, SPIFFE ID, issuer, serial, validity and the days left.
  - Also describes the rest of the chain and, with O(root_path), the root certificate.
  - Reads public certificates only, with the Python standard library; nothing is changed.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  path:
    description:
      - PEM file with the certificate first (a chain file is fine).
    type: path
    default: /etc/certs/cert-chain.pem
  root_path:
    description:
      - PEM file of the root certificate, described in RV(root). Skipped when it does not exist.
    type: path
    default: /etc/certs/root-cert.pem
extends_documentation_fragment:
  - fleetmesh.envoy.attributes
attributes:
  diff_mode:
    support: N/A
seealso:
  - module: fleetmesh.envoy.workload_csr
"""

EXAMPLES = r"""
- name: Read the installed workload certificate
  fleetmesh.envoy.cert_info:
    path: /etc/certs/cert-chain.pem
  register: cert

- name: Warn when it expires within a week
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: {{ cert.spiffe_id }} expires {{ cert.not_after }}"
  when: cert.exists and cert.days_left < 7
"""

RETURN = r"""
exists:
  description: Whether O(path) exists.
  returned: always
  type: bool
  sample: true
path:
  description: The file read.
  returned: always
  type: str
  sample: /etc/certs/cert-chain.pem
subject:
  description: Subject of the certificate, RFC 4514 (last RDN first).
  returned: when exists
  type: str
  sample: CN=fm-deb-1,O=cluster.local
issuer:
  description: Issuer of the certificate, RFC 4514.
  returned: when exists
  type: str
  sample: CN=fleetmesh lab intermediate CA,O=fleetmesh lab
serial:
  description: Serial number, lowercase hexadecimal.
  returned: when exists
  type: str
  sample: 5c0f3e9a0d1b7c
sans:
  description: Subject alternative names, prefixed with URI, DNS or IP.
  returned: when exists
  type: list
  elements: str
  sample: ["URI:spiffe://cluster.local/ns/fleet-lab/sa/web", "IP:10.213.77.11"]
spiffe_id:
  description: The SPIFFE ID (the one spiffe:// URI SAN), or V(null) when there is not exactly one.
  returned: when exists
  type: str
  sample: spiffe://cluster.local/ns/fleet-lab/sa/web
not_before:
  description: Start of validity, UTC, ISO 8601.
  returned: when exists
  type: str
  sample: "2025-05-02T09:55:00Z"
not_after:
  description: End of validity, UTC, ISO 8601.
  returned: when exists
  type: str
  sample: "2025-06-01T10:00:00Z"
days_left:
  description: Days until RV(not_after), two decimals; negative when expired.
  returned: when exists
  type: float
  sample: 29.87
seconds_left:
  description: Seconds until RV(not_after); negative when expired.
  returned: when exists
  type: int
  sample: 2580000
fingerprint:
  description: SHA-256 of the certificate (DER).
  returned: when exists
  type: str
  sample: sha256:0b1e...
public_key:
  description: Type and size of the certificate's public key.
  returned: when exists
  type: str
  sample: EC P-256
public_key_fingerprint:
  description: SHA-256 of the public key (SubjectPublicKeyInfo); equals the key fingerprint M(fleetmesh.envoy.workload_csr) reports.
  returned: when exists
  type: str
  sample: sha256:1b47...
is_ca:
  description: Whether the certificate is a CA certificate.
  returned: when exists
  type: bool
  sample: false
chain:
  description: The certificates after the first in O(path) (subject, issuer, serial, not_after, days_left).
  returned: when exists
  type: list
  elements: dict
  sample: [{"subject": "CN=fleetmesh lab intermediate CA,O=fleetmesh lab", "not_after": "2030-05-01T10:00:00Z"}]
root:
  description: The root certificate of O(root_path) (subject, serial, not_after, days_left, fingerprint), or V(null).
  returned: when exists
  type: dict
  sample: {"subject": "CN=fleetmesh lab root CA,O=fleetmesh lab", "not_after": "2035-05-01T10:00:00Z"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh import pki

_BRIEF = ('subject', 'issuer', 'serial', 'not_after', 'days_left', 'fingerprint')


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', default='/etc/certs/cert-chain.pem'),
            root_path=dict(type='path', default='/etc/certs/root-cert.pem'),
        ),
        supports_check_mode=True,
    )
    path, root_path = module.params['path'], module.params['root_path']
    try:
        text = pki.read_file(path)
    except (IOError, OSError) as err:
        module.fail_json(msg='cert_info: cannot read %s: %s' % (path, err))
    if text is None:
        module.exit_json(changed=False, exists=False, path=path)
    try:
        certs = pki.load_certs(text, path)
        root_text = pki.read_file(root_path) if root_path else None
        root = pki.load_certs(root_text, root_path)[0] if root_text else None
    except (pki.PKIError, IOError, OSError) as err:
        module.fail_json(msg='cert_info: %s' % err, exists=True, path=path)
    now = pki.utcnow()
    result = certs[0].info(now)
    result.update(
        changed=False,
        exists=True,
        path=path,
        chain=[dict((key, cert.info(now)[key]) for key in _BRIEF) for cert in certs[1:]],
        root=dict((key, root.info(now)[key]) for key in _BRIEF) if root else None,
    )
    module.exit_json(**result)


if __name__ == '__main__':
    main()
