# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# This file only documents the fleetmesh.envoy.preflight action, which runs on the controller
# (plugins/action/preflight.py), as ansible.builtin.assert does.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: preflight
short_description: Check the whole inventory model of every targeted host before a runbook changes anything
description:
  - The first task of every runbook of the collection. Runs once, on the controller, over every host of the play
    (all serial batches), and fails with every error found at once, before any host or the cluster changes.
  - Resolves each host's C(fleetmesh_*) model (C(fleetmesh_service) as a DNS-1035 label, since registration makes a
    Kubernetes Service of it; C(fleetmesh_namespace), C(fleetmesh_service_account), C(fleetmesh_ports) with at least
    one port, labels, network, locality, weight, C(fleetmesh_address) (IPv4), trust domain, cluster and mesh ids,
    C(fleetmesh_cluster_domain)), and checks across hosts (one address per host of a service, one service account per
    service).
  - Refuses a newline or any other control character in every variable of the collection (C(fleetmesh_*),
    C(envoy_*), C(workload_certs_*), C(istio_sidecar_*), C(mesh_registration_*), C(upgrade_*)), since such values
    end up in files (systemd EnvironmentFile, unit, C(cluster.env), C(/etc/hosts), the bootstrap).
  - Runs the checks of the roles the runbook includes (O(checks)) on what the user set, and the registration
    module's own checks on the endpoints it would register.
  - "Each error names the variable the user wrote and the host, shows the value and says what is allowed, for
    example C(fleetmesh_ports on host vm1.http: 70000 is not a valid port; allowed: integer 1-65535)."
  - See C(docs/model.md) in the collection.
version_added: 0.2.0
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  runbook:
    description:
      - Name of the runbook, for the messages.
    type: str
    required: true
  checks:
    description:
      - The role checks the runbook's later steps apply. V(envoy) applies to hosts with C(fleetmesh_envoy) true
        (default), V(istio_sidecar) to hosts with C(fleetmesh_istio_sidecar) true, V(workload_certs) to hosts with
        C(fleetmesh_workload_certs) true (default).
    type: list
    elements: str
    choices: [workload_certs, envoy, istio_sidecar, istio_sidecar_absent, mesh_registration]
    default: []
  hosts:
    description:
      - The hosts to check. Default is every host of the play, C(ansible_play_hosts_all).
    type: list
    elements: str
  model_required:
    description:
      - Whether every host must carry the whole model. Runbooks that only remove (offboarding, deregistration,
        decommission) and read-only reports set V(false); values that are set are still checked.
    type: bool
    default: true
extends_documentation_fragment:
  - fleetmesh.envoy.attributes.controller
attributes:
  bypass_host_loop:
    details: Use it with C(run_once=true); it checks every host of the play.
seealso:
  - module: fleetmesh.envoy.validate
"""

EXAMPLES = r"""
- name: Check the whole model of every targeted host before any change
  fleetmesh.envoy.preflight:
    runbook: onboard
    checks: [workload_certs, envoy, mesh_registration]
  run_once: true
"""

RETURN = r"""
msg:
  description: Every error, one a line, or a summary of what was checked.
  returned: always
  type: str
  sample: "fleetmesh_ports on host vm1.http: 70000 is not a valid port; allowed: integer 1-65535"
errors:
  description: The errors found, one a list item.
  returned: always
  type: list
  elements: str
hosts:
  description: The hosts checked.
  returned: always
  type: list
  elements: str
workloads:
  description: The resolved model of each valid host, with its derived values (SPIFFE ID, DNS names, WorkloadEntry name).
  returned: always
  type: dict
  sample:
    vm1:
      service: web
      namespace: fleet-lab
      spiffe_id: spiffe://cluster.local/ns/fleet-lab/sa/web
      dns_names: [web.fleet-lab, web.fleet-lab.svc, web.fleet-lab.svc.cluster.local]
runbook:
  description: The runbook named in O(runbook).
  returned: always
  type: str
"""
