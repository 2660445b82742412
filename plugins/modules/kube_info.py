# Copyright (c) fleetmesh maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: kube_info
short_description: Read Kubernetes objects of one kind
version_added: 0.1.0
description:
  - Reads the objects of one kind - one object by O(name), or every object in O(namespace) or in all namespaces,
    optionally matching O(label_selectors) and O(field_selectors) - through the collection's one Kubernetes layer
    (the same client, kubeconfig handling and errors as M(fleetmesh.envoy.mesh_registration)).
  - The runbooks read the cluster with it (C(status.yml), C(shift_traffic.yml)); its options and RV(resources) are
    those of C(kubernetes.core.k8s_info) for the same read.
  - A kind the API server does not serve (its CRD is not installed) is no error; RV(api_found) is then V(false) and
    RV(resources) empty.
  - Nothing is changed.
author:
  - fleetmesh maintainers (@fleetmesh)
options:
  api_version:
    description:
      - API version of the kind, V(v1) for the core group, otherwise V(<group>/<version>).
    type: str
    default: v1
  kind:
    description:
      - Kind of the objects, as in their C(kind) field (V(Service), V(WorkloadEntry), V(HTTPProxy)).
    type: str
    required: true
  namespace:
    description:
      - Namespace to read in. All namespaces when not set; ignored for cluster-wide kinds.
    type: str
  name:
    description:
      - Name of the one object to read.
    type: str
  label_selectors:
    description:
      - Label selectors the objects must all match, such as V(app.kubernetes.io/managed-by=fleetmesh.envoy).
    type: list
    elements: str
    default: []
  field_selectors:
    description:
      - Field selectors the objects must all match, such as V(metadata.name=web).
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - fleetmesh.envoy.attributes
  - fleetmesh.envoy.k8s_auth
  - fleetmesh.envoy.k8s_auth.action_group
attributes:
  diff_mode:
    support: N/A
seealso:
  - module: fleetmesh.envoy.kube_apply
  - plugin: fleetmesh.envoy.workloads
    plugin_type: inventory
"""

EXAMPLES = r"""
- name: Read what the collection registered
  fleetmesh.envoy.kube_info:
    kubeconfig: "{{ fleetmesh_kubeconfig }}"
    api_version: networking.istio.io/v1
    kind: WorkloadEntry
    label_selectors:
      - app.kubernetes.io/managed-by=fleetmesh.envoy
  register: registered
  delegate_to: localhost
  run_once: true

- name: Read one HTTPProxy, with the kubeconfig set once for the play
  module_defaults:
    group/fleetmesh.envoy.kube:
      kubeconfig: ~/.kube/fleetmesh-registrar.kubeconfig
  fleetmesh.envoy.kube_info:
    api_version: projectcontour.io/v1
    kind: HTTPProxy
    namespace: shop
    name: web
  register: proxy
"""

RETURN = r"""
api_found:
  description: Whether the API server serves O(kind) in O(api_version).
  returned: success
  type: bool
  sample: true
resources:
  description: The objects read, as the API server serves them (with C(apiVersion) and C(kind)).
  returned: success
  type: list
  elements: dict
  sample:
    - apiVersion: v1
      kind: Service
      metadata: {name: web, namespace: shop, labels: {app.kubernetes.io/managed-by: fleetmesh.envoy}}
      spec: {ports: [{name: http, port: 8080}]}
api_url:
  description: URL of the API server read.
  returned: when the API was reached
  type: str
  sample: https://127.0.0.1:6443
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube import client as kube
from ansible_collections.fleetmesh.envoy.plugins.module_utils._fleetmesh.kube.args import AUTH_ARGUMENT_SPEC


def main():
    module = AnsibleModule(argument_spec=dict(
        AUTH_ARGUMENT_SPEC,
        api_version=dict(type='str', default='v1'),
        kind=dict(type='str', required=True),
        namespace=dict(type='str'),
        name=dict(type='str'),
        label_selectors=dict(type='list', elements='str', default=[]),
        field_selectors=dict(type='list', elements='str', default=[]),
    ), supports_check_mode=True)
    params = module.params
    result = dict(changed=False)
    resources = []
    try:
        client = kube.client_from_params(params, parallel=1)
        result['api_url'] = client.url
        resource = client.resource_for(params['api_version'], params['kind'], required=False)
        if resource is not None:
            namespace = params['namespace'] if resource.namespaced else None
            if params['name'] and not params['label_selectors'] and not params['field_selectors']:
                resources = [obj for obj in [client.get(resource, namespace, params['name'])] if obj]
            else:
                by_name = ['metadata.name=%s' % params['name']] if params['name'] else []
                fields = list(params['field_selectors']) + by_name
                resources = client.list(resource, ','.join(params['label_selectors']), namespace,
                                        field_selector=','.join(fields))
    except kube.KubeError as exc:  # no resources in the result: a failed read is not an empty one
        module.fail_json(msg=exc.message, **dict(result, **exc.details))
    module.exit_json(api_found=resource is not None, resources=resources, **result)


if __name__ == '__main__':
    main()
