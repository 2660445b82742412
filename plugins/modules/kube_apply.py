# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: kube_apply
short_description: Server-side apply one Kubernetes object
version_added: 0.1.0
description:
  - Applies one object by server-side apply as field manager O(field_manager), through the collection's one
    Kubernetes layer (the same client, no-op check and errors as M(fleetmesh.envoy.mesh_registration)).
  - "Sends nothing when the apply would change nothing: the fields the field manager owns (its entry in
    C(metadata.managedFields)) are exactly those of O(definition) and hold its values."
  - A field that another field manager owns is a conflict; the task fails naming the manager and the fields, and
    changes nothing, unless O(force).
  - C(shift_traffic.yml) sets the weights of an HTTPProxy route with it. The objects of a registration set are
    M(fleetmesh.envoy.mesh_registration)'s to change; a later registration run applies its own again.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  definition:
    description:
      - The object, with C(apiVersion), C(kind), C(metadata.name) and, for a namespaced kind, C(metadata.namespace).
      - Only the fields given are applied (and owned by O(field_manager)); fields the field manager owned before
        and that are left out are released, as server-side apply does.
    type: dict
    required: true
  field_manager:
    description:
      - Field manager to apply as.
    type: str
    default: fleetmesh.envoy
  force:
    description:
      - Take over fields that other field managers own instead of failing on the conflict.
    type: bool
    default: false
extends_documentation_fragment:
  - fleetmesh.envoy.attributes
  - fleetmesh.envoy.k8s_auth
  - fleetmesh.envoy.k8s_auth.action_group
attributes:
  check_mode:
    details: The apply is sent with C(dryRun=All), so the API server's validation and admission run.
seealso:
  - module: fleetmesh.envoy.kube_info
  - module: fleetmesh.envoy.mesh_registration
  - name: Server-Side Apply
    description: How field managers own fields, and what a conflict is.
    link: https://kubernetes.io/docs/reference/using-api/server-side-apply/
"""

EXAMPLES = r"""
- name: Send 90% of shop/web's / route to web and 10% to web-k8s
  fleetmesh.envoy.kube_apply:
    kubeconfig: "{{ fleetmesh_kubeconfig }}"
    definition:
      apiVersion: projectcontour.io/v1
      kind: HTTPProxy
      metadata:
        name: web
        namespace: shop
      spec:
        virtualhost:
          fqdn: web.shop.example
        routes:
          - conditions: [{prefix: /}]
            services:
              - {name: web, port: 8080, weight: 90}
              - {name: web-k8s, port: 80, weight: 10}
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
outcome:
  description: What the apply did (or would do, in check mode) - V(created), V(updated) or V(unchanged).
  returned: success
  type: str
  sample: updated
result:
  description: The object as the API server holds it after the apply (in check mode, as it would).
  returned: success
  type: dict
  sample:
    apiVersion: projectcontour.io/v1
    kind: HTTPProxy
    metadata: {name: web, namespace: shop, resourceVersion: "4711"}
api_url:
  description: URL of the API server.
  returned: when the API was reached
  type: str
  sample: https://127.0.0.1:6443
"""

from collections.abc import Mapping

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import apply as kube_apply
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import AUTH_ARGUMENT_SPEC


def definition_errors(definition):
    meta = definition.get('metadata')
    errors = ['definition.%s is required' % key for key in ('apiVersion', 'kind')
              if not isinstance(definition.get(key), str) or not definition.get(key)]
    if not isinstance(meta, Mapping) or not isinstance(meta.get('name'), str) or not meta.get('name'):
        errors.append('definition.metadata.name is required')
    return errors


def main():
    module = AnsibleModule(argument_spec=dict(
        AUTH_ARGUMENT_SPEC,
        definition=dict(type='dict', required=True),
        field_manager=dict(type='str', default='fleetmesh.envoy'),
        force=dict(type='bool', default=False),
    ), supports_check_mode=True)
    params = module.params
    definition = params['definition']
    errors = definition_errors(definition)
    if errors:
        module.fail_json(msg='invalid definition, nothing was applied: ' + '; '.join(errors), errors=errors)
    meta = definition['metadata']
    result = dict(changed=False)
    try:
        client = kube.client_from_params(params, parallel=1)
        result['api_url'] = client.url
        resource = client.resource_for(definition['apiVersion'], definition['kind'])
        namespace = meta.get('namespace') if resource.namespaced else None
        if resource.namespaced and not namespace:
            module.fail_json(msg='definition.metadata.namespace is required: %s is namespaced' % resource.kind,
                             **result)
        live = client.get(resource, namespace, meta['name'])
        after = live
        if live is None or not kube_apply.unchanged(definition, live, params['field_manager']):
            after = kube_apply.server_side_apply(client, resource, definition, params['field_manager'],
                                                 force=params['force'], dry_run=module.check_mode)
    except kube.KubeError as exc:
        module.fail_json(msg=exc.message, **dict(result, **exc.details))
    result['outcome'] = kube_apply.outcome(live, after, module.check_mode)
    result.update(changed=result['outcome'] != 'unchanged', result=after)
    if module._diff:
        ref = kube.object_ref(resource.kind, namespace, meta['name'])
        result['diff'] = {'before_header': ref + (' (absent)' if live is None else ''), 'after_header': ref,
                          'before': kube_apply.trimmed(live), 'after': kube_apply.trimmed(after)}
    module.exit_json(**result)


if __name__ == '__main__':
    main()
