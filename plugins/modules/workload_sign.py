# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Only the documentation: the fleetmesh.envoy.workload_sign action runs on the controller (plugins/action).

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: workload_sign
short_description: Sign the workload CSRs of every host of the play in one controller task
version_added: 0.1.0
description:
  - The controller half of workload identity. Runs once per play (C(run_once=true)) on the controller and never
    connects to the hosts. Reads the result each host registered from M(fleetmesh.envoy.workload_csr) (O(csr_var))
    through C(hostvars) and signs the CSR of every host that needs a new certificate, all in this one task.
  - "Before signing, checks each CSR against what the inventory allows the host: the CSR's signature must verify,
    its only URI SAN must be exactly C(spiffe://<fleetmesh_trust_domain>/ns/<fleetmesh_namespace>/sa/<fleetmesh_service_account>)
    of that host, and its DNS and IP SANs must be among the host's inventory name, C(ansible_host),
    C(fleetmesh_address) and the service's names C(<fleetmesh_service>.<fleetmesh_namespace>[.svc[.cluster.local]]),
    all read from the inventory on the controller, never from what the host reports.
    One bad CSR fails the task and nothing is signed."
  - The CA comes from O(source). Its certificate and key must match, every certificate up to a self-signed root
    must be valid now and be a CA, and each link's signature must verify; otherwise the task fails. Intermediate
    CAs work; the issued RV(certs) chain is the leaf followed by the intermediates, and the root is returned apart.
  - With O(operation=inspect) only loads and checks the CA and returns its public part (RV(ca)), so that a play
    can stop on a bad CA before it changes any host and can tell hosts which CA is current.
  - The CA private key stays in the controller's memory; the result holds certificates only.
    O(source=legacy_secret) is the exception, see there.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  operation:
    description:
      - V(sign) signs the CSRs; V(inspect) only loads and checks the CA.
    type: str
    choices: [sign, inspect]
    default: sign
  source:
    description:
      - Where the CA comes from.
      - V(lab_ca) is a CA the collection generates on first use and keeps in O(lab_ca_dir) on the controller,
        an EC P-256 root (10 years) and an intermediate (5 years) that signs. For labs and tests.
      - V(files) reads O(ca_cert), O(ca_key) and optionally O(ca_chain) from the controller.
      - V(kubernetes) reads a Secret in Istio's plug-in C(cacerts) layout (C(ca-cert.pem), C(ca-key.pem),
        C(root-cert.pem), C(cert-chain.pem)) named O(secret_name) in O(secret_namespace) through the collection's
        Kubernetes layer, with O(kubeconfig) and the other Kubernetes options.
      - V(legacy_secret) is the old way, for migrations only. It signs nothing, it copies C(root-cert.pem),
        C(cert-chain.pem) and C(key.pem) out of the Secret O(legacy_secret_name) in each host's
        C(fleetmesh_namespace). The private key passes through the controller, so the task warns, and the
        result, which carries the keys, is marked no_log. The certificate's URI SAN must still be the host's
        SPIFFE ID and the key must match it.
    type: str
    choices: [lab_ca, files, kubernetes, legacy_secret]
    default: lab_ca
  csr_var:
    description:
      - Name of the variable each host registered from M(fleetmesh.envoy.workload_csr). Required with O(operation=sign)
        unless O(source=legacy_secret).
    type: str
  hosts:
    description:
      - Hosts whose CSRs to sign. Default is C(ansible_play_batch), the hosts of the play (or of the current
        C(serial) batch) that have not failed.
    type: list
    elements: str
  lifetime:
    description:
      - Lifetime of issued certificates, such as V(30d), V(12h) or V(1h30m). A certificate never outlives the CA.
    type: str
    default: 30d
  ca_cert:
    description:
      - With O(source=files), PEM file of the signing CA certificate on the controller (more certificates after the
        first are taken as its chain).
      - Not the API server's CA, unlike O(ca_cert) of the other modules of the action group C(fleetmesh.envoy.kube);
        that one is O(ssl_ca_cert) here. Give it as O(ssl_ca_cert) in C(module_defaults) for the group.
    type: path
    aliases: []
  ssl_ca_cert:
    description:
      - With O(source=kubernetes) or O(source=legacy_secret), path of the CA bundle that signed the API server's
        certificate, overriding the kubeconfig's.
    type: path
  ca_key:
    description:
      - With O(source=files), PEM file of the signing CA's unencrypted private key on the controller.
    type: path
  ca_chain:
    description:
      - With O(source=files), PEM file of the intermediates above O(ca_cert) and the root, on the controller.
        Not needed when O(ca_cert) is itself the root.
    type: path
  lab_ca_dir:
    description:
      - With O(source=lab_ca), the controller directory of the lab CA (mode V(0700), keys V(0600)), created on first use.
    type: path
    default: ~/.fleetmesh/lab-ca
  secret_namespace:
    description:
      - With O(source=kubernetes), namespace of the C(cacerts) Secret.
    type: str
    default: istio-system
  secret_name:
    description:
      - With O(source=kubernetes), name of the Secret in Istio's C(cacerts) layout.
    type: str
    default: cacerts
  legacy_secret_name:
    description:
      - With O(source=legacy_secret), name of the Secret with C(root-cert.pem), C(cert-chain.pem) and C(key.pem),
        read from each host's C(fleetmesh_namespace).
    type: str
    default: istio.default
notes:
  - Needs the Python package C(cryptography) on the controller, and C(kubernetes) for the Secret sources.
  - The Kubernetes options (O(kubeconfig) and the rest) are used with O(source=kubernetes) and O(source=legacy_secret)
    only.
  - In check mode a missing lab CA is generated in memory only; signing itself changes nothing outside the controller's
    memory and runs in check mode too, so that the install tasks can show their diff.
  - Reports V(changed) when it issued the certificate of the host the task runs as (the first host of the play,
    with C(run_once)), or created the lab CA; every host's install task reports its own certificate change.
    RV(signed) lists every host it issued a certificate for.
extends_documentation_fragment:
  - fleetmesh.envoy.attributes.controller
  - fleetmesh.envoy.k8s_auth
  - fleetmesh.envoy.k8s_auth.action_group
attributes:
  bypass_host_loop:
    details: Use C(run_once=true); the one run signs for every host of the play.
seealso:
  - module: fleetmesh.envoy.workload_csr
  - module: fleetmesh.envoy.cert_info
"""

EXAMPLES = r"""
- name: Stop on a bad CA before touching any host
  fleetmesh.envoy.workload_sign:
    operation: inspect
    source: files
    ca_cert: /srv/pki/intermediate.pem
    ca_key: /srv/pki/intermediate-key.pem
    ca_chain: /srv/pki/chain.pem
  run_once: true
  register: workload_ca

- name: Keys and CSRs on the hosts
  fleetmesh.envoy.workload_csr:
    spiffe_id: "{{ fleetmesh_trust_domain | fleetmesh.envoy.spiffe_id(fleetmesh_namespace, fleetmesh_service_account) }}"
    root_cert: "{{ workload_ca.ca.root_cert }}"
    intermediates: "{{ workload_ca.ca.intermediates }}"
  register: workload_csr

- name: Sign every CSR of the play in one task
  fleetmesh.envoy.workload_sign:
    source: files
    ca_cert: /srv/pki/intermediate.pem
    ca_key: /srv/pki/intermediate-key.pem
    ca_chain: /srv/pki/chain.pem
    csr_var: workload_csr
    lifetime: 30d
  run_once: true
  register: workload_signed

- name: Install the chain where it was issued
  ansible.builtin.copy:
    content: "{{ workload_signed.certs[inventory_hostname].cert_chain }}"
    dest: /etc/certs/cert-chain.pem
    owner: envoy
    group: envoy
    mode: "0644"
  when: inventory_hostname in workload_signed.certs

- name: Sign with Istio's plug-in CA from Kubernetes
  fleetmesh.envoy.workload_sign:
    source: kubernetes
    kubeconfig: ~/.kube/config
    secret_namespace: istio-system
    secret_name: cacerts
    csr_var: workload_csr
  run_once: true
  register: workload_signed
"""

RETURN = r"""
ca:
  description: The public part of the CA (certificates only). Not returned with O(source=legacy_secret).
  returned: success
  type: dict
  contains:
    source:
      description: Where the CA came from.
      type: str
      sample: lab CA /root/.fleetmesh/lab-ca
    issuer:
      description: Subject of the signing CA certificate.
      type: str
      sample: CN=fleetmesh lab intermediate CA,O=fleetmesh lab
    root_cert:
      description: PEM of the root certificate (what hosts install as C(root-cert.pem)).
      type: str
      sample: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
    root_subject:
      description: Subject of the root.
      type: str
      sample: CN=fleetmesh lab root CA,O=fleetmesh lab
    root_fingerprint:
      description: SHA-256 of the root certificate.
      type: str
      sample: sha256:9f8e...
    intermediates:
      description: PEM certificates that follow a leaf in C(cert-chain.pem), in order (empty when the root signs).
      type: list
      elements: str
      sample: ["-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"]
    not_after:
      description: When the first certificate of the CA chain expires.
      type: str
      sample: "2030-05-01T10:00:00Z"
certs:
  description:
    - Per host that got a certificate, by inventory name. Not returned with O(operation=inspect).
    - With O(source=legacy_secret) each entry also has C(key), the private key, and the whole result is no_log.
  returned: success
  type: dict
  sample:
    fm-deb-1:
      cert_chain: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
      root_cert: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
      serial: 5c0f3e9a0d1b7c
      not_before: "2025-05-02T09:55:00Z"
      not_after: "2025-06-01T10:00:00Z"
      sans: ["URI:spiffe://cluster.local/ns/fleet-lab/sa/web"]
      spiffe_id: spiffe://cluster.local/ns/fleet-lab/sa/web
      reasons: ["missing: cert-chain.pem and root-cert.pem not installed"]
signed:
  description: Hosts that got a new certificate.
  returned: success
  type: list
  elements: str
  sample: [fm-deb-1, fm-el-1]
not_signed:
  description: Hosts not signed for, with the reason (current certificate, or no CSR registered).
  returned: success
  type: dict
  sample: {"fm-deb-2": "the installed certificate is current"}
msg:
  description: What was done, or every host refused and why.
  returned: always
  type: str
  sample: signed 2 certificate(s) with CN=fleetmesh lab intermediate CA,O=fleetmesh lab
"""
