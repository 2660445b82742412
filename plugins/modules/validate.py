# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# This file only documents the fleetmesh.envoy.validate action, which runs on the controller
# (plugins/action/validate.py), as ansible.builtin.assert does.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: validate
short_description: Check the fleetmesh inventory model and role variables before changing anything
version_added: 0.1.0
description:
  - Runs named groups of checks over the variables a role passes in O(vars), on the controller, without
    connecting to the host, and fails with every error found at once.
  - "Each error names the variable, shows its value and says what is allowed, for example
    C(fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535)."
  - Meant as the first task of each role, so a bad inventory stops the play before any host changes.
  - A variable that is absent or V(null) counts as not set; pass optional variables through the C(default) filter with C(omit).
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  checks:
    description:
      - Names of the groups of checks to run. A variable named by several groups is checked once.
      - V(fleetmesh_model) checks C(fleetmesh_service) (DNS-1123 label), C(fleetmesh_namespace) (DNS-1123 label),
        C(fleetmesh_service_account) (DNS-1123 subdomain), C(fleetmesh_ports) (Istio port names such as
        C(http) or C(grpc-api) to ports 1-65535, each port once), C(fleetmesh_trust_domain) (all required),
        and, when set, C(fleetmesh_labels) (Kubernetes label rules), C(fleetmesh_network),
        C(fleetmesh_cluster_id) and C(fleetmesh_mesh_id) (label values), C(fleetmesh_locality)
        (region/zone/subzone), C(fleetmesh_weight), C(fleetmesh_address) (IPv4 or IPv6) and
        C(fleetmesh_service_addresses) (host name to address of every host of the service; no address twice).
      - V(envoy) checks C(envoy_version) (X.Y.Z, required), C(envoy_install_method), C(envoy_admin_address)
        (loopback unless C(envoy_admin_allow_non_loopback=true)) and C(envoy_admin_port).
      - V(workload_certs) checks C(fleetmesh_trust_domain), C(fleetmesh_namespace), C(fleetmesh_service_account)
        (required), C(workload_certs_spiffe_id) (a SPIFFE ID in the trust domain) and C(workload_certs_sans)
        (DNS names, IP addresses or spiffe:// URIs).
      - V(istio_sidecar) checks what V(fleetmesh_model) checks and C(istio_sidecar_version) (X.Y.Z) and
        C(istio_sidecar_service_cidr) (CIDRs as a list or comma separated, or V(*)).
      - V(mesh_registration) checks what V(fleetmesh_model) checks.
    type: list
    elements: str
    required: true
  vars:
    description:
      - The variables to check, by name. Roles pass them explicitly.
    type: dict
    required: true
extends_documentation_fragment:
  - fleetmesh.envoy.attributes.controller
seealso:
  - module: ansible.builtin.assert
"""

EXAMPLES = r"""
- name: Check the inventory model before touching the host
  fleetmesh.envoy.validate:
    checks: [fleetmesh_model, envoy]
    vars:
      fleetmesh_service: "{{ fleetmesh_service | default(omit) }}"
      fleetmesh_namespace: "{{ fleetmesh_namespace | default(omit) }}"
      fleetmesh_service_account: "{{ fleetmesh_service_account | default(omit) }}"
      fleetmesh_ports: "{{ fleetmesh_ports | default(omit) }}"
      fleetmesh_labels: "{{ fleetmesh_labels | default(omit) }}"
      fleetmesh_trust_domain: "{{ fleetmesh_trust_domain | default(omit) }}"
      fleetmesh_address: "{{ fleetmesh_address | default(omit) }}"
      fleetmesh_service_addresses: >-
        {{ dict(groups[fleetmesh_service] | zip(groups[fleetmesh_service]
        | map('extract', hostvars, 'fleetmesh_address'))) }}
      envoy_version: "{{ envoy_version }}"
      envoy_admin_address: "{{ envoy_admin_address }}"
      envoy_admin_allow_non_loopback: "{{ envoy_admin_allow_non_loopback }}"
"""

RETURN = r"""
checks:
  description: The groups of checks run.
  returned: always
  type: list
  elements: str
  sample: [fleetmesh_model, envoy]
errors:
  description: The errors found, one a list item.
  sample: ["fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535"]
  returned: always
  type: list
  elements: str
msg:
  description: Every error, one a line, or a summary of what was checked.
  returned: always
  type: str
  sample: "fleetmesh_ports.http: 70000 is not a valid port; allowed: integer 1-65535"
"""
